#!/usr/bin/env python3
"""NodePort from outside the node: pier-agent's tc programs vs kube-proxy-style
iptables (PREROUTING -> KUBE-SERVICES -> KUBE-NODEPORTS -> KUBE-SVC -> KUBE-SEP
DNAT), and straight to the pod (routed by the node) as the floor, same run.

Three network namespaces this script creates and removes: a client, a node
(forwarding, pier-agent attached to its client-facing veth) and a pod behind
the node. Addresses are from the documentation ranges; nothing leaves them.

Measured: connect latency (p50 / p99 of 3,000 connect()s from the client) to
the NodePort of the Service in the middle of N NodePort Services, each next to
a direct run made just before it.

Usage (root): bench/run-nodeport.py [--counts 10,1000] ; writes bench/results/nodeport.md
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

from netbench import accept_server, connect_latency, sh, wait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "target/release/pier-agent")
CLIENT_NS, NODE_NS, POD_NS = "pierbench-client", "pierbench-node", "pierbench-pod"
FIRST_NODE_PORT = 30000


def within(ns, *cmd, **kw):
    return sh("ip", "netns", "exec", ns, *cmd, **kw)


SERVER = accept_server("198.51.100.2", 8080)


def client(host, port, n=3000):
    return connect_latency(CLIENT_NS, host, port, n)


def manifests(count):
    docs = []
    for i in range(count):
        docs.append(f"""apiVersion: v1
kind: Service
metadata: {{name: s{i}, namespace: default}}
spec: {{type: NodePort, clusterIP: 127.97.{i // 250}.{i % 250 + 1}, ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {FIRST_NODE_PORT + i}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: s{i}, namespace: default, labels: {{kubernetes.io/service-name: s{i}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints: [{{addresses: [198.51.100.2], nodeName: node-a}}]
""")
    return "---\n".join(docs)


def iptables_rules(count):
    lines = ["*nat", ":KUBE-SERVICES - [0:0]", ":KUBE-NODEPORTS - [0:0]", "-A PREROUTING -j KUBE-SERVICES",
             "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"]
    for i in range(count):
        lines += [f":KUBE-SVC-{i} - [0:0]", f":KUBE-SEP-{i} - [0:0]"]
    for i in range(count):
        lines.append(f"-A KUBE-NODEPORTS -p tcp -m tcp --dport {FIRST_NODE_PORT + i} -j KUBE-SVC-{i}")
        lines.append(f"-A KUBE-SVC-{i} -j KUBE-SEP-{i}")
        lines.append(f"-A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination 198.51.100.2:8080")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="10,1000")
    args = ap.parse_args()
    sh("cargo", "build", "--release", "-p", "pier-agent-cli", cwd=ROOT)
    work = tempfile.mkdtemp(prefix="pier-nodeport-bench-")
    cg_root = sh("sh", "-c", "awk '$3==\"cgroup2\"{print $2; exit}' /proc/mounts").stdout.strip()
    cgroup = os.path.join(cg_root, "pier-nodeport-bench")
    bpffs = os.path.join(work, "bpffs")
    rows, server = [], None
    try:
        for ns in (CLIENT_NS, NODE_NS, POD_NS):
            sh("ip", "netns", "add", ns)
            within(ns, "ip", "link", "set", "lo", "up")
        within(CLIENT_NS, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "ext0", "netns", NODE_NS)
        within(NODE_NS, "ip", "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", POD_NS)
        for ns, dev, addr in ((CLIENT_NS, "eth0", "192.0.2.2/24"), (NODE_NS, "ext0", "192.0.2.1/24"),
                              (NODE_NS, "pod0", "198.51.100.1/24"), (POD_NS, "eth0", "198.51.100.2/24")):
            within(ns, "ip", "addr", "add", addr, "dev", dev)
            within(ns, "ip", "link", "set", dev, "up")
        within(CLIENT_NS, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1")
        within(POD_NS, "ip", "route", "add", "default", "via", "198.51.100.1")
        within(NODE_NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        os.makedirs(cgroup, exist_ok=True)
        os.makedirs(bpffs)
        sh("mount", "-t", "bpf", "bpf", bpffs)
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{POD_NS}", "python3", "-c", SERVER], stdout=subprocess.PIPE, text=True)
        server.stdout.readline()
        for count in [int(c) for c in args.counts.split(",")]:
            port = FIRST_NODE_PORT + count // 2
            # pier (first: nothing of iptables loaded in the node namespace yet)
            mdir = os.path.join(work, f"m{count}")
            os.makedirs(mdir)
            open(os.path.join(mdir, "svc.yaml"), "w").write(manifests(count))
            pins = os.path.join(bpffs, f"pier{count}")
            log = os.path.join(work, f"agent{count}.log")
            agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{NODE_NS}", AGENT, "--manifests", mdir, "--cgroup", cgroup,
                                      "--pin-dir", pins, "--interface", "ext0", "--node-name", "node-a",
                                      "--metrics-bind", "127.0.0.1:0", "--maglev-table-size", "251"],
                                     stderr=open(log, "w"), stdout=subprocess.DEVNULL)
            try:
                wait(lambda: '"maps updated"' in open(log).read())
                direct = client("198.51.100.2", 8080)
                rows.append((count, "pier (tc, DNAT, conntrack)", client("192.0.2.1", port), direct))
            finally:
                agent.terminate(); agent.wait()
                sh(AGENT, "--pin-dir", pins, "uninstall")
            # iptables, kube-proxy style
            rules = os.path.join(work, "ipt.rules")
            open(rules, "w").write(iptables_rules(count))
            direct = client("198.51.100.2", 8080)
            within(NODE_NS, "iptables-restore", rules)
            rows.append((count, "iptables (kube-proxy style)", client("192.0.2.1", port), direct))
            within(NODE_NS, "iptables", "-t", "nat", "-F")
            within(NODE_NS, "iptables", "-t", "nat", "-X")
            print(count, "done", flush=True)
    finally:
        if server:
            server.kill()
        sh("umount", bpffs, check=False)
        sh("rmdir", cgroup, check=False)
        for ns in (CLIENT_NS, NODE_NS, POD_NS):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)
    lines = ["# NodePort from outside: pier-agent (tc) vs kube-proxy-style iptables", "",
             f"Command: `bench/run-nodeport.py --counts {args.counts}` (root; three network namespaces it creates and removes)", "",
             f"Machine: {os.cpu_count()} cores, kernel {os.uname().release}, {sh('iptables', '--version').stdout.strip()}, {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}", "",
             "Connect latency (3,000 TCP connect()s from the client namespace to the NodePort of the Service in the middle of N NodePort Services; the backend is a pod behind the node), each next to a direct run to the pod address (routed by the node) made just before it.", "",
             "| NodePort Services | path | p50 µs | p99 µs | direct p50 µs | p50 vs direct |", "|---|---|---|---|---|---|"]
    for count, mode, r, d in rows:
        lines.append(f"| {count} | {mode} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {d['p50_us']:.1f} | {r['p50_us'] / d['p50_us']:.2f}× |")
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    open(os.path.join(ROOT, "bench/results/nodeport.md"), "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
