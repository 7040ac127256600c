//! The controller's snapshot stream as a source: a full snapshot on connect,
//! then deltas. When the controller goes away the proxy keeps serving its
//! last snapshot and reconnects with back-off.

use crate::routing::Shared;
use pier_snapshot::{apply_delta, read_frame, Message, Snapshot};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Connects and reads the first (full) snapshot.
pub fn fetch_full(addr: SocketAddr) -> std::io::Result<(Snapshot, TcpStream)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    match read_frame(&mut stream)? {
        Some(Message::Full(snapshot)) => Ok((snapshot, stream)),
        Some(Message::Delta(_)) => Err(std::io::Error::other("the stream began with a delta")),
        None => Err(std::io::Error::other("the controller closed the stream")),
    }
}

/// Waits (with back-off) until the controller answers with a full snapshot.
pub fn fetch_full_retrying(addr: SocketAddr) -> (Snapshot, TcpStream) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match fetch_full(addr) {
            Ok(first) => return first,
            Err(e) => {
                tracing::warn!(controller = %addr, error = %e, retry_in_ms = backoff.as_millis() as u64, "controller not reachable; serving the last snapshot");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Applies the stream to `shared` forever (run it on its own thread).
pub fn follow(addr: SocketAddr, shared: Arc<Shared>, mut stream: TcpStream, mut base: Snapshot) {
    loop {
        match read_frame(&mut stream) {
            Ok(Some(Message::Delta(delta))) => match apply_delta(&base, delta) {
                Ok(next) => {
                    // `base` follows the controller even if this snapshot is
                    // rejected, so later deltas still apply.
                    let _ = shared.install(next.clone());
                    base = next;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delta does not apply; resyncing");
                    (base, stream) = resync(addr, &shared);
                }
            },
            Ok(Some(Message::Full(snapshot))) => {
                let _ = shared.install(snapshot.clone());
                base = snapshot;
            }
            Ok(None) | Err(_) => {
                tracing::warn!(controller = %addr, "snapshot stream lost; serving the last snapshot while reconnecting");
                (base, stream) = resync(addr, &shared);
            }
        }
    }
}

fn resync(addr: SocketAddr, shared: &Shared) -> (Snapshot, TcpStream) {
    let (snapshot, stream) = fetch_full_retrying(addr);
    let _ = shared.install(snapshot.clone());
    (snapshot, stream)
}
