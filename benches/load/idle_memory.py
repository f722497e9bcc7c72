#!/usr/bin/env python3
"""KiB per idle keep-alive connection: tollgate vs bare Pingora (RSS before/after N connections).

Usage: python3 benches/load/idle_memory.py [N]  (after cargo build --release --bin tollgate --example bare_pingora;
needs nginx; loopback only; raise ulimit -n above N)
"""
import os, socket, subprocess, sys, time, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as R
R.WORK = tempfile.mkdtemp()
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
def conns(port, n):
    socks=[]; req=f"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for i in range(n):
        s=socket.create_connection(("127.0.0.1",port)); s.sendall(req); s.recv(4096); socks.append(s)
    return socks
results = {}
# tollgate with room for N connections (its default max_connections is 4096)
conf = open(R.tollgate_conf()).read().replace("threads = 2", f"threads = 2\nmax_connections = {n + 1000}")
open(os.path.join(R.WORK, "tg.toml"), "w").write(conf)
R.start("upstream", ["nginx", "-p", R.WORK, "-c", R.nginx_conf("upstream", R.PORTS["upstream"], f"""
  server {{ listen {R.HOST}:{R.PORTS['upstream']};
    location / {{ return 200 'ok'; }} }}"""), "-g", "daemon off;"])
R.start("tollgate", [os.path.join(R.ROOT, "target", "release") + "/tollgate", "--config", os.path.join(R.WORK,"tg.toml")], env={**os.environ, "TOLLGATE_LOG":"warn"})
R.start("bare", [os.path.join(R.ROOT, "target", "release") + "/examples/bare_pingora", f"127.0.0.1:{R.PORTS['bare-pingora']}", f"127.0.0.1:{R.PORTS['upstream']}", "2"])
R.wait_http("tollgate", f"http://127.0.0.1:{R.PORTS['tollgate']}/healthz")
R.wait_http("bare", f"http://127.0.0.1:{R.PORTS['bare-pingora']}/", expect=(200,404,502))
try:
    for name, port in [("tollgate", R.PORTS["tollgate"]), ("bare", R.PORTS["bare-pingora"])]:
        pid = R.procs[name].pid
        conns(port, 200)  # warm
        time.sleep(0.5)
        before = rss(pid)
        socks = conns(port, n); time.sleep(1)
        after = rss(pid)
        print(f"{name}: RSS {before} -> {after} KiB with {n} idle keep-alive connections: {(after-before)/n:.1f} KiB each", flush=True)
        for s in socks: s.close()
finally:
    R.stop_all()
