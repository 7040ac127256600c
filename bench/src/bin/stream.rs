//! The snapshot stream under load, in one process over real loopback TCP:
//! pier-controller's stream server (hub → per-subscriber views → frames)
//! and N data-plane followers (`pier_stream::spawn_follower`, the code the
//! proxy and the agent run), at 10,000 Services × 10 endpoints.
//!
//! Measured:
//! - initial sync: from the first publication to all N followers holding
//!   the full snapshot;
//! - fan-out of one endpoint change: from `Hub::publish` to the last of the
//!   N followers having applied it (p50 / p99 over the changes);
//! - a stalled subscriber (hello sent, never reads) while 1,000 changes
//!   flow: the server's RSS growth, and whether it is dropped.
//!
//! Run: `bench/run-stream` (= `cargo run --release -p pier-bench --bin stream`).

use pier_controller::hub::Hub;
use pier_controller::serve::{serve_on_loopback, stalled_subscriber};
use pier_snapshot::Snapshot;
use pier_stream::{spawn_follower, FollowerConfig, Subscriber};
use pier_translate::{translate, TranslateOptions};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const SERVICES: usize = 10_000;
const CHANGES: usize = 200;
/// Changes published while one subscriber is stalled.
const STALLED_CHANGES: u32 = 1_000;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Every follower reports the port of the first endpoint of the changing
/// Service: change `i` sets it to `20000 + i`.
struct Progress {
    seen: Mutex<Vec<u64>>,
    moved: Condvar,
}

impl Progress {
    fn wait_all(&self, value: u64, timeout: Duration) -> bool {
        let seen = self.seen.lock().unwrap();
        let (seen, _) = self
            .moved
            .wait_timeout_while(seen, timeout, |s| s.iter().any(|v| *v != value))
            .unwrap();
        seen.iter().all(|v| *v == value)
    }
}

fn with_port(base: &Snapshot, key: &str, port: u16) -> Snapshot {
    let mut next = base.clone();
    if let Some(set) = next.backends.data.get_mut(key) {
        set.endpoints[0].port = port;
    }
    next
}

fn run(subscribers: usize, base: &Snapshot, key: &str) -> String {
    let hub = Arc::new(Hub::default());
    let (addr, metrics, _runtime) =
        serve_on_loopback(hub.clone(), Duration::from_secs(5), Duration::from_secs(2)).unwrap();

    let progress = Arc::new(Progress {
        seen: Mutex::new(vec![0; subscribers]),
        moved: Condvar::new(),
    });
    let started = Instant::now();
    hub.publish(with_port(base, key, 20_000), None);
    let key_owned = key.to_string();
    for i in 0..subscribers {
        let progress = progress.clone();
        let key = key_owned.clone();
        let subscriber = if i % 2 == 0 {
            Subscriber::Agent {
                node: format!("node-{i}"),
            }
        } else {
            Subscriber::Proxy {
                name: format!("proxy-{i}"),
                scope: Default::default(),
            }
        };
        spawn_follower(
            FollowerConfig::new(addr.to_string(), subscriber),
            move |s, _| {
                let port = s.backends.data.get(&key).map_or(0, |b| b.endpoints[0].port);
                progress.seen.lock().unwrap()[i] = u64::from(port);
                progress.moved.notify_all();
            },
        )
        .unwrap();
    }
    assert!(
        progress.wait_all(20_000, Duration::from_secs(120)),
        "initial sync"
    );
    let initial = started.elapsed();

    let mut latencies = Vec::with_capacity(CHANGES);
    for i in 1..=CHANGES {
        let port = 20_000 + i as u16;
        let next = with_port(base, key, port);
        let t0 = Instant::now();
        hub.publish(next, None);
        assert!(
            progress.wait_all(u64::from(port), Duration::from_secs(30)),
            "change {i}"
        );
        latencies.push(t0.elapsed());
    }
    latencies.sort();

    // A stalled subscriber while 10,000 changes flow.
    let stop = stalled_subscriber(addr).unwrap();
    let rss_before = rss_mib();
    let churn_start = Instant::now();
    for i in 0..STALLED_CHANGES {
        hub.publish(with_port(base, key, 30_000 + i as u16), None);
    }
    let churn = churn_start.elapsed();
    let grown = rss_mib() - rss_before;
    let dropped_at = Instant::now();
    while metrics.dropped.with_label_values(&["write_timeout"]).get() < 1
        && dropped_at.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let dropped = metrics.dropped.with_label_values(&["write_timeout"]).get() >= 1;
    stop.store(true, Ordering::Relaxed);

    format!(
        "| {subscribers} | {:.0} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} MiB over {} changes ({:.1} s) | {} |",
        initial.as_secs_f64() * 1e3,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        grown,
        STALLED_CHANGES,
        churn.as_secs_f64(),
        if dropped { "dropped (write timeout)" } else { "NOT dropped" },
    )
}

fn main() {
    let state = pier_bench::cluster(SERVICES, 10, 0);
    let mut base = Snapshot::empty();
    base.advance(translate(&state, &TranslateOptions::default()).snapshot);
    let key = base
        .backends
        .data
        .keys()
        .nth(SERVICES / 2)
        .cloned()
        .expect("backends");
    let full = pier_snapshot::encode(&pier_snapshot::Message::Full(base.clone())).len();
    println!(
        "snapshot: {} services, {} backend sets, full frame {:.1} MiB",
        base.services.data.len(),
        base.backends.data.len(),
        full as f64 / 1048576.0
    );
    println!("| subscribers | initial sync (all) | one endpoint change, all applied p50 | p99 | max | stalled subscriber: server RSS growth | stalled subscriber |");
    println!("|---|---|---|---|---|---|---|");
    for n in [1, 10, 100] {
        println!("{}", run(n, &base, &key));
    }
}
