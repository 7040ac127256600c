//! The kinds pier watches: how each is trimmed and what its change means.

use super::watch::{mark_spec_or_status, trim_meta, Dirty, Watched};
use gateway_api::experimental as gw;
use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeSpec, NodeStatus, Pod, PodSpec, PodStatus, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use kube::api::ObjectMeta;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The Secret type pier reads; the watch's field selector asks for no other.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// Keys of a TLS Secret pier reads.
const TLS_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

impl Watched for Service {
    const KIND: &'static str = "Service";
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "EndpointSlice";

    fn mark(old: Option<&Self>, new: &Self, _deleted: bool, dirty: &mut Dirty) {
        // The Service named before and after: a relabelled slice moves endpoints
        // out of one Service and into another.
        for slice in old.into_iter().chain(Some(new)) {
            let service = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            if let (Some(ns), Some(service)) = (slice.metadata.namespace.as_ref(), service) {
                dirty.services.insert((ns.clone(), service.clone()));
            }
        }
    }
}

impl Watched for Secret {
    const KIND: &'static str = "Secret";

    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
        if self.type_.as_deref() != Some(TLS_SECRET_TYPE) {
            // The field selector keeps these out; never hold one anyway.
            self.data = None;
        }
        self.string_data = None;
        if let Some(data) = self.data.as_mut() {
            data.retain(|k, _| TLS_KEYS.contains(&k.as_str()));
        }
    }
}

impl Watched for Namespace {
    const KIND: &'static str = "Namespace";

    fn trim(&mut self) {
        self.metadata = small_meta(&self.metadata);
        self.spec = None;
        self.status = None;
    }
}

impl Watched for Node {
    const KIND: &'static str = "Node";

    /// Name, labels (zone), Pod CIDRs and addresses; nothing of the heartbeats.
    fn trim(&mut self) {
        self.metadata = small_meta(&self.metadata);
        self.spec = self.spec.take().map(|s| NodeSpec {
            pod_cidr: s.pod_cidr,
            pod_cidrs: s.pod_cidrs,
            ..Default::default()
        });
        self.status = self.status.take().map(|s| NodeStatus {
            addresses: s.addresses,
            ..Default::default()
        });
    }

    fn mark(old: Option<&Self>, new: &Self, deleted: bool, dirty: &mut Dirty) {
        // Trimmed Nodes change only when what pier reads changes; but the
        // watch still reports every heartbeat: skip those.
        if deleted || old != Some(new) {
            dirty.full = true;
        }
    }
}

impl Watched for Pod {
    const KIND: &'static str = "Pod";

    /// What NetworkPolicy needs: labels, node, IPs, phase and named ports.
    fn trim(&mut self) {
        self.metadata = small_meta(&self.metadata);
        self.spec = self.spec.take().map(|s| PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: s
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        self.status = self.status.take().map(|s| PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            host_ip: s.host_ip,
            ..Default::default()
        });
    }

    fn mark(old: Option<&Self>, new: &Self, deleted: bool, dirty: &mut Dirty) {
        // Status churn (conditions, container states) is trimmed away.
        if deleted || old != Some(new) {
            dirty.full = true;
        }
    }
}

impl Watched for NetworkPolicy {
    const KIND: &'static str = "NetworkPolicy";
}

impl Watched for IngressClass {
    const KIND: &'static str = "IngressClass";
}

impl Watched for Ingress {
    const KIND: &'static str = "Ingress";

    fn mark(old: Option<&Self>, new: &Self, deleted: bool, dirty: &mut Dirty) {
        mark_spec_or_status(old, new, deleted, dirty);
    }
}

/// The identity and labels of an object, without versions that change on every write.
fn small_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        labels: meta.labels.clone(),
        deletion_timestamp: meta.deletion_timestamp.clone(),
        ..Default::default()
    }
}

macro_rules! gateway_kind {
    ($ty:ty, $kind:literal) => {
        impl Watched for $ty {
            const KIND: &'static str = $kind;
            const OPTIONAL: bool = true;

            fn mark(old: Option<&Self>, new: &Self, deleted: bool, dirty: &mut Dirty) {
                mark_spec_or_status(old, new, deleted, dirty);
            }
        }
    };
}

gateway_kind!(gw::gatewayclasses::GatewayClass, "GatewayClass");
gateway_kind!(gw::gateways::Gateway, "Gateway");
gateway_kind!(gw::httproutes::HttpRoute, "HTTPRoute");
gateway_kind!(gw::grpcroutes::GrpcRoute, "GRPCRoute");
gateway_kind!(gw::tlsroutes::TlsRoute, "TLSRoute");
gateway_kind!(gw::tcproutes::TcpRoute, "TCPRoute");
gateway_kind!(gw::udproutes::UdpRoute, "UDPRoute");

impl Watched for gw::referencegrants::ReferenceGrant {
    const KIND: &'static str = "ReferenceGrant";
    const OPTIONAL: bool = true;
}
