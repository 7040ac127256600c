//! The whole product on one machine: `pier-controller serve` translates a
//! folder of manifests and streams snapshots; `pier-agent --controller`
//! programs the socket load balancer; `pier-proxy --controller` serves the
//! Gateway. A client (in a cgroup the test makes, so nothing else is
//! affected) reaches the proxy through a ClusterIP, and the proxy routes to
//! an upstream. One edit of the folder changes what both data planes do.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A workspace binary, built by `cargo test --workspace` next to this test.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true: the end-to-end test must run as root"
        );
        eprintln!("skipped: the end-to-end test needs root (BPF)");
    }
    root
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child cgroup v2 (the socket hooks apply only to it) and a private bpffs.
struct Sandbox {
    cgroup: PathBuf,
    bpffs: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup v2 mount");
        let name = format!("pier-e2e-{}", std::process::id());
        let sandbox = Sandbox {
            cgroup: root.join(&name),
            bpffs: std::env::temp_dir().join(&name),
        };
        std::fs::create_dir(&sandbox.cgroup).unwrap();
        std::fs::create_dir_all(&sandbox.bpffs).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&sandbox.bpffs)
            .status()
            .unwrap();
        assert!(mounted.success());
        sandbox
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// An upstream answering every request with its name.
fn upstream(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
            });
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} never listened on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::yield_now();
    }
}

fn manifests(gateway_port: u16, route_to: &str, one: u16, two: u16) -> String {
    // Service port 18099: should a hook not rewrite, nothing answers there.
    let service = |name: &str, cluster_ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: 18099}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n---\n"
        )
    };
    // The proxy itself sits behind a ClusterIP (as a Service in front of the
    // proxy Deployment would); the two upstreams are ordinary Services.
    format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: pier}}\nspec: {{controllerName: pier.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners: [{{name: http, protocol: HTTP, port: {gateway_port}}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [app.test]\n  rules: [{{backendRefs: [{{name: {route_to}, port: 18099}}]}}]\n",
        service("gateway", "127.96.9.1", gateway_port),
        service("one", "127.96.9.2", one),
        service("two", "127.96.9.3", two),
    )
}

/// One request from a process in the sandbox cgroup to the gateway's ClusterIP.
fn ask(sandbox: &Sandbox) -> String {
    let client = "import socket\ntry:\n    s = socket.create_connection((\"127.96.9.1\", 18099), timeout=5)\n    s.sendall(b\"GET / HTTP/1.1\\r\\nHost: app.test\\r\\nConnection: close\\r\\n\\r\\n\")\n    print(s.makefile(\"rb\").read().decode().split(\"\\r\\n\\r\\n\", 1)[-1])\nexcept OSError as e:\n    print(\"error\", e)\n";
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {} && exec python3 -c '{}'",
            sandbox.cgroup.join("cgroup.procs").display(),
            client
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn answer_becomes(sandbox: &Sandbox, want: &str, logs: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ask(sandbox);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never got {want:?} (last {got:?}); logs:\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn one_edit_of_the_folder_moves_both_data_planes() {
    if !privileged() {
        return;
    }
    let sandbox = Sandbox::new();
    let (one, two) = (upstream("one"), upstream("two"));
    let gateway_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let write = |text: String| {
        // Replaced atomically, as a config tool would.
        let staged = dir.path().join(".staged");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, dir.path().join("app.yaml")).unwrap();
    };
    write(manifests(gateway_port, "one", one, two));
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| logs.path().join(name);
    let stream = free_port();
    let stream_addr = SocketAddr::from(([127, 0, 0, 1], stream)).to_string();
    let _controller = Kill(
        Command::new(binary("pier-controller"))
            .args(["serve", "--manifests"])
            .arg(dir.path())
            .args(["--listen", &stream_addr])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_port(stream, "pier-controller", &log("controller.log"));
    let admin = free_port();
    let _proxy = Kill(
        Command::new(binary("pier-proxy"))
            .args(["--controller", &stream_addr, "--listen-host", "127.0.0.1"])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log("proxy.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let _agent = Kill(
        Command::new(binary("pier-agent"))
            .args(["--controller", &stream_addr, "--cgroup"])
            .arg(&sandbox.cgroup)
            .arg("--pin-dir")
            .arg(sandbox.bpffs.join("pier"))
            .args(["--metrics-bind", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_port(gateway_port, "pier-proxy", &log("proxy.log"));
    let all_logs = [log("controller.log"), log("proxy.log"), log("agent.log")];
    let all_logs: Vec<&Path> = all_logs.iter().map(PathBuf::as_path).collect();
    // ClusterIP (agent) → the proxy's listener → the route's backend.
    answer_becomes(&sandbox, "one", &all_logs);
    // One edit: the route now points at the other Service.
    write(manifests(gateway_port, "two", one, two));
    answer_becomes(&sandbox, "two", &all_logs);
    // And the agent follows Service changes from the same stream: the
    // gateway's ClusterIP moves to another address.
    write(manifests(gateway_port, "two", one, two).replace("127.96.9.1", "127.96.9.4"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ask(&sandbox).starts_with("error") {
        assert!(Instant::now() < deadline, "the old ClusterIP still answers");
    }
}
