#!/usr/bin/env bash
# Runs the README's first command (./deploy/demo/run.sh) as a person would, walks it with the
# browser test (tests/e2e/browser.mjs: login at the provider's form, API call, logout), then
# presses Ctrl-C and checks that everything the demo started has stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

log=target/demo-smoke.log
mkdir -p target
# A process group of its own, so "Ctrl-C" reaches the script and everything it started.
setsid ./deploy/demo/run.sh >"$log" 2>&1 &
demo=$!

fail() {
  echo "demo smoke: $*" >&2
  echo "---- demo output ----" >&2
  tail -n 60 "$log" >&2 || true
  kill -KILL -- "-$demo" 2>/dev/null || true
  exit 1
}

# The release binary is already built by .ci/run; allow time for a build anyway.
for _ in $(seq 1 600); do
  grep -q "tollgate demo is running" "$log" && break
  kill -0 "$demo" 2>/dev/null || fail "the demo exited before it was ready"
  sleep 1
done
grep -q "tollgate demo is running" "$log" || fail "not ready within 10 minutes"

children=$(pgrep -g "$demo" | grep -v "^$demo\$" | tr '\n' ' ')
echo "demo smoke: demo is up (processes: $children)"

BASE_URL=http://127.0.0.1:8080 SCREENSHOT_DIR=target/e2e-demo node tests/e2e/browser.mjs ||
  fail "the browser walk through the demo failed (screenshots in target/e2e-demo)"

# Ctrl-C.
kill -INT -- "-$demo"
for _ in $(seq 1 30); do
  kill -0 "$demo" 2>/dev/null || break
  sleep 1
done
kill -0 "$demo" 2>/dev/null && fail "the demo did not stop within 30 s of Ctrl-C"
for pid in $children; do
  if kill -0 "$pid" 2>/dev/null; then
    fail "process $pid ($(ps -o comm= -p "$pid")) survived Ctrl-C"
  fi
done
echo "demo smoke: passed; Ctrl-C stopped every process"
