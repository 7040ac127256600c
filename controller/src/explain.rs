//! `pier-controller explain`: routes one request through the same RouteTable
//! the proxy uses and prints every step.

use crate::args::RequestArgs;
use anyhow::{bail, Result};
use pier_route_table::{split_host_port, RequestInfo, RouteTable, Selection};
use pier_snapshot::{BackendRef, RouteAction};
use pier_translate::Translation;
use std::fmt::Write;

pub struct ParsedUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
}

pub fn parse_url(url: &str) -> Result<ParsedUrl> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("URL {url:?} must start with http:// or https://");
    };
    let (authority, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = split_host_port(authority)
        .map_err(|e| anyhow::anyhow!("URL {url:?} has an invalid authority {authority:?}: {e}"))?;
    let host = host.to_string();
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    if host.is_empty() {
        bail!("URL {url:?} has no host");
    }
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_query.to_string(), None),
    };
    Ok(ParsedUrl {
        tls,
        host,
        port,
        path,
        query,
    })
}

pub fn explain(out: &Translation, request: &RequestArgs) -> Result<String> {
    let url = parse_url(&request.url)?;
    let table = RouteTable::build(&out.snapshot)
        .map_err(|e| anyhow::anyhow!("the snapshot does not build a route table: {e}"))?;
    let sni = if url.tls {
        Some(request.sni.clone().unwrap_or_else(|| url.host.clone()))
    } else {
        None
    };
    let host_header = request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| url.host.clone());
    let req = RequestInfo {
        port: url.port,
        sni: sni.as_deref(),
        host: &host_header,
        method: &request.method,
        path: &url.path,
        query: url.query.as_deref(),
        headers: &request.headers,
    };
    let mut text = String::new();
    writeln!(
        text,
        "{} {} (port {}, Host {host_header}{})",
        request.method,
        request.url,
        url.port,
        sni.as_ref()
            .map(|s| format!(", SNI {s}"))
            .unwrap_or_default()
    )?;
    if let Some(l) = out
        .snapshot
        .routes
        .data
        .listeners
        .iter()
        .find(|l| l.port == url.port)
    {
        writeln!(
            text,
            "listener: port {} {:?} from {}",
            l.port,
            l.protocol,
            l.sources.join(", ")
        )?;
    }
    let (selection, trace) = table.explain(&req);
    for line in trace {
        writeln!(text, "{line}")?;
    }
    match selection {
        Selection::Route(entry) => {
            writeln!(text, "result: {}", entry.source)?;
            match &entry.action {
                RouteAction::Forward(backends) => {
                    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
                    for b in backends {
                        match &b.backend {
                            BackendRef::Service(key) => {
                                let set = out.snapshot.backends.data.get(key);
                                let endpoints = set.map(|s| s.usable(|_| true)).unwrap_or_default();
                                let list: Vec<String> = endpoints.iter().map(|e| format!("{}:{}", e.address, e.port)).collect();
                                writeln!(text, "  backend {key} weight {}/{total}: {} usable endpoints [{}]", b.weight, list.len(), list.join(", "))?;
                                if list.is_empty() {
                                    writeln!(text, "    (no ready endpoint: the proxy answers 503)")?;
                                }
                            }
                            BackendRef::Unresolved(why) => writeln!(text, "  unresolved backend weight {}/{total}: {why} (the proxy answers 500)", b.weight)?,
                        }
                    }
                }
                RouteAction::Redirect(r) => writeln!(text, "  redirect {} {r:?}", r.status)?,
                RouteAction::Respond { status, reason } => {
                    writeln!(text, "  answers {status}: {reason}")?
                }
            }
            if !entry.filters.is_empty() {
                writeln!(text, "  filters: {:?}", entry.filters)?;
            }
        }
        other => writeln!(text, "result: {other:?}")?,
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls_parse_with_default_ports() {
        let u = parse_url("https://a.example.com/x/y?q=1").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str(), u.query.as_deref()),
            ("a.example.com", 443, "/x/y", Some("q=1"))
        );
        let u = parse_url("http://a:8080").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert!(parse_url("ftp://a").is_err());
        assert!(parse_url("http://a:99999/").is_err());
        // IPv6 literals: the host without brackets, the port after them.
        let u = parse_url("http://[::1]:8080/p").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        let u = parse_url("https://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        assert!(parse_url("http://[::1/").is_err());
    }
}
