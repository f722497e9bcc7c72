#!/usr/bin/env python3
"""WebSocket tunnels lost through tollgate (issue 28; cloudflare/pingora#946).

An upstream that answers every handshake at once (`examples/ws_load.rs upstream`: the `101`
and a first message before it reads the request) sits behind tollgate's `/ws` route, which
needs a session (a real login at the test provider). `ws_load client` makes --total upgrades,
--concurrency at a time, each reading the `101` and the first message, then an echo of its
own. Meanwhile a second load runs on the same cores: wrk against the session's `/api` route
(nginx upstream). The target is 0 lost after the `101`; the JSON says how many were lost,
refused or failed, and the wrk figures show the second load ran.

Needs nginx, wrk and the test provider (`npm ci` in tests/idp). Loopback only.

Usage: python3 benches/load/websocket.py [--total 100000] [--concurrency 32] [--prebuilt DIR]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R  # noqa: E402  (the load benchmark's process helpers and config)

WS_PORT = 18089


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--wrk-connections", type=int, default=64, help="the second load's connections")
    ap.add_argument("--prebuilt", help="a directory with tollgate and ws_load built (release)")
    args = ap.parse_args()
    if args.prebuilt:
        bins = args.prebuilt
    else:
        R.log("building tollgate and examples/ws_load (release)")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "tollgate", "--example", "ws_load"],
                       cwd=R.ROOT, check=True)
        bins = os.path.join(R.ROOT, "target", "release")
    tollgate_bin = os.path.join(bins, "tollgate")
    ws_bin = os.path.join(bins, "ws_load") if args.prebuilt else os.path.join(bins, "examples", "ws_load")
    idp_dir = os.path.join(R.ROOT, "tests", "idp")
    try:
        R.start("upstream", ["nginx", "-p", R.WORK, "-c", R.nginx_conf("upstream", R.PORTS["upstream"], f"""
  server {{ listen {R.HOST}:{R.PORTS['upstream']};
    location / {{ default_type application/json; return 200 '{{"ok":true,"from":"upstream"}}'; }} }}"""),
                             "-g", "daemon off;"])
        R.start("ws-upstream", [ws_bin, "upstream", f"{R.HOST}:{WS_PORT}"])
        R.start("idp", ["node", os.path.join(idp_dir, "server.js")], env={**os.environ,
                "IDP_PORT": str(R.PORTS["idp"]),
                "REDIRECT_URIS": f"http://{R.HOST}:{R.PORTS['tollgate']}/callback"})
        R.wait_http("upstream", f"http://{R.HOST}:{R.PORTS['upstream']}/")
        R.wait_http("idp", f"{R.ISSUER}/.well-known/openid-configuration")
        conf = open(R.tollgate_conf()).read()
        ws_route = f'[[routes]]\nprefix = "/ws"\nupstream = "http://{R.HOST}:{WS_PORT}"\n'
        assert '[[routes]]\nprefix = "/api"' in conf
        conf = conf.replace('[[routes]]\nprefix = "/api"', ws_route + '[[routes]]\nprefix = "/api"', 1)
        path = R.write(os.path.join(R.WORK, "tollgate-ws.toml"), conf)
        R.start("tollgate", [tollgate_bin, "--config", path], env={**os.environ, "TOLLGATE_LOG": "warn"})
        R.wait_http("tollgate", f"http://{R.HOST}:{R.PORTS['tollgate']}/readyz")
        cookie = R.login(f"http://{R.HOST}:{R.PORTS['tollgate']}/login?return_to=/landing", "tollgate")
        seconds = 600
        wrk = subprocess.Popen(
            ["wrk", "-t", "1", "-c", str(args.wrk_connections), "-d", f"{seconds}s", "--latency",
             "-s", R.WRK_LUA, "-H", f"Cookie: {cookie}", "-H", "x-csrf: 1",
             f"http://{R.HOST}:{R.PORTS['tollgate']}/api/data"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1)  # the second load is under way before the first upgrade
        R.log(f"{args.total} upgrades, {args.concurrency} at a time, with wrk -c {args.wrk_connections} "
              "on /api at the same time")
        out = subprocess.run([ws_bin, "client", f"{R.HOST}:{R.PORTS['tollgate']}", "/ws/chat",
                              str(args.total), str(args.concurrency), cookie],
                             capture_output=True, text=True, timeout=3600)
        wrk.send_signal(signal.SIGINT)  # wrk stops and reports on SIGINT
        wrk_out, _ = wrk.communicate(timeout=30)
        if out.returncode != 0:
            raise SystemExit(f"ws_load failed: {out.stderr}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        second = [line for line in wrk_out.splitlines() if line.startswith("{")]
        result["second_load"] = json.loads(second[-1]) if second else "wrk printed no report"
        print(json.dumps(result, indent=2))
        lost = result["lost_after_101"] + result["refused"] + result["failed"]
        R.log(f"{result['ok']} of {result['total']} tunnels carried their messages; {lost} did not")
        return 0 if lost == 0 else 1
    finally:
        R.stop_all()


if __name__ == "__main__":
    R.WORK = tempfile.mkdtemp(prefix="tollgate-ws-")
    sys.exit(main())
