//! Endpoint sets per Service port: the fast-changing part.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSet {
    /// How the proxy talks to these endpoints (from the port's appProtocol).
    pub protocol: AppProtocol,
    /// For an ExternalName Service: the DNS name to connect to (with `port`).
    pub external_name: Option<String>,
    pub port: u16,
    /// Sorted by address then port; duplicates across EndpointSlices removed.
    pub endpoints: Vec<Endpoint>,
    /// How the proxy picks among the usable endpoints.
    pub load_balancing: LoadBalancing,
}

/// Endpoint choice for L7 traffic (Service annotation `pier.dev/load-balancing`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LoadBalancing {
    /// Power of two random choices, fewest requests in flight.
    #[default]
    LeastRequest,
    RoundRobin,
    /// Same key → same endpoint while it stays usable (rendezvous hashing:
    /// when an endpoint leaves, only its keys move).
    ConsistentHash(HashOn),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AppProtocol {
    #[default]
    Http1,
    /// `kubernetes.io/h2c` or `grpc`-ish: HTTP/2 over cleartext.
    H2c,
    /// `kubernetes.io/ws`: HTTP/1.1 with WebSocket upgrades.
    WebSocket,
    /// `https` / `kubernetes.io/https`: TLS to the endpoint.
    Https,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoint {
    pub address: IpAddr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
    pub node_name: Option<String>,
}

impl BackendSet {
    /// The endpoints traffic may go to, among those `eligible` says may be
    /// considered: the ready ones, or, when none is ready, the ones still
    /// serving while terminating (the Kubernetes terminating-fallback rule).
    pub fn usable(&self, eligible: impl Fn(&Endpoint) -> bool) -> Vec<&Endpoint> {
        let ready: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| e.ready && eligible(e))
            .collect();
        if !ready.is_empty() {
            return ready;
        }
        self.endpoints
            .iter()
            .filter(|e| e.serving && e.terminating && eligible(e))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            address: IpAddr::from([10, 0, 0, last]),
            port: 80,
            ready,
            serving,
            terminating,
            zone: None,
            node_name: None,
        }
    }

    #[test]
    fn ready_endpoints_win_over_terminating_ones() {
        let set = BackendSet {
            endpoints: vec![ep(1, true, true, false), ep(2, false, true, true)],
            ..Default::default()
        };
        let usable = set.usable(|_| true);
        assert_eq!(usable.len(), 1);
        assert_eq!(usable[0].address, IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let set = BackendSet {
            endpoints: vec![ep(1, false, false, true), ep(2, false, true, true)],
            ..Default::default()
        };
        let usable = set.usable(|_| true);
        assert_eq!(usable.len(), 1);
        assert_eq!(usable[0].address, IpAddr::from([10, 0, 0, 2]));
    }

    #[test]
    fn fallback_respects_the_eligibility_filter() {
        let set = BackendSet {
            endpoints: vec![ep(1, true, true, false), ep(2, false, true, true)],
            ..Default::default()
        };
        let usable = set.usable(|e| e.address == IpAddr::from([10, 0, 0, 2]));
        assert_eq!(
            usable.len(),
            1,
            "local-only view falls back to its own terminating endpoint"
        );
    }
}
