//! What pier's part of each object's status should be, whether the object
//! already says so, and the server-side apply body that makes it so. Pure:
//! the writer does the I/O.
//!
//! Statuses are handled as JSON so that every route kind (whose generated
//! status types differ only in name) goes through one path, and so that
//! fields the API server defaults (a parentRef's group and kind) do not make
//! an unchanged status look changed.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as K8sCondition, Time};
use pier_translate::status::{
    merge_conditions, merge_route_parents, ListenerStatus, ParentRefStatus, RouteParentStatus,
};
use pier_translate::{
    ingress_is_ours, ClusterState, Condition, ObjectRef, StatusPatch, StatusUpdate,
    TranslateOptions, Warning, GATEWAY_CONTROLLER_NAME,
};
use serde_json::{json, Map, Value};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Gateway API features pier implements, reported on its GatewayClass
/// (sorted, as the API requires).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "GRPCRoute",
    "Gateway",
    "HTTPRoute",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePathRedirect",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRouteRequestMirror",
    "ReferenceGrant",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
];

fn supported_features() -> Vec<&'static str> {
    let mut features = SUPPORTED_FEATURES.to_vec();
    features.sort_unstable();
    features
}

/// An address of the published Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Ip(String),
    Hostname(String),
}

/// Addresses of the `--publish-service`: its LoadBalancer ingress, else its
/// externalIPs, else its ClusterIP(s).
pub fn published_addresses(service: &Service) -> Vec<Address> {
    let lb: Vec<Address> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| match (&i.ip, &i.hostname) {
            (Some(ip), _) => Some(Address::Ip(ip.clone())),
            (None, Some(h)) => Some(Address::Hostname(h.clone())),
            _ => None,
        })
        .collect();
    if !lb.is_empty() {
        return lb;
    }
    let spec = service.spec.as_ref();
    let external: Vec<Address> = spec
        .and_then(|s| s.external_ips.clone())
        .unwrap_or_default()
        .into_iter()
        .map(Address::Ip)
        .collect();
    if !external.is_empty() {
        return external;
    }
    let cluster_ips = spec
        .and_then(|s| s.cluster_ips.clone())
        .filter(|ips| !ips.is_empty())
        .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
        .unwrap_or_default();
    cluster_ips
        .into_iter()
        .filter(|ip| ip != "None" && !ip.is_empty())
        .map(Address::Ip)
        .collect()
}

/// pier's part of one object's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ours {
    GatewayClass {
        conditions: Vec<Condition>,
        features: Vec<&'static str>,
    },
    Gateway {
        conditions: Vec<Condition>,
        listeners: Vec<ListenerStatus>,
        addresses: Vec<Address>,
    },
    Route {
        parents: Vec<RouteParentStatus>,
    },
    Ingress {
        addresses: Vec<Address>,
    },
}

/// The status pier wants on one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub target: ObjectRef,
    pub ours: Ours,
}

/// Everything pier wants written after one translation: the translator's
/// statuses, plus addresses and Ingress status from the published Service.
pub fn wanted(
    statuses: &[StatusUpdate],
    state: &ClusterState,
    options: &TranslateOptions,
    publish_service: Option<&(String, String)>,
) -> Vec<Wanted> {
    let addresses = publish_service.and_then(|(ns, name)| {
        state
            .services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(ns.as_str())
                    && s.metadata.name.as_deref() == Some(name.as_str())
            })
            .map(published_addresses)
    });
    let mut out: Vec<Wanted> = statuses
        .iter()
        .map(|s| Wanted {
            target: s.target.clone(),
            ours: match &s.patch {
                StatusPatch::GatewayClass { conditions } => Ours::GatewayClass {
                    features: if conditions.iter().all(Condition::is_true) {
                        supported_features()
                    } else {
                        Vec::new()
                    },
                    conditions: conditions.clone(),
                },
                StatusPatch::Gateway {
                    conditions,
                    listeners,
                } => Ours::Gateway {
                    conditions: conditions.clone(),
                    listeners: listeners.clone(),
                    addresses: addresses.clone().unwrap_or_default(),
                },
                StatusPatch::Route { parents } => Ours::Route {
                    parents: parents.clone(),
                },
            },
        })
        .collect();
    // Ingress status only says where the Ingress is served: without a
    // published Service there is nothing to say.
    if let Some(addresses) = addresses {
        for ingress in state
            .ingresses
            .iter()
            .filter(|i| ingress_is_ours(state, options, i))
        {
            out.push(Wanted {
                target: ObjectRef::new(
                    "Ingress",
                    ingress.metadata.namespace.as_deref(),
                    ingress.metadata.name.as_deref().unwrap_or_default(),
                ),
                ours: Ours::Ingress {
                    addresses: addresses.clone(),
                },
            });
        }
    }
    out
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn conditions_match(ours: &[Condition], existing: &[Value]) -> bool {
    ours.iter().all(|c| {
        existing.iter().any(|e| {
            e["type"] == c.type_.as_str()
                && e["status"] == c.status.as_str()
                && e["reason"] == c.reason.as_str()
                && e["message"] == c.message.as_str()
                && e.get("observedGeneration").and_then(Value::as_i64) == c.observed_generation
        })
    })
}

fn parent_ref_matches(existing: &Value, ours: &ParentRefStatus) -> bool {
    let s = |k: &str| existing.get(k).and_then(Value::as_str);
    s("group").unwrap_or(GATEWAY_GROUP) == ours.group.as_deref().unwrap_or(GATEWAY_GROUP)
        && s("kind").unwrap_or("Gateway") == ours.kind.as_deref().unwrap_or("Gateway")
        && s("namespace") == ours.namespace.as_deref()
        && s("name") == Some(ours.name.as_str())
        && s("sectionName") == ours.section_name.as_deref()
        && existing.get("port").and_then(Value::as_i64) == ours.port.map(i64::from)
}

fn is_pier_parent(p: &Value) -> bool {
    p["controllerName"] == GATEWAY_CONTROLLER_NAME
}

fn address_pairs(addresses: &[Address]) -> Vec<(&str, &str)> {
    addresses
        .iter()
        .map(|a| match a {
            Address::Ip(ip) => ("IPAddress", ip.as_str()),
            Address::Hostname(h) => ("Hostname", h.as_str()),
        })
        .collect()
}

fn ingress_pairs(addresses: &[Address]) -> Vec<(Option<&str>, Option<&str>)> {
    addresses
        .iter()
        .map(|a| match a {
            Address::Ip(ip) => (Some(ip.as_str()), None),
            Address::Hostname(h) => (None, Some(h.as_str())),
        })
        .collect()
}

impl Ours {
    /// Whether `status` (the object's whole status, `null` if none) already
    /// says what pier wants.
    pub fn is_current(&self, status: &Value) -> bool {
        match self {
            Ours::GatewayClass {
                conditions,
                features,
            } => {
                let existing: Vec<&str> = array(status, "supportedFeatures")
                    .iter()
                    .filter_map(|f| f["name"].as_str())
                    .collect();
                conditions_match(conditions, array(status, "conditions")) && existing == *features
            }
            Ours::Gateway {
                conditions,
                listeners,
                addresses,
            } => {
                let existing_listeners = array(status, "listeners");
                let listeners_match = existing_listeners.len() == listeners.len()
                    && listeners.iter().all(|l| {
                        existing_listeners.iter().any(|e| {
                            let kinds: Vec<&str> = array(e, "supportedKinds")
                                .iter()
                                .filter_map(|k| k["kind"].as_str())
                                .collect();
                            e["name"] == l.name.as_str()
                                && e["attachedRoutes"].as_i64()
                                    == Some(i64::from(l.attached_routes))
                                && kinds == l.supported_kinds
                                && conditions_match(&l.conditions, array(e, "conditions"))
                        })
                    });
                let existing_addresses: Vec<(&str, &str)> = array(status, "addresses")
                    .iter()
                    .map(|a| {
                        (
                            a["type"].as_str().unwrap_or("IPAddress"),
                            a["value"].as_str().unwrap_or_default(),
                        )
                    })
                    .collect();
                conditions_match(conditions, array(status, "conditions"))
                    && listeners_match
                    && existing_addresses == address_pairs(addresses)
            }
            Ours::Route { parents } => {
                let existing: Vec<&Value> = array(status, "parents")
                    .iter()
                    .filter(|p| is_pier_parent(p))
                    .collect();
                existing.len() == parents.len()
                    && parents.iter().all(|p| {
                        existing.iter().any(|e| {
                            parent_ref_matches(&e["parentRef"], &p.parent_ref)
                                && conditions_match(&p.conditions, array(e, "conditions"))
                        })
                    })
            }
            Ours::Ingress { addresses } => {
                let existing: Vec<(Option<&str>, Option<&str>)> = status
                    .pointer("/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|i| (i["ip"].as_str(), i["hostname"].as_str()))
                    .collect();
                existing == ingress_pairs(addresses)
            }
        }
    }

    /// Whether the apply must be conditional on the object's
    /// resourceVersion: route parents are one atomic list shared with other
    /// controllers, so a write based on a stale read could drop their entries.
    pub fn needs_precondition(&self) -> bool {
        matches!(self, Ours::Route { .. })
    }

    /// The `status` of the server-side apply body, given the current one:
    /// transition times kept where a condition did not change, other
    /// controllers' route parents kept as they are.
    pub fn apply_status(&self, status: &Value, now: &Time) -> Value {
        match self {
            Ours::GatewayClass {
                conditions,
                features,
            } => json!({
                "conditions": merged_conditions(array(status, "conditions"), conditions, now),
                "supportedFeatures": features.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
            }),
            Ours::Gateway {
                conditions,
                listeners,
                addresses,
            } => {
                let existing_listeners = array(status, "listeners");
                let listeners: Vec<Value> = listeners
                    .iter()
                    .map(|l| {
                        let existing = existing_listeners
                            .iter()
                            .find(|e| e["name"] == l.name.as_str())
                            .map(|e| array(e, "conditions"))
                            .unwrap_or(&[]);
                        json!({
                            "name": l.name,
                            "attachedRoutes": l.attached_routes,
                            "supportedKinds": l.supported_kinds_api(),
                            "conditions": merged_conditions(existing, &l.conditions, now),
                        })
                    })
                    .collect();
                let addresses: Vec<Value> = address_pairs(addresses)
                    .into_iter()
                    .map(|(t, v)| json!({"type": t, "value": v}))
                    .collect();
                json!({
                    "conditions": merged_conditions(array(status, "conditions"), conditions, now),
                    "listeners": listeners,
                    "addresses": addresses,
                })
            }
            Ours::Route { parents } => {
                let existing = array(status, "parents");
                let ours: Vec<Value> = parents
                    .iter()
                    .map(|p| {
                        let previous = existing
                            .iter()
                            .find(|e| {
                                is_pier_parent(e)
                                    && parent_ref_matches(&e["parentRef"], &p.parent_ref)
                            })
                            .map(|e| array(e, "conditions"))
                            .unwrap_or(&[]);
                        json!({
                            "parentRef": parent_ref_json(&p.parent_ref),
                            "controllerName": p.controller_name,
                            "conditions": merged_conditions(previous, &p.conditions, now),
                        })
                    })
                    .collect();
                let merged = merge_route_parents(
                    existing,
                    |p| p["controllerName"].as_str().unwrap_or_default(),
                    ours,
                );
                json!({ "parents": merged })
            }
            Ours::Ingress { addresses } => {
                let ingress: Vec<Value> = ingress_pairs(addresses)
                    .into_iter()
                    .map(|pair| match pair {
                        (Some(ip), _) => json!({"ip": ip}),
                        (_, Some(h)) => json!({"hostname": h}),
                        _ => json!({}),
                    })
                    .collect();
                json!({"loadBalancer": {"ingress": ingress}})
            }
        }
    }

    /// Problems a user must fix, as (reason, message): references that do
    /// not resolve (a missing Secret, a refused ReferenceGrant, a missing backend).
    pub fn problems(&self) -> Vec<(String, String)> {
        let unresolved = |cs: &[Condition]| -> Vec<(String, String)> {
            cs.iter()
                .filter(|c| c.type_ == "ResolvedRefs" && !c.is_true())
                .map(|c| (c.reason.clone(), c.message.clone()))
                .collect()
        };
        let mut out: Vec<(String, String)> = match self {
            Ours::Gateway { listeners, .. } => listeners
                .iter()
                .flat_map(|l| {
                    unresolved(&l.conditions)
                        .into_iter()
                        .map(|(r, m)| (r, format!("listener {}: {m}", l.name)))
                })
                .collect(),
            Ours::Route { parents } => parents
                .iter()
                .flat_map(|p| unresolved(&p.conditions))
                .collect(),
            Ours::GatewayClass { .. } | Ours::Ingress { .. } => Vec::new(),
        };
        out.sort();
        out.dedup();
        out
    }
}

/// Translator warnings (objects with no status field) as problems to report.
pub fn warning_problem(w: &Warning) -> (ObjectRef, String, String) {
    (
        w.object.clone(),
        "InvalidConfiguration".into(),
        w.message.clone(),
    )
}

fn parent_ref_json(p: &ParentRefStatus) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put("group", p.group.clone().map(Value::from));
    put("kind", p.kind.clone().map(Value::from));
    put("namespace", p.namespace.clone().map(Value::from));
    put("name", Some(Value::from(p.name.clone())));
    put("sectionName", p.section_name.clone().map(Value::from));
    put("port", p.port.map(Value::from));
    Value::Object(m)
}

/// pier's conditions with stable transition times; only pier's types are
/// applied, so other managers' conditions stay theirs.
fn merged_conditions(existing: &[Value], ours: &[Condition], now: &Time) -> Vec<Value> {
    let existing: Vec<K8sCondition> = existing
        .iter()
        .filter_map(|c| serde_json::from_value(c.clone()).ok())
        .collect();
    merge_conditions(&existing, ours, now)
        .into_iter()
        .filter(|c| ours.iter().any(|o| o.type_ == c.type_))
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time("2026-01-01T00:00:00Z".parse().unwrap())
    }

    fn route(parents: Vec<RouteParentStatus>) -> Ours {
        Ours::Route { parents }
    }

    fn pier_parent(name: &str, generation: i64) -> RouteParentStatus {
        RouteParentStatus {
            parent_ref: ParentRefStatus {
                name: name.into(),
                ..Default::default()
            },
            controller_name: GATEWAY_CONTROLLER_NAME.into(),
            conditions: vec![
                Condition::new("Accepted", true, "Accepted", "ok").at(Some(generation))
            ],
        }
    }

    #[test]
    fn route_parents_keep_other_controllers_and_compare_with_defaults() {
        let foreign = json!({
            "parentRef": {"group": GATEWAY_GROUP, "kind": "Gateway", "name": "theirs"},
            "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}],
        });
        let ours = route(vec![pier_parent("gw", 1)]);
        let status = json!({"parents": [foreign.clone()]});
        assert!(!ours.is_current(&status));
        let applied = ours.apply_status(&status, &now());
        let parents = applied["parents"].as_array().unwrap();
        assert_eq!(parents.len(), 2);
        assert_eq!(
            parents[0], foreign,
            "the other controller's entry is untouched"
        );
        // The API server defaults group and kind; still current.
        let mut stored = applied.clone();
        stored["parents"][1]["parentRef"]["group"] = json!(GATEWAY_GROUP);
        stored["parents"][1]["parentRef"]["kind"] = json!("Gateway");
        assert!(ours.is_current(&stored));
        // A new generation is a change; the transition time stays.
        let next = route(vec![pier_parent("gw", 2)]);
        assert!(!next.is_current(&stored));
        let later = Time("2027-01-01T00:00:00Z".parse().unwrap());
        let again = next.apply_status(&stored, &later);
        assert_eq!(
            again["parents"][1]["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn published_addresses_prefer_load_balancer_then_external_then_cluster_ip() {
        let mut svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"]},
        }))
        .unwrap();
        assert_eq!(
            published_addresses(&svc),
            vec![Address::Ip("10.0.0.1".into())]
        );
        svc.spec.as_mut().unwrap().external_ips = Some(vec!["192.0.2.1".into()]);
        assert_eq!(
            published_addresses(&svc),
            vec![Address::Ip("192.0.2.1".into())]
        );
        svc.status = serde_json::from_value(
            json!({"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}),
        )
        .unwrap();
        assert_eq!(
            published_addresses(&svc),
            vec![Address::Hostname("lb.example".into())]
        );
    }

    #[test]
    fn gateway_class_features_are_sorted_and_compared() {
        let ours = Ours::GatewayClass {
            conditions: vec![Condition::new("Accepted", true, "Accepted", "x").at(Some(1))],
            features: supported_features(),
        };
        let applied = ours.apply_status(&Value::Null, &now());
        let names: Vec<&str> = applied["supportedFeatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(ours.is_current(&applied));
    }
}
