//! pier-proxy over real sockets: routing, filters and answers per spec.

mod common;
use common::*;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn get(port: u16, host: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_path_method_header_and_query_with_precedence() {
    let (a, b, c) = (echo("a"), echo("b"), echo("c"));
    let port = free_port();
    let manifests = format!(
        "{}{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [app.test]\n  rules:\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{name: a, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    backendRefs: [{{name: b, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: Exact, value: /api/login}}}}, {{path: {{type: PathPrefix, value: /api}}, method: POST}}, {{path: {{type: PathPrefix, value: /api}}, headers: [{{name: X-Canary, value: 'yes'}}]}}, {{path: {{type: PathPrefix, value: /api}}, queryParams: [{{name: v, value: '2'}}]}}]\n    backendRefs: [{{name: c, port: 80}}]\n",
        http_gateway(port),
        service("a", a.port, None),
        service("b", b.port, None),
        service("c", c.port, None),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);
    let server = |r: &serde_json::Value| r["server"].as_str().unwrap().to_string();
    let check = |path: &'static str, want: &'static str| async move {
        let resp = get(port, "app.test", path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(server(&echoed(&resp.text().await.unwrap())), want, "{path}");
    };
    check("/", "a").await;
    check("/apix", "a").await; // whole segments only
    check("/api", "b").await;
    check("/api/things", "b").await;
    check("/api/login", "c").await;
    check("/api/things?v=2", "c").await;
    let resp = client()
        .post(format!("http://127.0.0.1:{port}/api/x"))
        .header("host", "app.test")
        .send()
        .await
        .unwrap();
    assert_eq!(server(&echoed(&resp.text().await.unwrap())), "c");
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/api/x"))
        .header("host", "app.test")
        .header("x-canary", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(server(&echoed(&resp.text().await.unwrap())), "c");
    // Unknown host: 404 from the proxy itself.
    assert_eq!(get(port, "other.test", "/").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_rewrite_redirect_and_edit_headers() {
    let a = echo("a");
    let port = free_port();
    let manifests = format!(
        "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /old}}}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {{scheme: https, statusCode: 308, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}}}\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /v1}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{hostname: internal.test, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: x-set, value: s}}], add: [{{name: x-add, value: a}}], remove: [x-drop]}}\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{add: [{{name: x-resp, value: r}}], remove: [x-echo-server]}}\n    backendRefs: [{{name: a, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /cors}}}}]\n    filters:\n    - type: CORS\n      cors: {{allowOrigins: ['https://*.example.com'], allowMethods: [GET, PUT], allowHeaders: [x-token], maxAge: 60}}\n    backendRefs: [{{name: a, port: 80}}]\n",
        http_gateway(port),
        service("a", a.port, None),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);

    let resp = get(port, "shop.test:8080", "/old/cart?id=1").await;
    assert_eq!(resp.status(), 308);
    assert_eq!(
        resp.headers()["location"],
        "https://shop.test/new/cart?id=1"
    );

    let resp = client()
        .get(format!("http://127.0.0.1:{port}/v1/items?q=1"))
        .header("host", "shop.test")
        .header("x-drop", "1")
        .header("x-add", "first")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-resp"], "r");
    assert!(
        resp.headers().get("x-echo-server").is_none(),
        "response header removed"
    );
    let seen = echoed(&resp.text().await.unwrap());
    assert_eq!(seen["path"], "/v2/items");
    assert_eq!(seen["query"], "q=1");
    assert_eq!(header(&seen, "host"), Some("internal.test"));
    assert_eq!(header(&seen, "x-set"), Some("s"));
    assert_eq!(header(&seen, "x-drop"), None);
    let adds: Vec<&str> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-add")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(adds, vec!["first", "a"]);
    assert_eq!(header(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(header(&seen, "x-forwarded-host"), Some("shop.test"));

    // CORS: preflight answered by the proxy, actual request gets the allow-origin header.
    let resp = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://127.0.0.1:{port}/cors"),
        )
        .header("host", "shop.test")
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET, PUT");
    assert_eq!(resp.headers()["access-control-max-age"], "60");
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/cors"))
        .header("host", "shop.test")
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_500_503_502_504_and_413_per_spec() {
    let a = echo("a");
    let port = free_port();
    let closed = free_port(); // nothing listens there: connect refused
                              // An upstream that accepts and never answers: the backend timeout fires.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let manifests = format!(
        "{}{}{}{}apiVersion: v1\nkind: Service\nmetadata: {{name: empty, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /missing}}}}]\n    backendRefs: [{{name: nope, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /empty}}}}]\n    backendRefs: [{{name: empty, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /refused}}}}]\n    backendRefs: [{{name: closed, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /slow}}}}]\n    timeouts: {{request: 300ms}}\n    backendRefs: [{{name: silent, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /}}}}]\n    backendRefs: [{{name: a, port: 80}}]\n",
        http_gateway(port),
        service("a", a.port, None),
        service("closed", closed, None),
        service("silent", silent_port, None),
    );
    let proxy = Proxy::start(&manifests, &[port], &["--max-body-bytes", "1024"]);
    assert_eq!(get(port, "x.test", "/missing").await.status(), 500);
    assert_eq!(get(port, "x.test", "/empty").await.status(), 503);
    assert_eq!(get(port, "x.test", "/refused").await.status(), 502);
    assert_eq!(get(port, "x.test", "/slow").await.status(), 504);
    let big = client()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("host", "x.test")
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let small = client()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("host", "x.test")
        .body(vec![b'x'; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(small.status(), 200);
    assert_eq!(echoed(&small.text().await.unwrap())["body_bytes"], 100);
    drop(silent);
    // Each answer the proxy made itself says why in the access log (written
    // after the response: poll).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for cause in [
        "backendRef not resolved",
        "no usable endpoint in backend set default/empty:80",
        "no other endpoint of backend set default/closed:80 to retry on",
    ] {
        while !proxy.logs().contains(cause) {
            assert!(
                std::time::Instant::now() < deadline,
                "the access log does not say {cause:?}:\n{}",
                proxy.logs()
            );
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_split_traffic_and_h2c_downstream_answers() {
    let (a, b) = (echo("a"), echo("b"));
    let port = free_port();
    let manifests = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20\x20- backendRefs: [{{name: a, port: 80, weight: 3}}, {{name: b, port: 80, weight: 1}}]\n",
        http_gateway(port),
        service("a", a.port, None),
        service("b", b.port, None),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);
    // HTTP/1.1 keep-alive for the split, then h2c (prior knowledge) with several streams.
    let h1 = client();
    let mut counts = std::collections::HashMap::new();
    for _ in 0..400 {
        let resp = h1
            .get(format!("http://127.0.0.1:{port}/"))
            .header("host", "w.test")
            .send()
            .await
            .unwrap();
        let seen = echoed(&resp.text().await.unwrap());
        *counts
            .entry(seen["server"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("w.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let resp = h2
        .get(format!("http://w.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    assert!(echoed(&resp.text().await.unwrap())["server"].is_string());
    for _ in 0..10 {
        let resp = h2
            .get(format!("http://w.test:{port}/again"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(echoed(&resp.text().await.unwrap())["path"], "/again");
    }
    let a_share = counts["a"] as f64 / 400.0;
    assert!((0.65..0.85).contains(&a_share), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_routes_match_service_and_method_and_reach_backends_over_http2() {
    let (greeter, other) = (echo("greeter"), echo("other"));
    let port = free_port();
    let manifests = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - matches: [{{method: {{service: helloworld.Greeter, method: SayHello}}}}]\n    backendRefs: [{{name: greeter, port: 80}}]\n\
         \x20 - matches: [{{method: {{service: helloworld.Greeter}}, headers: [{{name: x-env, value: canary}}]}}]\n    backendRefs: [{{name: other, port: 80}}]\n",
        http_gateway(port),
        service("greeter", greeter.port, None),
        service("other", other.port, None),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("grpc.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let call = |path: &'static str, env: Option<&'static str>| {
        let h2 = h2.clone();
        async move {
            let mut req = h2
                .post(format!("http://grpc.test:{port}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(vec![0u8, 0, 0, 0, 0]);
            if let Some(e) = env {
                req = req.header("x-env", e);
            }
            req.send().await.unwrap()
        }
    };
    let resp = call("/helloworld.Greeter/SayHello", None).await;
    assert_eq!(resp.status(), 200);
    let seen = echoed(&resp.text().await.unwrap());
    assert_eq!(seen["server"], "greeter");
    assert_eq!(
        seen["version"], "HTTP/2.0",
        "GRPCRoute backends are reached over HTTP/2 (h2c)"
    );
    let seen = echoed(
        &call("/helloworld.Greeter/SayGoodbye", Some("canary"))
            .await
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(seen["server"], "other");
    assert_eq!(
        call("/helloworld.Greeter/SayGoodbye", None).await.status(),
        404
    );
    assert_eq!(call("/other.Svc/SayHello", None).await.status(), 404);
}

fn pool_service(name: &str, annotations: &str, ports: &[u16]) -> String {
    let mut out = format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n---\n");
    for (i, port) in ports.iter().enumerate() {
        out.push_str(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{i}, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n---\n"
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_and_consistent_hash_follow_the_service_annotations() {
    let echoes = [echo("e0"), echo("e1"), echo("e2")];
    let ports: Vec<u16> = echoes.iter().map(|e| e.port).collect();
    let port = free_port();
    let manifests = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /rr}}}}]\n    backendRefs: [{{name: rr, port: 80}}]\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /sticky}}}}]\n    backendRefs: [{{name: sticky, port: 80}}]\n",
        http_gateway(port),
        pool_service("rr", "pier.dev/load-balancing: round-robin", &ports),
        pool_service("sticky", "pier.dev/load-balancing: consistent-hash, pier.dev/hash-on: 'header:x-user'", &ports),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);
    let c = client();
    let server_of = |path: &'static str, user: Option<String>| {
        let c = c.clone();
        async move {
            let mut req = c
                .get(format!("http://127.0.0.1:{port}{path}"))
                .header("host", "lb.test");
            if let Some(u) = user {
                req = req.header("x-user", u);
            }
            echoed(&req.send().await.unwrap().text().await.unwrap())["server"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let mut seq = Vec::new();
    for _ in 0..6 {
        seq.push(server_of("/rr", None).await);
    }
    assert_eq!(seq[..3], seq[3..], "round robin: {seq:?}");
    assert_eq!(
        seq[..3]
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "{seq:?}"
    );

    let mut used = std::collections::HashSet::new();
    for user in 0..20 {
        let first = server_of("/sticky", Some(format!("user-{user}"))).await;
        for _ in 0..3 {
            assert_eq!(
                server_of("/sticky", Some(format!("user-{user}"))).await,
                first,
                "user-{user} moved"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "keys spread over endpoints: {used:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_cannot_dodge_a_route() {
    let (admin, public) = (echo("admin"), echo("public"));
    let port = free_port();
    let manifests = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: /admin}}}}]\n    backendRefs: [{{name: admin, port: 80}}]\n\
         \x20 - backendRefs: [{{name: public, port: 80}}]\n",
        http_gateway(port),
        service("admin", admin.port, None),
        service("public", public.port, None),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);
    for path in [
        "/x/../admin/panel",
        "/x/%2e%2e/admin/panel",
        "/./admin/panel",
    ] {
        // Raw request: HTTP clients would normalise the path themselves.
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: n.test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1;
        let seen = echoed(body);
        assert_eq!(seen["server"], "admin", "{path}");
        assert_eq!(
            seen["path"], "/admin/panel",
            "{path}: the upstream gets the normalised path"
        );
    }
}

/// An upstream that answers the head at once, then one body byte per 100 ms.
fn trickling_upstream() -> u16 {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut conn = conn;
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n");
                for _ in 0..50 {
                    // The trickle is the point of this upstream.
                    std::thread::sleep(Duration::from_millis(100));
                    if conn.write_all(b"x").is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_timeout_covers_the_whole_exchange() {
    let port = free_port();
    let trickle = trickling_upstream();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let manifests = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /trickle}}}}]\n    timeouts: {{request: 500ms}}\n    backendRefs: [{{name: trickle, port: 80}}]\n\
         \x20\x20- matches: [{{path: {{type: PathPrefix, value: /silent}}}}]\n    timeouts: {{request: 300ms, backendRequest: 250ms}}\n    backendRefs: [{{name: silent, port: 80}}]\n",
        http_gateway(port),
        service("trickle", trickle, None),
        service("silent", silent_port, None),
    );
    let _proxy = Proxy::start(&manifests, &[port], &[]);
    // The head came in time, the body would take 5 s: cut at the deadline.
    let started = std::time::Instant::now();
    let resp = get(port, "x.test", "/trickle").await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await;
    assert!(
        body.is_err() || body.unwrap().len() < 50,
        "the body was not cut"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Nothing comes back at all: 504 within the request timeout's reach.
    let started = std::time::Instant::now();
    assert_eq!(get(port, "x.test", "/silent").await.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(silent);
}
