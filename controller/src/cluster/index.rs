//! The watch caches, read as a [`ClusterState`] (for a full translation) or
//! per Service (for the endpoint-only fast path). No I/O.

use super::kinds::SERVICE_NAME_LABEL;
use gateway_api::experimental as gw;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, NetworkPolicy};
use kube::runtime::reflector::{ObjectRef, Store};
use pier_translate::ClusterState;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// Readers of every watch cache.
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub secrets: Store<Secret>,
    pub network_policies: Store<NetworkPolicy>,
    pub ingress_classes: Store<IngressClass>,
    pub ingresses: Store<Ingress>,
    pub gateway_classes: Store<gw::gatewayclasses::GatewayClass>,
    pub gateways: Store<gw::gateways::Gateway>,
    pub http_routes: Store<gw::httproutes::HttpRoute>,
    pub grpc_routes: Store<gw::grpcroutes::GrpcRoute>,
    pub tls_routes: Store<gw::tlsroutes::TlsRoute>,
    pub tcp_routes: Store<gw::tcproutes::TcpRoute>,
    pub udp_routes: Store<gw::udproutes::UdpRoute>,
    pub reference_grants: Store<gw::referencegrants::ReferenceGrant>,
}

fn owned<K: Clone + kube::runtime::reflector::Lookup>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| K::clone(o)).collect()
}

impl Stores {
    /// Everything the translator reads, copied out of the caches.
    pub fn cluster_state(&self) -> ClusterState {
        ClusterState {
            namespaces: owned(&self.namespaces),
            services: owned(&self.services),
            endpoint_slices: owned(&self.endpoint_slices),
            secrets: owned(&self.secrets),
            pods: owned(&self.pods),
            ingress_classes: owned(&self.ingress_classes),
            ingresses: owned(&self.ingresses),
            gateway_classes: owned(&self.gateway_classes),
            gateways: owned(&self.gateways),
            http_routes: owned(&self.http_routes),
            grpc_routes: owned(&self.grpc_routes),
            tls_routes: owned(&self.tls_routes),
            tcp_routes: owned(&self.tcp_routes),
            udp_routes: owned(&self.udp_routes),
            reference_grants: owned(&self.reference_grants),
            network_policies: owned(&self.network_policies),
            nodes: owned(&self.nodes),
        }
    }

    /// The Services named in `wanted` (those that still exist) with their
    /// EndpointSlices, for the endpoint-only fast path: one pass over the slices.
    pub fn services_with_slices(
        &self,
        wanted: &BTreeSet<(String, String)>,
    ) -> Vec<(Arc<Service>, Vec<Arc<EndpointSlice>>)> {
        // Keyed by the wanted strings, so no key outlives `wanted` and the
        // walk over every slice allocates nothing for the slices it skips.
        let mut slices: HashMap<(&str, &str), Vec<Arc<EndpointSlice>>> = wanted
            .iter()
            .map(|(ns, name)| ((ns.as_str(), name.as_str()), Vec::new()))
            .collect();
        let all = self.endpoint_slices.state();
        for slice in &all {
            let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            if let Some(list) = slices.get_mut(&(ns, service.as_str())) {
                list.push(slice.clone());
            }
        }
        wanted
            .iter()
            .filter_map(|(ns, name)| {
                let service = self.services.get(&ObjectRef::new(name).within(ns))?;
                let slices = slices
                    .remove(&(ns.as_str(), name.as_str()))
                    .unwrap_or_default();
                Some((service, slices))
            })
            .collect()
    }
}
