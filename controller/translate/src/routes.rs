//! Accumulates listeners and route entries per port, then emits the sorted,
//! deduplicated `RoutesPart`.

use crate::hostnames::specificity_order;
use crate::precedence::PrecedenceKey;
use pier_snapshot::{
    HttpRouteEntry, L4Route, PortListener, PortProtocol, RoutesPart, Snapshot, SniAction, SniEntry,
    VirtualHost,
};
use std::collections::{BTreeMap, BTreeSet};

/// Tie-break between objects competing for one slot (an SNI name, a TCP
/// port): older first, then namespace/name.
pub(crate) type Seniority = (
    bool,
    Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    String,
);

pub(crate) fn seniority(
    created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    id: String,
) -> Seniority {
    (created.is_none(), created.cloned(), id)
}

#[derive(Default)]
struct PortAcc {
    sources: BTreeSet<String>,
    sni: BTreeMap<String, Vec<(Seniority, SniAction)>>,
    vhosts: BTreeMap<(String, bool), Vec<(PrecedenceKey, HttpRouteEntry)>>,
    l4: Vec<(Seniority, L4Route)>,
}

#[derive(Default)]
pub(crate) struct ListenerBuilder {
    ports: BTreeMap<(u16, PortProtocol), PortAcc>,
}

/// Protocols that can share a port: UDP never collides with the TCP-based ones.
fn collides(a: PortProtocol, b: PortProtocol) -> bool {
    a != b && (a == PortProtocol::Udp) == (b == PortProtocol::Udp)
}

impl ListenerBuilder {
    /// The protocol already holding `port` that `protocol` would collide with.
    pub fn conflict(&self, port: u16, protocol: PortProtocol) -> Option<PortProtocol> {
        self.ports
            .keys()
            .filter(|(p, _)| *p == port)
            .map(|(_, proto)| *proto)
            .find(|proto| collides(*proto, protocol))
    }

    pub fn claim(&mut self, port: u16, protocol: PortProtocol, source: String) {
        self.ports
            .entry((port, protocol))
            .or_default()
            .sources
            .insert(source);
    }

    pub fn add_sni(&mut self, port: u16, hostname: &str, seniority: Seniority, action: SniAction) {
        self.ports
            .entry((port, PortProtocol::Tls))
            .or_default()
            .sni
            .entry(hostname.into())
            .or_default()
            .push((seniority, action));
    }

    pub fn add_http(
        &mut self,
        port: u16,
        protocol: PortProtocol,
        hostname: &str,
        single_label_wildcard: bool,
        key: PrecedenceKey,
        entry: HttpRouteEntry,
    ) {
        self.ports
            .entry((port, protocol))
            .or_default()
            .vhosts
            .entry((
                hostname.into(),
                single_label_wildcard && hostname.starts_with("*."),
            ))
            .or_default()
            .push((key, entry));
    }

    pub fn set_l4(
        &mut self,
        port: u16,
        protocol: PortProtocol,
        seniority: Seniority,
        route: L4Route,
    ) {
        self.ports
            .entry((port, protocol))
            .or_default()
            .l4
            .push((seniority, route));
    }

    /// Emits the listeners. Passthrough SNI entries whose TCP-terminate or
    /// passthrough route is missing are dropped: nothing to forward to.
    pub fn finish(self, _snapshot: &mut Snapshot) -> RoutesPart {
        let mut listeners = Vec::new();
        for ((port, protocol), acc) in self.ports {
            let mut tls: Vec<SniEntry> = acc
                .sni
                .into_iter()
                .filter_map(|(hostname, mut actions)| {
                    // A terminating entry (the listener's) outranks passthrough/TCP ones
                    // only by age; the oldest claim on a name wins.
                    actions.sort_by(|a, b| a.0.cmp(&b.0));
                    let action = actions.into_iter().next()?.1;
                    Some(SniEntry { hostname, action })
                })
                .collect();
            tls.sort_by(|a, b| specificity_order(&a.hostname, &b.hostname));
            let mut virtual_hosts: Vec<VirtualHost> = acc
                .vhosts
                .into_iter()
                .map(|((hostname, single_label_wildcard), mut entries)| {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    VirtualHost {
                        hostname,
                        single_label_wildcard,
                        routes: entries.into_iter().map(|(_, e)| e).collect(),
                    }
                })
                .collect();
            virtual_hosts.sort_by(|a, b| {
                specificity_order(&a.hostname, &b.hostname)
                    .then(a.single_label_wildcard.cmp(&b.single_label_wildcard))
            });
            let mut l4 = acc.l4;
            l4.sort_by(|a, b| a.0.cmp(&b.0));
            listeners.push(PortListener {
                port,
                protocol,
                sources: acc.sources.into_iter().collect(),
                tls,
                virtual_hosts,
                l4: l4.into_iter().next().map(|(_, r)| r),
            });
        }
        RoutesPart { listeners }
    }
}
