//! pier-agent: wiring only. Standalone mode reads a folder of manifests,
//! plans the lb4 maps for this node, applies the diff in a safe order, and
//! re-applies on every change of the folder.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pier_agent::health::HealthChecks;
use pier_agent::loader::{
    cgroup2_root, read_pinned, read_stats, render_status, uninstall, LbMaps, MapSizes, NodePortLb,
    SockLb,
};
use pier_agent::maps::Config;
use pier_agent::plan::NodeInfo;
use pier_agent::planner::Planner;
use pier_translate::TranslateOptions;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "pier-agent",
    version,
    about = "pier's eBPF kube-proxy replacement"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Folder of manifests (standalone mode); watched for changes.
    #[arg(long, value_name = "DIR")]
    manifests: Option<PathBuf>,
    #[command(flatten)]
    stream: pier_stream::StreamClientArgs,
    /// cgroup v2 directory the socket hooks attach to (default: the cgroup v2 root from /proc/mounts).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Where the maps are pinned (on a bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/pier", global = true)]
    pin_dir: PathBuf,
    /// This node's name, for traffic policies Local.
    #[arg(long, default_value = "")]
    node_name: String,
    /// This node's zone, for trafficDistribution PreferClose.
    #[arg(long)]
    zone: Option<String>,
    /// Address the healthCheckNodePort listeners bind to.
    #[arg(long, default_value = "0.0.0.0")]
    health_bind: std::net::IpAddr,
    /// External interface(s) for the tc programs (NodePort, LB IPs and
    /// externalIPs from outside). Repeat for several; none: socket LB only.
    #[arg(long = "interface", value_name = "NAME")]
    interfaces: Vec<String>,
    /// This node's addresses NodePorts answer on, IPv4 or IPv6 (default:
    /// the addresses of the --interface interfaces, link-local ones left out).
    #[arg(long = "node-address", value_name = "IP")]
    node_addresses: Vec<std::net::IpAddr>,
    /// Source address for SNAT towards backends on other nodes (default: the
    /// first IPv4 node address; none: the node address the client used).
    #[arg(long)]
    snat_address: Option<std::net::Ipv4Addr>,
    /// The same for IPv6 (default: the first IPv6 node address).
    #[arg(long)]
    snat_address6: Option<std::net::Ipv6Addr>,
    /// SNAT source ports; keep them outside net.ipv4.ip_local_port_range so
    /// they never collide with the node's own connections.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    snat_ports: (u16, u16),
    /// Maglev table size (a prime, at most 16381).
    #[arg(long, default_value_t = 16381)]
    maglev_table_size: u32,
    /// Capacity of the service address map.
    #[arg(long, default_value_t = MapSizes::default().services)]
    max_services: u32,
    /// Capacity of the backend (and slot) maps.
    #[arg(long, default_value_t = MapSizes::default().backends)]
    max_backends: u32,
    /// Capacity of the conntrack map (LRU).
    #[arg(long, default_value_t = MapSizes::default().conntrack)]
    max_conntrack: u32,
    /// How many services reached from outside can have a Maglev table.
    #[arg(long, default_value_t = MapSizes::default().maglev_tables)]
    max_maglev_tables: u32,
    /// Where /metrics (Prometheus) and /healthz are served.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_bind: std::net::SocketAddr,
    /// Idle timeout of a TCP conntrack entry, in seconds.
    #[arg(long, default_value_t = 21_600)]
    tcp_timeout: u32,
    /// How long a TCP conntrack entry lives after a FIN or RST, in seconds.
    #[arg(long, default_value_t = 10)]
    tcp_closing_timeout: u32,
    /// Idle timeout of a UDP conntrack entry, in seconds.
    #[arg(long, default_value_t = 120)]
    udp_timeout: u32,
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected MIN-MAX"))?;
    let a: u16 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 0 < MIN <= MAX"));
    }
    Ok((a, b))
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Detach the hooks and remove the pinned links and maps.
    Uninstall,
    /// Print the services and backends programmed in the pinned maps, the
    /// conntrack entries of traffic from outside and the drop counters.
    Status {
        /// How many conntrack entries to list (0: only count them).
        #[arg(long, default_value_t = 50)]
        conntrack: usize,
    },
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(Command::Status { conntrack }) = args.command {
        let state = read_pinned(&args.pin_dir)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("reading the maps pinned in {}", args.pin_dir.display()))?;
        print!("{}", render_status(&state));
        if let Ok(flows) = pier_agent::loader::read_conntrack(&args.pin_dir, conntrack) {
            print!("{}", pier_agent::loader::render_conntrack(&flows));
        }
        if let Ok(stats) = read_stats(&args.pin_dir) {
            println!("{} conntrack entries", stats.conntrack_entries);
            for (reason, n) in stats.counters {
                println!("{reason}: {n} packets");
            }
        }
        return Ok(());
    }
    if let Some(Command::Uninstall) = args.command {
        return uninstall(&args.pin_dir)
            .map_err(anyhow::Error::new)
            .context("uninstalling");
    }
    let cgroup = match &args.cgroup {
        Some(c) => c.clone(),
        None => cgroup2_root().context("no cgroup v2 mount found in /proc/mounts")?,
    };
    let mut addresses = args.node_addresses.clone();
    if addresses.is_empty() {
        addresses = args
            .interfaces
            .iter()
            .flat_map(|i| pier_agent::interfaces::addresses(i))
            .collect();
    }
    let addresses6: Vec<std::net::Ipv6Addr> = addresses
        .iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V6(a) => Some(*a),
            std::net::IpAddr::V4(_) => None,
        })
        .collect();
    let addresses: Vec<std::net::Ipv4Addr> = addresses
        .iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(*a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let node = NodeInfo {
        name: args.node_name.clone(),
        zone: args.zone.clone(),
        addresses: addresses.clone(),
        addresses6: addresses6.clone(),
        maglev_table_size: args.maglev_table_size,
    };
    if pier_agent::maglev::table(&[], args.maglev_table_size as usize).is_err()
        || args.maglev_table_size as usize > pier_agent::maps::MAGLEV_MAX
    {
        anyhow::bail!(
            "--maglev-table-size {} must be a prime of at most {}",
            args.maglev_table_size,
            pier_agent::maps::MAGLEV_MAX
        );
    }
    let sizes = MapSizes {
        services: args.max_services,
        backends: args.max_backends,
        conntrack: args.max_conntrack,
        maglev_tables: args.max_maglev_tables,
    };
    let sock = SockLb::attach(&args.pin_dir, &cgroup, &sizes)
        .map_err(anyhow::Error::new)
        .context("attaching the socket hooks")?;
    tracing::info!(cgroup = %cgroup.display(), pins = %args.pin_dir.display(), "socket load balancing attached");
    let snat = args.snat_address.or(addresses.first().copied());
    let config = Config {
        snat_address: snat.map_or([0; 4], |a| a.octets()),
        snat_port_min: args.snat_ports.0,
        snat_port_max: args.snat_ports.1,
        tcp_timeout_s: args.tcp_timeout,
        udp_timeout_s: args.udp_timeout,
        closing_timeout_s: args.tcp_closing_timeout,
        pad: 0,
        snat_address6: args
            .snat_address6
            .or(addresses6.first().copied())
            .map_or([0; 16], |a| a.octets()),
    };
    let mut nodeport = NodePortLb::load(&args.pin_dir, &sizes, &config)
        .map_err(anyhow::Error::new)
        .context("loading the tc programs")?;
    for interface in &args.interfaces {
        nodeport
            .attach(&args.pin_dir, interface)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("attaching the tc programs to {interface}"))?;
        tracing::info!(interface, node_addresses = ?addresses, node_addresses6 = ?addresses6, snat = ?snat, "NodePort / external traffic attached");
    }
    let metrics = pier_agent::metrics::Shared::default();
    let stream_status = std::sync::Arc::new(std::sync::OnceLock::new());
    let metrics_at = pier_agent::metrics::serve(
        args.metrics_bind,
        metrics.clone(),
        stream_status.clone(),
        args.pin_dir.clone(),
        sizes,
    )
    .with_context(|| format!("serving metrics on {}", args.metrics_bind))?;
    tracing::info!(address = %metrics_at, "metrics listening");
    let lb = LbMaps::open(&args.pin_dir)
        .map_err(anyhow::Error::new)
        .context("opening the pinned maps")?;
    // Maps pinned by a previous agent are reused by the loader: start from
    // what they hold, so the first update is a diff, not a rewrite.
    let current = read_pinned(&args.pin_dir).unwrap_or_default();
    let mut programmer = Programmer {
        planner: Planner::new(
            node.clone(),
            current,
            pier_agent::loader::read_id_counters(&args.pin_dir),
        ),
        needs_full: false,
        lb,
        metrics,
        _programs: (sock, nodeport),
        node,
        health: HealthChecks::new(args.health_bind),
        pin_dir: args.pin_dir.clone(),
    };
    let subscriber = pier_stream::Subscriber::Agent {
        node: args.node_name.clone(),
    };
    let stream_config = args
        .stream
        .follower_config(subscriber)
        .context("snapshot stream")?;
    match (&args.manifests, stream_config) {
        (Some(dir), None) => follow_manifests(dir, programmer),
        (None, Some(config)) => {
            // The pinned maps keep traffic flowing whatever happens here; the
            // follower installs the state dir's snapshot, then the controller's.
            let status = pier_stream::spawn_follower(config, move |s, changed| {
                programmer.program(s, changed, std::time::Instant::now())
            })
            .context("starting the stream thread")?;
            let _ = stream_status.set(status);
            loop {
                std::thread::park();
            }
        }
        _ => {
            anyhow::bail!(
                "give exactly one snapshot source: --manifests DIR or --controller HOST:PORT"
            )
        }
    }
}

/// Everything needed to turn snapshots into kernel state on this node.
struct Programmer {
    lb: LbMaps,
    metrics: pier_agent::metrics::Shared,
    /// Kept loaded for the agent's lifetime (the links are pinned anyway).
    _programs: (SockLb, NodePortLb),
    node: NodeInfo,
    health: HealthChecks,
    planner: Planner,
    /// Set when an update failed half-way: the next one re-plans everything.
    needs_full: bool,
    pin_dir: std::path::PathBuf,
}

impl Programmer {
    /// Programs `snapshot`; `changed` lists the keys a delta touched (then
    /// only those services are re-planned), `None` means anything may have.
    fn program(
        &mut self,
        snapshot: &pier_snapshot::Snapshot,
        changed: Option<&pier_snapshot::DeltaKeys>,
        started: std::time::Instant,
    ) {
        let ops = match changed {
            Some(keys) if !self.needs_full => {
                let touched = self.planner.touched(&keys.services, &keys.backends);
                self.planner.update(snapshot, &touched)
            }
            _ => self.planner.full(snapshot),
        };
        // Saved first: counters only go up, so a failure or a kill half-way
        // through the operations can never lead to an id given out twice.
        if let Err(e) = self.lb.save_ids(self.planner.id_counters()) {
            tracing::warn!(error = %pier_agent::loader::Chain(&e), "id counters not saved");
        }
        match self.lb.apply(&ops) {
            Ok(()) => {
                self.needs_full = false;
                let state = self.planner.state();
                tracing::info!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    ops = ops.len(),
                    services = state.services.len() + state.services6.len(),
                    backends = state.backends.len() + state.backends6.len(),
                    "maps updated"
                );
                let destroyed = self
                    .lb
                    .destroy_stale_sockets(self.planner.removed_backends());
                if destroyed > 0 {
                    tracing::info!(sockets = destroyed, "stale UDP sockets destroyed");
                }
                let mut metrics = self.metrics.lock().unwrap_or_else(|e| e.into_inner());
                metrics.record(self.planner.state(), ops.len(), started.elapsed());
                metrics.stale_sockets_destroyed += destroyed as u64;
            }
            Err(e) => {
                self.metrics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .updates_failed += 1;
                // Part of the operations may be in the kernel: re-plan
                // everything against what is really there next time.
                if let Ok(actual) = read_pinned(&self.pin_dir) {
                    self.planner.reset_to(actual);
                }
                self.needs_full = true;
                tracing::error!(error = %pier_agent::loader::Chain(&e), "map update failed; will retry on the next change")
            }
        }
        // Off the programming path: the health-check listeners follow.
        self.health.update(snapshot, &self.node);
    }
}

/// Standalone source: translate the folder in-process and follow its
/// changes (only what moved is re-planned).
fn follow_manifests(dir: &std::path::Path, mut programmer: Programmer) -> Result<()> {
    let _watcher = pier_manifests::follow_dir(
        dir,
        TranslateOptions::default(),
        pier_manifests::SETTLE,
        move |u| {
            let changed = (!u.first).then(|| pier_snapshot::DeltaKeys::from(u.diff));
            programmer.program(u.snapshot, changed.as_ref(), std::time::Instant::now())
        },
    )?;
    loop {
        std::thread::park();
    }
}
