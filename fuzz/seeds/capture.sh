#!/usr/bin/env bash
# Captures the real provider artefacts the fuzz seeds start from, from the test OpenID Provider
# (tests/idp, npm oidc-provider): its discovery document and JWKS, a token response from a real
# authorization code flow (PKCE S256, client tollgate-basic), and tokens signed with the
# provider's own RS256 key through its test hook (`/__test/logout-token`, which signs any
# claims): a logout token, and ID tokens with the claims of the real one but an `exp` far in the
# future, so that they still validate when the fuzzer runs (jsonwebtoken checks `exp` against
# the clock). The provider's keys are fresh at every start, so the JWKS captured here is the
# fixed key set of the `jwt` target; re-running this script replaces all of them together.
#
# Usage: fuzz/seeds/capture.sh [OUT_DIR]   (default fuzz/seeds/idp; needs `npm ci` in tests/idp)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-fuzz/seeds/idp}
mkdir -p "$out"
# A fixed port: the issuer (which tokens carry in `iss`) is part of the captured artefacts.
port=39123
issuer="http://127.0.0.1:$port/test/as"
redirect="http://127.0.0.1:8080/callback"
work=$(mktemp -d)
IDP_PORT=$port REDIRECT_URIS=$redirect node tests/idp/server.js >"$work/idp.log" 2>&1 &
idp=$!
trap 'kill $idp 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/__test/health" >/dev/null && break
  sleep 0.1
done

curl -sf "$issuer/.well-known/openid-configuration" >"$out/discovery.json"
curl -sf "$issuer/jwks" >"$out/jwks.json"

b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
verifier=$(head -c 32 /dev/urandom | b64url)
challenge=$(printf '%s' "$verifier" | openssl dgst -sha256 -binary | b64url)
nonce=$(head -c 32 /dev/urandom | b64url)
state=$(head -c 32 /dev/urandom | b64url)
url="$issuer/authorize?response_type=code&client_id=tollgate-basic&redirect_uri=$redirect"
url+="&scope=openid%20profile%20email%20offline_access&prompt=consent&state=$state&nonce=$nonce"
url+="&code_challenge=$challenge&code_challenge_method=S256"
# Follow the provider's redirects (it logs the test user in by itself) up to the redirect URI.
for _ in $(seq 20); do
  location=$(curl -s -o /dev/null -w '%{redirect_url}' -b "$work/jar" -c "$work/jar" "$url")
  [ -n "$location" ] || { echo "no redirect from $url" >&2; exit 1; }
  case "$location" in "$redirect"*) break ;; esac
  url=$location
done
printf '%s\n' "${location#"$redirect"}" >"$out/callback_query.txt"
code=$(printf '%s' "$location" | sed -n 's/.*[?&]code=\([^&]*\).*/\1/p')
curl -sf -u 'tollgate-basic:basic-secret-0123456789abcdef0123456789' \
  --data-urlencode grant_type=authorization_code --data-urlencode "code=$code" \
  --data-urlencode "redirect_uri=$redirect" --data-urlencode "code_verifier=$verifier" \
  "$issuer/token" >"$out/token_response.json"
printf '%s' "$nonce" >"$out/nonce.txt"

# Tokens signed by the provider's key with chosen claims. iat 1800000000 is the fuzz targets'
# clock (tollgate::fuzzing::NOW minus a little); exp 4102444800 is 2100-01-01.
sign() { curl -sf -X POST --data "$1" "http://127.0.0.1:$port/__test/logout-token" | node -e \
  'let d="";process.stdin.on("data",c=>d+=c).on("end",()=>process.stdout.write(JSON.parse(d).token))'; }
claims=$(node -e '
  const t = require(process.argv[1]);
  const c = JSON.parse(Buffer.from(t.id_token.split(".")[1], "base64url"));
  c.iat = 1799999990; c.exp = 4102444800; c.auth_time = 1799999990;
  const h = require("crypto").createHash("sha256").update(t.access_token).digest();
  c.at_hash = h.subarray(0, 16).toString("base64url");
  process.stdout.write(JSON.stringify(c));' "$PWD/$out/token_response.json")
sign "$claims" >"$out/id_token.jwt"
# The provider session id when the ID token has one (this provider's does not: then by `sub`).
logout=$(node -e '
  const c = JSON.parse(process.argv[1]);
  const l = { aud: "tollgate-basic", iat: 1799999990, exp: 4102444800, sub: c.sub,
    events: { "http://schemas.openid.net/event/backchannel-logout": {} } };
  if (c.sid) l.sid = c.sid;
  process.stdout.write(JSON.stringify(l));' "$claims")
sign "$logout" >"$out/logout_token.jwt"
# The access token of the real token response, for the at_hash the ID token carries.
node -e 'process.stdout.write(require(process.argv[1]).access_token)' "$PWD/$out/token_response.json" >"$out/access_token.txt"
echo "captured into $out: $(ls "$out" | tr '\n' ' ')"
