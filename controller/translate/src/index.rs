//! Lookup tables over a ClusterState, built once per translation. No I/O.

use crate::ClusterState;
use gateway_api::experimental as gw;
use k8s_openapi::api::{core::v1::Secret, core::v1::Service, discovery::v1::EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, HashMap};

/// The label that ties an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(crate) fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

pub(crate) fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

pub(crate) struct Index<'a> {
    pub state: &'a ClusterState,
    pub services: HashMap<(&'a str, &'a str), &'a Service>,
    pub slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    pub secrets: HashMap<(&'a str, &'a str), &'a Secret>,
    pub namespace_labels: HashMap<&'a str, &'a BTreeMap<String, String>>,
    pub grants: HashMap<&'a str, Vec<&'a gw::referencegrants::ReferenceGrant>>,
}

impl<'a> Index<'a> {
    pub fn build(state: &'a ClusterState) -> Self {
        let mut slices: HashMap<_, Vec<_>> = HashMap::new();
        for slice in &state.endpoint_slices {
            let labels = slice.metadata.labels.as_ref();
            if let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                slices
                    .entry((namespace(&slice.metadata), service.as_str()))
                    .or_default()
                    .push(slice);
            }
        }
        let mut grants: HashMap<_, Vec<_>> = HashMap::new();
        for grant in &state.reference_grants {
            grants
                .entry(namespace(&grant.metadata))
                .or_default()
                .push(grant);
        }
        Index {
            state,
            services: state
                .services
                .iter()
                .map(|s| ((namespace(&s.metadata), name(&s.metadata)), s))
                .collect(),
            slices,
            secrets: state
                .secrets
                .iter()
                .map(|s| ((namespace(&s.metadata), name(&s.metadata)), s))
                .collect(),
            namespace_labels: state
                .namespaces
                .iter()
                .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
                .collect(),
            grants,
        }
    }

    /// Labels of a namespace, including the `kubernetes.io/metadata.name`
    /// label the API server always sets (so selectors on it work in standalone mode).
    pub fn labels_of_namespace(&self, ns: &str) -> BTreeMap<String, String> {
        let mut labels = self
            .namespace_labels
            .get(ns)
            .map(|l| (*l).clone())
            .unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), ns.into());
        labels
    }
}
