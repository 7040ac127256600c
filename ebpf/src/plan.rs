//! Snapshot → map content ([`plan`]) and map content → ordered operations
//! ([`diff`]). The order guarantees a service never points at a slot or a
//! backend that is not written yet, so connects keep working during updates.

use crate::maps::*;
use pier_snapshot::{BackendSet, Endpoint, L4Protocol, L4Service, Snapshot};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Facts about the node the agent runs on.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    pub zone: Option<String>,
    /// Node addresses NodePorts are served on (from outside and from this node's sockets).
    pub addresses: Vec<Ipv4Addr>,
    /// The node's IPv6 addresses NodePorts are served on from outside.
    pub addresses6: Vec<std::net::Ipv6Addr>,
    /// Maglev table size for services reached from outside (a prime ≤
    /// [`MAGLEV_MAX`]; 0 means [`crate::maglev::DEFAULT_TABLE_SIZE`]).
    pub maglev_table_size: u32,
}

/// A service's Maglev table, by what it is built from: the backends' stable
/// names (the same on every node) and their ids on this node. The table
/// itself is computed when it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevSpec {
    pub size: u32,
    /// `(address:port, backend id)`, sorted by name.
    pub backends: Vec<(String, u32)>,
}

impl MaglevSpec {
    /// The table as backend ids, entry by entry (`size` entries).
    pub fn table(&self) -> Result<Vec<u32>, crate::maglev::MaglevError> {
        let names: Vec<String> = self.backends.iter().map(|(n, _)| n.clone()).collect();
        let table = crate::maglev::table(&names, self.size as usize)?;
        Ok(table.iter().map(|i| self.backends[*i as usize].1).collect())
    }
}

/// The content of the lb4 maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapState {
    pub services: BTreeMap<Lb4Key, LbService>,
    pub slots: BTreeMap<LbSlotKey, u32>,
    pub backends: BTreeMap<u32, Lb4Backend>,
    /// Maglev tables by service id, for the views reached from outside.
    pub maglev: BTreeMap<u32, MaglevSpec>,
    /// IPv6 service addresses (their slots are in `slots`).
    pub services6: BTreeMap<Lb6Key, LbService>,
    pub backends6: BTreeMap<u32, Lb6Backend>,
}

/// Identifiers that must stay stable across plans (and agent restarts, once
/// read back from the pinned maps), so an update only touches what changed.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: BTreeMap<String, u32>,
    backends: BTreeMap<Lb4Backend, u32>,
    backends6: BTreeMap<Lb6Backend, u32>,
    next_service: u32,
    next_backend: u32,
}

impl Ids {
    /// Ids already in the kernel maps (after an agent restart): backends keep
    /// their ids; new service ids start above every id in use.
    /// `counters` are the ones a previous agent saved (zero when none): ids
    /// continue above them even if the highest ids have left the maps.
    pub fn adopt(state: &MapState, counters: IdCounters) -> Ids {
        let mut ids = Ids {
            next_service: counters.next_service,
            next_backend: counters.next_backend,
            ..Ids::default()
        };
        for (id, b) in &state.backends {
            ids.backends.insert(Lb4Backend { flags: 0, ..*b }, *id);
            ids.next_backend = ids.next_backend.max(*id);
        }
        for (id, b) in &state.backends6 {
            ids.backends6.insert(Lb6Backend { flags: 0, ..*b }, *id);
            ids.next_backend = ids.next_backend.max(*id);
        }
        ids.next_service = state
            .services
            .values()
            .chain(state.services6.values())
            .map(|s| s.service_id)
            .fold(ids.next_service, u32::max);
        ids
    }

    /// The counters to save, so a restarted agent never reuses an id.
    pub fn counters(&self) -> IdCounters {
        IdCounters {
            next_service: self.next_service,
            next_backend: self.next_backend,
        }
    }

    /// Forgets ids nothing in `state` uses (services and endpoints that left),
    /// so a long-running agent does not grow with every pod ever seen. Ids are
    /// never reused: the counters only go up.
    fn retain_used(&mut self, used_services: &std::collections::BTreeSet<u32>, state: &MapState) {
        self.services.retain(|_, id| used_services.contains(id));
        self.backends
            .retain(|_, id| state.backends.contains_key(id));
        self.backends6
            .retain(|_, id| state.backends6.contains_key(id));
    }

    /// [`Ids::retain_used`] for everything `state` uses.
    pub fn retain_used_by(&mut self, state: &MapState) {
        let used: std::collections::BTreeSet<u32> = state
            .services
            .values()
            .chain(state.services6.values())
            .map(|s| s.service_id)
            .collect();
        self.retain_used(&used, state);
    }

    /// Forgets the ids of a service's views (the service left).
    pub fn forget_service(&mut self, name: &str) {
        let prefix = format!("{name}#");
        self.services.retain(|view, _| !view.starts_with(&prefix));
    }

    pub fn forget_backend(&mut self, b: &Lb4Backend) {
        self.backends.remove(&Lb4Backend { flags: 0, ..*b });
    }

    pub fn forget_backend6(&mut self, b: &Lb6Backend) {
        self.backends6.remove(&Lb6Backend { flags: 0, ..*b });
    }

    fn service(&mut self, name: &str) -> u32 {
        if let Some(id) = self.services.get(name) {
            return *id;
        }
        self.next_service += 1;
        self.services.insert(name.to_string(), self.next_service);
        self.next_service
    }

    /// Backend ids are unique across both families (the slot map is shared).
    fn backend6(&mut self, b: &Lb6Backend) -> u32 {
        let key = Lb6Backend { flags: 0, ..*b };
        if let Some(id) = self.backends6.get(&key) {
            return *id;
        }
        self.next_backend += 1;
        self.backends6.insert(key, self.next_backend);
        self.next_backend
    }

    fn backend(&mut self, b: &Lb4Backend) -> u32 {
        let key = Lb4Backend { flags: 0, ..*b };
        if let Some(id) = self.backends.get(&key) {
            return *id;
        }
        self.next_backend += 1;
        self.backends.insert(key, self.next_backend);
        self.next_backend
    }
}

fn proto(p: L4Protocol) -> u8 {
    match p {
        L4Protocol::Tcp => PROTO_TCP,
        L4Protocol::Udp => PROTO_UDP,
        L4Protocol::Sctp => PROTO_SCTP,
    }
}

fn v4(ip: &IpAddr) -> Option<[u8; 4]> {
    match ip {
        IpAddr::V4(a) => Some(a.octets()),
        IpAddr::V6(_) => None,
    }
}

/// The endpoints one view of a service may use: node-local only when the
/// traffic policy says Local; same zone first under PreferClose; ready first,
/// terminating only as the fallback.
fn endpoints<'a>(
    set: &'a BackendSet,
    node: &NodeInfo,
    local_only: bool,
    prefer_close: bool,
) -> Vec<&'a Endpoint> {
    let local = |e: &Endpoint| !local_only || e.node_name.as_deref() == Some(node.name.as_str());
    if prefer_close && node.zone.is_some() {
        // Only ready endpoints count as "close": terminating ones in this zone
        // must not win over ready ones elsewhere.
        let same_zone: Vec<&Endpoint> = set
            .endpoints
            .iter()
            .filter(|e| e.ready && local(e) && e.zone == node.zone)
            .collect();
        if !same_zone.is_empty() {
            return same_zone;
        }
    }
    set.usable(local)
}

/// One view of a service: the addresses it answers on and the endpoints it uses.
struct View<'a> {
    name: String,
    keys: Vec<Lb4Key>,
    /// IPv6 addresses of the view (socket LB only: no Maglev, no tc).
    keys6: Vec<Lb6Key>,
    endpoints: Vec<&'a Endpoint>,
    flags: u16,
    /// Reached from outside: backends chosen by Maglev so every node agrees.
    maglev: bool,
}

fn backend_flags(e: &Endpoint, node: &NodeInfo) -> u8 {
    let mut flags = 0;
    if e.terminating {
        flags |= BACKEND_TERMINATING;
    }
    if e.node_name.as_deref() == Some(node.name.as_str()) {
        flags |= BACKEND_LOCAL;
    }
    flags
}

fn service_value(svc: &L4Service, service_id: u32, backends: usize, flags: u16) -> LbService {
    let mut flags = flags;
    if svc.session_affinity.is_some() {
        flags |= SVC_AFFINITY;
    }
    LbService {
        service_id,
        backend_count: u16::try_from(backends).unwrap_or(u16::MAX),
        flags,
        affinity_timeout_s: svc.session_affinity.map_or(0, |a| a.timeout_seconds),
        maglev_size: 0,
    }
}

fn write_slots(state: &mut MapState, service_id: u32, backend_ids: &mut Vec<u32>) {
    backend_ids.sort_unstable();
    backend_ids.dedup();
    for (i, id) in backend_ids.iter().enumerate() {
        let key = LbSlotKey {
            service_id,
            slot: i as u32 + 1,
        };
        state.slots.insert(key, *id);
    }
}

/// The IPv6 half of a view: its own service id (its backends differ), the
/// IPv6 endpoints, the shared slot map.
/// Gives a view reached from outside its Maglev table (by backend names, so
/// every node builds the same one); nothing without backends.
fn add_maglev(
    state: &mut MapState,
    value: &mut LbService,
    mut named: Vec<(String, u32)>,
    node: &NodeInfo,
) {
    if named.is_empty() {
        return;
    }
    named.sort();
    named.dedup();
    value.maglev_size = match node.maglev_table_size {
        0 => crate::maglev::DEFAULT_TABLE_SIZE as u32,
        n => n,
    };
    value.flags |= SVC_MAGLEV;
    let spec = MaglevSpec {
        size: value.maglev_size,
        backends: named,
    };
    state.maglev.insert(value.service_id, spec);
}

fn add_view6(
    state: &mut MapState,
    ids: &mut Ids,
    svc: &L4Service,
    view: &View<'_>,
    node: &NodeInfo,
) {
    let service_id = ids.service(&format!("{}/6", view.name));
    let mut backend_ids = Vec::new();
    let mut named = Vec::new();
    for e in &view.endpoints {
        let IpAddr::V6(address) = e.address else {
            continue;
        };
        let backend = Lb6Backend {
            address: address.octets(),
            port_be: e.port.to_be(),
            proto: proto(svc.protocol),
            flags: backend_flags(e, node),
        };
        let id = ids.backend6(&backend);
        state.backends6.insert(id, backend);
        backend_ids.push(id);
        named.push((format!("[{}]:{}", e.address, e.port), id));
    }
    write_slots(state, service_id, &mut backend_ids);
    let mut value = service_value(svc, service_id, backend_ids.len(), view.flags);
    if view.maglev {
        add_maglev(state, &mut value, named, node);
    }
    for key in &view.keys6 {
        state.services6.insert(*key, value);
    }
}

/// Writes one view of a service with its slots; nothing for a family it has
/// no address in.
fn add_view(state: &mut MapState, ids: &mut Ids, svc: &L4Service, view: View<'_>, node: &NodeInfo) {
    if !view.keys6.is_empty() {
        add_view6(state, ids, svc, &view, node);
    }
    let View {
        name,
        keys,
        endpoints: eps,
        flags: local_flag,
        maglev,
        ..
    } = view;
    if keys.is_empty() {
        return;
    }
    let service_id = ids.service(&name);
    let mut backend_ids = Vec::new();
    let mut named = Vec::new();
    for e in eps {
        let Some(address) = v4(&e.address) else {
            continue;
        };
        let backend = Lb4Backend {
            address,
            port_be: e.port.to_be(),
            proto: proto(svc.protocol),
            flags: backend_flags(e, node),
        };
        let id = ids.backend(&backend);
        state.backends.insert(id, backend);
        backend_ids.push(id);
        named.push((format!("{}:{}", e.address, e.port), id));
    }
    write_slots(state, service_id, &mut backend_ids);
    let mut value = service_value(svc, service_id, backend_ids.len(), local_flag);
    if maglev {
        add_maglev(state, &mut value, named, node);
    }
    for key in &keys {
        state.services.insert(*key, value);
    }
}

/// The lb4 map content for `snapshot` on `node`.
pub fn plan(snapshot: &Snapshot, node: &NodeInfo, ids: &mut Ids) -> MapState {
    let mut state = MapState::default();
    for (name, svc) in &snapshot.services.data {
        if let Some(set) = snapshot.backends.data.get(&svc.backends) {
            plan_service(&mut state, name, svc, set, node, ids);
        }
    }
    ids.retain_used_by(&state);
    state
}

/// Adds the map content of one L4 service (its internal, in-cluster-external
/// and from-outside views) to `state`.
pub fn plan_service(
    state: &mut MapState,
    name: &str,
    svc: &L4Service,
    set: &BackendSet,
    node: &NodeInfo,
    ids: &mut Ids,
) {
    let key = |address: [u8; 4], port: u16, scope: u8| Lb4Key {
        address,
        port_be: port.to_be(),
        proto: proto(svc.protocol),
        scope,
    };
    let keys6 =
        |addresses: &mut dyn Iterator<Item = &IpAddr>, port: u16, scope: u8| -> Vec<Lb6Key> {
            addresses
                .filter_map(|a| match a {
                    IpAddr::V6(a) => Some(Lb6Key {
                        address: a.octets(),
                        port_be: port.to_be(),
                        proto: proto(svc.protocol),
                        scope,
                    }),
                    IpAddr::V4(_) => None,
                })
                .collect()
        };
    // Internal view: ClusterIPs, under internalTrafficPolicy.
    let internal: Vec<Lb4Key> = svc
        .cluster_ips
        .iter()
        .filter_map(v4)
        .map(|a| key(a, svc.port, SCOPE_CLUSTER))
        .collect();
    let eps = endpoints(set, node, svc.internal_traffic_local, svc.prefer_close);
    let flag = if svc.internal_traffic_local {
        SVC_LOCAL_INTERNAL
    } else {
        0
    };
    let view = View {
        name: format!("{name}#internal"),
        keys: internal,
        keys6: keys6(&mut svc.cluster_ips.iter(), svc.port, SCOPE_CLUSTER),
        endpoints: eps,
        flags: flag,
        maglev: false,
    };
    add_view(state, ids, svc, view, node);
    // externalIPs and LoadBalancer IPs reached from inside the cluster (the
    // socket hook only sees local clients) go to every endpoint, as
    // kube-proxy does: externalTrafficPolicy is about traffic from outside.
    let in_cluster: Vec<Lb4Key> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .filter_map(v4)
        .map(|a| key(a, svc.port, SCOPE_CLUSTER))
        .collect();
    let eps = endpoints(set, node, false, svc.prefer_close);
    let view = View {
        name: format!("{name}#in-cluster-external"),
        keys: in_cluster,
        keys6: keys6(
            &mut svc.external_ips.iter().chain(&svc.load_balancer_ips),
            svc.port,
            SCOPE_CLUSTER,
        ),
        endpoints: eps,
        flags: 0,
        maglev: false,
    };
    add_view(state, ids, svc, view, node);
    // From outside (tc programs): NodePorts, externalIPs and LB IPs,
    // under externalTrafficPolicy.
    let mut node_ports: Vec<Lb4Key> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .filter_map(v4)
        .map(|a| key(a, svc.port, SCOPE_EXTERNAL))
        .collect();
    if let Some(node_port) = svc.node_port {
        node_ports.push(key([0, 0, 0, 0], node_port, SCOPE_NODEPORT));
        node_ports.extend(
            node.addresses
                .iter()
                .map(|a| key(a.octets(), node_port, SCOPE_NODEPORT)),
        );
    }
    let eps = endpoints(set, node, svc.external_traffic_local, svc.prefer_close);
    let flag = if svc.external_traffic_local {
        SVC_LOCAL_EXTERNAL
    } else {
        0
    };
    let view = View {
        name: format!("{name}#external"),
        keys: node_ports,
        keys6: {
            let mut outside = keys6(
                &mut svc.external_ips.iter().chain(&svc.load_balancer_ips),
                svc.port,
                SCOPE_EXTERNAL,
            );
            if let Some(node_port) = svc.node_port {
                let node6: Vec<IpAddr> = node.addresses6.iter().map(|a| IpAddr::V6(*a)).collect();
                outside.extend(keys6(&mut node6.iter(), node_port, SCOPE_NODEPORT));
            }
            outside
        },
        endpoints: eps,
        flags: flag,
        maglev: true,
    };
    add_view(state, ids, svc, view, node);
}

/// One map operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Lb4Backend),
    PutBackend6(u32, Lb6Backend),
    PutSlot(LbSlotKey, u32),
    PutMaglev(u32, MaglevSpec),
    PutService(Lb4Key, LbService),
    PutService6(Lb6Key, LbService),
    DeleteService(Lb4Key),
    DeleteService6(Lb6Key),
    DeleteMaglev(u32),
    DeleteSlot(LbSlotKey),
    DeleteBackend(u32),
    DeleteBackend6(u32),
}

/// Puts for what `new` has and `old` has not (or differently).
pub(crate) fn puts<K: Ord + Copy, V: PartialEq + Clone>(
    ops: &mut Vec<MapOp>,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    op: fn(K, V) -> MapOp,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            ops.push(op(*k, v.clone()));
        }
    }
}

/// Deletes for what `old` has and `new` has not.
pub(crate) fn deletes<K: Ord + Copy, V>(
    ops: &mut Vec<MapOp>,
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    op: fn(K) -> MapOp,
) {
    ops.extend(old.keys().filter(|k| !new.contains_key(k)).map(|k| op(*k)));
}

/// The operations that turn `old` into `new`, in a safe order: backends,
/// then slots and Maglev tables, then services are written; then services,
/// tables, slots and backends that are gone are deleted. At every step each
/// service's slots 1..backend_count and its table point at backends that exist.
pub fn diff(old: &MapState, new: &MapState) -> Vec<MapOp> {
    let mut ops = Vec::new();
    puts(&mut ops, &old.backends, &new.backends, MapOp::PutBackend);
    puts(&mut ops, &old.backends6, &new.backends6, MapOp::PutBackend6);
    puts(&mut ops, &old.slots, &new.slots, MapOp::PutSlot);
    puts(&mut ops, &old.maglev, &new.maglev, MapOp::PutMaglev);
    puts(&mut ops, &old.services, &new.services, MapOp::PutService);
    puts(&mut ops, &old.services6, &new.services6, MapOp::PutService6);
    deletes(&mut ops, &old.services, &new.services, MapOp::DeleteService);
    deletes(
        &mut ops,
        &old.services6,
        &new.services6,
        MapOp::DeleteService6,
    );
    deletes(&mut ops, &old.maglev, &new.maglev, MapOp::DeleteMaglev);
    deletes(&mut ops, &old.slots, &new.slots, MapOp::DeleteSlot);
    deletes(&mut ops, &old.backends, &new.backends, MapOp::DeleteBackend);
    deletes(
        &mut ops,
        &old.backends6,
        &new.backends6,
        MapOp::DeleteBackend6,
    );
    ops
}

/// Applies one operation to an in-memory state (the tests' model of the kernel maps).
pub fn apply(state: &mut MapState, op: &MapOp) {
    match op.clone() {
        MapOp::PutBackend(id, b) => drop(state.backends.insert(id, b)),
        MapOp::PutBackend6(id, b) => drop(state.backends6.insert(id, b)),
        MapOp::PutSlot(k, v) => drop(state.slots.insert(k, v)),
        MapOp::PutMaglev(k, v) => drop(state.maglev.insert(k, v)),
        MapOp::PutService(k, v) => drop(state.services.insert(k, v)),
        MapOp::PutService6(k, v) => drop(state.services6.insert(k, v)),
        MapOp::DeleteService(k) => drop(state.services.remove(&k)),
        MapOp::DeleteService6(k) => drop(state.services6.remove(&k)),
        MapOp::DeleteMaglev(k) => drop(state.maglev.remove(&k)),
        MapOp::DeleteSlot(k) => drop(state.slots.remove(&k)),
        MapOp::DeleteBackend(id) => drop(state.backends.remove(&id)),
        MapOp::DeleteBackend6(id) => drop(state.backends6.remove(&id)),
    }
}

/// Whether every service's slots, table and backends resolve (what the BPF side relies on).
pub fn consistent(state: &MapState) -> Result<(), String> {
    for (id, spec) in &state.maglev {
        if let Some((name, b)) = spec
            .backends
            .iter()
            .find(|(_, b)| !state.backends.contains_key(b) && !state.backends6.contains_key(b))
        {
            return Err(format!(
                "Maglev table of service {id}: {name} points at missing backend {b}"
            ));
        }
    }
    let v4 = state
        .services
        .iter()
        .map(|(k, v)| (format!("{k:?}"), v, false));
    let v6 = state
        .services6
        .iter()
        .map(|(k, v)| (format!("{k:?}"), v, true));
    for (key, svc, six) in v4.chain(v6) {
        for slot in 1..=u32::from(svc.backend_count) {
            let slot_key = LbSlotKey {
                service_id: svc.service_id,
                slot,
            };
            let Some(backend) = state.slots.get(&slot_key) else {
                return Err(format!(
                    "{key}: slot {slot} of {} missing",
                    svc.backend_count
                ));
            };
            let exists = if six {
                state.backends6.contains_key(backend)
            } else {
                state.backends.contains_key(backend)
            };
            if !exists {
                return Err(format!(
                    "{key}: slot {slot} points at missing backend {backend}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
