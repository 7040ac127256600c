//! Immutable, prebuilt L7 matchers built from a snapshot's listeners.
//!
//! [`RouteTable::build`] does all the work that does not depend on the
//! request (host maps, exact-path maps, a per-segment prefix map, compiled regexes), so
//! [`RouteTable::select`] does only lookups. [`RouteTable::explain`] runs the
//! same matcher and records why each candidate did or did not match, so
//! `pier-controller explain` never disagrees with the data plane.

mod hosts;

pub use hosts::{split_host_port, AuthorityError, HostMap};

use pier_snapshot::{
    HttpRouteEntry, PathMatch, PortProtocol, Snapshot, SniAction, ValueMatch, ValueMatchKind,
};
use regex::Regex;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// A snapshot the table cannot be built from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// `at` names the virtual host and the route entry.
    #[error("{at}: invalid regex {pattern:?}")]
    InvalidRegex {
        at: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

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
/// Every index list is sorted, so the candidates for a path are a merge of
/// three sorted lists, walked in precedence order without allocating.
struct VirtualHostTable {
    entries: Vec<CompiledEntry>,
    exact: HashMap<String, Vec<usize>>,
    /// Prefix → the entries of that prefix and of every shorter prefix that
    /// covers it (`/a/b` holds those of `/a/b`, `/a` and `/`). A request
    /// looks up its segment boundaries longest first; the first hit is all
    /// the prefix candidates it has: O(segments).
    prefixes: HashMap<String, Vec<usize>>,
    /// Entries of the `/` prefix (every path).
    root: Vec<usize>,
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

fn compile_regex(pattern: &str, at: &dyn Fn() -> String) -> Result<Regex, BuildError> {
    // Anchored: a regex path match must match the whole path.
    Regex::new(&format!("^(?:{pattern})$")).map_err(|source| BuildError::InvalidRegex {
        at: at(),
        pattern: pattern.into(),
        source,
    })
}

fn compile_values(
    values: &[ValueMatch],
    at: &dyn Fn() -> String,
) -> Result<Vec<Option<Regex>>, BuildError> {
    values
        .iter()
        .map(|v| match v.kind {
            ValueMatchKind::Exact => Ok(None),
            ValueMatchKind::Regex => compile_regex(&v.value, at).map(Some),
        })
        .collect()
}

/// Whether prefix `prefix` matches `path` (whole segments: `/foo` matches
/// `/foo` and `/foo/...`, not `/foobar`).
fn prefix_covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The prefixes (other than `/`) that may cover `path`, longest first: the
/// whole path, then the path cut before each later `/`.
fn prefix_keys(path: &str) -> impl Iterator<Item = &str> {
    let whole = (path.len() > 1).then_some(path);
    let cuts = path
        .bytes()
        .enumerate()
        .skip(1)
        .rev()
        .filter(|(_, b)| *b == b'/')
        .map(move |(i, _)| &path[..i]);
    whole.into_iter().chain(cuts)
}

impl VirtualHostTable {
    fn build(hostname: &str, entries: &[HttpRouteEntry]) -> Result<Self, BuildError> {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut prefix_lists: HashMap<String, Vec<usize>> = HashMap::new();
        let mut regexes = Vec::new();
        let mut compiled = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            // Only formatted for an error: a build of many routes stays cheap.
            let at = || format!("host {hostname} {}", e.source);
            let at = &at as &dyn Fn() -> String;
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
        let root = prefix_lists.remove("/").unwrap_or_default();
        // Each prefix also carries the entries of the prefixes covering it.
        let prefixes = prefix_lists
            .keys()
            .map(|p| {
                let mut all = root.clone();
                for covering in prefix_keys(p) {
                    if let Some(list) = prefix_lists.get(covering) {
                        all.extend(list);
                    }
                }
                all.sort_unstable();
                (p.clone(), all)
            })
            .collect();
        Ok(VirtualHostTable {
            entries: compiled,
            exact,
            prefixes,
            root,
            regexes,
        })
    }

    /// Indices of entries whose path matches, in precedence order. Regexes
    /// are run only when their entry comes up.
    fn path_candidates<'t>(&'t self, path: &'t str) -> Candidates<'t> {
        let prefixed = prefix_keys(path)
            .find_map(|p| self.prefixes.get(p))
            .unwrap_or(&self.root);
        debug_assert!(prefixed
            .iter()
            .all(|&i| matches!(&self.entries[i].entry.matcher.path, PathMatch::Prefix(p) if prefix_covers(p, path))));
        Candidates {
            table: self,
            path,
            exact: self.exact.get(path).map_or(&[], Vec::as_slice),
            prefixed,
            regexes: &self.regexes,
        }
    }
}

/// A merge of the three sorted candidate lists of one path.
struct Candidates<'t> {
    table: &'t VirtualHostTable,
    path: &'t str,
    exact: &'t [usize],
    prefixed: &'t [usize],
    regexes: &'t [usize],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        loop {
            let head = |l: &[usize]| l.first().copied().unwrap_or(usize::MAX);
            let (e, p, r) = (head(self.exact), head(self.prefixed), head(self.regexes));
            let next = e.min(p).min(r);
            if next == usize::MAX {
                return None;
            }
            // An entry has one path match, so it is in exactly one list.
            if next == e {
                self.exact = &self.exact[1..];
                return Some(e);
            }
            if next == p {
                self.prefixed = &self.prefixed[1..];
                return Some(p);
            }
            self.regexes = &self.regexes[1..];
            let matched = self.table.entries[r]
                .path_regex
                .as_ref()
                .is_some_and(|re| re.is_match(self.path));
            if matched {
                return Some(r);
            }
        }
    }
}

/// Why one entry did not match; formatted only for `explain`.
enum Mismatch<'a> {
    Method { want: &'a str, got: &'a str },
    Header(&'a ValueMatch),
    Query(&'a ValueMatch),
}

impl std::fmt::Display for Mismatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Method { want, got } => write!(f, "method {got} is not {want}"),
            Mismatch::Header(h) => write!(
                f,
                "header {} does not match {:?} ({:?})",
                h.name, h.value, h.kind
            ),
            Mismatch::Query(q) => {
                write!(f, "query parameter {} does not match {:?}", q.name, q.value)
            }
        }
    }
}

/// Why one entry did not match (None: it matched).
fn mismatch<'a>(c: &'a CompiledEntry, req: &RequestInfo<'a>) -> Option<Mismatch<'a>> {
    let m = &c.entry.matcher;
    if let Some(method) = &m.method {
        if !method.eq_ignore_ascii_case(req.method) {
            return Some(Mismatch::Method {
                want: method,
                got: req.method,
            });
        }
    }
    for (h, re) in m.headers.iter().zip(&c.header_regexes) {
        let ok = match re {
            None => req.headers.any_value(&h.name, &mut |v| v == h.value),
            Some(r) => req.headers.any_value(&h.name, &mut |v| r.is_match(v)),
        };
        if !ok {
            return Some(Mismatch::Header(h));
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
            return Some(Mismatch::Query(q));
        }
    }
    None
}

/// `s` in lower case, borrowed when it already is (the common case).
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Adds a line to the trace, formatting it only when there is one.
macro_rules! say {
    ($trace:expr, $($arg:tt)*) => {
        if let Some(t) = $trace.as_mut() {
            t.push(format!($($arg)*));
        }
    };
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

    /// The matcher. With `trace: None` (the request path) it does not
    /// allocate, unless Host or SNI has upper-case letters.
    fn route<'t>(
        &'t self,
        req: &RequestInfo<'_>,
        trace: &mut Option<Vec<String>>,
    ) -> Selection<'t> {
        let Some(port) = self.ports.get(&req.port) else {
            say!(trace, "no HTTP or HTTPS listener on port {}", req.port);
            return Selection::NoListener;
        };
        // A Host that does not parse is looked up as it is: only `*` can match it.
        let host = split_host_port(req.host).map_or(req.host, |(h, _)| h);
        let host = lower(host);
        if port.protocol == PortProtocol::Tls {
            let sni = lower(req.sni.unwrap_or(""));
            match port.sni.lookup(&sni) {
                Some((pattern, SniAction::TerminateHttp { certificates })) => {
                    say!(trace, "port {}: TLS, SNI {sni:?} selects listener hostname {pattern:?} (certificates {certificates:?})", req.port);
                    if !hosts::pattern_covers(pattern, &host) {
                        say!(
                            trace,
                            "Host {host:?} is not covered by {pattern:?}: 421 Misdirected Request"
                        );
                        return Selection::Misdirected;
                    }
                }
                Some((pattern, _)) => {
                    say!(trace, "port {}: SNI {sni:?} matches {pattern:?}, which is TLS passthrough / TCP, not HTTP", req.port);
                    return Selection::UnknownSni;
                }
                None => {
                    say!(trace, "port {}: no certificate for SNI {sni:?}", req.port);
                    return Selection::UnknownSni;
                }
            }
        } else {
            say!(trace, "port {}: plain HTTP", req.port);
        }
        let Some((pattern, vhost)) = port.vhosts.lookup(&host) else {
            say!(trace, "no virtual host matches {host:?}: 404");
            return Selection::NotFound;
        };
        say!(
            trace,
            "Host {host:?} selects virtual host {pattern:?} ({} route entries)",
            vhost.entries.len()
        );
        if let Some(t) = trace.as_mut() {
            let candidates: Vec<usize> = vhost.path_candidates(req.path).collect();
            for (i, c) in vhost.entries.iter().enumerate() {
                if !candidates.contains(&i) {
                    t.push(format!(
                        "  ✗ {}: path {:?} does not match {:?}",
                        c.entry.source, c.entry.matcher.path, req.path
                    ));
                }
            }
        }
        for i in vhost.path_candidates(req.path) {
            let c = &vhost.entries[i];
            match mismatch(c, req) {
                None => {
                    say!(
                        trace,
                        "  ✓ {}: path {:?} matches; selected (first match in precedence order)",
                        c.entry.source,
                        c.entry.matcher.path
                    );
                    return Selection::Route(&c.entry);
                }
                Some(why) => say!(trace, "  ✗ {}: {why}", c.entry.source),
            }
        }
        say!(trace, "no route entry matches: 404");
        Selection::NotFound
    }
}

#[cfg(test)]
mod tests;
