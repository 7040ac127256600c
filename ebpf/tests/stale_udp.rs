//! A connected UDP socket (a resolver talking to a DNS Service) whose backend
//! is removed: the agent destroys it, so the client notices at once and its
//! reconnect goes to a live backend, instead of sending into the void.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn slice(name: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dns-{name}, namespace: default, labels: {{kubernetes.io/service-name: dns}}}}\n\
         addressType: IPv4\nports: [{{name: dns, port: {port}, protocol: UDP}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: default}\nspec:\n  clusterIP: 127.96.3.1\n  ports: [{name: dns, port: 53, targetPort: dns, protocol: UDP}]\n";

/// Polls the agent's log until it holds `needle` (the agent says what it did).
fn log_says(log: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent never logged {needle:?}:\n{text}"
        );
        std::thread::yield_now();
    }
}

const CLIENT: &str = r#"
import socket, sys
def connected():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect(("127.96.3.1", 53))
    return s
def ask(s):
    s.send(b"q")
    return s.recv(100).decode()
s = connected()
print(ask(s), flush=True)
sys.stdin.readline()
try:
    print("same", ask(s), flush=True)
except OSError as e:
    print("error", e.errno, flush=True)
print(ask(connected()), flush=True)
"#;

#[test]
fn a_removed_udp_backend_aborts_the_sockets_connected_to_it() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("stale");
    let pod = Netns::new("dnsclient");
    for (name, port) in [("A", 5301), ("B", 5302)] {
        let socket = pod.run(move || UdpSocket::bind(("127.0.0.1", port)).unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), peer);
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SERVICE).unwrap();
    std::fs::write(dir.path().join("a.yaml"), slice("a", 5301)).unwrap();
    std::fs::write(dir.path().join("b.yaml"), slice("b", 5302)).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let _agent = sandbox.agent(
        &["--manifests".as_ref(), dir.path().as_os_str()],
        log.reopen().unwrap(),
    );
    log_says(log.path(), "maps updated");

    // The client: in the sandbox cgroup (socket LB applies) and in its own
    // network namespace (the agent must find it there).
    let mut client = Kill(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec nsenter --net=/run/netns/{} python3 -u -c '{CLIENT}'",
                sandbox.cgroup.join("cgroup.procs").display(),
                pod.name
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(client.0.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("a line from the client").unwrap();
    let first = next();
    let (gone, other) = match first.as_str() {
        "A" => ("a.yaml", "B"),
        "B" => ("b.yaml", "A"),
        other => panic!("unexpected first answer {other:?}"),
    };
    std::fs::remove_file(dir.path().join(gone)).unwrap();
    log_says(log.path(), "stale UDP sockets destroyed");
    client.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let after = next();
    // Aborted (ECONNABORTED) and disconnected (EDESTADDRREQ on send): not silently
    // still talking to the removed backend.
    assert!(after.starts_with("error "), "{after}");
    assert_eq!(next(), other, "the reconnect goes to the live backend");
}
