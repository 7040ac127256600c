//! Object references across namespaces and kinds: ReferenceGrant checks and
//! backend resolution, shared by every route kind.

use crate::index::{name, Index};
use crate::services::backend_key;
use pier_snapshot::BackendRef;

pub(crate) const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Why a reference did not resolve, as Gateway API names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RefError {
    pub reason: &'static str,
    pub message: String,
}

impl RefError {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        RefError {
            reason,
            message: message.into(),
        }
    }
}

/// A reference from an object of kind `from_kind` in `from_ns`.
pub(crate) struct From<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
}

/// Whether a ReferenceGrant in `to_ns` lets `from` refer to `to_kind/to_name` there.
pub(crate) fn grant_allows(
    index: &Index<'_>,
    from: &From<'_>,
    to_group: &str,
    to_kind: &str,
    to_ns: &str,
    to_name: &str,
) -> bool {
    if from.namespace == to_ns {
        return true;
    }
    index.grants.get(to_ns).is_some_and(|grants| {
        grants.iter().any(|grant| {
            grant.spec.from.iter().any(|f| {
                f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
            }) && grant.spec.to.iter().any(|t| {
                t.group == to_group
                    && t.kind == to_kind
                    && t.name.as_deref().is_none_or(|n| n == to_name)
            })
        })
    })
}

/// A backendRef as every route kind spells it.
pub(crate) struct BackendRefView<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// Resolves a backendRef to a key of `Snapshot::backends`.
pub(crate) fn resolve_backend(
    index: &Index<'_>,
    from: &From<'_>,
    r: &BackendRefView<'_>,
) -> Result<String, RefError> {
    let group = r.group.unwrap_or("");
    let kind = r.kind.unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(RefError::new(
            "InvalidKind",
            format!(
                "backendRef {group}/{kind} {}: only core Services are supported",
                r.name
            ),
        ));
    }
    let ns = r.namespace.unwrap_or(from.namespace);
    if !grant_allows(index, from, "", "Service", ns, r.name) {
        return Err(RefError::new(
            "RefNotPermitted",
            format!(
                "no ReferenceGrant in namespace {ns} allows {} from {} to Service {}",
                from.kind, from.namespace, r.name
            ),
        ));
    }
    let Some(service) = index.services.get(&(ns, r.name)) else {
        return Err(RefError::new(
            "BackendNotFound",
            format!("Service {ns}/{} not found", r.name),
        ));
    };
    let Some(port) = r.port else {
        return Err(RefError::new(
            "BackendNotFound",
            format!("backendRef to Service {ns}/{} needs a port", r.name),
        ));
    };
    let has_port = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|ports| {
            ports
                .iter()
                .any(|p| p.port == port && crate::services::valid_port(p.port))
        });
    if !has_port {
        return Err(RefError::new(
            "BackendNotFound",
            format!(
                "Service {ns}/{} has no port {port}",
                name(&service.metadata)
            ),
        ));
    }
    if matches!(from.kind, "HTTPRoute" | "GRPCRoute") {
        let app_protocol = service
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == port))
            .and_then(|p| p.app_protocol.as_deref());
        if let Some(proto) = app_protocol.filter(|p| !crate::services::http_app_protocol_known(p)) {
            return Err(RefError::new(
                "UnsupportedProtocol",
                format!("Service {ns}/{} port {port} has appProtocol {proto:?}, which pier cannot speak over HTTP", r.name),
            ));
        }
    }
    Ok(backend_key(ns, r.name, port))
}

pub(crate) fn to_backend_ref(result: &Result<String, RefError>) -> BackendRef {
    match result {
        Ok(key) => BackendRef::Service(key.clone()),
        Err(e) => BackendRef::Unresolved(e.message.clone()),
    }
}
