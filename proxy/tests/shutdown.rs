//! Graceful shutdown: on SIGTERM a request in flight still gets its answer,
//! then the process exits.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn sigterm_drains_the_request_in_flight() {
    // An upstream that answers only when the test says so.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = upstream.local_addr().unwrap().port();
    let (got_request, request_seen) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        for conn in upstream.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let mut first = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                if first.is_empty() {
                    first = line.clone();
                }
                line.clear();
            }
            if first.is_empty() {
                continue; // a readiness probe
            }
            let _ = got_request.send(());
            let _ = released.recv();
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\ndrained");
            return;
        }
    });
    let listen = free_port();
    let manifests = format!(
        "{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: slow, port: 80}}]\n",
        http_gateway(listen),
        service("slow", up_port, None),
    );
    let mut proxy = Proxy::start(&manifests, &[listen], &["--grace-seconds", "3"]);
    let client = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: s.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    request_seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the request reached the upstream");
    let pid = proxy.proc.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // New connections stop being accepted while the old request is still open.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", listen)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the listener kept accepting after SIGTERM"
        );
        std::thread::yield_now();
    }
    release.send(()).unwrap();
    let answer = client.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("drained"),
        "{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = proxy.proc.0.try_wait().unwrap() {
            assert!(
                status.success() || status.code().is_none() || status.code() == Some(0),
                "{status}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after draining"
        );
        std::thread::yield_now();
    }
}
