//! The snapshot stream between pier-controller and its data planes: the
//! transport of the contract in `pier-snapshot` (which stays free of I/O).
//!
//! - [`frame`]: length-prefixed frames (snapshot messages, heartbeats, hello);
//! - [`tls`]: mutual TLS configuration from PEM files;
//! - [`follower`]: the data planes' side (reconnect, resync, state dir);
//! - [`state`]: the last applied snapshot on disk.
//!
//! The controller's side (who gets which view) lives in pier-controller.

pub mod args;
pub mod follower;
pub mod frame;
pub mod state;
#[cfg(feature = "test-pki")]
pub mod test_pki;
pub mod tls;

pub use args::StreamClientArgs;
pub use follower::{spawn_follower, ClientTls, FollowerConfig, Origin, StreamStatus};
pub use frame::{
    read_frame, write_encoded, write_frame, Frame, FrameError, Hello, ProxyScope, Subscriber,
    PROTOCOL_VERSION,
};
pub use state::StateDir;
pub use tls::{client_config, server_config, server_name, TlsFiles};
