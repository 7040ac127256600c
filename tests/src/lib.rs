//! pier-tests: the tests in `tests/` run the real binaries of the workspace
//! (`cargo test --workspace` builds them) as one system: the controller
//! streams snapshots, the agent and the proxy follow it.

pub mod host;
pub mod kube;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace binary `name` (of package `package`), next to the test's
/// own build. `cargo test --workspace` builds them; a run of this package
/// alone (`cargo test -p pier-tests`) builds a missing one here, with the
/// same profile and target directory.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test>: the binaries are in target/<profile>.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(name);
    if path.exists() {
        return path;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let target_dir = profile_dir.parent().expect("the target directory");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--profile", profile, "-p", package, "--bin", name])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .unwrap_or_else(|e| panic!("running {cargo} to build {name}: {e}"));
    assert!(
        status.success() && path.exists(),
        "could not build {name} ({}): run `cargo build --workspace` first",
        path.display()
    );
    path
}
