//! Standalone mode's one loop, shared by every binary: load the folder,
//! translate, advance the previous snapshot (versions move only with
//! content), hand over what changed; again after every burst of changes.
//! A folder that stops parsing keeps the last good snapshot.

use crate::{load_dir, watch_with_settle, ManifestErrors};
use pier_snapshot::{Snapshot, SnapshotDiff};
use pier_translate::{translate, ClusterState, TranslateOptions, Translation, Warning};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One translation of the folder, advanced onto the previous snapshot.
pub struct Update<'a> {
    /// The first update (everything is new; `diff` is against an empty snapshot).
    pub first: bool,
    pub snapshot: &'a Snapshot,
    pub diff: &'a SnapshotDiff,
    /// The translation (statuses, warnings); its snapshot is unversioned.
    pub translation: Translation,
    pub state: ClusterState,
}

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot load the manifests: {0}")]
    Load(#[from] ManifestErrors),
    #[error("cannot watch the manifest folder: {0}")]
    Watch(#[from] notify::Error),
}

struct Follower<F> {
    options: TranslateOptions,
    current: Snapshot,
    warned: BTreeSet<Warning>,
    on_update: F,
}

impl<F: FnMut(Update<'_>)> Follower<F> {
    fn step(&mut self, state: ClusterState, first: bool) {
        let mut translation = translate(&state, &self.options);
        let next = std::mem::take(&mut translation.snapshot);
        let diff = self.current.advance(next);
        let warnings: BTreeSet<Warning> = translation.warnings.iter().cloned().collect();
        for w in warnings.difference(&self.warned) {
            tracing::warn!(object = %w.object, message = %w.message, "translation warning");
        }
        self.warned = warnings;
        if first || !diff.is_empty() {
            (self.on_update)(Update {
                first,
                snapshot: &self.current,
                diff: &diff,
                translation,
                state,
            });
        }
    }
}

/// Loads and translates `dir` now (an error if it does not parse), calls
/// `on_update` with it, then again from the watch thread after each burst of
/// changes that moved the snapshot. Watching stops when the returned watcher
/// is dropped.
pub fn follow_dir<F>(
    dir: &Path,
    options: TranslateOptions,
    settle: Duration,
    on_update: F,
) -> Result<notify::RecommendedWatcher, FollowError>
where
    F: FnMut(Update<'_>) + Send + 'static,
{
    let follower = Arc::new(Mutex::new(Follower {
        options,
        current: Snapshot::empty(),
        warned: BTreeSet::new(),
        on_update,
    }));
    // The watch starts before the first load, and waits for it: a change
    // made while the first load runs is never missed, and never applied
    // before it.
    let mut first = follower.lock().unwrap_or_else(|e| e.into_inner());
    let watching = follower.clone();
    let watcher = watch_with_settle(dir, settle, move |loaded| match loaded {
        Ok(state) => watching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .step(state, false),
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(file = %e.file.display(), line = e.line, message = %e.message, "manifest rejected; keeping the last good snapshot");
            }
        }
    })?;
    first.step(load_dir(dir)?, true);
    drop(first);
    Ok(watcher)
}
