#!/usr/bin/env bash
# The local demo: a real OpenID Provider, an echo API, a static SPA and tollgate in front of
# them, all on 127.0.0.1. Needs the Rust toolchain, Node.js (>= 18) and npm; cmake for the
# first build of Pingora (on Debian: apt-get install cmake). Ctrl-C stops everything.
#
#   ./deploy/demo/run.sh           then open http://127.0.0.1:8080/ (user test-user, any password)
#
# Ports (fixed by conf/tollgate.toml, which this demo uses unchanged): tollgate 8080, metrics
# 9100, provider 9090, echo API 9000, SPA 9001.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[demo]\033[0m %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
command -v node >/dev/null || die "node not found: install Node.js >= 18 (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null || die "npm not found (Debian: apt-get install npm)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "Node.js >= 18 needed, found $(node --version)"
command -v cmake >/dev/null || die "cmake not found: Pingora's build needs it (Debian: apt-get install cmake)"

for port in 8080 9100 9090 9000 9001; do
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
cleanup() {
  trap - INT TERM EXIT
  if [ "${#pids[@]}" -gt 0 ]; then
    say "stopping (pids ${pids[*]})"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits (bounded) until URL answers 200; fails if PID has exited.
wait_for() {
  local url="$1" pid="$2" name="$3"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || die "$name exited; see its output above"
    if node -e "fetch(process.argv[1]).then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))" "$url"; then
      return 0
    fi
    sleep 0.2
  done
  die "$name did not answer $url within 30 s"
}

say "starting the OpenID Provider on http://127.0.0.1:9090/as (interactive login)"
IDP_PORT=9090 IDP_ISSUER_PATH=/as IDP_INTERACTIVE=1 \
  REDIRECT_URIS=http://127.0.0.1:8080/callback POST_LOGOUT_REDIRECT_URIS=http://127.0.0.1:8080/ \
  node tests/idp/server.js &
pids+=($!)
wait_for http://127.0.0.1:9090/as/.well-known/openid-configuration "$!" "the provider"

say "starting the echo API (9000) and the SPA (9001)"
API_PORT=9000 SPA_PORT=9001 USERINFO_URL=http://127.0.0.1:9090/as/userinfo node deploy/demo/apps.js &
pids+=($!)
wait_for http://127.0.0.1:9001/ "$!" "the demo apps"

say "starting tollgate on http://127.0.0.1:8080 (config: conf/tollgate.toml)"
TOLLGATE_LOG="${TOLLGATE_LOG:-info}" "$tollgate_bin" --config conf/tollgate.toml &
pids+=($!)
wait_for http://127.0.0.1:8080/readyz "$!" "tollgate"

cat <<EOF

  tollgate demo is running.

    Open      http://127.0.0.1:8080/
    Log in    as test-user (any password)
    Metrics   http://127.0.0.1:9100/metrics

  Ctrl-C stops everything.

EOF
# Stay up until Ctrl-C or until one of the processes exits.
wait -n "${pids[@]}" || true
say "a demo process exited; stopping the rest"
