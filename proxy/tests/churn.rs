//! Endpoint churn and certificate rotation rebuild only what they touch:
//! traffic moves to the new endpoint (the new certificate is served) while
//! the route table built at start stays (`pier_proxy_route_table_builds_total`)
//! and only the changed certificate is parsed again.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn web(port: u16, endpoint_port: u16) -> String {
    format!(
        "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - matches: [{{path: {{type: RegularExpression, value: '/re/[a-z]+'}}}}]\n    backendRefs: [{{name: web, port: 80}}]\n\
         \x20 - backendRefs: [{{name: web, port: 80}}]\n",
        http_gateway(port),
        service("web", endpoint_port, None),
    )
}

async fn server_of(port: u16, path: &str) -> String {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .header("host", "churn.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    echoed(&resp.text().await.unwrap())["server"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Polls the metric until it reaches `want`.
async fn wait_metric(proxy: &Proxy, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.metric(name) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{name} is {:?}, not {want}:\n{}",
            proxy.metric(name),
            proxy.logs()
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_change_moves_traffic_without_rebuilding_the_route_table() {
    let (a, b) = (echo("a"), echo("b"));
    let port = free_port();
    let proxy = Proxy::start(&web(port, a.port), &[port], &[]);
    assert_eq!(server_of(port, "/").await, "a");
    assert_eq!(server_of(port, "/re/x").await, "a");
    assert_eq!(
        proxy.metric("pier_proxy_route_table_builds_total"),
        Some(1.0)
    );
    let swaps = proxy.metric("pier_proxy_snapshot_swaps_total").unwrap();

    // The Service's EndpointSlice now points at b: a backends-only change.
    proxy.rewrite(&web(port, b.port));
    wait_metric(&proxy, "pier_proxy_snapshot_swaps_total", swaps + 1.0).await;
    assert_eq!(server_of(port, "/").await, "b");
    assert_eq!(server_of(port, "/re/y").await, "b");
    assert_eq!(
        proxy.metric("pier_proxy_route_table_builds_total"),
        Some(1.0),
        "the route table (and its regexes) was rebuilt for an endpoint change"
    );

    // A route change does rebuild it.
    proxy.rewrite(&web(port, b.port).replace("/re/[a-z]+", "/re/[0-9]+"));
    wait_metric(&proxy, "pier_proxy_route_table_builds_total", 2.0).await;
    assert_eq!(server_of(port, "/re/1").await, "b");
    assert_eq!(
        proxy.metric("pier_proxy_snapshot_rejected_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_certificate_is_the_only_one_parsed_again() {
    let a_old = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let a_new = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let b_cert = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
    let upstream = echo("tls-backend");
    let port = free_port();
    let manifests = |a: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        format!(
            "{GATEWAY_CLASS}{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n\
             \x20 - {{name: a, protocol: HTTPS, port: {port}, hostname: a.test, tls: {{certificateRefs: [{{name: a}}]}}}}\n\
             \x20 - {{name: b, protocol: HTTPS, port: {port}, hostname: b.test, tls: {{certificateRefs: [{{name: b}}]}}}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: backend, port: 80}}]\n",
            tls_secret("a", &a.cert.pem(), &a.signing_key.serialize_pem()),
            tls_secret("b", &b_cert.cert.pem(), &b_cert.signing_key.serialize_pem()),
            service("backend", upstream.port, None),
        )
    };
    let proxy = Proxy::start(&manifests(&a_old), &[port], &[]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // A client that trusts only `trusted` (and a fresh connection each time).
    let status = |trusted: &rcgen::CertifiedKey<rcgen::KeyPair>, host: &str| {
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(trusted.cert.pem().as_bytes()).unwrap(),
            )
            .resolve(host, addr)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = format!("https://{host}:{port}/");
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(status(&a_old, "a.test").await.unwrap(), 200);
    assert!(status(&a_new, "a.test").await.is_err());
    assert_eq!(
        proxy.metric("pier_proxy_certificates_parsed_total"),
        Some(2.0)
    );

    proxy.rewrite(&manifests(&a_new));
    wait_metric(&proxy, "pier_proxy_certificates_parsed_total", 3.0).await;
    assert_eq!(status(&a_new, "a.test").await.unwrap(), 200);
    assert!(status(&a_old, "a.test").await.is_err());
    assert_eq!(status(&b_cert, "b.test").await.unwrap(), 200);
    assert_eq!(
        proxy.metric("pier_proxy_route_table_builds_total"),
        Some(1.0),
        "a certificate rotation rebuilt the route table"
    );
}
