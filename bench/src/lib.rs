//! Synthetic cluster states for benchmarks.

use gateway_api::experimental::{gatewayclasses::*, gateways::*, httproutes::*};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pier_translate::ClusterState;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        generation: Some(1),
        ..Default::default()
    }
}

/// One EndpointSlice for service `i` with `n` endpoints; `salt` varies the addresses.
pub fn slice(i: usize, n: usize, salt: u8) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some([("kubernetes.io/service-name".to_string(), format!("svc-{i}"))].into()),
            ..meta("bench", &format!("svc-{i}-abc"))
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        endpoints: (0..n)
            .map(|e| Endpoint {
                addresses: vec![format!(
                    "10.{}.{}.{}",
                    100 + (i >> 16) % 100,
                    (i >> 8) & 255,
                    (i + e * 7 + salt as usize) & 255
                )],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                zone: Some(format!("zone-{}", e % 3)),
                node_name: Some(format!("node-{}", e % 5)),
                ..Default::default()
            })
            .collect(),
    }
}

/// `services` Services (each with one slice of `endpoints` endpoints) and
/// `routes` HTTPRoutes (route `r` sends `/r` on host `h{r%50}.example.com` to service `r`).
pub fn cluster(services: usize, endpoints: usize, routes: usize) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 0..services {
        state.services.push(Service {
            metadata: meta("bench", &format!("svc-{i}")),
            spec: Some(ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", (i >> 8) & 255, i & 255)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        });
        state.endpoint_slices.push(slice(i, endpoints, 0));
    }
    state.gateway_classes.push(GatewayClass {
        metadata: ObjectMeta {
            name: Some("pier".into()),
            ..Default::default()
        },
        spec: GatewayClassSpec {
            controller_name: pier_translate::GATEWAY_CONTROLLER_NAME.into(),
            ..Default::default()
        },
        status: None,
    });
    state.gateways.push(Gateway {
        metadata: meta("bench", "gw"),
        spec: GatewaySpec {
            gateway_class_name: "pier".into(),
            listeners: vec![GatewayListeners {
                name: "http".into(),
                port: 80,
                protocol: "HTTP".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    });
    for r in 0..routes {
        state.http_routes.push(HttpRoute {
            metadata: meta("bench", &format!("route-{r}")),
            spec: HttpRouteSpec {
                hostnames: Some(vec![format!("h{}.example.com", r % 50)]),
                parent_refs: Some(vec![HttpRouteParentRefs {
                    name: "gw".into(),
                    ..Default::default()
                }]),
                rules: Some(vec![HttpRouteRules {
                    matches: Some(vec![HttpRouteRulesMatches {
                        path: Some(HttpRouteRulesMatchesPath {
                            r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                            value: Some(format!("/r{r}")),
                        }),
                        ..Default::default()
                    }]),
                    backend_refs: Some(vec![HttpRouteRulesBackendRefs {
                        name: format!("svc-{}", r % services.max(1)),
                        port: Some(80),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            status: None,
        });
    }
    state
}
