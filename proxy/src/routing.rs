//! The immutable routing state built from one snapshot, and the shared cell
//! it is swapped into.
//!
//! A [`Routing`] is three pieces held in `Arc`s, each rebuilt only when its
//! input moved (DESIGN rule 4): the route state (route table, compiled
//! regexes, L4 and TLS actions) from the routes part, the TLS state (parsed
//! certificates, SNI maps) from routes and certificates, and the endpoint sets
//! from backends. Endpoint churn swaps the endpoint sets and shares the rest.

use crate::balancer::Balancer;
use crate::metrics::Metrics;
use crate::tls::CertificateError;
use arc_swap::ArcSwapOption;
use pier_route_table::{BuildError, HostMap, RouteTable};
use pier_snapshot::{
    BackendRef, BackendSet, DeltaKeys, HttpFilter, L4Route, PortProtocol, RouteAction, Snapshot,
    SniAction, ValidationError, WeightedBackend, SCHEMA_VERSION,
};
use rustls::sign::CertifiedKey;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Everything a request needs. Its pieces are shared with the routing it
/// was derived from when their input did not change.
pub struct Routing {
    pub versions: Versions,
    pub routes: Arc<RouteState>,
    pub tls: Arc<TlsState>,
    /// Endpoint sets by backend key.
    pub backends: Backends,
}

const BACKEND_SHARDS: usize = 64;

type Shard = HashMap<Arc<str>, Arc<BackendSet>>;

/// Endpoint sets by backend key, in shards shared through `Arc`s: changing
/// one set copies its shard (1/64 of the map), so one endpoint change costs
/// the same at 10 and at 10,000 Services.
#[derive(Clone)]
pub struct Backends {
    shards: Vec<Arc<Shard>>,
}

impl Backends {
    fn shard(key: &str) -> usize {
        crate::balancer::stable_hash(key.as_bytes()) as usize % BACKEND_SHARDS
    }

    fn new(snapshot: &Snapshot) -> Backends {
        let mut shards = vec![Shard::new(); BACKEND_SHARDS];
        for (key, set) in &snapshot.backends.data {
            shards[Self::shard(key)].insert(Arc::from(key.as_str()), Arc::new(set.clone()));
        }
        Backends {
            shards: shards.into_iter().map(Arc::new).collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Arc<BackendSet>> {
        self.shards[Self::shard(key)].get(key)
    }

    /// Sets (or, with `None`, removes) one key; only its shard is copied.
    fn set(&mut self, key: &str, set: Option<&BackendSet>) {
        let shard = Arc::make_mut(&mut self.shards[Self::shard(key)]);
        match set {
            Some(set) => shard.insert(Arc::from(key), Arc::new(set.clone())),
            None => shard.remove(key),
        };
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<BackendSet>)> {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (&**k, v)))
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The snapshot part versions a routing was built from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub routes: u64,
    pub backends: u64,
    pub certificates: u64,
}

/// What the routes part alone decides.
pub struct RouteState {
    pub table: RouteTable,
    /// Every listener port with its protocol, sorted.
    pub listeners: Vec<(u16, PortProtocol)>,
    /// Per TLS port: SNI pattern → what to do with the connection.
    pub tls_actions: HashMap<u16, HostMap<TlsAction>>,
    /// Per TCP port: the route.
    pub tcp: HashMap<u16, L4Route>,
    /// Per UDP port: the route.
    pub udp: HashMap<u16, L4Route>,
    /// Backend sets and certificates the routes name: a delta that removes
    /// one of them without touching the routes is invalid.
    backend_refs: HashSet<String>,
    certificate_refs: HashSet<String>,
}

/// Parsed certificates and what each TLS port offers.
pub struct TlsState {
    /// Loaded certificates by snapshot key; broken ones are left out.
    pub certificates: HashMap<String, Arc<CertifiedKey>>,
    /// Per TLS port: SNI pattern → certificates to offer.
    pub sni: HashMap<u16, HostMap<Vec<Arc<CertifiedKey>>>>,
}

/// What a TLS port does with a connection whose ClientHello names an SNI.
#[derive(Clone, Debug)]
pub enum TlsAction {
    /// Terminate and serve HTTP (HTTPS listeners, Ingress TLS).
    TerminateHttp,
    /// Terminate and forward the plaintext bytes (TLS listener, mode Terminate).
    TerminateTcp(L4Route),
    /// Forward the TLS bytes untouched (TLS listener, mode Passthrough).
    Passthrough(L4Route),
}

/// Why a snapshot was not installed.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    RouteTable(#[from] BuildError),
}

/// Which pieces an apply rebuilt (the rest was shared with the previous routing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    pub routes: bool,
    /// Certificates parsed (PEM → key): only added or changed ones on a delta.
    pub certificates_parsed: usize,
    pub tls: bool,
    /// Endpoint sets replaced or removed.
    pub backend_sets: usize,
}

/// Calls `f` with every backend set key the routes name (what
/// [`Snapshot::validate`] checks exists).
fn each_backend_ref(snapshot: &Snapshot, mut f: impl FnMut(&str)) {
    fn weighted(backends: &[WeightedBackend], f: &mut impl FnMut(&str)) {
        for b in backends {
            if let BackendRef::Service(key) = &b.backend {
                f(key);
            }
        }
    }
    for listener in &snapshot.routes.data.listeners {
        for sni in &listener.tls {
            match &sni.action {
                SniAction::TerminateTcp { route, .. } | SniAction::Passthrough { route } => {
                    weighted(&route.backends, &mut f)
                }
                SniAction::TerminateHttp { .. } => {}
            }
        }
        if let Some(route) = &listener.l4 {
            weighted(&route.backends, &mut f);
        }
        for entry in listener.virtual_hosts.iter().flat_map(|v| &v.routes) {
            if let RouteAction::Forward(backends) = &entry.action {
                weighted(backends, &mut f);
            }
            for filter in &entry.filters {
                if let HttpFilter::Mirror {
                    backend: BackendRef::Service(key),
                    ..
                } = filter
                {
                    f(key);
                }
            }
        }
    }
}

impl RouteState {
    pub fn build(snapshot: &Snapshot) -> Result<RouteState, BuildError> {
        let table = RouteTable::build(snapshot)?;
        let mut tls_actions = HashMap::new();
        let mut tcp = HashMap::new();
        let mut udp = HashMap::new();
        let mut certificate_refs = HashSet::new();
        for listener in &snapshot.routes.data.listeners {
            match listener.protocol {
                PortProtocol::Udp | PortProtocol::Tcp => {
                    let ports = if listener.protocol == PortProtocol::Udp {
                        &mut udp
                    } else {
                        &mut tcp
                    };
                    if let Some(route) = &listener.l4 {
                        ports.insert(listener.port, route.clone());
                    }
                }
                PortProtocol::Http => {}
                PortProtocol::Tls => {
                    let mut actions = HostMap::default();
                    for entry in &listener.tls {
                        let (action, certificates) = match &entry.action {
                            SniAction::TerminateHttp { certificates } => {
                                (TlsAction::TerminateHttp, certificates.as_slice())
                            }
                            SniAction::TerminateTcp {
                                certificates,
                                route,
                            } => (
                                TlsAction::TerminateTcp(route.clone()),
                                certificates.as_slice(),
                            ),
                            SniAction::Passthrough { route } => {
                                (TlsAction::Passthrough(route.clone()), &[][..])
                            }
                        };
                        certificate_refs.extend(certificates.iter().cloned());
                        actions.insert(&entry.hostname, false, action);
                    }
                    tls_actions.insert(listener.port, actions);
                }
            }
        }
        let mut backend_refs = HashSet::new();
        each_backend_ref(snapshot, |key| {
            if !backend_refs.contains(key) {
                backend_refs.insert(key.to_string());
            }
        });
        Ok(RouteState {
            table,
            listeners: snapshot
                .routes
                .data
                .listeners
                .iter()
                .map(|l| (l.port, l.protocol))
                .collect(),
            tls_actions,
            tcp,
            udp,
            backend_refs,
            certificate_refs,
        })
    }
}

fn parse_certificate(
    key: &str,
    cert: &pier_snapshot::Certificate,
) -> Result<Arc<CertifiedKey>, CertificateError> {
    crate::tls::load_certified_key(&cert.chain_pem, &cert.private_key_pem.0)
        .map(Arc::new)
        .inspect_err(|e| {
            // A broken Secret loses only the listeners that use it.
            tracing::error!(certificate = %key, error = %crate::error_chain(e), "certificate not loaded; SNI names using only it will fail the handshake")
        })
}

impl TlsState {
    /// Parses the certificates named in `changed` (all when `None`), reuses
    /// the others from `previous`, and builds the SNI maps for `snapshot`.
    fn build(
        snapshot: &Snapshot,
        previous: Option<&TlsState>,
        changed: Option<&[String]>,
        rebuilt: &mut Rebuilt,
    ) -> TlsState {
        let mut certificates = match (previous, changed) {
            (Some(previous), Some(_)) => previous.certificates.clone(),
            _ => HashMap::new(),
        };
        let mut parse = |key: &String, cert: Option<&pier_snapshot::Certificate>| {
            let Some(cert) = cert else {
                certificates.remove(key);
                return;
            };
            rebuilt.certificates_parsed += 1;
            match parse_certificate(key, cert) {
                Ok(ck) => certificates.insert(key.clone(), ck),
                Err(_) => certificates.remove(key),
            };
        };
        match (previous, changed) {
            (Some(_), Some(keys)) => {
                for key in keys {
                    parse(key, snapshot.certificates.data.get(key));
                }
            }
            _ => {
                for (key, cert) in &snapshot.certificates.data {
                    parse(key, Some(cert));
                }
            }
        }
        let mut sni = HashMap::new();
        for listener in &snapshot.routes.data.listeners {
            if listener.protocol != PortProtocol::Tls {
                continue;
            }
            let mut map = HostMap::default();
            for entry in &listener.tls {
                let keys = match &entry.action {
                    SniAction::TerminateHttp { certificates }
                    | SniAction::TerminateTcp { certificates, .. } => certificates.as_slice(),
                    SniAction::Passthrough { .. } => &[][..],
                };
                let loaded: Vec<_> = keys
                    .iter()
                    .filter_map(|k| certificates.get(k).cloned())
                    .collect();
                if !loaded.is_empty() {
                    map.insert(&entry.hostname, false, loaded);
                }
            }
            sni.insert(listener.port, map);
        }
        rebuilt.tls = true;
        TlsState { certificates, sni }
    }
}

impl Routing {
    /// Builds everything from scratch.
    pub fn build(snapshot: &Snapshot) -> Result<Routing, Rejected> {
        Self::derive(snapshot, None, None).map(|(routing, _)| routing)
    }

    fn versions(snapshot: &Snapshot) -> Versions {
        Versions {
            routes: snapshot.routes.version,
            backends: snapshot.backends.version,
            certificates: snapshot.certificates.version,
        }
    }

    /// The routing for `snapshot`, rebuilding only what `changed` says moved
    /// since `previous` (everything when either is `None`).
    pub fn derive(
        snapshot: &Snapshot,
        previous: Option<&Routing>,
        changed: Option<&DeltaKeys>,
    ) -> Result<(Routing, Rebuilt), Rejected> {
        let mut rebuilt = Rebuilt::default();
        let (Some(previous), Some(changed)) = (previous, changed) else {
            snapshot.validate()?;
            let routes = Arc::new(RouteState::build(snapshot)?);
            rebuilt.routes = true;
            let tls = Arc::new(TlsState::build(snapshot, None, None, &mut rebuilt));
            let backends = Backends::new(snapshot);
            rebuilt.backend_sets = backends.len();
            let routing = Routing {
                versions: Self::versions(snapshot),
                routes,
                tls,
                backends,
            };
            return Ok((routing, rebuilt));
        };
        let routes = if changed.routes {
            // New routes may name anything: check the whole snapshot.
            snapshot.validate()?;
            rebuilt.routes = true;
            Arc::new(RouteState::build(snapshot)?)
        } else {
            validate_delta(snapshot, &previous.routes, changed)?;
            previous.routes.clone()
        };
        let tls = if changed.routes || !changed.certificates.is_empty() {
            Arc::new(TlsState::build(
                snapshot,
                Some(&previous.tls),
                Some(&changed.certificates),
                &mut rebuilt,
            ))
        } else {
            previous.tls.clone()
        };
        let mut backends = previous.backends.clone();
        for key in &changed.backends {
            backends.set(key, snapshot.backends.data.get(key));
            rebuilt.backend_sets += 1;
        }
        let routing = Routing {
            versions: Self::versions(snapshot),
            routes,
            tls,
            backends,
        };
        Ok((routing, rebuilt))
    }

    pub fn backend(&self, key: &str) -> Option<&Arc<BackendSet>> {
        self.backends.get(key)
    }

    /// A snapshot holding only this routing's listener ports and protocols:
    /// what startup binds. (The routing keeps no copy of the snapshot.)
    pub fn listeners_snapshot(&self) -> Snapshot {
        let mut s = Snapshot::empty();
        s.routes.version = self.versions.routes;
        s.routes.data.listeners = self
            .routes
            .listeners
            .iter()
            .map(|&(port, protocol)| pier_snapshot::PortListener {
                port,
                protocol,
                sources: vec![],
                tls: vec![],
                virtual_hosts: vec![],
                l4: None,
            })
            .collect();
        s
    }
}

/// What [`Snapshot::validate`] would find wrong, looking only at what a
/// delta that left the routes alone touched.
fn validate_delta(
    snapshot: &Snapshot,
    routes: &RouteState,
    changed: &DeltaKeys,
) -> Result<(), ValidationError> {
    let mut problems = Vec::new();
    if snapshot.schema != SCHEMA_VERSION {
        problems.push(format!(
            "schema {} is not {}",
            snapshot.schema, SCHEMA_VERSION
        ));
    }
    let removed: Vec<&String> = changed
        .backends
        .iter()
        .filter(|k| !snapshot.backends.data.contains_key(*k))
        .collect();
    for key in &removed {
        if routes.backend_refs.contains(key.as_str()) {
            problems.push(format!("a route names the removed backend set {key}"));
        }
    }
    // Services are the agent's, but the snapshot must stay whole. A scan only
    // when a backend set goes away (a Service deleted), never on endpoint churn.
    if !removed.is_empty() {
        for (key, service) in &snapshot.services.data {
            if removed.contains(&&service.backends) {
                problems.push(format!(
                    "service {key} points at missing backend set {}",
                    service.backends
                ));
            }
        }
    }
    for key in &changed.services {
        if let Some(service) = snapshot.services.data.get(key) {
            if !snapshot.backends.data.contains_key(&service.backends) {
                problems.push(format!(
                    "service {key} points at missing backend set {}",
                    service.backends
                ));
            }
        }
    }
    for key in &changed.certificates {
        match snapshot.certificates.data.get(key) {
            Some(cert) => {
                if !cert.chain_pem.contains("-----BEGIN CERTIFICATE-----") {
                    problems.push(format!("certificate {key} has no PEM certificate"));
                }
                if !cert.private_key_pem.0.contains("PRIVATE KEY-----") {
                    problems.push(format!("certificate {key} has no PEM private key"));
                }
            }
            None if routes.certificate_refs.contains(key) => {
                problems.push(format!("a listener names the removed certificate {key}"));
            }
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { problems })
    }
}

/// State shared by every request and by the snapshot source.
pub struct Shared {
    pub routing: ArcSwapOption<Routing>,
    pub balancer: Balancer,
    pub metrics: Metrics,
    /// Bumped when the routes part is swapped: the dynamic listeners follow it.
    pub installed: tokio::sync::watch::Sender<u64>,
    /// An L4 connection with no byte either way for this long is closed.
    pub l4_idle_timeout: std::time::Duration,
    /// Serialises installs (each one reads the current routing and builds
    /// on it). Public only so `Shared { .., ..Shared::default() }` works.
    pub installer: Installer,
}

/// [`Shared::apply`]'s own state; opaque.
#[derive(Default)]
pub struct Installer(Mutex<InstallerState>);

#[derive(Default)]
struct InstallerState {
    /// The installed routing reflects the last snapshot offered. After a
    /// rejection it does not, and the next apply rebuilds everything.
    in_sync: bool,
    /// How many backend sets hold each endpoint: the balancer forgets an
    /// endpoint when it leaves the last one.
    endpoint_refs: HashMap<SocketAddr, u32>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            routing: ArcSwapOption::empty(),
            balancer: Balancer::default(),
            metrics: Metrics::new(),
            installed: tokio::sync::watch::channel(0).0,
            l4_idle_timeout: std::time::Duration::from_secs(3600),
            installer: Installer::default(),
        }
    }
}

fn addrs(set: &BackendSet) -> impl Iterator<Item = SocketAddr> + '_ {
    set.endpoints
        .iter()
        .map(|e| SocketAddr::new(e.address, e.port))
}

impl Shared {
    /// Builds everything from `snapshot` and swaps it in. On failure the
    /// current routing stays.
    pub fn install(&self, snapshot: Snapshot) -> Result<Rebuilt, Rejected> {
        self.apply(&snapshot, None)
    }

    /// Swaps in `snapshot`, rebuilding only what `changed` names (the keys a
    /// stream delta touched, or a [`pier_snapshot::SnapshotDiff`] against the
    /// previous snapshot); `None` rebuilds everything. On failure the current
    /// routing stays, and the next apply rebuilds everything.
    pub fn apply(
        &self,
        snapshot: &Snapshot,
        changed: Option<&DeltaKeys>,
    ) -> Result<Rebuilt, Rejected> {
        let started = std::time::Instant::now();
        let mut installer = self.installer.0.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.routing.load_full();
        let base = previous.as_deref().filter(|_| installer.in_sync);
        let delta = changed.filter(|_| base.is_some());
        let (routing, rebuilt) = match Routing::derive(snapshot, base, delta) {
            Ok(built) => built,
            Err(e) => {
                installer.in_sync = false;
                self.metrics.rejected.inc();
                tracing::error!(error = %crate::error_chain(&e), "snapshot rejected; the previous one keeps serving");
                return Err(e);
            }
        };
        installer.in_sync = true;
        self.forget_departed(&mut installer, previous.as_deref(), &routing, delta);
        let versions = routing.versions;
        self.routing.store(Some(Arc::new(routing)));
        if rebuilt.routes {
            self.installed.send_modify(|n| *n += 1);
            self.metrics.route_table_builds.inc();
        }
        self.metrics
            .certificates_parsed
            .inc_by(rebuilt.certificates_parsed as u64);
        self.metrics.swaps.inc();
        self.metrics.routes_version.set(versions.routes as i64);
        self.metrics.backends_version.set(versions.backends as i64);
        self.metrics
            .apply_duration
            .with_label_values(&[if delta.is_some() { "delta" } else { "full" }])
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            routes_version = versions.routes,
            backends_version = versions.backends,
            certificates_version = versions.certificates,
            routes_rebuilt = rebuilt.routes,
            certificates_parsed = rebuilt.certificates_parsed,
            backend_sets = rebuilt.backend_sets,
            elapsed_us = started.elapsed().as_micros() as u64,
            "snapshot installed"
        );
        Ok(rebuilt)
    }

    /// Keeps the balancer's per-endpoint and per-set state to what the new
    /// routing uses: on a delta, only the changed sets are looked at.
    fn forget_departed(
        &self,
        installer: &mut InstallerState,
        previous: Option<&Routing>,
        routing: &Routing,
        delta: Option<&DeltaKeys>,
    ) {
        let refs = &mut installer.endpoint_refs;
        let (Some(previous), Some(delta)) = (previous, delta) else {
            refs.clear();
            for (_, set) in routing.backends.iter() {
                for addr in addrs(set) {
                    *refs.entry(addr).or_default() += 1;
                }
            }
            let keys = routing.backends.iter().map(|(k, _)| k).collect();
            self.balancer.prune(&refs.keys().copied().collect(), &keys);
            return;
        };
        let mut departed = Vec::new();
        let mut removed_keys = Vec::new();
        for key in &delta.backends {
            if let Some(new) = routing.backend(key) {
                for addr in addrs(new) {
                    *refs.entry(addr).or_default() += 1;
                }
            } else {
                removed_keys.push(key.as_str());
            }
            if let Some(old) = previous.backend(key) {
                for addr in addrs(old) {
                    if let Some(n) = refs.get_mut(&addr) {
                        *n -= 1;
                        if *n == 0 {
                            refs.remove(&addr);
                            departed.push(addr);
                        }
                    }
                }
            }
        }
        self.balancer.forget(&departed, &removed_keys);
    }

    pub fn ready(&self) -> bool {
        self.routing.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pier_snapshot::*;

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::empty();
        for name in ["a", "b"] {
            s.backends.data.insert(
                format!("d/{name}:80"),
                BackendSet {
                    endpoints: vec![Endpoint {
                        address: [10, 0, 0, 1].into(),
                        port: 80,
                        ready: true,
                        serving: true,
                        terminating: false,
                        zone: None,
                        node_name: None,
                    }],
                    ..Default::default()
                },
            );
        }
        s.routes.data.listeners.push(PortListener {
            port: 80,
            protocol: PortProtocol::Http,
            sources: vec![],
            tls: vec![],
            virtual_hosts: vec![VirtualHost {
                hostname: "*".into(),
                single_label_wildcard: false,
                routes: vec![HttpRouteEntry {
                    source: RouteSource {
                        kind: "HTTPRoute".into(),
                        namespace: "d".into(),
                        name: "r".into(),
                        rule: 0,
                        rule_name: None,
                        match_index: 0,
                    },
                    matcher: RequestMatch::default(),
                    filters: vec![],
                    action: RouteAction::Forward(vec![WeightedBackend {
                        backend: BackendRef::Service("d/a:80".into()),
                        weight: 1,
                        filters: vec![],
                    }]),
                    timeouts: Timeouts::default(),
                    upstream: UpstreamProtocol::FromBackend,
                }],
            }],
            l4: None,
        });
        s
    }

    fn next(current: &Snapshot, change: impl FnOnce(&mut Snapshot)) -> (Snapshot, DeltaKeys) {
        let mut changed = current.clone();
        change(&mut changed);
        let mut next = current.clone();
        let diff = next.advance(changed);
        (next, DeltaKeys::from(&diff))
    }

    #[test]
    fn a_backends_only_change_shares_routes_and_certificates() {
        let shared = Shared::default();
        let first = snapshot();
        shared.install(first.clone()).unwrap();
        let before = shared.routing.load_full().unwrap();
        let (second, keys) = next(&first, |s| {
            s.backends.data.get_mut("d/a:80").unwrap().endpoints[0].port = 81;
        });
        let rebuilt = shared.apply(&second, Some(&keys)).unwrap();
        assert_eq!(
            rebuilt,
            Rebuilt {
                backend_sets: 1,
                ..Default::default()
            }
        );
        let after = shared.routing.load_full().unwrap();
        assert!(Arc::ptr_eq(&before.routes, &after.routes));
        assert!(Arc::ptr_eq(&before.tls, &after.tls));
        assert_eq!(after.backend("d/a:80").unwrap().endpoints[0].port, 81);
        assert!(Arc::ptr_eq(
            before.backend("d/b:80").unwrap(),
            after.backend("d/b:80").unwrap()
        ));
    }

    #[test]
    fn a_delta_is_checked_like_a_full_snapshot_and_a_rejection_forces_a_rebuild() {
        let shared = Shared::default();
        let first = snapshot();
        shared.install(first.clone()).unwrap();
        // Removing the set the route names is what `validate` rejects.
        let (second, keys) = next(&first, |s| {
            s.backends.data.remove("d/a:80");
        });
        assert!(second.validate().is_err());
        assert!(matches!(
            shared.apply(&second, Some(&keys)),
            Err(Rejected::Invalid(_))
        ));
        // Removing a set nobody names is fine.
        let (third, keys) = next(&first, |s| {
            s.backends.data.remove("d/b:80");
        });
        // After the rejection the routing is behind: everything is rebuilt.
        let rebuilt = shared.apply(&third, Some(&keys)).unwrap();
        assert!(rebuilt.routes);
        assert!(shared
            .routing
            .load()
            .as_ref()
            .unwrap()
            .backend("d/b:80")
            .is_none());
        let (fourth, keys) = next(&third, |s| {
            s.backends.data.get_mut("d/a:80").unwrap().port = 8080;
        });
        assert!(!shared.apply(&fourth, Some(&keys)).unwrap().routes);
    }
}
