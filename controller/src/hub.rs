//! The latest published snapshot, shared by every producer (manifest folder,
//! Kubernetes watches) and every consumer (the snapshot stream server).
//!
//! Producers call [`Hub::publish`]; the hub turns the translation into the
//! next versioned snapshot (`Snapshot::advance`), so versions only move when
//! content moves. Consumers hold a `watch::Receiver` and always see the latest
//! state only: a slow consumer skips intermediate snapshots instead of
//! queueing them.

use pier_snapshot::Snapshot;
use pier_translate::ClusterState;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One published state.
#[derive(Clone, Debug)]
pub struct Publication {
    /// The versioned snapshot of the whole cluster.
    pub snapshot: Arc<Snapshot>,
    /// The cluster state the routes were translated from, kept so that scoped
    /// subscribers (a proxy serving some Gateways) can be given a translation
    /// of only what they serve. Endpoint-only changes keep the previous one.
    pub state: Arc<ClusterState>,
    /// Bumped whenever `state` is replaced.
    pub state_generation: u64,
    /// Bumped by every publication.
    pub seq: u64,
}

pub struct Hub {
    current: Mutex<Snapshot>,
    tx: watch::Sender<Option<Arc<Publication>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            current: Mutex::new(Snapshot::empty()),
            tx: watch::channel(None).0,
        }
    }
}

impl Hub {
    /// Publishes the next translation. `state` is `None` when only endpoints
    /// changed (the routes part cannot have moved). Returns whether anything
    /// changed.
    pub fn publish(&self, next: Snapshot, state: Option<Arc<ClusterState>>) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let first = self.tx.borrow().is_none();
        let changed = !current.advance(next).is_empty();
        if !(changed || first || state.is_some()) {
            return false;
        }
        let snapshot = Arc::new(current.clone());
        self.tx.send_modify(|slot| {
            let (state, state_generation) = match (state, slot.as_ref()) {
                (Some(s), prev) => (s, prev.map_or(1, |p| p.state_generation + 1)),
                (None, Some(prev)) => (prev.state.clone(), prev.state_generation),
                (None, None) => (Arc::new(ClusterState::default()), 1),
            };
            let seq = slot.as_ref().map_or(1, |p| p.seq + 1);
            *slot = Some(Arc::new(Publication {
                snapshot,
                state,
                state_generation,
                seq,
            }));
        });
        changed || first
    }

    /// Follows publications (the first `borrow` may be `None`: nothing yet).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Publication>>> {
        self.tx.subscribe()
    }

    pub fn latest(&self) -> Option<Arc<Publication>> {
        self.tx.borrow().clone()
    }
}
