#!/usr/bin/env python3
"""How many slow clients it takes to stop a new client being served (issue 23).

tollgate runs with `max_connections = 32` in front of nginx (which serves a 32 MiB file at
/big). For each attack, N slow clients connect (N = 8, 16, 32, 64, 128, stopping at the first
N that succeeds), then one new client asks for /healthz: the attack succeeds when that client
gets no answer within --probe-wait seconds (35 s, the issue's figure). Attacks:

  slow-body    POST /backchannel-logout (always on, no login) with Content-Length: 100000,
               then one body byte every 2 s
  slow-reader  GET /big on an auth = "none" route with a 4 KiB receive buffer, never reading

Contenders, in one run, same binary:
  limits off   body_read_timeout = "24h", write_timeout = "24h", min_send_rate = 0 (what
               tollgate did before these limits existed: nothing bounded either attack)
  defaults     the shipped defaults (body_read_timeout 10 s, write_timeout 30 s,
               min_send_rate 1 KiB/s over 10 s)
and with --before BIN, that (older) tollgate binary with its own defaults.

Loopback only; at most 128 slow clients per step, each step bounded by --probe-wait.
Usage: python3 benches/load/slow_clients.py [--bin target/release/tollgate] [--before OLD_BIN]
       [--probe-wait 35]
(needs nginx; build first: cargo build --release --bin tollgate)
"""

import argparse
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the load benchmark's process helpers)

MAX_CONNECTIONS = 32
STEPS = [8, 16, 32, 64, 128]
BIG = 32 * 1024 * 1024


class Attack:
    """N slow clients of one kind, kept going by a thread until stopped."""

    def __init__(self, kind, port, n):
        self.kind, self.port, self.socks, self.cut = kind, port, [], 0
        self.stop = threading.Event()
        for _ in range(n):
            s = socket.socket()
            if kind == "slow-reader":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(5)
            # Connects even when tollgate has no free slot: the kernel's backlog accepts.
            s.connect((R.HOST, port))
            if kind == "slow-body":
                s.sendall(b"POST /backchannel-logout HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100000\r\n\r\n")
            else:
                s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            self.socks.append(s)
        self.thread = threading.Thread(target=self.dribble, daemon=True)
        self.thread.start()

    def dribble(self):
        while not self.stop.wait(2.0):
            if self.kind != "slow-body":
                continue
            for s in list(self.socks):
                try:
                    s.send(b"a")
                except OSError:
                    self.socks.remove(s)
                    self.cut += 1

    def close(self):
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def probe(port, wait):
    """Seconds until a new client got its /healthz answer, or None past `wait`."""
    started = time.monotonic()
    try:
        s = socket.create_connection((R.HOST, port), timeout=wait)
        s.settimeout(max(0.1, wait - (time.monotonic() - started)))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = s.recv(64)
        s.close()
        if got.startswith(b"HTTP/1.1 200"):
            return time.monotonic() - started
    except OSError:
        pass
    return None


def measure(name, binary, extra, wait):
    conf = open(R.tollgate_conf(max_connections=MAX_CONNECTIONS)).read()
    conf = conf.replace(f"max_connections = {MAX_CONNECTIONS}", f"max_connections = {MAX_CONNECTIONS}\n{extra}")
    path = R.write(os.path.join(R.WORK, f"slow-{len(R.procs)}.toml"), conf)
    R.start(name, [binary, "--config", path], env={**os.environ, "TOLLGATE_LOG": os.environ.get("TOLLGATE_LOG", "warn")})
    port = R.PORTS["tollgate"]
    R.wait_http(name, f"http://{R.HOST}:{port}/healthz")
    # The slow readers' answer must be the large one (an error page would leave them idle
    # keep-alive connections instead, a different limit).
    R.wait_http(name, f"http://{R.HOST}:{port}/big")
    rows = []
    try:
        for kind in ["slow-body", "slow-reader"]:
            stopped_at, served = None, []
            for n in STEPS:
                attack = Attack(kind, port, n)
                time.sleep(1.0)
                took = probe(port, wait)
                attack.close()
                # Let tollgate notice the closed clients before the next step.
                time.sleep(1.0)
                R.wait_http(name, f"http://{R.HOST}:{port}/healthz", timeout=wait)
                if took is None:
                    stopped_at = n
                    break
                served.append(f"{n}: {took:.1f} s")
            rows.append((kind, stopped_at, served))
            R.log(f"{name} {kind}: stopped at {stopped_at}; served {served}")
    finally:
        p = R.procs.pop(name)
        p.terminate()
        p.wait(timeout=30)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(R.ROOT, "target", "release", "tollgate"))
    ap.add_argument("--before", help="an older tollgate binary, run with its own defaults")
    ap.add_argument("--probe-wait", type=float, default=35.0)
    ap.add_argument("--only", help="one contender: before, limits-off or defaults")
    args = ap.parse_args()
    R.WORK = tempfile.mkdtemp(prefix="tollgate-slow-")
    big = os.path.join(R.WORK, "big")
    with open(big, "wb") as f:
        f.write(b"x" * BIG)
    # nginx's workers run as another user: they must be able to read the file.
    os.chmod(R.WORK, 0o755)
    os.chmod(big, 0o644)
    R.start("upstream", ["nginx", "-p", R.WORK, "-c", R.nginx_conf("upstream", R.PORTS["upstream"], f"""
  server {{ listen {R.HOST}:{R.PORTS['upstream']};
    location = /big {{ alias {big}; }}
    location / {{ return 200 'ok'; }} }}"""), "-g", "daemon off;"])
    R.wait_http("upstream", f"http://{R.HOST}:{R.PORTS['upstream']}/")
    contenders = [
        ("limits off", args.bin, 'body_read_timeout = "24h"\nwrite_timeout = "24h"\nmin_send_rate = 0'),
        ("defaults", args.bin, ""),
    ]
    if args.before:
        contenders.insert(0, ("before (--before)", args.before, ""))
    if args.only:
        keep = {"before": "before (--before)", "limits-off": "limits off", "defaults": "defaults"}[args.only]
        contenders = [c for c in contenders if c[0] == keep]
    results = []
    try:
        for name, binary, extra in contenders:
            results.append((name, measure(name, binary, extra, args.probe_wait)))
    finally:
        R.stop_all()
    print(f"\nmax_connections = {MAX_CONNECTIONS}; a new client counts as not served after "
          f"{args.probe_wait:.0f} s\n")
    print("| tollgate | attack | slow clients that stop a new client | new client served after (N: time) |")
    print("|---|---|---|---|")
    for name, rows in results:
        for kind, stopped_at, served in rows:
            stop = str(stopped_at) if stopped_at else f"none up to {STEPS[-1]}"
            print(f"| {name} | {kind} | {stop} | {', '.join(served) or '-'} |")


if __name__ == "__main__":
    main()
