//! The pingora service: route with the current table, apply filters, pick an
//! endpoint, proxy, and answer per spec when something is missing
//! (404 no route, 421 misdirected, 500 unresolved backend, 503 no endpoint,
//! 502 connect failure, 504 timeout).

use crate::balancer::{pick_weighted, stable_hash, Choice, InFlight};
use crate::routing::{Routing, Shared};
use crate::tls::ServerName;
use async_trait::async_trait;
use bytes::Bytes;
use pier_route_table::{split_host_port, HeaderLookup, RequestInfo, Selection};
use pier_snapshot::{
    AppProtocol, BackendRef, CorsPolicy, HashOn, HeaderEdits, HttpFilter, HttpFilterRef,
    HttpRouteEntry, LoadBalancing, PathMatch, PathRewrite, Redirect, RouteAction, UpstreamProtocol,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{ErrorSource, ErrorType};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PierProxy {
    pub shared: Arc<Shared>,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: u64,
    /// Largest request head accepted (431 above it).
    pub max_header_bytes: usize,
}

/// Per-request state (pingora's CTX).
pub struct RequestCtx {
    start: Instant,
    routing: Option<Arc<Routing>>,
    entry: Option<Arc<HttpRouteEntry>>,
    backend_index: usize,
    backend_key: Option<String>,
    tls: bool,
    host: String,
    /// Endpoints tried for this request, for the access log.
    tried: Vec<SocketAddr>,
    /// Endpoints whose connect failed: a retry avoids them. (A retry after a
    /// stale pooled connection may go back to the same endpoint.)
    failed: Vec<SocketAddr>,
    connect_failures: u32,
    /// The request path with dot segments resolved, when it differed.
    normalized_path: Option<String>,
    in_flight: Option<InFlight>,
    origin: Option<String>,
    body_bytes: u64,
    status_hint: Option<u16>,
    /// The route's whole-request timeout (`timeouts.request`), from arrival:
    /// covers retries and a response that trickles in.
    deadline: Option<Instant>,
    /// Mirrors waiting for the request body.
    mirrors: Vec<tokio::sync::mpsc::Sender<MirrorChunk>>,
    /// Why the proxy answered by itself, for the access log.
    failure: Option<Failure>,
}

/// Why the proxy answered a request itself instead of relaying a backend's
/// answer. The access log shows it (with its source) as `cause`.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    NotRouted(&'static str),
    #[error("no backendRef has a positive weight")]
    NoWeightedBackend,
    #[error("backendRef not resolved: {0}")]
    UnresolvedBackend(String),
    #[error("the request reached the upstream phase without a route")]
    NoRoute,
    #[error("backend set {0} is not in the snapshot")]
    MissingBackendSet(String),
    #[error("no usable endpoint in backend set {0}")]
    NoEndpoint(String),
    #[error("no other endpoint of backend set {0} to retry on")]
    NoRetryEndpoint(String),
    #[error("cannot resolve ExternalName {name}")]
    Resolve {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ExternalName {name} resolved to no address")]
    NoAddress { name: String },
    #[error("the rewritten path {uri:?} is not a valid URI")]
    Rewrite {
        uri: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("the normalised path {uri:?} is not a valid URI")]
    Normalized {
        uri: String,
        #[source]
        source: http::uri::InvalidUri,
    },
}

impl Failure {
    /// The pingora error that makes `fail_to_proxy` answer with the right
    /// status, carrying this failure as its cause.
    fn into_error(self) -> Box<Error> {
        let etype = match &self {
            Failure::NotRouted(_) => ErrorType::HTTPStatus(404),
            Failure::NoEndpoint(_) => ErrorType::HTTPStatus(503),
            // A retry after a failed connect with nowhere else to go: the
            // answer is about the failed connect (502), not 503.
            Failure::NoRetryEndpoint(_) => ErrorType::ConnectRefused,
            Failure::Resolve { .. } | Failure::NoAddress { .. } => ErrorType::ConnectNoRoute,
            Failure::Normalized { .. } => ErrorType::HTTPStatus(400),
            Failure::NoWeightedBackend
            | Failure::UnresolvedBackend(_)
            | Failure::NoRoute
            | Failure::MissingBackendSet(_)
            | Failure::Rewrite { .. } => ErrorType::HTTPStatus(500),
        };
        Error::create(etype, ErrorSource::Internal, None, Some(Box::new(self)))
    }
}

/// A pingora error with every cause down to the root's own sources.
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = e.root_cause().source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn request_timed_out() -> Box<Error> {
    Error::explain(
        ErrorType::ReadTimedout,
        "the route's request timeout passed",
    )
}

struct HeaderMapLookup<'a>(&'a http::HeaderMap);

impl HeaderLookup for HeaderMapLookup<'_> {
    fn any_value(&self, name: &str, pred: &mut dyn FnMut(&str) -> bool) -> bool {
        self.0
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(&mut *pred))
    }
}

fn error(status: u16) -> Box<Error> {
    Error::new(ErrorType::HTTPStatus(status))
}

async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&str, String)],
    body: &str,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.insert_header(name.to_string(), value.as_str())?;
    }
    // 1xx, 204 and 304 carry neither a body nor Content-Length (RFC 9110 §8.6).
    let bodiless = status < 200 || status == 204 || status == 304;
    let body = if bodiless { "" } else { body };
    if !bodiless {
        resp.insert_header("content-length", body.len().to_string())?;
    }
    if !body.is_empty() {
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    }
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session
            .write_response_body(Some(Bytes::from(body.to_string())), true)
            .await?;
    }
    Ok(())
}

fn apply_request_edits(req: &mut RequestHeader, edits: &HeaderEdits) -> Result<()> {
    for (name, value) in &edits.set {
        req.insert_header(name.to_ascii_lowercase(), value.as_str())?;
    }
    for (name, value) in &edits.add {
        req.append_header(name.to_ascii_lowercase(), value.as_str())?;
    }
    for name in &edits.remove {
        req.remove_header(name.as_str());
    }
    Ok(())
}

fn apply_response_edits(resp: &mut ResponseHeader, edits: &HeaderEdits) -> Result<()> {
    for (name, value) in &edits.set {
        resp.insert_header(name.to_ascii_lowercase(), value.as_str())?;
    }
    for (name, value) in &edits.add {
        resp.append_header(name.to_ascii_lowercase(), value.as_str())?;
    }
    for name in &edits.remove {
        resp.remove_header(name.as_str());
    }
    Ok(())
}

/// The path after a prefix rewrite: the matched prefix is replaced, the rest kept.
fn rewrite_prefix(path: &str, matched: &str, replacement: &str) -> String {
    let rest = if matched == "/" {
        path
    } else {
        path.strip_prefix(matched).unwrap_or(path)
    };
    let rest = rest.trim_start_matches('/');
    let base = replacement.trim_end_matches('/');
    match (base.is_empty(), rest.is_empty()) {
        (true, true) => "/".into(),
        (true, false) => format!("/{rest}"),
        (false, true) => base.to_string(),
        (false, false) => format!("{base}/{rest}"),
    }
}

fn rewritten_path(entry: &HttpRouteEntry, rewrite: &PathRewrite, path: &str) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::Prefix(replacement) => match &entry.matcher.path {
            PathMatch::Prefix(matched) => rewrite_prefix(path, matched, replacement),
            _ => path.to_string(),
        },
    }
}

fn origin_allowed(policy: &CorsPolicy, origin: &str) -> bool {
    policy.allow_origins.iter().any(|o| {
        o == "*" || o.eq_ignore_ascii_case(origin) || {
            // `https://*.example.com` style wildcards.
            match o.split_once('*') {
                Some((head, tail)) => {
                    origin.len() > head.len() + tail.len()
                        && origin.starts_with(head)
                        && origin.ends_with(tail)
                }
                None => false,
            }
        }
    })
}

fn cors_policy(entry: &HttpRouteEntry) -> Option<&CorsPolicy> {
    entry.filters.iter().find_map(|f| match f {
        HttpFilter::Cors(c) => Some(c),
        _ => None,
    })
}

/// RFC 3986 §5.2.4 dot-segment removal, with percent-encoded dots decoded
/// first. Returns None when the path is already normal (the common case).
fn normalize_path(path: &str) -> Option<String> {
    // Checked on every request: no allocation unless something needs fixing.
    let encoded_dot = path
        .as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e');
    let suspicious = encoded_dot || path.split('/').any(|s| s == "." || s == "..");
    if !suspicious {
        return None;
    }
    let decoded = path.replace("%2e", ".").replace("%2E", ".");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Some(format!("/{}", out.join("/")))
}

fn redirect_location(
    r: &Redirect,
    entry: &HttpRouteEntry,
    tls: bool,
    listener_port: u16,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let scheme = r
        .scheme
        .clone()
        .unwrap_or_else(|| if tls { "https".into() } else { "http".into() });
    let hostname = match &r.hostname {
        Some(h) => h.clone(),
        None => match split_host_port(host).map_or(host, |(h, _)| h) {
            // An IPv6 literal goes back into brackets in a URL.
            h if h.contains(':') => format!("[{h}]"),
            h => h.to_string(),
        },
    };
    // Per spec: an explicit port wins; a scheme change means that scheme's
    // well-known port; otherwise the listener's port. Default ports are never written.
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(listener_port),
    };
    let port =
        port.filter(|p| !((scheme == "http" && *p == 80) || (scheme == "https" && *p == 443)));
    let new_path = r
        .path
        .as_ref()
        .map_or_else(|| path.to_string(), |rw| rewritten_path(entry, rw, path));
    let mut location = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        location.push_str(&format!(":{p}"));
    }
    location.push_str(&new_path);
    if let Some(q) = query {
        location.push('?');
        location.push_str(q);
    }
    location
}

/// What a mirror task gets of the request body.
enum MirrorChunk {
    Data(Bytes),
    End,
}

/// Chunks a mirror may fall behind by before it is dropped: a slow mirror
/// never slows the request it copies.
const MIRROR_BACKLOG: usize = 64;

/// Sends a copy of the request to a mirror endpoint and ignores the answer
/// (fire-and-forget). A request with a body is sent chunked, its body as it
/// streams in (`body`); if the original body does not finish (or the mirror
/// fell behind), the copy is abandoned unfinished rather than sent short.
fn spawn_mirror(
    addr: SocketAddr,
    head: Vec<u8>,
    body: Option<tokio::sync::mpsc::Receiver<MirrorChunk>>,
) {
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&head).await?;
            if let Some(mut body) = body {
                loop {
                    match body.recv().await {
                        Some(MirrorChunk::Data(data)) => {
                            s.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                                .await?;
                            s.write_all(&data).await?;
                            s.write_all(b"\r\n").await?;
                        }
                        Some(MirrorChunk::End) => {
                            s.write_all(b"0\r\n\r\n").await?;
                            break;
                        }
                        None => {
                            return Err(std::io::Error::other("the request body did not finish"))
                        }
                    }
                }
            }
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Err(_) => tracing::debug!(mirror = %addr, "mirror request timed out"),
            Ok(Err(e)) => tracing::debug!(mirror = %addr, error = %e, "mirror request abandoned"),
            Ok(Ok(())) => {}
        }
    });
}

fn mirror_head(req: &RequestHeader, host: &str, chunked: bool) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {host}\r\n",
        req.method,
        req.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    for (name, value) in req.headers.iter() {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str(if chunked {
        "transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    } else {
        "content-length: 0\r\nconnection: close\r\n\r\n"
    });
    head.into_bytes()
}

impl PierProxy {
    fn route_label(ctx: &RequestCtx) -> String {
        ctx.entry.as_ref().map_or_else(
            || "none".into(),
            |e| format!("{}/{}/{}", e.source.kind, e.source.namespace, e.source.name),
        )
    }

    /// Starts the route's mirrors; returns where to send the request body.
    fn mirror(
        &self,
        session: &mut Session,
        routing: &Routing,
        entry: &HttpRouteEntry,
        host: &str,
    ) -> Vec<tokio::sync::mpsc::Sender<MirrorChunk>> {
        let mut bodies = Vec::new();
        for filter in &entry.filters {
            let HttpFilter::Mirror {
                backend: BackendRef::Service(key),
                fraction_ppm,
            } = filter
            else {
                continue;
            };
            if crate::balancer::random(1_000_000) >= u64::from(*fraction_ppm) {
                continue;
            }
            let Some(set) = routing.backend(key) else {
                continue;
            };
            if let Some((addr, _slot)) = self.shared.balancer.pick(set, &[]) {
                // Knows HTTP/2 too: a body without content-length, by END_STREAM.
                let with_body = !session.is_body_empty();
                let req = session.req_header();
                let body = with_body.then(|| {
                    let (tx, rx) = tokio::sync::mpsc::channel(MIRROR_BACKLOG);
                    bodies.push(tx);
                    rx
                });
                spawn_mirror(addr, mirror_head(req, host, body.is_some()), body);
            }
        }
        bodies
    }

    /// Picks an endpoint for the chosen backend, avoiding endpoints already tried.
    fn choose_endpoint(&self, session: &Session, ctx: &mut RequestCtx) -> Option<SocketAddr> {
        let routing = ctx.routing.clone()?;
        let key = ctx.backend_key.as_ref()?;
        let set = routing.backend(key)?;
        let choice = match &set.load_balancing {
            LoadBalancing::LeastRequest => Choice::LeastRequest,
            LoadBalancing::RoundRobin => Choice::RoundRobin(key),
            // A request without the hash key falls back to least-request.
            LoadBalancing::ConsistentHash(on) => {
                hash_key(session, on).map_or(Choice::LeastRequest, Choice::Hash)
            }
        };
        let (addr, guard) = self.shared.balancer.pick_with(set, &ctx.failed, choice)?;
        ctx.tried.push(addr);
        ctx.in_flight = Some(guard);
        Some(addr)
    }
}

/// The consistent-hash key of a request, if it has one.
fn hash_key(session: &Session, on: &HashOn) -> Option<u64> {
    let headers = &session.req_header().headers;
    match on {
        HashOn::Header(name) => headers
            .get(name.as_str())
            .map(|v| stable_hash(v.as_bytes())),
        HashOn::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then(|| stable_hash(v.as_bytes()))
            }),
        HashOn::SourceIp => session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| stable_hash(a.ip().to_string().as_bytes())),
    }
}

#[async_trait]
impl ProxyHttp for PierProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.shared.metrics.in_flight.inc();
        RequestCtx {
            start: Instant::now(),
            routing: None,
            entry: None,
            backend_index: 0,
            backend_key: None,
            tls: false,
            host: String::new(),
            tried: Vec::new(),
            failed: Vec::new(),
            connect_failures: 0,
            normalized_path: None,
            in_flight: None,
            origin: None,
            body_bytes: 0,
            status_hint: None,
            deadline: None,
            mirrors: Vec::new(),
            failure: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let Some(routing) = self.shared.routing.load_full() else {
            respond(session, 503, &[], "pier-proxy has no configuration yet\n").await?;
            ctx.status_hint = Some(503);
            return Ok(true);
        };
        let sni = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<ServerName>())
            .map(|n| n.0.clone());
        ctx.tls = sni.is_some();
        let port = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map_or(0, |a| a.port());
        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        // Route on the normalised path (dot segments resolved) and send that one
        // upstream too: `/x/../admin` must not dodge a route for `/admin`.
        let normalized = normalize_path(req.uri.path());
        let path = normalized
            .clone()
            .unwrap_or_else(|| req.uri.path().to_string());
        let query = req.uri.query().map(str::to_string);
        let method = req.method.as_str().to_string();
        ctx.origin = req
            .headers
            .get("origin")
            .and_then(|o| o.to_str().ok())
            .map(str::to_string);
        let preflight = req.method == http::Method::OPTIONS
            && req.headers.contains_key("access-control-request-method");
        let head_bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
        if head_bytes > self.max_header_bytes {
            respond(session, 431, &[], "request header fields too large\n").await?;
            ctx.status_hint = Some(431);
            return Ok(true);
        }
        if let Some(len) = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > self.max_body_bytes {
                respond(session, 413, &[], "request body too large\n").await?;
                ctx.status_hint = Some(413);
                return Ok(true);
            }
        }
        // Route in a block: the header view must not live across an await.
        let selected: Result<Arc<HttpRouteEntry>, (u16, &'static str)> = {
            let lookup = HeaderMapLookup(&req.headers);
            let info = RequestInfo {
                port,
                sni: sni.as_deref(),
                host: &host,
                method: &method,
                path: &path,
                query: query.as_deref(),
                headers: &lookup,
            };
            match routing.routes.table.select(&info) {
                Selection::Route(entry) => Ok(entry.clone()),
                Selection::Misdirected => {
                    Err((421, "the Host is not one the TLS server name covers"))
                }
                Selection::NoListener => Err((404, "no HTTP listener on the port")),
                Selection::UnknownSni => Err((404, "no HTTPS listener for the TLS server name")),
                Selection::NotFound => Err((404, "no route matched")),
            }
        };
        ctx.host = host.clone();
        ctx.normalized_path = normalized;
        let entry = match selected {
            Ok(entry) => entry,
            Err((421, why)) => {
                ctx.failure = Some(Failure::NotRouted(why));
                respond(
                    session,
                    421,
                    &[],
                    "misdirected request: this host is not served on this TLS connection\n",
                )
                .await?;
                ctx.status_hint = Some(421);
                return Ok(true);
            }
            Err((code, why)) => {
                ctx.failure = Some(Failure::NotRouted(why));
                respond(session, code, &[], "no route\n").await?;
                ctx.status_hint = Some(code);
                return Ok(true);
            }
        };
        ctx.entry = Some(entry.clone());
        ctx.routing = Some(routing.clone());
        ctx.deadline = entry
            .timeouts
            .request_ms
            .map(|ms| ctx.start + Duration::from_millis(ms));

        // CORS preflight is answered here; allowed or not, it never reaches a backend.
        if let (Some(policy), true) = (cors_policy(&entry), preflight) {
            let origin = ctx.origin.clone().unwrap_or_default();
            let mut headers = Vec::new();
            if origin_allowed(policy, &origin) {
                headers.push((
                    "access-control-allow-origin",
                    if policy.allow_credentials || !policy.allow_origins.iter().any(|o| o == "*") {
                        origin.clone()
                    } else {
                        "*".into()
                    },
                ));
                headers.push((
                    "access-control-allow-methods",
                    policy.allow_methods.join(", "),
                ));
                headers.push((
                    "access-control-allow-headers",
                    policy.allow_headers.join(", "),
                ));
                if policy.allow_credentials {
                    headers.push(("access-control-allow-credentials", "true".into()));
                }
                if let Some(age) = policy.max_age_seconds {
                    headers.push(("access-control-max-age", age.to_string()));
                }
                headers.push(("vary", "origin".into()));
            }
            respond(session, 204, &headers, "").await?;
            ctx.status_hint = Some(204);
            return Ok(true);
        }

        match &entry.action {
            RouteAction::Redirect(r) => {
                let location =
                    redirect_location(r, &entry, ctx.tls, port, &host, &path, query.as_deref());
                respond(session, r.status, &[("location", location)], "").await?;
                ctx.status_hint = Some(r.status);
                Ok(true)
            }
            RouteAction::Respond { status, reason } => {
                respond(session, *status, &[], &format!("{reason}\n")).await?;
                ctx.status_hint = Some(*status);
                Ok(true)
            }
            RouteAction::Forward(backends) => {
                let Some(i) = pick_weighted(backends) else {
                    ctx.failure = Some(Failure::NoWeightedBackend);
                    respond(session, 500, &[], "no backend\n").await?;
                    ctx.status_hint = Some(500);
                    return Ok(true);
                };
                ctx.backend_index = i;
                match &backends[i].backend {
                    BackendRef::Unresolved(why) => {
                        ctx.failure = Some(Failure::UnresolvedBackend(why.clone()));
                        respond(session, 500, &[], "backend not resolved\n").await?;
                        ctx.status_hint = Some(500);
                        Ok(true)
                    }
                    BackendRef::Service(key) => {
                        ctx.backend_key = Some(key.clone());
                        ctx.mirrors = self.mirror(session, &routing, &entry, &host);
                        Ok(false)
                    }
                }
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.max_body_bytes {
                return Err(error(413));
            }
            // A mirror that cannot keep up is dropped (its copy is abandoned).
            ctx.mirrors
                .retain(|m| m.try_send(MirrorChunk::Data(b.clone())).is_ok());
        }
        if end {
            for m in ctx.mirrors.drain(..) {
                let _ = m.try_send(MirrorChunk::End);
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let key = ctx
            .backend_key
            .clone()
            .ok_or_else(|| Failure::NoRoute.into_error())?;
        let (protocol, external) = {
            let routing = ctx
                .routing
                .as_ref()
                .ok_or_else(|| Failure::NoRoute.into_error())?;
            let set = routing
                .backend(&key)
                .ok_or_else(|| Failure::MissingBackendSet(key.clone()).into_error())?;
            (
                set.protocol,
                set.external_name.clone().map(|n| (n, set.port)),
            )
        };
        let addr = match external {
            Some((name, port)) => {
                let found = tokio::net::lookup_host((name.as_str(), port)).await;
                match found.map(|mut addrs| addrs.next()) {
                    Ok(Some(addr)) => addr,
                    Ok(None) => return Err(Failure::NoAddress { name }.into_error()),
                    Err(source) => return Err(Failure::Resolve { name, source }.into_error()),
                }
            }
            None => match self.choose_endpoint(_session, ctx) {
                Some(addr) => addr,
                None if !ctx.failed.is_empty() => {
                    return Err(Failure::NoRetryEndpoint(key).into_error())
                }
                None => return Err(Failure::NoEndpoint(key).into_error()),
            },
        };
        let entry = ctx
            .entry
            .as_ref()
            .ok_or_else(|| Failure::NoRoute.into_error())?;
        let tls = protocol == AppProtocol::Https;
        // The Host without its port (and an IPv6 literal without brackets:
        // rustls sends no SNI for an IP address).
        let sni = split_host_port(&ctx.host)
            .map_or(ctx.host.as_str(), |(h, _)| h)
            .to_string();
        let mut peer = HttpPeer::new(addr, tls, sni);
        // Each attempt gets backendRequest, and never more than what is left
        // of the whole request's time (a retry gets only the rest).
        let left = match ctx.deadline {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(request_timed_out()),
            },
            None => None,
        };
        let attempt = entry.timeouts.backend_request_ms.map(Duration::from_millis);
        let limit = match (attempt, left) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, l) => a.or(l),
        };
        peer.options.connection_timeout =
            Some(limit.map_or(CONNECT_TIMEOUT, |l| l.min(CONNECT_TIMEOUT)));
        if let Some(limit) = limit {
            peer.options.read_timeout = Some(limit);
            peer.options.write_timeout = Some(limit);
            peer.options.total_connection_timeout = Some(limit.min(CONNECT_TIMEOUT));
        }
        // No BackendTLSPolicy yet: in-cluster HTTPS backends use self-signed certificates.
        peer.options.verify_cert = false;
        peer.options.verify_hostname = false;
        // h2c when not TLS.
        if protocol == AppProtocol::H2c || entry.upstream == UpstreamProtocol::Http2 {
            peer.options.set_http_version(2, 2);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let entry = ctx
            .entry
            .clone()
            .ok_or_else(|| Failure::NoRoute.into_error())?;
        if let Some(normalized) = ctx.normalized_path.clone() {
            let pq = match upstream.uri.query() {
                Some(q) => format!("{normalized}?{q}"),
                None => normalized,
            };
            let uri = pq
                .parse()
                .map_err(|source| Failure::Normalized { uri: pq, source }.into_error())?;
            upstream.set_uri(uri);
        }
        let path = upstream.uri.path().to_string();
        for filter in &entry.filters {
            match filter {
                HttpFilter::RequestHeaders(edits) => apply_request_edits(upstream, edits)?,
                HttpFilter::UrlRewrite {
                    hostname,
                    path: rewrite,
                } => {
                    if let Some(h) = hostname {
                        upstream.insert_header(http::header::HOST, h.as_str())?;
                    }
                    if let Some(rw) = rewrite {
                        let new_path = rewritten_path(&entry, rw, &path);
                        let pq = match upstream.uri.query() {
                            Some(q) => format!("{new_path}?{q}"),
                            None => new_path,
                        };
                        let uri: http::Uri = pq
                            .parse()
                            .map_err(|source| Failure::Rewrite { uri: pq, source }.into_error())?;
                        upstream.set_uri(uri);
                    }
                }
                _ => {}
            }
        }
        if let RouteAction::Forward(backends) = &entry.action {
            for f in &backends[ctx.backend_index].filters {
                if let HttpFilterRef::RequestHeaders(edits) = f {
                    apply_request_edits(upstream, edits)?;
                }
            }
        }
        // X-Forwarded-*: append the client, keep what a trusted hop set before.
        if let Some(client) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {client}"),
                None => client,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", if ctx.tls { "https" } else { "http" })?;
        if !ctx.host.is_empty() {
            upstream.insert_header("x-forwarded-host", ctx.host.as_str())?;
        }
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(addr) = peer.address().as_inet() {
            self.shared.balancer.connect_succeeded(*addr);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = peer.address().as_inet() {
            self.shared.balancer.connect_failed(*addr);
            ctx.failed.push(*addr);
        }
        ctx.connect_failures += 1;
        // One retry, on another endpoint (upstream_peer avoids failed ones);
        // counted in fail_to_proxy if the request fails for good.
        e.set_retry(ctx.connect_failures < 2);
        e
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // A response still trickling in when the request's time is up is cut.
        if !end_of_stream && ctx.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(request_timed_out());
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(entry) = ctx.entry.clone() else {
            return Ok(());
        };
        for filter in &entry.filters {
            if let HttpFilter::ResponseHeaders(edits) = filter {
                apply_response_edits(resp, edits)?;
            }
        }
        if let RouteAction::Forward(backends) = &entry.action {
            if let Some(b) = backends.get(ctx.backend_index) {
                for f in &b.filters {
                    if let HttpFilterRef::ResponseHeaders(edits) = f {
                        apply_response_edits(resp, edits)?;
                    }
                }
            }
        }
        if let (Some(policy), Some(origin)) = (cors_policy(&entry), ctx.origin.as_deref()) {
            if origin_allowed(policy, origin) {
                let wildcard =
                    policy.allow_origins.iter().any(|o| o == "*") && !policy.allow_credentials;
                resp.insert_header(
                    "access-control-allow-origin",
                    if wildcard { "*" } else { origin },
                )?;
                if policy.allow_credentials {
                    resp.insert_header("access-control-allow-credentials", "true")?;
                }
                if !policy.expose_headers.is_empty() {
                    resp.insert_header(
                        "access-control-expose-headers",
                        policy.expose_headers.join(", "),
                    )?;
                }
                resp.append_header("vary", "origin")?;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout
            | ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure => 502,
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                pingora::ErrorSource::Upstream => 502,
                pingora::ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                _ => 500,
            },
        };
        if matches!(code, 502 | 504) {
            self.shared
                .metrics
                .upstream_errors
                .with_label_values(&[if code == 504 { "timeout" } else { "connect" }])
                .inc();
        }
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        ctx.status_hint = Some(code);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let m = &self.shared.metrics;
        m.in_flight.dec();
        ctx.in_flight = None;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.status_hint)
            .unwrap_or(0);
        let route = Self::route_label(ctx);
        let elapsed = ctx.start.elapsed();
        m.requests
            .with_label_values(&[route.as_str(), itoa(status).as_str()])
            .inc();
        m.latency
            .with_label_values(&[route.as_str()])
            .observe(elapsed.as_secs_f64());
        let req = session.req_header();
        tracing::info!(
            target: "access",
            method = %req.method,
            host = %ctx.host,
            path = %req.uri.path(),
            status,
            route = %route,
            upstream = ?ctx.tried.last(),
            duration_us = elapsed.as_micros() as u64,
            cause = ctx.failure.as_ref().map(|f| crate::error_chain(f)),
            error = e.map(describe),
        );
    }
}

fn itoa(n: u16) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_keep_the_rest_of_the_path() {
        assert_eq!(rewrite_prefix("/api/v1/x", "/api", "/v2"), "/v2/v1/x");
        assert_eq!(rewrite_prefix("/api", "/api", "/"), "/");
        assert_eq!(rewrite_prefix("/api/x", "/api", "/"), "/x");
        assert_eq!(rewrite_prefix("/x/y", "/", "/pre"), "/pre/x/y");
        assert_eq!(rewrite_prefix("/api/", "/api", "/v2"), "/v2");
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        assert_eq!(normalize_path("/a/b"), None);
        assert_eq!(normalize_path("/x/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/x/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(
            normalize_path("/x/%2E%2E/%2e/admin/").as_deref(),
            Some("/admin/")
        );
        assert_eq!(normalize_path("/../../etc").as_deref(), Some("/etc"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a/./b").as_deref(), Some("/a/b"));
    }

    #[test]
    fn redirects_keep_the_listener_port_unless_told_otherwise() {
        let entry = HttpRouteEntry {
            source: pier_snapshot::RouteSource {
                kind: "HTTPRoute".into(),
                namespace: "d".into(),
                name: "r".into(),
                rule: 0,
                rule_name: None,
                match_index: 0,
            },
            matcher: Default::default(),
            filters: vec![],
            action: RouteAction::Respond {
                status: 200,
                reason: String::new(),
            },
            timeouts: Default::default(),
            upstream: UpstreamProtocol::FromBackend,
        };
        let r = Redirect {
            status: 302,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(&r, &entry, false, 8080, "example.com", "/p", None),
            "http://example.com:8080/p"
        );
        assert_eq!(
            redirect_location(&r, &entry, false, 80, "example.com:80", "/p", Some("q=1")),
            "http://example.com/p?q=1"
        );
        let r = Redirect {
            scheme: Some("https".into()),
            status: 301,
            ..Default::default()
        };
        assert_eq!(
            redirect_location(&r, &entry, false, 8080, "example.com:8080", "/p", None),
            "https://example.com/p"
        );
        // An IPv6 literal Host keeps its brackets in the Location.
        assert_eq!(
            redirect_location(&r, &entry, false, 8080, "[::1]:8080", "/p", None),
            "https://[::1]/p"
        );
    }

    #[test]
    fn cors_origins_match_exactly_or_by_wildcard() {
        let p = CorsPolicy {
            allow_origins: vec!["https://*.example.com".into(), "http://a.test".into()],
            ..Default::default()
        };
        assert!(origin_allowed(&p, "https://x.example.com"));
        assert!(origin_allowed(&p, "http://a.test"));
        assert!(!origin_allowed(&p, "https://example.com"));
        assert!(!origin_allowed(&p, "http://b.test"));
    }
}
