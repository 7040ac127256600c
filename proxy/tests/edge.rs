//! Upgrades, garbage and operability: WebSocket tunnelling, malformed and
//! oversized requests (clear answers, the proxy keeps serving), admin endpoints.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// An upstream that answers an Upgrade with 101 and then echoes raw bytes.
fn upgrade_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut upgrade = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.to_ascii_lowercase().starts_with("upgrade: websocket") {
                        upgrade = true;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                if !upgrade {
                    let _ =
                        conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
                    return;
                }
                conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n").unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn route_to(backend: &str, port: u16, app_protocol: Option<&str>) -> (u16, String) {
    let listen = free_port();
    let manifests = format!(
        "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: 80}}]\n",
        http_gateway(listen),
        service(backend, port, app_protocol),
    );
    (listen, manifests)
}

#[test]
fn websocket_upgrades_are_tunnelled_both_ways() {
    let (listen, manifests) = route_to("ws", upgrade_upstream(), Some("kubernetes.io/ws"));
    let _proxy = Proxy::start(&manifests, &[listen], &[]);
    let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [&b"hello"[..], b"second frame", &[0u8, 255, 1, 2]] {
        s.write_all(message).unwrap();
        let mut back = vec![0u8; message.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, message);
    }
}

#[test]
fn garbage_and_oversized_requests_get_clear_answers_and_the_proxy_keeps_serving() {
    let upstream = echo("a");
    let (listen, manifests) = route_to("a", upstream.port, None);
    let _proxy = Proxy::start(&manifests, &[listen], &[]);
    let send = |bytes: &[u8]| -> String {
        let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    // (Inputs are longer than the 24-byte HTTP/2 preface the plain port peeks for.)
    let answer = send(b"NOT HTTP AT ALL, JUST SOME GARBAGE BYTES\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = send(
        b"GET / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    );
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "conflicting lengths: {answer}"
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "x".repeat(256 * 1024)
    );
    let answer = send(huge.as_bytes());
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "an oversized header is refused: {answer:.80}"
    );
    let mut tls_hello = b"\x16\x03\x01\x00\x30".to_vec(); // a TLS record on a plain port
    tls_hello.extend([1u8; 48]);
    let answer = send(&tls_hello);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Still serving.
    let ok = send(b"GET /after HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"path\":\"/after\""));
}

#[test]
fn admin_reports_health_readiness_and_metrics() {
    let upstream = echo("a");
    let (listen, manifests) = route_to("a", upstream.port, None);
    let proxy = Proxy::start(&manifests, &[listen], &[]);
    assert_eq!(
        ureq_get(&format!("http://127.0.0.1:{}/healthz", proxy.admin)),
        "ok\n"
    );
    assert_eq!(
        ureq_get(&format!("http://127.0.0.1:{}/readyz", proxy.admin)),
        "ready\n"
    );
    let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.write_all(b"GET /m HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"));
    let metrics = ureq_get(&format!("http://127.0.0.1:{}/metrics", proxy.admin));
    assert!(
        metrics.contains("pier_proxy_requests_total{code=\"200\",route=\"HTTPRoute/default/r\"} 1"),
        "{metrics}"
    );
    assert!(metrics
        .contains("pier_proxy_request_duration_seconds_count{route=\"HTTPRoute/default/r\"} 1"));
    assert!(metrics.contains("pier_proxy_snapshot_swaps_total 1"));
    assert!(metrics.contains("pier_proxy_snapshot_routes_version 1"));
}

#[test]
fn requests_are_mirrored_fire_and_forget() {
    let upstream = echo("main");
    let mirror = TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror_port = mirror.local_addr().unwrap().port();
    let listen = free_port();
    let manifests = format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n\
         \x20 - filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: shadow, port: 80}}}}}}]\n    backendRefs: [{{name: main, port: 80}}]\n",
        http_gateway(listen),
        service("main", upstream.port, None),
        service("shadow", mirror_port, None),
    );
    let _proxy = Proxy::start(&manifests, &[listen], &[]);
    let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.write_all(
        b"GET /copy-me?x=1 HTTP/1.1\r\nHost: m.test\r\nX-Trace: 42\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("\"server\":\"main\""),
        "{out}"
    );
    // The mirror gets the same request head.
    let (mut copy, _) = mirror.accept().unwrap();
    copy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = read_head(&mut copy);
    assert!(head.starts_with("GET /copy-me?x=1 HTTP/1.1"), "{head}");
    assert!(head.contains("x-trace: 42"), "{head}");
    assert!(head.contains("content-length: 0"), "{head}");

    // A request body is mirrored too (chunked, as it streams in).
    let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: m.test\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello-body",
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let (mut copy, _) = mirror.accept().unwrap();
    copy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = read_head(&mut copy);
    assert!(head.starts_with("POST /upload HTTP/1.1"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // Read the chunked body up to its last chunk.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"0\r\n\r\n") {
        assert_eq!(
            copy.read(&mut byte).unwrap(),
            1,
            "the body ended early: {raw:?}"
        );
        raw.push(byte[0]);
    }
    let mut body = Vec::new();
    let mut rest = &raw[..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
    assert_eq!(body, b"hello-body");
}
