//! Prometheus metrics of the agent on an admin port: what is programmed
//! (services, backends, map fill against capacity), how programming goes,
//! conntrack fill and the data path's drops / passes by reason (read from the
//! pinned maps at scrape time), stale sockets destroyed. `/healthz` answers
//! 200 once the first snapshot is programmed.

use crate::loader::{read_stats, MapSizes};
use crate::maps::{SCOPE_CLUSTER, SCOPE_EXTERNAL, SCOPE_NODEPORT};
use crate::plan::MapState;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the programming loop reports.
#[derive(Debug, Default, Clone)]
pub struct Programmed {
    pub services_by_scope: [usize; 3],
    pub backends: usize,
    pub slots: usize,
    pub maglev_tables: usize,
    pub updates_ok: u64,
    pub updates_failed: u64,
    pub last_update_seconds: f64,
    pub stale_sockets_destroyed: u64,
    pub map_writes: u64,
}

impl Programmed {
    /// Records a successful update to `state` made of `ops` map writes.
    pub fn record(&mut self, state: &MapState, ops: usize, took: Duration) {
        self.services_by_scope = [0; 3];
        for key in state.services.keys() {
            if let Some(n) = self.services_by_scope.get_mut(usize::from(key.scope)) {
                *n += 1;
            }
        }
        self.backends = state.backends.len();
        self.slots = state.slots.len();
        self.maglev_tables = state.maglev.len();
        self.updates_ok += 1;
        self.map_writes += ops as u64;
        self.last_update_seconds = took.as_secs_f64();
    }
}

pub type Shared = Arc<Mutex<Programmed>>;

/// Serves `/metrics` and `/healthz` on `bind` from a thread of its own.
pub fn serve(
    bind: SocketAddr,
    shared: Shared,
    stream: StreamCell,
    pin_dir: PathBuf,
    sizes: MapSizes,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(bind)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("pier-metrics".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                answer(conn, &shared, &stream, &pin_dir, &sizes);
            }
        })?;
    Ok(local)
}

/// The controller's stream, once the agent follows one.
pub type StreamCell =
    std::sync::Arc<std::sync::OnceLock<std::sync::Arc<pier_stream::StreamStatus>>>;

fn answer(
    mut conn: TcpStream,
    shared: &Shared,
    stream: &StreamCell,
    pin_dir: &std::path::Path,
    sizes: &MapSizes,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone.take(8192));
    let mut request_line = String::new();
    let _ = reader.read_line(&mut request_line);
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let programmed = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (status, body) = match path {
        "/metrics" => {
            let mut body = render(&programmed, pin_dir, sizes);
            if let Some(s) = stream.get() {
                body.push_str(&s.render_metrics());
            }
            ("200 OK", body)
        }
        // Ready once programmed; the detail says whether the stream is live
        // (the maps keep serving while it is not).
        "/readyz" => {
            let detail = stream.get().map(|s| s.describe()).unwrap_or_default();
            if programmed.updates_ok > 0 {
                ("200 OK", format!("ready\n{detail}\n"))
            } else {
                (
                    "503 Service Unavailable",
                    format!("not programmed yet\n{detail}\n"),
                )
            }
        }
        "/healthz" if programmed.updates_ok > 0 => ("200 OK", "ok\n".to_string()),
        "/healthz" => (
            "503 Service Unavailable",
            "not programmed yet\n".to_string(),
        ),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// The Prometheus text exposition of everything above.
pub fn render(p: &Programmed, pin_dir: &std::path::Path, sizes: &MapSizes) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let scopes = [
        (SCOPE_CLUSTER, "{scope=\"cluster\"}"),
        (SCOPE_NODEPORT, "{scope=\"nodeport\"}"),
        (SCOPE_EXTERNAL, "{scope=\"external\"}"),
    ];
    let services: Vec<(&str, f64)> = scopes
        .iter()
        .map(|(s, l)| (*l, p.services_by_scope[usize::from(*s)] as f64))
        .collect();
    metric(
        "pier_agent_service_addresses",
        "gauge",
        "Service addresses programmed, by where they are reachable.",
        &services,
    );
    metric(
        "pier_agent_backends",
        "gauge",
        "Backends programmed.",
        &[("", p.backends as f64)],
    );
    let total_services: usize = p.services_by_scope.iter().sum();
    metric(
        "pier_agent_map_entries",
        "gauge",
        "Entries in each BPF map pier writes.",
        &[
            ("{map=\"pier_lb4_services\"}", total_services as f64),
            ("{map=\"pier_lb_slots\"}", p.slots as f64),
            ("{map=\"pier_lb4_backends\"}", p.backends as f64),
            ("{map=\"pier_lb_maglev\"}", p.maglev_tables as f64),
        ],
    );
    metric(
        "pier_agent_map_capacity",
        "gauge",
        "max_entries of each BPF map (configurable with --max-*).",
        &[
            ("{map=\"pier_lb4_services\"}", f64::from(sizes.services)),
            ("{map=\"pier_lb_slots\"}", f64::from(sizes.backends)),
            ("{map=\"pier_lb4_backends\"}", f64::from(sizes.backends)),
            ("{map=\"pier_lb_maglev\"}", f64::from(sizes.maglev_tables)),
            ("{map=\"pier_ct4_flows\"}", f64::from(sizes.conntrack)),
        ],
    );
    metric(
        "pier_agent_programming_total",
        "counter",
        "Snapshots programmed into the maps, by result.",
        &[
            ("{result=\"ok\"}", p.updates_ok as f64),
            ("{result=\"error\"}", p.updates_failed as f64),
        ],
    );
    metric(
        "pier_agent_map_writes_total",
        "counter",
        "Map updates and deletes made.",
        &[("", p.map_writes as f64)],
    );
    metric(
        "pier_agent_last_programming_seconds",
        "gauge",
        "How long the last snapshot took from arrival to programmed.",
        &[("", p.last_update_seconds)],
    );
    metric(
        "pier_agent_stale_sockets_destroyed_total",
        "counter",
        "Connected UDP sockets destroyed because their backend was removed.",
        &[("", p.stale_sockets_destroyed as f64)],
    );
    if let Ok(stats) = read_stats(pin_dir) {
        metric(
            "pier_agent_conntrack_entries",
            "gauge",
            "Conntrack entries for traffic from outside (both directions).",
            &[("", stats.conntrack_entries as f64)],
        );
        let reasons: Vec<(String, f64)> = stats
            .counters
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
            .collect();
        let reasons: Vec<(&str, f64)> = reasons.iter().map(|(l, n)| (l.as_str(), *n)).collect();
        metric(
            "pier_agent_datapath_packets_total",
            "counter",
            "Packets the tc programs dropped or left untranslated, by reason.",
            &reasons,
        );
    }
    out
}
