//! One reflector per kind on the shared client: the watch feeds a store
//! (the index the translator reads) and marks what changed. Watches do no
//! translation and indexes no I/O.

use crate::metrics::Metrics;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// What changed since the last translation.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Something the routes, listeners or L4 services depend on: translate everything.
    pub full: bool,
    /// Only the status of objects pier may write: re-check status, no translation.
    pub status: bool,
    /// Services whose EndpointSlices changed: the endpoint-only fast path.
    pub services: BTreeSet<(String, String)>,
}

/// Where a kind's initial list stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    Pending,
    Listed,
    /// Its CRD is not installed: counts as listed (and empty).
    Missing,
}

/// State shared by the watches and the translate loop.
pub struct Shared {
    dirty: Mutex<Dirty>,
    sync: Mutex<BTreeMap<&'static str, SyncState>>,
    /// Woken on every change.
    pub changed: Notify,
    pub metrics: Arc<Metrics>,
    pub crd_poll: Duration,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>, crd_poll: Duration) -> Self {
        Shared {
            dirty: Mutex::default(),
            sync: Mutex::default(),
            changed: Notify::new(),
            metrics,
            crd_poll,
        }
    }

    fn mark(&self, f: impl FnOnce(&mut Dirty)) {
        f(&mut self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_one();
    }

    pub fn take_dirty(&self) -> Dirty {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_sync(&self, kind: &'static str, state: SyncState) {
        self.sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind, state);
    }

    /// Kinds whose initial list is not in yet (empty once all are).
    pub fn pending(&self) -> Vec<&'static str> {
        self.sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, s)| **s == SyncState::Pending)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// A kind pier watches: how it is trimmed and what a change of it means.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    /// Gateway API kinds: the CRD may be missing (and installed later).
    const OPTIONAL: bool = false;

    /// Drops what nothing reads, so the caches stay small.
    fn trim(&mut self) {
        trim_meta(self.meta_mut());
    }

    /// Records what a change (`new`, or a deletion when `deleted`) means.
    fn mark(old: Option<&Self>, new: &Self, deleted: bool, dirty: &mut Dirty) {
        let _ = (old, new, deleted);
        dirty.full = true;
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub fn trim_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// For objects pier writes status on: a change of status alone (our own
/// writes, mostly) needs no translation, only a status re-check.
pub fn mark_spec_or_status<K: Resource>(
    old: Option<&K>,
    new: &K,
    deleted: bool,
    dirty: &mut Dirty,
) {
    let same_spec = !deleted
        && old.is_some_and(|old| {
            let (a, b) = (old.meta(), new.meta());
            a.generation == b.generation
                && a.labels == b.labels
                && a.annotations == b.annotations
                && a.deletion_timestamp == b.deletion_timestamp
        });
    if same_spec {
        dirty.status = true;
    } else {
        dirty.full = true;
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s,
        watcher::Error::WatchError(s) => s,
        _ => return false,
    };
    // A removed CRD answers a plain 404 that carries no reason.
    api.code == 404
}

/// Creates the store of a kind; the reader goes to the index, the writer to [`run`].
pub fn store<K: Watched>(shared: &Shared) -> (Store<K>, Writer<K>) {
    shared.set_sync(K::KIND, SyncState::Pending);
    kube::runtime::reflector::store()
}

/// Runs the reflector of one kind forever: errors re-list with kube's
/// default back-off; an optional kind whose CRD is missing is polled for.
pub async fn run<K: Watched>(
    client: kube::Client,
    config: watcher::Config,
    mut writer: Writer<K>,
    shared: Arc<Shared>,
) {
    let api = Api::<K>::all(client.clone());
    let reader = writer.as_reader();
    let kind = K::KIND;
    let metrics = shared.metrics.clone();
    loop {
        if K::OPTIONAL {
            wait_for_crd::<K>(&client, &shared).await;
        }
        let stream = watcher(api.clone(), config.clone()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let event = match item {
                Ok(event) => event.modify(K::trim),
                Err(e) => {
                    metrics.watch_restarts.with_label_values(&[kind]).inc();
                    if K::OPTIONAL && is_not_found(&e) {
                        tracing::warn!(kind, "CRD removed; dropping the cached objects");
                        writer.apply_watcher_event(&Event::Init);
                        writer.apply_watcher_event(&Event::InitDone);
                        metrics.objects.with_label_values(&[kind]).set(0);
                        shared.mark(|d| d.full = true);
                        break;
                    }
                    tracing::warn!(kind, error = %e, "watch failed; retrying with back-off");
                    continue;
                }
            };
            // The previous version, read before the store takes the event.
            let old = match &event {
                Event::Apply(obj) | Event::Delete(obj) => reader.get(&ObjectRef::from_obj(obj)),
                _ => None,
            };
            // The store first, then the mark: the translate loop, woken by
            // the mark, must find the change in the store.
            writer.apply_watcher_event(&event);
            match &event {
                Event::Apply(obj) | Event::Delete(obj) => {
                    let deleted = matches!(event, Event::Delete(_));
                    // When the change reached pier: the start of its propagation.
                    tracing::debug!(
                        kind,
                        namespace = obj.meta().namespace.as_deref().unwrap_or(""),
                        name = obj.meta().name.as_deref().unwrap_or(""),
                        resource_version = obj.meta().resource_version.as_deref().unwrap_or(""),
                        deleted,
                        "watch event"
                    );
                    shared.mark(|d| K::mark(old.as_deref(), obj, deleted, d));
                }
                Event::InitDone => {
                    tracing::info!(kind, objects = reader.len(), "listed");
                    shared.set_sync(kind, SyncState::Listed);
                    shared.mark(|d| d.full = true);
                }
                Event::Init | Event::InitApply(_) => {}
            }
            if !matches!(event, Event::Init | Event::InitApply(_)) {
                metrics
                    .objects
                    .with_label_values(&[kind])
                    .set(reader.len() as i64);
            }
        }
    }
}

/// Whether the API server serves the kind (its CRD is installed and
/// established), from discovery: a missing group answers a plain-text 404
/// that the client would log on every poll.
async fn served<K: Watched>(client: &kube::Client) -> Result<bool, kube::Error> {
    let group_version = K::api_version(&());
    let groups = client.list_api_groups().await?;
    let listed = groups
        .groups
        .iter()
        .any(|g| g.versions.iter().any(|v| v.group_version == group_version));
    if !listed {
        return Ok(false);
    }
    let resources = client.list_api_group_resources(&group_version).await?;
    let plural = K::plural(&());
    Ok(resources.resources.iter().any(|r| r.name == plural))
}

/// Returns once the kind is served; while it is not, it counts as listed
/// (empty) so the rest of the cluster is still served.
async fn wait_for_crd<K: Watched>(client: &kube::Client, shared: &Shared) {
    let kind = K::KIND;
    let mut reported = false;
    loop {
        match served::<K>(client).await {
            Ok(true) => break,
            Ok(false) => {
                if !reported {
                    tracing::warn!(
                        kind,
                        poll_seconds = shared.crd_poll.as_secs(),
                        "CRD not installed; watching it once it appears"
                    );
                    shared.metrics.crd_missing.with_label_values(&[kind]).set(1);
                    shared.set_sync(kind, SyncState::Missing);
                    // May have been the last list the translate loop waits for.
                    shared.mark(|d| d.full = true);
                    reported = true;
                }
            }
            Err(e) => tracing::warn!(kind, error = %e, "cannot check whether the CRD is installed"),
        }
        tokio::time::sleep(shared.crd_poll).await;
    }
    shared.metrics.crd_missing.with_label_values(&[kind]).set(0);
    if reported {
        // Stays `Missing` (not `Pending`) until its first list: readiness
        // does not flap for a kind that joins late.
        tracing::info!(kind, "CRD installed; starting its watch");
    }
}
