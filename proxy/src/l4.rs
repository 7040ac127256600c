//! L4 forwarding: TCPRoute by port, TLSRoute passthrough by SNI (the
//! ClientHello is peeked, never terminated). Bytes are copied both ways
//! between the client and an endpoint chosen like for HTTP.

use crate::balancer::pick_weighted;
use crate::routing::Shared;
use async_trait::async_trait;
use pier_snapshot::{BackendRef, L4Route};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client has to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A ClientHello larger than this is not routed.
const MAX_HELLO: usize = 16 * 1024;

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

impl L4Forwarder {
    fn route_for(&self, sni: Option<&str>) -> Option<L4Route> {
        let routing = self.shared.routing.load_full()?;
        match sni {
            None => routing.tcp.get(&self.port).cloned(),
            Some(name) => routing
                .passthrough
                .get(&self.port)?
                .lookup(name)
                .map(|(_, r)| r.clone()),
        }
    }
}

#[async_trait]
impl ServerApp for L4Forwarder {
    async fn process_new(
        self: &Arc<Self>,
        mut session: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let is_tls_port = self
            .shared
            .routing
            .load()
            .as_ref()
            .is_some_and(|r| r.passthrough.contains_key(&self.port));
        let sni = if is_tls_port {
            // A client that never finishes its ClientHello is dropped, not kept.
            match tokio::time::timeout(HELLO_TIMEOUT, peek_sni(&mut session)).await {
                Ok(name) => Some(name.unwrap_or_default()),
                Err(_) => return None,
            }
        } else {
            None
        };
        let Some(route) = self.route_for(sni.as_deref()) else {
            tracing::debug!(port = self.port, sni = ?sni, "no L4 route; closing");
            return None;
        };
        let i = pick_weighted(&route.backends)?;
        let BackendRef::Service(key) = &route.backends[i].backend else {
            tracing::debug!(route = %route.source, "unresolved backend; closing");
            return None;
        };
        let routing = self.shared.routing.load_full()?;
        let set = routing.snapshot.backends.data.get(key)?;
        let mut tried = Vec::new();
        // One retry on another endpoint if the first refuses the connection.
        for _ in 0..2 {
            let (addr, _slot) = self.shared.balancer.pick(set, &tried)?;
            tried.push(addr);
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
            {
                Ok(Ok(mut upstream)) => {
                    self.shared.balancer.connect_succeeded(addr);
                    let _ = upstream.set_nodelay(true);
                    let copied = tokio::io::copy_bidirectional(&mut session, &mut upstream).await;
                    tracing::debug!(route = %route.source, upstream = %addr, ?copied, "L4 connection done");
                    return None;
                }
                _ => self.shared.balancer.connect_failed(addr),
            }
        }
        None
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
