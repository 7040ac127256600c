use super::*;
use pier_snapshot::*;

fn entry(
    name: &str,
    path: PathMatch,
    method: Option<&str>,
    headers: Vec<ValueMatch>,
) -> HttpRouteEntry {
    HttpRouteEntry {
        source: RouteSource {
            kind: "HTTPRoute".into(),
            namespace: "default".into(),
            name: name.into(),
            rule: 0,
            rule_name: None,
            match_index: 0,
        },
        matcher: RequestMatch {
            path,
            method: method.map(Into::into),
            headers,
            query_params: vec![],
        },
        filters: vec![],
        action: RouteAction::Respond {
            status: 200,
            reason: name.into(),
        },
        timeouts: Timeouts::default(),
        upstream: UpstreamProtocol::FromBackend,
    }
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot::empty();
    let vhost = |hostname: &str, single: bool, routes| VirtualHost {
        hostname: hostname.into(),
        single_label_wildcard: single,
        routes,
    };
    s.routes.data.listeners = vec![
        PortListener {
            port: 80,
            protocol: PortProtocol::Http,
            sources: vec![],
            tls: vec![],
            virtual_hosts: vec![
                vhost(
                    "foo.com",
                    false,
                    vec![
                        entry("exact", PathMatch::Exact("/api".into()), None, vec![]),
                        entry("long", PathMatch::Prefix("/api/v1".into()), None, vec![]),
                        entry(
                            "post",
                            PathMatch::Prefix("/api".into()),
                            Some("POST"),
                            vec![],
                        ),
                        entry(
                            "hdr",
                            PathMatch::Prefix("/api".into()),
                            None,
                            vec![ValueMatch {
                                name: "x-v".into(),
                                kind: ValueMatchKind::Regex,
                                value: "2|3".into(),
                            }],
                        ),
                        entry("api", PathMatch::Prefix("/api".into()), None, vec![]),
                        entry("re", PathMatch::Regex("/img/[0-9]+".into()), None, vec![]),
                        entry("root", PathMatch::Prefix("/".into()), None, vec![]),
                    ],
                ),
                vhost(
                    "*.bar.com",
                    false,
                    vec![entry(
                        "gw-wild",
                        PathMatch::Prefix("/".into()),
                        None,
                        vec![],
                    )],
                ),
                vhost(
                    "*.ing.com",
                    true,
                    vec![entry(
                        "ing-wild",
                        PathMatch::Prefix("/".into()),
                        None,
                        vec![],
                    )],
                ),
            ],
            l4: None,
        },
        PortListener {
            port: 443,
            protocol: PortProtocol::Tls,
            sources: vec![],
            tls: vec![SniEntry {
                hostname: "*.bar.com".into(),
                action: SniAction::TerminateHttp {
                    certificates: vec!["default/c".into()],
                },
            }],
            virtual_hosts: vec![vhost(
                "*.bar.com",
                false,
                vec![entry("tls", PathMatch::Prefix("/".into()), None, vec![])],
            )],
            l4: None,
        },
    ];
    s
}

fn route(
    t: &RouteTable,
    port: u16,
    sni: Option<&str>,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> String {
    let headers = headers.to_vec();
    let req = RequestInfo {
        port,
        sni,
        host,
        method,
        path,
        query: None,
        headers: &headers,
    };
    match t.select(&req) {
        Selection::Route(e) => e.source.name.clone(),
        Selection::NoListener => "NoListener".into(),
        Selection::UnknownSni => "UnknownSni".into(),
        Selection::Misdirected => "Misdirected".into(),
        Selection::NotFound => "NotFound".into(),
    }
}

#[test]
fn precedence_and_whole_segment_prefixes() {
    let t = RouteTable::build(&snapshot()).unwrap();
    let get = |path: &str| route(&t, 80, None, "foo.com", "GET", path, &[]);
    assert_eq!(get("/api"), "exact");
    assert_eq!(get("/api/v1/x"), "long");
    assert_eq!(
        get("/api/v10"),
        "api",
        "prefix /api/v1 must not match /api/v10"
    );
    assert_eq!(get("/apix"), "root");
    assert_eq!(get("/img/42"), "re");
    assert_eq!(get("/img/42/x"), "root", "regex is anchored");
    assert_eq!(
        route(&t, 80, None, "FOO.com:80", "POST", "/api/x", &[]),
        "post"
    );
    assert_eq!(
        route(
            &t,
            80,
            None,
            "foo.com",
            "GET",
            "/api/x",
            &[("X-V".into(), "3".into())]
        ),
        "hdr"
    );
}

#[test]
fn wildcard_hosts_and_tls() {
    let t = RouteTable::build(&snapshot()).unwrap();
    assert_eq!(
        route(&t, 80, None, "a.b.bar.com", "GET", "/", &[]),
        "gw-wild"
    );
    assert_eq!(
        route(&t, 80, None, "a.ing.com", "GET", "/", &[]),
        "ing-wild"
    );
    assert_eq!(
        route(&t, 80, None, "a.b.ing.com", "GET", "/", &[]),
        "NotFound"
    );
    assert_eq!(route(&t, 80, None, "bar.com", "GET", "/", &[]), "NotFound");
    assert_eq!(
        route(&t, 443, Some("x.bar.com"), "x.bar.com", "GET", "/", &[]),
        "tls"
    );
    assert_eq!(
        route(&t, 443, Some("x.bar.com"), "foo.com", "GET", "/", &[]),
        "Misdirected"
    );
    assert_eq!(
        route(&t, 443, Some("foo.com"), "foo.com", "GET", "/", &[]),
        "UnknownSni"
    );
    assert_eq!(
        route(&t, 8080, None, "foo.com", "GET", "/", &[]),
        "NoListener"
    );
}

#[test]
fn an_invalid_regex_fails_the_build() {
    let mut s = snapshot();
    s.routes.data.listeners[0].virtual_hosts[0].routes[5]
        .matcher
        .path = PathMatch::Regex("(".into());
    assert!(RouteTable::build(&s).is_err());
}

#[test]
fn ipv6_hosts_lose_their_port_and_nested_prefixes_keep_precedence() {
    let mut s = snapshot();
    s.routes.data.listeners[0].virtual_hosts.push(VirtualHost {
        hostname: "*".into(),
        single_label_wildcard: false,
        routes: vec![
            entry("ab", PathMatch::Prefix("/a/b".into()), None, vec![]),
            entry("a-get", PathMatch::Prefix("/a".into()), Some("GET"), vec![]),
            entry("abc", PathMatch::Prefix("/a/b/c".into()), None, vec![]),
            entry("a", PathMatch::Prefix("/a".into()), None, vec![]),
            entry("any", PathMatch::Prefix("/".into()), None, vec![]),
        ],
    });
    let t = RouteTable::build(&s).unwrap();
    let get = |host: &str, method: &str, path: &str| route(&t, 80, None, host, method, path, &[]);
    assert_eq!(
        get("[::1]:80", "GET", "/a/b/c/d"),
        "ab",
        "first in precedence order"
    );
    assert_eq!(get("[::1]", "GET", "/a/x"), "a-get");
    assert_eq!(get("[::1]", "PUT", "/a/b/c"), "ab");
    assert_eq!(get("[::1]", "PUT", "/a/bc"), "a");
    assert_eq!(get("[::1]", "PUT", "/a/"), "a");
    assert_eq!(get("[::1]", "PUT", "/ab"), "any");
    assert_eq!(
        get("[::1", "GET", "/"),
        "any",
        "an unparsable Host still meets `*`"
    );
    let req = RequestInfo {
        port: 80,
        sni: None,
        host: "[::1]:80",
        method: "PUT",
        path: "/a/x",
        query: None,
        headers: &Vec::new(),
    };
    let (_, trace) = t.explain(&req);
    assert!(
        trace
            .iter()
            .any(|l| l.contains("a-get") && l.contains("method PUT is not GET")),
        "{trace:#?}"
    );
}
