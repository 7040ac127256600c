//! The debounced translate loop: waits for every initial list, then turns
//! batches of changes into publications on the [`Hub`] — a full translation,
//! or only the touched Services' backends when nothing but EndpointSlices
//! changed — and hands the statuses to the writer.
//!
//! The debounce is leading + trailing: the first change after a quiet period
//! (no publication within the window) is published at once; what follows
//! within the window is batched into one publication at its end. An isolated
//! edit reaches the data planes without waiting, and steady churn still
//! publishes at most once per window.

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
        // When the batch of the last publication was taken: the start of the
        // current window (a batch that published nothing opens none).
        let mut last_publish: Option<Instant> = None;
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
            // Leading edge after a quiet period; otherwise batch what arrives
            // until the window ends (bounded latency under steady churn).
            let wait = debounce_delay(last_publish, Instant::now(), self.debounce);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let taken = Instant::now();
            let dirty = self.shared.take_dirty();
            let published = match base.as_mut() {
                Some(base) if !dirty.full => {
                    let published =
                        !dirty.services.is_empty() && self.endpoints_only(base, &dirty.services);
                    if dirty.status {
                        self.recheck.notify_one();
                    }
                    published
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
                        if changed {
                            log_published(&hub, "full");
                        }
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
                    changed
                }
            };
            if published {
                last_publish = Some(taken);
                self.record_versions();
            }
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
    ) -> bool {
        let mut warnings = Vec::new();
        let mut changed = false;
        let mut keys = Vec::new();
        for (service, slices) in self.stores.services_with_slices(services) {
            let slices: Vec<_> = slices.iter().map(AsRef::as_ref).collect();
            changed |= apply_endpoint_update(base, &service, &slices, &mut warnings);
            // The backend sets of this Service: `namespace/name:port`.
            let prefix = format!(
                "{}/{}:",
                service.metadata.namespace.as_deref().unwrap_or_default(),
                service.metadata.name.as_deref().unwrap_or_default()
            );
            keys.extend(
                base.backends
                    .data
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone()),
            );
        }
        if changed {
            self.hub.publish_backends(base.clone(), &keys);
            log_published(&self.hub, "endpoints");
            self.shared
                .metrics
                .publishes
                .with_label_values(&["endpoints"])
                .inc();
            tracing::debug!(services = services.len(), "endpoints published");
        }
        changed
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

/// When a publication reached the hub (what a propagation measurement
/// splits the controller's part at).
fn log_published(hub: &Hub, how: &'static str) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    if let Some(p) = hub.latest() {
        let s = &p.snapshot;
        tracing::debug!(
            how,
            routes_version = s.routes.version,
            backends_version = s.backends.version,
            services_version = s.services.version,
            "published"
        );
    }
}

/// How long to wait before taking the next batch: nothing when nothing was
/// published within the last `debounce` (leading edge), else the rest of the
/// window (trailing edge, batching what arrives meanwhile).
fn debounce_delay(last_publish: Option<Instant>, now: Instant, debounce: Duration) -> Duration {
    match last_publish {
        Some(last) => debounce.saturating_sub(now.saturating_duration_since(last)),
        None => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::debounce_delay;
    use std::time::{Duration, Instant};

    const WINDOW: Duration = Duration::from_millis(30);

    #[test]
    fn the_first_change_is_published_at_once() {
        assert_eq!(debounce_delay(None, Instant::now(), WINDOW), Duration::ZERO);
    }

    #[test]
    fn a_change_after_a_quiet_period_is_published_at_once() {
        let last = Instant::now();
        for quiet in [WINDOW, WINDOW * 2, Duration::from_secs(60)] {
            assert_eq!(
                debounce_delay(Some(last), last + quiet, WINDOW),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn changes_within_the_window_wait_for_its_end() {
        let last = Instant::now();
        assert_eq!(debounce_delay(Some(last), last, WINDOW), WINDOW);
        assert_eq!(
            debounce_delay(Some(last), last + Duration::from_millis(10), WINDOW),
            Duration::from_millis(20)
        );
    }

    #[test]
    fn no_debounce_never_waits() {
        let last = Instant::now();
        assert_eq!(
            debounce_delay(Some(last), last, Duration::ZERO),
            Duration::ZERO
        );
    }
}
