//! The pier-controller binary, run for real on the examples and on broken input.

use std::path::Path;
use std::process::Command;

fn pier(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pier-controller"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .to_string_lossy()
        .into()
}

#[test]
fn translate_prints_snapshot_and_statuses_of_the_examples() {
    let (ok, out, err) = pier(&["translate", "--manifests", &examples(), "-o", "json"]);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listeners = doc["snapshot"]["routes"]["data"]["listeners"]
        .as_array()
        .unwrap();
    let ports: Vec<u64> = listeners
        .iter()
        .map(|l| l["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, vec![80, 443, 8080, 8443]);
    let statuses = doc["statuses"].as_array().unwrap();
    let gateway = statuses
        .iter()
        .find(|s| s["target"]["kind"] == "Gateway")
        .unwrap();
    let conditions = gateway["patch"]["Gateway"]["conditions"]
        .as_array()
        .unwrap();
    assert!(
        conditions.iter().all(|c| c["status"] == "True"),
        "{conditions:?}"
    );
    assert!(
        !out.contains("BEGIN PRIVATE KEY") && !out.contains("BEGIN EC PRIVATE KEY"),
        "private keys are never printed"
    );
}

#[test]
fn explain_names_the_route_rule_and_backend() {
    let (ok, out, err) = pier(&[
        "explain",
        "--manifests",
        &examples(),
        "--url",
        "http://demo.pier.test:8080/api/v1/items",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("result: HTTPRoute demo/app rule 0 match 0"),
        "{out}"
    );
    assert!(
        out.contains("✗ HTTPRoute demo/old-paths rule 0 match 0: path Exact(\"/old\")"),
        "{out}"
    );
    assert!(
        out.contains("backend demo/api:80 weight 90/100: 1 usable endpoints [127.0.0.1:9002]"),
        "{out}"
    );

    let (ok, out, _) = pier(&[
        "explain",
        "--manifests",
        &examples(),
        "--url",
        "https://app.demo.pier.test:8443/x",
        "-H",
        "Host: www.example.com",
    ]);
    assert!(ok);
    assert!(
        out.contains("421 Misdirected Request") && out.contains("result: Misdirected"),
        "{out}"
    );

    let (ok, out, _) = pier(&[
        "explain",
        "--manifests",
        &examples(),
        "--url",
        "http://demo.pier.test:8080/old",
        "-X",
        "POST",
    ]);
    assert!(ok);
    assert!(
        out.contains("result: HTTPRoute demo/old-paths") && out.contains("redirect 301"),
        "{out}"
    );
}

#[test]
fn a_malformed_manifest_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    targetPortt: 8080\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("kind.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    )
    .unwrap();
    let (ok, _, err) = pier(&["translate", "--manifests", &dir.path().to_string_lossy()]);
    assert!(!ok);
    assert!(
        err.contains("bad.yaml:12: Service: unknown field `spec.ports[0].targetPortt`"),
        "{err}"
    );
    assert!(
        err.contains("kind.yaml:2: unknown kind Deployment"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_reported_before_anything_runs() {
    let (ok, _, err) = pier(&["explain", "--manifests", &examples(), "--url", "ftp://x"]);
    assert!(
        !ok && err.contains("must start with http:// or https://"),
        "{err}"
    );
    let (ok, _, err) = pier(&[
        "translate",
        "--manifests",
        &examples(),
        "--ingress-http-port",
        "0",
    ]);
    assert!(!ok && err.contains("ingress-http-port"), "{err}");
    let (ok, _, err) = pier(&[
        "explain",
        "--manifests",
        &examples(),
        "--url",
        "http://a/",
        "-H",
        "novalue",
    ]);
    assert!(!ok && err.contains("is not `name: value`"), "{err}");
}
