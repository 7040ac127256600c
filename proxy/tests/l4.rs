//! L4 forwarding through real sockets: TCPRoute by port, TLSRoute passthrough by SNI.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A TCP server that reports the first bytes it gets, answers `reply`, then echoes.
fn tcp_backend(reply: &'static [u8]) -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                // Readiness probes connect and close: nothing to report for them.
                let Ok(n @ 1..) = conn.read(&mut buf) else {
                    return;
                };
                let _ = tx.send(buf[..n].to_vec());
                let _ = conn.write_all(reply);
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, rx)
}

fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

#[test]
fn tcp_routes_and_tls_passthrough_forward_bytes_untouched() {
    let (db_port, db_rx) = tcp_backend(b"db-ready\n");
    let (tls_port, tls_rx) = tcp_backend(b"tls-backend\n");
    let (tcp_listen, tls_listen) = (free_port(), free_port());
    let manifests = format!(
        "{GATEWAY_CLASS}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n\
         \x20 - {{name: db, protocol: TCP, port: {tcp_listen}}}\n\
         \x20 - {{name: pass, protocol: TLS, port: {tls_listen}, tls: {{mode: Passthrough}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: db, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: db}}]\n  rules: [{{backendRefs: [{{name: db, port: 80}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: pass, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: pass}}]\n  hostnames: [pass.test]\n  rules: [{{backendRefs: [{{name: secure, port: 80}}]}}]\n",
        service("db", db_port, None),
        service("secure", tls_port, None),
    );
    let _proxy = Proxy::start(&manifests, &[tcp_listen, tls_listen], &[]);

    // TCP: the first bytes arrive as sent, the reply and the echo come back.
    let mut s = TcpStream::connect(("127.0.0.1", tcp_listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"\x00\x01startup").unwrap();
    assert_eq!(
        db_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        b"\x00\x01startup"
    );
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"db-ready\n");
    s.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");

    // TLS passthrough: the backend receives the client's own ClientHello, byte for byte.
    let hello = client_hello("pass.test");
    let mut s = TcpStream::connect(("127.0.0.1", tls_listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello).unwrap();
    assert_eq!(tls_rx.recv_timeout(Duration::from_secs(10)).unwrap(), hello);
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"tls-backend\n");

    // An SNI with no route is closed without reaching any backend.
    let mut s = TcpStream::connect(("127.0.0.1", tls_listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&client_hello("other.test")).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert!(tls_rx.try_recv().is_err());
}

#[test]
fn udp_routes_forward_datagrams_and_replies() {
    let backend = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = backend.recv_from(&mut buf) {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = backend.send_to(&reply, from);
        }
    });
    let udp_listen = free_port();
    let manifests = format!(
        "{GATEWAY_CLASS}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n\
         \x20 - {{name: dns, protocol: UDP, port: {udp_listen}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: UDPRoute\nmetadata: {{name: dns, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{name: dns, port: 80}}]}}]\n",
        service("dns", backend_port, None).replace("protocol: TCP", "protocol: UDP").replace("- name: http\n    port: 80", "- name: http\n    port: 80\n    protocol: UDP"),
    );
    let _proxy = Proxy::start(&manifests, &[], &[]);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    // The UDP socket has no handshake to wait for: retry until the proxy answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let n = loop {
        client
            .send_to(b"query-1", ("127.0.0.1", udp_listen))
            .unwrap();
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no UDP answer through the proxy"
        );
    };
    assert_eq!(&buf[..n], b"echo:query-1");
    client
        .send_to(b"query-2", ("127.0.0.1", udp_listen))
        .unwrap();
    let (n, from) = client.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"echo:query-2");
    assert_eq!(
        from.port(),
        udp_listen,
        "replies come from the address the client sent to"
    );
}

/// A TLS client (trusting `cert` only) over a plain socket.
fn tls_client(
    port: u16,
    sni: &str,
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(Arc::new(config), sni.to_string().try_into().unwrap())
        .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

#[test]
fn one_tls_port_serves_https_passthrough_and_terminated_tcp_by_sni() {
    let web = rcgen::generate_simple_self_signed(vec!["web.test".to_string()]).unwrap();
    let db = rcgen::generate_simple_self_signed(vec!["db.test".to_string()]).unwrap();
    let upstream = echo("https-backend");
    let (plain_port, plain_rx) = tcp_backend(b"plain-backend\n");
    let (pass_port, pass_rx) = tcp_backend(b"pass-backend\n");
    let port = free_port();
    let manifests = format!(
        "{GATEWAY_CLASS}{}{}{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n\
         \x20 - {{name: web, protocol: HTTPS, port: {port}, hostname: web.test, tls: {{certificateRefs: [{{name: web}}]}}}}\n\
         \x20 - {{name: db, protocol: TLS, port: {port}, hostname: db.test, tls: {{mode: Terminate, certificateRefs: [{{name: db}}]}}}}\n\
         \x20 - {{name: pass, protocol: TLS, port: {port}, hostname: pass.test, tls: {{mode: Passthrough}}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: web}}]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: db, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: db}}]\n  hostnames: [db.test]\n  rules: [{{backendRefs: [{{name: db, port: 80}}]}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: TLSRoute\nmetadata: {{name: pass, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: pass}}]\n  hostnames: [pass.test]\n  rules: [{{backendRefs: [{{name: pass, port: 80}}]}}]\n",
        tls_secret("web", &web.cert.pem(), &web.signing_key.serialize_pem()),
        tls_secret("db", &db.cert.pem(), &db.signing_key.serialize_pem()),
        service("web", upstream.port, None),
        service("db", plain_port, None),
        service("pass", pass_port, None),
    );
    let proxy = Proxy::start(&manifests, &[port], &[]);

    // HTTPS: terminated here, served by the HTTP proxy.
    let mut https = tls_client(port, "web.test", web.cert.der());
    https
        .write_all(b"GET /hello HTTP/1.1\r\nhost: web.test\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = https.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\n{}",
        proxy.logs()
    );
    assert!(answer.contains("https-backend"), "{answer}");

    // TLS Terminate: the backend gets plaintext; its answer comes back encrypted.
    let mut db_conn = tls_client(port, "db.test", db.cert.der());
    db_conn.write_all(b"SELECT 1").unwrap();
    assert_eq!(
        plain_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        b"SELECT 1"
    );
    let mut reply = [0u8; 14];
    db_conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"plain-backend\n");

    // Passthrough: the backend gets the client's own ClientHello.
    let hello = client_hello("pass.test");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello).unwrap();
    assert_eq!(
        pass_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        hello
    );
}

#[test]
fn an_idle_l4_connection_is_closed_and_a_busy_one_is_not() {
    let (db_port, _db_rx) = tcp_backend(b"ready\n");
    let listen = free_port();
    let manifests = format!(
        "{GATEWAY_CLASS}{}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n\
         \x20 - {{name: db, protocol: TCP, port: {listen}}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {{name: db, namespace: default}}\nspec:\n  parentRefs: [{{name: gw, sectionName: db}}]\n  rules: [{{backendRefs: [{{name: db, port: 80}}]}}]\n",
        service("db", db_port, None),
    );
    let _proxy = Proxy::start(&manifests, &[listen], &["--l4-idle-timeout", "1"]);
    let connect = || {
        let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"hello").unwrap();
        let mut ready = [0u8; 6];
        s.read_exact(&mut ready).unwrap();
        s
    };
    // Busy: an echo every 300 ms for 2 s keeps it open past the 1 s limit.
    let mut busy = connect();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        busy.write_all(b"ping").unwrap();
        let mut echo = [0u8; 4];
        busy.read_exact(&mut echo).unwrap();
        // The pause between messages is what this test is about.
        std::thread::sleep(Duration::from_millis(300));
    }
    // Full duplex: a big upload echoed back while it is still being sent
    // (each direction blocks on the other if they are not copied concurrently).
    let mut duplex = connect();
    let mut writer = duplex.try_clone().unwrap();
    const TOTAL: usize = 16 * 1024 * 1024;
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'z'; 64 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            writer.write_all(&chunk).unwrap();
        }
    });
    let mut received = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while received < TOTAL {
        let n = duplex.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {received} bytes");
        received += n;
    }
    sender.join().unwrap();
    // Idle: closed by the proxy after about a second, well before our 10 s read timeout.
    let mut idle = connect();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 8];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "the proxy closes it");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
