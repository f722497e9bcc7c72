// The OpenID Provider that tollgate's integration tests (and the local demo) run against:
// the OpenID Certified npm package `oidc-provider`, configured for tests. Test-only: fixed
// secrets, a fixed user, automatic login. Never expose it beyond 127.0.0.1.
//
// Environment:
//   IDP_PORT                   port on 127.0.0.1 (required)
//   IDP_ISSUER_PATH            issuer path (default /test/as): issuer http://127.0.0.1:PORT/test/as
//   REDIRECT_URIS              comma-separated redirect URIs for every client
//   POST_LOGOUT_REDIRECT_URIS  comma-separated post-logout redirect URIs for every client
//   ACCESS_TOKEN_TTL           access token lifetime in seconds (default 3600)
//   IDP_INTERACTIVE            "1": show a login form instead of logging in automatically
//   IDP_STATE_FILE             keep grants, tokens and sessions in this JSON file, so a restarted
//                              provider still knows them (tests stop and start it)
//   BACKCHANNEL_LOGOUT_URI     every client's backchannel_logout_uri: a logout at the provider's
//                              end-session endpoint is then sent there (OIDC Back-Channel Logout)
//   IDP_PAR                    pushed authorization requests (RFC 9126): "on" (default, offered),
//                              "required" (the only way to start a login), "off" (not offered)
//   IDP_DPOP_NONCE             "1": DPoP proofs at the token endpoint must carry a provider nonce
//                              (RFC 9449 §8; the first proof without one is refused)
//   IDP_DISCOVERY_NO_REVOCATION "1": the OpenID discovery document omits revocation_endpoint
//                              (the RFC 8414 metadata below still lists it)
//   IDP_RFC8414                where the RFC 8414 authorization server metadata (the discovery
//                              document, revocation_endpoint included) is served: "both"
//                              (default), "inserted" (RFC 8414 §3.1:
//                              /.well-known/oauth-authorization-server/test/as), "appended"
//                              (/test/as/.well-known/oauth-authorization-server) or "off"
//   IDP_GROUPS                 N > 0: the user's `groups` claim has N distinct entries, 'staff'
//                              (first, so route rules still match) then N - 1 group object ids
//                              as Entra ID sends them (36-character UUIDs, the same for the same
//                              N at every start): big ID tokens and sessions (default: ['staff'])
//
// Step-up (RFC 9470): a login is a password login (acr urn:tollgate:pwd) unless the request asks
// for urn:tollgate:mfa (acr_values, or an essential acr claim), which it then reaches (acr
// urn:tollgate:mfa, amr pwd+otp). ID tokens always carry auth_time. /__test/stats counts the
// logins by acr.
import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Provider, { errors } from 'oidc-provider';

const here = path.dirname(fileURLToPath(import.meta.url));
const port = Number(process.env.IDP_PORT);
if (!port) {
  console.error('IDP_PORT is required');
  process.exit(2);
}
const issuerPath = (process.env.IDP_ISSUER_PATH || '/test/as').replace(/\/$/, '');
const origin = `http://127.0.0.1:${port}`;
const issuer = `${origin}${issuerPath}`;
const list = (v, d) => (v || d).split(',').map((s) => s.trim()).filter(Boolean);
const redirectUris = list(process.env.REDIRECT_URIS, 'http://127.0.0.1:8080/callback');
const postLogoutRedirectUris = list(process.env.POST_LOGOUT_REDIRECT_URIS, 'http://127.0.0.1:8080/');
const accessTokenTtl = Number(process.env.ACCESS_TOKEN_TTL || 3600);
const interactive = process.env.IDP_INTERACTIVE === '1';
const stateFile = process.env.IDP_STATE_FILE;
const backchannelLogoutUri = process.env.BACKCHANNEL_LOGOUT_URI;
const par = process.env.IDP_PAR || 'on';
if (!['on', 'required', 'off'].includes(par)) {
  console.error('IDP_PAR must be on, required or off');
  process.exit(2);
}
const noRevocationInDiscovery = process.env.IDP_DISCOVERY_NO_REVOCATION === '1';
const rfc8414 = process.env.IDP_RFC8414 || 'both';
if (!['both', 'inserted', 'appended', 'off'].includes(rfc8414)) {
  console.error('IDP_RFC8414 must be both, inserted, appended or off');
  process.exit(2);
}
// The RFC 8414 metadata paths, by form.
const asMetadataPaths = {
  inserted: `/.well-known/oauth-authorization-server${issuerPath}`,
  appended: `${issuerPath}/.well-known/oauth-authorization-server`,
};

// IDP_GROUPS: how many groups the user is a member of (0 or unset: just 'staff').
const groupCount = Number(process.env.IDP_GROUPS || 0);
if (!Number.isInteger(groupCount) || groupCount < 0) {
  console.error('IDP_GROUPS must be a whole number >= 0');
  process.exit(2);
}
// Group i's object id: a version-4-shaped UUID from a hash of i, so runs are reproducible.
const groupId = (i) => {
  const h = crypto.createHash('sha256').update(`tollgate-test-group-${i}`).digest('hex');
  const variant = ((parseInt(h[16], 16) & 0x3) | 0x8).toString(16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${variant}${h.slice(17, 20)}-${h.slice(20, 32)}`;
};
const groups = ['staff', ...Array.from({ length: Math.max(groupCount - 1, 0) }, (_, i) => groupId(i + 1))];

// A storage adapter (oidc-provider's interface) kept in memory and, with IDP_STATE_FILE,
// written through to a JSON file and read back at start.
const store = new Map();
if (stateFile && fs.existsSync(stateFile)) {
  for (const [k, v] of Object.entries(JSON.parse(fs.readFileSync(stateFile, 'utf8')))) store.set(k, v);
}
const persist = () => {
  if (stateFile) fs.writeFileSync(stateFile, JSON.stringify(Object.fromEntries(store)));
};
class FileAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    store.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : null });
    if (payload.grantId) {
      const g = `grant:${payload.grantId}`;
      const keys = store.get(g)?.payload || [];
      keys.push(this.key(id));
      store.set(g, { payload: keys, expiresAt: null });
    }
    if (payload.uid) store.set(`${this.model}:uid:${payload.uid}`, { payload: id, expiresAt: null });
    if (payload.userCode) store.set(`${this.model}:userCode:${payload.userCode}`, { payload: id, expiresAt: null });
    persist();
  }
  async find(id) {
    const e = store.get(this.key(id));
    if (!e || (e.expiresAt && e.expiresAt < Date.now())) return undefined;
    return e.payload;
  }
  async findByUid(uid) { const id = store.get(`${this.model}:uid:${uid}`)?.payload; return id && this.find(id); }
  async findByUserCode(code) { const id = store.get(`${this.model}:userCode:${code}`)?.payload; return id && this.find(id); }
  async consume(id) {
    const e = store.get(this.key(id));
    if (e) { e.payload.consumed = Math.floor(Date.now() / 1000); persist(); }
  }
  async destroy(id) { store.delete(this.key(id)); persist(); }
  async revokeByGrantId(grantId) {
    for (const k of store.get(`grant:${grantId}`)?.payload || []) store.delete(k);
    store.delete(`grant:${grantId}`);
    persist();
  }
}

// Client keys for private_key_jwt: the public halves of the PEM files in keys/.
const publicJwk = (file, kid) => ({
  ...crypto.createPublicKey(fs.readFileSync(path.join(here, 'keys', file))).export({ format: 'jwk' }),
  kid,
  use: 'sig',
});

// The provider's own signing keys, fresh at every start.
const signingJwk = (type, options, kid, alg) => ({
  ...crypto.generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' }),
  kid,
  alg,
  use: 'sig',
});

const rsaSigningKey = signingJwk('rsa', { modulusLength: 2048 }, 'idp-rs256', 'RS256');

// Signs `claims` as an RS256 JWT with the provider's key (or, `forged`, with a throwaway key
// under the same kid): logout tokens for the tests of what a relying party must refuse.
const signJwt = (claims, forged, typ) => {
  const key = forged
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    : crypto.createPrivateKey({ key: rsaSigningKey, format: 'jwk' });
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'RS256', kid: 'idp-rs256', typ })}.${b64(claims)}`;
  return `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
};

export const ACR_PASSWORD = 'urn:tollgate:pwd';
export const ACR_MFA = 'urn:tollgate:mfa';

// The acr a login reaches: MFA when the request asks for it, else a password login.
const acrAsked = (params) => {
  const asked = (params.acr_values || '').split(' ').filter(Boolean);
  try {
    const claims = JSON.parse(params.claims || '{}');
    const acr = claims?.id_token?.acr;
    if (acr?.values) asked.push(...acr.values);
    if (acr?.value) asked.push(acr.value);
  } catch { /* not JSON: oidc-provider refuses it anyway */ }
  return asked.includes(ACR_MFA) ? ACR_MFA : ACR_PASSWORD;
};

const common = {
  // Step-up rules read auth_time: in every ID token.
  require_auth_time: true,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: redirectUris,
  post_logout_redirect_uris: postLogoutRedirectUris,
  ...(backchannelLogoutUri
    ? { backchannel_logout_uri: backchannelLogoutUri, backchannel_logout_session_required: true }
    : {}),
};

export const clients = [
  { ...common, client_id: 'tollgate-basic', client_secret: 'basic-secret-0123456789abcdef0123456789', token_endpoint_auth_method: 'client_secret_basic' },
  { ...common, client_id: 'tollgate-post', client_secret: 'post-secret-0123456789abcdef0123456789', token_endpoint_auth_method: 'client_secret_post' },
  { ...common, client_id: 'tollgate-jwt', client_secret: 'jwt-secret-0123456789abcdef0123456789abcdef', token_endpoint_auth_method: 'client_secret_jwt', token_endpoint_auth_signing_alg: 'HS256' },
  { ...common, client_id: 'tollgate-pkjwt-rs256', token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [publicJwk('client_rsa.pem', 'rsa-1')] } },
  { ...common, client_id: 'tollgate-pkjwt-es256', token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [publicJwk('client_ec.pem', 'ec-1')] } },
  { ...common, client_id: 'tollgate-pkjwt-eddsa', token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [publicJwk('client_ed25519.pem', 'ed-1')] } },
  { ...common, client_id: 'tollgate-public', token_endpoint_auth_method: 'none' },
  // FAPI 2.0: private_key_jwt (ES256), PAR required, DPoP-bound tokens required, ES256 ID tokens.
  {
    ...common,
    client_id: 'tollgate-fapi2',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    id_token_signed_response_alg: 'ES256',
    require_pushed_authorization_requests: true,
    dpop_bound_access_tokens: true,
    jwks: { keys: [publicJwk('client_ec.pem', 'ec-1')] },
  },
  // The client of the local demo (deploy/demo) and conf/tollgate.toml.
  { ...common, client_id: 'tollgate-demo', client_secret: 'demo-secret-change-me', token_endpoint_auth_method: 'client_secret_basic' },
];

const user = {
  sub: 'test-user',
  name: 'Test User',
  given_name: 'Test',
  family_name: 'User',
  email: 'test.user@example.com',
  email_verified: true,
  // For route rules (`require`) and identity headers: a member of `staff`, not of `admin`
  // (with IDP_GROUPS, of N - 1 more groups named by object id).
  groups,
};

const provider = new Provider(issuer, {
  adapter: FileAdapter,
  clients,
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['HS256', 'RS256', 'PS256', 'ES256', 'EdDSA'],
    idTokenSigningAlgValues: ['RS256', 'ES256'],
  },
  jwks: { keys: [rsaSigningKey, signingJwk('ec', { namedCurve: 'P-256' }, 'idp-es256', 'ES256')] },
  cookies: { keys: ['tollgate-test-idp-cookie-key-not-secret'] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'groups'],
    email: ['email', 'email_verified'],
  },
  conformIdTokenClaims: false,
  acrValues: [ACR_PASSWORD, ACR_MFA],
  findAccount: async (ctx, id) =>
    id === user.sub ? { accountId: id, claims: async () => ({ ...user }) } : undefined,
  features: {
    devInteractions: { enabled: false },
    // Step-up logins ask for acr as an essential claim (OpenID Connect Core §5.5).
    claimsParameter: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
    // DPoP (RFC 9449) is on by default in oidc-provider; nonces need a secret.
    dPoP: {
      enabled: true,
      nonceSecret: crypto.randomBytes(32),
      requireNonce: () => process.env.IDP_DPOP_NONCE === '1',
    },
    // Token introspection (RFC 7662), for the tests' resource server: it reads a DPoP-bound
    // token's `cnf.jkt` there.
    introspection: { enabled: true },
    // Resource indicators (RFC 8707) for tollgate's per-route audiences: any https resource on
    // a `.example` host is an API with scopes `read` and `write`, whose access tokens are
    // JWTs (ES256), so an upstream can read their `aud` and `scope`. Others: invalid_target.
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo: async (ctx, resource) => {
        const url = URL.parse(resource);
        if (!url || url.protocol !== 'https:' || !url.hostname.endsWith('.example')) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience: resource,
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
    pushedAuthorizationRequests: {
      enabled: par !== 'off',
      requirePushedAuthorizationRequests: par === 'required',
    },
    userinfo: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // The confirmation form submits itself in a browser; tests POST it (see README).
      logoutSource: async (ctx, form) => {
        ctx.body = `<!doctype html><title>Logout</title><body>${form}<button form="op.logoutForm" name="logout" value="yes">Log out</button><script>document.forms[0].submit()</script></body>`;
      },
    },
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // Test provider on loopback: let it send back-channel logouts to 127.0.0.1 (its SSRF guard
  // refuses special-use addresses by default).
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  pkce: { required: () => true },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: true,
  routes: {
    authorization: '/authorize',
    token: '/token',
    userinfo: '/userinfo',
    jwks: '/jwks',
    revocation: '/revoke',
    end_session: '/logout',
  },
  ttl: {
    AccessToken: accessTokenTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
});
provider.proxy = false;
// The OpenID discovery document without revocation_endpoint (IDP_DISCOVERY_NO_REVOCATION); the
// RFC 8414 metadata (another route of oidc-provider's) keeps it.
provider.use(async (ctx, next) => {
  await next();
  if (
    noRevocationInDiscovery &&
    ctx.path === '/.well-known/openid-configuration' &&
    ctx.body &&
    typeof ctx.body === 'object'
  ) {
    delete ctx.body.revocation_endpoint;
  }
});

const stats = {
  token_requests: { authorization_code: 0, refresh_token: 0 },
  refresh_failures: 0,
  backchannel: { success: 0, error: 0 },
  stalled: 0,
  // Authorization requests the browser brought: by `request_uri` (pushed first) or not.
  authorize: { pushed: 0, plain: 0 },
  par: { success: 0, error: 0 },
  // Token requests refused for a missing or stale DPoP nonce; DPoP-bound tokens issued.
  dpop: { nonce_refusals: 0, bound_grants: 0 },
  // Refreshes for a resource (RFC 8707), by resource; refresh errors by code.
  resource_refreshes: {},
  refresh_errors: {},
  // Logins by the acr they reached.
  logins: {},
};
let refuseNextToken = null;
let stallNextToken = false;
provider.on('grant.success', (ctx) => {
  if (ctx.body?.token_type === 'DPoP') stats.dpop.bound_grants += 1;
  const type = ctx.oidc.params.grant_type;
  stats.token_requests[type] = (stats.token_requests[type] || 0) + 1;
  const resource = ctx.oidc.params.resource;
  if (type === 'refresh_token' && resource) {
    stats.resource_refreshes[resource] = (stats.resource_refreshes[resource] || 0) + 1;
  }
});
provider.on('grant.error', (ctx, err) => {
  if (err?.error === 'use_dpop_nonce') stats.dpop.nonce_refusals += 1;
  if (ctx.oidc?.params?.grant_type === 'refresh_token') {
    stats.refresh_failures += 1;
    stats.refresh_errors[err?.error] = (stats.refresh_errors[err?.error] || 0) + 1;
  }
});
provider.on('server_error', (ctx, err) => console.error('idp server_error:', err));
provider.on('backchannel.success', () => { stats.backchannel.success += 1; });
provider.on('pushed_authorization_request.success', (ctx) => {
  stats.par.success += 1;
  const p = ctx.oidc?.params || {};
  stats.par.last = { acr_values: p.acr_values ?? null, claims: p.claims ?? null, max_age: p.max_age ?? null };
});
provider.on('pushed_authorization_request.error', () => { stats.par.error += 1; });
provider.on('backchannel.error', (ctx, err) => {
  stats.backchannel.error += 1;
  console.error('idp backchannel.error:', err, err?.cause);
});

const send = (res, status, body, type = 'application/json') => {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
};

const readForm = (req) =>
  new Promise((resolve) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve(new URLSearchParams(data)));
  });

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params, session } = details;
  if (prompt.name === 'login') {
    if (interactive && req.method === 'GET') {
      return send(res, 200, `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>
<body style="font-family:system-ui,sans-serif;max-width:22rem;margin:4rem auto">
<h1>Test provider</h1><p>Signing in to <b>${params.client_id}</b></p>
<form method="post"><label>User <input name="login" value="test-user"></label><br><br>
<label>Password <input name="password" type="password" value="anything"></label><br><br>
<button type="submit">Sign in</button></form></body></html>`, 'text/html; charset=utf-8');
    }
    if (interactive) {
      const form = await readForm(req);
      if (form.get('login') !== user.sub) {
        return send(res, 401, `<!doctype html><p>Unknown user. <a href="">Try again</a> with test-user.</p>`, 'text/html');
      }
    }
    const acr = acrAsked(params);
    stats.logins[acr] = (stats.logins[acr] || 0) + 1;
    stats.last_login = { acr, acr_values: params.acr_values ?? null, claims: params.claims ?? null, max_age: params.max_age ?? null };
    const amr = acr === ACR_MFA ? ['pwd', 'otp'] : ['pwd'];
    return provider.interactionFinished(req, res, { login: { accountId: user.sub, acr, amr } }, { mergeWithLastSubmission: false });
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  return send(res, 400, { error: 'unsupported_prompt', prompt: prompt.name });
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, origin);
    if (url.pathname === '/__test/health') return send(res, 200, { status: 'ok' });
    if (url.pathname === '/__test/stats') return send(res, 200, stats);
    if (url.pathname === '/__test/reset' && req.method === 'POST') {
      stats.token_requests = { authorization_code: 0, refresh_token: 0 };
      stats.refresh_failures = 0;
      stats.backchannel = { success: 0, error: 0 };
      stats.stalled = 0;
      stats.authorize = { pushed: 0, plain: 0 };
      stats.par = { success: 0, error: 0 };
      stats.dpop = { nonce_refusals: 0, bound_grants: 0 };
      stats.resource_refreshes = {};
      stats.refresh_errors = {};
      stats.logins = {};
      return send(res, 200, stats);
    }
    // Test hook: a logout token with the given claims (JSON body), signed with the provider's
    // key, or with another key under the same kid (`?forged=1`).
    if (url.pathname === '/__test/logout-token' && req.method === 'POST') {
      let data = '';
      for await (const chunk of req) data += chunk;
      const claims = { iss: issuer, iat: Math.floor(Date.now() / 1000), jti: crypto.randomUUID(), ...JSON.parse(data || '{}') };
      const token = signJwt(claims, url.searchParams.get('forged') === '1', 'logout+jwt');
      return send(res, 200, { token, claims });
    }
    // Test hook: the next token request is answered with this error instead (a provider that
    // refuses the client, rate-limits, or sits behind a firewall that says no).
    if (url.pathname === '/__test/refuse-next-token' && req.method === 'POST') {
      refuseNextToken = {
        status: Number(url.searchParams.get('status') || 400),
        error: url.searchParams.get('error') || 'invalid_request',
      };
      return send(res, 200, refuseNextToken);
    }
    // Test hook: the next token request is never answered nor processed (its refresh token
    // stays unused), as when the client that sent it dies before the provider acts on it.
    if (url.pathname === '/__test/stall-next-token' && req.method === 'POST') {
      stallNextToken = true;
      return send(res, 200, { stall: true });
    }
    if (stallNextToken && req.method === 'POST' && url.pathname === `${issuerPath}/token`) {
      stallNextToken = false;
      stats.stalled += 1;
      return undefined;
    }
    if (refuseNextToken && req.method === 'POST' && url.pathname === `${issuerPath}/token`) {
      const { status, error } = refuseNextToken;
      refuseNextToken = null;
      return send(res, status, { error, error_description: 'refused by the test hook' });
    }
    // RFC 8414 authorization server metadata: oidc-provider serves it appended to the issuer;
    // the §3.1 form (well-known segment before the issuer's path) is that same document.
    const asForm = Object.keys(asMetadataPaths).find((f) => asMetadataPaths[f] === url.pathname);
    if (asForm && rfc8414 !== 'both' && rfc8414 !== asForm) {
      return send(res, 404, { error: 'not_found' });
    }
    if (asForm === 'inserted') {
      req.originalUrl = asMetadataPaths.appended;
      req.url = '/.well-known/oauth-authorization-server';
      return callback(req, res);
    }
    if (url.pathname.startsWith('/interaction/')) return await interaction(req, res);
    if (req.method === 'GET' && url.pathname === `${issuerPath}/authorize`) {
      stats.authorize[url.searchParams.has('request_uri') ? 'pushed' : 'plain'] += 1;
    }
    if (url.pathname === issuerPath || url.pathname.startsWith(`${issuerPath}/`)) {
      // Mount the provider under the issuer path.
      req.originalUrl = req.url;
      req.url = req.url.slice(issuerPath.length) || '/';
      return callback(req, res);
    }
    return send(res, 404, { error: 'not_found' });
  } catch (err) {
    console.error('idp error:', err);
    if (!res.headersSent) send(res, 500, { error: 'server_error', message: String(err.message || err) });
  }
});

server.listen(port, '127.0.0.1', () => {
  console.log(`idp listening on ${origin} issuer=${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
