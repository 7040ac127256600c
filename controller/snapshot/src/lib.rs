//! The contract between pier's controller and its data planes.
//!
//! A [`Snapshot`] is plain owned data with a deterministic order (maps are
//! `BTreeMap`, lists are sorted by the translator), split into parts that change
//! at different rates. Each part carries its own version, so a data plane that
//! sees only `backends` move never rebuilds its route table.
//!
//! Nothing here knows about Kubernetes, tokio, pingora or aya.

mod backends;
mod certificates;
mod diff;
mod l7;
mod policies;
mod services;
mod validate;
mod wire;

pub use backends::*;
pub use certificates::*;
pub use diff::*;
pub use l7::*;
pub use policies::*;
pub use services::*;
pub use validate::*;
pub use wire::*;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bumped whenever a change to these types would make an old reader misread a new snapshot.
pub const SCHEMA_VERSION: u32 = 2;

/// Identifies a backend set: `namespace/service:port` (the Service port number).
pub type BackendKey = String;
/// Identifies an L4 service port: `namespace/service:port/PROTOCOL`.
pub type ServiceKey = String;
/// Identifies a certificate: `namespace/secret-name`.
pub type CertificateKey = String;

/// One complete, immutable picture of what the data planes must do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub schema: u32,
    /// Listeners and the L7 / L4 routes attached to them.
    pub routes: Versioned<RoutesPart>,
    /// Endpoint sets per Service port: the part that churns most.
    pub backends: Versioned<BTreeMap<BackendKey, BackendSet>>,
    /// L4 services (ClusterIP, NodePort, LoadBalancer, externalIPs) for the agent.
    pub services: Versioned<BTreeMap<ServiceKey, L4Service>>,
    /// Compiled NetworkPolicy rules (filled by the NetworkPolicy work).
    pub policies: Versioned<PoliciesPart>,
    /// TLS material referenced by listeners; never logged.
    pub certificates: Versioned<BTreeMap<CertificateKey, Certificate>>,
}

/// A part of the snapshot with its own version. The version only moves when
/// the content moves, so equality of versions means equality of content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub version: u64,
    pub data: T,
}

impl<T: PartialEq> Versioned<T> {
    /// Replaces the content, bumping the version only if the content differs.
    pub fn replace(&mut self, data: T) -> bool {
        if self.data == data {
            return false;
        }
        self.data = data;
        self.version += 1;
        true
    }
}

impl Snapshot {
    /// An empty snapshot of the current schema.
    pub fn empty() -> Self {
        Snapshot {
            schema: SCHEMA_VERSION,
            ..Default::default()
        }
    }

    /// Takes the content of `next`, keeping this snapshot's versions for parts
    /// that did not change and bumping the others. This is how a producer turns
    /// a fresh translation into the next snapshot of a stream.
    pub fn advance(&mut self, next: Snapshot) -> SnapshotDiff {
        let diff = diff(self, &next);
        let Snapshot {
            schema,
            routes,
            backends,
            services,
            policies,
            certificates,
        } = next;
        self.schema = schema;
        self.routes.replace(routes.data);
        self.backends.replace(backends.data);
        self.services.replace(services.data);
        self.policies.replace(policies.data);
        self.certificates.replace(certificates.data);
        diff
    }
}
