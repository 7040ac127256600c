//! L4 services: what pier-agent programs into BPF maps.

use crate::BackendKey;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Service {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: L4Protocol,
    pub port: u16,
    /// ClusterIPs, IPv4 and/or IPv6; empty for headless Services.
    pub cluster_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    pub load_balancer_ips: Vec<IpAddr>,
    pub session_affinity: Option<SessionAffinity>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    /// trafficDistribution: PreferClose (same zone first).
    pub prefer_close: bool,
    pub health_check_node_port: Option<u16>,
    /// Key into `Snapshot::backends`.
    pub backends: BackendKey,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum L4Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAffinity {
    pub timeout_seconds: u32,
}
