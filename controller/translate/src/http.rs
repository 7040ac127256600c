//! HTTPRoute and GRPCRoute: rules compiled to route entries, attached to
//! listeners, with the status the spec asks for.

use crate::duration::parse_gateway_duration;
use crate::gateway::{attach, count_attached, route_status, set, GatewayInfo};
use crate::index::{name, namespace, Index};
use crate::precedence::PrecedenceKey;
use crate::refs::{resolve_backend, to_backend_ref, BackendRefView, From, RefError, GATEWAY_GROUP};
use crate::routes::ListenerBuilder;
use crate::status::{Condition, ParentRefStatus};
use crate::Translation;
use gateway_api::experimental::grpcroutes::{
    GrpcRouteRules, GrpcRouteRulesMatchesHeadersType, GrpcRouteRulesMatchesMethodType,
};
use gateway_api::experimental::httproutes::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pier_snapshot::{
    BackendRef, CorsPolicy, HeaderEdits, HttpFilter, HttpFilterRef, HttpRouteEntry, PathMatch,
    PathRewrite, Redirect, RequestMatch, RouteAction, RouteSource, Timeouts, UpstreamProtocol,
    ValueMatch, ValueMatchKind, WeightedBackend,
};
use std::collections::BTreeMap;

/// A Kubernetes label selector (matchLabels + matchExpressions).
pub(crate) struct LabelSelector {
    labels: BTreeMap<String, String>,
    expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    pub fn new(
        labels: BTreeMap<String, String>,
        expressions: Vec<(String, String, Vec<String>)>,
    ) -> Result<Self, String> {
        for (key, op, values) in &expressions {
            match op.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!("selector {key} {op} needs values"))
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                _ => {
                    return Err(format!(
                        "selector operator {op:?} is not one of In, NotIn, Exists, DoesNotExist"
                    ))
                }
            }
        }
        Ok(LabelSelector {
            labels,
            expressions,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self
                .expressions
                .iter()
                .all(|(k, op, values)| match op.as_str() {
                    "In" => labels.get(k).is_some_and(|v| values.contains(v)),
                    "NotIn" => labels.get(k).is_none_or(|v| !values.contains(v)),
                    "Exists" => labels.contains_key(k),
                    _ => !labels.contains_key(k),
                })
    }
}

/// One compiled rule match, ready to be placed in any virtual host.
#[derive(Clone)]
pub(crate) struct CompiledEntry {
    pub entry: HttpRouteEntry,
}

/// The outcome of compiling a route's rules.
#[derive(Default)]
pub(crate) struct CompiledRoute {
    pub entries: Vec<CompiledEntry>,
    /// Route-wide conditions: ResolvedRefs, PartiallyInvalid, or Accepted=False.
    pub conditions: Vec<Condition>,
}

#[derive(Default)]
struct RuleProblems {
    /// Make the rule invalid: it is dropped (PartiallyInvalid).
    invalid: Vec<String>,
    /// Filters that contradict each other (reason IncompatibleFilters).
    incompatible: bool,
    /// Features pier must not serve partially: the whole route is refused.
    fatal: Vec<String>,
    unresolved: Option<RefError>,
}

/// Normalises a path prefix: a trailing slash is ignored (`/foo/` ≡ `/foo`), per spec.
pub(crate) fn normalise_prefix(p: &str) -> String {
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

pub(crate) fn check_regex(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| {
        format!(
            "invalid regular expression {pattern:?}: {}",
            e.to_string().lines().last().unwrap_or("")
        )
    })
}

fn header_edits(
    set: Option<Vec<(String, String)>>,
    add: Option<Vec<(String, String)>>,
    remove: Option<Vec<String>>,
) -> HeaderEdits {
    HeaderEdits {
        set: set.unwrap_or_default(),
        add: add.unwrap_or_default(),
        remove: remove.unwrap_or_default(),
    }
}

/// Request and response header modifiers are distinct generated types with
/// the same fields.
macro_rules! edits_of {
    ($m:expr) => {
        header_edits(
            $m.set.as_ref().map(|v| {
                v.iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect()
            }),
            $m.add.as_ref().map(|v| {
                v.iter()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect()
            }),
            $m.remove.clone(),
        )
    };
}

fn path_rewrite(
    kind: &str,
    full: Option<&String>,
    prefix: Option<&String>,
    all_prefix: bool,
    problems: &mut RuleProblems,
) -> Option<PathRewrite> {
    match kind {
        "ReplaceFullPath" => match full {
            Some(p) => Some(PathRewrite::Full(p.clone())),
            None => {
                problems
                    .invalid
                    .push("ReplaceFullPath needs replaceFullPath".into());
                None
            }
        },
        _ => match prefix {
            Some(_) if !all_prefix => {
                problems.invalid.push(
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match"
                        .into(),
                );
                None
            }
            Some(p) => Some(PathRewrite::Prefix(p.clone())),
            None => {
                problems
                    .invalid
                    .push("ReplacePrefixMatch needs replacePrefixMatch".into());
                None
            }
        },
    }
}

/// What the filters of one rule amount to.
struct RuleFilters {
    filters: Vec<HttpFilter>,
    redirect: Option<Redirect>,
    respond: Option<(u16, String)>,
}

fn compile_filters(
    index: &Index<'_>,
    from: &From<'_>,
    filters: &[HttpRouteRulesFilters],
    all_prefix: bool,
    problems: &mut RuleProblems,
) -> RuleFilters {
    let mut out = RuleFilters {
        filters: Vec::new(),
        redirect: None,
        respond: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for f in filters {
        let type_name = serde_json::to_value(&f.r#type)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let repeatable = matches!(
            f.r#type,
            HttpRouteRulesFiltersType::RequestMirror | HttpRouteRulesFiltersType::ExtensionRef
        );
        if !repeatable && seen.contains(&type_name) {
            problems
                .invalid
                .push(format!("filter {type_name} appears more than once"));
        }
        seen.push(type_name.clone());
        let missing = |problems: &mut RuleProblems| {
            problems.invalid.push(format!(
                "filter {type_name} has no {type_name} configuration"
            ))
        };
        match f.r#type {
            HttpRouteRulesFiltersType::RequestHeaderModifier => match &f.request_header_modifier {
                Some(m) => out.filters.push(HttpFilter::RequestHeaders(edits_of!(m))),
                None => missing(problems),
            },
            HttpRouteRulesFiltersType::ResponseHeaderModifier => {
                match &f.response_header_modifier {
                    Some(m) => out.filters.push(HttpFilter::ResponseHeaders(edits_of!(m))),
                    None => missing(problems),
                }
            }
            HttpRouteRulesFiltersType::RequestRedirect => {
                match &f.request_redirect {
                    Some(r) => {
                        let status = r.status_code.unwrap_or(302);
                        if ![301, 302, 303, 307, 308].contains(&status) {
                            problems.invalid.push(format!(
                                "redirect status {status} is not one of 301, 302, 303, 307, 308"
                            ));
                        }
                        let path = r.path.as_ref().and_then(|p| {
                        let kind = match p.r#type {
                            HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath => "ReplaceFullPath",
                            HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch => "ReplacePrefixMatch",
                        };
                        path_rewrite(kind, p.replace_full_path.as_ref(), p.replace_prefix_match.as_ref(), all_prefix, problems)
                    });
                        out.redirect = Some(Redirect {
                            scheme: r.scheme.as_ref().map(|s| match s {
                                HttpRouteRulesFiltersRequestRedirectScheme::Http => "http".into(),
                                HttpRouteRulesFiltersRequestRedirectScheme::Https => "https".into(),
                            }),
                            hostname: r.hostname.clone(),
                            port: r.port.and_then(|p| u16::try_from(p).ok()),
                            path,
                            status: u16::try_from(status).unwrap_or(302),
                        });
                    }
                    None => missing(problems),
                }
            }
            HttpRouteRulesFiltersType::UrlRewrite => match &f.url_rewrite {
                Some(r) => {
                    let path = r.path.as_ref().and_then(|p| {
                        let kind = match p.r#type {
                            HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath => {
                                "ReplaceFullPath"
                            }
                            HttpRouteRulesFiltersUrlRewritePathType::ReplacePrefixMatch => {
                                "ReplacePrefixMatch"
                            }
                        };
                        path_rewrite(
                            kind,
                            p.replace_full_path.as_ref(),
                            p.replace_prefix_match.as_ref(),
                            all_prefix,
                            problems,
                        )
                    });
                    out.filters.push(HttpFilter::UrlRewrite {
                        hostname: r.hostname.clone(),
                        path,
                    });
                }
                None => missing(problems),
            },
            HttpRouteRulesFiltersType::RequestMirror => match &f.request_mirror {
                Some(m) => {
                    let b = &m.backend_ref;
                    let view = BackendRefView {
                        group: b.group.as_deref(),
                        kind: b.kind.as_deref(),
                        name: &b.name,
                        namespace: b.namespace.as_deref(),
                        port: b.port,
                    };
                    let fraction_ppm = match (&m.fraction, m.percent) {
                        (Some(fr), _) => {
                            let den = i64::from(fr.denominator.unwrap_or(100).max(1));
                            (i64::from(fr.numerator.clamp(0, i32::MAX)) * 1_000_000 / den)
                                .clamp(0, 1_000_000)
                        }
                        (None, Some(p)) => i64::from(p.clamp(0, 100)) * 10_000,
                        (None, None) => 1_000_000,
                    };
                    match resolve_backend(index, from, &view) {
                        Ok(key) => out.filters.push(HttpFilter::Mirror {
                            backend: BackendRef::Service(key),
                            fraction_ppm: u32::try_from(fraction_ppm).unwrap_or(0),
                        }),
                        Err(e) => {
                            // The mirror is dropped; the rule still serves.
                            problems.unresolved.get_or_insert(e);
                        }
                    }
                }
                None => missing(problems),
            },
            HttpRouteRulesFiltersType::Cors => match &f.cors {
                Some(c) => out.filters.push(HttpFilter::Cors(CorsPolicy {
                    allow_origins: c.allow_origins.clone().unwrap_or_default(),
                    allow_methods: c.allow_methods.clone().unwrap_or_default(),
                    allow_headers: c.allow_headers.clone().unwrap_or_default(),
                    expose_headers: c.expose_headers.clone().unwrap_or_default(),
                    allow_credentials: c.allow_credentials.unwrap_or(false),
                    max_age_seconds: c.max_age.and_then(|a| u32::try_from(a).ok()),
                })),
                None => missing(problems),
            },
            HttpRouteRulesFiltersType::ExtensionRef => {
                // Never skip a filter we cannot run: its requests get an error instead.
                let what = f
                    .extension_ref
                    .as_ref()
                    .map(|e| format!("{}/{} {}", e.group, e.kind, e.name))
                    .unwrap_or_default();
                problems.unresolved.get_or_insert(RefError::new(
                    "InvalidKind",
                    format!("ExtensionRef {what} is not supported by pier"),
                ));
                out.respond = Some((500, format!("filter ExtensionRef {what} is not supported")));
            }
            HttpRouteRulesFiltersType::ExternalAuth => {
                // Serving the route without its authentication would open it:
                // refuse the whole route instead.
                problems
                    .fatal
                    .push("filter ExternalAuth is not supported yet".into());
            }
        }
    }
    if out.redirect.is_some()
        && out
            .filters
            .iter()
            .any(|f| matches!(f, HttpFilter::UrlRewrite { .. }))
    {
        problems
            .invalid
            .push("RequestRedirect and URLRewrite cannot be used together".into());
        problems.incompatible = true;
    }
    out
}

/// Backend-level filters: header edits only.
fn backend_filters(
    filters: Option<&Vec<HttpRouteRulesBackendRefsFilters>>,
    problems: &mut RuleProblems,
) -> Vec<HttpFilterRef> {
    let mut out = Vec::new();
    for f in filters.into_iter().flatten() {
        let v = serde_json::to_value(f).unwrap_or_default();
        let edits = |key: &str| -> Option<HeaderEdits> {
            let m = v.get(key)?;
            let pairs = |k: &str| -> Option<Vec<(String, String)>> {
                m.get(k)?.as_array().map(|a| {
                    a.iter()
                        .filter_map(|h| {
                            Some((
                                h.get("name")?.as_str()?.to_string(),
                                h.get("value")?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
            };
            let remove = m.get("remove").and_then(|r| r.as_array()).map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            });
            Some(header_edits(pairs("set"), pairs("add"), remove))
        };
        match v.get("type").and_then(|t| t.as_str()) {
            Some("RequestHeaderModifier") => {
                out.extend(edits("requestHeaderModifier").map(HttpFilterRef::RequestHeaders))
            }
            Some("ResponseHeaderModifier") => {
                out.extend(edits("responseHeaderModifier").map(HttpFilterRef::ResponseHeaders))
            }
            Some(other) => problems
                .invalid
                .push(format!("backendRef filter {other} is not supported")),
            None => {}
        }
    }
    out
}

fn compile_backends(
    index: &Index<'_>,
    from: &From<'_>,
    refs: &[HttpRouteRulesBackendRefs],
    problems: &mut RuleProblems,
) -> Vec<WeightedBackend> {
    let mut out = Vec::new();
    for r in refs {
        // Gateway API caps weights at 1,000,000; clamping keeps sums far from overflow.
        let weight = u32::try_from(r.weight.unwrap_or(1).clamp(0, 1_000_000)).unwrap_or(0);
        let view = BackendRefView {
            group: r.group.as_deref(),
            kind: r.kind.as_deref(),
            name: &r.name,
            namespace: r.namespace.as_deref(),
            port: r.port,
        };
        let resolved = resolve_backend(index, from, &view);
        if let Err(e) = &resolved {
            problems.unresolved.get_or_insert(e.clone());
        }
        let filters = backend_filters(r.filters.as_ref(), problems);
        if weight > 0 {
            out.push(WeightedBackend {
                backend: to_backend_ref(&resolved),
                weight,
                filters,
            });
        }
    }
    out
}

fn compile_timeouts(t: Option<&HttpRouteRulesTimeouts>, problems: &mut RuleProblems) -> Timeouts {
    let Some(t) = t else {
        return Timeouts::default();
    };
    let mut parse = |v: &Option<String>| match v.as_deref().map(parse_gateway_duration) {
        Some(Ok(ms)) => ms,
        Some(Err(e)) => {
            problems.invalid.push(e);
            None
        }
        None => None,
    };
    let timeouts = Timeouts {
        request_ms: parse(&t.request),
        backend_request_ms: parse(&t.backend_request),
    };
    if let (Some(req), Some(be)) = (timeouts.request_ms, timeouts.backend_request_ms) {
        if be > req {
            problems
                .invalid
                .push("timeouts.backendRequest must not exceed timeouts.request".into());
        }
    }
    timeouts
}

fn compile_match(m: &HttpRouteRulesMatches, problems: &mut RuleProblems) -> RequestMatch {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p
                .r#type
                .clone()
                .unwrap_or(HttpRouteRulesMatchesPathType::PathPrefix)
            {
                HttpRouteRulesMatchesPathType::Exact
                | HttpRouteRulesMatchesPathType::PathPrefix
                    if !value.starts_with('/') =>
                {
                    problems
                        .invalid
                        .push(format!("path {value:?} must start with /"));
                    PathMatch::Exact(value)
                }
                HttpRouteRulesMatchesPathType::Exact => PathMatch::Exact(value),
                HttpRouteRulesMatchesPathType::PathPrefix => {
                    PathMatch::Prefix(normalise_prefix(&value))
                }
                HttpRouteRulesMatchesPathType::RegularExpression => {
                    if let Err(e) = check_regex(&value) {
                        problems.invalid.push(e);
                    }
                    PathMatch::Regex(value)
                }
            }
        }
    };
    let mut headers: Vec<ValueMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        if headers.iter().any(|x| x.name == name) {
            continue; // first match of a repeated header name wins (spec)
        }
        let kind = match h.r#type {
            Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                if let Err(e) = check_regex(&h.value) {
                    problems.invalid.push(e);
                }
                ValueMatchKind::Regex
            }
            _ => ValueMatchKind::Exact,
        };
        headers.push(ValueMatch {
            name,
            kind,
            value: h.value.clone(),
        });
    }
    let mut query_params: Vec<ValueMatch> = Vec::new();
    for q in m.query_params.iter().flatten() {
        if query_params.iter().any(|x| x.name == q.name) {
            continue;
        }
        let kind = match q.r#type {
            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                if let Err(e) = check_regex(&q.value) {
                    problems.invalid.push(e);
                }
                ValueMatchKind::Regex
            }
            _ => ValueMatchKind::Exact,
        };
        query_params.push(ValueMatch {
            name: q.name.clone(),
            kind,
            value: q.value.clone(),
        });
    }
    let method = m
        .method
        .as_ref()
        .and_then(|x| serde_json::to_value(x).ok())
        .and_then(|v| v.as_str().map(String::from));
    RequestMatch {
        path,
        method,
        headers,
        query_params,
    }
}

/// One rule, prepared for [`compile_rules`]: name, matches, match problems,
/// filters, backendRefs, timeouts.
type PreparedRule<'r> = (
    Option<String>,
    Vec<RequestMatch>,
    Vec<RuleProblems>,
    &'r [HttpRouteRulesFilters],
    &'r [HttpRouteRulesBackendRefs],
    Option<&'r HttpRouteRulesTimeouts>,
);

/// Compiles the rules of one route (HTTPRoute, or GRPCRoute already mapped to HTTP shapes).
fn compile_rules(
    index: &Index<'_>,
    kind: &str,
    upstream: UpstreamProtocol,
    meta: &ObjectMeta,
    rules: &[PreparedRule<'_>],
) -> CompiledRoute {
    let ns = namespace(meta);
    let from = From {
        group: GATEWAY_GROUP,
        kind,
        namespace: ns,
    };
    let mut compiled = CompiledRoute::default();
    let mut invalid_rules = Vec::new();
    let mut incompatible = false;
    let mut fatal = Vec::new();
    let mut unresolved: Option<RefError> = None;
    for (ri, (rule_name, matches, match_problems, filters, backends, timeouts)) in
        rules.iter().enumerate()
    {
        let mut problems = RuleProblems {
            invalid: match_problems
                .iter()
                .flat_map(|p| p.invalid.clone())
                .collect(),
            ..Default::default()
        };
        let all_prefix = matches
            .iter()
            .all(|m| matches!(m.path, PathMatch::Prefix(_)));
        let rf = compile_filters(index, &from, filters, all_prefix, &mut problems);
        let forward = compile_backends(index, &from, backends, &mut problems);
        let timeouts = compile_timeouts(*timeouts, &mut problems);
        if let Some(e) = problems.unresolved.take() {
            unresolved.get_or_insert(e);
        }
        fatal.extend(problems.fatal.iter().map(|f| format!("rule {ri}: {f}")));
        if !problems.invalid.is_empty() {
            incompatible |= problems.incompatible;
            invalid_rules.push(format!("rule {ri}: {}", problems.invalid.join("; ")));
            continue;
        }
        let action = if let Some((status, reason)) = rf.respond.clone() {
            RouteAction::Respond { status, reason }
        } else if let Some(r) = rf.redirect.clone() {
            RouteAction::Redirect(r)
        } else if forward.is_empty() {
            RouteAction::Respond {
                status: 500,
                reason: "no backend to forward to".into(),
            }
        } else {
            RouteAction::Forward(forward)
        };
        for (mi, m) in matches.iter().enumerate() {
            compiled.entries.push(CompiledEntry {
                entry: HttpRouteEntry {
                    source: RouteSource {
                        kind: kind.into(),
                        namespace: ns.into(),
                        name: name(meta).into(),
                        rule: u32::try_from(ri).unwrap_or(u32::MAX),
                        rule_name: rule_name.clone(),
                        match_index: u32::try_from(mi).unwrap_or(u32::MAX),
                    },
                    matcher: m.clone(),
                    filters: rf.filters.clone(),
                    action: action.clone(),
                    timeouts: timeouts.clone(),
                    upstream,
                },
            });
        }
    }
    if let Some(e) = unresolved {
        compiled
            .conditions
            .push(Condition::new("ResolvedRefs", false, e.reason, e.message));
    }
    let reason = if incompatible {
        "IncompatibleFilters"
    } else {
        "UnsupportedValue"
    };
    if !fatal.is_empty() {
        compiled.entries.clear();
        compiled.conditions.push(Condition::new(
            "Accepted",
            false,
            "UnsupportedValue",
            fatal.join(" | "),
        ));
    } else if !invalid_rules.is_empty() {
        let message = invalid_rules.join(" | ");
        if compiled.entries.is_empty() {
            compiled
                .conditions
                .push(Condition::new("Accepted", false, reason, message));
        } else {
            compiled.conditions.push(Condition::new(
                "PartiallyInvalid",
                true,
                reason,
                format!("Dropped Rule(s): {message}"),
            ));
        }
    }
    compiled
}

fn parent_refs<T: serde::Serialize>(refs: Option<&Vec<T>>) -> Vec<ParentRefStatus> {
    refs.into_iter()
        .flatten()
        .filter_map(|r| {
            let v = serde_json::to_value(r).ok()?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
            Some(ParentRefStatus {
                group: s("group"),
                kind: s("kind"),
                namespace: s("namespace"),
                name: s("name")?,
                section_name: s("sectionName"),
                port: v
                    .get("port")
                    .and_then(|p| p.as_i64())
                    .and_then(|p| i32::try_from(p).ok()),
            })
        })
        .collect()
}

fn invalid_hostnames(hostnames: &[String]) -> Option<Condition> {
    let bad: Vec<&String> = hostnames
        .iter()
        .filter(|h| !crate::hostnames::valid(h))
        .collect();
    (!bad.is_empty()).then(|| {
        Condition::new(
            "Accepted",
            false,
            "UnsupportedValue",
            format!("invalid hostnames: {bad:?}"),
        )
    })
}

/// Places compiled entries on every listener the route attached to and writes its status.
#[allow(clippy::too_many_arguments)]
fn place(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    builder: &mut ListenerBuilder,
    out: &mut Translation,
    kind: &str,
    meta: &ObjectMeta,
    hostnames: &[String],
    parents: Vec<ParentRefStatus>,
    compile: impl FnOnce() -> CompiledRoute,
) {
    let ns = namespace(meta);
    let mut attachments = attach(index, gateways, kind, ns, hostnames, parents);
    if attachments.is_empty() {
        return;
    }
    let mut compiled = compile();
    if let Some(c) = invalid_hostnames(hostnames) {
        compiled.entries.clear();
        set(&mut compiled.conditions, c);
    }
    let accepted = !compiled
        .conditions
        .iter()
        .any(|c| c.type_ == "Accepted" && !c.is_true());
    if accepted {
        count_attached(gateways, &attachments);
    } else {
        // Not accepted: attached to nothing, counted nowhere.
        for a in &mut attachments {
            a.listeners.clear();
        }
    }
    for a in &attachments {
        for (g, l, hosts) in &a.listeners {
            let listener = &gateways[*g].listeners[*l];
            for host in hosts {
                for e in &compiled.entries {
                    let key = PrecedenceKey::new(
                        &e.entry.matcher,
                        meta.creation_timestamp.as_ref(),
                        &e.entry.source,
                        false,
                    );
                    builder.add_http(
                        listener.port,
                        listener.port_protocol,
                        host,
                        false,
                        key,
                        e.entry.clone(),
                    );
                }
            }
        }
    }
    if let Some(status) = route_status(
        kind,
        ns,
        name(meta),
        meta.generation,
        &attachments,
        &compiled.conditions,
    ) {
        out.statuses.push(status);
    }
}

pub(crate) fn attach_http_routes(
    index: &Index<'_>,
    gateways: &mut [GatewayInfo<'_>],
    builder: &mut ListenerBuilder,
    out: &mut Translation,
) {
    for route in &index.state.http_routes {
        let hostnames = route.spec.hostnames.clone().unwrap_or_default();
        let parents = parent_refs(route.spec.parent_refs.as_ref());
        place(
            index,
            gateways,
            builder,
            out,
            "HTTPRoute",
            &route.metadata,
            &hostnames,
            parents,
            || {
                let default_rule = vec![HttpRouteRules::default()];
                let rules = route
                    .spec
                    .rules
                    .as_ref()
                    .filter(|r| !r.is_empty())
                    .unwrap_or(&default_rule);
                let prepared: Vec<_> = rules
                    .iter()
                    .map(|r| {
                        let default_match = vec![HttpRouteRulesMatches::default()];
                        let ms = r
                            .matches
                            .as_ref()
                            .filter(|m| !m.is_empty())
                            .unwrap_or(&default_match);
                        let mut problems = RuleProblems::default();
                        let matches = ms.iter().map(|m| compile_match(m, &mut problems)).collect();
                        (
                            r.name.clone(),
                            matches,
                            vec![problems],
                            r.filters.as_deref().unwrap_or_default(),
                            r.backend_refs.as_deref().unwrap_or_default(),
                            r.timeouts.as_ref(),
                        )
                    })
                    .collect();
                compile_rules(
                    index,
                    "HTTPRoute",
                    UpstreamProtocol::FromBackend,
                    &route.metadata,
                    &prepared,
                )
            },
        );
    }
    for route in &index.state.grpc_routes {
        let hostnames = route.spec.hostnames.clone().unwrap_or_default();
        let parents = parent_refs(route.spec.parent_refs.as_ref());
        place(
            index,
            gateways,
            builder,
            out,
            "GRPCRoute",
            &route.metadata,
            &hostnames,
            parents,
            || {
                let default_rule = vec![GrpcRouteRules::default()];
                let rules = route
                    .spec
                    .rules
                    .as_ref()
                    .filter(|r| !r.is_empty())
                    .unwrap_or(&default_rule);
                // GRPCRoute filters and backendRefs have the HTTPRoute shapes minus some
                // fields: map them over once and share the HTTP compiler.
                let converted: Vec<(Vec<HttpRouteRulesFilters>, Vec<HttpRouteRulesBackendRefs>)> =
                    rules
                        .iter()
                        .map(|r| {
                            let f = serde_json::to_value(&r.filters)
                                .ok()
                                .and_then(|v| {
                                    serde_json::from_value::<Option<Vec<HttpRouteRulesFilters>>>(v)
                                        .ok()
                                })
                                .flatten()
                                .unwrap_or_default();
                            let b = serde_json::to_value(&r.backend_refs)
                                .ok()
                                .and_then(|v| {
                                    serde_json::from_value::<
                                            Option<Vec<HttpRouteRulesBackendRefs>>,
                                        >(v)
                                        .ok()
                                })
                                .flatten()
                                .unwrap_or_default();
                            (f, b)
                        })
                        .collect();
                let prepared: Vec<_> = rules
                    .iter()
                    .zip(&converted)
                    .map(|(r, (f, b))| {
                        let mut problems = RuleProblems::default();
                        let matches = match r.matches.as_ref().filter(|m| !m.is_empty()) {
                            None => vec![RequestMatch::default()],
                            Some(ms) => ms.iter().map(|m| grpc_match(m, &mut problems)).collect(),
                        };
                        (
                            r.name.clone(),
                            matches,
                            vec![problems],
                            f.as_slice(),
                            b.as_slice(),
                            None,
                        )
                    })
                    .collect();
                compile_rules(
                    index,
                    "GRPCRoute",
                    // gRPC needs HTTP/2 whatever the Service port's appProtocol says.
                    UpstreamProtocol::Http2,
                    &route.metadata,
                    &prepared,
                )
            },
        );
    }
}

/// A gRPC method match becomes a path match on `/<service>/<method>`.
fn grpc_match(
    m: &gateway_api::experimental::grpcroutes::GrpcRouteRulesMatches,
    problems: &mut RuleProblems,
) -> RequestMatch {
    let path = match &m.method {
        None => PathMatch::Prefix("/".into()),
        Some(method) => {
            let regex = method.r#type == Some(GrpcRouteRulesMatchesMethodType::RegularExpression);
            let service = method.service.as_deref().filter(|s| !s.is_empty());
            let name = method.method.as_deref().filter(|s| !s.is_empty());
            if regex {
                for part in [service, name].into_iter().flatten() {
                    if let Err(e) = check_regex(part) {
                        problems.invalid.push(e);
                    }
                }
                PathMatch::Regex(format!(
                    "/{}/{}",
                    service.unwrap_or("[^/]+"),
                    name.unwrap_or("[^/]+")
                ))
            } else {
                match (service, name) {
                    (Some(s), Some(n)) => PathMatch::Exact(format!("/{s}/{n}")),
                    (Some(s), None) => PathMatch::Prefix(format!("/{s}")),
                    (None, Some(n)) => PathMatch::Regex(format!("/[^/]+/{}", regex::escape(n))),
                    (None, None) => {
                        problems
                            .invalid
                            .push("a gRPC method match needs a service or a method".into());
                        PathMatch::Prefix("/".into())
                    }
                }
            }
        }
    };
    let mut headers: Vec<ValueMatch> = Vec::new();
    for h in m.headers.iter().flatten() {
        let name = h.name.to_ascii_lowercase();
        if headers.iter().any(|x| x.name == name) {
            continue;
        }
        let kind = if h.r#type == Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) {
            if let Err(e) = check_regex(&h.value) {
                problems.invalid.push(e);
            }
            ValueMatchKind::Regex
        } else {
            ValueMatchKind::Exact
        };
        headers.push(ValueMatch {
            name,
            kind,
            value: h.value.clone(),
        });
    }
    RequestMatch {
        path,
        method: None,
        headers,
        query_params: Vec::new(),
    }
}
