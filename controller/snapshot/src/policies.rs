//! NetworkPolicy, compiled to per-pod allow rules (filled by the NetworkPolicy work).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoliciesPart {
    pub rules: Vec<PolicyRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    pub pod: std::net::IpAddr,
    pub ingress: bool,
    pub peer: ipnet::IpNet,
    pub protocol: crate::L4Protocol,
    pub port_min: u16,
    pub port_max: u16,
}
