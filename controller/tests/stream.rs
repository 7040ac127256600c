//! The snapshot stream for real: `pier-controller serve` over mutual TLS on
//! loopback, followed by the data planes' own follower (`pier-stream`).
//! Strangers get nothing; each subscriber gets only its view; a connection
//! that goes silent is noticed within the heartbeat window; a data plane
//! restarted without a controller starts from its state dir.

use pier_snapshot::Snapshot;
use pier_stream::test_pki::{with_ca, TestCa};
use pier_stream::{
    client_config, server_name, spawn_follower, ClientTls, FollowerConfig, Origin, ProxyScope,
    StateDir, StreamStatus, Subscriber, TlsFiles,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pier_tests::host::{free_port, Kill};

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn b64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Two Gateways, each with an HTTPS listener and its own certificate.
fn write_manifests(dir: &Path, certs: &[(&str, TlsFiles)]) {
    let mut yaml = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: pier\nspec:\n  controllerName: pier.dev/gateway-controller\n",
    );
    for (i, (name, files)) in certs.iter().enumerate() {
        let cert = std::fs::read(&files.cert).unwrap();
        let key = std::fs::read(&files.key).unwrap();
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-tls\n  namespace: default\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  gatewayClassName: pier\n  listeners:\n  - name: https\n    protocol: HTTPS\n    port: {}\n    hostname: {name}.test\n    tls:\n      certificateRefs:\n      - name: {name}-tls\n",
            b64(&cert),
            b64(&key),
            8443 + i
        ));
    }
    std::fs::write(dir.join("gateways.yaml"), yaml).unwrap();
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    ca: TestCa,
    keys: Vec<(String, String)>,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let ca = TestCa::new(&dir, "stream");
    let web = TestCa::new(&dir, "web");
    let certs = [
        ("a", web.server("a-web", &["a.test"])),
        ("b", web.server("b-web", &["b.test"])),
    ];
    std::fs::create_dir(dir.join("manifests")).unwrap();
    write_manifests(&dir.join("manifests"), &certs);
    let keys = certs
        .iter()
        .map(|(n, f)| (n.to_string(), std::fs::read_to_string(&f.key).unwrap()))
        .collect();
    Setup {
        _dir: tmp,
        dir,
        ca,
        keys,
    }
}

fn controller(s: &Setup, port: u16, extra: &[&str]) -> Kill {
    let server =
        s.ca.server("controller", &["pier-controller.test", "127.0.0.1"]);
    let child = Command::new(env!("CARGO_BIN_EXE_pier-controller"))
        .arg("serve")
        .arg("--manifests")
        .arg(s.dir.join("manifests"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--stream-tls-ca")
        .arg(&s.ca.ca_pem)
        .arg("--stream-tls-cert")
        .arg(&server.cert)
        .arg("--stream-tls-key")
        .arg(&server.key)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kill = Kill(child);
    wait_for("the controller to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    kill
}

type Latest = Arc<Mutex<Option<Snapshot>>>;

fn follow(
    addr: String,
    tls: Option<ClientTls>,
    subscriber: Subscriber,
    state: Option<StateDir>,
    heartbeat: Duration,
) -> (Arc<StreamStatus>, Latest) {
    let latest: Latest = Arc::default();
    let l = latest.clone();
    let mut config = FollowerConfig::new(addr, subscriber);
    config.tls = tls;
    config.state_dir = state;
    config.heartbeat = heartbeat;
    let status = spawn_follower(config, move |s, _| *l.lock().unwrap() = Some(s.clone())).unwrap();
    (status, latest)
}

/// How many certificates the follower's latest snapshot holds.
fn certificates(latest: &Latest) -> usize {
    latest
        .lock()
        .unwrap()
        .as_ref()
        .map_or(0, |s| s.certificates.data.len())
}

fn mtls(files: &TlsFiles) -> Option<ClientTls> {
    Some(ClientTls {
        config: client_config(files).unwrap(),
        server_name: server_name("pier-controller.test").unwrap(),
    })
}

fn proxy(scope: Option<&str>) -> Subscriber {
    Subscriber::Proxy {
        name: "test".into(),
        scope: ProxyScope {
            gateways: scope.map(|g| vec![g.to_string()]),
            ingress: true,
        },
    }
}

fn encoded(s: &Snapshot) -> String {
    format!("{s:?}")
        + &String::from_utf8_lossy(&pier_snapshot::encode(&pier_snapshot::Message::Full(
            s.clone(),
        )))
}

#[test]
fn mutual_tls_refuses_strangers_and_each_subscriber_gets_only_its_view() {
    let s = setup();
    let port = free_port();
    let _controller = controller(&s, port, &[]);
    let addr = format!("127.0.0.1:{port}");
    let hb = Duration::from_secs(5);
    let client = s.ca.client("proxy-a");

    // A proxy serving Gateway a: a's key, never b's.
    let (st, latest) = follow(
        addr.clone(),
        mtls(&client),
        proxy(Some("default/a")),
        None,
        hb,
    );
    assert!(
        st.wait_installed(Duration::from_secs(20)),
        "{}",
        st.describe()
    );
    let snap = latest.lock().unwrap().clone().unwrap();
    let certs: Vec<_> = snap.certificates.data.keys().cloned().collect();
    assert_eq!(certs, vec!["default/a-tls".to_string()]);
    let (a_key, b_key) = (&s.keys[0].1, &s.keys[1].1);
    assert_eq!(
        &snap.certificates.data["default/a-tls"].private_key_pem.0,
        a_key
    );
    let body = encoded(&snap);
    assert!(
        !body.contains(b_key.lines().nth(1).unwrap()),
        "b's key reached a proxy of a"
    );
    assert_eq!(
        snap.routes
            .data
            .listeners
            .iter()
            .map(|l| l.port)
            .collect::<Vec<_>>(),
        vec![8443]
    );

    // An unscoped proxy serves both.
    let (st, latest) = follow(
        addr.clone(),
        mtls(&s.ca.client("proxy-all")),
        proxy(None),
        None,
        hb,
    );
    assert!(st.wait_installed(Duration::from_secs(20)));
    assert_eq!(certificates(&latest), 2);

    // An agent: no routes, no keys.
    let agent = Subscriber::Agent { node: "n1".into() };
    let (st, latest) = follow(
        addr.clone(),
        mtls(&s.ca.client("agent")),
        agent.clone(),
        None,
        hb,
    );
    assert!(st.wait_installed(Duration::from_secs(20)));
    let snap = latest.lock().unwrap().clone().unwrap();
    assert!(snap.certificates.data.is_empty() && snap.routes.data.listeners.is_empty());
    assert!(!encoded(&snap).contains(a_key.lines().nth(1).unwrap()));

    // Strangers: no client certificate, one from another CA, an expired one.
    let other = TestCa::new(&s.dir, "other");
    let no_cert = {
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            let pem = std::fs::read(&s.ca.ca_pem).unwrap();
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                r.add(c.unwrap()).unwrap();
            }
            r
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Some(ClientTls {
            config: Arc::new(config),
            server_name: server_name("pier-controller.test").unwrap(),
        })
    };
    let strangers = [
        ("no client certificate", no_cert),
        (
            "another CA",
            mtls(&with_ca(&other.client("stranger"), &s.ca.ca_pem)),
        ),
        ("expired", mtls(&s.ca.expired_client("expired"))),
        ("plaintext", None),
    ];
    let followers: Vec<_> = strangers
        .into_iter()
        .map(|(what, tls)| (what, follow(addr.clone(), tls, agent.clone(), None, hb)))
        .collect();
    for (what, (st, latest)) in &followers {
        wait_for("a refusal", Duration::from_secs(20), || st.breaks() > 0);
        assert!(
            !st.wait_installed(Duration::from_millis(500)),
            "{what}: got a snapshot"
        );
        assert!(latest.lock().unwrap().is_none(), "{what}");
        assert_eq!(st.connects(), 0, "{what}");
    }

    // A data plane that does not trust the controller's CA refuses it too.
    let (st, _) = follow(
        addr,
        mtls(&with_ca(&client, &other.ca_pem)),
        proxy(None),
        None,
        hb,
    );
    wait_for("a refusal", Duration::from_secs(20), || st.breaks() > 0);
    assert_eq!(st.connects(), 0);
}

#[test]
fn plaintext_off_loopback_is_refused_at_start() {
    let s = setup();
    let out = Command::new(env!("CARGO_BIN_EXE_pier-controller"))
        .arg("serve")
        .arg("--manifests")
        .arg(s.dir.join("manifests"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plaintext off loopback"), "{err}");
}

/// A TCP relay that can be frozen: it keeps both connections open but stops
/// moving bytes, like a peer whose link was pulled.
struct Relay {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                        let mut buf = [0u8; 16384];
                        loop {
                            if f.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Relay { addr, frozen }
    }
}

#[test]
fn a_silent_connection_is_noticed_within_the_heartbeat_window_and_the_state_dir_carries_a_restart()
{
    let s = setup();
    let port = free_port();
    let controller_proc = controller(&s, port, &["--heartbeat-seconds", "1"]);
    let relay = Relay::start(format!("127.0.0.1:{port}").parse().unwrap());
    let state = StateDir::new(s.dir.join("state"));
    let hb = Duration::from_secs(1);
    let (st, latest) = follow(
        relay.addr.to_string(),
        mtls(&s.ca.client("p")),
        proxy(None),
        Some(state.clone()),
        hb,
    );
    wait_for("the stream", Duration::from_secs(20), || st.connected());
    assert_eq!(st.origin(), Origin::Controller);

    relay.frozen.store(true, Ordering::Relaxed);
    let frozen_at = Instant::now();
    wait_for("the silence to be noticed", Duration::from_secs(10), || {
        !st.connected()
    });
    let noticed = frozen_at.elapsed();
    assert!(
        noticed < Duration::from_millis(4500),
        "noticed after {noticed:?}"
    );
    assert!(st.describe().contains("DISCONNECTED"), "{}", st.describe());
    assert!(latest.lock().unwrap().is_some(), "the last snapshot stays");

    relay.frozen.store(false, Ordering::Relaxed);
    wait_for("a reconnection", Duration::from_secs(20), || {
        st.connected() && st.connects() >= 2
    });

    // The snapshot was saved; with the controller gone a new follower starts from it.
    wait_for("the state file", Duration::from_secs(10), || {
        state.load().ok().flatten().is_some()
    });
    drop(controller_proc);
    let (st2, latest2) = follow(
        format!("127.0.0.1:{port}"),
        mtls(&s.ca.client("p2")),
        proxy(None),
        Some(state),
        hb,
    );
    assert!(st2.wait_installed(Duration::from_secs(5)));
    assert_eq!(st2.origin(), Origin::StateDir);
    assert!(!st2.connected());
    assert_eq!(certificates(&latest2), 2);
}
