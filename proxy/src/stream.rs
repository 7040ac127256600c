//! The controller's snapshot stream as the proxy's source (see
//! `pier_snapshot::stream`): the proxy keeps serving its last snapshot while
//! the controller is away.

use crate::routing::Shared;
use pier_snapshot::Snapshot;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn connect(addr: SocketAddr) -> impl FnMut() -> std::io::Result<TcpStream> {
    move || TcpStream::connect_timeout(&addr, Duration::from_secs(5))
}

fn warn(addr: SocketAddr) -> impl FnMut(&str) {
    move |e| tracing::warn!(controller = %addr, error = %e, "snapshot stream")
}

/// Waits until the controller answers with a full snapshot.
pub fn fetch_full_retrying(addr: SocketAddr) -> (Snapshot, TcpStream) {
    pier_snapshot::stream::first_snapshot(&mut connect(addr), &mut warn(addr))
}

/// Applies the stream to `shared` forever (run it on its own thread).
pub fn follow(addr: SocketAddr, shared: Arc<Shared>, stream: TcpStream, base: Snapshot) {
    pier_snapshot::stream::follow(
        connect(addr),
        |s, _| {
            let _ = shared.install(s.clone());
        },
        warn(addr),
        base,
        stream,
    )
}
