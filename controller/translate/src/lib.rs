//! Pure translation: Kubernetes objects in, a pier [`Snapshot`] and the status
//! the controller must write out. No I/O, no clocks, no randomness: the same
//! [`ClusterState`] always gives the same [`Translation`].
//!
//! Partly invalid input translates the valid part and reports the rest in
//! status conditions (Gateway API) or warnings (Ingress, Service).

mod duration;
mod gateway;
mod hostnames;
mod http;
mod index;
mod ingress;
mod l4routes;
mod precedence;
mod refs;
mod routes;
mod services;
pub mod status;

use gateway_api::experimental as gw;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass, NetworkPolicy},
};
use pier_snapshot::Snapshot;
use serde::{Deserialize, Serialize};

pub use duration::parse_gateway_duration;
pub use ingress::ingress_is_ours;
pub use services::{
    apply_endpoint_update, backend_key, endpoints_for_service, translate_service_backends,
};
pub use status::{Condition, ObjectRef, StatusPatch, StatusUpdate, Warning};

/// The Gateway API controllerName pier answers to.
pub const GATEWAY_CONTROLLER_NAME: &str = "pier.dev/gateway-controller";
/// The IngressClass `spec.controller` pier answers to.
pub const INGRESS_CONTROLLER_NAME: &str = "pier.dev/ingress-controller";

/// Everything the translator reads. Objects are the typed upstream API types;
/// order does not matter (the translator sorts what it needs sorted).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub secrets: Vec<Secret>,
    pub pods: Vec<Pod>,
    pub ingress_classes: Vec<IngressClass>,
    pub ingresses: Vec<Ingress>,
    pub gateway_classes: Vec<gw::gatewayclasses::GatewayClass>,
    pub gateways: Vec<gw::gateways::Gateway>,
    pub http_routes: Vec<gw::httproutes::HttpRoute>,
    pub grpc_routes: Vec<gw::grpcroutes::GrpcRoute>,
    pub tls_routes: Vec<gw::tlsroutes::TlsRoute>,
    pub tcp_routes: Vec<gw::tcproutes::TcpRoute>,
    pub udp_routes: Vec<gw::udproutes::UdpRoute>,
    pub reference_grants: Vec<gw::referencegrants::ReferenceGrant>,
    /// Read by the NetworkPolicy compiler (not yet part of the snapshot).
    pub network_policies: Vec<NetworkPolicy>,
    /// Nodes (addresses, topology labels), trimmed by the controller; for
    /// topology-aware routing (not yet part of the snapshot).
    pub nodes: Vec<Node>,
}

/// Knobs of the translation that are not in the cluster objects.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TranslateOptions {
    /// IngressClass name served when no IngressClass object says otherwise.
    pub ingress_class: String,
    pub ingress_http_port: u16,
    pub ingress_https_port: u16,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            ingress_class: "pier".into(),
            ingress_http_port: 80,
            ingress_https_port: 443,
        }
    }
}

/// The result of one translation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Translation {
    pub snapshot: Snapshot,
    /// Status to write, sorted by object; only conditions pier owns.
    pub statuses: Vec<StatusUpdate>,
    /// Problems with objects that have no status field to report them in.
    pub warnings: Vec<Warning>,
}

/// Translates the whole cluster state. Never panics on any input.
pub fn translate(state: &ClusterState, options: &TranslateOptions) -> Translation {
    let index = index::Index::build(state);
    let mut out = Translation {
        snapshot: Snapshot::empty(),
        ..Default::default()
    };
    services::translate_services(&index, &mut out);
    let mut builder = routes::ListenerBuilder::default();
    ingress::translate_ingresses(&index, options, &mut builder, &mut out);
    gateway::translate_gateways(&index, &mut builder, &mut out);
    out.snapshot.routes.data = builder.finish(&mut out.snapshot);
    out.statuses.sort_by(|a, b| a.target.cmp(&b.target));
    out.warnings.sort();
    out.warnings.dedup();
    out
}

impl Translation {
    /// A readable document for humans and golden files: empty fields left
    /// out, private keys replaced by `<redacted>`.
    pub fn to_document(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(certs) = value
            .pointer_mut("/snapshot/certificates/data")
            .and_then(|c| c.as_object_mut())
        {
            for cert in certs.values_mut() {
                if let Some(key) = cert.get_mut("private_key_pem") {
                    *key = serde_json::Value::String("<redacted>".into());
                }
            }
        }
        prune(&mut value);
        value
    }
}

/// Drops nulls and empty lists / maps, recursively.
fn prune(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            map.values_mut().for_each(prune);
            map.retain(|_, v| {
                !(v.is_null()
                    || v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|m| m.is_empty()))
            });
        }
        Value::Array(items) => items.iter_mut().for_each(prune),
        _ => {}
    }
}
