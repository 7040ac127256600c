//! Dual-stack: a Service with an IPv4 and an IPv6 ClusterIP; each family's
//! connects go to that family's endpoints, and UDP replies appear to come
//! from the IPv6 service address.

mod common;
use common::*;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

fn tcp_server(bind: &str, reply: &'static str) -> u16 {
    let l = TcpListener::bind(bind).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let _ = c.and_then(|mut c| c.write_all(reply.as_bytes()));
        }
    });
    port
}

const CLIENT: &str = r#"
import socket
print(socket.create_connection(("fd00:96::5", 80), timeout=2).recv(100).decode())
print(socket.create_connection(("127.96.5.1", 80), timeout=2).recv(100).decode())
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(2)
u.sendto(b"q", ("fd00:96::5", 53))
data, frm = u.recvfrom(100)
print(data.decode(), frm[0], frm[1])
"#;

#[test]
fn a_dual_stack_service_balances_each_family_to_its_own_endpoints() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("ipv6");
    let tcp6 = tcp_server("[::1]:0", "six");
    let tcp4 = tcp_server("127.0.0.1:0", "four");
    let udp6 = UdpSocket::bind("[::1]:0").unwrap();
    let udp6_port = udp6.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = udp6.recv_from(&mut buf) {
            let _ = udp6.send_to(b"udp6", peer);
        }
    });
    let manifests = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: dual, namespace: default}}\nspec:\n  clusterIP: 127.96.5.1\n  clusterIPs: [127.96.5.1, \"fd00:96::5\"]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack\n  ports:\n  - {{name: tcp, port: 80, targetPort: tcp}}\n  - {{name: udp, port: 53, targetPort: udp, protocol: UDP}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dual-v4, namespace: default, labels: {{kubernetes.io/service-name: dual}}}}\n\
         addressType: IPv4\nports: [{{name: tcp, port: {tcp4}, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: dual-v6, namespace: default, labels: {{kubernetes.io/service-name: dual}}}}\n\
         addressType: IPv6\nports: [{{name: tcp, port: {tcp6}, protocol: TCP}}, {{name: udp, port: {udp6_port}, protocol: UDP}}]\nendpoints: [{{addresses: [\"::1\"], conditions: {{ready: true}}}}]\n"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dual.yaml"), manifests).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let _agent = sandbox.agent(
        &["--manifests".as_ref(), dir.path().as_os_str()],
        log.reopen().unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log.path())
        .unwrap_or_default()
        .contains("maps updated")
    {
        assert!(
            Instant::now() < deadline,
            "the agent never programmed the maps"
        );
        std::thread::yield_now();
    }
    let (ok, out, err) = sandbox.run_python(CLIENT);
    assert!(ok, "{err}");
    assert_eq!(out, "six\nfour\nudp6 fd00:96::5 53\n");

    let status = Command::new(pier_tests::binary("pier-agent-cli", "pier-agent"))
        .arg("status")
        .arg("--pin-dir")
        .arg(sandbox.bpffs.join("pier"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains("[fd00:96::5]:80") && table.contains(&format!("[::1]:{tcp6}")),
        "{table}"
    );
}
