//! The controller's Prometheus registry, served on `/metrics` by the admin
//! server. Every metric is registered here once; other parts (the stream
//! server's per-subscriber lag, …) add theirs with [`Metrics::register`] or a
//! field of their own next to these.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Objects in the watch caches, per kind.
    pub objects: IntGaugeVec,
    /// Watches that failed and were restarted (re-listed after back-off), per kind.
    pub watch_restarts: IntCounterVec,
    /// 1 while a Gateway API kind's CRD is not installed.
    pub crd_missing: IntGaugeVec,
    /// Time of one full translation.
    pub translate_seconds: Histogram,
    /// Publications by path: `full` (re-translation) or `endpoints` (fast path).
    pub publishes: IntCounterVec,
    /// Version of each snapshot part (routes, backends, services, policies, certificates).
    pub snapshot_version: IntGaugeVec,
    /// Size of the last full snapshot in its wire encoding.
    pub snapshot_bytes: IntGauge,
    /// Status writes by result (`ok`, `failed`, `conflict`); failed ones are retried.
    pub status_writes: IntCounterVec,
    /// Status writes waiting in the writer's queue.
    pub status_queue: IntGauge,
    /// Warning Events emitted by result.
    pub events: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
    /// Lease transitions seen by this replica (became / stopped being the leader).
    pub leader_transitions: IntCounter,
    /// 1 once the initial lists are in and the first snapshot is published.
    pub ready: IntGauge,
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Registry::new(),
            objects: gauge_vec(
                "pier_controller_objects",
                "Objects in the watch caches.",
                &["kind"],
            ),
            watch_restarts: counter_vec(
                "pier_controller_watch_restarts_total",
                "Watch errors; the watch is restarted (re-listed) with back-off.",
                &["kind"],
            ),
            crd_missing: gauge_vec(
                "pier_controller_crd_missing",
                "1 while the CRD of a Gateway API kind is not installed.",
                &["kind"],
            ),
            translate_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pier_controller_translate_seconds",
                    "Time of one full translation of the cluster state.",
                )
                .buckets(vec![
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )
            .expect("valid metric"),
            publishes: counter_vec(
                "pier_controller_publishes_total",
                "Snapshots handed to the stream, by path (full, endpoints).",
                &["path"],
            ),
            snapshot_version: gauge_vec(
                "pier_controller_snapshot_version",
                "Version of each part of the published snapshot.",
                &["part"],
            ),
            snapshot_bytes: IntGauge::new(
                "pier_controller_snapshot_bytes",
                "Wire size of the last published full snapshot.",
            )
            .expect("valid metric"),
            status_writes: counter_vec(
                "pier_controller_status_writes_total",
                "Status writes by result (ok, failed, conflict).",
                &["result"],
            ),
            status_queue: IntGauge::new(
                "pier_controller_status_queue",
                "Status writes waiting in the writer's queue.",
            )
            .expect("valid metric"),
            events: counter_vec(
                "pier_controller_events_total",
                "Warning Events emitted, by result (ok, failed).",
                &["result"],
            ),
            leader: IntGauge::new(
                "pier_controller_leader",
                "1 while this replica holds the leader Lease.",
            )
            .expect("valid metric"),
            leader_transitions: IntCounter::new(
                "pier_controller_leader_transitions_total",
                "Times this replica became or stopped being the leader.",
            )
            .expect("valid metric"),
            ready: IntGauge::new(
                "pier_controller_ready",
                "1 once the initial lists are in and the first snapshot is published.",
            )
            .expect("valid metric"),
        };
        m.register(m.objects.clone());
        m.register(m.watch_restarts.clone());
        m.register(m.crd_missing.clone());
        m.register(m.translate_seconds.clone());
        m.register(m.publishes.clone());
        m.register(m.snapshot_version.clone());
        m.register(m.snapshot_bytes.clone());
        m.register(m.status_writes.clone());
        m.register(m.status_queue.clone());
        m.register(m.events.clone());
        m.register(m.leader.clone());
        m.register(m.leader_transitions.clone());
        m.register(m.ready.clone());
        m
    }

    /// The served registry, for metrics owned elsewhere (the stream server's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds a collector (a metric made elsewhere) to the served registry.
    pub fn register<C: prometheus::core::Collector + 'static>(&self, collector: C) {
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::error!(error = %e, "metric not registered");
        }
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
