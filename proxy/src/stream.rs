//! The controller's snapshot stream as the proxy's source (see
//! `pier_stream::follower`): the proxy keeps serving its last snapshot while
//! the controller is away, and starts from its state dir when it has one.

use crate::routing::Shared;
use pier_stream::{FollowerConfig, StreamStatus};
use std::sync::Arc;

/// Follows the stream on its own thread, installing every snapshot into `shared`.
pub fn follow(config: FollowerConfig, shared: Arc<Shared>) -> std::io::Result<Arc<StreamStatus>> {
    pier_stream::spawn_follower(config, move |snapshot, changed| {
        let _ = shared.apply(snapshot, changed);
    })
}
