//! pier-proxy: the L7 data plane. A snapshot becomes a [`routing::Routing`]
//! (route table, certificates, SNI maps) swapped atomically into
//! [`routing::Shared`]; the pingora service reads it once per request, so a
//! request finishes on the table it started with.

pub mod admin;
pub mod args;
pub mod balancer;
pub mod echo;
pub mod l4;
pub mod listeners;
pub mod metrics;
pub mod routing;
pub mod service;
pub mod stream;
pub mod tls;
pub mod udp;
