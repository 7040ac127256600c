//! Socket-level load balancing in the real kernel: the hooks are attached to
//! a child cgroup v2 made by the test (only the test's client process goes in
//! it), maps are pinned in a test-only bpffs directory, and everything is
//! removed afterwards, even when the test fails. Needs root; with CI=true it
//! must run.

mod common;
use common::*;
use pier_agent::loader::{LbMaps, MapSizes, SockLb};
use pier_agent::maps::*;
use pier_agent::plan::MapOp;
use std::io::Write;
use std::net::{TcpListener, UdpSocket};

fn key(vip: [u8; 4], port: u16, proto: u8) -> Lb4Key {
    Lb4Key {
        address: vip,
        port_be: port.to_be(),
        proto,
        scope: SCOPE_CLUSTER,
    }
}

fn service_ops(id: u32, k: Lb4Key, backends: &[(u32, [u8; 4], u16)]) -> Vec<MapOp> {
    let mut ops = Vec::new();
    for (slot, (bid, addr, port)) in backends.iter().enumerate() {
        ops.push(MapOp::PutBackend(
            *bid,
            Lb4Backend {
                address: *addr,
                port_be: port.to_be(),
                proto: k.proto,
                flags: 0,
            },
        ));
        ops.push(MapOp::PutSlot(
            LbSlotKey {
                service_id: id,
                slot: slot as u32 + 1,
            },
            *bid,
        ));
    }
    ops.push(MapOp::PutService(
        k,
        LbService {
            service_id: id,
            backend_count: backends.len() as u16,
            flags: 0,
            affinity_timeout_s: 0,
            maglev_size: 0,
        },
    ));
    ops
}

#[test]
fn cluster_ip_connects_and_datagrams_are_rewritten_at_the_socket() {
    if !privileged() {
        return;
    }
    let guard = Sandbox::new("socklb");
    let _hooks = SockLb::attach(
        &guard.bpffs.join("pier"),
        &guard.cgroup,
        &MapSizes::default(),
    )
    .unwrap();
    let mut lb = LbMaps::open(&guard.bpffs.join("pier")).unwrap();

    // Backends on loopback.
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut c) = conn else { return };
            let _ = c.write_all(b"tcp-backend");
        }
    });
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let mut reply = b"udp:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = udp.send_to(&reply, from);
        }
    });
    let mut ops = service_ops(
        1,
        key([127, 96, 0, 1], 80, PROTO_TCP),
        &[(1, [127, 0, 0, 1], tcp_port)],
    );
    // The empty service's address really has a listener: only the hook can
    // make the connect fail.
    let _behind_empty = TcpListener::bind("127.96.0.2:18099").unwrap();
    ops.extend(service_ops(2, key([127, 96, 0, 2], 18099, PROTO_TCP), &[]));
    ops.extend(service_ops(
        3,
        key([127, 96, 0, 3], 53, PROTO_UDP),
        &[(2, [127, 0, 0, 1], udp_port)],
    ));
    lb.apply(&ops).unwrap();

    // A client process inside the test cgroup; nothing else is affected.
    // The service addresses are in 127.0.0.0/8 on purpose: should a hook not
    // rewrite, the connect stays on this machine instead of leaving it.
    let client = r#"
import socket
s = socket.create_connection(("127.96.0.1", 80), timeout=5)
print("tcp", s.recv(100).decode())
try:
    socket.create_connection(("127.96.0.2", 18099), timeout=5)
    print("empty connected")
except OSError as e:
    print("empty refused", e.errno)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(b"q", ("127.96.0.3", 53))
data, src = u.recvfrom(100)
print("udp", data.decode(), src[0], src[1])
"#;
    let (ok, stdout, stderr) = guard.run_python(client);
    assert!(ok, "client failed: {stdout}\n{stderr}");
    assert!(stdout.contains("tcp tcp-backend"), "{stdout}");
    assert!(
        stdout.contains("empty refused 111\n"),
        "a service without endpoints refuses the connect at once: {stdout}"
    );
    assert!(
        stdout.contains("udp udp:q 127.96.0.3 53"),
        "replies appear to come from the service address: {stdout}"
    );

    // Outside the cgroup nothing is rewritten. (Checked with a loopback "VIP"
    // so that an un-rewritten connect can never leave the machine.)
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let vip_port = free.local_addr().unwrap().port();
    drop(free);
    lb.apply(&service_ops(
        4,
        key([127, 0, 0, 1], vip_port, PROTO_TCP),
        &[(1, [127, 0, 0, 1], tcp_port)],
    ))
    .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", vip_port)).is_err(),
        "the test process is outside the cgroup: refused, not rewritten"
    );
    drop(lb);
    drop(guard);
}

fn named_backend(name: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let _ = c.write_all(name.as_bytes());
        }
    });
    port
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new("affinity");
    let _hooks = SockLb::attach(
        &sandbox.bpffs.join("pier"),
        &sandbox.cgroup,
        &MapSizes::default(),
    )
    .unwrap();
    let mut lb = LbMaps::open(&sandbox.bpffs.join("pier")).unwrap();
    let (a, b) = (named_backend("A"), named_backend("B"));
    let backends = [(11, [127, 0, 0, 1], a), (12, [127, 0, 0, 1], b)];
    let mut sticky = service_ops(21, key([127, 96, 0, 4], 80, PROTO_TCP), &backends);
    if let Some(MapOp::PutService(_, svc)) = sticky.last_mut() {
        svc.flags = SVC_AFFINITY;
        svc.affinity_timeout_s = 600;
    }
    lb.apply(&sticky).unwrap();
    lb.apply(&service_ops(
        22,
        key([127, 96, 0, 5], 80, PROTO_TCP),
        &backends,
    ))
    .unwrap();
    let (ok, out, err) = sandbox.run_python(
        "import socket\nfor vip in (\"127.96.0.4\", \"127.96.0.5\"):\n    seen = set(socket.create_connection((vip, 80), timeout=5).recv(10).decode() for _ in range(40))\n    print(vip, \"\".join(sorted(seen)))\n",
    );
    assert!(ok, "{out}\n{err}");
    let line = |vip: &str| {
        out.lines()
            .find(|l| l.starts_with(vip))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        matches!(line("127.96.0.4").as_str(), "127.96.0.4 A" | "127.96.0.4 B"),
        "affinity keeps one backend: {out}"
    );
    assert_eq!(
        line("127.96.0.5"),
        "127.96.0.5 AB",
        "without affinity both backends are used: {out}"
    );
}
