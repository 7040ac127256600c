//! Services and EndpointSlices → backend sets (per Service port) and L4 services.

use crate::index::{name, namespace, Index};
use crate::status::{ObjectRef, Warning};
use crate::Translation;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use pier_snapshot::{
    AppProtocol, BackendSet, Endpoint, HashOn, L4Protocol, L4Service, LoadBalancing,
    SessionAffinity,
};
use std::net::IpAddr;

/// Default sessionAffinity ClientIP timeout (Kubernetes: 3 hours).
const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// Service ports outside 1..=65535 are skipped (with a warning) everywhere.
pub(crate) fn valid_port(port: i32) -> bool {
    (1..=65_535).contains(&port)
}

pub fn backend_key(namespace: &str, service: &str, port: i32) -> String {
    format!("{namespace}/{service}:{port}")
}

fn service_ref(service: &Service) -> ObjectRef {
    ObjectRef::new(
        "Service",
        Some(namespace(&service.metadata)),
        name(&service.metadata),
    )
}

fn l4_protocol(p: &ServicePort) -> Option<L4Protocol> {
    match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Some(L4Protocol::Tcp),
        "UDP" => Some(L4Protocol::Udp),
        "SCTP" => Some(L4Protocol::Sctp),
        _ => None,
    }
}

fn protocol_name(p: L4Protocol) -> &'static str {
    match p {
        L4Protocol::Tcp => "TCP",
        L4Protocol::Udp => "UDP",
        L4Protocol::Sctp => "SCTP",
    }
}

fn app_protocol(p: &ServicePort) -> AppProtocol {
    match p
        .app_protocol
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("kubernetes.io/h2c" | "h2c" | "http2" | "grpc") => AppProtocol::H2c,
        Some("kubernetes.io/ws" | "ws") => AppProtocol::WebSocket,
        Some("https" | "kubernetes.io/https" | "tls" | "kubernetes.io/wss" | "wss") => {
            AppProtocol::Https
        }
        _ => AppProtocol::Http1,
    }
}

/// appProtocol values an HTTP route may send to: plain names (IANA style,
/// any case) and the `kubernetes.io/` ones pier speaks.
pub(crate) fn http_app_protocol_known(p: &str) -> bool {
    matches!(
        p.to_ascii_lowercase().as_str(),
        "http"
            | "https"
            | "h2c"
            | "http2"
            | "grpc"
            | "tls"
            | "ws"
            | "wss"
            | "kubernetes.io/h2c"
            | "kubernetes.io/ws"
            | "kubernetes.io/wss"
            | "kubernetes.io/https"
    )
}

/// The endpoints behind one Service port, from the Service's EndpointSlices.
///
/// The EndpointSlice port is matched by the Service port's name (and
/// protocol): that is how a named `targetPort` is resolved, possibly to a
/// different number in each slice. Duplicates across slices are removed.
pub fn endpoints_for_service(
    port: &ServicePort,
    slices: &[&EndpointSlice],
    warnings: &mut Vec<Warning>,
) -> Vec<Endpoint> {
    let want_name = port.name.as_deref().unwrap_or("");
    let want_protocol = port.protocol.as_deref().unwrap_or("TCP");
    let mut endpoints = Vec::new();
    for slice in slices {
        if slice.address_type == "FQDN" {
            continue;
        }
        let slice_port = slice.ports.as_ref().and_then(|ports| {
            ports.iter().find(|p| {
                p.name.as_deref().unwrap_or("") == want_name
                    && p.protocol.as_deref().unwrap_or("TCP") == want_protocol
            })
        });
        let Some(number) = slice_port.and_then(|p| p.port) else {
            if !slice.endpoints.is_empty() {
                warnings.push(Warning {
                    object: ObjectRef::new(
                        "EndpointSlice",
                        Some(namespace(&slice.metadata)),
                        name(&slice.metadata),
                    ),
                    message: format!(
                        "no port named {want_name:?} ({want_protocol}) for the Service port"
                    ),
                });
            }
            continue;
        };
        let Ok(number) = u16::try_from(number) else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            // Unset `ready` means ready; unset `serving` follows `ready` (EndpointSlice API).
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            for address in &ep.addresses {
                let Ok(address) = address.parse::<IpAddr>() else {
                    warnings.push(Warning {
                        object: ObjectRef::new(
                            "EndpointSlice",
                            Some(namespace(&slice.metadata)),
                            name(&slice.metadata),
                        ),
                        message: format!("endpoint address {address:?} is not an IP address"),
                    });
                    continue;
                };
                endpoints.push(Endpoint {
                    address,
                    port: number,
                    ready,
                    serving,
                    terminating,
                    zone: ep.zone.clone(),
                    node_name: ep.node_name.clone(),
                });
            }
        }
    }
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    endpoints
}

/// Annotation choosing the L7 load-balancing policy of a Service.
pub const LOAD_BALANCING_ANNOTATION: &str = "pier.dev/load-balancing";
/// For `consistent-hash`: `header:<name>`, `cookie:<name>` or `source-ip`.
pub const HASH_ON_ANNOTATION: &str = "pier.dev/hash-on";

fn load_balancing_of(service: &Service, warnings: &mut Vec<Warning>) -> LoadBalancing {
    let annotations = service.metadata.annotations.as_ref();
    let get = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .map(|v| v.trim().to_string())
    };
    let mut warn = |message: String| {
        warnings.push(Warning {
            object: service_ref(service),
            message,
        })
    };
    match get(LOAD_BALANCING_ANNOTATION).as_deref() {
        None | Some("least-request") => LoadBalancing::LeastRequest,
        Some("round-robin") => LoadBalancing::RoundRobin,
        Some("consistent-hash") => {
            let on = get(HASH_ON_ANNOTATION).unwrap_or_default();
            let hash_on = match on.split_once(':') {
                Some(("header", name)) if !name.is_empty() => {
                    Some(HashOn::Header(name.to_ascii_lowercase()))
                }
                Some(("cookie", name)) if !name.is_empty() => {
                    Some(HashOn::Cookie(name.to_string()))
                }
                None if on == "source-ip" => Some(HashOn::SourceIp),
                _ => None,
            };
            match hash_on {
                Some(h) => LoadBalancing::ConsistentHash(h),
                None => {
                    warn(format!("{HASH_ON_ANNOTATION} {on:?} is not header:<name>, cookie:<name> or source-ip; using least-request"));
                    LoadBalancing::LeastRequest
                }
            }
        }
        Some(other) => {
            warn(format!("{LOAD_BALANCING_ANNOTATION} {other:?} is not least-request, round-robin or consistent-hash; using least-request"));
            LoadBalancing::LeastRequest
        }
    }
}

/// The backend sets of one Service: one per port, keyed by [`backend_key`].
/// This is also the whole work of an endpoint-only update.
pub fn translate_service_backends(
    service: &Service,
    slices: &[&EndpointSlice],
    warnings: &mut Vec<Warning>,
) -> Vec<(String, BackendSet)> {
    let ns = namespace(&service.metadata);
    let svc_name = name(&service.metadata);
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let external_name = (spec.type_.as_deref() == Some("ExternalName"))
        .then(|| spec.external_name.clone())
        .flatten();
    let load_balancing = load_balancing_of(service, warnings);
    let mut out = Vec::new();
    for port in spec.ports.iter().flatten() {
        let Ok(number) = u16::try_from(port.port) else {
            continue;
        };
        if number == 0 {
            continue;
        }
        let endpoints = if external_name.is_some() {
            Vec::new()
        } else {
            endpoints_for_service(port, slices, warnings)
        };
        out.push((
            backend_key(ns, svc_name, port.port),
            BackendSet {
                protocol: app_protocol(port),
                external_name: external_name.clone(),
                port: number,
                endpoints,
                load_balancing: load_balancing.clone(),
            },
        ));
    }
    out
}

fn parse_ips(
    service: &Service,
    what: &str,
    values: &[String],
    warnings: &mut Vec<Warning>,
) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for value in values {
        if value.is_empty() || value == "None" {
            continue;
        }
        match value.parse() {
            Ok(ip) => ips.push(ip),
            Err(_) => warnings.push(Warning {
                object: service_ref(service),
                message: format!("{what} {value:?} is not an IP address"),
            }),
        }
    }
    ips.dedup();
    ips
}

pub(crate) fn translate_services(index: &Index<'_>, out: &mut Translation) {
    let no_slices = Vec::new();
    for service in &index.state.services {
        let ns = namespace(&service.metadata);
        let svc_name = name(&service.metadata);
        let slices = index.slices.get(&(ns, svc_name)).unwrap_or(&no_slices);
        for (key, set) in translate_service_backends(service, slices, &mut out.warnings) {
            out.snapshot.backends.data.insert(key, set);
        }
        translate_l4(service, out);
    }
}

fn translate_l4(service: &Service, out: &mut Translation) {
    let Some(spec) = service.spec.as_ref() else {
        return;
    };
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return;
    }
    let ns = namespace(&service.metadata);
    let svc_name = name(&service.metadata);
    let warnings = &mut out.warnings;
    let cluster_ips = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => parse_ips(service, "clusterIP", ips, warnings),
        (_, Some(ip)) => parse_ips(service, "clusterIP", std::slice::from_ref(ip), warnings),
        _ => Vec::new(),
    };
    let external_ips = parse_ips(
        service,
        "externalIP",
        spec.external_ips.as_deref().unwrap_or_default(),
        warnings,
    );
    let external = matches!(type_, "NodePort" | "LoadBalancer");
    let load_balancer_ips = if type_ == "LoadBalancer" {
        let ingress: Vec<String> = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone())
            .collect();
        parse_ips(service, "loadBalancer ingress IP", &ingress, warnings)
    } else {
        Vec::new()
    };
    let session_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
        SessionAffinity {
            timeout_seconds: timeout,
        }
    });
    let external_traffic_local =
        external && spec.external_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = (type_ == "LoadBalancer" && external_traffic_local)
        .then(|| {
            spec.health_check_node_port
                .and_then(|p| u16::try_from(p).ok())
        })
        .flatten();
    let prefer_close = matches!(
        spec.traffic_distribution.as_deref(),
        Some("PreferClose") | Some("PreferSameZone")
    );
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = l4_protocol(port) else {
            warnings.push(Warning {
                object: service_ref(service),
                message: format!("port {}: unknown protocol {:?}", port.port, port.protocol),
            });
            continue;
        };
        let Some(number) = u16::try_from(port.port).ok().filter(|p| *p > 0) else {
            warnings.push(Warning {
                object: service_ref(service),
                message: format!("port {} is out of range", port.port),
            });
            continue;
        };
        let node_port = if external && spec.allocate_load_balancer_node_ports != Some(false)
            || type_ == "NodePort"
        {
            port.node_port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
        } else {
            None
        };
        if cluster_ips.is_empty()
            && node_port.is_none()
            && external_ips.is_empty()
            && load_balancer_ips.is_empty()
        {
            continue; // headless: no virtual address to program
        }
        let key = format!("{ns}/{svc_name}:{}/{}", port.port, protocol_name(protocol));
        out.snapshot.services.data.insert(
            key,
            L4Service {
                namespace: ns.into(),
                name: svc_name.into(),
                port_name: port.name.clone().unwrap_or_default(),
                protocol,
                port: number,
                cluster_ips: cluster_ips.clone(),
                node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                session_affinity,
                external_traffic_local,
                internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
                prefer_close,
                health_check_node_port,
                backends: backend_key(ns, svc_name, port.port),
            },
        );
    }
}

/// The endpoint-only fast path: recomputes the backend sets of one Service
/// from its EndpointSlices and writes them into `snapshot`, bumping only the
/// `backends` version (and only if something changed). Routes, listeners and
/// L4 services are untouched, so data planes rebuild nothing but endpoints.
pub fn apply_endpoint_update(
    snapshot: &mut pier_snapshot::Snapshot,
    service: &Service,
    slices: &[&EndpointSlice],
    warnings: &mut Vec<Warning>,
) -> bool {
    let mut changed = false;
    for (key, set) in translate_service_backends(service, slices, warnings) {
        if snapshot.backends.data.get(&key) != Some(&set) {
            snapshot.backends.data.insert(key, set);
            changed = true;
        }
    }
    if changed {
        snapshot.backends.version += 1;
    }
    changed
}
