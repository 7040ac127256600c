//! `pier-controller run` against a real kube-apiserver + etcd.
//!
//! Envtest convention: the kit is `$KUBEBUILDER_ASSETS/..` when that is set
//! (the kit's `bin/`), else `../shared/kube` next to the repository. Each
//! test starts its own API server on free ports (`apiserver-up DIR`) and
//! stops it by PID (`apiserver-down DIR`). Without the kit a test says it was
//! skipped; with CI=true it fails instead. Every wait polls; none sleeps for
//! readiness.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pier_tests::kube::{kit, ApiServer};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One `pier-controller run` process, killed on drop (its log printed if the test failed).
struct Controller {
    child: Child,
    admin: SocketAddr,
    log: PathBuf,
    name: String,
}

impl Controller {
    fn start(api: &ApiServer, identity: &str, extra: &[&str]) -> Controller {
        let admin = free_port();
        let log = api.dir.path().join(format!("{identity}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_pier-controller"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(api.kubeconfig())
            .args(["--admin", &admin.to_string()])
            .args(["--listen", &free_port().to_string()])
            .args(["--leader-election-identity", identity])
            .args(["--leader-election-namespace", "default"])
            .args(["--crd-poll-seconds", "1"])
            .args(["--debounce-ms", "20"])
            .arg("--debug-snapshot")
            .args(extra)
            .env("RUST_LOG", "info,pier_controller=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start pier-controller");
        Controller {
            child,
            admin,
            log,
            name: identity.into(),
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut conn = TcpStream::connect_timeout(&self.admin, Duration::from_secs(2)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(conn, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
        let mut response = String::new();
        conn.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    fn ready(&self) -> bool {
        matches!(self.get("/readyz"), Some((200, _)))
    }

    fn snapshot(&self) -> Option<Value> {
        match self.get("/debug/snapshot")? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The value of one sample of `/metrics`, e.g. `pier_controller_objects{kind="Secret"}`.
    fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {}", self.name);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- log of {} (last lines) ---", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Polls `f` until it gives a value.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const WAIT: Duration = Duration::from_secs(60);

fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == type_)
}

fn is_true(conditions: &Value, type_: &str) -> bool {
    condition(conditions, type_).is_some_and(|c| c["status"] == "True")
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(name)).unwrap()
}

const CORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: pier-system}
---
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels: {pier.dev/routes: allowed}
---
apiVersion: v1
kind: Service
metadata: {name: pier-proxy, namespace: pier-system}
spec:
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 9001, protocol: TCP}]
endpoints:
- addresses: ["198.18.10.1"]
  conditions: {ready: true, serving: true, terminating: false}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: demo
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports: [{name: http, port: 9002, protocol: TCP}]
endpoints:
- addresses: ["198.18.10.2"]
  conditions: {ready: true, serving: true, terminating: false}
---
apiVersion: v1
kind: Secret
metadata: {name: not-tls, namespace: demo}
type: Opaque
stringData: {password: do-not-cache-me}
"#;

fn endpoint_addresses(snapshot: &Value, backend: &str) -> Vec<String> {
    snapshot["backends"]["data"][backend]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn watches_translate_and_write_status_against_a_real_api_server() {
    let Some(kit) = kit("watches_translate_and_write_status_against_a_real_api_server") else {
        return;
    };
    let api = ApiServer::up(&kit);
    // Started before any Gateway API CRD exists.
    let ctl = Controller::start(
        &api,
        "solo",
        &["--publish-service", "pier-system/pier-proxy"],
    );
    eventually("ready without the Gateway API CRDs", WAIT, || {
        ctl.ready().then_some(())
    });
    assert_eq!(
        ctl.metric(r#"pier_controller_crd_missing{kind="HTTPRoute"}"#),
        Some(1.0)
    );

    // Core objects: Services and EndpointSlices reach the snapshot.
    api.apply(CORE);
    eventually("backends of demo/web and demo/api", WAIT, || {
        let s = ctl.snapshot()?;
        (endpoint_addresses(&s, "demo/web:80") == ["198.18.10.1"]
            && endpoint_addresses(&s, "demo/api:80") == ["198.18.10.2"])
        .then_some(())
    });

    // The CRDs appear after start: picked up without a restart.
    api.install_crds();
    eventually("the HTTPRoute watch to start", WAIT, || {
        (ctl.metric(r#"pier_controller_crd_missing{kind="HTTPRoute"}"#)? == 0.0).then_some(())
    });
    api.apply(&example("00-namespace-and-classes.yaml"));
    api.apply(&example("20-gateway.yaml"));
    api.apply(&example("30-routes.yaml"));
    api.apply(&example("40-ingress.yaml"));
    let snapshot = eventually("listeners and the certificate", WAIT, || {
        let s = ctl.snapshot()?;
        let ports: Vec<u64> = s["routes"]["data"]["listeners"]
            .as_array()?
            .iter()
            .filter_map(|l| l["port"].as_u64())
            .collect();
        let certificate = &s["certificates"]["data"]["demo/demo-tls"];
        (ports == [80, 443, 8080, 8443] && !certificate.is_null()).then_some(s)
    });
    assert_eq!(
        snapshot["certificates"]["data"]["demo/demo-tls"]["private_key_pem"],
        "<redacted>"
    );

    // Only the TLS Secret is ever cached; the Opaque one never reaches the process.
    assert_eq!(
        ctl.metric(r#"pier_controller_objects{kind="Secret"}"#),
        Some(1.0)
    );
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(!log.contains("do-not-cache-me") && !log.contains("PRIVATE KEY"));

    // Status, read back from the API server.
    let proxy_ip = api
        .get(&["-n", "pier-system", "service", "pier-proxy"])
        .unwrap()["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let class = eventually("GatewayClass accepted", WAIT, || {
        let c = api.get(&["gatewayclass", "pier"])?;
        is_true(&c["status"]["conditions"], "Accepted").then_some(c)
    });
    assert!(class["status"]["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["name"] == "HTTPRoute"));
    let gateway = eventually(
        "Gateway programmed with the published address",
        WAIT,
        || {
            let g = api.get(&["-n", "demo", "gateway", "demo"])?;
            (is_true(&g["status"]["conditions"], "Programmed")
                && g["status"]["addresses"][0]["value"] == proxy_ip.as_str())
            .then_some(g)
        },
    );
    assert!(is_true(&gateway["status"]["conditions"], "Accepted"));
    let http = gateway["status"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "http")
        .unwrap();
    assert_eq!(http["attachedRoutes"], 2);
    eventually("HTTPRoute parents accepted", WAIT, || {
        let r = api.get(&["-n", "demo", "httproute", "app"])?;
        let parents = r["status"]["parents"].as_array()?;
        (parents.len() == 2
            && parents.iter().all(|p| {
                p["controllerName"] == "pier.dev/gateway-controller"
                    && is_true(&p["conditions"], "Accepted")
                    && is_true(&p["conditions"], "ResolvedRefs")
            }))
        .then_some(())
    });
    eventually("Ingress load balancer status", WAIT, || {
        let i = api.get(&["-n", "demo", "ingress", "legacy"])?;
        (i["status"]["loadBalancer"]["ingress"][0]["ip"] == proxy_ip.as_str()).then_some(())
    });

    // Another controller's parent entry survives pier's next write.
    eventually("old-paths status", WAIT, || {
        let r = api.get(&["-n", "demo", "httproute", "old-paths"])?;
        (!r["status"]["parents"].as_array()?.is_empty()).then_some(())
    });
    let foreign = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "elsewhere"},
        "controllerName": "example.com/other-controller",
        "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
            "observedGeneration": 1, "lastTransitionTime": "2020-01-01T00:00:00Z",
        }],
    });
    let patch = json!([{"op": "add", "path": "/status/parents/-", "value": foreign}]).to_string();
    api.kubectl(
        &[
            "-n",
            "demo",
            "patch",
            "httproute",
            "old-paths",
            "--subresource=status",
            "--type=json",
            "-p",
            &patch,
        ],
        None,
    )
    .unwrap();
    let edit = json!({"spec": {"rules": [{
        "matches": [{"path": {"type": "Exact", "value": "/old"}}],
        "filters": [{"type": "RequestRedirect", "requestRedirect": {
            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/api/v2"}, "statusCode": 301}}],
    }]}})
    .to_string();
    api.kubectl(
        &[
            "-n",
            "demo",
            "patch",
            "httproute",
            "old-paths",
            "--type=merge",
            "-p",
            &edit,
        ],
        None,
    )
    .unwrap();
    let route = eventually("observedGeneration 2 on pier's parent entry", WAIT, || {
        let r = api.get(&["-n", "demo", "httproute", "old-paths"])?;
        let ours = r["status"]["parents"]
            .as_array()?
            .iter()
            .find(|p| p["controllerName"] == "pier.dev/gateway-controller")?
            .clone();
        (condition(&ours["conditions"], "Accepted")?["observedGeneration"] == 2).then_some(r)
    });
    assert_eq!(route["metadata"]["generation"], 2);
    let theirs: Vec<&Value> = route["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["controllerName"] == "example.com/other-controller")
        .collect();
    assert_eq!(
        theirs,
        [&foreign],
        "the other controller's entry is untouched"
    );

    // Detached from pier's Gateway: pier's entry goes, the other one stays.
    let detach = json!([{"op": "replace", "path": "/spec/parentRefs",
        "value": [{"name": "elsewhere", "namespace": "other"}]}])
    .to_string();
    api.kubectl(
        &[
            "-n",
            "demo",
            "patch",
            "httproute",
            "old-paths",
            "--type=json",
            "-p",
            &detach,
        ],
        None,
    )
    .unwrap();
    eventually("pier's parent entry removed", WAIT, || {
        let r = api.get(&["-n", "demo", "httproute", "old-paths"])?;
        (r["status"]["parents"].as_array()? == &vec![foreign.clone()]).then_some(())
    });

    // What a user must fix becomes a Warning Event (once).
    api.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: demo}
spec:
  parentRefs: [{name: demo, sectionName: http}]
  hostnames: [broken.demo.pier.test]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
"#,
    );
    let events = eventually("a BackendNotFound event", WAIT, || {
        let events = api.get(&["-n", "demo", "events"])?;
        let found: Vec<Value> = events["items"]
            .as_array()?
            .iter()
            .filter(|e| e["reason"] == "BackendNotFound" && e["involvedObject"]["name"] == "broken")
            .cloned()
            .collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(events.len(), 1, "{events:?}");

    // An EndpointSlice edit takes the endpoint-only path: routes do not move.
    let before = ctl.snapshot().unwrap();
    let fast_before = ctl
        .metric(r#"pier_controller_publishes_total{path="endpoints"}"#)
        .unwrap_or(0.0);
    let moved =
        json!([{"op": "replace", "path": "/endpoints/0/addresses/0", "value": "198.18.10.3"}])
            .to_string();
    api.kubectl(
        &[
            "-n",
            "demo",
            "patch",
            "endpointslice",
            "web-1",
            "--type=json",
            "-p",
            &moved,
        ],
        None,
    )
    .unwrap();
    let after = eventually("the moved endpoint", WAIT, || {
        let s = ctl.snapshot()?;
        (endpoint_addresses(&s, "demo/web:80") == ["198.18.10.3"]).then_some(s)
    });
    assert_eq!(after["routes"]["version"], before["routes"]["version"]);
    assert!(after["backends"]["version"].as_u64() > before["backends"]["version"].as_u64());
    assert!(
        ctl.metric(r#"pier_controller_publishes_total{path="endpoints"}"#)
            .unwrap()
            > fast_before
    );

    // A status written is not written again: the write count settles.
    let writes = || ctl.metric(r#"pier_controller_status_writes_total{result="ok"}"#);
    let settled = eventually("status writes to settle", WAIT, || {
        let a = writes()?;
        // Two full debounce windows without a write.
        std::thread::sleep(Duration::from_millis(500));
        (writes()? == a).then_some(a)
    });
    let full = || ctl.metric(r#"pier_controller_publishes_total{path="full"}"#);
    let full_before = full().unwrap();
    api.kubectl(
        &["-n", "demo", "label", "service", "web", "touched=yes"],
        None,
    )
    .unwrap();
    eventually("a re-translation after the Service label", WAIT, || {
        (full()? > full_before).then_some(())
    });
    assert_eq!(
        writes(),
        Some(settled),
        "an unchanged status is not rewritten"
    );

    // SIGTERM: a clean exit that releases the Lease.
    let mut ctl = ctl;
    ctl.signal("-TERM");
    let status = eventually("exit after SIGTERM", WAIT, || ctl.child.try_wait().unwrap());
    assert!(status.success(), "{status:?}");
    let lease = api
        .get(&["-n", "default", "lease", "pier-controller"])
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{lease}"
    );
}

fn holder(api: &ApiServer) -> Option<String> {
    let lease = api.get(&["-n", "default", "lease", "pier-controller"])?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[test]
fn the_other_replica_takes_over_status_when_the_leader_dies() {
    let Some(kit) = kit("the_other_replica_takes_over_status_when_the_leader_dies") else {
        return;
    };
    let api = ApiServer::up(&kit);
    api.install_crds();
    api.apply(&example("00-namespace-and-classes.yaml"));
    let lease = [
        "--lease-duration-seconds",
        "4",
        "--renew-deadline-seconds",
        "3",
        "--retry-period-seconds",
        "1",
    ];
    let mut replicas = vec![
        Controller::start(&api, "replica-a", &lease),
        Controller::start(&api, "replica-b", &lease),
    ];
    for r in &replicas {
        eventually("both replicas ready", WAIT, || r.ready().then_some(()));
    }
    let first = eventually("a leader", WAIT, || holder(&api));
    eventually("GatewayClass accepted by the leader", WAIT, || {
        let c = api.get(&["gatewayclass", "pier"])?;
        is_true(&c["status"]["conditions"], "Accepted").then_some(())
    });
    let leader_at = replicas.iter().position(|r| r.name == first).unwrap();
    let follower = &replicas[1 - leader_at];
    assert_eq!(
        follower.metric("pier_controller_leader"),
        Some(0.0),
        "only one leader"
    );

    // The leader dies without releasing the Lease.
    replicas[leader_at].signal("-KILL");
    let _ = replicas[leader_at].child.wait();
    let survivor = replicas.remove(1 - leader_at);
    let second = eventually("the survivor to take the Lease", WAIT, || {
        holder(&api).filter(|h| *h != first)
    });
    assert_eq!(second, survivor.name);
    eventually("the survivor to act as leader", WAIT, || {
        (survivor.metric("pier_controller_leader")? == 1.0).then_some(())
    });

    // The new leader writes status.
    api.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: after-failover, namespace: demo}
spec:
  gatewayClassName: pier
  listeners: [{name: http, protocol: HTTP, port: 8080}]
"#,
    );
    eventually("status of a Gateway made after the failover", WAIT, || {
        let g = api.get(&["-n", "demo", "gateway", "after-failover"])?;
        (is_true(&g["status"]["conditions"], "Accepted")
            && is_true(&g["status"]["conditions"], "Programmed"))
        .then_some(())
    });
    assert!(survivor.ready());
}

#[test]
fn run_rejects_lease_timings_that_could_overlap_leaders() {
    let out = Command::new(env!("CARGO_BIN_EXE_pier-controller"))
        .args([
            "run",
            "--lease-duration-seconds",
            "5",
            "--renew-deadline-seconds",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--renew-deadline-seconds"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_pier-controller"))
        .args(["run", "--publish-service", "no-slash"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NAMESPACE/NAME"));
}
