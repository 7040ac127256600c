//! Status the controller writes back: only pier's own conditions and parent
//! entries; merging keeps everything other controllers own.

use gateway_api::experimental::gateways::GatewayStatusListenersSupportedKinds;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as K8sCondition, Time};
use serde::{Deserialize, Serialize};

/// Identifies the object a status belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            kind: kind.into(),
            namespace: namespace.map(Into::into),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A condition without a transition time: the translator has no clock. The
/// status writer stamps `lastTransitionTime` when it merges (see [`merge_conditions`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl Condition {
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Condition {
            type_: type_.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
        }
    }

    pub fn at(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub target: ObjectRef,
    pub patch: StatusPatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusPatch {
    GatewayClass {
        conditions: Vec<Condition>,
    },
    Gateway {
        conditions: Vec<Condition>,
        listeners: Vec<ListenerStatus>,
    },
    /// Parent entries of a route, one per parentRef that names a pier Gateway.
    Route {
        parents: Vec<RouteParentStatus>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: i32,
    pub supported_kinds: Vec<String>,
    pub conditions: Vec<Condition>,
}

impl ListenerStatus {
    pub fn supported_kinds_api(&self) -> Vec<GatewayStatusListenersSupportedKinds> {
        self.supported_kinds
            .iter()
            .map(|k| GatewayStatusListenersSupportedKinds {
                group: Some(crate::refs::GATEWAY_GROUP.into()),
                kind: k.clone(),
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteParentStatus {
    pub parent_ref: ParentRefStatus,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// The parentRef exactly as the route wrote it, so the entry can be matched up.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ParentRefStatus {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

/// A problem with an object that has no status field for it (Ingress, Service, EndpointSlice).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Warning {
    pub object: ObjectRef,
    pub message: String,
}

/// Merges pier's conditions into an object's existing ones: conditions of
/// other types are kept, `lastTransitionTime` moves only when `status` changes.
pub fn merge_conditions(
    existing: &[K8sCondition],
    ours: &[Condition],
    now: &Time,
) -> Vec<K8sCondition> {
    let mut merged: Vec<K8sCondition> = existing
        .iter()
        .filter(|c| !ours.iter().any(|o| o.type_ == c.type_))
        .cloned()
        .collect();
    for cond in ours {
        let previous = existing.iter().find(|c| c.type_ == cond.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == cond.status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        merged.push(K8sCondition {
            type_: cond.type_.clone(),
            status: cond.status.clone(),
            reason: cond.reason.clone(),
            message: cond.message.clone(),
            observed_generation: cond.observed_generation,
            last_transition_time,
        });
    }
    merged
}

/// Merges route parent entries: entries written by other controllers are kept
/// untouched; pier's entries are replaced by `ours` (stale ones dropped).
pub fn merge_route_parents<T: Clone>(
    existing: &[T],
    controller_of: impl Fn(&T) -> &str,
    ours: Vec<T>,
) -> Vec<T> {
    existing
        .iter()
        .filter(|p| controller_of(p) != crate::GATEWAY_CONTROLLER_NAME)
        .cloned()
        .chain(ours)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s(type_: &str, status: &str, at: &str) -> K8sCondition {
        K8sCondition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(at.parse().unwrap()),
        }
    }

    #[test]
    fn merging_keeps_foreign_conditions_and_stable_transition_times() {
        let existing = vec![
            k8s("Accepted", "True", "2020-01-01T00:00:00Z"),
            k8s("example.com/Ready", "True", "2020-01-01T00:00:00Z"),
            k8s("ResolvedRefs", "True", "2020-01-01T00:00:00Z"),
        ];
        let ours = vec![
            Condition::new("Accepted", true, "Accepted", "").at(Some(2)),
            Condition::new("ResolvedRefs", false, "BackendNotFound", "x").at(Some(2)),
        ];
        let now = Time("2024-06-01T00:00:00Z".parse().unwrap());
        let merged = merge_conditions(&existing, &ours, &now);
        assert_eq!(merged.len(), 3);
        let get = |t: &str| merged.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(
            get("example.com/Ready").reason,
            "R",
            "foreign condition untouched"
        );
        assert_eq!(
            get("Accepted").last_transition_time.0.to_string(),
            "2020-01-01T00:00:00Z"
        );
        assert_eq!(get("Accepted").observed_generation, Some(2));
        assert_eq!(get("ResolvedRefs").last_transition_time, now);
    }

    #[test]
    fn merging_route_parents_keeps_other_controllers_entries() {
        let existing = vec![("other.io/ctl", 1), (crate::GATEWAY_CONTROLLER_NAME, 2)];
        let merged = merge_route_parents(
            &existing,
            |p| p.0,
            vec![(crate::GATEWAY_CONTROLLER_NAME, 3)],
        );
        assert_eq!(
            merged,
            vec![("other.io/ctl", 1), (crate::GATEWAY_CONTROLLER_NAME, 3)]
        );
    }
}
