//! Test harness: real pier-proxy and echo processes on loopback, manifests in
//! a temporary folder, readiness by polling sockets (never sleeping).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pier-proxy binary (package pier-proxy-cli), built if missing.
pub fn bin() -> std::path::PathBuf {
    pier_tests::binary("pier-proxy-cli", "pier-proxy")
}

pub use pier_tests::host::free_port;

/// Polls until `addr` accepts TCP connections.
pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start listening");
        std::thread::yield_now();
    }
}

/// Polls until `addr` accepts connections; fails at once (with `logs`) if the process exits.
pub fn wait_for_port_of(proc: &mut Proc, addr: SocketAddr, logs: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!(
                "process exited ({status}) before listening on {addr}:\n{}",
                logs()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not start listening:\n{}",
            logs()
        );
        std::thread::yield_now();
    }
}

/// A child process killed (and reaped) when dropped, even if the test fails.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An echo upstream answering with what it received and its name.
pub struct Echo {
    pub port: u16,
    _proc: Proc,
}

pub fn echo(name: &str) -> Echo {
    let port = free_port();
    let child = Command::new(bin())
        .args([
            "--threads",
            "1",
            "echo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            name,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut proc = Proc(child);
    wait_for_port_of(&mut proc, SocketAddr::from(([127, 0, 0, 1], port)), || {
        String::new()
    });
    Echo { port, _proc: proc }
}

/// A running pier-proxy serving `dir`.
pub struct Proxy {
    pub admin: u16,
    pub dir: tempfile::TempDir,
    _logs: tempfile::TempDir,
    pub proc: Proc,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start(manifests: &str, listen_ports: &[u16], extra: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifests.yaml"), manifests).unwrap();
        let admin = free_port();
        let logs_dir = tempfile::tempdir().unwrap();
        let log = logs_dir.path().join("proxy.log");
        let child = Command::new(bin())
            .args([
                "--manifests",
                &dir.path().to_string_lossy(),
                "--admin",
                &format!("127.0.0.1:{admin}"),
                "--listen-host",
                "127.0.0.1",
                "--reload-settle-ms",
                "5",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy {
            admin,
            dir,
            _logs: logs_dir,
            proc: Proc(child),
            log,
        };
        let log = proxy.log.clone();
        let logs = move || std::fs::read_to_string(&log).unwrap_or_default();
        for port in std::iter::once(&admin).chain(listen_ports) {
            wait_for_port_of(
                &mut proxy.proc,
                SocketAddr::from(([127, 0, 0, 1], *port)),
                &logs,
            );
        }
        proxy
    }

    pub fn manifests_path(&self) -> PathBuf {
        self.dir.path().join("manifests.yaml")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the manifests; the proxy reloads on its own.
    pub fn rewrite(&self, manifests: &str) {
        let tmp = self.dir.path().join(".next");
        std::fs::write(&tmp, manifests).unwrap();
        std::fs::rename(&tmp, self.manifests_path()).unwrap();
    }

    pub fn metric(&self, name: &str) -> Option<f64> {
        let body = ureq_get(&format!("http://127.0.0.1:{}/metrics", self.admin));
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

/// A plain blocking HTTP/1.1 GET for the admin port (no client library
/// involved); reads exactly Content-Length bytes, so it never waits on keep-alive.
pub fn ureq_get(url: &str) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut s = TcpStream::connect(authority).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).into_owned()
}

/// Service + EndpointSlice YAML for a backend `name` at 127.0.0.1:`port`.
pub fn service(name: &str, port: u16, app_protocol: Option<&str>) -> String {
    let app = app_protocol
        .map(|p| format!("\n    appProtocol: {p}"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports:\n  - name: http\n    port: 80{app}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n- addresses: [127.0.0.1]\n---\n"
    )
}

pub const GATEWAY_CLASS: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: pier}\nspec: {controllerName: pier.dev/gateway-controller}\n---\n";

/// A Gateway with one HTTP listener on `port`.
pub fn http_gateway(port: u16) -> String {
    format!(
        "{GATEWAY_CLASS}apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners:\n  - {{name: http, protocol: HTTP, port: {port}}}\n---\n"
    )
}

/// Parses the echo's JSON answer.
pub fn echoed(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an echo answer ({e}): {body}"))
}

pub fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == name)
        .and_then(|h| h[1].as_str())
}

pub fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Base64 (standard alphabet, padded), for Secret data.
pub fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A kubernetes.io/tls Secret document.
pub fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\n", b64(cert), b64(key))
}
