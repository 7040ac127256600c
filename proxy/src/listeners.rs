//! Listener ports that appear after start. The ports of the first snapshot
//! are pingora's own listeners; a port a later snapshot adds (a new Gateway
//! listener) is bound here, at once, and served by the same apps (HTTP proxy,
//! TLS front, TCP forwarder, UDP forwarder). A port that leaves the snapshot
//! stops accepting (connections in progress finish). A port whose protocol
//! changes on a startup listener needs a restart: that is reported.

use crate::l4::{L4Forwarder, TlsFront};
use crate::routing::Shared;
use crate::service::PierProxy;
use crate::udp::UdpForwarder;
use async_trait::async_trait;
use pier_snapshot::PortProtocol;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

pub struct DynamicListeners {
    pub shared: Arc<Shared>,
    pub http: Arc<HttpProxy<PierProxy>>,
    pub listen_host: IpAddr,
    /// Ports pingora bound at start, with their protocol.
    pub startup: Vec<(u16, PortProtocol)>,
}

/// A running dynamic listener: its protocol and its accept task.
type Running = HashMap<u16, (PortProtocol, tokio::task::JoinHandle<()>)>;

impl DynamicListeners {
    /// Binds what the current snapshot adds, stops what it removed; returns
    /// the listeners that cannot be served without a restart.
    async fn reconcile(&self, running: &mut Running, shutdown: &ShutdownWatch) -> Vec<String> {
        let Some(routing) = self.shared.routing.load_full() else {
            return Vec::new();
        };
        let wanted: HashMap<u16, PortProtocol> = routing.routes.listeners.iter().copied().collect();
        let gone: Vec<u16> = running
            .iter()
            .filter(|(port, (protocol, _))| wanted.get(port) != Some(protocol))
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            if let Some((_, task)) = running.remove(&port) {
                task.abort();
                // Wait until the listening socket is really closed: the same
                // port may be bound again just below (a protocol change).
                let _ = task.await;
                tracing::info!(port, "listener removed");
            }
        }
        let mut pending = Vec::new();
        for (port, protocol) in wanted {
            if let Some((_, bound)) = self.startup.iter().find(|(p, _)| *p == port) {
                if *bound != protocol {
                    pending.push(format!("{port}/{protocol:?} (bound as {bound:?})"));
                }
                continue;
            }
            if running.contains_key(&port) {
                continue;
            }
            match self.bind(port, protocol, shutdown) {
                Ok(task) => {
                    tracing::info!(port, ?protocol, "listening (added by a snapshot)");
                    running.insert(port, (protocol, task));
                }
                Err(e) => {
                    tracing::error!(port, ?protocol, error = %e, "cannot bind a new listener");
                    pending.push(format!("{port}/{protocol:?} ({e})"));
                }
            }
        }
        pending
    }

    fn bind(
        &self,
        port: u16,
        protocol: PortProtocol,
        shutdown: &ShutdownWatch,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let addr = SocketAddr::new(self.listen_host, port);
        let shared = self.shared.clone();
        let shutdown = shutdown.clone();
        if protocol == PortProtocol::Udp {
            // Bound here first so a failure is reported now, not in the task.
            drop(std::net::UdpSocket::bind(addr)?);
            let forwarder = UdpForwarder {
                listen: addr,
                shared,
            };
            return Ok(tokio::spawn(async move { forwarder.start(shutdown).await }));
        }
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(match protocol {
            PortProtocol::Http => tokio::spawn(accept(listener, self.http.clone(), shutdown)),
            PortProtocol::Tls => {
                let front = TlsFront::new(port, shared, self.http.clone())
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                tokio::spawn(accept(listener, Arc::new(front), shutdown))
            }
            PortProtocol::Tcp | PortProtocol::Udp => {
                let forwarder = L4Forwarder { port, shared };
                tokio::spawn(accept(listener, Arc::new(forwarder), shutdown))
            }
        })
    }
}

/// Accepts connections and serves each with `app`, as pingora's own
/// listeners do (a kept-alive connection is served again).
async fn accept<A: ServerApp + Send + Sync + 'static>(
    listener: tokio::net::TcpListener,
    app: Arc<A>,
    shutdown: ShutdownWatch,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut stream: pingora::protocols::l4::stream::Stream = tcp.into();
        let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        stream.set_socket_digest(digest);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut next = app.process_new(Box::new(stream) as Stream, &shutdown).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &shutdown).await;
            }
        });
    }
}

#[async_trait]
impl BackgroundService for DynamicListeners {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut installs = self.shared.installed.subscribe();
        let mut running = Running::new();
        loop {
            let pending = self.reconcile(&mut running, &shutdown).await;
            if !pending.is_empty() {
                tracing::warn!(listeners = ?pending, "listeners that need a restart of pier-proxy; everything else is live");
            }
            // After the log line, so whoever sees the metric also finds the reason.
            self.shared
                .metrics
                .pending_listeners
                .set(pending.len() as i64);
            tokio::select! {
                changed = installs.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => break,
            }
        }
        for (_, (_, task)) in running {
            task.abort();
        }
    }
}
