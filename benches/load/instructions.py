#!/usr/bin/env python3
"""Instructions and allocations per proxied request: tollgate vs bare Pingora, under callgrind.

Wall-clock load figures on a shared VM drift by ±20 % between rounds; instruction counts do
not. This runs each proxy under `valgrind --tool=callgrind` in front of the same nginx
upstream, sends the same keep-alive request N times (tollgate with a session from a real
login at the test provider, bare Pingora with the same headers), and counts, for those N
requests only (counters zeroed after a warm-up): instructions, heap allocations, and, for
tollgate, the inclusive cost of its own hooks. tollgate is measured three times: alone, with
`[store]` on a local redis-server (the shared-store issue's budget: at most 3 % more, since
the revocation check never leaves the process), and with server-side sessions on that redis
(`[session] storage = "store"`: the cookie a sealed handle, the session warm in this process's
memory after the login, so no store round trip per request), for the store/cookie ratio; the
runs with redis are skipped when redis-server is not installed. With `--variants`, three times
more: with the API route's upstream as a pool (a one-member list with an active health check,
so each request goes through the load balancer's selection), and with traces on, exported over
OTLP/HTTP to the nginx upstream (which answers the exporter's POSTs with 200), every request
sampled, then one in ten. With `--dbsc`, device binding (`device_binding = "dbsc"`): a
request of a bound session (the bound cookie checked) against one of an unbound session, in the
same configuration (the device-binding issue's budget: at most 3 % more), and what a bound
cookie's refresh costs (the challenge and the signed answer, with a software P-256 key; needs
python3-cryptography). Needs valgrind, nginx and the test provider (`npm ci` in tests/idp).
Loopback only.

Usage: python3 benches/load/instructions.py [--requests 2000] [--allocator mimalloc|jemalloc|system] [--variants] [--dbsc]
       [--no-store]
"""

import argparse
import base64
import collections
import http.client
import json
import os
import shutil
import signal
import urllib.parse
import urllib.request
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the load benchmark's process helpers and config)


def dbsc_conf():
    """tollgate's config with device binding: public_url on https://localhost (DBSC needs
    https; the login's callback is followed to the plain listener by `dbsc_session`), a fresh
    key (the published one is refused with https), bound cookies valid for an hour."""
    text = open(R.tollgate_conf()).read()
    plain = f'public_url = "http://{R.HOST}:{R.PORTS["tollgate"]}"'
    assert plain in text, "public_url line"
    text = text.replace(plain, f'public_url = "https://localhost:{R.PORTS["tollgate"]}"')
    assert f'keys = ["{R.KEY}"]' in text
    text = text.replace(f'keys = ["{R.KEY}"]', f'keys = ["{base64.b64encode(os.urandom(32)).decode()}"]\n'
                        'device_binding = "dbsc"\nbound_cookie_lifetime = "1h"')
    return R.write(os.path.join(R.WORK, "tollgate-dbsc.toml"), text)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Device:
    """A software P-256 key that answers DBSC challenges as Chromium does."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec
        self.key = ec.generate_private_key(ec.SECP256R1())

    def proof(self, jti):
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
        n = self.key.public_key().public_numbers()
        header = {"alg": "ES256", "typ": "dbsc+jwt",
                  "jwk": {"kty": "EC", "crv": "P-256", "x": b64url(n.x.to_bytes(32, "big")),
                          "y": b64url(n.y.to_bytes(32, "big"))}}
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps({'jti': jti}).encode())}"
        r, s = decode_dss_signature(self.key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signed}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def dbsc_session(bind, device=None):
    """Logs in at the dbsc tollgate, following redirects by hand (the callback at the https
    public_url is sent to the plain listener); with `bind`, registers `device`. The Cookie
    header of tollgate's cookies."""
    public = f"https://localhost:{R.PORTS['tollgate']}"
    plain = f"http://{R.HOST}:{R.PORTS['tollgate']}"
    jar, registration = {}, None
    url = f"{plain}/login?return_to=/landing"
    for _ in range(20):
        u = urllib.parse.urlsplit(url)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        c.request("GET", u.path + (f"?{u.query}" if u.query else ""),
                  headers={"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items()),
                           "Accept": "text/html"})
        r = c.getresponse()
        r.read()
        for line in r.headers.get_all("set-cookie") or []:
            name, value = line.split(";", 1)[0].split("=", 1)
            jar[name.strip()] = value
        registration = r.headers.get("secure-session-registration") or registration
        c.close()
        if r.status not in (301, 302, 303, 307, 308):
            break
        url = urllib.parse.urljoin(url, r.headers["location"]).replace(public, plain)
    if registration is None:
        raise SystemExit("dbsc: the login's answer offered no Secure-Session-Registration")
    cookies = lambda: "; ".join(f"{k}={v}" for k, v in jar.items() if k.startswith("__Host-tollgate"))
    if bind:
        challenge = registration.split('"')[3]
        c = http.client.HTTPConnection(R.HOST, R.PORTS["tollgate"], timeout=30)
        c.request("POST", "/dbsc/register", headers={"Cookie": cookies(),
                                                     "Secure-Session-Response": device.proof(challenge)})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"dbsc: registration answered {r.status}")
        for line in r.headers.get_all("set-cookie") or []:
            name, value = line.split(";", 1)[0].split("=", 1)
            jar[name.strip()] = value
        c.close()
        if "__Host-tollgate-bound" not in jar:
            raise SystemExit("dbsc: registration set no bound cookie")
    return cookies()


def drive_refresh(port, n, headers, device):
    """`n` bound-cookie refreshes: the challenge, then the device's signed answer."""
    c = http.client.HTTPConnection(R.HOST, port, timeout=120)
    for _ in range(n):
        c.request("POST", "/dbsc/refresh", headers={"Cookie": headers["Cookie"]})
        r = c.getresponse()
        r.read()
        challenge = r.headers.get("secure-session-challenge")
        if r.status != 403 or not challenge:
            raise SystemExit(f"dbsc refresh: {r.status} without a challenge")
        c.request("POST", "/dbsc/refresh", headers={"Cookie": headers["Cookie"],
                                                    "Secure-Session-Response": device.proof(challenge.split('"')[1])})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"dbsc refresh: the answer got {r.status}")
    c.close()


def drive(port, n, headers):
    c = http.client.HTTPConnection(R.HOST, port, timeout=120)
    for _ in range(n):
        c.request("GET", "/api/items", headers=headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"port {port} answered {r.status}")
    c.close()


def callgrind_control(pid, what):
    subprocess.run(["callgrind_control", what, str(pid)], check=True, capture_output=True)


def parse(path):
    """Self cost per function, calls per callee, inclusive cost per callee."""
    self_cost, calls, inclusive = collections.Counter(), collections.Counter(), collections.Counter()
    fn = cfn = None
    pending = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls="):
                calls[cfn] += int(line[6:].split()[0])
                pending = True
            elif line[:1] in "0123456789+-*":
                cost = int(line.split()[1])
                if pending:
                    pending = False
                    if fn != cfn:
                        inclusive[cfn] += cost
                else:
                    self_cost[fn] += cost
    return self_cost, calls, inclusive


ALLOC_ENTRIES = ("malloc", "mi_malloc_aligned", "_rjem_malloc", "_rjem_mallocx")


def measure(name, argv, port, ready_url, n, headers_for, env=None, driver=drive):
    out = os.path.join(R.WORK, f"callgrind.{name}.out")
    R.start(name, ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
                   f"--callgrind-out-file={out}"] + argv, env=env)
    R.wait_http(name, ready_url, timeout=180)
    headers = headers_for()
    driver(port, 200, headers)
    pid = R.procs[name].pid
    callgrind_control(pid, "--zero")
    driver(port, n, headers)
    callgrind_control(pid, "--dump")
    time.sleep(1)
    dumps = sorted(p for p in os.listdir(R.WORK) if p.startswith(f"callgrind.{name}.out."))
    self_cost, calls, inclusive = parse(os.path.join(R.WORK, dumps[-1]))
    return {
        "instructions": sum(self_cost.values()) / n,
        # The allocator's entry point for a new block: glibc's malloc (C code, and Rust built
        # without an allocator feature), mimalloc's and jemalloc's as the Rust global allocator.
        "allocations": sum(calls.get(f, 0) for f in ALLOC_ENTRIES) / n,
        "hooks": {f: c / n for f, c in inclusive.items()
                  if "<tollgate::proxy::Tollgate as" in f and f.endswith("::{{closure}}") and c / n >= 50},
    }


def stop(name):
    p = R.procs.pop(name)
    os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def wait_store_up(timeout=60):
    url = f"http://{R.HOST}:{R.PORTS['tollgate-metrics']}/metrics"
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if b"tollgate_store_up 1" in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("tollgate never connected to the store")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--allocator", choices=sorted(R.ALLOCATORS), default="mimalloc",
                    help="the global allocator of both builds (default: tollgate's, mimalloc)")
    ap.add_argument("--variants", action="store_true",
                    help="also measure a pool route and traces on, each against plain tollgate")
    ap.add_argument("--dbsc", action="store_true",
                    help="also measure device binding: a bound session against an unbound one, and a refresh")
    ap.add_argument("--no-store", action="store_true",
                    help="skip the runs with redis ([store], server-side sessions): tollgate and bare Pingora only")
    args = ap.parse_args()
    R.build(args.allocator)
    idp_dir = os.path.join(R.ROOT, "tests", "idp")
    try:
        R.start("upstream", ["nginx", "-p", R.WORK, "-c", R.nginx_conf("upstream", R.PORTS["upstream"], f"""
  server {{ listen {R.HOST}:{R.PORTS['upstream']};
    location / {{ default_type application/json; return 200 '{{"ok":true,"from":"upstream"}}'; }} }}"""), "-g", "daemon off;"])
        R.start("idp", ["node", os.path.join(idp_dir, "server.js")], env={**os.environ,
                "IDP_PORT": str(R.PORTS["idp"]),
                "REDIRECT_URIS": f"http://{R.HOST}:{R.PORTS['tollgate']}/callback,"
                                 f"https://localhost:{R.PORTS['tollgate']}/callback"})
        R.wait_http("upstream", f"http://{R.HOST}:{R.PORTS['upstream']}/")
        R.wait_http("idp", f"{R.ISSUER}/.well-known/openid-configuration")
        cookie = {}

        def tollgate_headers():
            cookie["v"] = R.login(f"http://{R.HOST}:{R.PORTS['tollgate']}/login?return_to=/landing", "tollgate")
            return {"Cookie": cookie["v"], "x-csrf": "1"}

        tollgate_bin = os.path.join(R.ROOT, "target", "release", "tollgate")
        ready = f"http://{R.HOST}:{R.PORTS['tollgate']}/readyz"
        quiet = {**os.environ, "TOLLGATE_LOG": "warn"}
        tg = measure("tollgate", [tollgate_bin, "--config", R.tollgate_conf()],
                     R.PORTS["tollgate"], ready, args.requests, tollgate_headers, env=quiet)
        stop("tollgate")
        ts = tss = None
        if shutil.which("redis-server") and not args.no_store:
            R.start("redis", ["redis-server", "--port", str(R.PORTS["redis"]), "--bind", R.HOST,
                              "--save", "", "--appendonly", "no"])

            def store_headers():
                wait_store_up()
                return tollgate_headers()

            ts = measure("tollgate-store",
                         [tollgate_bin, "--config", R.tollgate_conf(f"redis://{R.HOST}:{R.PORTS['redis']}/0")],
                         R.PORTS["tollgate"], ready, args.requests, store_headers, env=quiet)
            stop("tollgate-store")

            # Server-side sessions on the same redis. Its own cookie (a handle), kept apart from
            # cookie["v"]: bare Pingora below gets the cookie-mode session's Cookie header.
            def store_session_headers():
                wait_store_up()
                cookie["store"] = R.login(f"http://{R.HOST}:{R.PORTS['tollgate']}/login?return_to=/landing", "tollgate")
                if len(cookie["store"]) > 512:
                    raise SystemExit(f"store sessions: a {len(cookie['store'])}-byte Cookie header; a handle is "
                                     "~100 bytes (is [session] storage = \"store\" in effect?)")
                return {"Cookie": cookie["store"], "x-csrf": "1"}

            tss = measure("tollgate-store-sessions",
                          [tollgate_bin, "--config",
                           R.tollgate_conf(f"redis://{R.HOST}:{R.PORTS['redis']}/0", storage="store")],
                          R.PORTS["tollgate"], ready, args.requests, store_session_headers, env=quiet)
            stop("tollgate-store-sessions")
        else:
            R.log("no redis-server (or --no-store): the [store] and server-side session runs are skipped")
        variants = {}
        if args.variants:
            base = open(R.tollgate_conf()).read()
            api = f'upstream = "http://{R.HOST}:{R.PORTS["upstream"]}"'
            assert base.count(api) == 2, "the API route's upstream line"
            pool = base.replace(api, f'upstream = ["http://{R.HOST}:{R.PORTS["upstream"]}"]\n'
                                f'health_check_path = "/"', 1)
            otlp = f'\n[tracing]\notlp_endpoint = "http://{R.HOST}:{R.PORTS["upstream"]}"\n'
            for label, text in (("pool route", pool),
                                ("traces on", base + otlp + "sample_ratio = 1.0\n"),
                                ("traces on, 1 in 10 sampled", base + otlp + "sample_ratio = 0.1\n")):
                name = "tollgate-" + "-".join(label.replace(",", "").split()[:4])
                conf = R.write(os.path.join(R.WORK, f"{name}.toml"), text)
                variants[label] = measure(name, [tollgate_bin, "--config", conf], R.PORTS["tollgate"],
                                          ready, args.requests, tollgate_headers, env=quiet)
                stop(name)
        dbsc = {}
        if args.dbsc:
            conf = dbsc_conf()
            device = Device()
            dbsc["unbound"] = measure("tollgate-dbsc-unbound", [tollgate_bin, "--config", conf], R.PORTS["tollgate"],
                                      ready, args.requests, lambda: {"Cookie": dbsc_session(False), "x-csrf": "1"},
                                      env=quiet)
            stop("tollgate-dbsc-unbound")
            bound = {}

            def bound_headers():
                bound["v"] = {"Cookie": dbsc_session(True, device), "x-csrf": "1"}
                return bound["v"]

            dbsc["bound"] = measure("tollgate-dbsc-bound", [tollgate_bin, "--config", conf], R.PORTS["tollgate"],
                                    ready, args.requests, bound_headers, env=quiet)
            stop("tollgate-dbsc-bound")
            # A refresh is rare (once per bound_cookie_lifetime per browser): 200 of them.
            dbsc["refresh"] = measure("tollgate-dbsc-refresh", [tollgate_bin, "--config", conf], R.PORTS["tollgate"],
                                      ready, 200, bound_headers, env=quiet,
                                      driver=lambda port, n, h: drive_refresh(port, n, h, device))
            stop("tollgate-dbsc-refresh")
        # Bare Pingora as released is the baseline; with tollgate's patches, to show what they
        # change in the framework itself.
        bare = {}
        for name, binary in (("bare-pingora", R.BARE_RELEASED), ("bare-pingora-patched", R.BARE_PATCHED)):
            bare[name] = measure(name, [binary, f"{R.HOST}:{R.PORTS['bare-pingora']}",
                                        f"{R.HOST}:{R.PORTS['upstream']}", "2"],
                                 R.PORTS["bare-pingora"], f"http://{R.HOST}:{R.PORTS['bare-pingora']}/", args.requests,
                                 lambda: {"Cookie": cookie["v"], "x-csrf": "1"})
            stop(name)
        bp, bpp = bare["bare-pingora"], bare["bare-pingora-patched"]
    finally:
        R.stop_all()
    print(f"\n| per proxied request ({args.requests} keep-alive requests, callgrind) | tollgate | bare Pingora 0.9.1 "
          "| ratio | bare Pingora with tollgate's patches |")
    print("|---|---|---|---|---|")
    print(f"| instructions | {tg['instructions']:,.0f} | {bp['instructions']:,.0f} | {tg['instructions'] / bp['instructions']:.3f} "
          f"| {bpp['instructions']:,.0f} |")
    print(f"| heap allocations | {tg['allocations']:.1f} | {bp['allocations']:.1f} | {tg['allocations'] / bp['allocations']:.3f} "
          f"| {bpp['allocations']:.1f} |")
    if ts:
        print(f"\n| with [store] (redis-server on loopback) | tollgate + [store] | tollgate | ratio |")
        print("|---|---|---|---|")
        print(f"| instructions | {ts['instructions']:,.0f} | {tg['instructions']:,.0f} | {ts['instructions'] / tg['instructions']:.3f} |")
        print(f"| heap allocations | {ts['allocations']:.1f} | {tg['allocations']:.1f} | {ts['allocations'] / tg['allocations']:.3f} |")
    if tss:
        print(f"\n| server-side sessions (`[session] storage = \"store\"`, warm) | store | tollgate (cookie) | ratio |")
        print("|---|---|---|---|")
        print(f"| instructions | {tss['instructions']:,.0f} | {tg['instructions']:,.0f} | {tss['instructions'] / tg['instructions']:.3f} |")
        print(f"| heap allocations | {tss['allocations']:.1f} | {tg['allocations']:.1f} | {tss['allocations'] / tg['allocations']:.3f} |")
        print(f"| Cookie header bytes | {len(cookie['store'])} | {len(cookie['v'])} | {len(cookie['store']) / len(cookie['v']):.3f} |")
    if dbsc:
        u, b, r = dbsc["unbound"], dbsc["bound"], dbsc["refresh"]
        print(f"\n| device binding (`device_binding = \"dbsc\"`) | bound session | unbound session | ratio |")
        print("|---|---|---|---|")
        print(f"| instructions | {b['instructions']:,.0f} | {u['instructions']:,.0f} | {b['instructions'] / u['instructions']:.3f} |")
        print(f"| heap allocations | {b['allocations']:.1f} | {u['allocations']:.1f} | {b['allocations'] / u['allocations']:.3f} |")
        print(f"| unbound session vs tollgate without device binding (instructions) | | | {u['instructions'] / tg['instructions']:.3f} |")
        print(f"\na bound cookie's refresh (challenge + signed answer): {r['instructions']:,.0f} instructions, "
              f"{r['allocations']:.0f} allocations ({r['instructions'] / b['instructions']:.1f}x a proxied request)")
    for label, v in variants.items():
        print(f"\n| {label} | tollgate, {label} | tollgate | ratio |")
        print("|---|---|---|---|")
        print(f"| instructions | {v['instructions']:,.0f} | {tg['instructions']:,.0f} | {v['instructions'] / tg['instructions']:.3f} |")
        print(f"| heap allocations | {v['allocations']:.1f} | {tg['allocations']:.1f} | {v['allocations'] / tg['allocations']:.3f} |")
    print("\ntollgate's hooks (inclusive instructions per request):\n")
    for f, c in sorted(tg["hooks"].items(), key=lambda x: -x[1]):
        hook = f.split(">::", 1)[-1].replace("::{{closure}}", "")
        print(f"- {hook}: {c:,.0f}")
    if tss:
        print("\nwith server-side sessions (warm), the same hooks:\n")
        for f, c in sorted(tss["hooks"].items(), key=lambda x: -x[1]):
            hook = f.split(">::", 1)[-1].replace("::{{closure}}", "")
            print(f"- {hook}: {c:,.0f} (cookie: {tg['hooks'].get(f, 0):,.0f})")


if __name__ == "__main__":
    R.WORK = tempfile.mkdtemp(prefix="tollgate-instr-")
    try:
        main()
    except KeyboardInterrupt:
        R.stop_all()
        sys.exit(130)
