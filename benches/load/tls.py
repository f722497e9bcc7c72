#!/usr/bin/env python3
"""tollgate's HTTPS and HTTP/2 benchmark (issue 13): tollgate's `[tls]` against nginx as an
HTTPS reverse proxy, same certificate, same cipher suites and groups, same upstream.

Everything listens on 127.0.0.1 (ports 18180-18444, apart from run.py's). One self-signed
ECDSA P-256 certificate for 127.0.0.1 is made with openssl for the run; both servers use it,
both are pinned to the same TLS 1.3 suites, TLS 1.2 ECDHE-ECDSA AEAD ciphers and groups
(rustls' defaults with the ring provider), and both proxy to one nginx upstream (`return 200`)
over keep-alive connections. tollgate gets a session from a real login at the test provider,
over https; both get the same request headers (the session cookie and `x-csrf`), nginx
drops the cookie towards the upstream as tollgate does.

Scenarios, each in alternating rounds (the first contender alternates too), median round:

  h1         wrk, HTTPS HTTP/1.1 keep-alive, GET /api/items (auth required on tollgate)
  h2         h2load, HTTP/2 (ALPN h2), -m 10 streams per connection, same path and headers;
             p99 from h2load's per-request log (it prints only min/max/mean/sd itself)
  handshake  benches/load/handshake.c (a small OpenSSL client, built with cc): a new TCP
             connection and a full TLS 1.3 handshake per request, GET /healthz answered by
             the server itself on both (no upstream, no session); req/s = handshakes/s.
             Not wrk or h2load: both keep their SSL object when they reconnect and resume
             the session, so with `Connection: close` they measure resumed handshakes.
  resumed    the same, each connection offering the session of the one before it, as a
             browser does; the share the server resumed is reported
  h1-plain   wrk, plain HTTP/1.1 keep-alive to the same servers, for reference (c=64 only)

Before each scenario the script waits (at most --max-wait seconds) while fuzzers, cargo or
rustc run on the machine, and records every round that started while they still did.

Needs (Debian): nginx wrk nghttp2-client openssl, Node.js with `npm ci` in tests/idp, and the
Rust toolchain. Usage: python3 benches/load/tls.py [--quick] [--results FILE]
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (run.py's helpers: processes, nginx config, login, wrk)

HOST = R.HOST
PORTS = {
    "upstream": 18180,
    "nginx-plain": 18181,
    "tollgate-plain": 18184,
    "idp": 18190,
    "tollgate-metrics": 18194,
    "nginx": 18443,
    "tollgate": 18444,
}
ISSUER = f"http://{HOST}:{PORTS['idp']}/test/as"
CONTENDERS = ("nginx", "tollgate")
# rustls 0.23's defaults with the ring provider, in its order; nginx is pinned to the same.
TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"
TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
GROUPS = "X25519:prime256v1:secp384r1"
# Processes whose presence means the machine is busy with something else.
BUSY_NAMES = ("cargo", "rustc")
BUSY_ARGS = ("fuzz-", "libfuzzer", "-max_total_time=", "/fuzz/corpus")
SECTION = "## HTTPS and HTTP/2 (issue 13)"
BEGIN, END = "<!-- benches/load/tls.py output: begin -->", "<!-- benches/load/tls.py output: end -->"


def loopback_context():
    """Loopback only: the run's own self-signed certificate is not verified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def busy_processes():
    """Other work on the machine (not this script's children): fuzzers, cargo, rustc."""
    mine = {os.getpid()} | {p.pid for p in R.procs.values()}
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) in mine:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if comm in BUSY_NAMES or comm.startswith("fuzz-") or any(a in args for a in BUSY_ARGS):
            found.append(f"{pid}:{comm}")
    return found


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def wait_quiet(max_wait, phase):
    """Waits (bounded) until no fuzzer/cargo/rustc runs; returns what was still running."""
    deadline = time.time() + max_wait
    while True:
        busy = busy_processes()
        if not busy:
            R.log(f"{phase}: machine quiet (load average {loadavg()})")
            return []
        if time.time() >= deadline:
            R.log(f"{phase}: measuring UNDER LOAD after waiting {max_wait} s: {' '.join(busy[:6])} (load average {loadavg()})")
            return busy
        R.log(f"{phase}: waiting, busy: {' '.join(busy[:6])} (load average {loadavg()})")
        time.sleep(min(30, max(1, deadline - time.time())))


def tree_cpu_seconds(pid):
    """CPU seconds of a process and its direct children (nginx's master and workers)."""
    total = R.cpu_seconds(pid)
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                total += R.cpu_seconds(int(p))
        except (OSError, ValueError, IndexError):
            pass
    return total


def make_certificate():
    key, crt = os.path.join(R.WORK, "tls.key"), os.path.join(R.WORK, "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={HOST}",
                    "-addext", f"subjectAltName=IP:{HOST}"], check=True, capture_output=True)
    return crt, key


def session_key():
    """A key made for this run: the published example key is refused with an https public_url."""
    return subprocess.run(["openssl", "rand", "-base64", "32"], check=True, capture_output=True,
                          text=True).stdout.strip()


def tollgate_conf(crt, key):
    return R.write(os.path.join(R.WORK, "tollgate-tls.toml"), f"""
[server]
listen = ["{HOST}:{PORTS['tollgate-plain']}"]
public_url = "https://{HOST}:{PORTS['tollgate']}"
threads = {R.THREADS}
[oidc]
issuer = "{ISSUER}"
client_id = "{R.CLIENT_ID}"
client_secret = "{R.CLIENT_SECRET}"
scopes = ["openid", "profile", "email"]
[session]
keys = ["{session_key()}"]
[[routes]]
prefix = "/api"
upstream = "http://{HOST}:{PORTS['upstream']}"
auth = "required"
[[routes]]
prefix = "/"
upstream = "http://{HOST}:{PORTS['upstream']}"
auth = "none"
[metrics]
listen = "{HOST}:{PORTS['tollgate-metrics']}"
[tls]
listen = ["{HOST}:{PORTS['tollgate']}"]
cert_file = "{crt}"
key_file = "{key}"
min_version = "1.2"
http2 = true
""")


def nginx_tls_body(crt, key):
    return f"""
  upstream up {{ server {HOST}:{PORTS['upstream']}; keepalive 256; }}
  server {{ listen {HOST}:{PORTS['nginx']} ssl http2; listen {HOST}:{PORTS['nginx-plain']};
    ssl_certificate {crt}; ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {TLS12_CIPHERS};
    ssl_conf_command Ciphersuites {TLS13_SUITES};
    ssl_ecdh_curve {GROUPS};
    ssl_prefer_server_ciphers off;
    location = /healthz {{ default_type text/plain; return 200 'ok'; }}
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Cookie ""; }} }}"""


def h2load(url, conns, seconds, headers, log_path):
    argv = ["h2load", "-t", str(R.THREADS), "-c", str(conns), "-m", "10", "-D", str(seconds),
            f"--log-file={log_path}"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    text = out.stdout
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", text)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
    if out.returncode != 0 or not (m and reqs and codes):
        raise SystemExit(f"h2load failed for {url}: {text}\n{out.stderr}")
    proto = re.search(r"Application protocol: (\S+)", text)
    if not proto or proto.group(1) != "h2":
        raise SystemExit(f"h2load did not negotiate h2 with {url}: {text}")
    lat = []
    with open(log_path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                lat.append(int(parts[2]))
    os.unlink(log_path)
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else 0

    done = int(reqs.group(3))
    return {"rps": float(m.group(2)), "requests": done, "p50": pct(50), "p99": pct(99), "p999": pct(99.9),
            "mean_text": mean.group(1) if mean else "?",
            "errors": int(reqs.group(5)) + int(reqs.group(6)) + int(reqs.group(7)),
            "non2xx": int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4)),
            "tls": " ".join(re.findall(r"(?:TLS Protocol|Cipher|Server Temp Key): ([^\n]+)", text))}


def negotiated(port, version):
    """What `openssl s_client` negotiates with a server: protocol, cipher, group."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-brief", version,
                          "-alpn", "h2,http/1.1"], input=b"", capture_output=True, timeout=10)
    fields = dict(re.findall(r"^([A-Za-z ]+): (.+)$", out.stderr.decode(errors="replace"), re.M))
    return ", ".join(fields.get(k, "?") for k in ("Protocol version", "Ciphersuite", "Server Temp Key", "Signature type"))


def build_handshake_client():
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handshake.c")
    exe = os.path.join(R.WORK, "handshake")
    subprocess.run(["cc", "-O2", "-o", exe, src, "-lssl", "-lcrypto", "-lpthread"], check=True)
    return exe


def handshakes(exe, port, path, conns, seconds, resume=False):
    out = subprocess.run([exe, HOST, str(port), path, str(conns), str(seconds), str(R.THREADS)] + (["resume"] if resume else []),
                         capture_output=True, text=True, timeout=seconds + 60)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"handshake client failed for port {port}: {out.stdout}\n{out.stderr}")
    r = json.loads(line[-1])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--connections", default="64,512", help="concurrencies (default 64,512)")
    ap.add_argument("--max-wait", type=int, default=900, help="seconds to wait for a quiet machine per scenario (default 900)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 round")
    ap.add_argument("--results", default=os.path.join(R.ROOT, "benches", "RESULTS.md"))
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds = 3, 1
    conns = [int(c) for c in args.connections.split(",")]

    missing = [t for t in ("nginx", "wrk", "h2load", "openssl", "cc", "node", "cargo") if not shutil.which(t)]
    if not os.path.exists("/usr/include/openssl/ssl.h"):
        missing.append("libssl-dev")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (apt-get install nginx wrk nghttp2-client openssl gcc libssl-dev nodejs)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))

    R.log("building tollgate (release)")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "tollgate", "--example", "bare_pingora"],
                   cwd=R.ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(R.ROOT, "target")
    # A copy: a shared target directory may be rebuilt by others while this runs.
    binary = shutil.copy(os.path.join(target, "release", "tollgate"), os.path.join(R.WORK, "tollgate"))
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=R.ROOT, capture_output=True, text=True).stdout.strip()
    idp_dir = os.path.join(R.ROOT, "tests", "idp")
    if not os.path.exists(os.path.join(idp_dir, "node_modules", "oidc-provider")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=idp_dir, check=True)

    ctx = loopback_context()
    crt, key = make_certificate()
    handshake_exe = build_handshake_client()
    try:
        R.start("upstream", ["nginx", "-p", R.WORK, "-c", R.nginx_conf("upstream", PORTS["upstream"], f"""
  server {{ listen {HOST}:{PORTS['upstream']};
    location / {{ default_type application/json; return 200 '{{"ok":true,"from":"upstream"}}'; }} }}"""), "-g", "daemon off;"])
        R.start("nginx", ["nginx", "-p", R.WORK, "-c", R.nginx_conf("nginx-tls", PORTS["nginx"], nginx_tls_body(crt, key)),
                          "-g", "daemon off;"])
        tg_origin = f"https://{HOST}:{PORTS['tollgate']}"
        R.start("idp", ["node", os.path.join(idp_dir, "server.js")], env={**os.environ,
            "IDP_PORT": str(PORTS["idp"]),
            # A day: waits for a quiet machine can stretch a run past the default hour, and an
            # expired access token would be refreshed once, then refused with wrk's old cookie.
            "ACCESS_TOKEN_TTL": "86400",
            "REDIRECT_URIS": f"{tg_origin}/callback",
            "POST_LOGOUT_REDIRECT_URIS": f"{tg_origin}/"})
        R.wait_http("upstream", f"http://{HOST}:{PORTS['upstream']}/")
        R.wait_http("idp", f"{ISSUER}/.well-known/openid-configuration")
        R.start("tollgate", [binary, "--config", tollgate_conf(crt, key), "--log-format", "json"],
                # rustls warns, per handshake, about the IP address wrk and h2load send as SNI
                # (clients of a real deployment send a host name); not measured here.
                env={**os.environ, "TOLLGATE_LOG": "warn,rustls=error"})
        R.wait_http("nginx", f"https://{HOST}:{PORTS['nginx']}/healthz", context=ctx)
        R.wait_http("tollgate", f"{tg_origin}/readyz", context=ctx)

        R.log("logging in through tollgate over https")
        cookie = R.login(f"{tg_origin}/login?return_to=/landing", "__Host-tollgate", context=ctx)
        headers = [f"Cookie: {cookie}", "x-csrf: 1"]
        base = {"nginx": f"https://{HOST}:{PORTS['nginx']}", "tollgate": tg_origin}
        # Each answers 200 on both paths before the load starts; tollgate's /api needs the session.
        for name in CONTENDERS:
            for path, hs in (("/api/items", headers), ("/healthz", [])):
                req = urllib.request.Request(base[name] + path, headers=dict(h.split(": ", 1) for h in hs))
                with R.opener(R.NoRedirect, context=ctx).open(req, timeout=10) as r:
                    if r.status != 200:
                        raise SystemExit(f"{name}: {path} answered {r.status}")
        try:
            R.opener(R.NoRedirect, context=ctx).open(f"{tg_origin}/api/items", timeout=10)
            raise SystemExit("tollgate answered /api/items without a session")
        except urllib.error.HTTPError as e:
            if e.code not in (302, 401):
                raise SystemExit(f"tollgate answered /api/items without a session with {e.code}")
        tls = {name: {v: negotiated(PORTS[name], f"-{v}") for v in ("tls1_3", "tls1_2")} for name in CONTENDERS}
        for name in CONTENDERS:
            R.log(f"{name}: TLS 1.3 {tls[name]['tls1_3']}; TLS 1.2 {tls[name]['tls1_2']}")
        plain = {"nginx": f"http://{HOST}:{PORTS['nginx-plain']}", "tollgate": f"http://{HOST}:{PORTS['tollgate-plain']}"}

        scenarios = ([(k, c) for k in ("h1", "h2", "handshake", "resumed") for c in conns]
                     + [("h1-plain", conns[0])])
        pids = {"nginx": R.procs["nginx"].pid, "tollgate": R.procs["tollgate"].pid}
        runs, cpu, busy_rounds, h2tls, hstls = {}, {}, [], {}, {}
        for kind, c in scenarios:
            wait_quiet(args.max_wait, f"{kind} c={c}")
            for rnd in range(args.rounds):
                order = CONTENDERS if rnd % 2 == 0 else CONTENDERS[::-1]
                for name in order:
                    busy = busy_processes()
                    if busy:
                        busy_rounds.append((kind, c, rnd, name, busy, loadavg()))
                    cpu0 = tree_cpu_seconds(pids[name])
                    if kind == "h1":
                        r = R.wrk(base[name] + "/api/items", c, args.duration, headers)
                    elif kind == "h2":
                        r = h2load(base[name] + "/api/items", c, args.duration, headers,
                                   os.path.join(R.WORK, f"h2load-{name}.log"))
                        h2tls[name] = r["tls"]
                    elif kind == "handshake":
                        r = handshakes(handshake_exe, PORTS[name], "/healthz", c, args.duration)
                        hstls[name] = r["tls"]
                    elif kind == "resumed":
                        r = handshakes(handshake_exe, PORTS[name], "/healthz", c, args.duration, resume=True)
                    else:
                        r = R.wrk(plain[name] + "/api/items", c, args.duration, headers)
                    used = tree_cpu_seconds(pids[name]) - cpu0
                    acc = cpu.setdefault((name, kind, c), [0.0, 0])
                    acc[0] += used
                    acc[1] += r["requests"]
                    R.log(f"{kind} c={c} round {rnd + 1} {name:9} {r['rps']:>9.0f} req/s  p99 {r['p99'] / 1000:.2f} ms  "
                          + (f"resumed {r['reused'] / max(1, r['requests']):.0%}  " if "reused" in r else "") +
                          f"errors {r['errors']} non-2xx {r['non2xx']}{'  (busy: ' + ' '.join(busy[:3]) + ')' if busy else ''}")
                    runs.setdefault((name, kind, c), []).append(r)
        failed = [f"{n} {k} c={c}" for (n, k, c), rs in runs.items() if any(r["non2xx"] for r in rs)]

        def median_run(key):
            rs = sorted(runs[key], key=lambda r: r["rps"])
            return rs[len(rs) // 2]

        results = {
            "table": {key: median_run(key) for key in runs},
            "ratios": {key: [r["rps"] for r in rs] for key, rs in runs.items()},
            "cpu_us": {key: v[0] / max(1, v[1]) * 1e6 for key, v in cpu.items()},
            "tls": tls, "h2tls": h2tls, "hstls": hstls, "busy": busy_rounds, "commit": commit,
            "total_rounds": len(scenarios) * args.rounds * len(CONTENDERS),
        }
        with open(os.path.join(R.WORK, "results.json"), "w") as f:
            json.dump({"runs": {f"{n} {k} {c}": rs for (n, k, c), rs in runs.items()},
                       "cpu_us": {f"{n} {k} {c}": v for (n, k, c), v in results["cpu_us"].items()},
                       "tls": tls, "h2tls": h2tls, "busy": busy_rounds}, f, indent=1)
        R.log(f"raw results: {R.WORK}/results.json")
        report(args, conns, results, failed)
        if failed:
            R.log(f"FAILED: non-2xx answers from {', '.join(failed)}")
            return 1
        return 0
    finally:
        R.stop_all()


LABELS = {
    "h1": "HTTPS HTTP/1.1 keep-alive (wrk), /api/items",
    "h2": "HTTP/2 (h2load -m 10), /api/items",
    "handshake": "full TLS handshake per request (handshake.c), /healthz",
    "resumed": "connection per request, client offers its last session (handshake.c resume), /healthz",
    "h1-plain": "plain HTTP/1.1 keep-alive (wrk), /api/items, for reference",
}
KINDS = ("h1", "h2", "handshake", "resumed", "h1-plain")


def report(args, conns, results, failed):
    t = results["table"]
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", "")
    openssl_v = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split(" (")[0].strip()
    tls = results["tls"]
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}; tollgate {results['commit']} "
        f"(rustls, ring), {nginx_v} with {openssl_v}. Loopback only; the clients (wrk -t{R.THREADS}, h2load -t{R.THREADS}, "
        f"handshake.c {R.THREADS} threads) share the {os.cpu_count()} cores with the servers; {args.duration} s per run, "
        f"{args.rounds} alternating rounds, median round shown; tollgate and nginx use {R.THREADS} threads/workers, "
        "one ECDSA P-256 certificate, the same cipher suites and groups, the same nginx upstream.",
        "",
        f"Command: `python3 benches/load/tls.py{' --quick' if args.quick else ''}`",
        "",
        "Negotiated with `openssl s_client`: " + "; ".join(
            f"{n}: {tls[n]['tls1_3']} / {tls[n]['tls1_2']}" for n in CONTENDERS) + ". "
        "h2load: " + "; ".join(f"{n} {results['h2tls'].get(n, '?')}" for n in CONTENDERS) + ". "
        "handshake.c: " + "; ".join(f"{n} {results['hstls'].get(n, '?')}" for n in CONTENDERS) + ".",
        "",
        "| scenario | conns | contender | req/s | p50 ms | p99 ms | server CPU µs/req | errors | sessions resumed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in KINDS:
        for c in conns:
            for name in CONTENDERS:
                if (name, kind, c) not in t:
                    continue
                r = t[(name, kind, c)]
                lines.append(f"| {LABELS[kind]} | {c} | {name} | {r['rps']:.0f} | {r['p50'] / 1000:.2f} | {r['p99'] / 1000:.2f} | "
                             f"{results['cpu_us'][(name, kind, c)]:.0f} | {r['errors']} | "
                             + (f"{r['reused'] / max(1, r['requests']):.1%} |" if kind in ("handshake", "resumed") else "|"))
    lines += ["", "| tollgate / nginx | conns | req/s (median rounds) | single rounds | p99 tollgate vs nginx | target ≥ 0.75× |",
              "|---|---|---|---|---|---|"]
    for kind in KINDS:
        for c in conns:
            if ("tollgate", kind, c) not in t:
                continue
            tg, ng = t[("tollgate", kind, c)], t[("nginx", kind, c)]
            ratio = tg["rps"] / ng["rps"]
            singles = sorted(a / b for a, b in zip(results["ratios"][("tollgate", kind, c)], results["ratios"][("nginx", kind, c)]))
            target = "—" if kind in ("resumed", "h1-plain") else ("met" if ratio >= 0.75 else "**not met**")
            lines.append(f"| {kind} | {c} | {ratio:.2f} | {singles[0]:.2f}–{singles[-1]:.2f} | "
                         f"{tg['p99'] / 1000:.2f} vs {ng['p99'] / 1000:.2f} ms ({tg['p99'] / max(1, ng['p99']):.2f}×) | {target} |")
    busy = results["busy"]
    lines += [""]
    if busy:
        seen = sorted({b.split(":", 1)[1] for entry in busy for b in entry[4]})
        lines.append(f"- Measured under load: {len(busy)} of {results['total_rounds']} runs started while other work ran "
                     f"({', '.join(seen)}; 1-minute load average {min(float(e[5]) for e in busy):.1f}–{max(float(e[5]) for e in busy):.1f}).")
    else:
        lines.append(f"- No fuzzer, cargo or rustc ran at the start of any of the {results['total_rounds']} runs.")
    lines += [
        "- p99: wrk's histogram for h1 and h1-plain (from the request write); h2load's per-request log (`--log-file`) "
        "for h2; handshake.c's from `connect()` to the end of the response, so with the TCP connect and the handshake.",
        "- Server CPU µs/req: the server's user + system CPU time (nginx: master and workers; not the upstream) "
        "over all rounds of the scenario, per answered request.",
    ]
    if failed:
        lines.append(f"- FAILED runs (non-2xx answers): {', '.join(failed)}")
    block = "\n".join([BEGIN] + lines + [END])
    print(block)
    try:
        with open(args.results) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    R.write(args.results, text)
    R.log(f"written {args.results}")


if __name__ == "__main__":
    R.WORK = tempfile.mkdtemp(prefix="tollgate-tls-")
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        R.stop_all()
        sys.exit(130)
