#!/usr/bin/env bash
# Shows what the replicas of `./deploy/demo/run.sh --replicas N` share, with curl alone (run it
# while that demo is up; CI's .ci/demo_smoke.sh runs it too):
#
#   1. logs in as test-user through the balancer (127.0.0.1:8080), filling in the provider's
#      login form, with a cookie jar as a browser would;
#   2. calls GET /api/hello a few times through the balancer: every call gets 200, and the
#      replicas' metrics (tollgate_requests_total) show that more than one replica answered;
#   3. logs out through the balancer (one replica receives it), keeping a copy of the old cookie;
#   4. sends the old cookie to every replica directly (808i): each answers 401, since the
#      logout reached all of them through the store.
#
# With --refresh, before logging out (32 s more): waits until the access token (60 s in this
# demo) is due for a refresh, then sends the same cookie to every replica at once; one of them
# refreshes at the provider (tollgate_refresh_total{outcome="won"}), the others use its result
# (waited or reused) instead of spending the refresh token again.
#
# Replica i listens on 808i with metrics on 910i (run.sh's layout); the replicas are found by
# their metrics ports. Exits non-zero, saying why, if any step fails.
set -euo pipefail

refresh=""
case "${1:-}" in
  "") ;;
  --refresh) refresh=1 ;;
  *) echo "usage: $0 [--refresh]" >&2; exit 2 ;;
esac

say() { printf '\033[1m[check]\033[0m %s\n' "$*"; }
die() { printf '\033[1;31m[check]\033[0m %s\n' "$*" >&2; exit 1; }
command -v curl >/dev/null || die "curl not found (Debian: apt-get install curl)"

base=http://127.0.0.1:8080
curl -fsS -o /dev/null --max-time 5 "$base/readyz" ||
  die "nothing ready on $base: start ./deploy/demo/run.sh --replicas N first"

replicas=()
for i in 1 2 3 4 5 6 7 8 9; do
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:910$i/metrics" 2>/dev/null || break
  replicas+=("$i")
done
[ "${#replicas[@]}" -gt 0 ] ||
  die "no replica metrics on 127.0.0.1:9101: is this the demo with --replicas N?"
say "replicas found: ${#replicas[@]} (127.0.0.1:8081..808${#replicas[@]})"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-check.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
jar="$tmp/jar"
c() { curl -sS --max-time 10 "$@"; }

# The API calls answered 200 by replica $1 so far.
api_ok() {
  c "http://127.0.0.1:910$1/metrics" |
    awk '/^tollgate_requests_total\{route="\/api",status="200"\}/ { n += $2 } END { print n + 0 }'
}
# Replica $1's refreshes with outcome $2 so far.
refreshes() {
  c "http://127.0.0.1:910$1/metrics" |
    awk -v o="$2" '$1 == "tollgate_refresh_total{outcome=\"" o "\"}" { n += $2 } END { print n + 0 }'
}
declare -A before
for i in "${replicas[@]}"; do before[$i]=$(api_ok "$i"); done

say "1. log in through the balancer (the provider's login form, as a browser would)"
form_url=$(c -L -c "$jar" -b "$jar" -o "$tmp/form.html" -w '%{url_effective}' "$base/login")
grep -q 'name="login"' "$tmp/form.html" || die "no login form at $form_url"
landed=$(c -L -c "$jar" -b "$jar" -o /dev/null -w '%{http_code} %{url_effective}' \
  --data-urlencode login=test-user --data-urlencode password=anything "$form_url")
[ "$landed" = "200 $base/" ] || die "after the login form: $landed (want 200 $base/)"
grep -q tollgate "$jar" || die "no tollgate cookie in the jar after login"
logged_in_at=$SECONDS
say "   logged in; the jar holds tollgate's session cookie"

calls=$((${#replicas[@]} * 2))
[ "$calls" -ge 4 ] || calls=4
say "2. GET /api/hello $calls times through the balancer"
for _ in $(seq 1 "$calls"); do
  body=$(c -b "$jar" -H 'x-csrf: 1' -w '\n%{http_code}' "$base/api/hello")
  [ "${body##*$'\n'}" = 200 ] || die "API call answered ${body##*$'\n'}: ${body%$'\n'*}"
  grep -q '"received": true' <<<"$body" || die "the API received no bearer token: $body"
done
answered=0
for i in "${replicas[@]}"; do
  n=$(($(api_ok "$i") - before[$i]))
  say "   replica $i (127.0.0.1:808$i) answered $n of them"
  [ "$n" -gt 0 ] && answered=$((answered + 1))
done
if [ "${#replicas[@]}" -gt 1 ] && [ "$answered" -lt 2 ]; then
  die "only $answered replica answered: the balancer should spread the calls"
fi

if [ -n "$refresh" ]; then
  wait_s=$((32 - (SECONDS - logged_in_at)))
  say "2b. waiting $wait_s s: the access token (60 s) is refreshed when it expires within 30 s"
  [ "$wait_s" -le 0 ] || sleep "$wait_s"
  declare -A won waited reused
  for i in "${replicas[@]}"; do
    won[$i]=$(refreshes "$i" won)
    waited[$i]=$(refreshes "$i" waited)
    reused[$i]=$(refreshes "$i" reused)
  done
  say "    the same cookie to every replica at once"
  for i in "${replicas[@]}"; do
    c -b "$jar" -H 'x-csrf: 1' -o /dev/null -w '%{http_code}' "http://127.0.0.1:808$i/api/hello" >"$tmp/status.$i" &
  done
  wait
  total_won=0
  total=0
  for i in "${replicas[@]}"; do
    [ "$(cat "$tmp/status.$i")" = 200 ] || die "replica $i answered $(cat "$tmp/status.$i") during the refresh"
    w=$(($(refreshes "$i" won) - won[$i]))
    t=$(($(refreshes "$i" waited) - waited[$i]))
    r=$(($(refreshes "$i" reused) - reused[$i]))
    say "    replica $i: 200; refresh outcomes: won $w, waited $t, reused $r"
    total_won=$((total_won + w))
    total=$((total + w + t + r))
  done
  [ "$total_won" = 1 ] || die "$total_won replicas refreshed at the provider (want exactly 1)"
  [ "$total" = "${#replicas[@]}" ] ||
    die "$total of ${#replicas[@]} replicas counted the refresh through the store (a fallback?)"
  say "    one refresh at the provider, shared by all ${#replicas[@]} replicas"
fi

say "3. log out through the balancer, keeping a copy of the old cookie"
cp "$jar" "$tmp/old-jar"
status=$(c -b "$jar" -c "$jar" -H 'x-csrf: 1' -X POST -o /dev/null -w '%{http_code}' "$base/logout")
[ "$status" = 303 ] || die "POST /logout answered $status (want 303)"

say "4. the old cookie on every replica directly"
for i in "${replicas[@]}"; do
  # The revocation travels by the store's pub/sub: allow it a moment (bounded).
  got=""
  for _ in $(seq 1 50); do
    got=$(c -b "$tmp/old-jar" -H 'x-csrf: 1' -o /dev/null -w '%{http_code}' "http://127.0.0.1:808$i/api/hello")
    [ "$got" = 401 ] && break
    sleep 0.1
  done
  [ "$got" = 401 ] || die "replica $i (127.0.0.1:808$i) still answers $got to the logged-out cookie"
  revoked=$(c "http://127.0.0.1:910$i/metrics" | grep -o 'tollgate_revocations_total{source="logout"} [0-9]*' || true)
  say "   replica $i (127.0.0.1:808$i): 401${revoked:+ ($revoked: this replica received the logout)}"
done
say "passed: one session served by ${answered} replica(s), its logout enforced by all ${#replicas[@]}"
