//! The debounced translate loop: waits for every initial list, then turns
//! batches of changes into publications on the [`Hub`] — a full translation,
//! or only the touched Services' backends when nothing but EndpointSlices
//! changed — and hands the statuses to the writer.

use super::index::Stores;
use super::watch::Shared;
use super::writer::Desired;
use crate::hub::Hub;
use pier_snapshot::Snapshot;
use pier_translate::{apply_endpoint_update, translate, TranslateOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

pub struct Publisher {
    pub stores: Stores,
    pub shared: Arc<Shared>,
    pub hub: Arc<Hub>,
    pub options: TranslateOptions,
    pub debounce: Duration,
    pub desired: watch::Sender<Option<Arc<Desired>>>,
    pub recheck: Arc<Notify>,
    pub ready: Arc<AtomicBool>,
}

impl Publisher {
    pub async fn run(self) {
        let metrics = self.shared.metrics.clone();
        // The last full translation with the endpoint updates since applied:
        // the base of the fast path.
        let mut base: Option<Snapshot> = None;
        let mut waiting_logged = false;
        loop {
            self.shared.changed.notified().await;
            let pending = self.shared.pending();
            if !pending.is_empty() {
                if !waiting_logged {
                    tracing::info!(?pending, "waiting for the initial lists");
                    waiting_logged = true;
                }
                continue;
            }
            // Batch what arrives meanwhile; bounded latency under steady churn.
            tokio::time::sleep(self.debounce).await;
            let dirty = self.shared.take_dirty();
            match base.as_mut() {
                Some(base) if !dirty.full => {
                    if !dirty.services.is_empty() {
                        self.endpoints_only(base, &dirty.services);
                    }
                    if dirty.status {
                        self.recheck.notify_one();
                    }
                }
                _ => {
                    let stores = self.stores.clone();
                    let hub = self.hub.clone();
                    let options = self.options.clone();
                    let translate_seconds = metrics.translate_seconds.clone();
                    let snapshot_bytes = metrics.snapshot_bytes.clone();
                    // Translation is CPU work: keep it off the async workers.
                    let full = tokio::task::spawn_blocking(move || {
                        let started = Instant::now();
                        let state = Arc::new(stores.cluster_state());
                        let out = translate(&state, &options);
                        let elapsed = started.elapsed();
                        translate_seconds.observe(elapsed.as_secs_f64());
                        let snapshot = out.snapshot.clone();
                        let changed = hub.publish(out.snapshot, Some(state.clone()));
                        snapshot_bytes.set(pier_snapshot::encode_value(&snapshot).len() as i64);
                        (
                            state,
                            out.statuses,
                            out.warnings,
                            snapshot,
                            changed,
                            elapsed,
                        )
                    })
                    .await;
                    let Ok((state, statuses, warnings, snapshot, changed, elapsed)) = full else {
                        tracing::error!("translation panicked; keeping the last snapshot");
                        continue;
                    };
                    metrics.publishes.with_label_values(&["full"]).inc();
                    tracing::info!(
                        translate_ms = elapsed.as_secs_f64() * 1e3,
                        changed,
                        statuses = statuses.len(),
                        warnings = warnings.len(),
                        "translated"
                    );
                    base = Some(snapshot);
                    self.desired.send_replace(Some(Arc::new(Desired {
                        statuses,
                        warnings,
                        state,
                    })));
                }
            }
            self.record_versions();
            if !self.ready.swap(true, Ordering::SeqCst) {
                metrics.ready.set(1);
                tracing::info!("initial lists in and first snapshot published: ready");
            }
        }
    }

    fn endpoints_only(
        &self,
        base: &mut Snapshot,
        services: &std::collections::BTreeSet<(String, String)>,
    ) {
        let mut warnings = Vec::new();
        let mut changed = false;
        for (service, slices) in self.stores.services_with_slices(services) {
            let slices: Vec<_> = slices.iter().map(AsRef::as_ref).collect();
            changed |= apply_endpoint_update(base, &service, &slices, &mut warnings);
        }
        if changed {
            self.hub.publish(base.clone(), None);
            self.shared
                .metrics
                .publishes
                .with_label_values(&["endpoints"])
                .inc();
            tracing::debug!(services = services.len(), "endpoints published");
        }
    }

    fn record_versions(&self) {
        let Some(p) = self.hub.latest() else { return };
        let s = &p.snapshot;
        let versions = self.shared.metrics.snapshot_version.clone();
        versions
            .with_label_values(&["routes"])
            .set(s.routes.version as i64);
        versions
            .with_label_values(&["backends"])
            .set(s.backends.version as i64);
        versions
            .with_label_values(&["services"])
            .set(s.services.version as i64);
        versions
            .with_label_values(&["policies"])
            .set(s.policies.version as i64);
        versions
            .with_label_values(&["certificates"])
            .set(s.certificates.version as i64);
    }
}
