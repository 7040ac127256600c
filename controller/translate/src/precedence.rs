//! The order in which route entries of one virtual host are tried.
//!
//! Gateway API (HTTPRoute): Exact path before PathPrefix, longer prefix first,
//! then a method match, then more header matches, then more query matches;
//! ties go to the oldest route, then to namespace/name order, then to rule and
//! match order. Regular-expression paths (implementation-specific) sit between
//! Exact and PathPrefix, longer pattern first: after them a catch-all `/`
//! prefix would make every regex dead. Ingress follows the
//! same path order (longest match, Exact beats Prefix); an Ingress
//! `defaultBackend` comes last of all.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use pier_snapshot::{PathMatch, RequestMatch, RouteSource};
use std::cmp::Reverse;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct PrecedenceKey {
    fallback: bool,
    path_kind: u8,
    path_len: Reverse<usize>,
    method: Reverse<bool>,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// Objects without a creation time sort after those with one.
    created: (bool, Option<Time>),
    source: RouteSource,
}

impl PrecedenceKey {
    pub fn new(
        m: &RequestMatch,
        created: Option<&Time>,
        source: &RouteSource,
        fallback: bool,
    ) -> Self {
        let (path_kind, path_len) = match &m.path {
            PathMatch::Exact(p) => (0, p.len()),
            PathMatch::Regex(p) => (1, p.len()),
            PathMatch::Prefix(p) => (2, p.len()),
        };
        PrecedenceKey {
            fallback,
            path_kind,
            path_len: Reverse(path_len),
            method: Reverse(m.method.is_some()),
            headers: Reverse(m.headers.len()),
            query: Reverse(m.query_params.len()),
            created: (created.is_none(), created.cloned()),
            source: source.clone(),
        }
    }
}
