//! Ingress (networking.k8s.io/v1) for `ingressClassName: pier`.
//!
//! Served on `ingress_http_port` and, for hosts listed under `tls`, on
//! `ingress_https_port`. pathType `ImplementationSpecific` means `Prefix` in
//! pier (whole path segments; a trailing slash is ignored). Wildcard hosts
//! match exactly one label, as the Ingress spec says.

use crate::gateway::certificate_from_secret;
use crate::http::normalise_prefix;
use crate::index::{name, namespace, Index};
use crate::precedence::PrecedenceKey;
use crate::routes::{seniority, ListenerBuilder};
use crate::services::backend_key;
use crate::status::{ObjectRef, Warning};
use crate::{ClusterState, TranslateOptions, Translation, INGRESS_CONTROLLER_NAME};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use pier_snapshot::{
    BackendRef, HttpRouteEntry, PathMatch, PortProtocol, RequestMatch, RouteAction, RouteSource,
    SniAction, Timeouts, UpstreamProtocol, WeightedBackend,
};

const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";
const LEGACY_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";

/// Whether pier serves this Ingress: its class (field, else the legacy
/// annotation, else the default IngressClass) names pier's controller, or
/// is `options.ingress_class` when no IngressClass object says otherwise.
/// The status writer uses the same rule.
pub fn ingress_is_ours(
    state: &ClusterState,
    options: &TranslateOptions,
    ingress: &Ingress,
) -> bool {
    let class_is_ours = |class: &str| match state
        .ingress_classes
        .iter()
        .find(|c| name(&c.metadata) == class)
    {
        Some(c) => {
            c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(INGRESS_CONTROLLER_NAME)
        }
        None => class == options.ingress_class,
    };
    let spec_class = ingress
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref());
    let legacy = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEGACY_CLASS_ANNOTATION))
        .map(String::as_str);
    match spec_class.or(legacy) {
        Some(class) => class_is_ours(class),
        None => state.ingress_classes.iter().any(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .map(String::as_str)
                == Some("true")
                && c.spec.as_ref().and_then(|s| s.controller.as_deref())
                    == Some(INGRESS_CONTROLLER_NAME)
        }),
    }
}

/// Whether an Ingress host pattern covers `host` (single-label wildcard).
fn ingress_host_covers(pattern: &str, host: &str) -> bool {
    if pattern == host {
        return true;
    }
    match (pattern.strip_prefix("*."), host.split_once('.')) {
        (Some(suffix), Some((first, rest))) => !first.is_empty() && first != "*" && rest == suffix,
        _ => false,
    }
}

fn resolve(index: &Index<'_>, ns: &str, backend: &IngressBackend) -> Result<String, String> {
    let Some(service) = &backend.service else {
        return Err("resource backends are not supported; use a Service backend".into());
    };
    let Some(svc) = index.services.get(&(ns, service.name.as_str())) else {
        return Err(format!("Service {ns}/{} not found", service.name));
    };
    let mut ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    ports.retain(|p| crate::services::valid_port(p.port));
    let port = service.port.as_ref();
    let number = match (
        port.and_then(|p| p.number),
        port.and_then(|p| p.name.as_deref()),
    ) {
        (Some(n), _) => ports
            .iter()
            .find(|p| p.port == n)
            .map(|p| p.port)
            .ok_or_else(|| format!("Service {ns}/{} has no port {n}", service.name))?,
        (None, Some(port_name)) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(port_name))
            .map(|p| p.port)
            .ok_or_else(|| {
                format!(
                    "Service {ns}/{} has no port named {port_name:?}",
                    service.name
                )
            })?,
        (None, None) => return Err(format!("backend Service {} has no port", service.name)),
    };
    Ok(backend_key(ns, &service.name, number))
}

fn action_for(
    index: &Index<'_>,
    ingress: &Ingress,
    backend: &IngressBackend,
    warnings: &mut Vec<Warning>,
) -> RouteAction {
    let ns = namespace(&ingress.metadata);
    match resolve(index, ns, backend) {
        Ok(key) => RouteAction::Forward(vec![WeightedBackend {
            backend: BackendRef::Service(key),
            weight: 1,
            filters: Vec::new(),
        }]),
        Err(message) => {
            warnings.push(Warning {
                object: ObjectRef::new("Ingress", Some(ns), name(&ingress.metadata)),
                message: message.clone(),
            });
            RouteAction::Respond {
                status: 503,
                reason: message,
            }
        }
    }
}

pub(crate) fn translate_ingresses(
    index: &Index<'_>,
    options: &TranslateOptions,
    builder: &mut ListenerBuilder,
    out: &mut Translation,
) {
    let mut ours: Vec<&Ingress> = index
        .state
        .ingresses
        .iter()
        .filter(|i| ingress_is_ours(index.state, options, i))
        .collect();
    if ours.is_empty() {
        return;
    }
    ours.sort_by_key(|i| {
        seniority(
            i.metadata.creation_timestamp.as_ref(),
            format!("{}/{}", namespace(&i.metadata), name(&i.metadata)),
        )
    });
    let http = options.ingress_http_port;
    let https = options.ingress_https_port;
    builder.claim(http, PortProtocol::Http, "Ingress".into());

    for ingress in ours {
        let ns = namespace(&ingress.metadata);
        let ing_name = name(&ingress.metadata);
        let me = || ObjectRef::new("Ingress", Some(ns), ing_name);
        let Some(spec) = ingress.spec.as_ref() else {
            continue;
        };
        let created = ingress.metadata.creation_timestamp.as_ref();
        let rank = seniority(created, format!("{ns}/{ing_name}"));

        // TLS: hosts this Ingress terminates on the HTTPS port.
        let mut tls_hosts: Vec<String> = Vec::new();
        for tls in spec.tls.iter().flatten() {
            let Some(secret) = tls.secret_name.as_deref() else {
                out.warnings.push(Warning {
                    object: me(),
                    message: "tls entry without secretName: pier has no default certificate".into(),
                });
                continue;
            };
            match certificate_from_secret(index, ns, secret, out) {
                Ok(cert) => {
                    builder.claim(https, PortProtocol::Tls, "Ingress".into());
                    let hosts = tls
                        .hosts
                        .clone()
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| vec!["*".into()]);
                    for host in hosts {
                        builder.add_sni(
                            https,
                            &host,
                            rank.clone(),
                            SniAction::TerminateHttp {
                                certificates: vec![cert.clone()],
                            },
                        );
                        tls_hosts.push(host);
                    }
                }
                Err(message) => out.warnings.push(Warning {
                    object: me(),
                    message,
                }),
            }
        }
        let ports_for = |host: &str| -> Vec<(u16, PortProtocol)> {
            let mut ports = vec![(http, PortProtocol::Http)];
            if tls_hosts
                .iter()
                .any(|t| t == "*" || ingress_host_covers(t, host))
            {
                ports.push((https, PortProtocol::Tls));
            }
            ports
        };

        let mut own_hosts: Vec<String> = Vec::new();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = rule
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "*".into());
            if host != "*" && !crate::hostnames::valid(&host) {
                out.warnings.push(Warning {
                    object: me(),
                    message: format!(
                        "rule {ri}: host {host:?} is not a valid DNS name; rule skipped"
                    ),
                });
                continue;
            }
            own_hosts.push(host.clone());
            for (pi, path) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let value = path.path.clone().unwrap_or_else(|| "/".into());
                if !value.starts_with('/') {
                    out.warnings.push(Warning {
                        object: me(),
                        message: format!("rule {ri} path {value:?} must start with /; skipped"),
                    });
                    continue;
                }
                let matcher_path = match path.path_type.as_str() {
                    "Exact" => PathMatch::Exact(value),
                    "Prefix" | "ImplementationSpecific" => {
                        PathMatch::Prefix(normalise_prefix(&value))
                    }
                    other => {
                        out.warnings.push(Warning { object: me(), message: format!("rule {ri} pathType {other:?} is not Exact, Prefix or ImplementationSpecific; skipped") });
                        continue;
                    }
                };
                let source = RouteSource {
                    kind: "Ingress".into(),
                    namespace: ns.into(),
                    name: ing_name.into(),
                    rule: ri as u32,
                    rule_name: None,
                    match_index: pi as u32,
                };
                let matcher = RequestMatch {
                    path: matcher_path,
                    ..Default::default()
                };
                let entry = HttpRouteEntry {
                    source,
                    matcher,
                    filters: Vec::new(),
                    action: action_for(index, ingress, &path.backend, &mut out.warnings),
                    timeouts: Timeouts::default(),
                    upstream: UpstreamProtocol::FromBackend,
                };
                for (port, protocol) in ports_for(&host) {
                    let key = PrecedenceKey::new(&entry.matcher, created, &entry.source, false);
                    builder.add_http(port, protocol, &host, true, key, entry.clone());
                }
            }
        }

        if let Some(default) = &spec.default_backend {
            let source = RouteSource {
                kind: "Ingress".into(),
                namespace: ns.into(),
                name: ing_name.into(),
                rule: u32::MAX,
                rule_name: Some("defaultBackend".into()),
                match_index: 0,
            };
            let entry = HttpRouteEntry {
                source,
                matcher: RequestMatch::default(),
                filters: Vec::new(),
                action: action_for(index, ingress, default, &mut out.warnings),
                timeouts: Timeouts::default(),
                upstream: UpstreamProtocol::FromBackend,
            };
            own_hosts.push("*".into());
            own_hosts.sort();
            own_hosts.dedup();
            for host in &own_hosts {
                for (port, protocol) in ports_for(host) {
                    let key = PrecedenceKey::new(&entry.matcher, created, &entry.source, true);
                    builder.add_http(port, protocol, host, true, key, entry.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ingress_host_covers as covers;

    #[test]
    fn ingress_wildcards_match_exactly_one_label() {
        assert!(covers("*.foo.com", "bar.foo.com"));
        assert!(!covers("*.foo.com", "baz.bar.foo.com"));
        assert!(!covers("*.foo.com", "foo.com"));
        assert!(covers("foo.com", "foo.com"));
    }
}
