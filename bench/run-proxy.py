#!/usr/bin/env python3
"""pier-proxy vs NGINX, same machine, same upstream, same load generator.

Follows ../shared/BENCHMARKING.md: proxy under test pinned on CPU 0 with one
worker; wrk and the upstream (an NGINX `return 200`) pinned on CPU 1. Rounds
alternate pier / nginx; medians and per-round ratios are reported. The primary
figure is requests per proxy CPU-second (utime+stime from /proc over the run).

Scenarios: (a) 10 routes, HTTP keep-alive; (b) the same over TLS;
(c) 10,000 routes; (d) a config change every 100 ms under load
(pier: manifest rewrite -> hot swap; nginx: rewrite + `nginx -s reload`).

Usage: bench/run-proxy.py [--rounds 3] [--duration 10] [--only a,b,c,d]
Writes bench/results/proxy.md.
"""
import argparse, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIER = os.path.join(ROOT, "target/release/pier-proxy")
FLOOR = os.path.join(ROOT, "target/release/examples/pingora_floor")
UPSTREAM_PORT, HTTP_PORT, HTTPS_PORT, ADMIN_PORT = 19000, 18080, 18443, 19901
CLK = os.sysconf("SC_CLK_TCK")


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK


def peak_rss_kib(pids):
    peak = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
    return peak


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def make_cert(d):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", f"{d}/key.pem", "-out", f"{d}/cert.pem", "-days", "30", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True, capture_output=True)


def nginx_upstream(d):
    os.makedirs(f"{d}/up/logs", exist_ok=True)
    open(f"{d}/up/nginx.conf", "w").write(f"""
worker_processes 1; pid {d}/up/nginx.pid; error_log {d}/up/logs/error.log crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{UPSTREAM_PORT} reuseport; location / {{ return 200 "ok\\n"; }} }} }}
""")
    p = subprocess.Popen(["taskset", "-c", "1", "nginx", "-p", f"{d}/up", "-c", f"{d}/up/nginx.conf", "-g", "daemon off;"])
    wait_port(UPSTREAM_PORT)
    return p


def nginx_config(d, routes, generation=0):
    locations = "\n".join(
        f"    location /r{i} {{ proxy_pass http://up; }}" for i in range(routes))
    return f"""
worker_processes 1; pid {d}/px/nginx.pid; error_log {d}/px/logs/error.log crit;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000;
  upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 256; }}
  proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;
  proxy_set_header X-Forwarded-Host $host; proxy_set_header X-Generation {generation};
  server {{ listen 127.0.0.1:{HTTP_PORT}; listen 127.0.0.1:{HTTPS_PORT} ssl http2; server_name bench.test;
    ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; ssl_protocols TLSv1.2 TLSv1.3;
{locations}
  }} }}
"""


def pier_manifests(d, routes, generation=0):
    crt = open(f"{d}/cert.pem").read()
    key = open(f"{d}/key.pem").read()
    import base64
    b64 = lambda s: base64.b64encode(s.encode()).decode()
    out = [f"""apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: pier}}
spec: {{controllerName: pier.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: pier
  listeners:
  - {{name: http, protocol: HTTP, port: {HTTP_PORT}}}
  - {{name: https, protocol: HTTPS, port: {HTTPS_PORT}, tls: {{certificateRefs: [{{name: bench-tls}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-tls, namespace: default}}
type: kubernetes.io/tls
data: {{tls.crt: {b64(crt)}, tls.key: {b64(key)}}}
---
apiVersion: v1
kind: Service
metadata: {{name: up, namespace: default}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: up-1, namespace: default, labels: {{kubernetes.io/service-name: up}}}}
addressType: IPv4
ports: [{{name: http, port: {UPSTREAM_PORT}, protocol: TCP}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"""]
    for i in range(routes):
        out.append(f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r{i}, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /r{i}}}}}]
    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-generation, value: '{generation}'}}]}}}}]
    backendRefs: [{{name: up, port: 80}}]
""")
    return "".join(out)


class Pier:
    name = "pier"

    def __init__(self, d, routes):
        self.d = f"{d}/pier"
        os.makedirs(self.d, exist_ok=True)
        self.routes = routes
        self.write(0)
        self.p = subprocess.Popen(["taskset", "-c", "0", PIER, "--manifests", self.d, "--threads", "1",
                                   "--admin", f"127.0.0.1:{ADMIN_PORT}", "--listen-host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=open(f"{d}/pier.log", "w"),
                                  env={**os.environ, "RUST_LOG": "warn"})
        wait_port(HTTP_PORT); wait_port(HTTPS_PORT)

    def write(self, generation):
        tmp = f"{self.d}/.next"
        open(tmp, "w").write(pier_manifests(os.path.dirname(self.d), self.routes, generation))
        os.rename(tmp, f"{self.d}/routes.yaml")

    def change(self, generation):
        self.write(generation)

    def pids(self):
        return [self.p.pid]

    def stop(self):
        self.p.send_signal(signal.SIGINT)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill(); self.p.wait()


class Floor:
    """pingora's smallest proxy (proxy/examples/pingora_floor.rs): the framework's own cost."""
    name = "pingora-floor"

    def __init__(self, d, routes):
        self.p = subprocess.Popen(["taskset", "-c", "0", FLOOR, f"127.0.0.1:{HTTP_PORT}", f"127.0.0.1:{UPSTREAM_PORT}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(HTTP_PORT)

    def change(self, generation):
        pass

    def pids(self):
        return [self.p.pid]

    def stop(self):
        self.p.kill(); self.p.wait()


class Nginx:
    name = "nginx"

    def __init__(self, d, routes):
        self.d = d
        self.routes = routes
        os.makedirs(f"{d}/px/logs", exist_ok=True)
        open(f"{d}/px/nginx.conf", "w").write(nginx_config(d, routes))
        self.p = subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", f"{d}/px", "-c", f"{d}/px/nginx.conf", "-g", "daemon off;"])
        wait_port(HTTP_PORT); wait_port(HTTPS_PORT)
        self.seen = set()

    def change(self, generation):
        open(f"{self.d}/px/nginx.conf", "w").write(nginx_config(self.d, self.routes, generation))
        subprocess.run(["nginx", "-p", f"{self.d}/px", "-c", f"{self.d}/px/nginx.conf", "-s", "reload"], capture_output=True)

    def pids(self):
        # Workers come and go on reload: remember every one seen.
        self.seen.update([self.p.pid] + children(self.p.pid))
        return list(self.seen)

    def stop(self):
        self.p.send_signal(signal.SIGQUIT)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill(); self.p.wait()


def wrk(url, duration, host="bench.test"):
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-H", f"Host: {host}", url],
                         capture_output=True, text=True).stdout
    def num(pattern, default=0.0):
        m = re.search(pattern, out)
        return float(m.group(1)) if m else default
    def lat(p):
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    total = num(r"(\d+) requests in")
    errors = num(r"Non-2xx or 3xx responses: (\d+)")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    m = re.search(r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    lat_max = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else float("nan")
    return {"rps": num(r"Requests/sec:\s+([\d.]+)"), "requests": total, "p50": lat(50), "p99": lat(99),
            "max": lat_max, "errors": errors, "raw": out}


def run_one(kind, d, scenario, duration):
    routes = 10_000 if scenario == "c" else 10
    proxy = {"pier": Pier, "nginx": Nginx, "pingora-floor": Floor}[kind](d, routes)
    try:
        path = f"/r{routes // 2}/x"
        url = (f"https://127.0.0.1:{HTTPS_PORT}{path}" if scenario == "b" else f"http://127.0.0.1:{HTTP_PORT}{path}")
        wrk(url, 1)  # warm-up: connections, TLS sessions, pools
        stop = threading.Event()
        changes = [0]
        def churn():
            g = 0
            while not stop.wait(0.1):
                g += 1
                proxy.change(g)
                proxy.pids()
                changes[0] = g
        t = None
        if scenario == "d":
            t = threading.Thread(target=churn); t.start()
        pids = proxy.pids()
        cpu0 = cpu_seconds(pids)
        r = wrk(url, duration)
        pids = proxy.pids()
        cpu = cpu_seconds(pids) - cpu0
        if t:
            stop.set(); t.join()
        r["cpu"] = cpu
            # NGINX workers replaced by a reload take their CPU time with them: no figure then.
        r["req_per_cpu_s"] = r["requests"] / cpu if cpu > 0 and not (kind == "nginx" and scenario == "d") else float("nan")
        r["rss_mib"] = peak_rss_kib(proxy.pids()) / 1024
        r["changes"] = changes[0]
        return r
    finally:
        proxy.stop()
        time.sleep(0.2)  # let the kernel release the ports before the next process binds them


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--only", default="a,b,c,d")
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-p", "pier-proxy-cli", "-p", "pier-proxy", "--bins", "--examples"], cwd=ROOT, check=True)
    d = tempfile.mkdtemp(prefix="pier-bench-")
    make_cert(d)
    up = nginx_upstream(d)
    results = {}
    try:
        ceiling = wrk(f"http://127.0.0.1:{UPSTREAM_PORT}/", args.duration)
        for scenario in args.only.split(","):
            for rnd in range(args.rounds):
                # The framework floor only makes sense where no pier feature is involved.
                kinds = ("pier", "nginx", "pingora-floor") if scenario == "a" else ("pier", "nginx")
                for kind in kinds:
                    r = run_one(kind, d, scenario, args.duration)
                    results.setdefault((scenario, kind), []).append(r)
                    print(f"{scenario} round {rnd} {kind}: {r['rps']:.0f} req/s, {r['req_per_cpu_s']:.0f} req/CPU-s, "
                          f"p50 {r['p50']:.2f} ms p99 {r['p99']:.2f} ms, errors {r['errors']:.0f}", flush=True)
    finally:
        up.send_signal(signal.SIGQUIT); up.wait()
    write_report(args, results, ceiling)
    shutil.rmtree(d, ignore_errors=True)


def write_report(args, results, ceiling):
    names = {"a": "(a) 10 routes, HTTP/1.1 keep-alive", "b": "(b) 10 routes, TLS (HTTP/1.1 over TLS 1.3)",
             "c": "(c) 10,000 routes", "d": "(d) config change every 100 ms under load"}
    med = lambda xs: statistics.median(xs)
    lines = ["# pier-proxy vs NGINX", "",
             f"Command: `bench/run-proxy.py --rounds {args.rounds} --duration {args.duration} --only {args.only}`", "",
             f"Machine: {os.cpu_count()} cores, kernel {os.uname().release}, {subprocess.run(['nginx', '-v'], capture_output=True, text=True).stderr.strip()}, "
             f"{subprocess.run(['wrk', '-v'], capture_output=True, text=True).stdout.splitlines()[0] if True else ''}, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}", "",
             "Setup: proxy pinned on CPU 0 with one worker thread/process; wrk (-t1 -c32) and the upstream (NGINX `return 200`) on CPU 1. "
             "Rounds alternate pier, nginx (and, in (a), pingora-floor: the smallest pingora proxy, one fixed peer, no routing/filters/metrics, "
             "`proxy/examples/pingora_floor.rs`, to separate the framework's cost from pier's). Medians over rounds; ratio = pier / nginx.", "",
             f"Direct-to-upstream ceiling (wrk → upstream, same pinning): {ceiling['rps']:.0f} req/s, p99 {ceiling['p99']:.2f} ms.", "",
             "| scenario | proxy | req/s | req per proxy CPU-s | p50 ms | p99 ms | errors | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for s in args.only.split(","):
        for kind in ("pier", "nginx", "pingora-floor"):
            rs = results.get((s, kind), [])
            if not rs:
                continue
            per_cpu = med([r['req_per_cpu_s'] for r in rs])
            per_cpu = "n/a (reloaded workers exit with their CPU time)" if per_cpu != per_cpu else f"{per_cpu:.0f}"
            lines.append(f"| {names[s]} | {kind} | {med([r['rps'] for r in rs]):.0f} | {per_cpu} | "
                         f"{med([r['p50'] for r in rs]):.2f} | {med([r['p99'] for r in rs]):.2f} | {sum(r['errors'] for r in rs):.0f} | "
                         f"{max(r['rss_mib'] for r in rs):.1f} |")
    lines += ["", "Per-round ratios (pier / nginx):", ""]
    for s in args.only.split(","):
        p, n = results.get((s, "pier"), []), results.get((s, "nginx"), [])
        rr = [f"req/s {a['rps'] / b['rps']:.2f}, req/CPU-s {a['req_per_cpu_s'] / b['req_per_cpu_s']:.2f}, p99 {a['p99'] / b['p99']:.2f}".replace("nan", "n/a")
              for a, b in zip(p, n) if b["rps"] and b["p99"]]
        lines.append(f"- {names[s]}: " + "; ".join(rr))
    if ("d", "pier") in results:
        lines += ["", "Scenario (d): config changes applied during each run, failed requests (non-2xx + socket errors), worst latency:", ""]
        for kind in ("pier", "nginx"):
            for r in results.get(("d", kind), []):
                lines.append(f"- {kind}: {r['changes']} changes, {r['errors']:.0f} failed of {r['requests']:.0f}, max latency {r['max']:.1f} ms, p99 {r['p99']:.2f} ms")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    open(os.path.join(ROOT, "bench/results/proxy.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
