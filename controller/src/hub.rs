//! The latest published snapshot, shared by every producer (manifest folder,
//! Kubernetes watches) and every consumer (the snapshot stream server).
//!
//! Producers call [`Hub::publish`]; the hub gives each part of the next
//! snapshot its version (moved only when the content moved) and computes
//! the delta from the previous publication once, for every subscriber that
//! is up to date. Consumers hold a `watch::Receiver` and always see the
//! latest publication only: a slow consumer skips intermediate ones instead
//! of queueing them. Publications are shared (`Arc`), never copied.

use pier_snapshot::{
    make_delta_parts, Delta, KeyedDelta, Parts, Snapshot, Versioned, SCHEMA_VERSION,
};
use pier_translate::ClusterState;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One published state.
#[derive(Debug)]
pub struct Publication {
    /// The versioned snapshot of the whole cluster.
    pub snapshot: Arc<Snapshot>,
    /// The delta from publication `seq - 1` (`None` for the first).
    pub delta: Option<Delta>,
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
    /// Serialises producers (versions are assigned in order).
    publishing: Mutex<()>,
    tx: watch::Sender<Option<Arc<Publication>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            publishing: Mutex::new(()),
            tx: watch::channel(None).0,
        }
    }
}

/// Gives `next` the version of `prev` when their content is equal, the
/// next version otherwise; returns whether it moved.
fn carry<T: PartialEq>(prev: &Versioned<T>, next: &mut Versioned<T>) -> bool {
    if prev.data == next.data {
        next.version = prev.version;
        false
    } else {
        next.version = prev.version + 1;
        true
    }
}

impl Hub {
    /// Publishes the next translation. `state` is `None` when only endpoints
    /// changed (the routes part cannot have moved). Returns whether the
    /// snapshot changed.
    pub fn publish(&self, mut next: Snapshot, state: Option<Arc<ClusterState>>) -> bool {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.tx.borrow().clone();
        let empty = Snapshot::empty();
        let prev = previous.as_ref().map_or(&empty, |p| &p.snapshot);
        next.schema = SCHEMA_VERSION;
        let moved = [
            carry(&prev.routes, &mut next.routes),
            carry(&prev.backends, &mut next.backends),
            carry(&prev.services, &mut next.services),
            carry(&prev.policies, &mut next.policies),
            carry(&prev.certificates, &mut next.certificates),
        ];
        let changed = moved.contains(&true);
        if previous.is_some() && !changed && state.is_none() {
            return false;
        }
        let (snapshot, delta) = match &previous {
            Some(p) if !changed => (p.snapshot.clone(), Some(Delta::default())),
            Some(p) => {
                let delta = make_delta_parts(&p.snapshot, &next, Parts::ALL);
                (Arc::new(next), Some(delta))
            }
            None => (Arc::new(next), None),
        };
        let (state, state_generation) = match (state, &previous) {
            (Some(s), prev) => (s, prev.as_ref().map_or(1, |p| p.state_generation + 1)),
            (None, Some(prev)) => (prev.state.clone(), prev.state_generation),
            (None, None) => (Arc::new(ClusterState::default()), 1),
        };
        let seq = previous.as_ref().map_or(1, |p| p.seq + 1);
        self.tx.send_replace(Some(Arc::new(Publication {
            snapshot,
            delta,
            state,
            state_generation,
            seq,
        })));
        changed || previous.is_none()
    }

    /// The endpoint fast path: publishes `next`, which differs from the
    /// latest publication at most in the backend sets named by `keys` (the
    /// producer knows what it touched). Nothing else is compared, so the
    /// cost follows the change, not the cluster.
    pub fn publish_backends(&self, mut next: Snapshot, keys: &[String]) -> bool {
        let _one_at_a_time = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let Some(previous) = self.tx.borrow().clone() else {
            drop(_one_at_a_time);
            return self.publish(next, None);
        };
        let prev = &previous.snapshot;
        let mut upsert = std::collections::BTreeMap::new();
        let mut remove = Vec::new();
        for key in keys {
            match (prev.backends.data.get(key), next.backends.data.get(key)) {
                (old, Some(new)) if old != Some(new) => {
                    upsert.insert(key.clone(), new.clone());
                }
                (Some(_), None) => remove.push(key.clone()),
                _ => {}
            }
        }
        if upsert.is_empty() && remove.is_empty() {
            return false;
        }
        next.schema = SCHEMA_VERSION;
        next.routes.version = prev.routes.version;
        next.services.version = prev.services.version;
        next.policies.version = prev.policies.version;
        next.certificates.version = prev.certificates.version;
        next.backends.version = prev.backends.version + 1;
        let delta = Delta {
            backends: Some(KeyedDelta {
                base_version: prev.backends.version,
                version: next.backends.version,
                upsert,
                remove,
            }),
            ..Delta::default()
        };
        self.tx.send_replace(Some(Arc::new(Publication {
            snapshot: Arc::new(next),
            delta: Some(delta),
            state: previous.state.clone(),
            state_generation: previous.state_generation,
            seq: previous.seq + 1,
        })));
        true
    }

    /// Follows publications (the first `borrow` may be `None`: nothing yet).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Publication>>> {
        self.tx.subscribe()
    }

    pub fn latest(&self) -> Option<Arc<Publication>> {
        self.tx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_only_with_content_and_the_delta_is_computed_once() {
        let hub = Hub::default();
        let mut s = Snapshot::empty();
        assert!(hub.publish(s.clone(), None));
        let first = hub.latest().unwrap();
        assert!(first.delta.is_none());
        assert!(
            !hub.publish(s.clone(), None),
            "same content: nothing published"
        );
        assert_eq!(hub.latest().unwrap().seq, 1);
        // A new state without a snapshot change is published (scoped views
        // may differ) and shares the snapshot.
        assert!(!hub.publish(s.clone(), Some(Arc::new(ClusterState::default()))));
        let second = hub.latest().unwrap();
        assert_eq!((second.seq, second.state_generation), (2, 2));
        assert!(Arc::ptr_eq(&first.snapshot, &second.snapshot));
        assert!(second.delta.as_ref().unwrap().is_empty());
        // A change moves one part's version and carries its delta.
        s.certificates.data.insert(
            "ns/tls".into(),
            pier_snapshot::Certificate {
                chain_pem: "chain".into(),
                private_key_pem: pier_snapshot::PrivateKeyPem("key".into()),
            },
        );
        assert!(hub.publish(s, None));
        let third = hub.latest().unwrap();
        assert_eq!(third.snapshot.certificates.version, 1);
        assert_eq!(third.snapshot.routes.version, 0);
        let delta = third.delta.as_ref().unwrap();
        assert!(delta.certificates.is_some() && delta.routes.is_none() && delta.backends.is_none());
    }

    #[test]
    fn the_endpoint_fast_path_publishes_only_the_named_backend_sets() {
        let hub = Hub::default();
        let set = |port: u16| pier_snapshot::BackendSet {
            protocol: Default::default(),
            external_name: None,
            port,
            endpoints: Vec::new(),
            load_balancing: Default::default(),
        };
        let mut s = Snapshot::empty();
        s.backends.data.insert("ns/a:80".into(), set(80));
        s.backends.data.insert("ns/b:80".into(), set(80));
        hub.publish(s.clone(), None);
        let before = hub.latest().unwrap();
        s.backends.data.insert("ns/a:80".into(), set(81));
        assert!(
            !hub.publish_backends(s.clone(), &["ns/b:80".into()]),
            "b did not move"
        );
        assert!(hub.publish_backends(s.clone(), &["ns/a:80".into(), "ns/b:80".into()]));
        let after = hub.latest().unwrap();
        assert_eq!(
            after.snapshot.backends.version,
            before.snapshot.backends.version + 1
        );
        assert_eq!(
            after.snapshot.routes.version,
            before.snapshot.routes.version
        );
        let d = after.delta.as_ref().unwrap().backends.as_ref().unwrap();
        assert_eq!(d.upsert.keys().collect::<Vec<_>>(), vec!["ns/a:80"]);
        // The same answer as the whole-snapshot path.
        let hub2 = Hub::default();
        hub2.publish((*before.snapshot).clone(), None);
        hub2.publish(s, None);
        assert_eq!(hub2.latest().unwrap().delta, after.delta);
    }
}
