//! Golden tests: `testdata/<case>.in.yaml` → `testdata/<case>.out.yaml`.
//! `UPDATE_GOLDEN=1 cargo test -p pier-translate --test golden` rewrites the outputs.

use pier_translate::{translate, ClusterState, TranslateOptions};
use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    cases.sort();
    cases
}

fn reversed(state: &ClusterState) -> ClusterState {
    let mut s = state.clone();
    s.namespaces.reverse();
    s.services.reverse();
    s.endpoint_slices.reverse();
    s.secrets.reverse();
    s.ingress_classes.reverse();
    s.ingresses.reverse();
    s.gateway_classes.reverse();
    s.gateways.reverse();
    s.http_routes.reverse();
    s.grpc_routes.reverse();
    s.tls_routes.reverse();
    s.tcp_routes.reverse();
    s.udp_routes.reverse();
    s.reference_grants.reverse();
    s
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "expected the full set of golden cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for input in cases {
        let name = input
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".in.yaml", "");
        let text = std::fs::read_to_string(&input).unwrap();
        let state = pier_manifests::load_str(Path::new(&format!("{name}.in.yaml")), &text)
            .unwrap_or_else(|e| panic!("{name}: input does not load:\n{e}"));
        let options = TranslateOptions::default();
        let out = translate(&state, &options);
        if let Err(e) = out.snapshot.validate() {
            failures.push(format!(
                "{name}: translated snapshot does not validate: {e}"
            ));
        }
        let again = translate(&reversed(&state), &options);
        if again != out {
            failures.push(format!(
                "{name}: output depends on the order of the input objects"
            ));
        }
        let rendered = serde_yaml_ng::to_string(&out.to_document()).unwrap();
        let golden = input.with_file_name(format!("{name}.out.yaml"));
        if update {
            std::fs::write(&golden, &rendered).unwrap();
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == rendered => {}
            Ok(_) => failures.push(format!(
                "{name}: output differs from {} (UPDATE_GOLDEN=1 to accept)",
                golden.display()
            )),
            Err(_) => failures.push(format!(
                "{name}: no {} (UPDATE_GOLDEN=1 to create)",
                golden.display()
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
