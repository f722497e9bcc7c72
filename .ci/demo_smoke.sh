#!/usr/bin/env bash
# Runs the README's first command (./deploy/demo/run.sh) as a person would, walks it with the
# browser test (tests/e2e/browser.mjs: login at the provider's form, API call, logout), then
# presses Ctrl-C and checks that everything the demo started has stopped.
# Then the same for ./deploy/demo/run.sh --replicas 3, walked with deploy/demo/check_sharing.sh
# (curl: login through the balancer, API calls answered by more than one replica, logout, the
# old cookie refused by every replica); a few seconds more. And once more with server-side
# sessions (--store-sessions --replicas 3): the session in redis, any replica reads it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p target

demo=""
log=""
fail() {
  echo "demo smoke: $*" >&2
  echo "---- demo output ($log) ----" >&2
  tail -n 60 "$log" >&2 || true
  if [ -n "$demo" ]; then kill -KILL -- "-$demo" 2>/dev/null || true; fi
  exit 1
}

# The walks: the browser test on the plain demo, curl on the replicas.
walk_browser() {
  BASE_URL=http://127.0.0.1:8080 SCREENSHOT_DIR=target/e2e-demo node tests/e2e/browser.mjs ||
    fail "the browser walk through the demo failed (screenshots in target/e2e-demo)"
}
walk_replicas() {
  ./deploy/demo/check_sharing.sh || fail "the curl walk through the replicas failed"
}

# smoke LOG WALK [ARGS...]: starts ./deploy/demo/run.sh ARGS, runs WALK, presses Ctrl-C.
smoke() {
  log="$1"
  local walk="$2" name
  shift 2
  name="./deploy/demo/run.sh${*:+ $*}"
  # A process group of its own, so "Ctrl-C" reaches the script and everything it started.
  setsid ./deploy/demo/run.sh "$@" >"$log" 2>&1 &
  demo=$!

  # The release binary is already built by .ci/run; allow time for a build anyway.
  for _ in $(seq 1 600); do
    grep -q "tollgate demo is running" "$log" && break
    kill -0 "$demo" 2>/dev/null || fail "$name: the demo exited before it was ready"
    sleep 1
  done
  grep -q "tollgate demo is running" "$log" || fail "$name: not ready within 10 minutes"

  local children
  children=$(pgrep -g "$demo" | grep -v "^$demo\$" | tr '\n' ' ')
  echo "demo smoke: $name is up (processes: $children)"

  "$walk"

  # Ctrl-C.
  kill -INT -- "-$demo"
  for _ in $(seq 1 30); do
    kill -0 "$demo" 2>/dev/null || break
    sleep 1
  done
  kill -0 "$demo" 2>/dev/null && fail "$name: the demo did not stop within 30 s of Ctrl-C"
  for pid in $children; do
    if kill -0 "$pid" 2>/dev/null; then
      fail "$name: process $pid ($(ps -o comm= -p "$pid")) survived Ctrl-C"
    fi
  done
  demo=""
  echo "demo smoke: $name passed; Ctrl-C stopped every process"
}

smoke target/demo-smoke.log walk_browser
smoke target/demo-smoke-replicas.log walk_replicas --replicas 3
smoke target/demo-smoke-store.log walk_replicas --store-sessions --replicas 3
