//! The whole product on one machine: `pier-controller serve` translates a
//! folder of manifests and streams snapshots; `pier-agent --controller`
//! programs the socket load balancer; `pier-proxy --controller` serves the
//! Gateway. A client (in a cgroup the test makes, so nothing else is
//! affected) reaches the proxy through a ClusterIP, and the proxy routes to
//! an upstream. One edit of the folder changes what both data planes do.

use pier_tests::host::{free_port, privileged, upstream, wait_for_port, Kill, Sandbox};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn manifests(gateway_port: u16, route_to: &str, one: u16, two: u16) -> String {
    // Service port 18099: should a hook not rewrite, nothing answers there.
    let service = |name: &str, cluster_ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, port: 18099}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n---\n"
        )
    };
    // The proxy itself sits behind a ClusterIP (as a Service in front of the
    // proxy Deployment would); the two upstreams are ordinary Services.
    format!(
        "{}{}{}apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: pier}}\nspec: {{controllerName: pier.dev/gateway-controller}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\nspec:\n  gatewayClassName: pier\n  listeners: [{{name: http, protocol: HTTP, port: {gateway_port}}}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: app, namespace: default}}\nspec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [app.test]\n  rules: [{{backendRefs: [{{name: {route_to}, port: 18099}}]}}]\n",
        service("gateway", "127.96.9.1", gateway_port),
        service("one", "127.96.9.2", one),
        service("two", "127.96.9.3", two),
    )
}

/// One request from a process in the sandbox cgroup to the gateway's ClusterIP.
fn ask(sandbox: &Sandbox) -> String {
    sandbox.get(
        (IpAddr::V4(Ipv4Addr::new(127, 96, 9, 1)), 18099),
        "app.test",
    )
}

fn answer_becomes(sandbox: &Sandbox, want: &str, logs: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = ask(sandbox);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never got {want:?} (last {got:?}); logs:\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn one_edit_of_the_folder_moves_both_data_planes() {
    if !privileged("one_edit_of_the_folder_moves_both_data_planes") {
        return;
    }
    let sandbox = Sandbox::new("pier-e2e");
    let (one, two) = (upstream(LOCAL, "one"), upstream(LOCAL, "two"));
    let gateway_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let write = |text: String| {
        // Replaced atomically, as a config tool would.
        let staged = dir.path().join(".staged");
        std::fs::write(&staged, text).unwrap();
        std::fs::rename(&staged, dir.path().join("app.yaml")).unwrap();
    };
    write(manifests(gateway_port, "one", one, two));
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| logs.path().join(name);
    let stream = free_port();
    let stream_addr = SocketAddr::from(([127, 0, 0, 1], stream)).to_string();
    let _controller = Kill(
        Command::new(pier_tests::binary("pier-controller", "pier-controller"))
            .args(["serve", "--manifests"])
            .arg(dir.path())
            .args(["--listen", &stream_addr])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log("controller.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_port((LOCAL, stream), "pier-controller", &log("controller.log"));
    let admin = free_port();
    let _proxy = Kill(
        Command::new(pier_tests::binary("pier-proxy-cli", "pier-proxy"))
            .args(["--controller", &stream_addr, "--listen-host", "127.0.0.1"])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log("proxy.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let _agent = Kill(
        Command::new(pier_tests::binary("pier-agent-cli", "pier-agent"))
            .args(["--controller", &stream_addr, "--cgroup"])
            .arg(&sandbox.cgroup)
            .arg("--pin-dir")
            .arg(sandbox.bpffs.join("pier"))
            .args(["--metrics-bind", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for_port((LOCAL, gateway_port), "pier-proxy", &log("proxy.log"));
    let all_logs = [log("controller.log"), log("proxy.log"), log("agent.log")];
    let all_logs: Vec<&Path> = all_logs.iter().map(PathBuf::as_path).collect();
    // ClusterIP (agent) → the proxy's listener → the route's backend.
    answer_becomes(&sandbox, "one", &all_logs);
    // One edit: the route now points at the other Service.
    write(manifests(gateway_port, "two", one, two));
    answer_becomes(&sandbox, "two", &all_logs);
    // And the agent follows Service changes from the same stream: the
    // gateway's ClusterIP moves to another address.
    write(manifests(gateway_port, "two", one, two).replace("127.96.9.1", "127.96.9.4"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ask(&sandbox).starts_with("error") {
        assert!(Instant::now() < deadline, "the old ClusterIP still answers");
    }
}
