//! A real kube-apiserver + etcd for tests, from the kube kit.
//!
//! Envtest convention: the kit is `$KUBEBUILDER_ASSETS/..` when that is set
//! (the kit's `bin/`), else `../shared/kube` next to the repository. Each
//! test starts its own API server on free ports (`apiserver-up DIR`) and
//! stops it by PID on drop (`apiserver-down DIR`). Without the kit a test
//! says it was skipped; with CI=true it fails instead.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kube kit, or None (after saying why) when the test must be skipped.
pub fn kit(test: &str) -> Option<PathBuf> {
    let root = match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(assets) => PathBuf::from(assets).join(".."),
        None => repo_root().join("../shared/kube"),
    };
    if root.join("apiserver-up").is_file() && root.join("bin/kubectl").is_file() {
        return Some(root);
    }
    let why = format!(
        "{test}: no kube kit at {} (set KUBEBUILDER_ASSETS to the kit's bin/)",
        root.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED {why}");
    None
}

/// One etcd + kube-apiserver, stopped by PID on drop.
pub struct ApiServer {
    kit: PathBuf,
    pub dir: tempfile::TempDir,
}

impl ApiServer {
    pub fn up(kit: &Path) -> ApiServer {
        let dir = tempfile::Builder::new()
            .prefix("pier-apiserver-")
            .tempdir()
            .unwrap();
        let out = Command::new(kit.join("apiserver-up"))
            .arg(dir.path())
            .output()
            .expect("run apiserver-up");
        let server = ApiServer {
            kit: kit.to_path_buf(),
            dir,
        };
        assert!(
            out.status.success(),
            "apiserver-up failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(self.kit.join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into())
        }
    }

    pub fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml))
            .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
    }

    pub fn get(&self, what: &[&str]) -> Option<Value> {
        let mut args = vec!["get", "-o", "json"];
        args.extend_from_slice(what);
        let out = self.kubectl(&args, None).ok()?;
        serde_json::from_str(&out).ok()
    }

    pub fn install_crds(&self) {
        let crds = repo_root().join("../shared/crds/gateway-api-v1.5.1/experimental");
        self.kubectl(
            &["apply", "--server-side", "-f", crds.to_str().unwrap()],
            None,
        )
        .unwrap_or_else(|e| panic!("CRDs: {e}"));
        self.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("CRDs not established: {e}"));
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(self.kit.join("apiserver-down"))
            .arg(self.dir.path())
            .output();
    }
}
