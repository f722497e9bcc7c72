#!/usr/bin/env python3
"""tollgate's load benchmark: the hot path side by side with its baselines, in one run.

Everything listens on 127.0.0.1. One nginx (`return 200` + a small JSON body) is the upstream
of every contender:

  upstream      the upstream itself, direct
  bare-pingora  examples/bare_pingora.rs: same Pingora version and thread count as tollgate
  nginx         nginx as a plain keep-alive reverse proxy
  apache-oidc   Apache httpd + mod_auth_openidc, logged in at the test provider, bearer header
  tollgate      tollgate with a session from a real login at the test provider

Each contender is driven by wrk at each concurrency, rounds alternating between contenders,
and the table shows the median round. Then tollgate's RSS with 10,000 idle keep-alive
connections, and login throughput (full /login -> provider -> /callback round trips) with
the share of each callback that is tollgate's own work. Results go to benches/RESULTS.md.

Needs (Debian): nginx wrk apache2 libapache2-mod-auth-openidc, Node.js with
`npm ci` in tests/idp, and the Rust toolchain. Usage: python3 benches/load/run.py [--quick]
"""

import argparse
import asyncio
import http.cookiejar
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
PORTS = {
    "upstream": 18080,
    "nginx": 18081,
    "bare-pingora": 18082,
    "apache-oidc": 18083,
    "tollgate": 18084,
    "tollgate-metrics": 18094,
    "idp": 18090,
    "redis": 18095,
    # The refresh storm's own provider (short-lived tokens) and tollgate.
    "idp-storm": 18091,
    "tollgate-storm": 18085,
    "tollgate-storm-metrics": 18096,
}
THREADS = 2
CLIENT_ID = "tollgate-basic"
CLIENT_SECRET = "basic-secret-0123456789abcdef0123456789"
KEY = "bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q="
ISSUER = f"http://{HOST}:{PORTS['idp']}/test/as"
STORM_ISSUER = f"http://{HOST}:{PORTS['idp-storm']}/test/as"
# The storm's tokens live STORM_TTL seconds and are refreshed in their last STORM_SKEW: due
# STORM_TTL - STORM_SKEW after login, and a refreshed token not due again during the storm.
STORM_TTL, STORM_SKEW = 240, 120
WRK_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.lua")

procs = {}

# Cargo flags per global allocator (Cargo.toml features; the bare Pingora baseline is built
# with the same one).
ALLOCATORS = {
    "mimalloc": [],
    "jemalloc": ["--no-default-features", "--features", "jemalloc"],
    "system": ["--no-default-features"],
}


def build(allocator="mimalloc"):
    """Builds tollgate and the bare Pingora baseline with `allocator`."""
    log(f"building tollgate and the bare Pingora baseline (release, {allocator})")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "tollgate", "--example", "bare_pingora"]
                   + ALLOCATORS[allocator], cwd=ROOT, check=True)



def log(msg):
    print(f"[load] {msg}", file=sys.stderr, flush=True)


def start(name, argv, **kw):
    log(f"starting {name}: {' '.join(argv[:3])} ...")
    out = open(os.path.join(WORK, f"{name}.log"), "wb")
    procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    return procs[name]


def stop_all():
    for name, p in list(procs.items()):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + 10
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def opener(*handlers, context=None):
    """urllib's opener; with `context`, https uses that SSL context (benches/load/tls.py: a
    self-signed certificate on loopback)."""
    if context is not None:
        handlers += (urllib.request.HTTPSHandler(context=context),)
    return urllib.request.build_opener(*handlers)


def wait_http(name, url, expect=(200,), timeout=60, context=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = procs.get(name)
        if p is not None and p.poll() is not None:
            raise SystemExit(f"{name} exited with {p.returncode}; see {WORK}/{name}.log")
        try:
            with opener(NoRedirect, context=context).open(url, timeout=2) as r:
                if r.status in expect:
                    return
        except urllib.error.HTTPError as e:
            if e.code in expect:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{name} did not answer {url} within {timeout}s")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def nginx_conf(name, port, body):
    d = os.path.join(WORK, name)
    os.makedirs(os.path.join(d, "logs"), exist_ok=True)
    return write(os.path.join(d, "nginx.conf"), f"""
worker_processes {THREADS};
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  {body}
}}
""")


def apache_conf():
    d = os.path.join(WORK, "apache")
    os.makedirs(d, exist_ok=True)
    os.chmod(WORK, 0o755)
    os.chmod(d, 0o777)
    m = "/usr/lib/apache2/modules"
    return write(os.path.join(d, "httpd.conf"), f"""
ServerRoot {d}
Listen {HOST}:{PORTS['apache-oidc']}
ServerName {HOST}
PidFile {d}/httpd.pid
ErrorLog {d}/error.log
LogLevel warn
User www-data
Group www-data
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule headers_module {m}/mod_headers.so
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_http_module {m}/mod_proxy_http.so
LoadModule auth_openidc_module {m}/mod_auth_openidc.so
StartServers {THREADS}
ServerLimit 16
ThreadsPerChild 64
MaxRequestWorkers 1024
KeepAlive On
MaxKeepAliveRequests 0
OIDCProviderMetadataURL {ISSUER}/.well-known/openid-configuration
OIDCClientID {CLIENT_ID}
OIDCClientSecret {CLIENT_SECRET}
OIDCProviderTokenEndpointAuth client_secret_basic
OIDCRedirectURI http://{HOST}:{PORTS['apache-oidc']}/redirect_uri
OIDCCryptoPassphrase load-benchmark-passphrase
OIDCPKCEMethod S256
OIDCScope "openid profile email"
OIDCSessionInactivityTimeout 3600
ProxyPass /api/ http://{HOST}:{PORTS['upstream']}/api/ keepalive=On
<Location />
  AuthType openid-connect
  Require valid-user
  RequestHeader set Authorization "Bearer %{{OIDC_access_token}}e"
</Location>
""")


def tollgate_conf(store_url=None, storm=False):
    """tollgate's config; with `store_url`, a `[store]` section too (written beside the other);
    `storm`: the refresh storm's instance (its own port and provider, tokens due after 60 s)."""
    store = f'\n[store]\nurl = "{store_url}"\nkey_prefix = "bench:"\n' if store_url else ""
    name = "tollgate-store.toml" if store_url else "tollgate-storm.toml" if storm else "tollgate.toml"
    port = PORTS["tollgate-storm" if storm else "tollgate"]
    metrics = PORTS["tollgate-storm-metrics" if storm else "tollgate-metrics"]
    issuer = STORM_ISSUER if storm else ISSUER
    skew = f'refresh_skew = "{STORM_SKEW}s"' if storm else ""
    return write(os.path.join(WORK, name), f"""
[server]
listen = ["{HOST}:{port}"]
public_url = "http://{HOST}:{port}"
threads = {THREADS}
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email"]
[session]
keys = ["{KEY}"]
{skew}
[[routes]]
prefix = "/api"
upstream = "http://{HOST}:{PORTS['upstream']}"
[[routes]]
prefix = "/"
upstream = "http://{HOST}:{PORTS['upstream']}"
auth = "none"
[metrics]
listen = "{HOST}:{metrics}"
{store}""")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


def login(start_url, cookie_prefix, context=None):
    """A full login through the provider; returns the Cookie header of the proxy's cookies."""
    jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy())
    o = opener(urllib.request.HTTPCookieProcessor(jar), context=context)
    # Browser-like Accept: mod_auth_openidc answers 401 instead of redirecting otherwise.
    o.addheaders = [("Accept", "text/html,application/xhtml+xml")]
    with o.open(start_url, timeout=30) as r:
        if r.status != 200:
            raise SystemExit(f"login at {start_url} ended with {r.status}")
    cookies = [f"{c.name}={c.value}" for c in jar if c.name.startswith(cookie_prefix)]
    if not cookies:
        raise SystemExit(f"login at {start_url} left no {cookie_prefix}* cookie")
    return "; ".join(cookies)


def timed_login():
    """One tollgate login, following redirects by hand to time the callback hop.
    Returns (callback seconds, request id)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    url = f"http://{HOST}:{PORTS['tollgate']}/login?return_to=/landing"
    callback = None
    for _ in range(20):
        t0 = time.perf_counter()
        try:
            r = opener.open(url, timeout=30)
            status, headers = r.status, r.headers
            r.read()
        except urllib.error.HTTPError as e:
            status, headers = e.code, e.headers
        elapsed = time.perf_counter() - t0
        if url.startswith(f"http://{HOST}:{PORTS['tollgate']}/callback"):
            callback = (elapsed, headers.get("x-request-id"))
        if status in (301, 302, 303, 307, 308):
            url = urllib.parse.urljoin(url, headers["location"])
            continue
        if status != 200 or callback is None:
            raise SystemExit(f"timed login ended with {status} at {url}")
        return callback
    raise SystemExit("timed login: too many redirects")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wrk(url, conns, seconds, headers):
    argv = ["wrk", "-t", str(THREADS), "-c", str(conns), "-d", f"{seconds}s", "--latency", "-s", WRK_LUA]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    line = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"wrk failed for {url}: {out.stdout}\n{out.stderr}")
    r = json.loads(line[-1])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def idle_connections_rss(pid, n, port, path="/healthz"):
    """Opens n keep-alive connections to the process, each after one request, and reads its RSS."""
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    try:
        for i in range(n):
            s = socket.create_connection((HOST, port), timeout=10)
            s.sendall(req)
            socks.append(s)
            if i % 500 == 499:
                for t in socks[-500:]:
                    t.recv(4096)
        for t in socks[(len(socks) // 500) * 500:]:
            t.recv(4096)
        time.sleep(1)
        open_now = len(os.listdir(f"/proc/{pid}/fd"))
        return status_kib(pid, "VmRSS"), status_kib(pid, "VmHWM"), open_now
    finally:
        for s in socks:
            s.close()


def tree_rss_kib(pid):
    """RSS of `pid` and its direct children (nginx: the master and its workers)."""
    total = status_kib(pid, "VmRSS")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            total += status_kib(int(d), "VmRSS")
    return total


def idle_kib_per_connection(pid, n, port, path):
    """KiB of RSS (the process and its children) per idle keep-alive connection: RSS with `n`
    idle connections open, minus RSS before, divided by n."""
    before = tree_rss_kib(pid)
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    try:
        for i in range(n):
            s = socket.create_connection((HOST, port), timeout=10)
            s.sendall(req)
            socks.append(s)
            if i % 500 == 499:
                for t in socks[-500:]:
                    t.recv(4096)
        for t in socks[(len(socks) // 500) * 500:]:
            t.recv(4096)
        time.sleep(1)
        after = tree_rss_kib(pid)
        return before, after, (after - before) / n
    finally:
        for s in socks:
            s.close()


async def _storm_connection(port, jobs, latencies, statuses):
    """One keep-alive connection that sends the requests in `jobs` (cookie headers) one after
    another, recording each latency and status."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for cookie in jobs:
            t0 = time.perf_counter()
            writer.write((f"GET /api/items HTTP/1.1\r\nHost: {HOST}:{port}\r\nCookie: {cookie}\r\n"
                          "x-csrf: 1\r\n\r\n").encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(HOST, port)
    finally:
        writer.close()


async def _storm(port, cookies, per_session, wave):
    """`per_session` concurrent requests for each session, `wave` sessions at a time, on
    `wave * per_session` keep-alive connections."""
    latencies, statuses = [], {}
    conns = wave * per_session
    # Connection i sends, in each wave, the request of session (wave start + i // per_session):
    # every session's requests are in flight together on per_session connections.
    jobs = [[] for _ in range(conns)]
    for start in range(0, len(cookies), wave):
        for i in range(conns):
            k = start + i // per_session
            if k < len(cookies):
                jobs[i].append(cookies[k])
    t0 = time.perf_counter()
    await asyncio.gather(*(_storm_connection(port, j, latencies, statuses) for j in jobs))
    return time.perf_counter() - t0, latencies, statuses


def refresh_storm(sessions, per_session, wave=16):
    """Scenario (b): `sessions` sessions whose access tokens all come due, `per_session`
    concurrent requests each. Returns the figures for the report."""
    port = PORTS["tollgate-storm"]
    log(f"refresh storm: logging in {sessions} sessions (tokens live {STORM_TTL} s, due after {STORM_TTL - STORM_SKEW} s)")
    t0 = time.perf_counter()
    cookies, first = [], None
    for _ in range(sessions):
        cookies.append(login(f"http://{HOST}:{port}/login?return_to=/landing", "tollgate"))
        first = first or time.time()
    login_s = time.perf_counter() - t0
    due_at = time.time() + STORM_TTL - STORM_SKEW + 2
    if time.time() - first > STORM_SKEW - 20:
        raise SystemExit("refresh storm: logging in took too long for the tokens' lifetime")
    with urllib.request.urlopen(f"{STORM_ISSUER.rsplit('/test/as', 1)[0]}/__test/stats", timeout=10) as r:
        before = json.load(r)["token_requests"].get("refresh_token", 0)
    log(f"refresh storm: {sessions} logins took {login_s:.1f} s; waiting {due_at - time.time():.0f} s until every token is due")
    time.sleep(max(0, due_at - time.time()))
    wall, latencies, statuses = asyncio.run(_storm(port, cookies, per_session, wave))
    with urllib.request.urlopen(f"{STORM_ISSUER.rsplit('/test/as', 1)[0]}/__test/stats", timeout=10) as r:
        refreshes = json.load(r)["token_requests"].get("refresh_token", 0) - before
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    out = {
        "sessions": sessions, "per_session": per_session, "wave": wave, "requests": len(latencies),
        "wall_s": wall, "refreshes": refreshes, "refreshes_per_s": refreshes / wall,
        "p50_ms": p(0.50), "p99_ms": p(0.99), "statuses": statuses, "login_s": login_s,
    }
    log(f"refresh storm: {out}")
    return out


def chart_svg(conns, table, path):
    """req/s and p99 per contender at each concurrency, as grouped bars in one SVG."""
    names = ("upstream", "bare-pingora", "nginx", "apache-oidc", "tollgate")
    colors = {"upstream": "#9e9e9e", "bare-pingora": "#5c6bc0", "nginx": "#43a047",
              "apache-oidc": "#ef6c00", "tollgate": "#c62828"}
    panel_w, panel_h, top, left, gap = 430, 260, 40, 60, 30
    width = left + 2 * panel_w + gap + 20
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{top + panel_h + 90}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>']
    for p, (title, key, scale) in enumerate((("req/s (higher is better)", "rps", 1),
                                             ("p99 latency, ms (lower is better)", "p99", 1 / 1000))):
        x0 = left + p * (panel_w + gap)
        vmax = max(table[(n, c)][key] * scale for n in names for c in conns if (n, c) in table) or 1
        out.append(f'<text x="{x0 + panel_w / 2}" y="{top - 18}" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{top + panel_h}" x2="{x0 + panel_w}" y2="{top + panel_h}" stroke="black"/>')
        group_w = panel_w / len(conns)
        bar_w = (group_w - 20) / len(names)
        for g, c in enumerate(conns):
            gx = x0 + g * group_w + 10
            out.append(f'<text x="{gx + (group_w - 20) / 2}" y="{top + panel_h + 16}" text-anchor="middle">c={c}</text>')
            for i, n in enumerate(names):
                if (n, c) not in table:
                    continue
                v = table[(n, c)][key] * scale
                h = panel_h * v / vmax
                bx = gx + i * bar_w
                out.append(f'<rect x="{bx:.1f}" y="{top + panel_h - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{colors[n]}"><title>{n} c={c}: {v:.0f}</title></rect>')
                label = f"{v / 1000:.1f}k" if key == "rps" else f"{v:.0f}"
                out.append(f'<text x="{bx + (bar_w - 2) / 2:.1f}" y="{top + panel_h - h - 3:.1f}" text-anchor="middle" font-size="9">{label}</text>')
    for i, n in enumerate(names):
        lx = left + i * 150
        out.append(f'<rect x="{lx}" y="{top + panel_h + 40}" width="12" height="12" fill="{colors[n]}"/>')
        out.append(f'<text x="{lx + 16}" y="{top + panel_h + 50}">{n}</text>')
    out.append(f'<text x="{left}" y="{top + panel_h + 80}" font-size="10" fill="#555">benches/load/run.py, median of alternating wrk rounds on one 2-core machine, loopback</text>')
    out.append("</svg>")
    write(path, "\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--connections", default="64,512", help="wrk concurrencies (default 64,512)")
    ap.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections (default 10000)")
    ap.add_argument("--logins", type=int, default=100, help="timed logins (default 100)")
    ap.add_argument("--sessions", type=int, default=1000, help="refresh storm: sessions whose tokens come due (default 1000)")
    ap.add_argument("--per-session", type=int, default=64, help="refresh storm: concurrent requests per session (default 64)")
    ap.add_argument("--allocator", choices=sorted(ALLOCATORS), default="mimalloc",
                    help="global allocator of tollgate and bare Pingora (default: tollgate's, mimalloc)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 round, 1000 idle, 20 logins, 50 storm sessions")
    ap.add_argument("--results", default=os.path.join(ROOT, "benches", "RESULTS.md"))
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds, args.idle, args.logins, args.sessions = 3, 1, 1000, 20, 50
    conns = [int(c) for c in args.connections.split(",")]

    missing = [t for t in ("nginx", "wrk", "node", "cargo") if not shutil.which(t)]
    if not os.path.exists("/usr/sbin/apache2") or not os.path.exists("/usr/lib/apache2/modules/mod_auth_openidc.so"):
        missing.append("apache2 libapache2-mod-auth-openidc")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (apt-get install nginx wrk apache2 libapache2-mod-auth-openidc nodejs)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))

    build(args.allocator)
    idp_dir = os.path.join(ROOT, "tests", "idp")
    if not os.path.exists(os.path.join(idp_dir, "node_modules", "oidc-provider")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=idp_dir, check=True)

    results = {}
    try:
        start("upstream", ["nginx", "-p", WORK, "-c", nginx_conf("upstream", PORTS["upstream"], f"""
  server {{ listen {HOST}:{PORTS['upstream']};
    location / {{ default_type application/json; return 200 '{{"ok":true,"from":"upstream"}}'; }} }}"""), "-g", "daemon off;"])
        start("nginx", ["nginx", "-p", WORK, "-c", nginx_conf("nginx", PORTS["nginx"], f"""
  upstream up {{ server {HOST}:{PORTS['upstream']}; keepalive 256; }}
  server {{ listen {HOST}:{PORTS['nginx']};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""), "-g", "daemon off;"])
        start("idp", ["node", os.path.join(idp_dir, "server.js")], env={**os.environ,
            "IDP_PORT": str(PORTS["idp"]),
            "REDIRECT_URIS": f"http://{HOST}:{PORTS['tollgate']}/callback,http://{HOST}:{PORTS['apache-oidc']}/redirect_uri",
            "POST_LOGOUT_REDIRECT_URIS": f"http://{HOST}:{PORTS['tollgate']}/"})
        start("idp-storm", ["node", os.path.join(idp_dir, "server.js")], env={**os.environ,
            "IDP_PORT": str(PORTS["idp-storm"]), "ACCESS_TOKEN_TTL": str(STORM_TTL),
            "REDIRECT_URIS": f"http://{HOST}:{PORTS['tollgate-storm']}/callback"})
        start("bare-pingora", [os.path.join(ROOT, "target", "release", "examples", "bare_pingora"),
                               f"{HOST}:{PORTS['bare-pingora']}", f"{HOST}:{PORTS['upstream']}", str(THREADS)])
        wait_http("upstream", f"http://{HOST}:{PORTS['upstream']}/")
        wait_http("idp", f"{ISSUER}/.well-known/openid-configuration")
        start("tollgate", [os.path.join(ROOT, "target", "release", "tollgate"), "--config", tollgate_conf(), "--log-format", "json"],
              env={**os.environ, "TOLLGATE_LOG": "warn,tollgate::oidc=info"})
        start("apache-oidc", ["/usr/sbin/apache2", "-f", apache_conf(), "-DFOREGROUND"])
        wait_http("idp-storm", f"{STORM_ISSUER}/.well-known/openid-configuration")
        start("tollgate-storm", [os.path.join(ROOT, "target", "release", "tollgate"), "--config", tollgate_conf(storm=True),
                                 "--log-format", "json"], env={**os.environ, "TOLLGATE_LOG": "warn"})
        wait_http("nginx", f"http://{HOST}:{PORTS['nginx']}/")
        wait_http("bare-pingora", f"http://{HOST}:{PORTS['bare-pingora']}/")
        wait_http("tollgate", f"http://{HOST}:{PORTS['tollgate']}/readyz")
        wait_http("tollgate-storm", f"http://{HOST}:{PORTS['tollgate-storm']}/readyz")
        # Unauthenticated: a redirect to the provider (browsers) or 401 (other clients).
        wait_http("apache-oidc", f"http://{HOST}:{PORTS['apache-oidc']}/api/", expect=(302, 401))

        log("logging in through tollgate and through Apache + mod_auth_openidc")
        tg_cookie = login(f"http://{HOST}:{PORTS['tollgate']}/login?return_to=/landing", "tollgate")
        ap_cookie = login(f"http://{HOST}:{PORTS['apache-oidc']}/api/landing", "mod_auth_openidc_session")

        contenders = [
            ("upstream", f"http://{HOST}:{PORTS['upstream']}/api/items", []),
            ("bare-pingora", f"http://{HOST}:{PORTS['bare-pingora']}/api/items", []),
            ("nginx", f"http://{HOST}:{PORTS['nginx']}/api/items", []),
            ("apache-oidc", f"http://{HOST}:{PORTS['apache-oidc']}/api/items", [f"Cookie: {ap_cookie}"]),
            ("tollgate", f"http://{HOST}:{PORTS['tollgate']}/api/items", [f"Cookie: {tg_cookie}", "x-csrf: 1"]),
        ]
        # Each must answer 200 with its credentials before the load starts.
        for name, url, headers in contenders:
            req = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
            with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
                if r.status != 200:
                    raise SystemExit(f"{name}: {url} answered {r.status}")

        tg_pid = procs["tollgate"].pid
        bp_pid = procs["bare-pingora"].pid
        runs = {}
        tg_cpu, tg_requests = 0.0, 0
        bp_cpu, bp_requests = 0.0, 0
        for c in conns:
            for rnd in range(args.rounds):
                # Each round starts with another contender, so none always runs first.
                k = rnd % len(contenders)
                for name, url, headers in contenders[k:] + contenders[:k]:
                    cpu0, bp0 = cpu_seconds(tg_pid), cpu_seconds(bp_pid)
                    r = wrk(url, c, args.duration, headers)
                    if name == "tollgate":
                        tg_cpu += cpu_seconds(tg_pid) - cpu0
                        tg_requests += r["requests"]
                    if name == "bare-pingora":
                        bp_cpu += cpu_seconds(bp_pid) - bp0
                        bp_requests += r["requests"]
                    log(f"c={c} round {rnd + 1} {name:13} {r['rps']:>10.0f} req/s  p99 {r['p99'] / 1000:.2f} ms  errors {r['errors']} non-2xx {r['non2xx']}")
                    runs.setdefault((name, c), []).append(r)
        # Wrong answers fail the run; socket errors (timeouts under overload) are reported.
        failed = [f"{n} c={c}" for (n, c), rs in runs.items() if any(r["non2xx"] for r in rs)]

        def median_run(name, c):
            rs = sorted(runs[(name, c)], key=lambda r: r["rps"])
            return rs[len(rs) // 2]

        table = {(n, c): median_run(n, c) for (n, c) in runs}
        results["table"] = table
        results["tg_cpu_us_per_req"] = tg_cpu / max(1, tg_requests) * 1e6
        results["bp_cpu_us_per_req"] = bp_cpu / max(1, bp_requests) * 1e6
        results["tg_peak_rss_kib_load"] = status_kib(tg_pid, "VmHWM")

        log(f"opening {args.idle} idle keep-alive connections to tollgate")
        rss, hwm, fds = idle_connections_rss(tg_pid, args.idle, PORTS["tollgate"])
        results["idle"] = (args.idle, rss, hwm, fds)
        log(f"opening {args.idle} idle keep-alive connections to bare Pingora (baseline)")
        bp_rss0 = status_kib(bp_pid, "VmRSS")
        bp_rss, _, _ = idle_connections_rss(bp_pid, args.idle, PORTS["bare-pingora"], "/api/items")
        results["idle_bp"] = (bp_rss0, bp_rss)
        # KiB per idle connection, each measured from its own baseline (tollgate again, after
        # the first 10,000 have closed, so its figure is measured the same way as the others').
        results["idle_per_conn"] = {}
        for name, pid, port, path in (("tollgate", tg_pid, PORTS["tollgate"], "/healthz"),
                                      ("bare-pingora", bp_pid, PORTS["bare-pingora"], "/api/items"),
                                      ("nginx", procs["nginx"].pid, PORTS["nginx"], "/api/items")):
            time.sleep(2)
            log(f"KiB per idle keep-alive connection: {name}")
            results["idle_per_conn"][name] = idle_kib_per_connection(pid, args.idle, port, path)

        log(f"timing {args.logins} logins")
        t0 = time.perf_counter()
        callbacks = [timed_login() for _ in range(args.logins)]
        wall = time.perf_counter() - t0
        provider_ms = {}
        with open(os.path.join(WORK, "tollgate.log")) as f:
            for line in f:
                if '"login complete"' in line:
                    j = json.loads(line)
                    provider_ms[j.get("request_id")] = float(j.get("provider_ms", 0))
        own = [cb * 1000 - provider_ms[rid] for cb, rid in callbacks if rid in provider_ms]
        results["login"] = (args.logins / wall, statistics.median(cb * 1000 for cb, _ in callbacks),
                            statistics.median(own) if own else float("nan"), len(own))
        results["storm"] = refresh_storm(args.sessions, args.per_session)
        chart_svg(conns, table, os.path.join(os.path.dirname(args.results), "results.svg"))
        report(args, conns, results, failed)
        if failed:
            log(f"FAILED: non-2xx answers from {', '.join(failed)}")
            return 1
        return 0
    finally:
        stop_all()


def report(args, conns, results, failed):
    t = results["table"]
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}. "
        f"Every process on this machine, loopback only; wrk -t{THREADS}, {args.duration} s per run, "
        f"{args.rounds} alternating rounds, median round shown. tollgate, bare Pingora and nginx use {THREADS} threads/workers.",
        "",
        f"Command: `python3 benches/load/run.py{' --quick' if args.quick else ''}`; allocator {args.allocator} (tollgate and bare Pingora)",
        "",
        "| contender | conns | req/s | p50 ms | p99 ms | p99.9 ms | socket errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in conns:
        for name in ("upstream", "bare-pingora", "nginx", "apache-oidc", "tollgate"):
            r = t[(name, c)]
            lines.append(f"| {name} | {c} | {r['rps']:.0f} | {r['p50'] / 1000:.2f} | {r['p99'] / 1000:.2f} | {r['p999'] / 1000:.2f} | {r['errors']} |")
    lines += ["", "| ratio (req/s) | " + " | ".join(f"c={c}" for c in conns) + " |", "|---|" + "---|" * len(conns)]
    for base in ("bare-pingora", "nginx", "apache-oidc"):
        lines.append(f"| tollgate / {base} | " + " | ".join(f"{t[('tollgate', c)]['rps'] / t[(base, c)]['rps']:.2f}" for c in conns) + " |")
    lines.append("| tollgate p99 / bare-pingora p99 | " + " | ".join(f"{t[('tollgate', c)]['p99'] / max(1, t[('bare-pingora', c)]['p99']):.2f}" for c in conns) + " |")
    n, rss, hwm, fds = results["idle"]
    lps, cb_ms, own_ms, own_n = results["login"]
    lines += [
        "",
        f"- CPU time per proxied request (all load runs): tollgate {results['tg_cpu_us_per_req']:.1f} µs, bare Pingora {results['bp_cpu_us_per_req']:.1f} µs",
        f"- tollgate peak RSS under load: {results['tg_peak_rss_kib_load'] / 1024:.1f} MiB",
        f"- tollgate with {n} idle keep-alive connections ({fds} open fds): RSS {rss / 1024:.1f} MiB, peak {hwm / 1024:.1f} MiB",
        f"- bare Pingora (Pingora's default 64 KiB read buffer) with {n} idle keep-alive connections: RSS {results['idle_bp'][1] / 1024:.1f} MiB (from {results['idle_bp'][0] / 1024:.1f} MiB)",
        f"- login throughput (sequential full /login → provider → /callback round trips): {lps:.1f} logins/s",
        f"- callback: median {cb_ms:.2f} ms, of which tollgate's own work (callback minus the token request to the provider) median {own_ms:.2f} ms ({own_n} logins)",
    ]
    lines.append(f"- KiB per idle keep-alive connection ({n} connections, RSS after minus before, nginx's master and workers together): "
                 + ", ".join(f"{k} {v[2]:.1f}" for k, v in results["idle_per_conn"].items()))
    st = results["storm"]
    ok = st["statuses"].get(200, 0)
    lines += [
        "",
        f"Refresh storm: {st['sessions']} sessions logged in at the provider ({st['login_s']:.0f} s), their access tokens all due; "
        f"then {st['per_session']} concurrent requests per session, {st['wave']} sessions at a time "
        f"({st['wave'] * st['per_session']} keep-alive connections, one asyncio client): "
        f"{st['requests']} requests in {st['wall_s']:.1f} s, {ok} answered 200"
        + ("" if ok == st["requests"] else f" (statuses {st['statuses']})")
        + f"; {st['refreshes']} refreshes at the provider "
        + ("(exactly one per session)" if st["refreshes"] == st["sessions"] else f"(**not one per session**: {st['sessions']} expected)")
        + f", {st['refreshes_per_s']:.0f} refreshes/s; request latency p50 {st['p50_ms']:.1f} ms, p99 {st['p99_ms']:.1f} ms (client in Python, included).",
        "",
        "![req/s and p99 per contender](results.svg)",
    ]
    if failed:
        lines.append(f"- FAILED runs (non-2xx answers): {', '.join(failed)}")
    text = "\n".join(lines)
    print(text)
    # Only the block between the markers is this script's; the rest of the file is kept.
    begin, end = "<!-- benches/load/run.py output: begin -->", "<!-- benches/load/run.py output: end -->"
    try:
        with open(args.results) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        doc = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        doc = "# Load benchmark results\n\n" + begin + "\n" + text + "\n" + end + "\n" + old
    write(args.results, doc)
    log(f"written {args.results}")


if __name__ == "__main__":
    WORK = tempfile.mkdtemp(prefix="tollgate-load-")
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
