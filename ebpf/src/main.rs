//! pier-agent: wiring only. Standalone mode reads a folder of manifests,
//! plans the lb4 maps for this node, applies the diff in a safe order, and
//! re-applies on every change of the folder.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use pier_agent::health::HealthChecks;
use pier_agent::loader::{cgroup2_root, read_pinned, render_status, uninstall, SockLb};
use pier_agent::plan::{diff, plan, Ids, MapState, NodeInfo};
use pier_translate::{translate, TranslateOptions};
use std::path::PathBuf;
use std::sync::mpsc;

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
    /// The controller's snapshot stream (`pier-controller serve`), instead of --manifests.
    #[arg(long, value_name = "ADDR", conflicts_with = "manifests")]
    controller: Option<std::net::SocketAddr>,
    /// cgroup v2 directory the socket hooks attach to (default: the cgroup v2 root from /proc/mounts).
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Where the maps are pinned (on a bpffs).
    #[arg(long, default_value = "/sys/fs/bpf/pier")]
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
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Detach the hooks and remove the pinned links and maps.
    Uninstall,
    /// Print the services and backends programmed in the pinned maps.
    Status,
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
    if let Some(Command::Status) = args.command {
        let state = read_pinned(&args.pin_dir)
            .map_err(anyhow::Error::new)
            .with_context(|| format!("reading the maps pinned in {}", args.pin_dir.display()))?;
        print!("{}", render_status(&state));
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
    let node = NodeInfo {
        name: args.node_name.clone(),
        zone: args.zone.clone(),
        addresses: Vec::new(),
    };
    let lb = SockLb::attach(&args.pin_dir, &cgroup)
        .map_err(anyhow::Error::new)
        .context("attaching the socket hooks")?;
    tracing::info!(cgroup = %cgroup.display(), pins = %args.pin_dir.display(), "socket load balancing attached");
    // Maps pinned by a previous agent are reused by the loader: start from
    // what they hold, so the first update is a diff, not a rewrite.
    let current = read_pinned(&args.pin_dir).unwrap_or_default();
    let mut programmer = Programmer {
        ids: Ids::adopt(&current),
        current,
        lb,
        node,
        health: HealthChecks::new(args.health_bind),
        pin_dir: args.pin_dir.clone(),
    };
    match (&args.manifests, args.controller) {
        (Some(dir), None) => follow_manifests(dir, &mut programmer),
        (None, Some(addr)) => {
            let connect = move || {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
            };
            let mut warn =
                move |e: &str| tracing::warn!(controller = %addr, error = %e, "snapshot stream");
            let (first, stream) =
                pier_snapshot::stream::first_snapshot(&mut { connect }, &mut warn);
            programmer.program(&first, std::time::Instant::now());
            pier_snapshot::stream::follow(
                connect,
                |s| programmer.program(s, std::time::Instant::now()),
                warn,
                first,
                stream,
            )
        }
        _ => {
            anyhow::bail!("give exactly one snapshot source: --manifests DIR or --controller ADDR")
        }
    }
}

/// Everything needed to turn snapshots into kernel state on this node.
struct Programmer {
    lb: SockLb,
    node: NodeInfo,
    health: HealthChecks,
    current: MapState,
    ids: Ids,
    pin_dir: std::path::PathBuf,
}

impl Programmer {
    fn program(&mut self, snapshot: &pier_snapshot::Snapshot, started: std::time::Instant) {
        self.health.update(snapshot, &self.node);
        let next = plan(snapshot, &self.node, &mut self.ids);
        let ops = diff(&self.current, &next);
        match self.lb.apply(&ops) {
            Ok(()) => {
                tracing::info!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    ops = ops.len(),
                    services = next.services.len(),
                    backends = next.backends.len(),
                    "maps updated"
                );
                self.current = next;
            }
            Err(e) => {
                // Part of the diff may be in the kernel: diff against what is
                // really there next time, not against what we meant to write.
                if let Ok(actual) = read_pinned(&self.pin_dir) {
                    self.current = actual;
                }
                tracing::error!(error = %e, "map update failed; will retry on the next change")
            }
        }
    }
}

/// Standalone source: translate the folder in-process and follow its changes.
fn follow_manifests(dir: &std::path::Path, programmer: &mut Programmer) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    let _watcher = pier_manifests::watch(dir, move |r| {
        let _ = tx.send(r);
    })
    .context("cannot watch the manifest folder")?;
    let options = TranslateOptions::default();
    let mut loaded = Some(pier_manifests::load_dir(dir));
    loop {
        match loaded.take().expect("set before each turn") {
            Ok(state) => {
                let started = std::time::Instant::now();
                programmer.program(&translate(&state, &options).snapshot, started);
            }
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(file = %e.file.display(), line = e.line, message = %e.message, "manifest rejected; maps keep their last good content");
                }
            }
        }
        match rx.recv() {
            Ok(r) => loaded = Some(r),
            Err(_) => return Ok(()),
        }
    }
}
