//! Re-reads the manifest folder when anything in it changes.

use crate::{load_dir, ManifestErrors};
use notify::{RecursiveMode, Watcher};
use pier_translate::ClusterState;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Editors write files in several steps; wait for this much quiet before reloading.
/// Default quiet time after a change before the folder is reloaded.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Calls `on_change` with a fresh load of `dir` after every burst of changes.
/// The returned watcher stops watching when dropped.
pub fn watch(
    dir: &Path,
    on_change: impl Fn(Result<ClusterState, ManifestErrors>) + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    watch_with_settle(dir, SETTLE, on_change)
}

/// [`watch`] with a chosen quiet period (tests use a short one).
pub fn watch_with_settle(
    dir: &Path,
    settle: Duration,
    on_change: impl Fn(Result<ClusterState, ManifestErrors>) + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only manifest files matter: logs or editor swap files in the folder
        // must not keep the reload loop busy.
        let relevant = event.is_ok_and(|e| {
            !e.kind.is_access()
                && e.paths.iter().any(|p| {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    !name.starts_with('.')
                        && (name.ends_with(".yaml") || name.ends_with(".yml") || p.is_dir())
                })
        });
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    let dir = dir.to_path_buf();
    std::thread::Builder::new()
        .name("pier-manifest-watch".into())
        .spawn(move || {
            // Ends when the watcher (and with it the sender) is dropped.
            while rx.recv().is_ok() {
                while rx.recv_timeout(settle).is_ok() {}
                on_change(load_dir(&dir));
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
