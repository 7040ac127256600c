//! `pier-controller run`: the Kubernetes source.
//!
//! ```text
//! watches (one client) ─▶ stores ─▶ debounced translate ─▶ Hub ─▶ stream server
//!                                          │
//!                                          └─▶ desired status ─▶ writer (leader only) ─▶ API
//! ```
//!
//! Every replica watches, translates and publishes, so a leader change never
//! disconnects a data plane; the Lease only decides who writes status.

mod admin;
mod client;
mod index;
mod kinds;
mod lease;
mod publish;
mod status;
mod watch;
mod writer;

use crate::args::ClusterArgs;
use crate::hub::Hub;
use crate::metrics::Metrics;
use anyhow::{Context, Result};
use gateway_api::experimental as gw;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::Client;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use watch::{Shared, Watched};

/// Starts the reflector of one kind (all namespaces) and returns its store.
fn start<K: Watched>(
    client: &Client,
    shared: &Arc<Shared>,
    config: watcher::Config,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Store<K> {
    let (reader, writer) = watch::store::<K>(shared);
    tasks.push(tokio::spawn(watch::run(
        client.clone(),
        config,
        writer,
        shared.clone(),
    )));
    reader
}

pub fn run(args: ClusterArgs) -> Result<()> {
    args.check().map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run_async(args))
}

async fn run_async(args: ClusterArgs) -> Result<()> {
    let client = client::client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::new(
        metrics.clone(),
        Duration::from_secs(args.crd_poll_seconds),
    ));
    let hub = Arc::new(Hub::default());
    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));

    // Probes answer from the start (not ready until the first publication).
    let admin = admin::Admin {
        metrics: metrics.clone(),
        shared: shared.clone(),
        ready: ready.clone(),
        hub: hub.clone(),
        debug_snapshot: args.debug_snapshot,
    }
    .bind(args.admin, shutdown.clone())
    .await?;

    let mut watches = Vec::new();
    let all = watcher::Config::default;
    let stores = index::Stores {
        namespaces: start::<Namespace>(&client, &shared, all(), &mut watches),
        nodes: start::<Node>(&client, &shared, all(), &mut watches),
        pods: start::<Pod>(&client, &shared, all(), &mut watches),
        services: start::<Service>(&client, &shared, all(), &mut watches),
        endpoint_slices: start::<EndpointSlice>(&client, &shared, all(), &mut watches),
        // Only TLS Secrets ever reach this process.
        secrets: start::<Secret>(
            &client,
            &shared,
            all().fields(&format!("type={}", kinds::TLS_SECRET_TYPE)),
            &mut watches,
        ),
        network_policies: start::<NetworkPolicy>(&client, &shared, all(), &mut watches),
        ingress_classes: start::<IngressClass>(&client, &shared, all(), &mut watches),
        ingresses: start::<Ingress>(&client, &shared, all(), &mut watches),
        gateway_classes: start::<gw::gatewayclasses::GatewayClass>(
            &client,
            &shared,
            all(),
            &mut watches,
        ),
        gateways: start::<gw::gateways::Gateway>(&client, &shared, all(), &mut watches),
        http_routes: start::<gw::httproutes::HttpRoute>(&client, &shared, all(), &mut watches),
        grpc_routes: start::<gw::grpcroutes::GrpcRoute>(&client, &shared, all(), &mut watches),
        tls_routes: start::<gw::tlsroutes::TlsRoute>(&client, &shared, all(), &mut watches),
        tcp_routes: start::<gw::tcproutes::TcpRoute>(&client, &shared, all(), &mut watches),
        udp_routes: start::<gw::udproutes::UdpRoute>(&client, &shared, all(), &mut watches),
        reference_grants: start::<gw::referencegrants::ReferenceGrant>(
            &client,
            &shared,
            all(),
            &mut watches,
        ),
    };

    let identity = client::identity(args.leader_election_identity.as_deref());
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let lease = tokio::spawn(lease::run(
        client.clone(),
        lease::LeaseConfig {
            namespace: client::lease_namespace(args.leader_election_namespace.as_deref()),
            name: args.leader_election_id.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
        },
        leader_tx,
        metrics.clone(),
        shutdown.clone(),
    ));

    let (desired_tx, desired_rx) = tokio::sync::watch::channel(None);
    let recheck = Arc::new(Notify::new());
    let writer = tokio::spawn(
        writer::StatusWriter {
            client: client.clone(),
            stores: stores.clone(),
            metrics: metrics.clone(),
            options: args.options(),
            publish_service: args.publish_service.clone(),
            identity: identity.clone(),
            queue: usize::try_from(args.status_queue).unwrap_or(1024),
            workers: usize::try_from(args.status_workers).unwrap_or(4),
        }
        .run(desired_rx, recheck.clone(), leader_rx, shutdown.clone()),
    );

    let publisher = tokio::spawn(
        publish::Publisher {
            stores,
            shared,
            hub: hub.clone(),
            options: args.options(),
            debounce: Duration::from_millis(args.debounce_ms),
            desired: desired_tx,
            recheck,
            ready,
        }
        .run(),
    );
    tracing::info!(%identity, "watching the cluster");

    // Every replica serves the stream: a leader change disconnects nobody.
    let stream = Arc::new(crate::serve::StreamServer::new(
        hub.clone(),
        Arc::new(crate::views::Views::new(args.options())),
        args.stream.options(),
        crate::serve::StreamMetrics::new(metrics.registry())?,
    )?);
    let stream_listener = stream.bind().await?;
    let stream_task = tokio::spawn(stream.run(stream_listener));

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    // Release the Lease so another replica takes over at once.
    if tokio::time::timeout(Duration::from_secs(5), lease)
        .await
        .is_err()
    {
        tracing::warn!("the Lease was not released in time");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    publisher.abort();
    stream_task.abort();
    for w in watches {
        w.abort();
    }
    let _ = admin.await;
    drop(hub);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGTERM; only Ctrl-C stops");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
