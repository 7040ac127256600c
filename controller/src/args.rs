//! Command-line arguments, parsed and checked in one place.

use clap::{Parser, Subcommand, ValueEnum};
use pier_translate::TranslateOptions;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pier-controller",
    version,
    about = "pier's control plane: Kubernetes objects in, snapshots and status out"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the snapshot and the statuses a folder of manifests translates to.
    Translate {
        #[command(flatten)]
        source: Source,
        #[arg(long, short, value_enum, default_value_t = Output::Yaml)]
        output: Output,
    },
    /// Say which listener, route, rule and backend a request would reach, and why the others did not.
    Explain {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Translate the folder and re-translate whenever a file in it changes.
    Watch {
        #[command(flatten)]
        source: Source,
    },
    /// Watch a Kubernetes cluster: translate, publish snapshots, and (as the
    /// elected leader) write status.
    Run(Box<ClusterArgs>),
    /// Stream snapshots to data planes (full on connect, then deltas).
    Serve {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        stream: StreamArgs,
    },
}

/// The snapshot stream data planes connect to.
#[derive(clap::Args, Debug, Clone)]
pub struct StreamArgs {
    /// Address data planes connect to. Without TLS only a loopback address is accepted.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// CA that issued the data planes' client certificates (PEM); with
    /// --stream-tls-cert and --stream-tls-key turns on mutual TLS.
    #[arg(long, value_name = "PEM", requires_all = ["stream_tls_cert", "stream_tls_key"])]
    pub stream_tls_ca: Option<PathBuf>,
    /// The controller's certificate chain (PEM).
    #[arg(long, value_name = "PEM", requires = "stream_tls_ca")]
    pub stream_tls_cert: Option<PathBuf>,
    /// The controller's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "stream_tls_ca")]
    pub stream_tls_key: Option<PathBuf>,
    /// Seconds between heartbeats; a data plane silent for three is dropped.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub heartbeat_seconds: u64,
    /// A data plane that does not take a frame within this many seconds is dropped.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub write_timeout_seconds: u64,
}

impl StreamArgs {
    pub fn options(&self) -> crate::serve::StreamOptions {
        crate::serve::StreamOptions {
            listen: self.listen,
            tls: match (
                &self.stream_tls_ca,
                &self.stream_tls_cert,
                &self.stream_tls_key,
            ) {
                (Some(ca), Some(cert), Some(key)) => Some(pier_stream::TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            heartbeat: std::time::Duration::from_secs(self.heartbeat_seconds),
            write_timeout: std::time::Duration::from_secs(self.write_timeout_seconds),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Source {
    /// Folder of multi-document YAML manifests (standalone mode).
    #[arg(long, value_name = "DIR")]
    pub manifests: PathBuf,
    #[command(flatten)]
    pub translate: TranslateArgs,
}

/// The knobs of the translation that are not in the cluster objects.
#[derive(clap::Args, Debug, Clone)]
pub struct TranslateArgs {
    /// IngressClass name served when no IngressClass object says otherwise.
    #[arg(long, default_value = "pier")]
    pub ingress_class: String,
    /// Port Ingress rules are served on over HTTP.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_http_port: u16,
    /// Port Ingress TLS hosts are served on.
    #[arg(long, default_value_t = 443, value_parser = clap::value_parser!(u16).range(1..))]
    pub ingress_https_port: u16,
}

impl TranslateArgs {
    pub fn options(&self) -> TranslateOptions {
        TranslateOptions {
            ingress_class: self.ingress_class.clone(),
            ingress_http_port: self.ingress_http_port,
            ingress_https_port: self.ingress_https_port,
        }
    }
}

impl Source {
    pub fn options(&self) -> TranslateOptions {
        self.translate.options()
    }
}

#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    /// The request URL, e.g. https://app.example.com:8443/api?x=1
    #[arg(long)]
    pub url: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The request method.
    #[arg(short = 'X', long = "method", default_value = "GET")]
    pub method: String,
    /// TLS server name, when it differs from the URL's host.
    #[arg(long)]
    pub sni: Option<String>,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?} is not `name: value`"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("header {s:?} has an empty name"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Output {
    Yaml,
    Json,
}

/// `pier-controller run`: the Kubernetes source, leader election, status and the admin server.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// kubeconfig file; without it KUBECONFIG, ~/.kube/config, then the in-cluster config.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context (default: the current one).
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub translate: TranslateArgs,
    /// Milliseconds of quiet before a change is re-translated (changes in the window are batched).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub debounce_ms: u64,
    /// Seconds between checks for a Gateway API CRD that is not installed.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub crd_poll_seconds: u64,
    /// Namespace of the leader-election Lease (default: POD_NAMESPACE, the
    /// service account's namespace, else `default`).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "pier-controller")]
    pub leader_election_id: String,
    /// This replica's identity in the Lease (default: POD_NAME, else the hostname).
    #[arg(long)]
    pub leader_election_identity: Option<String>,
    /// Seconds a Lease holder that stopped renewing keeps it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lease_duration_seconds: u64,
    /// Seconds the leader keeps trying to renew before it stops writing.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub renew_deadline_seconds: u64,
    /// Seconds between Lease attempts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub retry_period_seconds: u64,
    /// The Service whose addresses go into Gateway and Ingress status
    /// (its LoadBalancer ingress, else its externalIPs, else its ClusterIP).
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_namespaced)]
    pub publish_service: Option<(String, String)>,
    /// Capacity of the status writer's queue.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub status_queue: u64,
    /// Concurrent status writes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub status_workers: u64,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub admin: std::net::SocketAddr,
    /// Also serve `/debug/snapshot` on the admin address: the published
    /// snapshot as JSON (private keys redacted, routes and chains shown).
    #[arg(long)]
    pub debug_snapshot: bool,
    #[command(flatten)]
    pub stream: StreamArgs,
}

impl ClusterArgs {
    pub fn options(&self) -> TranslateOptions {
        self.translate.options()
    }

    /// Lease timings must let a leader stop writing before another may take over.
    pub fn check(&self) -> Result<(), String> {
        if self.renew_deadline_seconds >= self.lease_duration_seconds {
            return Err(
                "--renew-deadline-seconds must be less than --lease-duration-seconds".into(),
            );
        }
        if self.retry_period_seconds >= self.renew_deadline_seconds {
            return Err("--retry-period-seconds must be less than --renew-deadline-seconds".into());
        }
        Ok(())
    }
}

fn parse_namespaced(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}
