#!/usr/bin/env python3
"""tollgate's load benchmark: the hot path side by side with its baselines, in one run.

Everything listens on 127.0.0.1. One nginx (`return 200` + a small JSON body) is the upstream
of every contender:

  upstream      the upstream itself, direct
  bare-pingora  examples/bare_pingora.rs built against Pingora 0.9.1 as released (benches/bare-pingora,
                without tollgate's patches): same Pingora version and thread count as tollgate
  nginx         nginx as a plain keep-alive reverse proxy
  apache-oidc   Apache httpd + mod_auth_openidc, logged in at the test provider, bearer header
  tollgate      tollgate with a session from a real login at the test provider (the session
                sealed whole in its cookie: `[session] storage = "cookie"`, the default)
  store         tollgate with `[session] storage = "store"` and a `[store]` on a local
                redis-server: logged in the same way, its cookie a sealed handle, the session in
                redis and in this replica's memory (each request after the login is warm)
  forward-auth  nginx proxying to the upstream after asking a second tollgate about each request
                (`auth_request` to its `[forward_auth]` endpoint, keep-alive, the Authorization
                it answers copied upstream), with the tollgate contender's session cookie (same
                keys); as deploy/forward-auth/nginx.conf does it

Scenarios (GitHub issue 14):

  (a) steady state: each contender driven by wrk at each concurrency, rounds alternating
      between contenders, the median round shown (--rounds, default 5)
  idle memory: RSS before and after --idle keep-alive connections that each made one request
      and sit idle, for tollgate, bare Pingora and nginx (its workers): KiB per connection
  (c) cold logins: sequential full /login -> provider -> /callback round trips, with the share
      of each callback that is tollgate's own work (the callback minus the token request)
  cold requests: --cold-sessions sessions logged in through the store contender, then sent to a
      second tollgate with the same config, keys and redis, which has never seen them: each
      session's first request there (cold: one store GET) against its second (warm: memory)
  (b) refresh storm: --sessions sessions logged in through a second tollgate whose
      refresh_skew makes every access token due a few seconds after it was issued; then
      --per-session concurrent requests per session, --storm-window sessions in flight at a
      time. Checked: exactly one refresh_token grant per session at the provider.

Results go to benches/RESULTS.md (between this script's markers; the rest of the file is
kept) and a chart to benches/results.svg.

Needs (Debian): nginx wrk apache2 libapache2-mod-auth-openidc redis-server, Node.js with `npm ci`
in tests/idp, and the Rust toolchain (or --prebuilt DIR with tollgate and bare_pingora_released in it).
`--without apache-oidc`, `--without store` and `--without forward-auth` leave those contenders
(and their packages) out.
Usage: python3 benches/load/run.py [--quick] [--prebuilt DIR] [--allocator mimalloc|jemalloc|system]
"""

import argparse
import collections
import concurrent.futures
import http.client
import http.cookiejar
import json
import math
import os
import platform
import re
import resource
import selectors
import shlex
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
from xml.sax.saxutils import escape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
PORTS = {
    "upstream": 18080,
    "nginx": 18081,
    "bare-pingora": 18082,
    "apache-oidc": 18083,
    "tollgate": 18084,
    "tollgate-metrics": 18094,
    # The store contender, and the second instance on its redis that times cold requests.
    "tollgate-store": 18085,
    "tollgate-store-metrics": 18097,
    "tollgate-store-cold": 18087,
    "tollgate-store-cold-metrics": 18098,
    "tollgate-storm": 18086,
    "tollgate-storm-metrics": 18096,
    "idp": 18090,
    "idp-storm": 18091,
    "redis": 18095,
    # The forward-auth contender: nginx in front, the tollgate it asks.
    "nginx-forward-auth": 18088,
    "tollgate-fa": 18099,
    "tollgate-fa-metrics": 18093,
    "tollgate-fa-auth": 18079,
}
THREADS = 2
CLIENT_ID = "tollgate-basic"
CLIENT_SECRET = "basic-secret-0123456789abcdef0123456789"
KEY = "bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q="
ISSUER = f"http://{HOST}:{PORTS['idp']}/test/as"
# The provider's access token lifetime, and how long after its issue the refresh storm's tollgate
# takes a token as due for a refresh. tollgate refreshes no earlier than half-way through a
# token's life (refresh_skew is capped there), so the storm has a provider of its own whose
# tokens live 2 × DUE_AFTER, and refresh_skew = DUE_AFTER.
ACCESS_TTL = 3600
DUE_AFTER = 3
STORM_TTL = 2 * DUE_AFTER
STORM_ISSUER = f"http://{HOST}:{PORTS['idp-storm']}/test/as"
# Logins at a time while the refresh storm's sessions are logged in.
LOGIN_WORKERS = 4
WRK_LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.lua")

procs = {}

# Cargo flags per global allocator (Cargo.toml features; the bare Pingora baseline is built
# with the same one).
ALLOCATORS = {
    "mimalloc": [],
    "jemalloc": ["--no-default-features", "--features", "jemalloc"],
    "system": ["--no-default-features"],
}


# The bare Pingora baseline: Pingora 0.9.1 as released (benches/bare-pingora, without tollgate's
# vendor/PATCHES.md), and the same example with the patches (the main workspace's build).
BARE_RELEASED = os.path.join(ROOT, "target", "release", "bare_pingora_released")
BARE_PATCHED = os.path.join(ROOT, "target", "release", "examples", "bare_pingora")


def build(allocator="mimalloc"):
    """Builds tollgate and the bare Pingora baselines (released and patched) with `allocator`."""
    log(f"building tollgate and the bare Pingora baselines (release, {allocator})")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "tollgate", "--example", "bare_pingora"]
                   + ALLOCATORS[allocator], cwd=ROOT, check=True)
    # The same target directory: only the unpatched crates and the binary are built anew.
    subprocess.run(["cargo", "build", "--release", "--locked", "--target-dir", os.path.join(ROOT, "target")]
                   + ALLOCATORS[allocator], cwd=os.path.join(ROOT, "benches", "bare-pingora"), check=True)


def binaries_note(args, tollgate_bin, bare_bin):
    """Where the binaries came from, for the report: the commit and allocator they were built with."""
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        # This script's own output files do not count as changes.
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benches/RESULTS.md", ":!benches/results.svg"],
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+ (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown commit"
    if args.prebuilt:
        built = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(tollgate_bin)))
        return (f"prebuilt `tollgate` and `bare_pingora_released` from `{args.prebuilt}` (built {built}; allocator "
                f"{args.allocator}, as stated with --allocator); the script at {commit}")
    return f"release builds of {commit} with `cargo build --release` (allocator {args.allocator}, both)"


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


def stop_one(name):
    """Stops one of the processes started here (its process group), before stop_all."""
    p = procs.pop(name)
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def redis_url():
    return f"redis://{HOST}:{PORTS['redis']}/0"


def start_redis():
    """A redis-server on loopback for the store contender: no persistence, stopped by stop_all."""
    start("redis", ["redis-server", "--port", str(PORTS["redis"]), "--bind", HOST,
                    "--save", "", "--appendonly", "no"])
    deadline = time.time() + 30
    while time.time() < deadline:
        if procs["redis"].poll() is not None:
            raise SystemExit(f"redis-server exited with {procs['redis'].returncode}; see {WORK}/redis.log")
        try:
            if redis_command("PING").startswith(b"+PONG"):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"redis-server did not answer on {HOST}:{PORTS['redis']} within 30s")


def redis_command(*words):
    """One command to the bench's redis-server (RESP), its whole reply as bytes."""
    req = f"*{len(words)}\r\n".encode() + b"".join(f"${len(w)}\r\n{w}\r\n".encode() for w in words)
    with socket.create_connection((HOST, PORTS["redis"]), timeout=5) as s:
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return buf
            buf += chunk
            if buf[:1] == b"$":
                head, _, rest = buf.partition(b"\r\n")
                if int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2:
                    return buf
            elif buf.endswith(b"\r\n"):
                return buf


def redis_commands():
    """The commands redis has processed since it started (INFO stats): not this INFO itself, which
    the next count includes."""
    info = redis_command("INFO", "stats").decode("latin-1")
    return int(re.search(r"^total_commands_processed:(\d+)", info, re.M).group(1))


def metric(instance, name):
    """The sum of a metric's samples at PORTS[instance + "-metrics"] (None when it has none)."""
    url = f"http://{HOST}:{PORTS[instance + '-metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else None


def wait_store_up(instance, timeout=60):
    """Until the tollgate `instance` reports its store connected (tollgate_store_up 1)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = procs.get(instance)
        if p is not None and p.poll() is not None:
            raise SystemExit(f"{instance} exited with {p.returncode}; see {WORK}/{instance}.log")
        try:
            if metric(instance, "tollgate_store_up") == 1:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{instance} never connected to the store (tollgate_store_up)")


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


def tollgate_conf(store_url=None, *, max_connections=None, instance="tollgate", refresh_skew=None,
                  issuer=ISSUER, storage=None):
    """tollgate's config; with `store_url`, a `[store]` section too (written beside the other);
    with `max_connections`, that limit in place of the default (4096). `instance` names the
    ports (PORTS[instance] and PORTS[instance + "-metrics"]) and the file; `refresh_skew` in
    seconds, in place of the default (30); `storage`, `[session] storage` ("cookie" or "store"),
    in place of the default (cookie)."""
    store = f'\n[store]\nurl = "{store_url}"\nkey_prefix = "bench:"\n' if store_url else ""
    name = instance + ("-store" if store_url else "") + (f"-sessions-{storage}" if storage else "") + ".toml"
    limit = f"\nmax_connections = {max_connections}" if max_connections else ""
    skew = f"\nrefresh_skew = {refresh_skew}" if refresh_skew is not None else ""
    skew += f'\nstorage = "{storage}"' if storage else ""
    return write(os.path.join(WORK, name), f"""
[server]
listen = ["{HOST}:{PORTS[instance]}"]
public_url = "http://{HOST}:{PORTS[instance]}"
threads = {THREADS}{limit}
[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "profile", "email"]
[session]
keys = ["{KEY}"]{skew}
[[routes]]
prefix = "/api"
upstream = "http://{HOST}:{PORTS['upstream']}"
[[routes]]
prefix = "/"
upstream = "http://{HOST}:{PORTS['upstream']}"
auth = "none"
[metrics]
listen = "{HOST}:{PORTS[instance + '-metrics']}"
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


def rss_kib(pids):
    return sum(status_kib(p, "VmRSS") for p in pids)


def child_pids(ppid):
    """The processes whose parent is `ppid` (nginx's workers under its master)."""
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                        kids.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def idle_connections_rss(pids, n, port, path="/healthz"):
    """Opens n keep-alive connections to the server, each after one request, and returns the RSS
    (summed over `pids`) before and after, KiB, and the first pid's open fds with them open."""
    socks = []
    req = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    before = rss_kib(pids)
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
        open_now = len(os.listdir(f"/proc/{pids[0]}/fd"))
        return before, rss_kib(pids), open_now
    finally:
        for s in socks:
            s.close()


def idp_stats(reset=False, idp="idp"):
    """The test provider's token request counts (tests/idp/server.js, /__test/stats), or zeroes them."""
    url = f"http://{HOST}:{PORTS[idp]}/__test/" + ("reset" if reset else "stats")
    req = urllib.request.Request(url, data=b"" if reset else None, method="POST" if reset else "GET")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def percentile(values, p):
    """The nearest-rank percentile of `values` (nan when there are none)."""
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]


def response_end(buf):
    """When `buf` holds a whole HTTP/1.1 response: (status, its length, whether the server closes
    the connection, whether it sets a cookie); else None."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, close, cookie = None, False, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = "close" in value
        elif name == "set-cookie":
            cookie = True
    pos = head_end + 4
    if chunked:
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                end = buf.find(b"\r\n\r\n", pos - 2)  # no trailers: the CRLF right after "0"
                return (status, end + 4, close, cookie) if end >= 0 else None
            if len(buf) < pos + size + 2:
                return None
            pos += size + 2
    if length is None:
        length = 0
    return (status, pos + length, close, cookie) if len(buf) >= pos + length else None


class StormConn:
    __slots__ = ("sock", "buf", "t0", "slot", "busy")

    def __init__(self, slot):
        self.sock, self.buf, self.t0, self.slot, self.busy = None, bytearray(), 0.0, slot, False


def storm(port, cookies, per_session, window, timeout=60.0):
    """The refresh storm's client: each session's `per_session` requests are sent at once, each on
    its own keep-alive connection (all written before any answer is read), `window` sessions in
    flight; a slot takes the next session as soon as its session has every answer. One thread,
    epoll. Returns latencies (s), status counts, error counts, per-session counts of answers that
    set a cookie, each session's burst time (first write to last answer, s) and the wall time."""
    sel = selectors.DefaultSelector()
    host = f"{HOST}:{port}"

    def connect(c):
        c.sock = socket.create_connection((HOST, port), timeout=10)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(c.sock, selectors.EVENT_READ, c)

    def drop(c):
        if c.sock is not None:
            sel.unregister(c.sock)
            c.sock.close()
            c.sock = None

    slots = [[StormConn(k) for _ in range(per_session)] for k in range(window)]
    for conns in slots:
        for c in conns:
            connect(c)
    todo = collections.deque(range(len(cookies)))
    free = collections.deque(range(window))
    session_of, left, started = [None] * window, [0] * window, [0.0] * window
    latencies, statuses, errors = [], collections.Counter(), collections.Counter()
    resealed, bursts = [0] * len(cookies), []
    active = 0

    def finish(c, status=None, error=None, cookie=False):
        nonlocal active
        c.busy = False
        k = c.slot
        if error:
            errors[error] += 1
        else:
            latencies.append(time.perf_counter() - c.t0)
            statuses[status] += 1
            resealed[session_of[k]] += cookie
        left[k] -= 1
        if left[k] == 0:
            bursts.append(time.perf_counter() - started[k])
            active -= 1
            free.append(k)

    def launch(k):
        nonlocal active
        s = todo.popleft()
        session_of[k], left[k], started[k] = s, per_session, time.perf_counter()
        active += 1
        req = (f"GET /api/items HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
               f"Cookie: {cookies[s]}\r\nx-csrf: 1\r\n\r\n").encode()
        for c in slots[k]:
            c.buf.clear()
            c.busy = True
            try:
                if c.sock is None:
                    connect(c)
                c.t0 = time.perf_counter()
                c.sock.sendall(req)
            except OSError as e:
                drop(c)
                finish(c, error=f"send: {e.__class__.__name__}")

    t_start = time.perf_counter()
    try:
        while True:
            while free and todo:
                launch(free.popleft())
            if not active and not todo:
                break
            for key, _ in sel.select(timeout=1.0):
                c = key.data
                try:
                    data = c.sock.recv(262144)
                except OSError as e:
                    data, why = b"", f"recv: {e.__class__.__name__}"
                else:
                    why = "closed by the server"
                if not data:
                    drop(c)
                    if c.busy:
                        finish(c, error=why)
                    continue
                if not c.busy:
                    continue  # nothing asked: ignore
                c.buf += data
                done = response_end(c.buf)
                if done:
                    status, _, close, cookie = done
                    if close:
                        drop(c)
                    finish(c, status=status, cookie=cookie)
            now = time.perf_counter()
            for k in range(window):
                if left[k] and now - started[k] > timeout:
                    for c in slots[k]:
                        if c.busy:
                            drop(c)
                            finish(c, error="timeout")
        wall = time.perf_counter() - t_start
    finally:
        for conns in slots:
            for c in conns:
                drop(c)
        sel.close()
    return latencies, statuses, errors, resealed, bursts, wall


def refresh_storm(args, tollgate_bin):
    """Scenario (b): --sessions sessions whose access tokens all come due, --per-session concurrent
    requests each. A second tollgate, whose refresh_skew makes a token due DUE_AFTER seconds after
    its issue; the provider counts the refresh_token grants."""
    n, per, window = args.sessions, args.per_session, args.storm_window
    port = PORTS["tollgate-storm"]
    start("idp-storm", ["node", os.path.join(ROOT, "tests", "idp", "server.js")], env={**os.environ,
          "IDP_PORT": str(PORTS["idp-storm"]),
          "ACCESS_TOKEN_TTL": str(STORM_TTL),
          "REDIRECT_URIS": f"http://{HOST}:{port}/callback"})
    wait_http("idp-storm", f"{STORM_ISSUER}/.well-known/openid-configuration")
    start("tollgate-storm", [tollgate_bin, "--config",
                             tollgate_conf(instance="tollgate-storm", max_connections=max(4096, per * window + 256),
                                           refresh_skew=DUE_AFTER, issuer=STORM_ISSUER), "--log-format", "json"],
          env={**os.environ, "TOLLGATE_LOG": "warn"})
    wait_http("tollgate-storm", f"http://{HOST}:{port}/readyz")
    idp_stats(reset=True, idp="idp-storm")
    log(f"refresh storm: logging in {n} sessions through tollgate ({LOGIN_WORKERS} at a time)")
    url = f"http://{HOST}:{port}/login?return_to=/landing"
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(LOGIN_WORKERS) as ex:
        cookies = list(ex.map(lambda _: login(url, "tollgate"), range(n)))
    login_s = time.perf_counter() - t0
    last_issue = time.time()
    at_login = idp_stats(idp="idp-storm")["token_requests"]
    log(f"refresh storm: {n} logins in {login_s:.1f} s ({n / login_s:.0f}/s); provider: {at_login}")
    if at_login.get("refresh_token", 0):
        raise SystemExit(f"refresh storm: {at_login['refresh_token']} refreshes while logging in (tokens due too early)")
    # tollgate counts in whole seconds: a token issued at the last login is due DUE_AFTER s
    # later at the latest, plus the rounding.
    waited = max(0.0, last_issue + DUE_AFTER + 1.5 - time.time())
    log(f"refresh storm: waiting {waited:.1f} s for the last tokens to come due")
    time.sleep(waited)
    idp_stats(reset=True, idp="idp-storm")
    tg_pid, idp_pid = procs["tollgate-storm"].pid, procs["idp-storm"].pid
    cpu_tg, cpu_idp = cpu_seconds(tg_pid), cpu_seconds(idp_pid)
    log(f"refresh storm: {per} concurrent requests per session, {window} sessions in flight")
    latencies, statuses, errors, resealed, bursts, wall = storm(port, cookies, per, window)
    cpu_tg, cpu_idp = cpu_seconds(tg_pid) - cpu_tg, cpu_seconds(idp_pid) - cpu_idp
    stats = idp_stats(idp="idp-storm")
    refreshes = stats["token_requests"].get("refresh_token", 0)
    non200 = sum(v for k, v in statuses.items() if k != 200)
    renewed = sum(1 for r in resealed if r == per)
    r = {
        "sessions": n, "per": per, "window": window, "login_s": login_s, "waited": waited,
        "requests": len(latencies) + sum(errors.values()), "wall": wall, "refreshes": refreshes,
        "refresh_failures": stats.get("refresh_failures", 0), "statuses": dict(statuses), "errors": dict(errors),
        "non200": non200, "renewed": renewed,
        "p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "max": max(latencies, default=float("nan")),
        "burst_p50": percentile(bursts, 50), "burst_p99": percentile(bursts, 99),
        "cpu_tg": cpu_tg, "cpu_idp": cpu_idp,
    }
    r["exact"] = refreshes == n and r["refresh_failures"] == 0 and renewed == n
    log(f"refresh storm: {r['requests']} requests in {wall:.1f} s, {refreshes} refreshes ({refreshes / wall:.0f}/s), "
        f"p99 {r['p99'] * 1000:.1f} ms, statuses {dict(statuses)}, errors {dict(errors)}, "
        f"exactly one refresh per session: {'yes' if r['exact'] else 'NO'}")
    return r


def cold_requests(args, tollgate_bin):
    """The cost of a cold request (a session not in this replica's memory: one store GET) against
    a warm one. --cold-sessions sessions log in through the store contender; a second tollgate
    with the same config, keys and redis, started after those logins, has none of them in memory.
    On one keep-alive connection to it (warmed up first with a session of its own, so that its
    upstream pool and lazy state are warm too), each session's first request (cold) then its
    second (warm). Also counted: the commands redis processed meanwhile, and the second
    instance's tollgate_sessions_active before and after."""
    k = args.cold_sessions
    url = f"http://{HOST}:{PORTS['tollgate-store']}/login?return_to=/landing"
    log(f"cold requests: logging in {k} + 1 sessions through the store contender")
    with concurrent.futures.ThreadPoolExecutor(LOGIN_WORKERS) as ex:
        cookies = list(ex.map(lambda _: login(url, "tollgate"), range(k + 1)))
    name, port = "tollgate-store-cold", PORTS["tollgate-store-cold"]
    start(name, [tollgate_bin, "--config", tollgate_conf(redis_url(), instance=name, storage="store"),
                 "--log-format", "json"], env={**os.environ, "TOLLGATE_LOG": "warn"})
    try:
        wait_http(name, f"http://{HOST}:{port}/readyz")
        wait_store_up(name)
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def get(cookie):
            t0 = time.perf_counter()
            conn.request("GET", "/api/items", headers={"Cookie": cookie, "x-csrf": "1", "Accept": "application/json"})
            r = conn.getresponse()
            r.read()
            elapsed = time.perf_counter() - t0
            if r.status != 200:
                raise SystemExit(f"cold requests: {name} answered {r.status} (see {WORK}/{name}.log)")
            if conn.sock is None:
                # The next request would pay for a new connection: not what is measured here.
                raise SystemExit(f"cold requests: {name} closed the keep-alive connection")
            return elapsed

        for _ in range(50):
            get(cookies[0])
        active_before = metric(name, "tollgate_sessions_active")
        commands_before = redis_commands()
        cold, warm = [], []
        for cookie in cookies[1:]:
            cold.append(get(cookie))
            warm.append(get(cookie))
        # Less the INFO that read the count before.
        commands = redis_commands() - commands_before - 1
        active_after = metric(name, "tollgate_sessions_active")
        conn.close()
    finally:
        stop_one(name)
    r = {
        "sessions": k,
        "cold_p50": percentile(cold, 50), "cold_p99": percentile(cold, 99),
        "warm_p50": percentile(warm, 50), "warm_p99": percentile(warm, 99),
        "extra_p50": statistics.median(c - w for c, w in zip(cold, warm)),
        "redis_commands_per_session": commands / k,
        "active_before": active_before, "active_after": active_after,
    }
    log(f"cold requests: {k} sessions, cold p50 {r['cold_p50'] * 1000:.2f} ms p99 {r['cold_p99'] * 1000:.2f} ms, "
        f"warm p50 {r['warm_p50'] * 1000:.2f} ms p99 {r['warm_p99'] * 1000:.2f} ms, "
        f"{r['redis_commands_per_session']:.1f} redis commands per session (2 requests), "
        f"tollgate_sessions_active {active_before} -> {active_after}")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--connections", default="64,512", help="wrk concurrencies (default 64,512)")
    ap.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections (default 10000)")
    ap.add_argument("--logins", type=int, default=100, help="timed logins (default 100)")
    # 1,000 logins take about 7 s here (4 at a time), the storm about as long: --quick keeps them.
    ap.add_argument("--sessions", type=int, default=1000, help="refresh storm: sessions whose tokens come due (default 1000)")
    ap.add_argument("--per-session", type=int, default=64, help="refresh storm: concurrent requests per session (default 64)")
    ap.add_argument("--storm-window", type=int, default=8,
                    help="refresh storm: sessions in flight at a time (default 8, so 512 concurrent requests)")
    ap.add_argument("--cold-sessions", type=int, default=100,
                    help="cold requests: sessions whose first request meets a replica without them (default 100)")
    ap.add_argument("--quick", action="store_true", help="3 s runs, 1 round, 1000 idle, 20 logins, 20 cold sessions")
    ap.add_argument("--results", default=os.path.join(ROOT, "benches", "RESULTS.md"),
                    help="the Markdown file whose run.py section is replaced (default benches/RESULTS.md)")
    ap.add_argument("--chart", default=os.path.join(ROOT, "benches", "results.svg"),
                    help="the SVG chart of req/s and p99 (default benches/results.svg)")
    ap.add_argument("--prebuilt", metavar="DIR",
                    help="take tollgate and bare_pingora_released from DIR instead of building them with cargo")
    ap.add_argument("--allocator", choices=sorted(ALLOCATORS), default="mimalloc",
                    help="global allocator of both builds (default mimalloc); with --prebuilt, what DIR's "
                         "binaries were built with (recorded, not checked)")
    ap.add_argument("--without", action="append", default=[], choices=["apache-oidc", "store", "forward-auth"],
                    help="leave a contender out (apache-oidc when Apache or mod_auth_openidc is not installed, "
                         "store when redis-server is not)")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.rounds, args.idle, args.logins, args.cold_sessions = 3, 1, 1000, 20, 20
    conns = [int(c) for c in args.connections.split(",")]

    apache = "apache-oidc" not in args.without
    with_store = "store" not in args.without
    missing = [t for t in ("nginx", "wrk", "node") + (() if args.prebuilt else ("cargo",)) if not shutil.which(t)]
    if with_store and not shutil.which("redis-server"):
        missing.append("redis-server (or --without store)")
    if apache and (not os.path.exists("/usr/sbin/apache2")
                   or not os.path.exists("/usr/lib/apache2/modules/mod_auth_openidc.so")):
        missing.append("apache2 libapache2-mod-auth-openidc (or --without apache-oidc)")
    if missing:
        raise SystemExit(f"missing: {', '.join(missing)} (apt-get install nginx wrk apache2 libapache2-mod-auth-openidc redis-server nodejs)")
    results = {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))

    if args.prebuilt:
        tollgate_bin = os.path.join(os.path.abspath(args.prebuilt), "tollgate")
        bare_bin = os.path.join(os.path.abspath(args.prebuilt), "bare_pingora_released")
        for b in (tollgate_bin, bare_bin):
            if not os.access(b, os.X_OK):
                raise SystemExit(f"--prebuilt: {b} is not an executable")
        log(f"prebuilt binaries from {args.prebuilt} (allocator stated: {args.allocator})")
    else:
        build(args.allocator)
        tollgate_bin = os.path.join(ROOT, "target", "release", "tollgate")
        bare_bin = BARE_RELEASED
    results["binaries"] = binaries_note(args, tollgate_bin, bare_bin)
    idp_dir = os.path.join(ROOT, "tests", "idp")
    if not os.path.exists(os.path.join(idp_dir, "node_modules", "oidc-provider")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=idp_dir, check=True)

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
            "ACCESS_TOKEN_TTL": str(ACCESS_TTL),
            "REDIRECT_URIS": f"http://{HOST}:{PORTS['tollgate']}/callback,http://{HOST}:{PORTS['apache-oidc']}/redirect_uri,"
                             f"http://{HOST}:{PORTS['tollgate-storm']}/callback,http://{HOST}:{PORTS['tollgate-store']}/callback",
            "POST_LOGOUT_REDIRECT_URIS": f"http://{HOST}:{PORTS['tollgate']}/"})
        start("bare-pingora", [bare_bin, f"{HOST}:{PORTS['bare-pingora']}", f"{HOST}:{PORTS['upstream']}", str(THREADS)])
        wait_http("upstream", f"http://{HOST}:{PORTS['upstream']}/")
        wait_http("idp", f"{ISSUER}/.well-known/openid-configuration")
        # Room for the idle connections below (tollgate's default max_connections is 4096).
        start("tollgate", [tollgate_bin, "--config", tollgate_conf(max_connections=max(4096, args.idle + 1000)),
                           "--log-format", "json"],
              env={**os.environ, "TOLLGATE_LOG": "warn,tollgate::oidc=info"})
        if with_store:
            start_redis()
            start("tollgate-store", [tollgate_bin, "--config",
                                     tollgate_conf(redis_url(), instance="tollgate-store", storage="store"),
                                     "--log-format", "json"], env={**os.environ, "TOLLGATE_LOG": "warn"})
        if apache:
            start("apache-oidc", ["/usr/sbin/apache2", "-f", apache_conf(), "-DFOREGROUND"])
        forward_auth = "forward-auth" not in args.without
        if forward_auth:
            fa_conf = open(tollgate_conf(instance="tollgate-fa")).read() + \
                f'\n[forward_auth]\nlisten = "{HOST}:{PORTS["tollgate-fa-auth"]}"\ntrusted_proxies = ["127.0.0.1/32"]\n'
            start("tollgate-fa", [tollgate_bin, "--config", write(os.path.join(WORK, "tollgate-fa-forward-auth.toml"), fa_conf),
                                  "--log-format", "json"], env={**os.environ, "TOLLGATE_LOG": "warn"})
            start("nginx-forward-auth", ["nginx", "-p", WORK, "-c", nginx_conf("nginx-forward-auth", PORTS["nginx-forward-auth"], f"""
  upstream up {{ server {HOST}:{PORTS['upstream']}; keepalive 256; }}
  upstream tollgate {{ server {HOST}:{PORTS['tollgate-fa-auth']}; keepalive 256; }}
  server {{ listen {HOST}:{PORTS['nginx-forward-auth']};
    location = /_tollgate_auth {{ internal; proxy_pass http://tollgate/auth; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_pass_request_body off; proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri; proxy_set_header X-Original-Method $request_method; }}
    location / {{ auth_request /_tollgate_auth; auth_request_set $tollgate_authorization $upstream_http_authorization;
      proxy_set_header Authorization $tollgate_authorization;
      proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}"""), "-g", "daemon off;"])
        wait_http("nginx", f"http://{HOST}:{PORTS['nginx']}/")
        wait_http("bare-pingora", f"http://{HOST}:{PORTS['bare-pingora']}/")
        wait_http("tollgate", f"http://{HOST}:{PORTS['tollgate']}/readyz")
        if with_store:
            wait_http("tollgate-store", f"http://{HOST}:{PORTS['tollgate-store']}/readyz")
            wait_store_up("tollgate-store")
        if apache:
            # Unauthenticated: a redirect to the provider (browsers) or 401 (other clients).
            wait_http("apache-oidc", f"http://{HOST}:{PORTS['apache-oidc']}/api/", expect=(302, 401))

        log("logging in through tollgate" + (", through the store contender" if with_store else "")
            + (" and through Apache + mod_auth_openidc" if apache else ""))
        tg_cookie = login(f"http://{HOST}:{PORTS['tollgate']}/login?return_to=/landing", "tollgate")
        st_cookie = login(f"http://{HOST}:{PORTS['tollgate-store']}/login?return_to=/landing", "tollgate") if with_store else None
        if with_store:
            # The Cookie header each sends: the whole session against a sealed handle.
            results["cookie_bytes"] = {"tollgate": len(tg_cookie), "store": len(st_cookie)}
            if len(st_cookie) > 512:
                raise SystemExit(f"store contender: a {len(st_cookie)}-byte Cookie header; a handle is ~100 bytes "
                                 "(is [session] storage = \"store\" in effect?)")
        ap_cookie = login(f"http://{HOST}:{PORTS['apache-oidc']}/api/landing", "mod_auth_openidc_session") if apache else None

        contenders = [
            ("upstream", f"http://{HOST}:{PORTS['upstream']}/api/items", []),
            ("bare-pingora", f"http://{HOST}:{PORTS['bare-pingora']}/api/items", []),
            ("nginx", f"http://{HOST}:{PORTS['nginx']}/api/items", []),
            ("apache-oidc", f"http://{HOST}:{PORTS['apache-oidc']}/api/items", [f"Cookie: {ap_cookie}"]),
            ("tollgate", f"http://{HOST}:{PORTS['tollgate']}/api/items", [f"Cookie: {tg_cookie}", "x-csrf: 1"]),
            ("store", f"http://{HOST}:{PORTS['tollgate-store']}/api/items", [f"Cookie: {st_cookie}", "x-csrf: 1"]),
            ("forward-auth", f"http://{HOST}:{PORTS['nginx-forward-auth']}/api/items", [f"Cookie: {tg_cookie}", "x-csrf: 1"]),
        ]
        if forward_auth:
            wait_http("tollgate-fa", f"http://{HOST}:{PORTS['tollgate-fa']}/readyz")
        contenders = [c for c in contenders if c[0] not in args.without]
        results["contenders"] = [c[0] for c in contenders]
        # Each must answer 200 with its credentials before the load starts.
        for name, url, headers in contenders:
            req = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
            with urllib.request.build_opener(NoRedirect).open(req, timeout=10) as r:
                if r.status != 200:
                    raise SystemExit(f"{name}: {url} answered {r.status}")

        tg_pid = procs["tollgate"].pid
        bp_pid = procs["bare-pingora"].pid
        st_pid = procs["tollgate-store"].pid if with_store else None
        runs = {}
        tg_cpu, tg_requests = 0.0, 0
        bp_cpu, bp_requests = 0.0, 0
        # The store contender: its CPU, and the commands redis processed during its runs (each
        # request warm: none but the background ones expected).
        st_cpu, st_requests, st_commands = 0.0, 0, 0
        for c in conns:
            for rnd in range(args.rounds):
                # Each round starts with another contender, so none always runs first.
                k = rnd % len(contenders)
                for name, url, headers in contenders[k:] + contenders[:k]:
                    cpu0, bp0 = cpu_seconds(tg_pid), cpu_seconds(bp_pid)
                    if name == "store":
                        st0, cmd0 = cpu_seconds(st_pid), redis_commands()
                    r = wrk(url, c, args.duration, headers)
                    if name == "store":
                        st_cpu += cpu_seconds(st_pid) - st0
                        st_commands += redis_commands() - cmd0 - 1
                        st_requests += r["requests"]
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
        if with_store:
            results["st_cpu_us_per_req"] = st_cpu / max(1, st_requests) * 1e6
            results["st_redis_commands_per_req"] = st_commands / max(1, st_requests)
        results["tg_peak_rss_kib_load"] = status_kib(tg_pid, "VmHWM")

        # All three have served the load above, so their allocators and pools are warm; the
        # difference is what the idle connections hold. nginx: its workers (the master holds none).
        results["idle"] = {}
        for name, pids, path in [("tollgate", [tg_pid], "/healthz"),
                                 ("bare-pingora", [bp_pid], "/api/items"),
                                 ("nginx", child_pids(procs["nginx"].pid), "/api/items")]:
            log(f"opening {args.idle} idle keep-alive connections to {name}")
            before, after, fds = idle_connections_rss(pids, args.idle, PORTS[name], path)
            results["idle"][name] = (before, after, fds)
            log(f"{name}: RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, {(after - before) / args.idle:.1f} KiB per connection")
            time.sleep(1)
        results["tg_idle_hwm"] = status_kib(tg_pid, "VmHWM")

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
        share = [(cb * 1000 - provider_ms[rid]) / (cb * 1000) for cb, rid in callbacks if rid in provider_ms]
        results["login"] = (args.logins / wall, statistics.median(cb * 1000 for cb, _ in callbacks),
                            statistics.median(own) if own else float("nan"), len(own),
                            statistics.median(share) if share else float("nan"))

        if with_store:
            results["cold"] = cold_requests(args, tollgate_bin)

        results["storm"] = refresh_storm(args, tollgate_bin)
        if not results["storm"]["exact"]:
            failed.append("refresh storm (not exactly one refresh per session)")
        if results["storm"]["non200"] or results["storm"]["errors"]:
            failed.append("refresh storm (errors)")
        report(args, conns, results, failed)
        if failed:
            log(f"FAILED: {', '.join(failed)}")
            return 1
        return 0
    finally:
        stop_all()


COLORS = {"upstream": "#9da3ab", "bare-pingora": "#4e79a7", "nginx": "#59a14f", "apache-oidc": "#e15759",
          "tollgate": "#f28e2b", "store": "#b07aa1"}


def nice_axis(vmax, ticks=5):
    """A round tick step and the axis maximum (a multiple of it) for values up to `vmax`."""
    if not vmax > 0:
        return 1, 1
    raw = vmax / ticks
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if raw <= m * mag)
    return step, step * math.ceil(vmax / step)


def chart_svg(title, panels, names):
    """An SVG of bar panels, hand-written (no plotting library): `panels` is rows of
    (panel title, {contender: value}, value format); each panel has its own y axis."""
    pw, ph, left, top = 460, 270, 20, 78
    cols = max(len(r) for r in panels)
    width, height = left * 2 + cols * pw, top + len(panels) * ph + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'font-family="-apple-system, Segoe UI, Helvetica, Arial, sans-serif" font-size="12" fill="#24292f">',
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="{left}" y="28" font-size="16" font-weight="bold">{escape(title)}</text>']
    x = left
    for name in names:
        out.append(f'<rect x="{x}" y="44" width="12" height="12" fill="{COLORS.get(name, "#777")}"/>'
                   f'<text x="{x + 17}" y="54">{escape(name)}</text>')
        x += 32 + 6.5 * len(name)
    for row, panels_row in enumerate(panels):
        for col, (ptitle, values, fmt) in enumerate(panels_row):
            x0, y0 = left + col * pw + 58, top + row * ph + 30
            w, h = pw - 80, ph - 75
            out.append(f'<text x="{x0 - 50}" y="{y0 - 12}" font-size="13" font-weight="bold">{escape(ptitle)}</text>')
            shown = [n for n in names if n in values]
            # Headroom for the value printed above the tallest bar.
            step, vmax = nice_axis(1.08 * max([values[n] for n in shown] + [0]))
            v = 0
            while v <= vmax + step / 1000:
                y = y0 + h - h * v / vmax
                label = f"{v:,.0f}" if step >= 1 else f"{v:g}"
                out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#d0d7de" stroke-width="1"/>'
                           f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#57606a">{label}</text>')
                v += step
            slot = w / max(1, len(shown))
            for i, n in enumerate(shown):
                bh = h * values[n] / vmax
                bx = x0 + i * slot + slot * 0.15
                out.append(f'<rect x="{bx:.1f}" y="{y0 + h - bh:.1f}" width="{slot * 0.7:.1f}" height="{bh:.1f}" '
                           f'fill="{COLORS.get(n, "#777")}"><title>{escape(n)}: {fmt(values[n])}</title></rect>')
                out.append(f'<text x="{bx + slot * 0.35:.1f}" y="{y0 + h - bh - 4:.1f}" text-anchor="middle" '
                           f'font-size="11">{escape(fmt(values[n]))}</text>')
                out.append(f'<text x="{bx + slot * 0.35:.1f}" y="{y0 + h + 15:.1f}" text-anchor="middle" '
                           f'font-size="10.5" fill="#57606a">{escape(n)}</text>')
            out.append(f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0 + h}" stroke="#57606a" stroke-width="1"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def ms(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def results_chart(args, conns, results):
    """benches/results.svg: req/s and p99 per contender at each concurrency, and the idle memory."""
    t, names = results["table"], results["contenders"]
    panels = [
        [(f"req/s at {c} connections (higher is better)", {n: t[(n, c)]["rps"] for n in names}, lambda v: f"{v:,.0f}")
         for c in conns],
        [(f"p99 latency at {c} connections, ms (lower is better)", {n: t[(n, c)]["p99"] / 1000 for n in names}, ms)
         for c in conns],
    ]
    if results.get("idle"):
        panels.append([(f"KiB per idle keep-alive connection ({args.idle} open; lower is better)",
                        {n: (a - b) / args.idle for n, (b, a, _) in results["idle"].items()}, lambda v: f"{v:.1f}")])
    title = (f"tollgate load benchmark: median of {args.rounds} alternating round{'s' * (args.rounds != 1)}, "
             f"wrk -t{THREADS}, {args.duration} s runs, loopback, {os.cpu_count()} cores")
    return chart_svg(title, panels, names)


BEGIN, END = "<!-- benches/load/run.py output: begin -->", "<!-- benches/load/run.py output: end -->"


def write_results(path, block):
    """Puts `block` between this script's markers in `path`, keeping the rest of the file. A file
    from before the markers had this script's output from its title to the first subsection."""
    title = "# Load benchmark results"
    text = open(path).read() if os.path.exists(path) else ""
    section = f"{BEGIN}\n{block}{END}\n"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        rest = text[b:].lstrip("\n")
        text = text[:a] + section + (f"\n{rest}" if rest else "")
    elif text.startswith(title):
        m = re.search(r"^#{2,3} ", text[len(title):], re.M)
        text = f"{title}\n\n{section}" + (f"\n{text[len(title) + m.start():]}" if m else "")
    else:
        text = f"{title}\n\n{section}" + (f"\n{text}" if text else "")
    write(path, text)


def report(args, conns, results, failed):
    t = results["table"]
    names = results["contenders"]
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    write(args.chart, results_chart(args, conns, results))
    log(f"written {args.chart}")
    chart = os.path.relpath(args.chart, os.path.dirname(os.path.abspath(args.results)))
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}. "
        f"Every process on this machine, loopback only; wrk -t{THREADS}, {args.duration} s per run, "
        f"{args.rounds} alternating round{'s' * (args.rounds != 1)}, median round shown. tollgate, bare Pingora and nginx "
        f"use {THREADS} threads/workers.",
        "",
        f"Binaries: {results['binaries']}",
        "",
        f"Command: `{' '.join(['python3', 'benches/load/run.py'] + [shlex.quote(a) for a in sys.argv[1:]])}`",
        "",
        f"![req/s and p99 latency per contender at {' and '.join(map(str, conns))} connections, and memory per idle "
        f"connection]({chart})",
        "",
        "### Steady state",
        "",
        "| contender | conns | req/s | p50 ms | p99 ms | p99.9 ms | socket errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in conns:
        for name in names:
            r = t[(name, c)]
            lines.append(f"| {name} | {c} | {r['rps']:.0f} | {r['p50'] / 1000:.2f} | {r['p99'] / 1000:.2f} | {r['p999'] / 1000:.2f} | {r['errors']} |")
    lines += ["", "| ratio (req/s) | " + " | ".join(f"c={c}" for c in conns) + " |", "|---|" + "---|" * len(conns)]
    for base in [n for n in ("bare-pingora", "nginx", "apache-oidc") if n in names]:
        lines.append(f"| tollgate / {base} | " + " | ".join(f"{t[('tollgate', c)]['rps'] / t[(base, c)]['rps']:.2f}" for c in conns) + " |")
    lines.append("| tollgate p99 / bare-pingora p99 | " + " | ".join(f"{t[('tollgate', c)]['p99'] / max(1, t[('bare-pingora', c)]['p99']):.2f}" for c in conns) + " |")
    if "forward-auth" in names:
        lines.append("| forward-auth / tollgate (nginx asking tollgate / tollgate proxying) | " + " | ".join(f"{t[('forward-auth', c)]['rps'] / t[('tollgate', c)]['rps']:.2f}" for c in conns) + " |")
        if "apache-oidc" in names:
            lines.append("| forward-auth / apache-oidc | " + " | ".join(f"{t[('forward-auth', c)]['rps'] / t[('apache-oidc', c)]['rps']:.2f}" for c in conns) + " |")
    if "store" in names:
        lines.append("| store / tollgate (sessions in the store / in the cookie) | " + " | ".join(f"{t[('store', c)]['rps'] / t[('tollgate', c)]['rps']:.2f}" for c in conns) + " |")
        lines.append("| store p99 / tollgate p99 | " + " | ".join(f"{t[('store', c)]['p99'] / max(1, t[('tollgate', c)]['p99']):.2f}" for c in conns) + " |")
    lines += [
        "",
        f"- CPU time per proxied request (all load runs): tollgate {results['tg_cpu_us_per_req']:.1f} µs, bare Pingora {results['bp_cpu_us_per_req']:.1f} µs",
        f"- tollgate peak RSS under load: {results['tg_peak_rss_kib_load'] / 1024:.1f} MiB",
    ]
    if "store" in names:
        lines.append(f"- store contender: CPU time per proxied request {results['st_cpu_us_per_req']:.1f} µs; "
                     f"redis commands per request during its runs {results['st_redis_commands_per_req']:.4f} "
                     "(warm sessions: only the background ones)")
    for left_out in ("apache-oidc", "store", "forward-auth"):
        if left_out not in names:
            lines.append(f"- {left_out} left out of this run (--without {left_out})")
    n = args.idle
    lines += [
        "",
        "### Idle keep-alive connections",
        "",
        f"RSS before and after {n} connections that each made one request and then sat idle "
        "(tollgate `/healthz`, the others `/api/items`), after the load above; nginx: the sum of its workers.",
        "",
        f"| {n} idle connections | RSS before MiB | RSS after MiB | KiB per connection |",
        "|---|---|---|---|",
    ]
    for name, (before, after, fds) in results["idle"].items():
        label = {"bare-pingora": "bare Pingora (64 KiB read buffer)", "nginx": f"nginx ({THREADS} workers)"}.get(name, name)
        lines.append(f"| {label} | {before / 1024:.1f} | {after / 1024:.1f} | {(after - before) / n:.1f} |")
    lines += ["", f"- tollgate's peak RSS with them: {results['tg_idle_hwm'] / 1024:.1f} MiB",
              "- nginx allocates its connection table (worker_connections, 16384 per worker) at start, so that part "
              "of its cost is in the \"before\" figure; the kernel's socket buffers are in no process's RSS"]
    lps, cb_ms, own_ms, own_n, own_share = results["login"]
    lines += [
        "",
        "### Cold logins",
        "",
        f"- login throughput (sequential full /login → provider → /callback round trips): {lps:.1f} logins/s",
        f"- callback: median {cb_ms:.2f} ms, of which tollgate's own work (callback minus the token request to the "
        f"provider) median {own_ms:.2f} ms, {own_share * 100:.0f} % of the callback (median of the per-login shares; "
        f"{own_n} logins)",
    ]
    if "cold" in results:
        cd, cb = results["cold"], results["cookie_bytes"]
        active = (f"{cd['active_before']:.0f} → {cd['active_after']:.0f}"
                  if cd["active_before"] is not None and cd["active_after"] is not None else "not reported")
        lines += [
            "",
            "### Server-side sessions: cold and warm requests",
            "",
            f"Cookie header value: tollgate (session in the cookie) {cb['tollgate']} bytes, store (a sealed handle) "
            f"{cb['store']} bytes. {cd['sessions']} sessions logged in through the store contender, then sent to a "
            "second tollgate with the same config, keys and redis, started after those logins (so none of them is "
            "in its memory). On one keep-alive connection, warmed up first with a session of its own: each "
            "session's first request there (cold: the session is read from redis) and then its second (warm: "
            "from memory). Client-side latency of `GET /api/items`, Python http.client.",
            "",
            "| request | p50 ms | p99 ms |",
            "|---|---|---|",
            f"| cold (first at this replica) | {cd['cold_p50'] * 1000:.2f} | {cd['cold_p99'] * 1000:.2f} |",
            f"| warm (second) | {cd['warm_p50'] * 1000:.2f} | {cd['warm_p99'] * 1000:.2f} |",
            "",
            f"- cold minus warm, median of the per-session differences: {cd['extra_p50'] * 1000:.2f} ms",
            f"- redis commands per session (its cold and warm request, background included): "
            f"{cd['redis_commands_per_session']:.1f}; the second instance's `tollgate_sessions_active`: {active}",
        ]
        if cd["sessions"] < 100:
            lines.append(f"- with {cd['sessions']} sessions, p99 is the slowest one")
    st = results["storm"]
    lines += [
        "",
        "### Refresh storm",
        "",
        f"{st['sessions']} sessions logged in through a second tollgate ({st['login_s']:.1f} s, "
        f"{st['sessions'] / st['login_s']:.0f} logins/s, {LOGIN_WORKERS} at a time), whose `refresh_skew` "
        f"({DUE_AFTER} s against its own provider's {STORM_TTL} s access tokens) makes every token due "
        f"{DUE_AFTER} s after its issue; {st['waited']:.1f} s after the last login, each session's {st['per']} requests "
        f"(`GET /api/items` with its cookie) written at once on {st['per']} keep-alive connections, "
        f"{st['window']} sessions in flight ({st['per'] * st['window']} connections), the next session as soon as one "
        "has all its answers. One client thread (epoll) on the same cores.",
        "",
        "| sessions × requests | wall s | refreshes at the provider | refreshes/s | p50 ms | p99 ms | max ms "
        "| burst of a session p99 ms | non-200 | socket errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {st['sessions']} × {st['per']} | {st['wall']:.2f} | {st['refreshes']} | {st['refreshes'] / st['wall']:.0f} "
        f"| {st['p50'] * 1000:.1f} | {st['p99'] * 1000:.1f} | {st['max'] * 1000:.1f} | {st['burst_p99'] * 1000:.1f} "
        f"| {st['non200']} | {sum(st['errors'].values())} |",
        "",
        f"- exactly one refresh per session: **{'yes' if st['exact'] else 'NO'}** ({st['refreshes']} refresh_token "
        f"grants at the provider for {st['sessions']} sessions, {st['refresh_failures']} refused; {st['renewed']} of "
        f"{st['sessions']} sessions got a new cookie with all {st['per']} answers)",
        f"- CPU: tollgate {st['cpu_tg'] / st['sessions'] * 1000:.2f} ms per session ({st['per']} requests, its refresh "
        f"and {st['per']} re-sealed cookies), the provider {st['cpu_idp'] / max(1, st['refreshes']) * 1000:.2f} ms per refresh",
    ]
    if st["non200"] or st["errors"]:
        lines.append(f"- storm answers by status: {st['statuses']}; socket errors: {st['errors']}")
    if failed:
        lines.append(f"- FAILED: {', '.join(failed)}")
    block = "\n".join(lines) + "\n"
    print(block)
    write_results(args.results, block)
    log(f"written {args.results}")


if __name__ == "__main__":
    WORK = tempfile.mkdtemp(prefix="tollgate-load-")
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
