//! TLS termination with rustls: certificate per SNI, ALPN h2, 421 for a Host
//! outside the SNI's listener, and a broken Secret that costs only its own listener.

mod common;
use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn certificates_follow_sni_and_misdirected_hosts_get_421() {
    let a_cert = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let b_cert = rcgen::generate_simple_self_signed(vec!["*.b.test".to_string()]).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let upstream = echo("tls-backend");
    let port = free_port();
    let manifests = format!(
        "{GATEWAY_CLASS}{}{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n\
         \x20 - {{name: a, protocol: HTTPS, port: {port}, hostname: a.test, tls: {{certificateRefs: [{{name: a}}]}}}}\n\
         \x20 - {{name: b, protocol: HTTPS, port: {port}, hostname: '*.b.test', tls: {{certificateRefs: [{{name: b}}]}}}}\n\
         \x20 - {{name: c, protocol: HTTPS, port: {port}, hostname: c.test, tls: {{certificateRefs: [{{name: broken}}]}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: backend, port: 80}}]\n",
        tls_secret("a", &a_cert.cert.pem(), &a_cert.signing_key.serialize_pem()),
        tls_secret("b", &b_cert.cert.pem(), &b_cert.signing_key.serialize_pem()),
        // PEM-shaped, but the key does not belong to the certificate.
        tls_secret("broken", &a_cert.cert.pem(), &other_key.serialize_pem()),
        service("backend", upstream.port, None),
    );
    let proxy = Proxy::start(&manifests, &[port], &[]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = |h2: bool, max12: bool| {
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(a_cert.cert.pem().as_bytes()).unwrap(),
            )
            .add_root_certificate(
                reqwest::Certificate::from_pem(b_cert.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("a.test", addr)
            .resolve("x.b.test", addr)
            .resolve("c.test", addr)
            .resolve("nobody.test", addr)
            .timeout(Duration::from_secs(10));
        if !h2 {
            b = b.http1_only();
        }
        if max12 {
            b = b.max_tls_version(reqwest::tls::Version::TLS_1_2);
        }
        b.build().unwrap()
    };

    // a.test: its own certificate (the client trusts it for a.test only), ALPN h2.
    let resp = client(true, false)
        .get(format!("https://a.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let seen = echoed(&resp.text().await.unwrap());
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("https"));
    // *.b.test: the wildcard certificate; TLS 1.2 is accepted too.
    let resp = client(false, true)
        .get(format!("https://x.b.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A Host that belongs to another listener than the SNI's: 421.
    let resp = client(false, false)
        .get(format!("https://a.test:{port}/"))
        .header("host", "x.b.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 421);
    // The broken Secret fails only c.test's handshake; unknown names fail too.
    assert!(client(false, false)
        .get(format!("https://c.test:{port}/"))
        .send()
        .await
        .is_err());
    assert!(client(false, false)
        .get(format!("https://nobody.test:{port}/"))
        .send()
        .await
        .is_err());
    assert!(client(false, false)
        .get(format!("https://a.test:{port}/again"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    assert!(
        proxy.logs().contains("certificate not loaded"),
        "the broken Secret is reported"
    );
    assert!(
        !proxy.logs().contains("PRIVATE KEY"),
        "key material is never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn https_backends_are_reached_over_tls() {
    // The HTTPS backend is a second pier-proxy terminating TLS in front of an echo.
    let cert = rcgen::generate_simple_self_signed(vec!["backend.test".to_string()]).unwrap();
    let upstream = echo("behind-tls");
    let tls_port = free_port();
    let backend_manifests = format!(
        "{GATEWAY_CLASS}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n  - {{name: https, protocol: HTTPS, port: {tls_port}, tls: {{certificateRefs: [{{name: c}}]}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: echo, port: 80}}]\n",
        tls_secret("c", &cert.cert.pem(), &cert.signing_key.serialize_pem()),
        service("echo", upstream.port, None),
    );
    let _backend = Proxy::start(&backend_manifests, &[tls_port], &[]);
    let front_port = free_port();
    let front_manifests = format!(
        "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: secure, port: 80}}]\n",
        http_gateway(front_port),
        service("secure", tls_port, Some("https")),
    );
    let _front = Proxy::start(&front_manifests, &[front_port], &[]);
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{front_port}/through"))
        .header("host", "backend.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = echoed(&resp.text().await.unwrap());
    assert_eq!(seen["server"], "behind-tls");
    assert_eq!(seen["path"], "/through");
    // The TLS-terminating hop saw HTTPS from the front proxy.
    let protos: Vec<&str> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-forwarded-proto")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(protos, vec!["https"], "{seen}");
    // An IPv6 literal Host: the upstream SNI is the address without brackets
    // (so none is sent), not a broken name cut at the first colon.
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{front_port}/v6"))
        .header("host", format!("[::1]:{front_port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(echoed(&resp.text().await.unwrap())["path"], "/v6");
}
