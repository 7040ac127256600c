//! Immutable, prebuilt L7 matchers built from a snapshot's listeners.
//!
//! [`RouteTable::build`] does all the work that does not depend on the
//! request (host maps, exact-path maps, a per-segment prefix map, compiled regexes), so
//! [`RouteTable::select`] does only lookups. [`RouteTable::explain`] runs the
//! same matcher and records why each candidate did or did not match, so
//! `pier-controller explain` never disagrees with the data plane.

mod hosts;

pub use hosts::HostMap;

use pier_snapshot::{
    HttpRouteEntry, PathMatch, PortProtocol, Snapshot, SniAction, ValueMatch, ValueMatchKind,
};
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

/// A snapshot the table cannot be built from (e.g. an invalid regex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// The parts of a request routing looks at.
#[derive(Clone)]
pub struct RequestInfo<'a> {
    pub port: u16,
    /// The TLS server name, for connections on a TLS port.
    pub sni: Option<&'a str>,
    /// Host header (or :authority), port part allowed.
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// Request headers (names case-insensitive).
    pub headers: &'a dyn HeaderLookup,
}

/// Read access to request headers without copying them.
pub trait HeaderLookup {
    /// Whether any value of header `name` (case-insensitive) satisfies `pred`.
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool;
}

impl HeaderLookup for [(String, String)] {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| pred(v))
    }
}

impl HeaderLookup for Vec<(String, String)> {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.as_slice().any_value(name, pred)
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection<'t> {
    Route(&'t Arc<HttpRouteEntry>),
    /// No listener on that port: nothing serves it.
    NoListener,
    /// TLS port, but no certificate entry for the SNI.
    UnknownSni,
    /// The Host does not belong to the listener the SNI chose (421).
    Misdirected,
    /// No virtual host or no route matched (404).
    NotFound,
}

struct CompiledEntry {
    entry: Arc<HttpRouteEntry>,
    path_regex: Option<Regex>,
    header_regexes: Vec<Option<Regex>>,
    query_regexes: Vec<Option<Regex>>,
}

/// One virtual host: entries in precedence order plus indexes into them.
struct VirtualHostTable {
    hostname: String,
    entries: Vec<CompiledEntry>,
    exact: HashMap<String, Vec<usize>>,
    /// Prefix → entries. Looked up once per segment boundary of the request
    /// path (a radix walk over segments): O(segments), no allocation.
    prefixes: HashMap<String, Vec<usize>>,
    regexes: Vec<usize>,
}

struct PortTable {
    protocol: PortProtocol,
    sni: HostMap<SniAction>,
    vhosts: HostMap<Arc<VirtualHostTable>>,
}

/// All HTTP-serving ports of a snapshot, ready for lookups.
pub struct RouteTable {
    ports: HashMap<u16, PortTable>,
}

fn compile_regex(pattern: &str, at: &str) -> Result<Regex, BuildError> {
    // Anchored: a regex path match must match the whole path.
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| BuildError(format!("{at}: invalid regex {pattern:?}: {e}")))
}

fn compile_values(values: &[ValueMatch], at: &str) -> Result<Vec<Option<Regex>>, BuildError> {
    values
        .iter()
        .map(|v| match v.kind {
            ValueMatchKind::Exact => Ok(None),
            ValueMatchKind::Regex => compile_regex(&v.value, at).map(Some),
        })
        .collect()
}

impl VirtualHostTable {
    fn build(hostname: &str, entries: &[HttpRouteEntry]) -> Result<Self, BuildError> {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut prefix_lists: HashMap<String, Vec<usize>> = HashMap::new();
        let mut regexes = Vec::new();
        let mut compiled = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let at = format!("host {hostname} {}", e.source);
            let path_regex = match &e.matcher.path {
                PathMatch::Exact(p) => {
                    exact.entry(p.clone()).or_default().push(i);
                    None
                }
                PathMatch::Prefix(p) => {
                    prefix_lists.entry(p.clone()).or_default().push(i);
                    None
                }
                PathMatch::Regex(r) => {
                    regexes.push(i);
                    Some(compile_regex(r, &at)?)
                }
            };
            compiled.push(CompiledEntry {
                entry: Arc::new(e.clone()),
                path_regex,
                header_regexes: compile_values(&e.matcher.headers, &at)?,
                query_regexes: compile_values(&e.matcher.query_params, &at)?,
            });
        }
        Ok(VirtualHostTable {
            hostname: hostname.into(),
            entries: compiled,
            exact,
            prefixes: prefix_lists,
            regexes,
        })
    }

    /// Indices of entries whose path matches, in precedence order.
    fn path_candidates(&self, path: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.exact.get(path).cloned().unwrap_or_default();
        // Whole segments only: `/foo` matches `/foo` and `/foo/...`, not `/foobar`.
        if let Some(list) = self.prefixes.get("/") {
            out.extend(list);
        }
        for (i, b) in path.bytes().enumerate().skip(1) {
            if b == b'/' {
                if let Some(list) = self.prefixes.get(&path[..i]) {
                    out.extend(list);
                }
            }
        }
        if path.len() > 1 {
            if let Some(list) = self.prefixes.get(path) {
                out.extend(list);
            }
        }
        for &i in &self.regexes {
            if self.entries[i]
                .path_regex
                .as_ref()
                .is_some_and(|r| r.is_match(path))
            {
                out.push(i);
            }
        }
        out.sort_unstable();
        out
    }
}

/// Why one entry did not match (None: it matched).
fn mismatch(c: &CompiledEntry, req: &RequestInfo<'_>) -> Option<String> {
    let m = &c.entry.matcher;
    if let Some(method) = &m.method {
        if !method.eq_ignore_ascii_case(req.method) {
            return Some(format!("method {} is not {method}", req.method));
        }
    }
    for (h, re) in m.headers.iter().zip(&c.header_regexes) {
        let ok = match re {
            None => req.headers.any_value(&h.name, &mut |v| v == h.value),
            Some(r) => req.headers.any_value(&h.name, &mut |v| r.is_match(v)),
        };
        if !ok {
            return Some(format!(
                "header {} does not match {:?} ({:?})",
                h.name, h.value, h.kind
            ));
        }
    }
    for (q, re) in m.query_params.iter().zip(&c.query_regexes) {
        // The first occurrence of a repeated parameter is the one matched.
        let value = req.query.and_then(|qs| {
            qs.split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .find(|(k, _)| *k == q.name)
                .map(|(_, v)| v)
        });
        let ok = match (value, re) {
            (None, _) => false,
            (Some(v), None) => v == q.value,
            (Some(v), Some(r)) => r.is_match(v),
        };
        if !ok {
            return Some(format!(
                "query parameter {} does not match {:?}",
                q.name, q.value
            ));
        }
    }
    None
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(h, _)| h)
}

impl RouteTable {
    pub fn build(snapshot: &Snapshot) -> Result<Self, BuildError> {
        let mut ports = HashMap::new();
        for listener in &snapshot.routes.data.listeners {
            if !matches!(listener.protocol, PortProtocol::Http | PortProtocol::Tls) {
                continue;
            }
            let mut vhosts = HostMap::default();
            for v in &listener.virtual_hosts {
                let table = Arc::new(VirtualHostTable::build(&v.hostname, &v.routes)?);
                vhosts.insert(&v.hostname, v.single_label_wildcard, table);
            }
            let mut sni = HostMap::default();
            for s in &listener.tls {
                sni.insert(&s.hostname, false, s.action.clone());
            }
            ports.insert(
                listener.port,
                PortTable {
                    protocol: listener.protocol,
                    sni,
                    vhosts,
                },
            );
        }
        Ok(RouteTable { ports })
    }

    /// Ports that serve HTTP (plain or over TLS).
    pub fn ports(&self) -> Vec<(u16, PortProtocol)> {
        let mut p: Vec<_> = self.ports.iter().map(|(k, v)| (*k, v.protocol)).collect();
        p.sort();
        p
    }

    pub fn select(&self, req: &RequestInfo<'_>) -> Selection<'_> {
        self.route(req, &mut None)
    }

    /// Routes `req` and returns a readable account of every step.
    pub fn explain(&self, req: &RequestInfo<'_>) -> (Selection<'_>, Vec<String>) {
        let mut trace = Some(Vec::new());
        let selection = self.route(req, &mut trace);
        (selection, trace.unwrap_or_default())
    }

    fn route<'t>(
        &'t self,
        req: &RequestInfo<'_>,
        trace: &mut Option<Vec<String>>,
    ) -> Selection<'t> {
        let mut say = |line: String| {
            if let Some(t) = trace.as_mut() {
                t.push(line);
            }
        };
        let Some(port) = self.ports.get(&req.port) else {
            say(format!("no HTTP or HTTPS listener on port {}", req.port));
            return Selection::NoListener;
        };
        let host = strip_port(req.host).to_ascii_lowercase();
        if port.protocol == PortProtocol::Tls {
            let sni = req.sni.unwrap_or("").to_ascii_lowercase();
            match port.sni.lookup(&sni) {
                Some((pattern, SniAction::TerminateHttp { certificates })) => {
                    say(format!("port {}: TLS, SNI {sni:?} selects listener hostname {pattern:?} (certificates {certificates:?})", req.port));
                    if !hosts::pattern_covers(pattern, &host) {
                        say(format!(
                            "Host {host:?} is not covered by {pattern:?}: 421 Misdirected Request"
                        ));
                        return Selection::Misdirected;
                    }
                }
                Some((pattern, _)) => {
                    say(format!("port {}: SNI {sni:?} matches {pattern:?}, which is TLS passthrough / TCP, not HTTP", req.port));
                    return Selection::UnknownSni;
                }
                None => {
                    say(format!("port {}: no certificate for SNI {sni:?}", req.port));
                    return Selection::UnknownSni;
                }
            }
        } else {
            say(format!("port {}: plain HTTP", req.port));
        }
        let Some((pattern, vhost)) = port.vhosts.lookup(&host) else {
            say(format!("no virtual host matches {host:?}: 404"));
            return Selection::NotFound;
        };
        say(format!(
            "Host {host:?} selects virtual host {pattern:?} ({} route entries)",
            vhost.entries.len()
        ));
        let candidates = vhost.path_candidates(req.path);
        if trace.is_some() {
            for (i, c) in vhost.entries.iter().enumerate() {
                if !candidates.contains(&i) {
                    trace.as_mut().unwrap().push(format!(
                        "  ✗ {}: path {:?} does not match {:?}",
                        c.entry.source, c.entry.matcher.path, req.path
                    ));
                }
            }
        }
        for i in candidates {
            let c = &vhost.entries[i];
            match mismatch(c, req) {
                None => {
                    if let Some(t) = trace.as_mut() {
                        t.push(format!(
                            "  ✓ {}: path {:?} matches; selected (first match in precedence order)",
                            c.entry.source, c.entry.matcher.path
                        ));
                    }
                    let _ = &vhost.hostname;
                    return Selection::Route(&c.entry);
                }
                Some(why) => {
                    if let Some(t) = trace.as_mut() {
                        t.push(format!("  ✗ {}: {why}", c.entry.source));
                    }
                }
            }
        }
        if let Some(t) = trace.as_mut() {
            t.push("no route entry matches: 404".into());
        }
        Selection::NotFound
    }
}

#[cfg(test)]
mod tests;
