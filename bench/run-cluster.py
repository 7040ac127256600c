#!/usr/bin/env python3
"""pier in cluster mode at scale, against a real kube-apiserver (issue 8, "Measured").

A fresh API server (../shared/kube/apiserver-up) with the Gateway API CRDs gets
N Services x E endpoints (one EndpointSlice each), a GatewayClass + Gateway and
R HTTPRoutes, loaded over the API with a few concurrent connections (the load
time is reported, not counted). Then:

1. `pier-controller run` starts: start-to-ready (/readyz 200) and its RSS
   (VmRSS, VmHWM) at that scale.
2. A pier-proxy (CPU 0) and a pier-agent (its own child cgroup v2 and a
   private bpffs) follow its stream. wrk (CPU 1) drives steady load through the
   proxy at one route (`web.test`), served by a `pier-proxy echo` upstream on a
   test veth address (CPU 1).
3. Under that load, spaced edits, each identifiable:
   - HTTPRoute edits of the very route wrk uses: a ResponseHeaderModifier
     sets `x-pier-edit: <n>`; after each, a request checks the proxy serves it;
   - EndpointSlice edits: one endpoint of a Service replaced by a fresh address.
   For each edit: the write's response (client clock), the controller's
   `watch event` log line carrying the object's new resourceVersion, its
   `published` line, and the data planes' `snapshot installed` (proxy) /
   `maps updated` (agent) lines. Edits are sequential (the next waits for the
   previous one to land), so the first data-plane line after the watch event
   is the one carrying it. All clocks are this machine's wall clock.

Addresses: Services in a ServiceCIDR 198.19.192.0/18 the bench adds (the kit's
default range is a /20: 4,094 addresses); endpoints in 198.18.100-211.x
(nothing is sent there); the upstream and the proxy listener on 198.18.200.77,
owned by a veth pair the bench creates and removes.

Usage (root): bench/run-cluster.py [--services 10000 --endpoints 10 --routes 3000
              --route-edits 120 --slice-edits 120 --interval-ms 150]
Writes bench/results/cluster.md and bench/results/cluster.json.
"""
import argparse, base64, datetime, http.client, ipaddress, json, math, os, re, shutil, signal, socket
import ssl, subprocess, sys, tempfile, threading, time

from netbench import sh, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = os.path.normpath(os.path.join(ROOT, "../shared/kube"))
KUBECTL = os.path.join(KIT, "bin/kubectl")
CRDS = os.path.normpath(os.path.join(ROOT, "../shared/crds/gateway-api-v1.5.1/experimental"))
CONTROLLER = os.path.join(ROOT, "target/release/pier-controller")
PROXY = os.path.join(ROOT, "target/release/pier-proxy")
AGENT = os.path.join(ROOT, "target/release/pier-agent")
HOST = "198.18.200.77"  # the test link's address (the e2e test uses .1)
SERVICE_CIDR = "198.19.192.0/18"
LINK = f"pcb{os.getpid() % 100000}"
GW = "gateway.networking.k8s.io/v1"
NS = "default"


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_no_cargo_test():
    """The machine is shared: never start a heavy step while tests run."""
    while subprocess.run(["pgrep", "-f", "cargo test"], capture_output=True).returncode == 0:
        print("a `cargo test` is running; waiting", flush=True)
        time.sleep(15)


def service_ip(i):
    return str(ipaddress.ip_network(SERVICE_CIDR)[1 + i])


def pod_ip(i, j):
    p = (i * 10 + j) % 25000
    return f"198.18.{100 + p // 250}.{1 + p % 250}"


def edit_ip(n):
    return f"198.18.{210 + n // 250}.{1 + n % 250}"


def log_ts(line):
    """A tracing JSON line's timestamp (RFC 3339, UTC) as Unix seconds."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", line["timestamp"])
    base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return base.timestamp() + (int(m.group(2)) / 10 ** len(m.group(2)) if m.group(2) else 0.0)


class Tail:
    """The JSON lines of a log file, read as they come."""

    def __init__(self, path):
        self.path, self.pos, self.lines, self.rest = path, 0, [], b""

    def poll(self):
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        data = self.rest + data
        *full, self.rest = data.split(b"\n")
        for raw in full:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            line["ts"] = log_ts(line)
            self.lines.append(line)
        return self.lines

    def find(self, pred, start=0):
        """Index of the first line at or after `start` that matches."""
        for i in range(start, len(self.poll())):
            if pred(self.lines[i]):
                return i
        return None


class Api:
    """The API server over HTTPS with the kubeconfig's admin client certificate."""

    def __init__(self, kubeconfig, work):
        text = open(kubeconfig).read()
        field = lambda k: re.search(rf"{k}:\s*(\S+)", text).group(1)
        url = field("server")
        self.host, self.port = re.match(r"https://([^:/]+):(\d+)", url).groups()
        files = {}
        for key in ("certificate-authority-data", "client-certificate-data", "client-key-data"):
            files[key] = os.path.join(work, key + ".pem")
            with open(os.open(files[key], os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(base64.b64decode(field(key)))
        self.ctx = ssl.create_default_context(cafile=files["certificate-authority-data"])
        self.ctx.load_cert_chain(files["client-certificate-data"], files["client-key-data"])

    def conn(self):
        return http.client.HTTPSConnection(self.host, int(self.port), context=self.ctx, timeout=60)

    @staticmethod
    def call(conn, method, path, body=None, ctype="application/json"):
        """(status, parsed body, time sent, time the response was in)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": ctype, "Accept": "application/json"} if data else {"Accept": "application/json"}
        t_send = time.time()
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        t_resp = time.time()
        return resp.status, (json.loads(raw) if raw else None), t_send, t_resp

    def load(self, items, workers=4):
        """POSTs every (path, object), `workers` connections at a time; retries 429/5xx."""
        lock, it, errors = threading.Lock(), iter(items), []

        def worker():
            conn = self.conn()
            while True:
                with lock:
                    item = next(it, None)
                if item is None or errors:
                    return
                path, obj = item
                for attempt in range(10):
                    try:
                        status, body, _, _ = self.call(conn, "POST", path, obj)
                    except (OSError, http.client.HTTPException) as e:
                        conn.close(); conn = self.conn(); status, body = 0, str(e)
                    if status in (200, 201):
                        break
                    if status and status not in (429, 500, 503, 504):
                        break
                    time.sleep(0.2 * (attempt + 1))
                if status not in (200, 201):
                    errors.append(f"POST {path} {obj['metadata']['name']}: {status} {body}")

        threads = [threading.Thread(target=worker) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit("loading failed: " + errors[0][:500])


def core(kind):
    return f"/api/v1/namespaces/{NS}/{kind}"


def slices_path():
    return f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"


def routes_path():
    return f"/apis/{GW}/namespaces/{NS}/httproutes"


def service(name, ip, target_port):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": target_port}]}}


def endpoints(addresses):
    return [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]


def slice_obj(name, port, addresses):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": endpoints(addresses)}


def web_rules(edit):
    return [{"backendRefs": [{"name": "web", "port": 80}],
             "filters": [{"type": "ResponseHeaderModifier",
                          "responseHeaderModifier": {"set": [{"name": "x-pier-edit", "value": str(edit)}]}}]}]


def route(name, host, rules):
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [host], "rules": rules}}


def pct(values, q):
    """Nearest-rank percentile."""
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)] if v else float("nan")


def summary(values):
    return {"n": len(values), "p50_ms": pct(values, 50), "p99_ms": pct(values, 99), "max_ms": max(values) if values else float("nan")}


def proc_status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) / 1024  # MiB
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    out["cpu_s"] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return out


def http_get(port, path, host="127.0.0.1", hostname="admin", timeout=5):
    """(status, headers dict, body) or None."""
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", path, headers={"Host": hostname})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    except (OSError, http.client.HTTPException):
        return None


def metric(port, name):
    r = http_get(port, "/metrics")
    if not r:
        return None
    total = None
    for line in r[2].splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


class Run:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="pier-cluster-bench-")
        self.procs = {}
        self.cleanups = []
        self.results = {"config": vars(args).copy()}

    def spawn(self, name, cmd, env=None, **kw):
        log = os.path.join(self.work, f"{name}.log")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if "stdout" not in kw else kw.pop("stdout"),
                             stderr=open(log, "w"), env=env, **kw)
        self.procs[name] = p
        return p, log

    def fail(self, what, log=None):
        tail = ""
        if log and os.path.exists(log):
            tail = "\n".join(open(log, errors="replace").read().splitlines()[-30:])
        raise SystemExit(f"{what}\n{tail}")

    # ---- setup -----------------------------------------------------------
    def apiserver(self):
        self.api_dir = os.path.join(self.work, "api")
        self.cleanups.append(lambda: sh(os.path.join(KIT, "apiserver-down"), self.api_dir, check=False))
        sh(os.path.join(KIT, "apiserver-up"), self.api_dir)
        self.kubeconfig = os.path.join(self.api_dir, "kubeconfig")
        kubectl = lambda *a: sh(KUBECTL, "--kubeconfig", self.kubeconfig, *a)
        kubectl("apply", "--server-side", "-f", CRDS)
        kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=120s")
        self.api = Api(self.kubeconfig, self.work)

    def link(self):
        self.cleanups.append(lambda: sh("ip", "link", "del", LINK, check=False))
        sh("ip", "link", "add", LINK, "type", "veth", "peer", "name", LINK + "p")
        sh("ip", "addr", "add", f"{HOST}/32", "dev", LINK)
        sh("ip", "link", "set", LINK, "up")
        sh("ip", "link", "set", LINK + "p", "up")

    def sandbox(self):
        root = next(l.split()[1] for l in open("/proc/mounts") if l.split()[2] == "cgroup2")
        self.cgroup = os.path.join(root, f"pier-cluster-bench-{os.getpid()}")
        self.bpffs = os.path.join(self.work, "bpffs")
        os.makedirs(self.cgroup)
        self.cleanups.append(lambda: os.rmdir(self.cgroup) if os.path.isdir(self.cgroup) else None)
        os.makedirs(self.bpffs)
        sh("mount", "-t", "bpf", "bpf", self.bpffs)
        self.cleanups.append(lambda: sh("umount", self.bpffs, check=False))

    def load(self):
        a = self.args
        self.upstream_port, self.gw_port = free_port(HOST), free_port(HOST)
        t0 = time.time()
        conn = self.api.conn()
        status, body, _, _ = Api.call(conn, "POST", "/apis/networking.k8s.io/v1/servicecidrs",
                                      {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                                       "metadata": {"name": "bench"}, "spec": {"cidrs": [SERVICE_CIDR]}})
        if status != 201:
            raise SystemExit(f"ServiceCIDR: {status} {body}")
        items = [(core("services"), service(f"s{i}", service_ip(i), 8080)) for i in range(a.services)]
        items.append((core("services"), service("web", service_ip(a.services), self.upstream_port)))
        self.api.load(items, a.load_workers)
        items = [(slices_path(), slice_obj(f"s{i}", 8080, [pod_ip(i, j) for j in range(a.endpoints)]))
                 for i in range(a.services)]
        items.append((slices_path(), slice_obj("web", self.upstream_port, [HOST])))
        self.api.load(items, a.load_workers)
        self.api.load([
            (f"/apis/{GW}/gatewayclasses", {"apiVersion": GW, "kind": "GatewayClass", "metadata": {"name": "pier"},
                                            "spec": {"controllerName": "pier.dev/gateway-controller"}}),
            (f"/apis/{GW}/namespaces/{NS}/gateways",
             {"apiVersion": GW, "kind": "Gateway", "metadata": {"name": "gw", "namespace": NS},
              "spec": {"gatewayClassName": "pier",
                       "listeners": [{"name": "http", "protocol": "HTTP", "port": self.gw_port}]}}),
        ], 1)
        items = [(routes_path(), route(f"r{k}", f"r{k}.bench.test",
                                       [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                         "backendRefs": [{"name": f"s{k % a.services}", "port": 80}]}]))
                 for k in range(a.routes)]
        items.append((routes_path(), route("web", "web.test", web_rules(0))))
        self.api.load(items, a.load_workers)
        objects = 2 * (a.services + 1) + a.routes + 1 + 3
        self.results["load"] = {"seconds": time.time() - t0, "objects": objects}
        print(f"loaded {objects} objects in {time.time() - t0:.1f} s", flush=True)

    # ---- the controller ----------------------------------------------------
    def controller(self):
        self.stream_port, self.admin_port = free_port(), free_port()
        env = dict(os.environ, RUST_LOG="info,pier_controller::cluster::watch=debug,pier_controller::cluster::publish=debug")
        t0 = time.time()
        p, self.controller_log = self.spawn("controller", [
            CONTROLLER, "run", "--kubeconfig", self.kubeconfig,
            "--admin", f"127.0.0.1:{self.admin_port}", "--listen", f"127.0.0.1:{self.stream_port}",
            "--leader-election-namespace", NS, "--leader-election-identity", "bench",
            "--debounce-ms", str(self.args.debounce_ms), "--heartbeat-seconds", "5"], env=env)
        while True:
            r = http_get(self.admin_port, "/readyz")
            if r and r[0] == 200:
                break
            if p.poll() is not None or time.time() - t0 > 600:
                self.fail("the controller did not get ready", self.controller_log)
            time.sleep(0.02)
        ready = time.time() - t0
        st = proc_status(p.pid)
        translated = [l for l in Tail(self.controller_log).poll() if l.get("fields", {}).get("message") == "translated"]
        self.results["controller_start"] = {
            "ready_s": ready, "rss_mib": st["VmRSS"], "hwm_mib": st["VmHWM"], "cpu_s": st["cpu_s"],
            "first_translate_ms": translated[0]["fields"]["translate_ms"] if translated else None,
            "snapshot_bytes": metric(self.admin_port, "pier_controller_snapshot_bytes"),
        }
        print("controller ready:", self.results["controller_start"], flush=True)

    def wait_status_settled(self):
        """The leader writes status on every route once: let that finish first."""
        t0, last, still = time.time(), None, 0
        while time.time() - t0 < 600:
            ok = metric(self.admin_port, "pier_controller_status_writes_total") or 0
            queued = metric(self.admin_port, "pier_controller_status_queue") or 0
            still = still + 1 if (ok == last and queued == 0) else 0
            last = ok
            if still >= 6 and ok > 0:
                break
            time.sleep(0.5)
        self.results["status_writes"] = {"seconds_after_ready": time.time() - t0, "writes": last,
                                         "by_result": {r: metric_labeled(self.admin_port, "pier_controller_status_writes_total", r)
                                                       for r in ("ok", "failed", "conflict")}}
        self.results["controller_settled"] = proc_status(self.procs["controller"].pid)
        print("status writes settled:", self.results["status_writes"], self.results["controller_settled"], flush=True)

    # ---- data planes ---------------------------------------------------------
    def data_planes(self):
        stream = f"127.0.0.1:{self.stream_port}"
        self.spawn("upstream", ["taskset", "-c", "1", PROXY, "--threads", "1", "echo",
                                "--listen", f"{HOST}:{self.upstream_port}", "--name", "web"])
        self.proxy_admin = free_port()
        t0 = time.time()
        p, self.proxy_log = self.spawn("proxy", ["taskset", "-c", "0", PROXY, "--controller", stream,
                                                  "--listen-host", HOST, "--admin", f"127.0.0.1:{self.proxy_admin}",
                                                  "--threads", "1", "--name", "bench-proxy"])
        while True:
            r = http_get(self.gw_port, "/", host=HOST, hostname="web.test", timeout=2)
            if r and r[0] == 200:
                break
            if p.poll() is not None or time.time() - t0 > 300:
                self.fail("the proxy did not serve web.test", self.proxy_log)
            time.sleep(0.05)
        self.results["proxy_start_s"] = time.time() - t0
        self.agent_metrics = free_port()
        self.pins = os.path.join(self.bpffs, "pier")
        self.cleanups.append(lambda: sh(AGENT, "--pin-dir", self.pins, "uninstall", check=False))
        t0 = time.time()
        p, self.agent_log = self.spawn("agent", [AGENT, "--controller", stream, "--cgroup", self.cgroup,
                                                  "--pin-dir", self.pins, "--metrics-bind", f"127.0.0.1:{self.agent_metrics}",
                                                  "--node-name", "bench-node"])
        tail = Tail(self.agent_log)
        while tail.find(lambda l: l["fields"].get("message") == "maps updated") is None:
            if p.poll() is not None or time.time() - t0 > 300:
                self.fail("the agent did not program its maps", self.agent_log)
            time.sleep(0.05)
        first = tail.lines[tail.find(lambda l: l["fields"].get("message") == "maps updated")]["fields"]
        self.results["agent_start"] = {"s": time.time() - t0, "first_program_ms": first["elapsed_us"] / 1e3, "ops": first["ops"],
                                       "services": first["services"], "backends": first["backends"]}
        print("data planes up:", self.results["proxy_start_s"], self.results["agent_start"], flush=True)

    # ---- the churn under load -------------------------------------------------
    def churn(self):
        a = self.args
        wrk_out = os.path.join(self.work, "wrk.out")
        script = []
        if a.wrk_delay_ms > 0:
            # Steady, not saturating: each connection waits between requests,
            # so the control plane is measured under load, not starved by it.
            lua = os.path.join(self.work, "delay.lua")
            open(lua, "w").write(f"function delay()\n  return {a.wrk_delay_ms}\nend\n")
            script = ["-s", lua]
        wrk = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", f"-c{a.wrk_connections}", "-d3600s", "--latency", *script,
                                "-H", "Host: web.test", f"http://{HOST}:{self.gw_port}/"],
                               stdout=open(wrk_out, "w"), stderr=subprocess.STDOUT)
        self.procs["wrk"] = wrk
        time.sleep(3)  # steady state before the first edit
        ctl, prx, agt = Tail(self.controller_log), Tail(self.proxy_log), Tail(self.agent_log)
        for t in (ctl, prx, agt):
            t.poll()
        conn = self.api.conn()
        samples = {"route": [], "slice": []}

        def msg(m, extra=lambda f: True):
            return lambda l: l["fields"].get("message") == m and extra(l["fields"])

        def pace(t_prev):
            delay = a.interval_ms / 1e3 - (time.time() - t_prev)
            if delay > 0:
                time.sleep(delay)

        phases = [("route", a.route_edits), ("slice", a.slice_edits)]
        cursor = {"ctl": len(ctl.poll()), "prx": len(prx.poll()), "agt": len(agt.poll())}
        route_phase_start = cursor["ctl"]
        for phase, count in phases:
            t_prev = time.time()
            for n in range(1, count + 1):
                pace(t_prev)
                if phase == "route":
                    name = "web"
                    status, body, t_send, t_resp = Api.call(conn, "PATCH", f"{routes_path()}/web",
                                                            {"spec": {"rules": web_rules(n)}}, "application/merge-patch+json")
                else:
                    k = (n * 7919) % a.services
                    name = f"s{k}"
                    addrs = [pod_ip(k, j) for j in range(a.endpoints)]
                    addrs[0] = edit_ip(n)
                    status, body, t_send, t_resp = Api.call(conn, "PATCH", f"{slices_path()}/{name}",
                                                            {"endpoints": endpoints(addrs)}, "application/merge-patch+json")
                t_prev = t_send
                if status != 200:
                    raise SystemExit(f"{phase} edit {n}: {status} {body}")
                rv = body["metadata"]["resourceVersion"]
                sample = {"n": n, "name": name, "rv": rv, "send": t_send, "resp": t_resp}
                deadline = time.time() + 10
                w = p = pub = ag = None
                is_event = msg("watch event", lambda f: f.get("name") == name and f.get("resource_version") == rv)
                proxy_line = msg("snapshot installed", (lambda f: f["routes_rebuilt"]) if phase == "route"
                                 else (lambda f: not f["routes_rebuilt"]))
                while time.time() < deadline:
                    if w is None:
                        w = ctl.find(is_event, cursor["ctl"])
                    if w is not None:
                        ts = ctl.lines[w]["ts"]
                        if pub is None:
                            pub = ctl.find(lambda l: l["ts"] >= ts and msg("published")(l), w)
                        if p is None:
                            p = prx.find(lambda l: l["ts"] >= ts and proxy_line(l), cursor["prx"])
                        if phase == "slice" and ag is None:
                            ag = agt.find(lambda l: l["ts"] >= ts and msg("maps updated", lambda f: f["ops"] > 0)(l), cursor["agt"])
                        if p is not None and pub is not None and (phase == "route" or ag is not None):
                            break
                    time.sleep(0.002)
                if w is None or p is None or pub is None or (phase == "slice" and ag is None):
                    sample["missing"] = True
                    print(f"{phase} edit {n}: not seen everywhere within 10 s", flush=True)
                else:
                    sample["watch"] = ctl.lines[w]["ts"]
                    sample["published"] = ctl.lines[pub]["ts"]
                    sample["proxy"] = prx.lines[p]["ts"]
                    sample["proxy_elapsed_us"] = prx.lines[p]["fields"]["elapsed_us"]
                    if ag is not None:
                        sample["agent"] = agt.lines[ag]["ts"]
                        sample["agent_ops"] = agt.lines[ag]["fields"]["ops"]
                    cursor.update(ctl=pub + 1, prx=p + 1, agt=(ag + 1) if ag is not None else cursor["agt"])
                if phase == "route":
                    r = http_get(self.gw_port, "/", host=HOST, hostname="web.test", timeout=2)
                    sample["served"] = bool(r and r[0] == 200 and r[1].get("x-pier-edit") == str(n))
                samples[phase].append(sample)
            print(f"{phase} edits done", flush=True)
        time.sleep(2)
        wrk.send_signal(signal.SIGINT)
        try:
            wrk.wait(timeout=30)
        except subprocess.TimeoutExpired:
            wrk.kill(); wrk.wait()
        self.results["wrk"] = parse_wrk(open(wrk_out).read())
        self.results["wrk_raw"] = open(wrk_out).read()
        # Installs the proxy made during the slice phase beyond one per edit
        # (a sign of a mis-attribution if non-zero).
        self.results["samples"] = samples
        self.results["controller_end"] = proc_status(self.procs["controller"].pid)
        self.results["proxy_end"] = proc_status(self.procs["proxy"].pid)
        self.results["agent_end"] = proc_status(self.procs["agent"].pid)
        self.results["translate_ms_during_route_edits"] = [
            l["fields"]["translate_ms"] for l in ctl.poll()[route_phase_start:]
            if l["fields"].get("message") == "translated"]
        for name, tail in (("controller", ctl), ("proxy", prx), ("agent", agt)):
            bad = [l for l in tail.poll() if l.get("level") in ("WARN", "ERROR")]
            kinds = {}
            for l in bad:
                key = f'{l["level"]} {l["fields"].get("message")}: {l["fields"].get("error", "")}'[:200]
                kinds[key] = kinds.get(key, 0) + 1
            self.results[f"{name}_warnings"] = kinds
        self.results["proxy_stream_breaks"] = metric(self.proxy_admin, "pier_stream_breaks_total")
        self.results["agent_stream_breaks"] = metric(self.agent_metrics, "pier_stream_breaks_total")

    def stop(self):
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if name == "wrk" else signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill(); p.wait()
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception as e:  # keep cleaning up
                print("cleanup:", e, file=sys.stderr)


def metric_labeled(port, name, label):
    r = http_get(port, "/metrics")
    if not r:
        return None
    for line in r[2].splitlines():
        if line.startswith(name + "{") and f'"{label}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def parse_wrk(out):
    def num(pattern, default=0):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else default

    def ms(s):
        v, unit = re.match(r"([\d.]+)(us|ms|s)", s).groups()
        return float(v) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]

    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests": int(num(r"(\d+) requests in")), "rps": num(r"Requests/sec:\s+([\d.]+)"),
            "non_2xx": int(num(r"Non-2xx or 3xx responses: (\d+)")),
            "socket_errors": {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), sock.groups())} if sock else {},
            "p50_ms": ms(lat["50"]) if "50" in lat else None, "p99_ms": ms(lat["99"]) if "99" in lat else None}


def report(run, args, argv):
    r = run.results
    s = r["samples"]
    ok = lambda phase: [x for x in s[phase] if not x.get("missing")]
    ms = lambda xs, a, b: [(x[b] - x[a]) * 1e3 for x in xs if b in x]
    routes, slices = ok("route"), ok("slice")
    lines_ = {
        "routes → proxy": (ms(routes, "resp", "proxy"), ms(routes, "send", "proxy"), ms(routes, "watch", "proxy"), ms(routes, "watch", "published")),
        "endpoints → agent": (ms(slices, "resp", "agent"), ms(slices, "send", "agent"), ms(slices, "watch", "agent"), ms(slices, "watch", "published")),
        "endpoints → proxy": (ms(slices, "resp", "proxy"), ms(slices, "send", "proxy"), ms(slices, "watch", "proxy"), ms(slices, "watch", "published")),
    }
    r["propagation"] = {k: {"from_response": summary(v[0]), "from_send": summary(v[1]), "from_watch_event": summary(v[2]),
                            "watch_to_published": summary(v[3])} for k, v in lines_.items()}
    cs, ce, w = r["controller_start"], r["controller_end"], r["wrk"]
    failed = w["non_2xx"] + sum(w["socket_errors"].values())
    served = sum(1 for x in s["route"] if x.get("served"))
    missing = sum(1 for p in s.values() for x in p if x.get("missing"))
    neg = sum(1 for k, v in lines_.items() for x in v[0] if x < 0)
    f = lambda v, d=1: f"{v:.{d}f}"
    out = [
        "# pier in cluster mode at scale: start, memory, propagation under load",
        "",
        f"Command: `{argv}` (root; starts and removes its own API server, veth `{LINK}`-style pair, child cgroup and bpffs)",
        "",
        f"Machine: {os.cpu_count()} cores (`nproc`), kernel {os.uname().release}, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; "
        f"kube-apiserver v1.36.2 + etcd 3.6 from `../shared/kube` on the same 2 cores; proxy pinned to CPU 0, wrk and the upstream to CPU 1, "
        f"controller / agent / API server / etcd unpinned.",
        "",
        f"Scale: {args.services:,} Services × {args.endpoints} endpoints (one EndpointSlice each), 1 GatewayClass + 1 Gateway, "
        f"{args.routes:,} HTTPRoutes (+ the `web` route and Service wrk uses). Loaded over the API with {args.load_workers} connections "
        f"in {r['load']['seconds']:.1f} s ({r['load']['objects']:,} objects; not counted below).",
        "",
        "| measure | result | target (issue 8) |",
        "|---|---|---|",
        f"| controller start → /readyz 200 (initial lists of every kind + first full translation published) | {f(cs['ready_s'], 2)} s (first translation {f(cs['first_translate_ms'] or 0)} ms, {f(cs['cpu_s'], 1)} CPU-s) | — |",
        f"| controller RSS at ready: VmRSS / VmHWM | {f(cs['rss_mib'])} / {f(cs['hwm_mib'])} MiB | < 300 MB |",
        f"| controller RSS once status was written on every route: VmRSS / VmHWM | {f(r['controller_settled']['VmRSS'])} / {f(r['controller_settled']['VmHWM'])} MiB | < 300 MB |",
        f"| controller RSS after the churn: VmRSS / VmHWM | {f(ce['VmRSS'])} / {f(ce['VmHWM'])} MiB | < 300 MB |",
    ]
    for k, v in r["propagation"].items():
        a, b = v["from_response"], v["from_watch_event"]
        out.append(f"| {k}: API server accepted (write response) → applied, p50 / p99 (n={a['n']}) | {f(a['p50_ms'], 2)} / {f(a['p99_ms'], 2)} ms | p99 < 50 ms |")
        out.append(f"| {k}: controller watch event → applied, p50 / p99 (n={b['n']}) | {f(b['p50_ms'], 2)} / {f(b['p99_ms'], 2)} ms | p99 < 10 ms |")
    out += [
        f"| failed requests during the churn (wrk non-2xx + socket errors) | {failed} of {w['requests']:,} ({f(w['rps'], 0)} req/s, p50 {w['p50_ms']} ms, p99 {w['p99_ms']} ms) | 0 |",
        "",
        "Breakdown (ms; p50 / p99 / max):",
        "",
        "| path | write sent → applied | response → applied | watch event → published | watch event → applied |",
        "|---|---|---|---|---|",
    ]
    t3 = lambda d: f"{f(d['p50_ms'], 2)} / {f(d['p99_ms'], 2)} / {f(d['max_ms'], 2)}"
    for k, v in r["propagation"].items():
        out.append(f"| {k} | {t3(v['from_send'])} | {t3(v['from_response'])} | {t3(v['watch_to_published'])} | {t3(v['from_watch_event'])} |")
    a0 = r["agent_start"]
    tr = r["translate_ms_during_route_edits"]
    load = (f"`wrk -t1 -c{args.wrk_connections} --latency` with a {args.wrk_delay_ms} ms pause per connection between requests (steady, not saturating)"
            if args.wrk_delay_ms > 0 else f"`wrk -t1 -c{args.wrk_connections} --latency` (saturating)")
    out += [
        "",
        "Other facts from the run:",
        "",
        f"- Edits: {len(s['route'])} HTTPRoute edits (the route wrk uses), {len(s['slice'])} EndpointSlice edits, one every ≥ {args.interval_ms} ms, "
        f"each waiting for the previous one to land; {missing} not seen everywhere within 10 s. After each route edit a request "
        f"through the proxy returned the new `x-pier-edit` value: {served} of {len(s['route'])}.",
        f"- Status: the leader wrote status on every route after ready ({r['status_writes']['by_result']}); the churn started after "
        f"those writes settled ({f(r['status_writes']['seconds_after_ready'])} s after ready).",
        f"- Proxy: connected and serving `web.test` {f(r['proxy_start_s'], 2)} s after start; RSS at the end {f(r['proxy_end']['VmRSS'])} MiB "
        f"(VmHWM {f(r['proxy_end']['VmHWM'])}). Agent: first full programming {f(a0['first_program_ms'])} ms ({a0['ops']:,} map writes, "
        f"{a0['services']:,} services, {a0['backends']:,} backends), {f(a0['s'], 2)} s from start; RSS at the end {f(r['agent_end']['VmRSS'])} MiB.",
        f"- Full translations during the route edits (one per edit; `translated` log lines): n={len(tr)}, p50 {f(pct(tr, 50))} ms, p99 {f(pct(tr, 99))} ms. "
        f"Controller CPU: {f(cs['cpu_s'])} s to ready, {f(ce['cpu_s'])} s at the end.",
        f"- Stream breaks during the run: proxy {r['proxy_stream_breaks']}, agent {r['agent_stream_breaks']}. "
        f"Warnings / errors logged: controller {r['controller_warnings'] or 'none'}; proxy {r['proxy_warnings'] or 'none'}; agent {r['agent_warnings'] or 'none'}.",
        f"- Negative response → applied values (the data plane applied the change before the writer had the API server's answer): {neg}.",
        f"- Load: {load}, `Host: web.test`, through the proxy (1 worker thread, CPU 0) to a `pier-proxy echo` upstream (CPU 1); "
        f"socket errors {w['socket_errors']}, non-2xx {w['non_2xx']}.",
        "",
        "Raw per-edit timestamps and the summary: `bench/results/cluster.json`.",
    ]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--routes", type=int, default=3000)
    ap.add_argument("--route-edits", type=int, default=120)
    ap.add_argument("--slice-edits", type=int, default=120)
    ap.add_argument("--interval-ms", type=int, default=150)
    ap.add_argument("--debounce-ms", type=int, default=30)
    ap.add_argument("--wrk-connections", type=int, default=8)
    ap.add_argument("--wrk-delay-ms", type=int, default=2, help="pause per connection between requests (0: saturate)")
    ap.add_argument("--keep-logs", default=None, help="copy the processes' logs here after the run")
    ap.add_argument("--load-workers", type=int, default=4)
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/cluster"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF, veth, cgroup, bpffs)")
    if args.services + 1 >= ipaddress.ip_network(SERVICE_CIDR).num_addresses - 2:
        raise SystemExit(f"at most {ipaddress.ip_network(SERVICE_CIDR).num_addresses - 4} Services in {SERVICE_CIDR}")
    argv = "bench/run-cluster.py " + " ".join(sys.argv[1:])
    if not args.skip_build:
        wait_no_cargo_test()
        subprocess.run(["cargo", "build", "--release", "-p", "pier-controller", "-p", "pier-proxy-cli", "-p", "pier-agent-cli"],
                       cwd=ROOT, check=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the cleanups
    run = Run(args)
    try:
        run.apiserver()
        run.link()
        run.sandbox()
        run.load()
        wait_no_cargo_test()
        run.controller()
        run.wait_status_settled()
        run.data_planes()
        run.churn()
    except BaseException:
        keep = run.work + "-failed"
        print(f"failed; logs kept in {keep}", file=sys.stderr)
        run.stop()
        shutil.copytree(run.work, keep, ignore=shutil.ignore_patterns("api", "bpffs", "*.pem"), dirs_exist_ok=True)
        shutil.rmtree(run.work, ignore_errors=True)
        raise
    run.stop()
    if args.keep_logs:
        shutil.copytree(run.work, args.keep_logs, ignore=shutil.ignore_patterns("api", "bpffs", "*.pem"), dirs_exist_ok=True)
    shutil.rmtree(run.work, ignore_errors=True)
    md = report(run, args, argv)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    r = dict(run.results)
    r.pop("wrk_raw", None)
    for phase in r["samples"].values():  # keep the file small: ms offsets from the write
        for x in phase:
            for k in ("watch", "published", "proxy", "agent", "resp"):
                if k in x:
                    x[k] = round((x[k] - x["send"]) * 1e3, 3)
            x["send"] = round(x["send"], 6)
    json.dump(r, open(args.out + ".json", "w"), indent=1, default=str)
    open(args.out + ".md", "w").write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
