//! GatewayClasses and Gateways: listener validation, conflicts, certificates,
//! then route attachment for every route kind, then Gateway status.

use crate::hostnames;
use crate::index::{name, namespace, Index};
use crate::refs::{grant_allows, From, GATEWAY_GROUP};
use crate::routes::{seniority, ListenerBuilder};
use crate::status::{
    Condition, ListenerStatus, ObjectRef, ParentRefStatus, RouteParentStatus, StatusPatch,
    StatusUpdate,
};
use crate::{Translation, GATEWAY_CONTROLLER_NAME};
use gateway_api::experimental::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From_,
    GatewayListenersTlsMode,
};
use pier_snapshot::{Certificate, PortProtocol, PrivateKeyPem, SniAction};
use std::collections::BTreeMap;

/// A listener after validation, ready for routes to attach to.
pub(crate) struct ListenerInfo {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub port_protocol: PortProtocol,
    pub hostname: Option<String>,
    /// Accepted, not conflicted, with usable TLS where TLS is needed.
    pub usable: bool,
    pub passthrough: bool,
    pub certificates: Vec<String>,
    pub supported_kinds: Vec<String>,
    namespaces: NamespacePolicy,
    pub attached: i32,
    conditions: Vec<Condition>,
}

enum NamespacePolicy {
    Same,
    All,
    Selector(crate::http::LabelSelector),
    None,
}

pub(crate) struct GatewayInfo<'a> {
    pub gateway: &'a Gateway,
    pub namespace: &'a str,
    pub name: &'a str,
    pub listeners: Vec<ListenerInfo>,
}

fn kinds_for(protocol: &str) -> &'static [&'static str] {
    match protocol {
        "HTTP" | "HTTPS" => &["HTTPRoute", "GRPCRoute"],
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        "UDP" => &["UDPRoute"],
        _ => &[],
    }
}

fn port_protocol(protocol: &str) -> Option<PortProtocol> {
    match protocol {
        "HTTP" => Some(PortProtocol::Http),
        "HTTPS" | "TLS" => Some(PortProtocol::Tls),
        "TCP" => Some(PortProtocol::Tcp),
        "UDP" => Some(PortProtocol::Udp),
        _ => None,
    }
}

pub(crate) fn translate_gateways(
    index: &Index<'_>,
    builder: &mut ListenerBuilder,
    out: &mut Translation,
) {
    // GatewayClasses: status only for ours.
    let mut accepted_classes = Vec::new();
    for class in &index.state.gateway_classes {
        if class.spec.controller_name != GATEWAY_CONTROLLER_NAME {
            continue;
        }
        let generation = class.metadata.generation;
        let condition = match &class.spec.parameters_ref {
            Some(p) => Condition::new(
                "Accepted",
                false,
                "InvalidParameters",
                format!(
                    "parametersRef {}/{} {} is not supported by pier",
                    p.group, p.kind, p.name
                ),
            ),
            None => {
                accepted_classes.push(name(&class.metadata));
                Condition::new("Accepted", true, "Accepted", "handled by pier")
            }
        };
        out.statuses.push(StatusUpdate {
            target: ObjectRef::new("GatewayClass", None, name(&class.metadata)),
            patch: StatusPatch::GatewayClass {
                conditions: vec![condition.at(generation)],
            },
        });
    }

    let mut gateways: Vec<&Gateway> = index
        .state
        .gateways
        .iter()
        .filter(|g| accepted_classes.contains(&g.spec.gateway_class_name.as_str()))
        .collect();
    gateways.sort_by_key(|g| {
        seniority(
            g.metadata.creation_timestamp.as_ref(),
            format!("{}/{}", namespace(&g.metadata), name(&g.metadata)),
        )
    });

    let mut infos: Vec<GatewayInfo<'_>> = gateways
        .into_iter()
        .map(|g| build_gateway(index, g, builder, out))
        .collect();

    crate::http::attach_http_routes(index, &mut infos, builder, out);
    crate::l4routes::attach_l4_routes(index, &mut infos, builder, out);

    for info in infos {
        out.statuses.push(gateway_status(&info));
    }
}

fn build_gateway<'a>(
    index: &Index<'_>,
    gateway: &'a Gateway,
    builder: &mut ListenerBuilder,
    out: &mut Translation,
) -> GatewayInfo<'a> {
    let ns = namespace(&gateway.metadata);
    let gw_name = name(&gateway.metadata);
    let generation = gateway.metadata.generation;
    let mut listeners: Vec<ListenerInfo> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| validate_listener(index, ns, l, generation, out))
        .collect();

    // Conflicts inside the Gateway: incompatible protocols on one port, or
    // the same hostname twice on one port.
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if port_protocol(&l.protocol).is_some() {
            by_port.entry(l.port).or_default().push(i);
        }
    }
    for members in by_port.values() {
        let protocols: Vec<PortProtocol> = members
            .iter()
            .map(|i| listeners[*i].port_protocol)
            .collect();
        let protocol_clash = protocols.iter().any(|a| {
            protocols
                .iter()
                .any(|b| a != b && (*a == PortProtocol::Udp) == (*b == PortProtocol::Udp))
        });
        for &i in members {
            let clash_host = members.iter().any(|&j| {
                j != i
                    && listeners[j].port_protocol == listeners[i].port_protocol
                    && listeners[j].hostname == listeners[i].hostname
            });
            let reason = if protocol_clash {
                Some("ProtocolConflict")
            } else if clash_host {
                Some("HostnameConflict")
            } else {
                None
            };
            let l = &mut listeners[i];
            if let Some(reason) = reason {
                l.usable = false;
                set(
                    &mut l.conditions,
                    Condition::new(
                        "Conflicted",
                        true,
                        reason,
                        format!(
                            "listener conflicts with another listener on port {}",
                            l.port
                        ),
                    ),
                );
            }
        }
    }

    // Conflicts with ports other Gateways (or Ingress) already hold.
    for l in listeners.iter_mut() {
        if !l.usable {
            continue;
        }
        if let Some(held) = builder.conflict(l.port, l.port_protocol) {
            l.usable = false;
            set(
                &mut l.conditions,
                Condition::new(
                    "Accepted",
                    false,
                    "PortUnavailable",
                    format!("port {} is already used for {held:?}", l.port),
                ),
            );
            continue;
        }
        builder.claim(
            l.port,
            l.port_protocol,
            format!("Gateway {ns}/{gw_name} listener={}", l.name),
        );
        let created = gateway.metadata.creation_timestamp.as_ref();
        if l.port_protocol == PortProtocol::Tls && !l.passthrough {
            let host = l.hostname.clone().unwrap_or_else(|| "*".into());
            let certificates = l.certificates.clone();
            if l.protocol == "HTTPS" {
                builder.add_sni(
                    l.port,
                    &host,
                    seniority(created, format!("{ns}/{gw_name}/{}", l.name)),
                    SniAction::TerminateHttp { certificates },
                );
            }
        }
    }
    for l in listeners.iter_mut() {
        let programmed = l.usable;
        set(
            &mut l.conditions,
            Condition::new(
                "Programmed",
                programmed,
                if programmed { "Programmed" } else { "Invalid" },
                if programmed {
                    "listener is serving"
                } else {
                    "listener is not serving, see the other conditions"
                },
            ),
        );
        if !l.conditions.iter().any(|c| c.type_ == "Conflicted") {
            set(
                &mut l.conditions,
                Condition::new("Conflicted", false, "NoConflicts", "no conflicts"),
            );
        }
        for c in l.conditions.iter_mut() {
            c.observed_generation = generation;
        }
    }
    GatewayInfo {
        gateway,
        namespace: ns,
        name: gw_name,
        listeners,
    }
}

/// Replaces a condition of the same type, or appends.
pub(crate) fn set(conditions: &mut Vec<Condition>, condition: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(c) => *c = condition,
        None => conditions.push(condition),
    }
}

fn validate_listener(
    index: &Index<'_>,
    ns: &str,
    l: &GatewayListeners,
    generation: Option<i64>,
    out: &mut Translation,
) -> ListenerInfo {
    let mut conditions = Vec::new();
    let mut usable = true;
    let port_proto = port_protocol(&l.protocol);
    let accepted = match (port_proto, u16::try_from(l.port).ok().filter(|p| *p > 0)) {
        (None, _) => {
            usable = false;
            Condition::new(
                "Accepted",
                false,
                "UnsupportedProtocol",
                format!(
                    "protocol {:?} is not supported (HTTP, HTTPS, TLS, TCP, UDP are)",
                    l.protocol
                ),
            )
        }
        (_, None) => {
            usable = false;
            Condition::new(
                "Accepted",
                false,
                "UnsupportedValue",
                format!("port {} is out of range", l.port),
            )
        }
        _ => Condition::new("Accepted", true, "Accepted", "listener accepted"),
    };
    conditions.push(accepted);
    let hostname = l.hostname.clone().filter(|h| !h.is_empty());
    if let Some(h) = &hostname {
        if !hostnames::valid(h) {
            usable = false;
            set(
                &mut conditions,
                Condition::new(
                    "Accepted",
                    false,
                    "UnsupportedValue",
                    format!("hostname {h:?} is not a valid DNS name"),
                ),
            );
        }
    }

    // Route kinds.
    let defaults = kinds_for(&l.protocol);
    let mut resolved = Condition::new(
        "ResolvedRefs",
        true,
        "ResolvedRefs",
        "all references resolved",
    );
    let supported_kinds: Vec<String> =
        match l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref()) {
            Some(kinds) if !kinds.is_empty() => {
                let mut ok = Vec::new();
                for k in kinds {
                    let group = k.group.as_deref().unwrap_or(GATEWAY_GROUP);
                    if group == GATEWAY_GROUP && defaults.contains(&k.kind.as_str()) {
                        ok.push(k.kind.clone());
                    } else {
                        resolved = Condition::new(
                            "ResolvedRefs",
                            false,
                            "InvalidRouteKinds",
                            format!(
                                "route kind {group}/{} is not supported on a {} listener",
                                k.kind, l.protocol
                            ),
                        );
                    }
                }
                ok.dedup();
                ok
            }
            _ => defaults.iter().map(|k| k.to_string()).collect(),
        };

    // TLS.
    let mut passthrough = false;
    let mut certificates = Vec::new();
    let tls = l.tls.as_ref();
    match l.protocol.as_str() {
        "HTTPS" | "TLS" => {
            let mode = tls
                .and_then(|t| t.mode.clone())
                .unwrap_or(GatewayListenersTlsMode::Terminate);
            passthrough = mode == GatewayListenersTlsMode::Passthrough;
            if passthrough && l.protocol == "HTTPS" {
                usable = false;
                set(
                    &mut conditions,
                    Condition::new(
                        "Accepted",
                        false,
                        "UnsupportedValue",
                        "HTTPS listeners terminate TLS; use protocol TLS for Passthrough",
                    ),
                );
            }
            if !passthrough {
                let refs = tls
                    .and_then(|t| t.certificate_refs.as_deref())
                    .unwrap_or_default();
                if refs.is_empty() {
                    usable = false;
                    resolved = Condition::new(
                        "ResolvedRefs",
                        false,
                        "InvalidCertificateRef",
                        "TLS termination needs at least one certificateRef",
                    );
                }
                for r in refs {
                    match resolve_certificate(
                        index,
                        ns,
                        r.group.as_deref(),
                        r.kind.as_deref(),
                        r.namespace.as_deref(),
                        &r.name,
                        out,
                    ) {
                        Ok(key) => certificates.push(key),
                        Err((reason, message)) => {
                            resolved = Condition::new("ResolvedRefs", false, reason, message)
                        }
                    }
                }
                if certificates.is_empty() {
                    usable = false;
                }
            }
        }
        _ => {}
    }
    conditions.push(resolved);

    let namespaces = match l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    {
        None => NamespacePolicy::Same,
        Some(n) => match n.from.clone().unwrap_or(From_::Same) {
            From_::Same => NamespacePolicy::Same,
            From_::All => NamespacePolicy::All,
            From_::Selector => match n.selector.as_ref() {
                Some(sel) => match crate::http::LabelSelector::new(
                    sel.match_labels.clone().unwrap_or_default(),
                    sel.match_expressions
                        .iter()
                        .flatten()
                        .map(|e| {
                            (
                                e.key.clone(),
                                e.operator.clone(),
                                e.values.clone().unwrap_or_default(),
                            )
                        })
                        .collect(),
                ) {
                    Ok(s) => NamespacePolicy::Selector(s),
                    Err(e) => {
                        usable = false;
                        set(
                            &mut conditions,
                            Condition::new("Accepted", false, "UnsupportedValue", e),
                        );
                        NamespacePolicy::None
                    }
                },
                None => NamespacePolicy::None,
            },
        },
    };
    let _ = generation;
    ListenerInfo {
        name: l.name.clone(),
        port: u16::try_from(l.port).unwrap_or(0),
        protocol: l.protocol.clone(),
        port_protocol: port_proto.unwrap_or(PortProtocol::Tcp),
        hostname,
        usable,
        passthrough,
        certificates,
        supported_kinds,
        namespaces,
        attached: 0,
        conditions,
    }
}

/// Resolves a listener certificateRef to a key of `Snapshot::certificates`,
/// adding the certificate to the snapshot. The key material is checked for
/// PEM shape here; the proxy parses it and rejects what rustls cannot load.
fn resolve_certificate(
    index: &Index<'_>,
    gateway_ns: &str,
    group: Option<&str>,
    kind: Option<&str>,
    ref_ns: Option<&str>,
    secret_name: &str,
    out: &mut Translation,
) -> Result<String, (&'static str, String)> {
    let group = group.unwrap_or("");
    let kind = kind.unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err((
            "InvalidCertificateRef",
            format!("certificateRef {group}/{kind} {secret_name}: only core Secrets are supported"),
        ));
    }
    let ns = ref_ns.unwrap_or(gateway_ns);
    let from = From {
        group: GATEWAY_GROUP,
        kind: "Gateway",
        namespace: gateway_ns,
    };
    if !grant_allows(index, &from, "", "Secret", ns, secret_name) {
        return Err(("RefNotPermitted", format!("no ReferenceGrant in namespace {ns} allows Gateways from {gateway_ns} to Secret {secret_name}")));
    }
    certificate_from_secret(index, ns, secret_name, out).map_err(|m| ("InvalidCertificateRef", m))
}

/// Reads a `kubernetes.io/tls` Secret into the snapshot; returns its key.
pub(crate) fn certificate_from_secret(
    index: &Index<'_>,
    ns: &str,
    secret_name: &str,
    out: &mut Translation,
) -> Result<String, String> {
    let Some(secret) = index.secrets.get(&(ns, secret_name)) else {
        return Err(format!("Secret {ns}/{secret_name} not found"));
    };
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != "kubernetes.io/tls" {
        return Err(format!(
            "Secret {ns}/{secret_name} is of type {type_}, not kubernetes.io/tls"
        ));
    }
    let field = |k: &str| -> Option<String> {
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone());
        let string = secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|s| s.clone().into_bytes());
        data.or(string).and_then(|b| String::from_utf8(b).ok())
    };
    let (Some(chain), Some(key)) = (field("tls.crt"), field("tls.key")) else {
        return Err(format!(
            "Secret {ns}/{secret_name} lacks tls.crt or tls.key"
        ));
    };
    if !chain.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "Secret {ns}/{secret_name}: tls.crt holds no PEM certificate"
        ));
    }
    if !key.contains("PRIVATE KEY-----") {
        return Err(format!(
            "Secret {ns}/{secret_name}: tls.key holds no PEM private key"
        ));
    }
    let cert_key = format!("{ns}/{secret_name}");
    out.snapshot.certificates.data.insert(
        cert_key.clone(),
        Certificate {
            chain_pem: chain,
            private_key_pem: PrivateKeyPem(key),
        },
    );
    Ok(cert_key)
}

impl ListenerInfo {
    /// Whether a route of `kind` in `route_ns` may attach, and if not why.
    pub fn admits(&self, index: &Index<'_>, gateway_ns: &str, kind: &str, route_ns: &str) -> bool {
        if !self.supported_kinds.iter().any(|k| k == kind) {
            return false;
        }
        match &self.namespaces {
            NamespacePolicy::Same => route_ns == gateway_ns,
            NamespacePolicy::All => true,
            NamespacePolicy::Selector(sel) => sel.matches(&index.labels_of_namespace(route_ns)),
            NamespacePolicy::None => false,
        }
    }
}

/// A route's view of where it wants to attach, and what the spec says about it.
pub(crate) struct Attachment {
    pub parent: ParentRefStatus,
    /// (gateway index, listener index, hostnames served there), usable listeners only.
    pub listeners: Vec<(usize, usize, Vec<String>)>,
    /// Every listener the route attaches to, usable or not: attachedRoutes
    /// depends only on allowedRoutes, hostnames and parentRefs (spec).
    pub counted: Vec<(usize, usize)>,
    pub refusal: Option<Condition>,
}

/// Resolves each parentRef of a route against pier's Gateways. ParentRefs to
/// objects pier does not own get no entry at all (another controller writes those).
pub(crate) fn attach(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    kind: &str,
    route_ns: &str,
    hostnames: &[String],
    parent_refs: Vec<ParentRefStatus>,
) -> Vec<Attachment> {
    let mut out = Vec::new();
    for parent in parent_refs {
        if parent.group.as_deref().unwrap_or(GATEWAY_GROUP) != GATEWAY_GROUP
            || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gw_ns = parent
            .namespace
            .clone()
            .unwrap_or_else(|| route_ns.to_string());
        let Some(gi) = gateways
            .iter()
            .position(|g| g.namespace == gw_ns && g.name == parent.name)
        else {
            continue;
        };
        let gateway = &gateways[gi];
        let candidates: Vec<usize> = gateway
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
            .filter(|(_, l)| parent.port.is_none_or(|p| i32::from(l.port) == p))
            .map(|(i, _)| i)
            .collect();
        let mut attachment = Attachment {
            parent,
            listeners: Vec::new(),
            counted: Vec::new(),
            refusal: None,
        };
        if candidates.is_empty() {
            attachment.refusal = Some(Condition::new(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener matches the parentRef's sectionName / port",
            ));
            out.push(attachment);
            continue;
        }
        let mut allowed_somewhere = false;
        for li in candidates {
            let l = &gateway.listeners[li];
            if !l.admits(index, gateway.namespace, kind, route_ns) {
                continue;
            }
            allowed_somewhere = true;
            let hosts = if matches!(kind, "TCPRoute" | "UDPRoute") {
                vec!["*".to_string()]
            } else {
                hostnames::intersect(l.hostname.as_deref(), hostnames)
            };
            if !hosts.is_empty() {
                attachment.counted.push((gi, li));
                if l.usable {
                    attachment.listeners.push((gi, li, hosts));
                }
            }
        }
        if attachment.counted.is_empty() {
            attachment.refusal = Some(if allowed_somewhere {
                Condition::new(
                    "Accepted",
                    false,
                    "NoMatchingListenerHostname",
                    "no listener hostname intersects the route's hostnames",
                )
            } else {
                Condition::new(
                    "Accepted",
                    false,
                    "NotAllowedByListeners",
                    format!("no listener allows a {kind} from namespace {route_ns}"),
                )
            });
        }
        out.push(attachment);
    }
    out
}

/// Counts an accepted route on every listener it attached to.
pub(crate) fn count_attached(gateways: &mut [GatewayInfo<'_>], attachments: &[Attachment]) {
    for a in attachments {
        for (g, l) in &a.counted {
            gateways[*g].listeners[*l].attached += 1;
        }
    }
}

/// Route status: one parent entry per attachment, with route-wide conditions added.
pub(crate) fn route_status(
    kind: &str,
    ns: &str,
    route_name: &str,
    generation: Option<i64>,
    attachments: &[Attachment],
    route_conditions: &[Condition],
) -> Option<StatusUpdate> {
    if attachments.is_empty() {
        return None;
    }
    let parents = attachments
        .iter()
        .map(|a| {
            let mut conditions = vec![a
                .refusal
                .clone()
                .unwrap_or_else(|| Condition::new("Accepted", true, "Accepted", "route accepted"))];
            for c in route_conditions {
                // A route-wide Accepted=False (all rules invalid) overrides attachment success.
                if c.type_ == "Accepted" && a.refusal.is_some() {
                    continue;
                }
                set(&mut conditions, c.clone());
            }
            if !conditions.iter().any(|c| c.type_ == "ResolvedRefs") {
                conditions.push(Condition::new(
                    "ResolvedRefs",
                    true,
                    "ResolvedRefs",
                    "all references resolved",
                ));
            }
            for c in &mut conditions {
                c.observed_generation = generation;
            }
            RouteParentStatus {
                parent_ref: a.parent.clone(),
                controller_name: GATEWAY_CONTROLLER_NAME.into(),
                conditions,
            }
        })
        .collect();
    Some(StatusUpdate {
        target: ObjectRef::new(kind, Some(ns), route_name),
        patch: StatusPatch::Route { parents },
    })
}

fn gateway_status(info: &GatewayInfo<'_>) -> StatusUpdate {
    let generation = info.gateway.metadata.generation;
    let total = info.listeners.len();
    let serving = info.listeners.iter().filter(|l| l.usable).count();
    let accepted_listeners = info
        .listeners
        .iter()
        .filter(|l| {
            l.conditions
                .iter()
                .any(|c| c.type_ == "Accepted" && c.is_true())
        })
        .count();
    // Accepted follows the listeners' own Accepted conditions; Programmed
    // follows whether anything can be served.
    let accepted = if serving == total {
        Condition::new("Accepted", true, "Accepted", "gateway accepted")
    } else if accepted_listeners > 0 {
        Condition::new(
            "Accepted",
            true,
            "ListenersNotValid",
            format!("{} of {total} listeners are not serving", total - serving),
        )
    } else {
        Condition::new(
            "Accepted",
            false,
            "ListenersNotValid",
            "no listener is valid",
        )
    };
    let programmed = if serving > 0 {
        Condition::new("Programmed", true, "Programmed", "gateway is serving")
    } else {
        Condition::new("Programmed", false, "Invalid", "no listener can be served")
    };
    StatusUpdate {
        target: ObjectRef::new("Gateway", Some(info.namespace), info.name),
        patch: StatusPatch::Gateway {
            conditions: vec![accepted.at(generation), programmed.at(generation)],
            listeners: info
                .listeners
                .iter()
                .map(|l| ListenerStatus {
                    name: l.name.clone(),
                    attached_routes: l.attached,
                    supported_kinds: l.supported_kinds.clone(),
                    conditions: l.conditions.clone(),
                })
                .collect(),
        },
    }
}
