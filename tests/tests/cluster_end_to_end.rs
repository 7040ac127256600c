//! pier in cluster mode, end to end: a real kube-apiserver, two
//! `pier-controller run` replicas, and `pier-agent` + `pier-proxy` following
//! one replica's stream over mutual TLS with a state dir.
//!
//! A client in the agent's sandbox cgroup reaches the proxy through a
//! ClusterIP and a second Service directly. Edits made with kubectl move
//! both data planes; the leader dies and the data planes stay connected to
//! their replica; the last controller stops and both keep serving; the agent
//! restarts without a controller and serves from its state dir.

use pier_stream::test_pki::TestCa;
use pier_tests::host::{
    free_port, privileged, upstream, wait_for_port, wait_until, Kill, Sandbox, TestLink,
};
use pier_tests::kube::{kit, ApiServer};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 200, 1);
const GATEWAY_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 1);
const DIRECT_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 9, 2);
const WAIT: Duration = Duration::from_secs(60);

fn service(name: &str, vip: Ipv4Addr, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {vip}\n  ports: [{{name: http, port: 18099, targetPort: {port}}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: [{HOST}], conditions: {{ready: true}}}}]\n---\n"
    )
}

fn route(to: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [app.test]\n  rules: [{{backendRefs: [{{name: {to}, port: 18099}}]}}]\n"
    )
}

fn gateway(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: pier}}\nspec: {{controllerName: pier.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners: [{{name: http, protocol: HTTP, port: {port}}}]\n"
    )
}

/// An admin endpoint's answer to `GET path`: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.0\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn holder(api: &ApiServer) -> Option<String> {
    let lease = api.get(&["-n", "default", "lease", "pier-controller"])?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

struct Logs(tempfile::TempDir);

impl Logs {
    fn file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.path(name)).unwrap()
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn all(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.0.path()).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {} ---\n", entry.path().display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

fn tls_args(cmd: &mut Command, flag: &str, ca: &Path, files: &pier_stream::TlsFiles) {
    cmd.arg(format!("--{flag}-tls-ca"))
        .arg(ca)
        .arg(format!("--{flag}-tls-cert"))
        .arg(&files.cert)
        .arg(format!("--{flag}-tls-key"))
        .arg(&files.key);
}

#[test]
fn cluster_mode_drives_both_data_planes_over_mutual_tls_and_they_outlive_the_controllers() {
    let test = "cluster_mode_drives_both_data_planes";
    if !privileged(test) {
        return;
    }
    let Some(kit) = kit(test) else { return };
    let api = ApiServer::up(&kit);
    api.install_crds();
    let logs = Logs(tempfile::tempdir().unwrap());
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path(), "stream");
    let server_files = ca.server("controller", &["127.0.0.1"]);
    let _link = TestLink::new(HOST, &["198.19.9.0/29"]);
    let sandbox = Sandbox::new("pier-cluster-e2e");
    let host = IpAddr::V4(HOST);
    let (one, two) = (upstream(host, "one"), upstream(host, "two"));
    let gateway_port = free_port();
    api.apply(&format!(
        "{}{}{}{}---\n{}",
        service("gateway", GATEWAY_VIP, gateway_port),
        service("one", Ipv4Addr::new(198, 19, 9, 3), one),
        service("two", Ipv4Addr::new(198, 19, 9, 4), two),
        service("direct", DIRECT_VIP, one),
        gateway(gateway_port) + "---\n" + &route("one"),
    ));

    // Two replicas; the second one is what the data planes follow.
    let controller = |identity: &str, stream: u16, admin: u16| {
        let mut cmd = Command::new(pier_tests::binary("pier-controller", "pier-controller"));
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--listen", &format!("127.0.0.1:{stream}")])
            .args(["--leader-election-namespace", "default"])
            .args(["--leader-election-identity", identity])
            .args(["--lease-duration-seconds", "4"])
            .args(["--renew-deadline-seconds", "3"])
            .args(["--retry-period-seconds", "1"])
            .args(["--heartbeat-seconds", "1"]);
        tls_args(&mut cmd, "stream", &ca.ca_pem, &server_files);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(logs.file(&format!("{identity}.log")))
            .spawn()
            .unwrap();
        Kill(child)
    };
    let (stream_a, admin_a, stream_b, admin_b) =
        (free_port(), free_port(), free_port(), free_port());
    let mut replica_a = Some(controller("replica-a", stream_a, admin_a));
    wait_until(
        "replica-a to lead",
        WAIT,
        || holder(&api).as_deref() == Some("replica-a"),
        || logs.all(),
    );
    let mut replica_b = Some(controller("replica-b", stream_b, admin_b));
    wait_until(
        "replica-b ready",
        WAIT,
        || matches!(get(admin_b, "/readyz"), Some((200, _))),
        || logs.all(),
    );

    let stream_b_addr = format!("127.0.0.1:{stream_b}");
    let agent_metrics = free_port();
    let agent_state = work.path().join("agent-state");
    let agent_files = ca.client("agent");
    let start_agent = |name: &str| {
        let mut cmd = Command::new(pier_tests::binary("pier-agent-cli", "pier-agent"));
        cmd.args(["--controller", &stream_b_addr])
            .args(["--heartbeat-seconds", "1"])
            .arg("--state-dir")
            .arg(&agent_state)
            .args(["--node-name", "node-1"])
            .arg("--cgroup")
            .arg(&sandbox.cgroup)
            .arg("--pin-dir")
            .arg(sandbox.bpffs.join("pier"))
            .args(["--metrics-bind", &format!("127.0.0.1:{agent_metrics}")]);
        tls_args(&mut cmd, "controller", &ca.ca_pem, &agent_files);
        Kill(
            cmd.stdout(Stdio::null())
                .stderr(logs.file(name))
                .spawn()
                .unwrap(),
        )
    };
    let mut agent = Some(start_agent("agent.log"));
    let proxy_admin = free_port();
    let proxy_files = ca.client("proxy");
    let _proxy = {
        let mut cmd = Command::new(pier_tests::binary("pier-proxy-cli", "pier-proxy"));
        cmd.args(["--controller", &stream_b_addr])
            .args(["--heartbeat-seconds", "1"])
            .arg("--state-dir")
            .arg(work.path().join("proxy-state"))
            .args(["--gateway", "default/gw"])
            .args(["--listen-host", &HOST.to_string()])
            .args(["--admin", &format!("127.0.0.1:{proxy_admin}")]);
        tls_args(&mut cmd, "controller", &ca.ca_pem, &proxy_files);
        Kill(
            cmd.stdout(Stdio::null())
                .stderr(logs.file("proxy.log"))
                .spawn()
                .unwrap(),
        )
    };
    wait_for_port((host, gateway_port), "pier-proxy", &logs.path("proxy.log"));

    let through_gateway = || sandbox.get((IpAddr::V4(GATEWAY_VIP), 18099), "app.test");
    let direct = || sandbox.get((IpAddr::V4(DIRECT_VIP), 18099), "direct.test");
    let answers = |what: &str, ask: &dyn Fn() -> String, want: &str| {
        let mut last = String::new();
        wait_until(
            what,
            WAIT,
            || {
                last = ask();
                last == want
            },
            || format!("wanted {want:?}\n{}", logs.all()),
        );
    };
    answers("ClusterIP → proxy → route", &through_gateway, "one");
    answers("ClusterIP → endpoint", &direct, "one");

    // The leader dies; replica-b takes the Lease; the data planes, on
    // replica-b's stream, never notice.
    drop(replica_a.take());
    wait_until(
        "replica-b to lead",
        WAIT,
        || holder(&api).as_deref() == Some("replica-b"),
        || logs.all(),
    );
    api.apply(&route("two"));
    answers(
        "an HTTPRoute edit after the failover",
        &through_gateway,
        "two",
    );
    api.apply(&service("direct", DIRECT_VIP, two));
    answers("an EndpointSlice edit after the failover", &direct, "two");
    assert_eq!(
        metric(proxy_admin, "pier_stream_breaks_total"),
        Some(0.0),
        "{}",
        logs.all()
    );
    assert_eq!(
        metric(agent_metrics, "pier_stream_breaks_total"),
        Some(0.0),
        "{}",
        logs.all()
    );
    assert_eq!(metric(proxy_admin, "pier_stream_connects_total"), Some(1.0));

    // No controller at all: both keep serving what they had.
    drop(replica_b.take());
    wait_until(
        "the proxy to notice",
        WAIT,
        || get(proxy_admin, "/readyz").is_some_and(|(s, b)| s == 200 && b.contains("DISCONNECTED")),
        || logs.all(),
    );
    assert_eq!(through_gateway(), "two");
    assert_eq!(direct(), "two");

    // The agent restarts with no controller: it starts from its state dir.
    drop(agent.take());
    let _agent = start_agent("agent-restarted.log");
    wait_until(
        "the restarted agent to serve its saved snapshot",
        WAIT,
        || {
            get(agent_metrics, "/readyz")
                .is_some_and(|(s, b)| s == 200 && b.contains("saved in the state dir"))
        },
        || logs.all(),
    );
    assert_eq!(direct(), "two");
    assert_eq!(through_gateway(), "two");
}
