//! pier-proxy: wiring only.

use anyhow::{bail, Context, Result};
use clap::Parser;
use pier_proxy::admin::Admin;
use pier_proxy::args::{Args, Command};
use pier_proxy::echo::Echo;
use pier_proxy::l4::{L4Forwarder, TlsFront};
use pier_proxy::listeners::DynamicListeners;
use pier_proxy::routing::Shared;
use pier_proxy::service::PierProxy;
use pier_proxy::udp::UdpForwarder;
use pier_snapshot::{DeltaKeys, PortProtocol, Snapshot};
use pier_translate::TranslateOptions;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::sync::{Arc, Mutex};

// Proxying allocates many small, short-lived buffers: mimalloc handles that
// pattern far better than glibc malloc (measured in bench/).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn server_conf(args: &Args) -> ServerConf {
    ServerConf {
        threads: usize::from(args.threads),
        // On SIGTERM listeners stop accepting at once; requests in flight get
        // the grace period to finish, then the runtimes stop.
        grace_period_seconds: Some(args.grace_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 1024,
        // One current-thread runtime per worker: no work-stealing overhead per request.
        work_stealing: false,
        ..Default::default()
    }
}

fn echo_service(listen: &str, name: &str) -> Service<HttpServer<Echo>> {
    let mut app = HttpServer::new_app(Echo { name: name.into() });
    // h2c too, so gRPC-style (HTTP/2-only) upstreams can be tested against it.
    let mut opts = HttpServerOptions::default();
    opts.h2c = true;
    app.server_options = Some(opts);
    let mut service = Service::new(format!("echo {name}"), app);
    service.add_tcp(listen);
    service
}

/// Standalone source: translate the folder in-process and follow its
/// changes; each change swaps in only what moved (endpoint churn never
/// rebuilds the route table).
fn serve_manifests(
    args: &Args,
    dir: &std::path::Path,
    shared: &Arc<Shared>,
) -> Result<(Snapshot, notify::RecommendedWatcher)> {
    let options = TranslateOptions {
        ingress_http_port: args.ingress_http_port,
        ingress_https_port: args.ingress_https_port,
        ..Default::default()
    };
    let first = Arc::new(Mutex::new(None));
    let (installed, shared) = (first.clone(), shared.clone());
    let watcher = pier_manifests::follow_dir(
        dir,
        options,
        std::time::Duration::from_millis(args.reload_settle_ms),
        move |u| {
            if u.first {
                let result = shared
                    .install(u.snapshot.clone())
                    .map(|_| u.snapshot.clone());
                *installed.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
            } else {
                let _ = shared.apply(u.snapshot, Some(&DeltaKeys::from(u.diff)));
            }
        },
    )
    .map_err(anyhow::Error::new)?;
    let first = first
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .expect("follow_dir calls back once before returning");
    let snapshot =
        first.map_err(|e| anyhow::anyhow!("the manifests do not make a valid snapshot: {e}"))?;
    Ok((snapshot, watcher))
}

fn run(args: Args) -> Result<()> {
    if let Some(Command::Echo { listen, name }) = &args.command {
        let mut server = Server::new_with_opt_and_conf(None, server_conf(&args));
        server.bootstrap();
        server.add_service(echo_service(&listen.to_string(), name));
        server.run_forever();
    }
    let shared = Arc::new(Shared {
        l4_idle_timeout: std::time::Duration::from_secs(args.l4_idle_timeout),
        ..Shared::default()
    });
    let stream_config = args
        .stream
        .follower_config(args.subscriber())
        .context("snapshot stream")?;
    let (snapshot, watcher, stream) = match (&args.manifests, stream_config) {
        (Some(dir), None) => {
            let (snapshot, watcher) = serve_manifests(&args, dir, &shared)?;
            (snapshot, Some(watcher), None)
        }
        (None, Some(config)) => {
            let status = pier_proxy::stream::follow(config, shared.clone())
                .context("starting the stream thread")?;
            // Listener ports come from the first snapshot (the state dir's,
            // or the controller's): wait for one.
            while !status.wait_installed(std::time::Duration::from_secs(10)) {
                tracing::warn!(detail = %status.describe(), "waiting for a first snapshot");
            }
            let first = shared
                .routing
                .load()
                .as_ref()
                .map(|r| r.listeners_snapshot())
                .unwrap_or_else(Snapshot::empty);
            (first, None, Some(status))
        }
        _ => bail!("give exactly one snapshot source: --manifests DIR or --controller HOST:PORT"),
    };

    let mut server = Server::new_with_opt_and_conf(None, server_conf(&args));
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        PierProxy {
            shared: shared.clone(),
            max_body_bytes: args.max_body_bytes,
            max_header_bytes: args.max_header_bytes,
        },
        "pier-proxy",
    );
    if let Some(app) = proxy.app_logic_mut() {
        let mut opts = HttpServerOptions::default();
        opts.h2c = true;
        app.server_options = Some(opts);
    }
    // TLS ports are fronted by `TlsFront`, which hands terminated HTTPS
    // connections to this second instance of the same proxy logic.
    let http_app = Arc::new(pingora::proxy::http_proxy(
        &server.configuration,
        PierProxy {
            shared: shared.clone(),
            max_body_bytes: args.max_body_bytes,
            max_header_bytes: args.max_header_bytes,
        },
    ));
    // Ports of the first snapshot are bound here; ports later snapshots add are
    // bound by DynamicListeners, and routes on every port hot-swap.
    let mut l4_services = Vec::new();
    let mut tls_services = Vec::new();
    let mut udp_services = Vec::new();
    for listener in &snapshot.routes.data.listeners {
        let addr = std::net::SocketAddr::new(args.listen_host, listener.port).to_string();
        match listener.protocol {
            PortProtocol::Tcp => {
                let mut service = Service::new(
                    format!("pier-proxy tcp :{}", listener.port),
                    L4Forwarder {
                        port: listener.port,
                        shared: shared.clone(),
                    },
                );
                service.add_tcp(&addr);
                l4_services.push(service);
            }
            PortProtocol::Http => proxy.add_tcp(&addr),
            PortProtocol::Tls => {
                let front = TlsFront::new(listener.port, shared.clone(), http_app.clone())
                    .map_err(|e| anyhow::anyhow!("TLS on port {}: {e}", listener.port))?;
                let mut service = Service::new(format!("pier-proxy tls :{}", listener.port), front);
                service.add_tcp(&addr);
                tls_services.push(service);
            }
            PortProtocol::Udp => {
                udp_services.push(pingora::services::background::background_service(
                    &format!("pier-proxy udp :{}", listener.port),
                    UdpForwarder {
                        listen: std::net::SocketAddr::new(args.listen_host, listener.port),
                        shared: shared.clone(),
                    },
                ));
                continue;
            }
        }
        tracing::info!(%addr, protocol = ?listener.protocol, "listening");
    }
    // Ports later snapshots add are bound by this service, as they come.
    server.add_service(pingora::services::background::background_service(
        "pier-proxy dynamic listeners",
        DynamicListeners {
            shared: shared.clone(),
            http: http_app.clone(),
            listen_host: args.listen_host,
            startup: snapshot
                .routes
                .data
                .listeners
                .iter()
                .map(|l| (l.port, l.protocol))
                .collect(),
        },
    ));
    for service in l4_services {
        server.add_service(service);
    }
    for service in tls_services {
        server.add_service(service);
    }
    for service in udp_services {
        server.add_service(service);
    }
    server.add_service(proxy);
    let mut admin = Service::new(
        "pier-proxy admin".into(),
        HttpServer::new_app(Admin {
            shared: shared.clone(),
            stream,
        }),
    );
    admin.add_tcp(&args.admin.to_string());
    server.add_service(admin);
    if args.demo_upstreams {
        server.add_service(echo_service("127.0.0.1:9001", "demo-web"));
        server.add_service(echo_service("127.0.0.1:9002", "demo-api"));
    }
    let _keep_watching = watcher;
    server.run_forever();
}
