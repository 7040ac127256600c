//! The immutable routing state built from one snapshot, and the shared cell
//! it is swapped into.

use crate::balancer::Balancer;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use pier_route_table::{HostMap, RouteTable};
use pier_snapshot::{L4Route, PortProtocol, Snapshot, SniAction};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Everything a request needs, built once per snapshot.
pub struct Routing {
    pub snapshot: Arc<Snapshot>,
    pub table: RouteTable,
    /// Loaded certificates by snapshot key; broken ones are left out.
    pub certificates: HashMap<String, Arc<CertifiedKey>>,
    /// Per TLS port: SNI pattern → certificates to offer.
    pub sni: HashMap<u16, HostMap<Vec<Arc<CertifiedKey>>>>,
    /// Per TLS port: SNI pattern → what to do with the connection.
    pub tls_actions: HashMap<u16, HostMap<TlsAction>>,
    /// Per TCP port: the route.
    pub tcp: HashMap<u16, L4Route>,
    /// Per UDP port: the route.
    pub udp: HashMap<u16, L4Route>,
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
#[derive(Debug)]
pub struct Rejected(pub String);

impl Routing {
    pub fn build(snapshot: Snapshot) -> Result<Routing, Rejected> {
        snapshot.validate().map_err(|e| Rejected(e.to_string()))?;
        let table = RouteTable::build(&snapshot).map_err(|e| Rejected(e.to_string()))?;
        let mut certificates = HashMap::new();
        for (key, cert) in &snapshot.certificates.data {
            match crate::tls::load_certified_key(&cert.chain_pem, &cert.private_key_pem.0) {
                Ok(ck) => {
                    certificates.insert(key.clone(), Arc::new(ck));
                }
                // A broken Secret loses only the listeners that use it.
                Err(e) => {
                    tracing::error!(certificate = %key, error = %e, "certificate not loaded; SNI names using only it will fail the handshake")
                }
            }
        }
        let mut sni = HashMap::new();
        let mut tls_actions = HashMap::new();
        let mut tcp = HashMap::new();
        let mut udp = HashMap::new();
        for listener in &snapshot.routes.data.listeners {
            if listener.protocol == PortProtocol::Udp {
                if let Some(route) = &listener.l4 {
                    udp.insert(listener.port, route.clone());
                }
                continue;
            }
            if listener.protocol == PortProtocol::Tcp {
                if let Some(route) = &listener.l4 {
                    tcp.insert(listener.port, route.clone());
                }
                continue;
            }
            if listener.protocol != PortProtocol::Tls {
                continue;
            }
            let mut actions = HostMap::default();
            let mut map = HostMap::default();
            for entry in &listener.tls {
                let (action, keys) = match &entry.action {
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
                actions.insert(&entry.hostname, false, action);
                let loaded: Vec<_> = keys
                    .iter()
                    .filter_map(|k| certificates.get(k).cloned())
                    .collect();
                if !loaded.is_empty() {
                    map.insert(&entry.hostname, false, loaded);
                }
            }
            tls_actions.insert(listener.port, actions);
            sni.insert(listener.port, map);
        }
        Ok(Routing {
            snapshot: Arc::new(snapshot),
            table,
            certificates,
            sni,
            tls_actions,
            tcp,
            udp,
        })
    }
}

/// State shared by every request and by the snapshot source.
pub struct Shared {
    pub routing: ArcSwapOption<Routing>,
    pub balancer: Balancer,
    pub metrics: Metrics,
    /// Bumped after every install: the dynamic listeners follow it.
    pub installed: tokio::sync::watch::Sender<u64>,
    /// An L4 connection with no byte either way for this long is closed.
    pub l4_idle_timeout: std::time::Duration,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            routing: ArcSwapOption::empty(),
            balancer: Balancer::default(),
            metrics: Metrics::new(),
            installed: tokio::sync::watch::channel(0).0,
            l4_idle_timeout: std::time::Duration::from_secs(3600),
        }
    }
}

impl Shared {
    /// Builds and swaps in a snapshot. On failure the current routing stays.
    pub fn install(&self, snapshot: Snapshot) -> Result<(), Rejected> {
        let versions = (snapshot.routes.version, snapshot.backends.version);
        match Routing::build(snapshot) {
            Ok(routing) => {
                let endpoints = routing
                    .snapshot
                    .backends
                    .data
                    .values()
                    .flat_map(|set| {
                        set.endpoints
                            .iter()
                            .map(|e| std::net::SocketAddr::new(e.address, e.port))
                    })
                    .collect();
                let keys = routing
                    .snapshot
                    .backends
                    .data
                    .keys()
                    .map(String::as_str)
                    .collect();
                self.balancer.prune(&endpoints, &keys);
                self.routing.store(Some(Arc::new(routing)));
                self.installed.send_modify(|n| *n += 1);
                self.metrics.swaps.inc();
                self.metrics.routes_version.set(versions.0 as i64);
                self.metrics.backends_version.set(versions.1 as i64);
                tracing::info!(
                    routes_version = versions.0,
                    backends_version = versions.1,
                    "snapshot installed"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.rejected.inc();
                tracing::error!(error = %e.0, "snapshot rejected; the previous one keeps serving");
                Err(e)
            }
        }
    }

    pub fn ready(&self) -> bool {
        self.routing.load().is_some()
    }
}
