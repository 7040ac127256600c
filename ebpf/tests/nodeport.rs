//! NodePort, externalIPs and externalTrafficPolicy from outside the node,
//! through the tc programs, between network namespaces made by the test:
//!
//! ```text
//!  client 192.0.2.2 ─┐                    ┌─ node 192.0.2.1 (pier-agent, tc on eth0)
//!                    ├── lan (bridge) ────┤      └─ veth ─ pod 198.51.100.2 (local backend)
//!  remote 192.0.2.3 ─┘ (node-b: its pod 203.0.113.10 is a remote backend)
//! ```

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Answers every TCP connection with "`name` `peer address`" (what the backend
/// saw as the client), and every UDP datagram the same way.
fn serve(ns: &Netns, name: &'static str, ip: &str) {
    let tcp = format!("{ip}:8080");
    let listener = ns.run(move || TcpListener::bind(&tcp).unwrap());
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            let peer = c.peer_addr().unwrap();
            // One answer per request, so a held-open stream can ask again.
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let udp = format!("{ip}:5353");
    let socket = ns.run(move || UdpSocket::bind(&udp).unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(format!("{name} {peer}").as_bytes(), peer);
        }
    });
}

fn manifests() -> String {
    let service = |name: &str, node_port: u16, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: 127.96.2.1\n{extra}  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, nodePort: {node_port}, protocol: TCP}}\n  - {{name: udp, port: 53, targetPort: 5353, nodePort: {udp}, protocol: UDP}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: tcp, port: 8080, protocol: TCP}}, {{name: udp, port: 5353, protocol: UDP}}]\nendpoints:\n\
             - {{addresses: [198.51.100.2], conditions: {{ready: true}}, nodeName: node-a}}\n\
             - {{addresses: [203.0.113.10], conditions: {{ready: true}}, nodeName: node-b}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-6, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv6\nports: [{{name: tcp, port: 8080, protocol: TCP}}, {{name: udp, port: 5353, protocol: UDP}}]\nendpoints:\n\
             - {{addresses: [\"fd00:44::2\"], conditions: {{ready: true}}, nodeName: node-a}}\n\
             - {{addresses: [\"fd00:55::10\"], conditions: {{ready: true}}, nodeName: node-b}}\n---\n",
            udp = node_port + 100
        )
    };
    let mut all = service("web", 30080, "  externalIPs: [198.18.0.100]\n");
    // A backend behind a link with a small MTU (a tunnel, say).
    all += "apiVersion: v1\nkind: Service\nmetadata: {name: far, namespace: default}\nspec:\n  type: NodePort\n  clusterIP: 127.96.2.3\n  ports:\n  - {name: udp, port: 53, targetPort: 5353, nodePort: 30190, protocol: UDP}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: far-1, namespace: default, labels: {kubernetes.io/service-name: far}}\n\
         addressType: IPv4\nports: [{name: udp, port: 5353, protocol: UDP}]\nendpoints: [{addresses: [203.0.113.20], conditions: {ready: true}, nodeName: node-b}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: far-6, namespace: default, labels: {kubernetes.io/service-name: far}}\n\
         addressType: IPv6\nports: [{name: udp, port: 5353, protocol: UDP}]\nendpoints: [{addresses: [\"fd00:66::20\"], conditions: {ready: true}, nodeName: node-b}]\n---\n";
    all += &service(
        "local",
        30081,
        "  externalTrafficPolicy: Local\n  clusterIP: 127.96.2.2\n",
    )
    .replace("  clusterIP: 127.96.2.1\n", "");
    all
}

/// One request over a new TCP connection from the client namespace.
fn ask(client: &Netns, to: &'static str) -> Result<String, String> {
    client.run(move || {
        let addr: SocketAddr = to.parse().unwrap();
        let mut c =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"hi\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).map_err(|e| e.to_string())?;
        line.push_str(&String::from_utf8_lossy(&buf[..n]));
        Ok(line.trim().to_string())
    })
}

fn ask_udp(client: &Netns, to: &'static str) -> Result<String, String> {
    client.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(b"hi", to).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        // The reply must come from the address the client asked.
        if from.to_string() != to {
            return Err(format!("reply from {from}, not {to}"));
        }
        Ok(String::from_utf8_lossy(&buf[..n]).to_string())
    })
}

/// Sends 1,400-byte datagrams with DF to the far NodePort until the
/// socket's path MTU drops (or 5 s pass); prints the path MTU.
/// Over IPv4 and over IPv6 (argument: the NodePort address).
const PMTU_CLIENT: &str = r#"
import socket, sys, time
host = sys.argv[1]
if ":" in host:
    family, level, discover, mtu_opt = socket.AF_INET6, socket.IPPROTO_IPV6, 23, 24
else:
    family, level, discover, mtu_opt = socket.AF_INET, socket.IPPROTO_IP, 10, 14
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(level, discover, 2)  # PMTUDISC_DO: DF, never fragment locally
s.connect((host, 30190))
deadline = time.time() + 5
mtu = s.getsockopt(level, mtu_opt)
while mtu > 1280 and time.time() < deadline:
    try:
        s.send(b"x" * 1400)
    except OSError:
        pass
    mtu = s.getsockopt(level, mtu_opt)
print(mtu)
"#;

struct Lab {
    client: Netns,
    node: Netns,
    _lan: Netns,
    _remote: Netns,
    _pod: Netns,
}

fn lab() -> Lab {
    let lan = Netns::new("lan");
    let client = Netns::new("client");
    let node = Netns::new("node");
    let remote = Netns::new("remote");
    let pod = Netns::new("pod");
    lan.sh("ip link add br0 type bridge");
    lan.sh("ip link set br0 up");
    for (ns, port, ip, ip6) in [
        (&client, "lan-c", "192.0.2.2", "2001:db8::2"),
        (&node, "lan-n", "192.0.2.1", "2001:db8::1"),
        (&remote, "lan-r", "192.0.2.3", "2001:db8::3"),
    ] {
        veth(&lan, port, ns, "eth0");
        lan.sh(&format!("ip link set {port} master br0"));
        ns.sh(&format!("ip addr add {ip}/24 dev eth0"));
        // nodad: usable at once, no duplicate address detection to wait for.
        ns.sh(&format!("ip -6 addr add {ip6}/64 dev eth0 nodad"));
    }
    // The client reaches externalIPs through the node (as an upstream router would route them).
    client.sh("ip route add 198.18.0.0/24 via 192.0.2.1");
    // node-a: forwards to its pod; node-b's pod network is behind node-b.
    veth(&node, "pod0", &pod, "eth0");
    node.sh("ip addr add 198.51.100.1/24 dev pod0");
    pod.sh("ip addr add 198.51.100.2/24 dev eth0");
    pod.sh("ip route add default via 198.51.100.1");
    node.sh("ip -6 addr add fd00:44::1/64 dev pod0 nodad");
    pod.sh("ip -6 addr add fd00:44::2/64 dev eth0 nodad");
    pod.sh("ip -6 route add default via fd00:44::1");
    node.sh("sysctl -qw net.ipv4.ip_forward=1");
    node.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
    node.sh("ip route add 203.0.113.0/24 via 192.0.2.3");
    node.sh("ip -6 route add fd00:55::/64 via 2001:db8::3");
    remote.sh("ip addr add 203.0.113.10/32 dev lo");
    // node-b's pod 203.0.113.20 is reached over a link with MTU 1280.
    veth(&node, "mtu0", &remote, "mtu0");
    node.sh("ip link set mtu0 mtu 1280");
    remote.sh("ip link set mtu0 mtu 1280");
    node.sh("ip addr add 198.18.1.1/30 dev mtu0");
    remote.sh("ip addr add 198.18.1.2/30 dev mtu0");
    node.sh("ip route add 203.0.113.20/32 via 198.18.1.2 dev mtu0");
    remote.sh("ip addr add 203.0.113.20/32 dev lo");
    node.sh("ip -6 addr add fd00:77::1/64 dev mtu0 nodad");
    remote.sh("ip -6 addr add fd00:77::2/64 dev mtu0 nodad");
    node.sh("ip -6 route add fd00:66::20/128 via fd00:77::2 dev mtu0");
    remote.sh("ip -6 addr add fd00:66::20/128 dev lo nodad");
    remote.sh("ip -6 addr add fd00:55::10/128 dev lo nodad");
    serve(&pod, "pod", "198.51.100.2");
    serve(&remote, "remote", "203.0.113.10");
    serve(&remote, "far", "203.0.113.20");
    serve(&remote, "far", "[fd00:66::20]");
    serve(&pod, "pod", "[fd00:44::2]");
    serve(&remote, "remote", "[fd00:55::10]");
    Lab {
        client,
        node,
        _lan: lan,
        _remote: remote,
        _pod: pod,
    }
}

fn spawn_agent(
    lab: &Lab,
    sandbox: &Sandbox,
    dir: &std::path::Path,
    log: &tempfile::NamedTempFile,
) -> Kill {
    Kill(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.node.name))
            .arg(pier_tests::binary("pier-agent-cli", "pier-agent"))
            .arg("--manifests")
            .arg(dir)
            .arg("--cgroup")
            .arg(&sandbox.cgroup)
            .arg("--pin-dir")
            .arg(sandbox.bpffs.join("pier"))
            .args(["--interface", "eth0", "--node-name", "node-a"])
            .args(["--maglev-table-size", "251", "--health-bind", "192.0.2.1"])
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap(),
    )
}

fn until_answered(lab: &Lab, to: &'static str, log: &tempfile::NamedTempFile) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ask(&lab.client, to) {
            Ok(answer) => return answer,
            Err(e) => assert!(
                Instant::now() < deadline,
                "{to} never answered ({e}); agent log:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            ),
        }
    }
}

#[test]
fn traffic_from_outside_reaches_local_and_remote_backends() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("nodeport");
    let lab = lab();
    // Traffic for the node itself is left alone.
    let own = lab
        .node
        .run(|| TcpListener::bind("192.0.2.1:9999").unwrap());
    std::thread::spawn(move || {
        for c in own.incoming() {
            let _ = c.and_then(|mut c| c.write_all(b"node itself\n"));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), manifests()).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let agent = spawn_agent(&lab, &sandbox, dir.path(), &log);
    until_answered(&lab, "192.0.2.1:30080", &log);

    // ETP Cluster: both backends; the local pod sees the client's own
    // address, the remote one sees the node (SNAT, from the SNAT port range).
    let (mut local, mut remote) = (0, 0);
    for _ in 0..40 {
        let answer = ask(&lab.client, "192.0.2.1:30080").unwrap();
        let (who, peer) = answer.split_once(' ').unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        match who {
            "pod" => {
                assert_eq!(peer.ip().to_string(), "192.0.2.2", "{answer}");
                local += 1;
            }
            "remote" => {
                assert_eq!(peer.ip().to_string(), "192.0.2.1", "{answer}");
                assert!((61000..=65535).contains(&peer.port()), "{answer}");
                remote += 1;
            }
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(local > 0 && remote > 0, "local {local}, remote {remote}");

    // An externalIP routed to the node, and UDP both ways.
    let answer = until_answered(&lab, "198.18.0.100:80", &log);
    assert!(
        answer.starts_with("pod ") || answer.starts_with("remote "),
        "{answer}"
    );
    let mut udp_seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let answer = ask_udp(&lab.client, "192.0.2.1:30180").unwrap();
        udp_seen.insert(answer.split(' ').next().unwrap().to_string());
    }
    assert_eq!(udp_seen.len(), 2, "{udp_seen:?}");

    // ETP Local: only the pod on this node, with the client address kept.
    for _ in 0..10 {
        let answer = ask(&lab.client, "192.0.2.1:30081").unwrap();
        assert!(answer.starts_with("pod 192.0.2.2:"), "{answer}");
    }
    assert_eq!(ask(&lab.client, "192.0.2.1:9999").unwrap(), "node itself");

    // A datagram too big for the way to the far backend, with DF set: the
    // client learns the path MTU from pier's "fragmentation needed" (IPv4)
    // or "packet too big" (IPv6).
    for node_address in ["192.0.2.1", "2001:db8::1"] {
        let pmtu = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.client.name))
            .args(["python3", "-c", PMTU_CLIENT, node_address])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&pmtu.stdout).trim(),
            "1280",
            "{node_address}: {}",
            String::from_utf8_lossy(&pmtu.stderr)
        );
    }
    // Small datagrams still get through and back.
    let small = ask_udp(&lab.client, "192.0.2.1:30190").unwrap();
    assert!(small.starts_with("far "), "{small}");

    // The same over IPv6, on the node's IPv6 address.
    let (mut local6, mut remote6) = (0, 0);
    for _ in 0..30 {
        let answer = ask(&lab.client, "[2001:db8::1]:30080").unwrap();
        let (who, peer) = answer.split_once(' ').unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        match who {
            "pod" => {
                assert_eq!(peer.ip().to_string(), "2001:db8::2", "{answer}");
                local6 += 1;
            }
            "remote" => {
                assert_eq!(peer.ip().to_string(), "2001:db8::1", "{answer}");
                assert!((61000..=65535).contains(&peer.port()), "{answer}");
                remote6 += 1;
            }
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(
        local6 > 0 && remote6 > 0,
        "IPv6: local {local6}, remote {remote6}"
    );

    // A stream through the NodePort survives an agent restart (the pinned
    // links and conntrack stay), and new connections keep working.
    let held = lab.client.run(|| {
        let c = TcpStream::connect("192.0.2.1:30081").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c
    });
    let roundtrip = |c: &mut TcpStream| {
        c.write_all(b"again\n").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    let mut held = held;
    let first = roundtrip(&mut held);
    drop(agent);
    assert!(ask(&lab.client, "192.0.2.1:30081")
        .unwrap()
        .starts_with("pod "));
    assert_eq!(roundtrip(&mut held), first, "without an agent");
    let _agent = spawn_agent(&lab, &sandbox, dir.path(), &log);
    assert!(ask(&lab.client, "192.0.2.1:30081")
        .unwrap()
        .starts_with("pod "));
    assert_eq!(roundtrip(&mut held), first, "after the restart");

    let status = Command::new(pier_tests::binary("pier-agent-cli", "pier-agent"))
        .args(["status", "--conntrack", "100000", "--pin-dir"])
        .arg(sandbox.bpffs.join("pier"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("192.0.2.1:30080"), "{status}");
    assert!(
        status.contains("198.18.0.100:80") && status.contains("external"),
        "{status}"
    );
    let ct: usize = status
        .lines()
        .find_map(|l| l.strip_suffix(" conntrack entries"))
        .expect("conntrack line")
        .parse()
        .unwrap();
    assert!(ct >= 2, "{status}");
    let answered: u64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix("frag_needed_answered: ")?
                .strip_suffix(" packets")
        })
        .expect("the counter is listed")
        .parse()
        .unwrap();
    assert!(
        answered >= 1,
        "pier answered the oversized datagram itself:\n{status}"
    );
    // The flows themselves: the client's tuple and what it became.
    assert!(status.contains("REWRITTEN DESTINATION"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains("192.0.2.2:") && l.contains("-> 192.0.2.1:") && l.contains("snat")),
        "an SNATed flow to the remote backend is listed:\n{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains("[2001:db8::2]:") && l.contains("[fd00:44::2]:8080")),
        "IPv6 flows are listed too:\n{status}"
    );

    // The agent's metrics (served inside the node's namespace), once the
    // restarted agent has programmed its first snapshot (/healthz).
    let get = |path: &'static str| {
        lab.node.run(move || {
            let mut c = TcpStream::connect("127.0.0.1:9464").map_err(|e| e.to_string())?;
            write!(c, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
            let mut body = String::new();
            c.read_to_string(&mut body).map_err(|e| e.to_string())?;
            Ok::<String, String>(body)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get("/healthz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(
            Instant::now() < deadline,
            "the restarted agent never became healthy"
        );
    }
    let metrics = get("/metrics").unwrap();
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert!(value("pier_agent_conntrack_entries ") >= 2.0);
    assert_eq!(
        value("pier_agent_service_addresses{scope=\"external\"} "),
        2.0
    );
    assert!(value("pier_agent_programming_total{result=\"ok\"} ") >= 1.0);
    assert!(value("pier_agent_map_capacity{map=\"pier_ct4_flows\"} ") > 0.0);
}
