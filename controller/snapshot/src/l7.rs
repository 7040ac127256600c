//! Listeners and routes: what pier-proxy serves.

use crate::{BackendKey, CertificateKey};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutesPart {
    /// One entry per port the proxy listens on, sorted by port.
    pub listeners: Vec<PortListener>,
}

/// Everything the proxy serves on one port. Several Gateway listeners (and the
/// Ingress entry point) may share a port: they are merged here, told apart by
/// SNI and Host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortListener {
    pub port: u16,
    pub protocol: PortProtocol,
    /// Who asked for this port: `Gateway ns/name listener=x`, `Ingress`.
    pub sources: Vec<String>,
    /// TLS ports: what to do per SNI, most specific hostname first.
    pub tls: Vec<SniEntry>,
    /// HTTP and terminated HTTPS: virtual hosts, most specific hostname first.
    pub virtual_hosts: Vec<VirtualHost>,
    /// TCP / UDP ports, and TLS-terminated TCP: where the bytes go.
    pub l4: Option<L4Route>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortProtocol {
    /// Plain HTTP/1.1 and h2c.
    Http,
    /// TLS: terminated (HTTPS, TLS Terminate) or passed through, chosen per SNI.
    Tls,
    Tcp,
    Udp,
}

/// A hostname pattern: `example.com`, `*.example.com` (one or more labels, per
/// Gateway API) or `*` (anything).
pub type HostPattern = String;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SniEntry {
    pub hostname: HostPattern,
    pub action: SniAction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SniAction {
    /// Terminate TLS with one of these certificates and serve HTTP from
    /// `virtual_hosts`; only hosts matching `hostname` may be requested on the
    /// connection (else 421).
    TerminateHttp { certificates: Vec<CertificateKey> },
    /// Terminate TLS and forward the plaintext bytes.
    TerminateTcp {
        certificates: Vec<CertificateKey>,
        route: L4Route,
    },
    /// Do not terminate: forward the TLS stream as is.
    Passthrough { route: L4Route },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VirtualHost {
    pub hostname: HostPattern,
    /// Ingress wildcards match exactly one label (`*.a.com` matches `b.a.com`,
    /// not `c.b.a.com`); Gateway API wildcards match one or more.
    pub single_label_wildcard: bool,
    /// In precedence order: the first entry whose match succeeds wins.
    pub routes: Vec<HttpRouteEntry>,
}

/// Where a route entry came from, for logs, metrics and `explain`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteSource {
    /// `HTTPRoute`, `GRPCRoute`, `Ingress`, `TLSRoute`, `TCPRoute`, `UDPRoute`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub rule: u32,
    pub rule_name: Option<String>,
    pub match_index: u32,
}

impl std::fmt::Display for RouteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{} rule {} match {}",
            self.kind, self.namespace, self.name, self.rule, self.match_index
        )
    }
}

/// One route match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HttpRouteEntry {
    pub source: RouteSource,
    pub matcher: RequestMatch,
    /// Filters applied before the action, in the order the route lists them.
    pub filters: Vec<HttpFilter>,
    pub action: RouteAction,
    pub timeouts: Timeouts,
    /// The HTTP version this entry's requests reach their backends with.
    pub upstream: UpstreamProtocol,
}

/// How a route entry talks HTTP to its backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpstreamProtocol {
    /// What the backend set's appProtocol says (HTTP/1.1, h2c, TLS).
    #[default]
    FromBackend,
    /// HTTP/2 whatever the appProtocol says (h2c, or over TLS when the
    /// backend set is `Https`): gRPC needs HTTP/2 (GRPCRoute entries).
    Http2,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub method: Option<String>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatch {
    Exact(String),
    /// Matches whole path segments: `/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`.
    Prefix(String),
    /// An anchored regular expression (RE2 syntax, matched against the whole path).
    Regex(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::Prefix("/".into())
    }
}

/// A header or query parameter match. Header names are lower-cased by the
/// translator (they are case-insensitive); query names are case-sensitive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMatch {
    pub name: String,
    pub kind: ValueMatchKind,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueMatchKind {
    Exact,
    Regex,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HttpFilter {
    RequestHeaders(HeaderEdits),
    ResponseHeaders(HeaderEdits),
    UrlRewrite {
        hostname: Option<String>,
        path: Option<PathRewrite>,
    },
    Mirror {
        backend: BackendRef,
        /// Share of requests mirrored, in parts per million.
        fraction_ppm: u32,
    },
    Cors(CorsPolicy),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderEdits {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathRewrite {
    Full(String),
    /// Replace the part matched by the route's `Prefix` path match.
    Prefix(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorsPolicy {
    /// `*`, exact origins, or origins with a `*` wildcard in the host.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_seconds: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RouteAction {
    /// Send to one of these backends, chosen by weight.
    Forward(Vec<WeightedBackend>),
    Redirect(Redirect),
    /// Answer directly with this status (e.g. 500 when no backend resolves).
    Respond {
        status: u16,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedBackend {
    pub backend: BackendRef,
    pub weight: u32,
    /// Filters that apply only when this backend is chosen.
    pub filters: Vec<HttpFilterRef>,
}

/// Backend-level filters are limited to header edits (the Gateway API core set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpFilterRef {
    RequestHeaders(HeaderEdits),
    ResponseHeaders(HeaderEdits),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendRef {
    /// A key into `Snapshot::backends`.
    Service(BackendKey),
    /// A reference that did not resolve: its share of traffic gets a 500, per
    /// Gateway API. The reason is for logs and `explain`.
    Unresolved(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Whole request, downstream first byte to response end.
    pub request_ms: Option<u64>,
    /// Each attempt to a backend.
    pub backend_request_ms: Option<u64>,
}

/// An L4 destination: weighted backends, or a refusal with a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Route {
    pub source: RouteSource,
    pub backends: Vec<WeightedBackend>,
}
