//! TLSRoute (by SNI), TCPRoute and UDPRoute (by port).

use crate::gateway::{attach, count_attached, route_status, set, GatewayInfo};
use crate::index::{name, namespace, Index};
use crate::refs::{resolve_backend, to_backend_ref, BackendRefView, From, RefError, GATEWAY_GROUP};
use crate::routes::{seniority, ListenerBuilder};
use crate::status::{Condition, ParentRefStatus};
use crate::Translation;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pier_snapshot::{L4Route, RouteSource, SniAction, WeightedBackend};

/// What every L4 route kind has in common.
struct L4RouteView<'a> {
    kind: &'static str,
    meta: &'a ObjectMeta,
    hostnames: Vec<String>,
    parents: Vec<ParentRefStatus>,
    /// Backend refs of every rule, with their weights (all rules share the port).
    backends: Vec<(BackendRefView<'a>, i32)>,
}

macro_rules! backend_views {
    ($rules:expr) => {
        $rules
            .iter()
            .flat_map(|r| r.backend_refs.iter())
            .map(|b| {
                (
                    BackendRefView {
                        group: b.group.as_deref(),
                        kind: b.kind.as_deref(),
                        name: &b.name,
                        namespace: b.namespace.as_deref(),
                        port: b.port,
                    },
                    b.weight.unwrap_or(1),
                )
            })
            .collect()
    };
}

macro_rules! parents {
    ($refs:expr) => {
        $refs
            .iter()
            .flatten()
            .map(|p| ParentRefStatus {
                group: p.group.clone(),
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            })
            .collect()
    };
}

pub(crate) fn attach_l4_routes(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    builder: &mut ListenerBuilder,
    out: &mut Translation,
) {
    let mut views = Vec::new();
    for r in &index.state.tls_routes {
        views.push(L4RouteView {
            kind: "TLSRoute",
            meta: &r.metadata,
            hostnames: r.spec.hostnames.clone(),
            parents: parents!(r.spec.parent_refs),
            backends: backend_views!(r.spec.rules),
        });
    }
    for r in &index.state.tcp_routes {
        views.push(L4RouteView {
            kind: "TCPRoute",
            meta: &r.metadata,
            hostnames: Vec::new(),
            parents: parents!(r.spec.parent_refs),
            backends: backend_views!(r.spec.rules),
        });
    }
    for r in &index.state.udp_routes {
        views.push(L4RouteView {
            kind: "UDPRoute",
            meta: &r.metadata,
            hostnames: Vec::new(),
            parents: parents!(r.spec.parent_refs),
            backends: backend_views!(r.spec.rules),
        });
    }
    for view in views {
        place_l4(index, gateways, builder, out, view);
    }
}

fn place_l4(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    builder: &mut ListenerBuilder,
    out: &mut Translation,
    view: L4RouteView<'_>,
) {
    let ns = namespace(view.meta);
    let route_name = name(view.meta);
    let attachments = attach(
        index,
        gateways,
        view.kind,
        ns,
        &view.hostnames,
        view.parents,
    );
    if attachments.is_empty() {
        return;
    }
    let from = From {
        group: GATEWAY_GROUP,
        kind: view.kind,
        namespace: ns,
    };
    let mut conditions = Vec::new();
    let mut unresolved: Option<RefError> = None;
    let mut backends = Vec::new();
    for (b, weight) in &view.backends {
        let resolved = resolve_backend(index, &from, b);
        if let Err(e) = &resolved {
            unresolved.get_or_insert(e.clone());
        }
        if let Ok(w) = u32::try_from((*weight).clamp(0, 1_000_000)) {
            if w > 0 {
                backends.push(WeightedBackend {
                    backend: to_backend_ref(&resolved),
                    weight: w,
                    filters: Vec::new(),
                });
            }
        }
    }
    if let Some(e) = unresolved {
        conditions.push(Condition::new("ResolvedRefs", false, e.reason, e.message));
    }
    if backends.is_empty() {
        set(
            &mut conditions,
            Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                "no backendRef with a positive weight",
            ),
        );
    } else {
        count_attached(gateways, &attachments);
        let route = L4Route {
            source: RouteSource {
                kind: view.kind.into(),
                namespace: ns.into(),
                name: route_name.into(),
                rule: 0,
                rule_name: None,
                match_index: 0,
            },
            backends,
        };
        let rank = seniority(
            view.meta.creation_timestamp.as_ref(),
            format!("{ns}/{route_name}"),
        );
        for a in &attachments {
            for (g, l, hosts) in &a.listeners {
                let listener = &gateways[*g].listeners[*l];
                if view.kind == "TLSRoute" {
                    for host in hosts {
                        let action = if listener.passthrough {
                            SniAction::Passthrough {
                                route: route.clone(),
                            }
                        } else {
                            SniAction::TerminateTcp {
                                certificates: listener.certificates.clone(),
                                route: route.clone(),
                            }
                        };
                        builder.add_sni(listener.port, host, rank.clone(), action);
                    }
                } else {
                    builder.set_l4(
                        listener.port,
                        listener.port_protocol,
                        rank.clone(),
                        route.clone(),
                    );
                }
            }
        }
    }
    if let Some(status) = route_status(
        view.kind,
        ns,
        route_name,
        view.meta.generation,
        &attachments,
        &conditions,
    ) {
        out.statuses.push(status);
    }
}
