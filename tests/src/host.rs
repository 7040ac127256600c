//! What the cross-process tests share on the host: root check, processes
//! killed on drop, a sandbox cgroup + bpffs for the agent, upstreams, a test
//! link that owns the test's addresses, and a client inside the sandbox.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Whether a privileged test can run; with CI=true a non-root run is a
/// failure, never a skip.
pub fn privileged(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: {test} must run as root"
        );
        eprintln!("SKIPPED {test}: needs root (BPF)");
    }
    root
}

/// A child process killed (and reaped) on drop, even when the test fails.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `ok` until it holds; panics with `what` and `context()` after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something listens on `addr`.
pub fn wait_for_port(addr: (IpAddr, u16), what: &str, log: &Path) {
    wait_until(
        &format!("{what} to listen on {}:{}", addr.0, addr.1),
        Duration::from_secs(60),
        || TcpStream::connect(addr).is_ok(),
        || std::fs::read_to_string(log).unwrap_or_default(),
    );
}

/// A child cgroup v2 (the agent's socket hooks apply only to it) and a
/// private bpffs for its pinned maps.
pub struct Sandbox {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup v2 mount");
        let name = format!("{name}-{}", std::process::id());
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

    /// One HTTP request from a process in the sandbox cgroup (so through the
    /// agent's socket hooks): the body, or `error ...`.
    pub fn get(&self, addr: (IpAddr, u16), host: &str) -> String {
        let client = format!(
            "import socket\ntry:\n    s = socket.create_connection((\"{}\", {}), timeout=5)\n    s.sendall(b\"GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n\")\n    print(s.makefile(\"rb\").read().decode().split(\"\\r\\n\\r\\n\", 1)[-1])\nexcept OSError as e:\n    print(\"error\", e)\n",
            addr.0, addr.1
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec python3 -c '{}'",
                self.cgroup.join("cgroup.procs").display(),
                client
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// An HTTP upstream on `ip` answering every request with `name`; its port.
pub fn upstream(ip: IpAddr, name: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
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

/// A veth pair on the host that owns the test's addresses (so Kubernetes
/// accepts them as endpoints, which loopback is not), and `unreachable`
/// routes for the test's virtual addresses: a connect the agent failed to
/// rewrite fails here instead of leaving by the default route.
pub struct TestLink {
    name: String,
    routes: Vec<String>,
}

impl TestLink {
    pub fn new(address: Ipv4Addr, virtual_prefixes: &[&str]) -> TestLink {
        let name = format!("pt{}", std::process::id() % 1_000_000);
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {}", args.join(" "));
        };
        ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ]);
        let link = TestLink {
            name: name.clone(),
            routes: Vec::new(),
        };
        ip(&["addr", "add", &format!("{address}/32"), "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        ip(&["link", "set", &format!("{name}p"), "up"]);
        let mut link = link;
        for prefix in virtual_prefixes {
            ip(&["route", "add", "unreachable", prefix]);
            link.routes.push(prefix.to_string());
        }
        link
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        for prefix in &self.routes {
            let _ = Command::new("ip")
                .args(["route", "del", "unreachable", prefix])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}
