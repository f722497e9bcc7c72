#!/usr/bin/env bash
# The local demo: a real OpenID Provider, an echo API, a static SPA and tollgate in front of
# them, all on 127.0.0.1. Needs the Rust toolchain, Node.js (>= 18) and npm; cmake for the
# first build of Pingora (on Debian: apt-get install cmake). Ctrl-C stops everything.
#
#   ./deploy/demo/run.sh           then open http://127.0.0.1:8080/ (user test-user, any password)
#   ./deploy/demo/run.sh --replicas 3
#                                  the same URL, served by 3 tollgate replicas that share a
#                                  redis-server ([store]), behind a round-robin balancer
#   ./deploy/demo/run.sh --store-sessions [--replicas N]
#                                  server-side sessions ([session] storage = "store"): the
#                                  cookie holds a small handle; the session is in this process
#                                  (one tollgate) or in the replicas' redis-server
#   ./deploy/demo/run.sh --providers [--replicas N]
#                                  two identity providers: the demo provider (default) and a
#                                  second one on 9091 ([providers.partner]); /login shows the
#                                  chooser page ([server] provider_chooser = true)
#
# Ports (fixed by conf/tollgate.toml, which this demo uses unchanged): tollgate 8080, metrics
# 9100, provider 9090, echo API 9000, SPA 9001.
#
# --replicas N (1 to 9) also needs redis-server (Debian: apt-get install redis-server). Then
# 8080 is the balancer (deploy/demo/balancer.js: each request to the next replica), replica i
# listens on 808i with its metrics on 910i, and redis-server runs on 6380 (no persistence).
# Every replica runs the same config: conf/tollgate.toml plus a [store] section, written to a
# temporary directory; only the listen ports differ, set with TOLLGATE__SERVER__LISTEN and
# TOLLGATE__METRICS__LISTEN. The provider's access tokens last 60 s instead of an hour, so
# refreshes (one per refresh token across the replicas) happen while you watch.
# deploy/demo/check_sharing.sh then walks it with curl: login, API calls answered by several
# replicas, logout, the old cookie refused by every replica.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[demo]\033[0m %s\n' "$*" >&2; exit 1; }

# Empty: one tollgate, as always. Otherwise how many replicas to run behind the balancer.
replicas=""
providers=""
while [ "$#" -gt 0 ]; do
  case "$1" in
    --replicas) [ "$#" -ge 2 ] || die "--replicas needs a number from 1 to 9"; replicas="$2"; shift 2 ;;
    --replicas=*) replicas="${1#--replicas=}"; shift ;;
    --store-sessions) export TOLLGATE__SESSION__STORAGE=store; shift ;;
    --providers) providers=1; export TOLLGATE__SERVER__PROVIDER_CHOOSER=true; shift ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument $1 (usage: $0 [--replicas N] [--store-sessions] [--providers])" ;;
  esac
done
if [ -n "$replicas" ]; then
  [[ "$replicas" =~ ^[1-9]$ ]] || die "--replicas takes a number from 1 to 9, not '$replicas'"
fi
redis_port=6380

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
command -v node >/dev/null || die "node not found: install Node.js >= 18 (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js >= 18 needed, found $(node --version)"
command -v cmake >/dev/null || die "cmake not found: Pingora's build needs it (Debian: apt-get install cmake)"
if [ -n "$replicas" ]; then
  command -v redis-server >/dev/null ||
    die "redis-server not found: --replicas needs it for the shared store (Debian: apt-get install redis-server)"
fi

ports=(8080 9100 9090 9000 9001)
if [ -n "$replicas" ]; then
  ports=(8080 9090 9000 9001 "$redis_port")
  for i in $(seq 1 "$replicas"); do ports+=("808$i" "910$i"); done
fi
if [ -n "$providers" ]; then ports+=(9091); fi
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port on 127.0.0.1 is already in use; stop what listens there and try again"
  fi
done

if [ ! -d tests/idp/node_modules/oidc-provider ]; then
  say "installing the test OpenID Provider (npm ci in tests/idp)"
  npm ci --prefix tests/idp --no-audit --no-fund --loglevel=error
fi

say "building tollgate (release; the first build takes a few minutes)"
cargo build --release --locked --quiet
# Where cargo put it (CARGO_TARGET_DIR moves it).
tollgate_bin="${CARGO_TARGET_DIR:-target}/release/tollgate"

pids=()
tmp=""
cleanup() {
  trap - INT TERM EXIT
  if [ "${#pids[@]}" -gt 0 ]; then
    say "stopping (pids ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (bounded by the clock, 90 s: a busy 2-core machine once needed more than 30 s for
# the provider's first answer) until URL answers 200; fails if PID has exited. Each probe
# gives up after 2 s, so a listener that accepts and never answers cannot stall the wait.
wait_for() {
  local url="$1" pid="$2" name="$3" deadline=$((SECONDS + 90))
  while [ "$SECONDS" -lt "$deadline" ]; do
    kill -0 "$pid" 2>/dev/null || die "$name exited; see its output above"
    if node -e "fetch(process.argv[1],{signal:AbortSignal.timeout(2000)}).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))" "$url"; then
      return 0
    fi
    sleep 0.2
  done
  die "$name did not answer $url within 90 s (load: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null))"
}

# The config: conf/tollgate.toml, and with --providers a second provider after it.
config_base=conf/tollgate.toml
if [ -n "$providers" ]; then
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-demo.XXXXXX")"
  config_base="$tmp/providers.toml"
  {
    cat conf/tollgate.toml
    printf '\n# Added by deploy/demo/run.sh --providers: a second provider (the same test provider\n'
    printf '# program on another port), chosen at /login.\n'
    printf '[providers.partner]\nissuer = "http://127.0.0.1:9091/as"\nclient_id = "tollgate-demo"\n'
    printf 'client_secret = "demo-secret-change-me"\nscopes = ["openid", "profile", "email", "offline_access"]\n'
  } >"$config_base"
fi

# --replicas N: redis-server, N tollgate replicas with the same config plus [store], the
# balancer on 8080 in front of them, and the summary.
run_replicas() {
  tmp="${tmp:-$(mktemp -d "${TMPDIR:-/tmp}/tollgate-demo.XXXXXX")}"
  local config="$tmp/tollgate.toml"
  {
    cat "$config_base"
    printf '\n# Added by deploy/demo/run.sh --replicas: every replica shares this store.\n'
    printf '[store]\nurl = "redis://127.0.0.1:%s/0"\nkey_prefix = "tollgate-demo:"\ntimeout = "500ms"\n' "$redis_port"
  } >"$config"

  say "starting redis-server on 127.0.0.1:$redis_port (the shared store; log: $tmp/redis.log)"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$tmp" --logfile "$tmp/redis.log" &
  pids+=($!)
  local redis_pid=$! ok=""
  for _ in $(seq 1 100); do
    if ! kill -0 "$redis_pid" 2>/dev/null; then
      tail -n 20 "$tmp/redis.log" >&2 || true
      die "redis-server exited; its log is above"
    fi
    # PING with bash alone (redis-cli is another package).
    if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port" && printf 'PING\r\n' >&3 &&
      IFS= read -r -t 1 line <&3 && [ "$line" = $'+PONG\r' ]) 2>/dev/null; then
      ok=1
      break
    fi
    sleep 0.1
  done
  [ -n "$ok" ] || die "redis-server did not answer PING on 127.0.0.1:$redis_port within 10 s"

  local i upstreams="" replica_pids=()
  for i in $(seq 1 "$replicas"); do
    say "starting tollgate replica $i on http://127.0.0.1:808$i (metrics 127.0.0.1:910$i)"
    TOLLGATE_LOG="${TOLLGATE_LOG:-info}" TOLLGATE__SERVER__LISTEN="[\"127.0.0.1:808$i\"]" \
      TOLLGATE__METRICS__LISTEN="127.0.0.1:910$i" "$tollgate_bin" --config "$config" &
    pids+=($!)
    replica_pids+=($!)
    upstreams="${upstreams:+$upstreams,}127.0.0.1:808$i"
  done
  for i in $(seq 1 "$replicas"); do
    wait_for "http://127.0.0.1:808$i/readyz" "${replica_pids[$((i - 1))]}" "tollgate replica $i"
  done

  say "starting the round-robin balancer on http://127.0.0.1:8080 (deploy/demo/balancer.js)"
  BALANCER_PORT=8080 REPLICAS="$upstreams" node deploy/demo/balancer.js &
  pids+=($!)
  wait_for http://127.0.0.1:8080/readyz "$!" "the balancer"

  local list="" metrics="" replica_word=replicas
  for i in $(seq 1 "$replicas"); do
    list+="$(printf '\n    Replica %s http://127.0.0.1:808%s   metrics http://127.0.0.1:910%s/metrics' "$i" "$i" "$i")"
    metrics+=" 910$i"
  done
  [ "$replicas" -gt 1 ] || replica_word=replica
  cat <<EOF

  tollgate demo is running: $replicas $replica_word sharing redis-server, behind a round-robin balancer.

    Open      http://127.0.0.1:8080/   (the balancer: each request goes to the next replica)
    Log in    as test-user (any password)$list
    Config    $config
              (conf/tollgate.toml + [store]), the same for every replica; their ports are
              set by TOLLGATE__SERVER__LISTEN and TOLLGATE__METRICS__LISTEN
    Store     redis-server on 127.0.0.1:$redis_port (keys tollgate-demo:*)${TOLLGATE__SESSION__STORAGE:+
    Sessions  in redis-server too ([session] storage = \"store\", --store-sessions): the
              cookie is a small sealed handle, any replica reads the session}

  See the sharing:
    - the [balancer] lines name the replica that answered each request; per replica:
        for p in$metrics; do curl -s http://127.0.0.1:\$p/metrics | grep 'tollgate_requests_total{route="/api"'; done
    - a logout on one replica holds on all: ./deploy/demo/check_sharing.sh logs in with curl,
      calls the API through the balancer, logs out, then sends the old cookie to each replica
      directly: 401 from every one.
    - one refresh per refresh token: access tokens last 60 s here, so a call 30 s after login
      refreshes. ./deploy/demo/check_sharing.sh --refresh sends that call to every replica at
      once; the refresh outcomes show won on one replica, waited or reused on the others:
        for p in$metrics; do curl -s http://127.0.0.1:\$p/metrics | grep tollgate_refresh_total; done

  Ctrl-C stops everything (redis-server too).

EOF
}

# With replicas, access tokens that expire within a minute make refreshes happen (default 3600 s).
idp_env=()
if [ -n "$replicas" ]; then idp_env=(ACCESS_TOKEN_TTL=60); fi

say "starting the OpenID Provider on http://127.0.0.1:9090/as (interactive login)"
IDP_PORT=9090 IDP_ISSUER_PATH=/as IDP_INTERACTIVE=1 \
  REDIRECT_URIS=http://127.0.0.1:8080/callback POST_LOGOUT_REDIRECT_URIS=http://127.0.0.1:8080/ \
  env "${idp_env[@]}" node tests/idp/server.js &
pids+=($!)
wait_for http://127.0.0.1:9090/as/.well-known/openid-configuration "$!" "the provider"
if [ -n "$providers" ]; then
  say "starting the second OpenID Provider on http://127.0.0.1:9091/as ([providers.partner])"
  IDP_PORT=9091 IDP_ISSUER_PATH=/as IDP_INTERACTIVE=1 \
    REDIRECT_URIS=http://127.0.0.1:8080/callback/partner POST_LOGOUT_REDIRECT_URIS=http://127.0.0.1:8080/ \
    env "${idp_env[@]}" node tests/idp/server.js &
  pids+=($!)
  wait_for http://127.0.0.1:9091/as/.well-known/openid-configuration "$!" "the second provider"
fi

say "starting the echo API (9000) and the SPA (9001)"
API_PORT=9000 SPA_PORT=9001 USERINFO_URL=http://127.0.0.1:9090/as/userinfo node deploy/demo/apps.js &
pids+=($!)
wait_for http://127.0.0.1:9001/ "$!" "the demo apps"

if [ -n "$replicas" ]; then
  run_replicas
else
  say "starting tollgate on http://127.0.0.1:8080 (config: $config_base)"
  TOLLGATE_LOG="${TOLLGATE_LOG:-info}" "$tollgate_bin" --config "$config_base" &
  pids+=($!)
  wait_for http://127.0.0.1:8080/readyz "$!" "tollgate"

  cat <<EOF

  tollgate demo is running.

    Open      http://127.0.0.1:8080/
    Log in    as test-user (any password)
    Metrics   http://127.0.0.1:9100/metrics${TOLLGATE__SESSION__STORAGE:+
    Sessions  in this process ([session] storage = \"store\", --store-sessions): the cookie is
              a small sealed handle; a restart logs you out}${providers:+
    Providers default (http://127.0.0.1:9090/as) and partner (http://127.0.0.1:9091/as):
              /login shows the chooser; /session names the one you chose}

  Ctrl-C stops everything.

EOF
fi
# Stay up until Ctrl-C or until one of the processes exits.
wait -n "${pids[@]}" || true
say "a demo process exited; stopping the rest"
