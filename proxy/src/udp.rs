//! UDPRoute forwarding: one socket per listener port; each client address
//! gets its own connected socket to an endpoint (a "flow"), replies are sent
//! back from the listener socket. Flows expire after an idle timeout.

use crate::balancer::pick_weighted;
use crate::routing::Shared;
use async_trait::async_trait;
use pier_snapshot::BackendRef;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

const FLOW_IDLE: Duration = Duration::from_secs(60);
const MAX_DATAGRAM: usize = 65_535;
/// Flows per listener; datagrams from new clients beyond it are dropped, so
/// spoofed sources cannot exhaust file descriptors or memory.
const MAX_FLOWS: usize = 16_384;

pub struct UdpForwarder {
    pub listen: SocketAddr,
    pub shared: Arc<Shared>,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>;

impl UdpForwarder {
    /// A connected socket to an endpoint of the port's UDPRoute, or None.
    async fn open_flow(&self) -> Option<Arc<UdpSocket>> {
        let routing = self.shared.routing.load_full()?;
        let route = routing.routes.udp.get(&self.listen.port())?;
        let i = pick_weighted(&route.backends)?;
        let BackendRef::Service(key) = &route.backends[i].backend else {
            return None;
        };
        let set = routing.backend(key)?;
        let (addr, _slot) = self.shared.balancer.pick(set, &[])?;
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await.ok()?;
        socket.connect(addr).await.ok()?;
        Some(Arc::new(socket))
    }
}

#[async_trait]
impl BackgroundService for UdpForwarder {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = match UdpSocket::bind(self.listen).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::error!(listen = %self.listen, error = %e, "cannot bind UDP listener");
                return;
            }
        };
        tracing::info!(addr = %self.listen, "listening (UDP)");
        let flows: Flows = Arc::default();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, client) = tokio::select! {
                r = listener.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive error");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let existing = flows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&client)
                .cloned();
            let flow = match existing {
                Some(f) => f,
                None => {
                    if flows.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_FLOWS {
                        tracing::debug!(%client, "UDP flow table full; datagram dropped");
                        continue;
                    }
                    let Some(f) = self.open_flow().await else {
                        tracing::debug!(%client, port = self.listen.port(), "no UDP route or endpoint; datagram dropped");
                        continue;
                    };
                    flows
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(client, f.clone());
                    spawn_replies(listener.clone(), f.clone(), client, flows.clone());
                    f
                }
            };
            let _ = flow.send(&buf[..n]).await;
        }
    }
}

/// Copies an endpoint's replies back to the client until the flow is idle.
fn spawn_replies(listener: Arc<UdpSocket>, flow: Arc<UdpSocket>, client: SocketAddr, flows: Flows) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok(Ok(n)) = tokio::time::timeout(FLOW_IDLE, flow.recv(&mut buf)).await {
            let _ = listener.send_to(&buf[..n], client).await;
        }
        flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client);
    });
}
