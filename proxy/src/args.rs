//! Command-line arguments of pier-proxy, parsed and checked in one place.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pier-proxy",
    version,
    about = "pier's L7 ingress proxy (Ingress and Gateway API)"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Folder of manifests to serve (standalone mode); watched for changes.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    #[command(flatten)]
    pub stream: pier_stream::StreamClientArgs,
    /// With --controller: a Gateway this proxy serves, `NAMESPACE/NAME`
    /// (repeatable; none = every Gateway of pier's GatewayClass). The
    /// controller sends only what these need, certificates included.
    #[arg(long = "gateway", value_name = "NAMESPACE/NAME", value_parser = parse_gateway)]
    pub gateways: Vec<String>,
    /// With --controller: whether Ingresses of pier's IngressClass are served.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub ingress: bool,
    /// With --controller: this proxy's name in the controller's logs and metrics
    /// (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Address the snapshot's listener ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_host: std::net::IpAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: u64,
    /// Largest request head (all header names and values) accepted; larger ones get 431.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Seconds an L4 connection (TCP, TLS passthrough / terminate) may stay
    /// idle, no byte either way, before it is closed.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub l4_idle_timeout: u64,
    /// Seconds in-flight requests get to finish on SIGTERM / SIGINT.
    #[arg(long, default_value_t = 5)]
    pub grace_seconds: u64,
    /// Port Ingress rules are served on over HTTP.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_http_port: u16,
    /// Port Ingress TLS hosts are served on.
    #[arg(long, default_value_t = 443, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_https_port: u16,
    /// Quiet time after a change in the manifest folder before reloading.
    #[arg(long, default_value_t = 100)]
    pub reload_settle_ms: u64,
    /// Also start the two demo upstreams the examples point at (127.0.0.1:9001 and :9002).
    #[arg(long)]
    pub demo_upstreams: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run an echo upstream (for demos and tests).
    Echo {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value = "echo")]
        name: String,
    },
}

fn parse_gateway(s: &str) -> Result<String, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(s.to_string())
        }
        _ => Err(format!("gateway {s:?} is not NAMESPACE/NAME")),
    }
}

impl Args {
    /// Who this proxy is on the snapshot stream.
    pub fn subscriber(&self) -> pier_stream::Subscriber {
        pier_stream::Subscriber::Proxy {
            name: self.name.clone().unwrap_or_else(host_name),
            scope: pier_stream::ProxyScope {
                gateways: (!self.gateways.is_empty()).then(|| self.gateways.clone()),
                ingress: self.ingress,
            },
        }
    }
}

/// The kernel's host name (the pod name in Kubernetes).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
