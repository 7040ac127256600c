//! pier-controller's snapshot stream feeding pier-proxy: full snapshot on
//! connect, deltas on change, last snapshot kept while the controller is
//! away, resync when it is back.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The controller binary (built if missing).
fn controller_bin() -> PathBuf {
    pier_tests::binary("pier-controller", "pier-controller")
}

fn start_controller(dir: &std::path::Path, port: u16) -> Proc {
    let child = Command::new(controller_bin())
        .args(["serve", "--manifests"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    wait_for_port_of(&mut proc, ([127, 0, 0, 1], port).into(), String::new);
    proc
}

fn route(port: u16, generation: u32, backend: &str, backend_port: u16) -> String {
    format!(
        "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-generation, value: '{generation}'}}]}}}}]\n    backendRefs: [{{name: {backend}, port: 80}}]\n",
        http_gateway(port),
        service(backend, backend_port, None),
    )
}

async fn generation(port: u16) -> Option<String> {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "s.test")
        .send()
        .await
        .ok()?;
    let body = resp.text().await.ok()?;
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| header(&v, "x-generation").map(String::from))
}

async fn wait_generation(port: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while generation(port).await.as_deref() != Some(want) {
        assert!(Instant::now() < deadline, "generation {want} never served");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_follows_the_controller_stream_and_survives_its_absence() {
    let a = echo("a");
    let listen = free_port();
    let controller_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m.yaml"), route(listen, 1, "a", a.port)).unwrap();
    let controller = start_controller(dir.path(), controller_port);

    let admin = free_port();
    let child = Command::new(bin())
        .args([
            "--controller",
            &format!("127.0.0.1:{controller_port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--listen-host",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proxy = Proc(child);
    wait_for_port_of(&mut proxy, ([127, 0, 0, 1], listen).into(), String::new);
    wait_generation(listen, "1").await;

    // A change in the controller's folder arrives as a delta.
    std::fs::write(dir.path().join("m.yaml"), route(listen, 2, "a", a.port)).unwrap();
    wait_generation(listen, "2").await;

    // The controller goes away: the proxy keeps serving what it has.
    drop(controller);
    for _ in 0..20 {
        assert_eq!(generation(listen).await.as_deref(), Some("2"));
    }
    // It comes back with newer manifests: the proxy resyncs.
    std::fs::write(dir.path().join("m.yaml"), route(listen, 3, "a", a.port)).unwrap();
    let _controller = start_controller(dir.path(), controller_port);
    wait_generation(listen, "3").await;
}
