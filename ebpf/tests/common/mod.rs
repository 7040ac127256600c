//! Shared by the kernel tests: root check, a test-made cgroup v2 and a
//! private bpffs, both removed on drop, and a client run inside the cgroup.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// Whether the test can run; with CI=true a non-root run is a failure, never a skip.
pub fn privileged() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true: the BPF tests must run as root"
        );
        eprintln!("skipped: BPF tests need root");
    }
    root
}

/// A child cgroup v2 and a private bpffs mount, made for one test.
pub struct Sandbox {
    pub cgroup: PathBuf,
    pub bpffs: PathBuf,
}

impl Sandbox {
    pub fn new(tag: &str) -> Sandbox {
        let root = pier_agent::loader::cgroup2_root().expect("a cgroup v2 mount");
        // Tests of one binary run in parallel: each sandbox gets its own name.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pier-test-{tag}-{}-{n}", std::process::id());
        let sandbox = Sandbox {
            cgroup: root.join(&name),
            bpffs: std::env::temp_dir().join(&name),
        };
        std::fs::create_dir(&sandbox.cgroup).unwrap();
        std::fs::create_dir_all(&sandbox.bpffs).unwrap();
        assert!(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&sandbox.bpffs)
            .status()
            .unwrap()
            .success());
        sandbox
    }

    /// Runs a Python snippet in a process placed in the sandbox cgroup.
    pub fn run_python(&self, code: &str) -> (bool, String, String) {
        let procs = self.cgroup.join("cgroup.procs");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec python3 -c '{}'",
                procs.display(),
                code.replace('\'', "\\'")
            ))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A child process killed (and reaped) on drop, even when a test fails.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sandbox {
    /// pier-agent on this sandbox (its cgroup, its pinned maps, metrics on
    /// an ephemeral port) with `args` (the snapshot source and any extras),
    /// its log going to `stderr`.
    pub fn agent(&self, args: &[&std::ffi::OsStr], stderr: impl Into<std::process::Stdio>) -> Kill {
        Kill(
            Command::new(pier_tests::binary("pier-agent-cli", "pier-agent"))
                .args(args)
                .arg("--cgroup")
                .arg(&self.cgroup)
                .arg("--pin-dir")
                .arg(self.bpffs.join("pier"))
                .args(["--metrics-bind", "127.0.0.1:0"])
                .stdout(std::process::Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// A network namespace made for one test (`ip netns add`), deleted on drop
/// with everything in it (veths, addresses, routes).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("pier-{tag}-{}", std::process::id());
        // A leftover from a killed run, if any.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&format!("ip netns add {name}"));
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        // No duplicate address detection: link-local addresses (which IPv6
        // neighbour discovery needs) are usable at once, not after ~1 s.
        ns.sh("sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0");
        ns
    }

    /// Runs a shell command inside the namespace; panics when it fails.
    pub fn sh(&self, command: &str) {
        sh(&format!("ip netns exec {} {command}", self.name));
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates live there (and keep living there after it returns).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Like [`Netns::run`] but leaves the thread running (a server).
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the network namespace pinned at `path`.
pub fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: setns on a valid namespace fd; it only changes this thread's
    // network namespace.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

pub fn sh(command: &str) {
    let out = Command::new("sh").arg("-c").arg(command).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A veth pair with one end in each namespace (made inside them: the
/// machine's own namespace never sees it).
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    a.sh(&format!(
        "ip link add {a_name} type veth peer name {b_name} netns {}",
        b.name
    ));
    a.sh(&format!("ip link set {a_name} up"));
    b.sh(&format!("ip link set {b_name} up"));
}
