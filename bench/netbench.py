"""Shared by the root-only network benches (run-agent.py, run-nodeport.py):
shell helpers, an accept-and-close server and a connect-latency client, both
run inside a network namespace the bench made."""
import json, subprocess, time


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def accept_server(host, port):
    """Python source of a server that accepts and closes, prints "ready"."""
    return r"""
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((%r, %d)); s.listen(4096)
def serve():
    while True:
        c, _ = s.accept(); c.close()
for _ in range(4):
    threading.Thread(target=serve, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
""" % (host, port)


CLIENT = r"""
import socket, sys, time, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
lat = []
for _ in range(n):
    s = socket.socket()
    t = time.perf_counter_ns()
    s.connect((host, port))
    lat.append(time.perf_counter_ns() - t)
    s.close()
lat.sort()
print(json.dumps({"p50_us": lat[len(lat)//2] / 1000, "p99_us": lat[int(len(lat)*0.99)] / 1000}))
"""


def connect_latency(netns, host, port, n=3000, cgroup=None):
    """p50 / p99 of `n` TCP connect()s from inside `netns` (and `cgroup`)."""
    prefix = f"echo $$ > {cgroup}/cgroup.procs && " if cgroup else ""
    out = sh("nsenter", f"--net=/run/netns/{netns}", "sh", "-c",
             f"{prefix}exec python3 -c '{CLIENT}' {host} {port} {n}")
    return json.loads(out.stdout)


def wait(pred, timeout=600):
    """Polls `pred` until it returns something true; that value."""
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit("timed out")
