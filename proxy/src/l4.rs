//! L4 forwarding: TCPRoute by port, and the front of every TLS port, which
//! peeks the ClientHello's SNI and then passes the TLS bytes through, or
//! terminates TLS and forwards the plaintext (TLS mode Terminate), or
//! terminates TLS and hands the connection to the HTTP proxy (HTTPS). One
//! port can mix all three, and an entry may change kind on a snapshot swap.
//! Bytes are copied both ways between the client and an endpoint chosen like
//! for HTTP.

use crate::balancer::pick_weighted;
use crate::routing::{Shared, TlsAction};
use crate::service::PierProxy;
use crate::tls::{SniCapture, SniResolver};
use async_trait::async_trait;
use pier_snapshot::{BackendRef, L4Route};
use pingora::apps::ServerApp;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::tls::server::{handshake, handshake_with_callback};
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello larger than this is not routed.
const MAX_HELLO: usize = 16 * 1024;
/// How long a TLS handshake may take once the ClientHello is in.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct L4Forwarder {
    pub port: u16,
    pub shared: Arc<Shared>,
}

/// Extracts the SNI host name from a TLS ClientHello record, if any.
pub fn sni_from_client_hello(record: &[u8]) -> Option<String> {
    // TLS record: type 22 (handshake), version, length; handshake type 1 (ClientHello).
    if record.len() < 9 || record[0] != 22 || record[5] != 1 {
        return None;
    }
    let mut p = 9; // record header (5) + handshake header (4)
    p += 2 + 32; // client version + random
    let sid = *record.get(p)? as usize;
    p += 1 + sid;
    let suites = u16::from_be_bytes([*record.get(p)?, *record.get(p + 1)?]) as usize;
    p += 2 + suites;
    let methods = *record.get(p)? as usize;
    p += 1 + methods;
    let ext_len = u16::from_be_bytes([*record.get(p)?, *record.get(p + 1)?]) as usize;
    p += 2;
    let end = (p + ext_len).min(record.len());
    while p + 4 <= end {
        let kind = u16::from_be_bytes([record[p], record[p + 1]]);
        let len = u16::from_be_bytes([record[p + 2], record[p + 3]]) as usize;
        p += 4;
        if kind == 0 {
            // server_name list: u16 list length, then (type u8, u16 len, name).
            let name_type = *record.get(p + 2)?;
            let name_len = u16::from_be_bytes([*record.get(p + 3)?, *record.get(p + 4)?]) as usize;
            if name_type != 0 {
                return None;
            }
            let name = record.get(p + 5..p + 5 + name_len)?;
            return std::str::from_utf8(name)
                .ok()
                .map(|n| n.to_ascii_lowercase());
        }
        p += len;
    }
    None
}

async fn peek_sni(stream: &mut Stream) -> Option<String> {
    let mut header = [0u8; 5];
    stream.try_peek(&mut header).await.ok()?;
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    if header[0] != 22 || len > MAX_HELLO {
        return None;
    }
    let mut record = vec![0u8; 5 + len];
    stream.try_peek(&mut record).await.ok()?;
    sni_from_client_hello(&record)
}

/// How an L4 connection ended.
enum Ended {
    Closed,
    Idle,
    Failed(std::io::Error),
}

/// Copies bytes both ways until both sides have closed (a side that closes
/// is half-closed on the other), an error, or `idle` without a byte moving
/// either way. The two directions run concurrently: a write that waits on a
/// slow reader never stops the other direction, and counts as idle.
async fn copy_until_idle(client: Stream, upstream: tokio::net::TcpStream, idle: Duration) -> Ended {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    // Milliseconds since `started` of the last byte moved, either way.
    let last = AtomicU64::new(0);
    let touch = || last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    async fn pipe(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        touch: &(dyn Fn() + Sync),
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return to.shutdown().await;
            }
            touch();
            to.write_all(&buf[..n]).await?;
            // The client side may buffer writes (pingora's stream): flush each.
            to.flush().await?;
            touch();
        }
    }
    let (client_read, client_write) = tokio::io::split(client);
    let (upstream_read, upstream_write) = upstream.into_split();
    let both = async {
        tokio::try_join!(
            pipe(client_read, upstream_write, &touch),
            pipe(upstream_read, client_write, &touch)
        )
    };
    let watchdog = async {
        loop {
            let quiet_since = started + Duration::from_millis(last.load(Ordering::Relaxed));
            if quiet_since.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until(quiet_since + idle).await;
        }
    };
    tokio::select! {
        done = both => match done {
            Ok(_) => Ended::Closed,
            Err(e) => Ended::Failed(e),
        },
        () = watchdog => Ended::Idle,
    }
}

/// Connects to an endpoint of `route` (one retry on another endpoint if the
/// first refuses) and copies bytes both ways until either side closes.
async fn forward(shared: &Shared, route: &L4Route, session: Stream) -> Option<Stream> {
    let i = pick_weighted(&route.backends)?;
    let BackendRef::Service(key) = &route.backends[i].backend else {
        tracing::debug!(route = %route.source, "unresolved backend; closing");
        return None;
    };
    let routing = shared.routing.load_full()?;
    let set = routing.backend(key)?;
    let mut tried = Vec::new();
    for _ in 0..2 {
        let (addr, _slot) = shared.balancer.pick(set, &tried)?;
        tried.push(addr);
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(upstream)) => {
                shared.balancer.connect_succeeded(addr);
                let _ = upstream.set_nodelay(true);
                match copy_until_idle(session, upstream, shared.l4_idle_timeout).await {
                    Ended::Closed => {
                        tracing::debug!(route = %route.source, upstream = %addr, "L4 connection done")
                    }
                    Ended::Idle => {
                        tracing::debug!(route = %route.source, upstream = %addr, "L4 connection closed: idle")
                    }
                    Ended::Failed(e) => {
                        tracing::debug!(route = %route.source, upstream = %addr, error = %e, "L4 connection failed")
                    }
                }
                return None;
            }
            _ => shared.balancer.connect_failed(addr),
        }
    }
    None
}

#[async_trait]
impl ServerApp for L4Forwarder {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let route = self
            .shared
            .routing
            .load_full()?
            .routes
            .tcp
            .get(&self.port)
            .cloned();
        let Some(route) = route else {
            tracing::debug!(port = self.port, "no TCP route; closing");
            return None;
        };
        forward(&self.shared, &route, session).await
    }
}

/// The TCP stream under a session handed to a listening app (TLS needs the
/// concrete type, not the boxed one).
fn raw_tcp(session: Stream) -> Option<pingora::protocols::l4::stream::Stream> {
    let any = session.into_any();
    any.downcast::<pingora::protocols::l4::stream::Stream>()
        .ok()
        .map(|s| *s)
}

/// The front of a TLS port (see the module comment).
pub struct TlsFront {
    port: u16,
    shared: Arc<Shared>,
    http: Arc<HttpProxy<PierProxy>>,
    /// Terminates for HTTP: ALPN h2 / http/1.1, the SNI kept for 421 checks.
    https: Acceptor,
    /// Terminates for TCP: no ALPN.
    tcp: Acceptor,
}

impl TlsFront {
    pub fn new(
        port: u16,
        shared: Arc<Shared>,
        http: Arc<HttpProxy<PierProxy>>,
    ) -> pingora::Result<TlsFront> {
        let acceptor = |h2: bool| -> pingora::Result<Acceptor> {
            let mut settings = TlsSettings::with_callbacks(Box::new(SniCapture))?;
            settings.set_cert_resolver(Arc::new(SniResolver {
                port,
                shared: shared.clone(),
            }));
            if h2 {
                settings.enable_h2();
            }
            Ok(settings.build())
        };
        Ok(TlsFront {
            port,
            https: acceptor(true)?,
            tcp: acceptor(false)?,
            shared,
            http,
        })
    }

    fn action(&self, sni: &str) -> Option<TlsAction> {
        let routing = self.shared.routing.load_full()?;
        let actions = routing.routes.tls_actions.get(&self.port)?;
        actions.lookup(sni).map(|(_, a)| a.clone())
    }
}

#[async_trait]
impl ServerApp for TlsFront {
    async fn process_new(
        self: &Arc<Self>,
        mut session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A client that never finishes its ClientHello is dropped, not kept.
        let sni = match tokio::time::timeout(HELLO_TIMEOUT, peek_sni(&mut session)).await {
            Ok(name) => name.unwrap_or_default(),
            Err(_) => return None,
        };
        let Some(action) = self.action(&sni) else {
            tracing::debug!(port = self.port, sni, "no TLS route for this SNI; closing");
            return None;
        };
        match action {
            TlsAction::Passthrough(route) => forward(&self.shared, &route, session).await,
            TlsAction::TerminateTcp(route) => {
                let tcp = raw_tcp(session)?;
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&self.tcp, tcp)).await;
                let Ok(Ok(tls)) = tls else {
                    tracing::debug!(port = self.port, sni, "TLS handshake failed");
                    return None;
                };
                forward(&self.shared, &route, Box::new(tls)).await
            }
            TlsAction::TerminateHttp => {
                let tcp = raw_tcp(session)?;
                let tls = tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    handshake_with_callback(&self.https, tcp, &SniCapture),
                )
                .await;
                let Ok(Ok(tls)) = tls else {
                    tracing::debug!(port = self.port, sni, "TLS handshake failed");
                    return None;
                };
                // The HTTP app hands a kept-alive connection back after each
                // request: serve it here, it is past the TLS front already.
                let mut next = self.http.process_new(Box::new(tls), shutdown).await;
                while let Some(stream) = next {
                    next = self.http.process_new(stream, shutdown).await;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sni_from_client_hello;

    #[test]
    fn garbage_is_not_a_client_hello() {
        assert_eq!(sni_from_client_hello(b""), None);
        assert_eq!(sni_from_client_hello(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(sni_from_client_hello(&[22, 3, 1, 0, 4, 1, 0, 0, 0]), None);
        let mut truncated = vec![22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3];
        truncated.extend([0u8; 40]);
        assert_eq!(sni_from_client_hello(&truncated), None);
    }
}
