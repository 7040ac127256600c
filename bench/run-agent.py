#!/usr/bin/env python3
"""pier-agent socket LB vs kube-proxy-style iptables and nftables, same run.

Everything happens in a network namespace this script creates and removes
(`pierbench`); service addresses are in 127.96.0.0/12 so nothing can leave
the machine. Endpoints: 10 per Service (127.0.0.1-127.0.0.10, port 18080,
one EndpointSlice), one listener on 0.0.0.0:18080 inside the namespace.

pier runs as in a cluster: `pier-controller serve` translates the folder and
streams snapshots and deltas; `pier-agent --controller` programs the maps.

Measured per mode and service count: time to program all Services (pier:
plan + map writes, from the agent's log; iptables: `iptables-restore`;
nftables: `nft -f`), time for the agent to apply a single endpoint change
arriving as a delta, and the connect latency (p50 / p99 of connect()s) to one
Service through each mode, each next to a direct measurement taken right
before it (the ratio uses that one).

Usage (root): bench/run-agent.py [--counts 10,1000,10000] ; writes bench/results/agent.md
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

from netbench import accept_server, connect_latency, sh, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target/release/pier-agent")
CONTROLLER = os.path.join(ROOT, "target/release/pier-controller")
STREAM = "127.0.0.1:17070"
NS = "pierbench"
EPS = 10
BASE_PORT = 18080


def ns(*cmd, **kw):
    return sh("nsenter", f"--net=/run/netns/{NS}", *cmd, **kw)


def vip(i):
    return f"127.{96 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"


def endpoint(j):
    return f"127.0.0.{j + 1}"


SERVER = accept_server("0.0.0.0", BASE_PORT)


def client(host, port, cgroup=None, n=3000):
    return connect_latency(NS, host, port, n, cgroup)


def manifests(count, moved=None):
    docs = []
    for i in range(count):
        addresses = [endpoint(j) for j in range(EPS)]
        if i == moved:
            addresses[0] = endpoint(EPS)  # one endpoint replaced by another
        eps = ", ".join(f"{{addresses: [{a}]}}" for a in addresses)
        docs.append(f"""apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: default}}
spec: {{clusterIP: {vip(i)}, ports: [{{name: http, port: 80, targetPort: {BASE_PORT}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s{i}, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
addressType: IPv4
ports: [{{name: http, port: {BASE_PORT}, protocol: TCP}}]
endpoints: [{eps}]
""")
    return "---\n".join(docs)


def iptables_rules(count):
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", "-A OUTPUT -j KUBE-SERVICES"]
    for i in range(count):
        lines.append(f":KUBE-SVC-{i} - [0:0]")
        for j in range(EPS):
            lines.append(f":KUBE-SEP-{i}-{j} - [0:0]")
    for i in range(count):
        lines.append(f"-A KUBE-SERVICES -d {vip(i)}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}")
        for j in range(EPS):
            prob = 1.0 / (EPS - j)
            stat = f"-m statistic --mode random --probability {prob:.10f} " if j < EPS - 1 else ""
            lines.append(f"-A KUBE-SVC-{i} {stat}-j KUBE-SEP-{i}-{j}")
            lines.append(f"-A KUBE-SEP-{i}-{j} -p tcp -m tcp -j DNAT --to-destination {endpoint(j)}:{BASE_PORT}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_rules(count):
    out = ["table ip pierbench {"]
    for i in range(count):
        m = ", ".join(f"{j} : {endpoint(j)} . {BASE_PORT}" for j in range(EPS))
        out.append(f"  chain svc{i} {{\n    meta l4proto tcp dnat ip addr . port to numgen random mod {EPS} map {{ {m} }}\n  }}")
    elements = ", ".join(f"{vip(i)} . 80 : goto svc{i}" for i in range(count))
    out.append(f"  map services {{\n    type ipv4_addr . inet_service : verdict\n    elements = {{ {elements} }}\n  }}")
    out.append("  chain output {\n    type nat hook output priority -100; policy accept;\n    ip daddr . tcp dport vmap @services\n  }")
    out.append("}")
    return "\n".join(out) + "\n"


def agent_updates(log_path):
    out = []
    for line in open(log_path):
        if '"maps updated"' in line:
            out.append(json.loads(line)["fields"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="10,1000,10000,100000")
    ap.add_argument("--iptables-max", type=int, default=1000, help="largest count tried with iptables-restore (it takes minutes beyond)")
    ap.add_argument("--nftables-max", type=int, default=10000, help="largest count tried with nft -f")
    args = ap.parse_args()
    sh("cargo", "build", "--release", "-p", "pier-agent-cli", "-p", "pier-controller", cwd=ROOT)
    sh("ip", "netns", "add", NS)
    work = tempfile.mkdtemp(prefix="pier-agent-bench-")
    cg_root = sh("sh", "-c", "awk '$3==\"cgroup2\"{print $2; exit}' /proc/mounts").stdout.strip()
    cgroup = os.path.join(cg_root, "pier-bench")
    bpffs = os.path.join(work, "bpffs")
    rows, programming = [], []
    server = None
    try:
        ns("ip", "link", "set", "lo", "up")
        os.makedirs(cgroup, exist_ok=True)
        os.makedirs(bpffs)
        sh("mount", "-t", "bpf", "bpf", bpffs)
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{NS}", "python3", "-c", SERVER], stdout=subprocess.PIPE, text=True)
        server.stdout.readline()
        direct_probe = endpoint(4)
        for count in [int(c) for c in args.counts.split(",")]:
            target = vip(count // 2)
            # pier: controller stream -> agent
            mdir = os.path.join(work, f"m{count}")
            os.makedirs(mdir)
            open(os.path.join(mdir, "svc.yaml"), "w").write(manifests(count))
            log = os.path.join(work, f"agent{count}.log")
            pins = os.path.join(bpffs, f"pier{count}")
            t0 = time.time()
            controller = subprocess.Popen([CONTROLLER, "serve", "--manifests", mdir, "--listen", STREAM],
                                          stderr=open(os.path.join(work, f"controller{count}.log"), "w"), stdout=subprocess.DEVNULL)
            agent = subprocess.Popen([AGENT, "--controller", STREAM, "--cgroup", cgroup, "--pin-dir", pins,
                                      "--max-services", str(max(65536, 2 * count))],
                                     stderr=open(log, "w"), stdout=subprocess.DEVNULL)
            try:
                first = wait(lambda: agent_updates(log))[0]
                wall_full = time.time() - t0
                direct = client(direct_probe, BASE_PORT)
                pier = client(target, 80, cgroup)
                rows.append((count, "pier (socket LB)", pier, direct))
                # Replaced atomically, as a config management tool would: a watcher
                # must never see a half-written file.
                staged = os.path.join(work, "staged.yaml")
                open(staged, "w").write(manifests(count, moved=count // 2))
                os.replace(staged, os.path.join(mdir, "svc.yaml"))
                change = wait(lambda: agent_updates(log)[1:])[0]
            finally:
                agent.terminate(); agent.wait()
                controller.terminate(); controller.wait()
                sh(AGENT, "--pin-dir", pins, "uninstall")
            programming.append((count, "pier", f"{first['elapsed_us'] / 1e3:.1f} ms (plan + {first['ops']} map writes; controller start to programmed, incl. loading the YAML: {wall_full:.2f} s)",
                                f"{change['elapsed_us'] / 1e3:.3f} ms ({change['ops']} map writes; the delta from the controller re-plans one service)"))
            # iptables
            if count <= args.iptables_max:
                rules = os.path.join(work, "ipt.rules")
                open(rules, "w").write(iptables_rules(count))
                # Direct before the rules exist: iptables slows every connect down.
                direct = client(direct_probe, BASE_PORT)
                t0 = time.time(); ns("iptables-restore", rules); t_ipt = time.time() - t0
                rows.append((count, "iptables (kube-proxy style)", client(target, 80), direct))
                ns("iptables", "-t", "nat", "-F"); ns("iptables", "-t", "nat", "-X")
                programming.append((count, "iptables", f"{t_ipt:.2f} s", "n/a (kube-proxy rewrites the chains)"))
            # nftables
            if count <= args.nftables_max:
                rules = os.path.join(work, "nft.rules")
                open(rules, "w").write(nft_rules(count))
                direct = client(direct_probe, BASE_PORT)
                t0 = time.time(); ns("nft", "-f", rules); t_nft = time.time() - t0
                rows.append((count, "nftables (verdict map)", client(target, 80), direct))
                ns("nft", "delete", "table", "ip", "pierbench")
                programming.append((count, "nftables", f"{t_nft:.2f} s", "n/a"))
            print(count, "done", flush=True)
    finally:
        if server:
            server.kill()
        sh("umount", bpffs, check=False)
        sh("rmdir", cgroup, check=False)
        sh("ip", "netns", "del", NS, check=False)
        shutil.rmtree(work, ignore_errors=True)
    lines = ["# pier-agent vs kube-proxy-style iptables / nftables", "",
             f"Command: `bench/run-agent.py --counts {args.counts}` (root; everything inside a network namespace it creates and removes)", "",
             f"Machine: {os.cpu_count()} cores, kernel {os.uname().release}, {sh('iptables', '--version').stdout.strip()}, {sh('nft', '--version').stdout.strip()}, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}", "",
             "Connect latency (3,000 TCP connect()s from a Python client, to the Service at index N/2; 10 endpoints each), each next to a direct run to an endpoint made just before it (before the iptables / nftables rules were loaded).", "",
             "| services | path | p50 µs | p99 µs | direct p50 µs | p50 vs direct |", "|---|---|---|---|---|---|"]
    for count, mode, r, d in rows:
        lines.append(f"| {count} | {mode} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {d['p50_us']:.1f} | {r['p50_us'] / d['p50_us']:.2f}× |")
    lines += ["", "Programming:", "", "| services | mode | full programming | one endpoint change |", "|---|---|---|---|"]
    for count, mode, full, one in programming:
        lines.append(f"| {count} | {mode} | {full} | {one} |")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    open(os.path.join(ROOT, "bench/results/agent.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
