//! pier-agent following `pier-controller serve`: a folder of manifests
//! translated by the controller, streamed to the agent, programmed into the
//! socket load balancer; an edit of the folder reaches the kernel through
//! the stream without a restart. (pier-agent's own tests cover standalone
//! mode; this one needs both binaries, so it lives here.)

use pier_tests::binary;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the test can run; with CI=true a non-root run is a failure, never a skip.
fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !root {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true: the agent stream test must run as root"
        );
        eprintln!("skipped: the agent stream test needs root (BPF)");
    }
    root
}

/// A child process killed (and reaped) on drop, even when the test fails.
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
        let name = format!("pier-agent-stream-{}", std::process::id());
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

    /// What a client in the sandbox cgroup gets from the ClusterIP 127.96.1.1:80.
    fn ask(&self) -> String {
        let code = "import socket\ntry:\n    print(socket.create_connection((\"127.96.1.1\", 80), timeout=2).recv(100).decode())\nexcept OSError as e:\n    print(\"error\", e.errno)\n";
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec python3 -c '{}'",
                self.cgroup.join("cgroup.procs").display(),
                code
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

/// A TCP backend that writes `reply` to every connection.
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

#[test]
fn the_agent_follows_the_controller_stream() {
    if !privileged() {
        return;
    }
    let (controller_bin, agent_bin) = (
        binary("pier-controller", "pier-controller"),
        binary("pier-agent", "pier-agent"),
    );
    let sandbox = Sandbox::new();
    let (one, two) = (backend("stream-one"), backend("stream-two"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.yaml"), manifests(one)).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let controller_log = tempfile::NamedTempFile::new().unwrap();
    let _controller = Kill(
        Command::new(&controller_bin)
            .args(["serve", "--manifests"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(controller_log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let agent_log = tempfile::NamedTempFile::new().unwrap();
    let _agent = Kill(
        Command::new(&agent_bin)
            .args(["--controller", &format!("127.0.0.1:{port}")])
            .arg("--cgroup")
            .arg(&sandbox.cgroup)
            .arg("--pin-dir")
            .arg(sandbox.bpffs.join("pier"))
            .args(["--metrics-bind", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(agent_log.reopen().unwrap())
            .spawn()
            .unwrap(),
    );
    let wait_for = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = sandbox.ask();
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never got {want:?} (last: {got:?}); controller log:\n{}\nagent log:\n{}",
                std::fs::read_to_string(controller_log.path()).unwrap_or_default(),
                std::fs::read_to_string(agent_log.path()).unwrap_or_default()
            );
        }
    };
    wait_for("stream-one");
    std::fs::write(dir.path().join("web.yaml"), manifests(two)).unwrap();
    wait_for("stream-two");
}
