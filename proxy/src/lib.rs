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

/// An error and its sources, outermost first, joined by `: ` (for logs: a
/// `Display` shows only the outermost).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some errors repeat their source in their own message.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
