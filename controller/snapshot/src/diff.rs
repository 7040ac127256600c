//! What changed between two snapshots, part by part and key by key.

use crate::{PortProtocol, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDiff {
    /// Ports whose listener was added, removed or changed.
    pub listeners: KeyChanges<(u16, PortProtocol)>,
    pub backends: KeyChanges<String>,
    pub services: KeyChanges<String>,
    pub policies_changed: bool,
    pub certificates: KeyChanges<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyChanges<K> {
    pub added: Vec<K>,
    pub removed: Vec<K>,
    pub changed: Vec<K>,
}

impl<K> Default for KeyChanges<K> {
    fn default() -> Self {
        KeyChanges {
            added: Vec::new(),
            removed: Vec::new(),
            changed: Vec::new(),
        }
    }
}

impl<K> KeyChanges<K> {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl SnapshotDiff {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.backends.is_empty()
            && self.services.is_empty()
            && !self.policies_changed
            && self.certificates.is_empty()
    }

    /// Whether the L7 route table must be rebuilt (endpoint churn alone never does).
    pub fn routes_changed(&self) -> bool {
        !self.listeners.is_empty()
    }
}

/// Key-by-key comparison of two ordered maps.
pub fn diff_maps<K: Ord + Clone, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> KeyChanges<K> {
    let mut changes = KeyChanges::default();
    for (k, v) in new {
        match old.get(k) {
            None => changes.added.push(k.clone()),
            Some(o) if o != v => changes.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    changes.removed = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .cloned()
        .collect();
    changes
}

/// Which parts and which keys differ between `old` and `new`.
pub fn diff(old: &Snapshot, new: &Snapshot) -> SnapshotDiff {
    let by_port = |s: &Snapshot| -> BTreeMap<(u16, PortProtocol), crate::PortListener> {
        s.routes
            .data
            .listeners
            .iter()
            .map(|l| ((l.port, l.protocol), l.clone()))
            .collect()
    };
    SnapshotDiff {
        listeners: if old.routes.data == new.routes.data {
            KeyChanges::default()
        } else {
            diff_maps(&by_port(old), &by_port(new))
        },
        backends: diff_maps(&old.backends.data, &new.backends.data),
        services: diff_maps(&old.services.data, &new.services.data),
        policies_changed: old.policies.data != new.policies.data,
        certificates: diff_maps(&old.certificates.data, &new.certificates.data),
    }
}
