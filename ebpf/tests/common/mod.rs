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
        let name = format!("pier-test-{tag}-{}", std::process::id());
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.bpffs).status();
        let _ = std::fs::remove_dir(&self.bpffs);
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}
