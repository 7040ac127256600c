//! The status writer. Every replica computes what status should say; only
//! the leader writes it: server-side apply on the status subresource (field
//! manager `pier`) through a bounded queue, skipping objects whose status
//! already says it, retrying failures with back-off. Problems a user must fix
//! also become Warning Events, once per problem while it lasts.

use super::index::Stores;
use super::status::{self, warning_problem, Ours, Wanted};
use crate::metrics::Metrics;
use futures::StreamExt;
use gateway_api::experimental as gw;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::{Client, Resource};
use pier_translate::{ClusterState, ObjectRef, StatusUpdate, TranslateOptions, Warning};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

/// The field manager of every status pier applies.
pub const FIELD_MANAGER: &str = "pier";
const MAX_ATTEMPTS: u32 = 6;
const RESYNC: Duration = Duration::from_secs(60);

/// What one full translation says status should be.
pub struct Desired {
    pub statuses: Vec<StatusUpdate>,
    pub warnings: Vec<Warning>,
    pub state: Arc<ClusterState>,
}

enum Item {
    Status(Wanted),
    Event(ObjectRef, String, String),
}

/// An object as the watch cache has it.
struct Cached {
    status: Value,
    resource_version: Option<String>,
    uid: Option<String>,
}

fn cached_of<K>(store: &Store<K>, target: &ObjectRef) -> Option<Cached>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + 'static,
{
    let mut key = reflector::ObjectRef::new(&target.name);
    if let Some(ns) = &target.namespace {
        key = key.within(ns);
    }
    let obj = store.get(&key)?;
    let status = serde_json::to_value(&*obj)
        .ok()
        .and_then(|mut v| v.get_mut("status").map(Value::take))
        .unwrap_or(Value::Null);
    Some(Cached {
        status,
        resource_version: obj.meta().resource_version.clone(),
        uid: obj.meta().uid.clone(),
    })
}

fn cached(stores: &Stores, target: &ObjectRef) -> Option<Cached> {
    match target.kind.as_str() {
        "GatewayClass" => cached_of(&stores.gateway_classes, target),
        "Gateway" => cached_of(&stores.gateways, target),
        "HTTPRoute" => cached_of(&stores.http_routes, target),
        "GRPCRoute" => cached_of(&stores.grpc_routes, target),
        "TLSRoute" => cached_of(&stores.tls_routes, target),
        "TCPRoute" => cached_of(&stores.tcp_routes, target),
        "UDPRoute" => cached_of(&stores.udp_routes, target),
        "Ingress" => cached_of(&stores.ingresses, target),
        "Service" => cached_of(&stores.services, target),
        _ => None,
    }
}

/// Routes whose status still has pier parent entries though no parentRef
/// names a pier Gateway any more: pier's entries are removed (others kept).
fn detached_routes(stores: &Stores, wanted: &[Wanted]) -> Vec<Wanted> {
    let targets: HashSet<&ObjectRef> = wanted.iter().map(|w| &w.target).collect();
    let mut out = Vec::new();
    let mut scan = |kind: &str, objects: Vec<(Option<String>, Option<String>, Value)>| {
        for (ns, name, status) in objects {
            let target = ObjectRef::new(kind, ns.as_deref(), name.as_deref().unwrap_or_default());
            let has_ours = status["parents"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["controllerName"] == pier_translate::GATEWAY_CONTROLLER_NAME)
            });
            if has_ours && !targets.contains(&target) {
                out.push(Wanted {
                    target,
                    ours: Ours::Route {
                        parents: Vec::new(),
                    },
                });
            }
        }
    };
    scan("HTTPRoute", statuses_of(&stores.http_routes));
    scan("GRPCRoute", statuses_of(&stores.grpc_routes));
    scan("TLSRoute", statuses_of(&stores.tls_routes));
    scan("TCPRoute", statuses_of(&stores.tcp_routes));
    scan("UDPRoute", statuses_of(&stores.udp_routes));
    out
}

/// (namespace, name, status) of every cached object of a kind.
fn statuses_of<K>(store: &Store<K>) -> Vec<(Option<String>, Option<String>, Value)>
where
    K: Resource<DynamicType = ()> + Serialize + Clone + 'static,
{
    store
        .state()
        .iter()
        .map(|o| {
            let status = serde_json::to_value(&**o)
                .ok()
                .and_then(|mut v| v.get_mut("status").map(Value::take))
                .unwrap_or(Value::Null);
            (o.meta().namespace.clone(), o.meta().name.clone(), status)
        })
        .collect()
}

fn api_resource(kind: &str) -> Option<ApiResource> {
    Some(match kind {
        "GatewayClass" => ApiResource::erase::<gw::gatewayclasses::GatewayClass>(&()),
        "Gateway" => ApiResource::erase::<gw::gateways::Gateway>(&()),
        "HTTPRoute" => ApiResource::erase::<gw::httproutes::HttpRoute>(&()),
        "GRPCRoute" => ApiResource::erase::<gw::grpcroutes::GrpcRoute>(&()),
        "TLSRoute" => ApiResource::erase::<gw::tlsroutes::TlsRoute>(&()),
        "TCPRoute" => ApiResource::erase::<gw::tcproutes::TcpRoute>(&()),
        "UDPRoute" => ApiResource::erase::<gw::udproutes::UdpRoute>(&()),
        "Ingress" => ApiResource::erase::<Ingress>(&()),
        "Service" => ApiResource::erase::<Service>(&()),
        _ => return None,
    })
}

/// What was queued per object, and the resourceVersion it was based on: the
/// same status is not queued again until the cache has moved past that version.
type InFlight = Arc<Mutex<HashMap<ObjectRef, (Ours, Option<String>)>>>;

pub struct StatusWriter {
    pub client: Client,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub options: TranslateOptions,
    pub publish_service: Option<(String, String)>,
    pub identity: String,
    pub queue: usize,
    pub workers: usize,
}

struct Worker {
    client: Client,
    stores: Stores,
    metrics: Arc<Metrics>,
    leader: watch::Receiver<bool>,
    in_flight: InFlight,
    recorder: Recorder,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StatusWriter {
    /// Runs until `shutdown`: re-evaluates on every translation, every
    /// status-only change (`recheck`), leadership change and once a minute.
    pub async fn run(
        self,
        mut desired: watch::Receiver<Option<Arc<Desired>>>,
        recheck: Arc<Notify>,
        mut leader: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let (tx, rx) = mpsc::channel(self.queue);
        let in_flight: InFlight = Arc::default();
        let worker = Arc::new(Worker {
            client: self.client.clone(),
            stores: self.stores.clone(),
            metrics: self.metrics.clone(),
            leader: leader.clone(),
            in_flight: in_flight.clone(),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "pier-controller".into(),
                    instance: Some(self.identity.clone()),
                },
            ),
        });
        let workers = tokio::spawn(work(rx, worker, self.workers));
        let mut emitted: HashSet<(ObjectRef, String, String)> = HashSet::new();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = desired.changed() => if r.is_err() { break },
                () = recheck.notified() => {}
                r = leader.changed() => if r.is_err() { break },
                _ = resync.tick() => {}
            }
            if !*leader.borrow_and_update() {
                lock(&in_flight).clear();
                emitted.clear();
                continue;
            }
            let Some(d) = desired.borrow_and_update().clone() else {
                continue;
            };
            let mut wanted = status::wanted(
                &d.statuses,
                &d.state,
                &self.options,
                self.publish_service.as_ref(),
            );
            wanted.extend(detached_routes(&self.stores, &wanted));
            let mut problems: BTreeSet<(ObjectRef, String, String)> =
                d.warnings.iter().map(warning_problem).collect();
            let mut queued = 0usize;
            for w in wanted {
                for (reason, message) in w.ours.problems() {
                    problems.insert((w.target.clone(), reason, message));
                }
                let Some(current) = cached(&self.stores, &w.target) else {
                    continue;
                };
                if w.ours.is_current(&current.status) {
                    lock(&in_flight).remove(&w.target);
                    continue;
                }
                {
                    let mut f = lock(&in_flight);
                    let pending = (w.ours.clone(), current.resource_version.clone());
                    if f.get(&w.target) == Some(&pending) {
                        continue;
                    }
                    f.insert(w.target.clone(), pending);
                }
                self.metrics.status_queue.inc();
                queued += 1;
                if tx.send(Item::Status(w)).await.is_err() {
                    break;
                }
            }
            emitted.retain(|p| problems.contains(p));
            for p in problems {
                if emitted.insert(p.clone()) {
                    self.metrics.status_queue.inc();
                    let (target, reason, message) = p;
                    if tx.send(Item::Event(target, reason, message)).await.is_err() {
                        break;
                    }
                }
            }
            if queued > 0 {
                tracing::debug!(queued, "status writes queued");
            }
        }
        workers.abort();
    }
}

async fn work(rx: mpsc::Receiver<Item>, worker: Arc<Worker>, concurrency: usize) {
    let items = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    items
        .for_each_concurrent(concurrency, |item| {
            let worker = worker.clone();
            async move {
                worker.metrics.status_queue.dec();
                match item {
                    Item::Status(w) => worker.write(w).await,
                    Item::Event(target, reason, message) => {
                        worker.emit(target, reason, message).await;
                    }
                }
            }
        })
        .await;
}

impl Worker {
    fn leads(&self) -> bool {
        *self.leader.borrow()
    }

    fn api(&self, target: &ObjectRef) -> Option<(Api<DynamicObject>, ApiResource)> {
        let ar = api_resource(&target.kind)?;
        let api = match &target.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        Some((api, ar))
    }

    async fn write(&self, w: Wanted) {
        if self.write_with_retries(&w).await.is_err() {
            // Not queued any more: the next evaluation may queue it again.
            lock(&self.in_flight).remove(&w.target);
        }
    }

    async fn write_with_retries(&self, w: &Wanted) -> Result<(), ()> {
        let Some((api, ar)) = self.api(&w.target) else {
            return Err(());
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut backoff = Duration::from_millis(200);
        // After a conflict the cache may lag: read the object itself.
        let mut fresh: Option<Cached> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            if !self.leads() {
                return Err(());
            }
            let Some(current) = fresh.take().or_else(|| cached(&self.stores, &w.target)) else {
                return Err(()); // deleted meanwhile
            };
            if w.ours.is_current(&current.status) {
                return Ok(());
            }
            let mut metadata = json!({ "name": w.target.name });
            if let Some(ns) = &w.target.namespace {
                metadata["namespace"] = json!(ns);
            }
            if w.ours.needs_precondition() {
                metadata["resourceVersion"] = json!(current.resource_version);
            }
            let body = json!({
                "apiVersion": ar.api_version,
                "kind": ar.kind,
                "metadata": metadata,
                "status": w.ours.apply_status(&current.status, &Time(jiff::Timestamp::now())),
            });
            match api
                .patch_status(&w.target.name, &params, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    self.metrics.status_writes.with_label_values(&["ok"]).inc();
                    tracing::debug!(object = %w.target, "status written");
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => return Err(()),
                Err(kube::Error::Api(s)) if s.is_conflict() => {
                    self.metrics
                        .status_writes
                        .with_label_values(&["conflict"])
                        .inc();
                    fresh = api.get_status(&w.target.name).await.ok().map(|o| Cached {
                        status: o.data.get("status").cloned().unwrap_or(Value::Null),
                        resource_version: o.metadata.resource_version.clone(),
                        uid: o.metadata.uid.clone(),
                    });
                }
                Err(e) => {
                    self.metrics
                        .status_writes
                        .with_label_values(&["failed"])
                        .inc();
                    tracing::warn!(object = %w.target, attempt, error = %e, "status write failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        tracing::warn!(object = %w.target, "status write given up; retried at the next resync");
        Err(())
    }

    async fn emit(&self, target: ObjectRef, reason: String, message: String) {
        if !self.leads() {
            return;
        }
        let ar = api_resource(&target.kind);
        let reference = ObjectReference {
            api_version: ar.as_ref().map(|a| a.api_version.clone()),
            kind: Some(target.kind.clone()),
            name: Some(target.name.clone()),
            namespace: target.namespace.clone(),
            uid: cached(&self.stores, &target).and_then(|c| c.uid),
            ..Default::default()
        };
        let mut note = message;
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let event = Event {
            type_: EventType::Warning,
            reason,
            note: Some(note),
            action: "Translate".into(),
            secondary: None,
        };
        match self.recorder.publish(&event, &reference).await {
            Ok(()) => {
                self.metrics.events.with_label_values(&["ok"]).inc();
                tracing::info!(object = %target, reason = %event.reason, "warning event");
            }
            Err(e) => {
                self.metrics.events.with_label_values(&["failed"]).inc();
                tracing::warn!(object = %target, error = %e, "cannot emit event");
            }
        }
    }
}
