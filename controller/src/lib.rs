//! pier-controller: the one component that talks to Kubernetes. A folder
//! of manifests ([`serve`], standalone) or the API server ([`cluster`])
//! goes in; versioned snapshots go out to the data planes over the stream
//! ([`serve`], per-subscriber [`views`] of the [`hub`]), and status goes back
//! to the API server (leader only).

pub mod args;
pub mod cluster;
pub mod explain;
pub mod hub;
pub mod metrics;
pub mod serve;
pub mod views;
