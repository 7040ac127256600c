//! Prometheus metrics, served on the admin port.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub in_flight: IntGauge,
    pub swaps: IntCounter,
    pub rejected: IntCounter,
    pub routes_version: IntGauge,
    pub backends_version: IntGauge,
    pub pending_listeners: IntGauge,
    pub route_table_builds: IntCounter,
    pub certificates_parsed: IntCounter,
    pub apply_duration: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "pier_proxy_requests_total",
                "Requests by route and status code",
            ),
            &["route", "code"],
        )
        .expect("metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "pier_proxy_request_duration_seconds",
                "Request latency, downstream first byte to response end",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "pier_proxy_upstream_errors_total",
                "Upstream failures by kind",
            ),
            &["kind"],
        )
        .expect("metric");
        let in_flight = IntGauge::new("pier_proxy_requests_in_flight", "Requests being served")
            .expect("metric");
        let swaps = IntCounter::new("pier_proxy_snapshot_swaps_total", "Snapshots installed")
            .expect("metric");
        let rejected = IntCounter::new(
            "pier_proxy_snapshot_rejected_total",
            "Snapshots rejected (the previous one kept serving)",
        )
        .expect("metric");
        let routes_version = IntGauge::new(
            "pier_proxy_snapshot_routes_version",
            "Version of the routes part in use",
        )
        .expect("metric");
        let pending_listeners = IntGauge::new(
            "pier_proxy_listeners_pending_restart",
            "Listener ports in the snapshot that this process does not serve until restarted",
        )
        .expect("metric");
        let backends_version = IntGauge::new(
            "pier_proxy_snapshot_backends_version",
            "Version of the backends part in use",
        )
        .expect("metric");
        let route_table_builds = IntCounter::new(
            "pier_proxy_route_table_builds_total",
            "Route tables built (a full snapshot or a routes change; endpoint churn builds none)",
        )
        .expect("metric");
        let certificates_parsed = IntCounter::new(
            "pier_proxy_certificates_parsed_total",
            "Certificates parsed from PEM (a delta parses only the certificates it changed)",
        )
        .expect("metric");
        let apply_duration = HistogramVec::new(
            HistogramOpts::new(
                "pier_proxy_snapshot_apply_seconds",
                "Time to build and swap in a snapshot, full or from a delta",
            )
            .buckets(vec![0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0, 10.0]),
            &["kind"],
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(in_flight.clone()),
            Box::new(swaps.clone()),
            Box::new(rejected.clone()),
            Box::new(routes_version.clone()),
            Box::new(backends_version.clone()),
            Box::new(pending_listeners.clone()),
            Box::new(route_table_builds.clone()),
            Box::new(certificates_parsed.clone()),
            Box::new(apply_duration.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            in_flight,
            swaps,
            rejected,
            routes_version,
            backends_version,
            pending_listeners,
            route_table_builds,
            certificates_parsed,
            apply_duration,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
