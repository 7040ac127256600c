//! The pier-agent binary in standalone mode: manifests in, BPF maps out, and
//! an endpoint change in the folder reaches the kernel without a restart.
//! (Following `pier-controller serve` needs both binaries: that test is in
//! the pier-tests package, `tests/tests/agent_stream.rs`.)

mod common;
use common::*;
use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

fn backend(reply: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(reply.as_bytes());
        }
    });
    port
}

fn manifests(port: u16) -> String {
    // The ClusterIP is in 127.0.0.0/8 so an unrewritten connect stays on this machine.
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: 127.96.1.1\n  ports: [{{name: http, port: 80, targetPort: http}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n"
    )
}

/// Polls a client in the sandbox cgroup until the ClusterIP 127.96.1.1:80 answers `want`.
fn answer_becomes(sandbox: &Sandbox, want: &str, log: &std::path::Path) {
    let ask = "import socket\ntry:\n    print(socket.create_connection((\"127.96.1.1\", 80), timeout=2).recv(100).decode())\nexcept OSError as e:\n    print(\"error\", e.errno)\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = sandbox.run_python(ask);
        if out.trim() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never got {want:?} (last: {out:?}); agent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

#[test]
fn the_agent_programs_manifests_and_follows_changes() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("agent");
    let (one, two) = (backend("backend-one"), backend("backend-two"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), manifests(one)).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let spawn_agent = || {
        sandbox.agent(
            &["--manifests".as_ref(), dir.path().as_os_str()],
            log.reopen().unwrap(),
        )
    };
    let agent = spawn_agent();
    let wait_for = |want: &str| answer_becomes(&sandbox, want, log.path());
    wait_for("backend-one");
    std::fs::write(dir.path().join("web.yaml"), manifests(two)).unwrap();
    wait_for("backend-two");
    // `status` reads the pinned maps back.
    let status = Command::new(pier_tests::binary("pier-agent-cli", "pier-agent"))
        .arg("--pin-dir")
        .arg(sandbox.bpffs.join("pier"))
        .arg("status")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        table.contains("127.96.1.1:80") && table.contains(&format!("127.0.0.1:{two}")),
        "{table}"
    );
    assert!(
        table.contains("1 service addresses, 1 backends"),
        "the old backend was removed: {table}"
    );
    // A broken manifest keeps the last good maps.
    std::fs::write(dir.path().join("web.yaml"), "kind: [broken\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .contains("manifest rejected")
    {
        assert!(
            Instant::now() < deadline,
            "the broken manifest was not reported"
        );
        std::thread::yield_now();
    }
    wait_for("backend-two");

    // While the agent is down, the pinned hooks and maps keep serving.
    drop(agent);
    wait_for("backend-two");
    // A restarted agent adopts the pinned hooks, maps and ids.
    std::fs::write(dir.path().join("web.yaml"), manifests(two)).unwrap();
    let _agent = spawn_agent();
    wait_for("backend-two");
}

fn http_get(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn lb_local(health_port: u16, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: 127.96.2.1\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {health_port}\n  ports: [{{name: http, port: 80, nodePort: 30081}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: lb-1, namespace: default, labels: {{kubernetes.io/service-name: lb}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1], nodeName: {node}, conditions: {{ready: true}}}}]\n"
    )
}

#[test]
fn the_health_check_node_port_reports_local_endpoints() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("health");
    let health_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lb.yaml"), lb_local(health_port, "node-a")).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let args = ["--node-name", "node-a", "--health-bind", "127.0.0.1"];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.extend(["--manifests".as_ref(), dir.path().as_os_str()]);
    let _agent = sandbox.agent(&args, log.reopen().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", health_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "health port never opened:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
        std::thread::yield_now();
    }
    // A prober that connects and says nothing must not block the others.
    let _silent = std::net::TcpStream::connect(("127.0.0.1", health_port)).unwrap();
    let answer = http_get(health_port);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\"localEndpoints\":1") && answer.contains("\"name\":\"lb\""),
        "{answer}"
    );
    // The endpoint moves to another node: this node must be taken out of rotation.
    std::fs::write(dir.path().join("lb.yaml"), lb_local(health_port, "node-b")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http_get(health_port);
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("\"localEndpoints\":0"), "{answer}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy: {answer}\nagent log:\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        );
    }
}
