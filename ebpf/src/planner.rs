//! Incremental planning. The map content is kept per L4 service, so a change
//! that touches a few services (an endpoint update) re-plans only those and
//! yields only their map operations, in the same safe order as
//! [`crate::plan::diff`]: backends, then slots / tables / services are
//! written; then what left is deleted, backends last and only when no
//! service uses them any more.

use crate::maps::{Lb4Key, Lb6Key};
use crate::plan::{apply, deletes, diff, plan_service, puts, Ids, MapOp, MapState, NodeInfo};
use pier_snapshot::Snapshot;
use std::collections::{BTreeMap, BTreeSet};

pub struct Planner {
    node: NodeInfo,
    ids: Ids,
    /// Each L4 service's own part of the maps.
    fragments: BTreeMap<String, MapState>,
    /// Backend set key → the services using it (what an endpoint change touches).
    users: BTreeMap<String, BTreeSet<String>>,
    /// Service → its backend set key.
    set_of: BTreeMap<String, String>,
    /// Backend id → how many services' fragments use it.
    backend_refs: BTreeMap<u32, usize>,
    /// Service address → how many fragments claim it (two Services may claim
    /// one address for a moment, e.g. a rename keeping a static ClusterIP):
    /// an address is deleted only when nobody claims it any more.
    key_refs: BTreeMap<Lb4Key, usize>,
    key6_refs: BTreeMap<Lb6Key, usize>,
    /// What the kernel holds: the union of the fragments.
    state: MapState,
    /// The IPv4 backends the last operations removed (for stale sockets).
    removed: Vec<crate::maps::Lb4Backend>,
}

impl Planner {
    /// Starts from what the kernel maps already hold (empty, or adopted
    /// from a previous agent's pinned maps).
    pub fn new(node: NodeInfo, kernel: MapState, counters: crate::maps::IdCounters) -> Planner {
        Planner {
            node,
            ids: Ids::adopt(&kernel, counters),
            fragments: BTreeMap::new(),
            users: BTreeMap::new(),
            set_of: BTreeMap::new(),
            backend_refs: BTreeMap::new(),
            key_refs: BTreeMap::new(),
            key6_refs: BTreeMap::new(),
            state: kernel,
            removed: Vec::new(),
        }
    }

    /// What the kernel maps hold once the last operations are applied.
    pub fn state(&self) -> &MapState {
        &self.state
    }

    /// The id counters to keep across restarts (see [`Ids::counters`]).
    pub fn id_counters(&self) -> crate::maps::IdCounters {
        self.ids.counters()
    }

    /// The IPv4 backends the last [`Planner::full`] / [`Planner::update`] removed.
    pub fn removed_backends(&self) -> &[crate::maps::Lb4Backend] {
        &self.removed
    }

    /// After a failed update: the kernel holds `actual`; the next
    /// [`Planner::full`] diffs against it.
    pub fn reset_to(&mut self, actual: MapState) {
        self.state = actual;
    }

    /// Re-plans every service and diffs against the whole kernel state
    /// (first snapshot, resync, or a source that gives no change list).
    pub fn full(&mut self, snapshot: &Snapshot) -> Vec<MapOp> {
        let mut union = MapState::default();
        self.fragments.clear();
        self.users.clear();
        self.set_of.clear();
        for (name, svc) in &snapshot.services.data {
            let mut fragment = MapState::default();
            if let Some(set) = snapshot.backends.data.get(&svc.backends) {
                plan_service(&mut fragment, name, svc, set, &self.node, &mut self.ids);
            }
            merge(&mut union, &fragment);
            self.users
                .entry(svc.backends.clone())
                .or_default()
                .insert(name.clone());
            self.set_of.insert(name.clone(), svc.backends.clone());
            self.fragments.insert(name.clone(), fragment);
        }
        self.backend_refs = BTreeMap::new();
        self.key_refs = BTreeMap::new();
        self.key6_refs = BTreeMap::new();
        for fragment in self.fragments.values() {
            for id in fragment.backends.keys().chain(fragment.backends6.keys()) {
                acquire(&mut self.backend_refs, *id);
            }
            for key in fragment.services.keys() {
                acquire(&mut self.key_refs, *key);
            }
            for key in fragment.services6.keys() {
                acquire(&mut self.key6_refs, *key);
            }
        }
        self.ids.retain_used_by(&union);
        let ops = diff(&self.state, &union);
        self.removed = ops
            .iter()
            .filter_map(|op| match op {
                MapOp::DeleteBackend(id) => self.state.backends.get(id).copied(),
                _ => None,
            })
            .collect();
        self.state = union;
        ops
    }

    /// The services a change touches: those changed themselves, and those
    /// whose backend set changed.
    pub fn touched<'a>(
        &self,
        services: impl IntoIterator<Item = &'a String>,
        backend_sets: impl IntoIterator<Item = &'a String>,
    ) -> BTreeSet<String> {
        let mut touched: BTreeSet<String> = services.into_iter().cloned().collect();
        for set in backend_sets {
            if let Some(users) = self.users.get(set) {
                touched.extend(users.iter().cloned());
            }
        }
        touched
    }

    /// Re-plans only the services in `touched` (added, changed or removed in
    /// `snapshot`); everything else is known not to have changed.
    pub fn update(&mut self, snapshot: &Snapshot, touched: &BTreeSet<String>) -> Vec<MapOp> {
        let mut changes = Vec::new();
        self.removed.clear();
        for name in touched {
            let old = self.fragments.remove(name).unwrap_or_default();
            if let Some(set_key) = self.set_of.remove(name) {
                if let Some(users) = self.users.get_mut(&set_key) {
                    users.remove(name);
                    if users.is_empty() {
                        self.users.remove(&set_key);
                    }
                }
            }
            let mut new = MapState::default();
            match snapshot.services.data.get(name) {
                Some(svc) => {
                    if let Some(set) = snapshot.backends.data.get(&svc.backends) {
                        plan_service(&mut new, name, svc, set, &self.node, &mut self.ids);
                    }
                    self.users
                        .entry(svc.backends.clone())
                        .or_default()
                        .insert(name.clone());
                    self.set_of.insert(name.clone(), svc.backends.clone());
                    self.fragments.insert(name.clone(), new.clone());
                }
                None => self.ids.forget_service(name),
            }
            changes.push((old, new));
        }
        let mut ops = Vec::new();
        // 1. Backends the new fragments use (a backend shared with another
        //    service is written once, and again only if its flags change).
        for (_, new) in &changes {
            for (id, b) in &new.backends {
                acquire(&mut self.backend_refs, *id);
                if self.state.backends.get(id) != Some(b) {
                    ops.push(MapOp::PutBackend(*id, *b));
                    self.state.backends.insert(*id, *b);
                }
            }
            for (id, b) in &new.backends6 {
                acquire(&mut self.backend_refs, *id);
                if self.state.backends6.get(id) != Some(b) {
                    ops.push(MapOp::PutBackend6(*id, *b));
                    self.state.backends6.insert(*id, *b);
                }
            }
        }
        // 2. Slots, tables and service addresses of the touched services.
        for (old, new) in &changes {
            puts(&mut ops, &old.slots, &new.slots, MapOp::PutSlot);
            puts(&mut ops, &old.maglev, &new.maglev, MapOp::PutMaglev);
            puts(&mut ops, &old.services, &new.services, MapOp::PutService);
            puts(&mut ops, &old.services6, &new.services6, MapOp::PutService6);
            for key in new.services.keys() {
                acquire(&mut self.key_refs, *key);
            }
            for key in new.services6.keys() {
                acquire(&mut self.key6_refs, *key);
            }
        }
        // 3. Addresses nobody claims any more, then the old slots and tables
        //    (slots and tables are keyed by service id: each fragment's own).
        for (old, new) in &changes {
            for (key, value) in &old.services {
                if release(&mut self.key_refs, *key) {
                    ops.push(MapOp::DeleteService(*key));
                } else if !new.services.contains_key(key)
                    && self.state.services.get(key) == Some(value)
                {
                    // Still claimed by another Service, but the map holds the
                    // one that left: give the address to the one that stays.
                    let stays = self.fragments.values().find_map(|f| f.services.get(key));
                    if let Some(v) = stays {
                        ops.push(MapOp::PutService(*key, *v));
                    }
                }
            }
            for (key, value) in &old.services6 {
                if release(&mut self.key6_refs, *key) {
                    ops.push(MapOp::DeleteService6(*key));
                } else if !new.services6.contains_key(key)
                    && self.state.services6.get(key) == Some(value)
                {
                    let stays = self.fragments.values().find_map(|f| f.services6.get(key));
                    if let Some(v) = stays {
                        ops.push(MapOp::PutService6(*key, *v));
                    }
                }
            }
        }
        for (old, new) in &changes {
            deletes(&mut ops, &old.maglev, &new.maglev, MapOp::DeleteMaglev);
            deletes(&mut ops, &old.slots, &new.slots, MapOp::DeleteSlot);
        }
        // 4. Backends no service uses any more.
        for (old, _) in &changes {
            for id in old.backends.keys() {
                if release(&mut self.backend_refs, *id) {
                    ops.push(MapOp::DeleteBackend(*id));
                    if let Some(b) = self.state.backends.remove(id) {
                        self.ids.forget_backend(&b);
                        self.removed.push(b);
                    }
                }
            }
            for id in old.backends6.keys() {
                if release(&mut self.backend_refs, *id) {
                    ops.push(MapOp::DeleteBackend6(*id));
                    if let Some(b) = self.state.backends6.remove(id) {
                        self.ids.forget_backend6(&b);
                    }
                }
            }
        }
        for op in &ops {
            apply(&mut self.state, op);
        }
        ops
    }
}

fn acquire<K: Ord>(refs: &mut BTreeMap<K, usize>, key: K) {
    *refs.entry(key).or_default() += 1;
}

/// Drops one reference; true when it was the last.
fn release<K: Ord>(refs: &mut BTreeMap<K, usize>, key: K) -> bool {
    match refs.get_mut(&key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(&key);
            true
        }
        None => false,
    }
}

/// Adds `fragment`'s entries to `union`.
fn merge(union: &mut MapState, fragment: &MapState) {
    union
        .services
        .extend(fragment.services.iter().map(|(k, v)| (*k, *v)));
    union
        .slots
        .extend(fragment.slots.iter().map(|(k, v)| (*k, *v)));
    union
        .backends
        .extend(fragment.backends.iter().map(|(k, v)| (*k, *v)));
    union
        .maglev
        .extend(fragment.maglev.iter().map(|(k, v)| (*k, v.clone())));
    union
        .services6
        .extend(fragment.services6.iter().map(|(k, v)| (*k, *v)));
    union
        .backends6
        .extend(fragment.backends6.iter().map(|(k, v)| (*k, *v)));
}

#[cfg(test)]
mod tests;
