//! The decision core: what to do with a request, without Pingora.
//!
//! [`screen`] refuses requests that no route may see (`TRACE`, an HTTP/1.1 request without
//! `Host`, a request target that is not safe to route on; whether its decoded form would route
//! elsewhere is `RouteTable::resolve`'s check). [`Gate::decide`] takes
//! the route's auth rule, the request's [`Facts`] and the time, and returns either a
//! [`Grant`] — the bearer value for the upstream, the identity headers and the cookies to set
//! on its response — or the [`Reply`] to send instead (a route's claim rule is checked here). The provider is reached only through [`Refresher`], so a
//! unit test drives every branch (missing, forged, expired session; CSRF; refresh refused,
//! unavailable, accepted; idle renewal) with a stand-in, and the Pingora adapter in
//! [`super`] only moves facts in and results out.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Version};

use super::headers::{self, Identity};
use crate::claims::{self, ClaimRule};
use crate::config::{Audience, RouteAuth};
use crate::oidc::audience::AudienceToken;
use crate::oidc::dpop::{DpopError, DpopKey};
use crate::oidc::refresh::{self, Refresh, RefreshOutcome, RefreshRequest};
use crate::oidc::Oidc;
use crate::ops::metrics::Metrics;
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::cookie::{ChunkError, SessionCookies};
use crate::session::revocations::{Revocation, Revocations, SeenJtis};
use crate::session::{Payload, Session, SessionCodec, SessionError};
use crate::sessions::csrf::CsrfPolicy;
use crate::store::{Store, StoreError};
use crate::target::{self, Target};

/// Refreshes an access token at the provider (single flight; [`crate::oidc::refresh`]) and
/// finds kept route tokens ([`crate::oidc::audience`]).
pub(crate) trait Refresher: Sync {
    fn refresh(&self, req: RefreshRequest<'_>) -> impl Future<Output = Refresh> + Send;

    /// The kept, unexpired token of session `session` for `audience`, if any.
    fn route_token(
        &self,
        session: u128,
        audience: &Audience,
        now: u64,
    ) -> impl Future<Output = Option<Arc<AudienceToken>>> + Send;
}

impl Refresher for Arc<Oidc> {
    fn refresh(&self, req: RefreshRequest<'_>) -> impl Future<Output = Refresh> + Send {
        Oidc::refresh(self, req)
    }

    fn route_token(
        &self,
        session: u128,
        audience: &Audience,
        now: u64,
    ) -> impl Future<Output = Option<Arc<AudienceToken>>> + Send {
        self.audience_token(session, audience, now)
    }
}

/// What an allowed request takes upstream.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    /// `Bearer <access token>` for the upstream request (marked sensitive).
    pub(crate) bearer: Option<HeaderValue>,
    /// Who the user is, for a route with `identity_headers`.
    /// (Boxed, as the next field: most routes have neither, and the grant is moved into every
    /// request's context.)
    pub(crate) identity: Option<Box<Identity>>,
    /// What the upstream request's DPoP proof is made with (`token_binding = "dpop"`).
    pub(crate) dpop: Option<Box<DpopGrant>>,
    /// `Set-Cookie` lines for the response (a refreshed or renewed session).
    pub(crate) set_cookies: Vec<String>,
    /// What a sticky upstream pool hashes: from the session's id (0 without a session).
    pub(crate) affinity: u64,
}

/// What a sticky upstream pool hashes for `session`: its random id, folded to 64 bits
/// (never 0, which means "no session").
fn affinity(session: &Session<'_>) -> u64 {
    ((session.id >> 64) as u64 ^ session.id as u64).max(1)
}

/// The session's DPoP key and the access token's hash, for the upstream request's proof,
/// which needs the upstream URL (known once the request is rewritten).
#[derive(Debug, Clone)]
pub(crate) struct DpopGrant {
    pub(crate) key: Arc<DpopKey>,
    pub(crate) ath: String,
}

/// A route's rules for [`Gate::decide`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    pub(crate) auth: RouteAuth,
    /// Claims the session must have (`require`).
    pub(crate) require: Option<&'a ClaimRule>,
    /// Send [`Identity`] upstream.
    pub(crate) identity_headers: bool,
    /// `token_binding = "dpop"`: `Authorization: DPoP` and a proof.
    pub(crate) dpop: bool,
    /// `resource`/`scopes`: the route's own token instead of the session's.
    pub(crate) audience: Option<&'a Arc<Audience>>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl Policy<'_> {
    /// Only the auth rule: no claim rule, no identity headers.
    pub(crate) fn auth(auth: RouteAuth) -> Policy<'static> {
        Policy {
            auth,
            require: None,
            identity_headers: false,
            dpop: false,
            audience: None,
        }
    }
}

/// The identity of `session` for its headers; a value that cannot be a header (a control
/// character in a claim) is left out and logged, never sent half-way.
fn identity(session: &Session<'_>, groups_claim: &str, request_id: &str) -> Option<Box<Identity>> {
    let value = |what: &'static str, text: &str| {
        HeaderValue::from_str(text)
            .inspect_err(|_| {
                tracing::warn!(
                    request_id,
                    claim = what,
                    "identity header left out: the claim is not a valid header value"
                )
            })
            .ok()
    };
    // Comma-separated: a group whose name has a comma (an LDAP DN) would be split upstream,
    // so then the header is left out rather than sent ambiguous.
    let groups = claims::claim(&session.kept_claims, groups_claim)
        .map(|g| g.values().iter().map(|v| v.text()).collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .filter(|g| {
            let plain = g.iter().all(|v| !v.contains(','));
            if !plain {
                tracing::warn!(
                    request_id,
                    "X-Auth-Request-Groups left out: a group name has a comma"
                );
            }
            plain
        })
        .map(|g| g.join(","));
    Some(Box::new(Identity {
        user: value("sub", &session.claims.sub)?,
        // Only a verified address: upstreams written for oauth2-proxy trust this header, and
        // oauth2-proxy refuses unverified ones (a self-registered `admin@corp.example`).
        email: session
            .claims
            .email
            .as_deref()
            .filter(|_| {
                claims::claim(&session.kept_claims, "email_verified")
                    == Some(&claims::ClaimValue::One(claims::Scalar::Bool(true)))
            })
            .and_then(|e| value("email", e)),
        groups: groups.as_deref().and_then(|g| value("groups", g)),
    }))
}

/// Refuses what no route may see, before routing: `TRACE` (it would echo the request,
/// cookies included, back to a script), an HTTP/1.1 request without `Host` (RFC 9112 §3.2),
/// and a request target that is not safe to route on ([`target::check`]).
pub(crate) fn screen<'r>(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    raw_target: &[u8],
    uri_path: &'r str,
    max_cookie_bytes: usize,
    request_id: &str,
) -> Result<Target<'r>, Fault> {
    if method == Method::TRACE {
        return Err(Fault::MethodNotAllowed);
    }
    let cookie_bytes: usize = headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.len())
        .sum();
    if cookie_bytes > max_cookie_bytes {
        tracing::info!(
            request_id,
            cookie_bytes,
            "Cookie header over server.max_cookie_bytes"
        );
        return Err(Fault::CookieTooLarge);
    }
    if version == Version::HTTP_11 && !headers.contains_key(http::header::HOST) {
        tracing::info!(request_id, "HTTP/1.1 request without Host");
        return Err(Fault::BadRequest);
    }
    target::check(raw_target, uri_path).map_err(|e| {
        tracing::info!(request_id, reason = %e, "request target refused");
        Fault::BadPath
    })
}

/// The session and CSRF rules of the hot path, built once from the config.
#[derive(Debug)]
pub(crate) struct Gate {
    codec: SessionCodec,
    revocations: Arc<Revocations>,
    store: Option<Arc<Store>>,
    seen_jtis: SeenJtis,
    csrf: CsrfPolicy,
    metrics: Metrics,
    refresh_skew: u64,
    /// Set once `refresh_skew` was first capped at half a token's lifetime (logged once).
    skew_capped: AtomicBool,
    idle_reseal_after: u64,
    /// The claim that lists the user's groups (`[oidc] groups_claim`).
    groups_claim: String,
    /// Sessions' DPoP keys, loaded once ([`DpopKeys`]).
    dpop_keys: DpopKeys,
}

/// Loaded DPoP keys by session id: loading one from the session's PKCS#8 verifies it (a
/// scalar multiplication), as costly as the proof's signature. Bounded: emptied when full.
#[derive(Debug, Default)]
struct DpopKeys(std::sync::Mutex<std::collections::HashMap<u128, Arc<DpopKey>>>);

const DPOP_KEYS: usize = 1024;

impl DpopKeys {
    fn get(&self, session: &Session<'_>) -> Result<Arc<DpopKey>, DpopError> {
        let pkcs8 = session.dpop_key.as_deref().ok_or(DpopError::Load)?;
        if let Some(k) = self.0.lock().ok().and_then(|m| m.get(&session.id).cloned()) {
            // The id is the session's, chosen at login with its key; a renewed cookie keeps
            // both. Compared anyway: a cached key is used only for the same key bytes.
            if k.pkcs8() == pkcs8 {
                return Ok(k);
            }
        }
        let key = Arc::new(DpopKey::from_pkcs8(pkcs8)?);
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= DPOP_KEYS {
                m.clear();
            }
            m.insert(session.id, key.clone());
        }
        Ok(key)
    }
}

impl Gate {
    pub(crate) fn new(
        codec: SessionCodec,
        revocations: Arc<Revocations>,
        store: Option<Arc<Store>>,
        csrf: CsrfPolicy,
        metrics: Metrics,
        refresh_skew: u64,
        idle_timeout: u64,
    ) -> Gate {
        Gate {
            codec,
            revocations,
            store,
            seen_jtis: SeenJtis::default(),
            csrf,
            metrics,
            refresh_skew,
            skew_capped: AtomicBool::new(false),
            idle_reseal_after: (idle_timeout / 2).max(1),
            groups_claim: "groups".into(),
            dpop_keys: DpopKeys::default(),
        }
    }

    /// Reads the user's groups from `claim` (default `groups`).
    pub(crate) fn with_groups_claim(mut self, claim: &str) -> Gate {
        self.groups_claim = claim.to_string();
        self
    }

    pub(crate) fn codec(&self) -> &SessionCodec {
        &self.codec
    }

    pub(crate) fn csrf(&self) -> &CsrfPolicy {
        &self.csrf
    }

    /// Records `r` here at once, then in the shared store when there is one (within its
    /// timeout). `Err` means the other replicas may not learn of it.
    pub(crate) async fn revoke(
        &self,
        r: Revocation,
        source: &'static str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.revocations.apply(&r, now);
        self.metrics.revocation(source);
        match &self.store {
            Some(store) => store.publish(&r, now).await,
            None => Ok(()),
        }
    }

    /// Whether this is the first use of a logout token id, here and (with a store) on every
    /// replica. `Err` when the store cannot say.
    pub(crate) async fn first_use(
        &self,
        jti: &str,
        ttl: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let here = self.seen_jtis.first_use(jti, now, ttl);
        match &self.store {
            Some(store) => Ok(store.first_use(jti, ttl).await? && here),
            None => Ok(here),
        }
    }

    /// The request's session cookies, decrypted ([`SessionCodec::open`]).
    pub(crate) fn open<'r>(
        &self,
        facts: &Facts<'r>,
    ) -> (SessionCookies<'r>, Result<Payload, SessionError>) {
        self.codec.open(facts.cookie_headers())
    }

    /// The session in `payload`, checked against the time; a session that was present but
    /// could not be used is counted and logged.
    pub(crate) fn session<'p>(
        &self,
        payload: &'p Result<Payload, SessionError>,
        facts: &Facts<'_>,
    ) -> Result<Session<'p>, SessionError> {
        let session = payload
            .as_ref()
            .map_err(|e| *e)
            .and_then(|p| self.codec.decode(p, facts.now))
            .and_then(|s| {
                if self.revocations.is_revoked(&s, facts.now) {
                    Err(SessionError::Revoked)
                } else {
                    Ok(s)
                }
            });
        if let Err(e) = &session {
            if !matches!(e, SessionError::Cookie(ChunkError::Missing)) {
                self.metrics.session_failure(e.reason());
                tracing::info!(
                    request_id = facts.request_id,
                    reason = e.reason(),
                    "session did not open"
                );
            }
        }
        session
    }

    /// Whether a token expiring at `expires_at`, issued for `lifetime` seconds, is due for a
    /// refresh at `now` ([`refresh_due`]); warns the first time the skew is capped.
    fn refresh_due(&self, expires_at: u64, lifetime: u64, now: u64) -> bool {
        let (due, capped) = refresh_due(expires_at, lifetime, now, self.refresh_skew);
        if capped
            && !self.skew_capped.load(Ordering::Relaxed)
            && !self.skew_capped.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                refresh_skew_secs = self.refresh_skew,
                token_lifetime_secs = lifetime,
                effective_skew_secs = lifetime / 2,
                "[session] refresh_skew is more than half the provider's access token lifetime: \
                 tokens are refreshed half-way through instead (logged once)"
            );
        }
        due
    }

    /// Decides a request on a route with rule `auth`. Refreshes the access token when it is
    /// due and re-seals the cookie when the session changed.
    pub(crate) async fn decide(
        &self,
        policy: Policy<'_>,
        facts: &Facts<'_>,
        refresher: &impl Refresher,
    ) -> Result<Grant, Reply> {
        let auth = policy.auth;
        if auth == RouteAuth::None {
            return Ok(Grant::default());
        }
        let now = facts.now;
        let rid = facts.request_id;
        let (present, payload) = self.open(facts);
        let session = match self.session(&payload, facts) {
            Ok(s) => s,
            Err(e) => {
                if auth == RouteAuth::Optional {
                    return Ok(Grant::default());
                }
                let fault = match e {
                    SessionError::Cookie(ChunkError::TooManyChunks) => {
                        self.metrics.limit("session_chunks");
                        Fault::CookieTooLarge
                    }
                    _ => Fault::Unauthenticated,
                };
                let mut reply = Reply::from(fault);
                if !matches!(e, SessionError::Cookie(ChunkError::Missing)) {
                    reply = reply.with_cookies(self.codec.clear_cookie_lines(&present));
                }
                return Err(reply);
            }
        };
        self.csrf
            .check(facts.headers, facts.method)
            .map_err(|e| Reply::from(Fault::Csrf(e)))?;
        if let Some(rule) = policy.require {
            if rule.asks_unknown(&session.kept_claims) {
                // Logged in before the rule named this claim: log in again to keep it (a 403
                // would lock out members of the group until the session ends).
                tracing::info!(
                    request_id = rid,
                    "the route's require rule reads a claim this session did not keep"
                );
                return Err(Reply::from(Fault::Unauthenticated));
            }
            if !rule.allows(&session.kept_claims) {
                tracing::info!(
                    request_id = rid,
                    sub = %session.claims.sub,
                    "the session's claims do not satisfy the route's require rule"
                );
                return Err(Reply::from(Fault::Forbidden));
            }
        }
        let identity = if policy.identity_headers {
            identity(&session, &self.groups_claim, rid)
        } else {
            None
        };

        if let Some(audience) = policy.audience {
            return self
                .decide_route_token(
                    audience, session, &present, policy, facts, identity, refresher,
                )
                .await;
        }

        // The common case: a valid token, no renewal due. The token goes from the decrypted
        // payload straight into the header value, with no owned copy of the session.
        let refresh_due = self.refresh_due(session.access_expires_at, session.access_lifetime, now);
        let reseal_due = now.saturating_sub(session.last_seen) >= self.idle_reseal_after;
        if !refresh_due && !reseal_due {
            return self
                .grant(
                    &session.access_token,
                    &session,
                    policy,
                    rid,
                    identity,
                    Vec::new(),
                )
                .map_err(Reply::from);
        }
        let mut session = session.into_owned();
        drop(payload);

        let mut changed = false;
        if refresh_due {
            let still_valid = session.access_expires_at > now;
            match refresh_request(&session, now, rid, None) {
                Some(req) => {
                    let r = refresher.refresh(req).await;
                    changed = self.take_passed(&mut session, &r);
                    match r.outcome {
                        RefreshOutcome::Refreshed(tokens, issued_at) => {
                            refresh::apply(&mut session, &tokens, issued_at);
                            changed = true;
                        }
                        RefreshOutcome::Rejected(_) => return Err(self.expired(&present)),
                        // Keep the session; use the current token while it lasts.
                        RefreshOutcome::Unavailable | RefreshOutcome::Refused(_) if still_valid => {
                        }
                        RefreshOutcome::Unavailable | RefreshOutcome::Refused(_) => {
                            return Err(Reply::from(Fault::ProviderUnavailable)
                                .with_cookies(self.reseal(&session, &present, changed, now, rid)))
                        }
                    }
                }
                None if still_valid => {}
                None => return Err(self.expired(&present)),
            }
        }
        let set_cookies = self.renew(&mut session, &present, changed, now, rid);
        self.grant(
            &session.access_token,
            &session,
            policy,
            rid,
            identity,
            set_cookies,
        )
        .map_err(Reply::from)
    }

    /// A route with its own audience (`resource`, `scopes`): its kept token while it lasts,
    /// else a new one asked for with the session's refresh token. The session's own access
    /// token is not used, nor refreshed, here.
    #[allow(clippy::too_many_arguments)]
    async fn decide_route_token(
        &self,
        audience: &Arc<Audience>,
        session: Session<'_>,
        present: &SessionCookies<'_>,
        policy: Policy<'_>,
        facts: &Facts<'_>,
        identity: Option<Box<Identity>>,
        refresher: &impl Refresher,
    ) -> Result<Grant, Reply> {
        let (now, rid) = (facts.now, facts.request_id);
        if let Some(tag) = audience.resource_tag() {
            if !session.resources.contains(&tag) {
                // Configured after this session's login: the grant does not cover it, and
                // asking would spend the refresh token for a refusal. A new login asks for it.
                tracing::info!(
                    request_id = rid,
                    "the route's resource was not asked for at this session's login"
                );
                return Err(Reply::from(Fault::Unauthenticated));
            }
        }
        let kept = refresher.route_token(session.id, audience, now).await;
        if kept.as_ref().is_some_and(|t| t.refused) {
            return Err(Reply::from(Fault::InsufficientScope));
        }
        let fresh = kept
            .as_ref()
            .filter(|t| !self.refresh_due(t.expires_at, t.lifetime, now));
        let reseal_due = now.saturating_sub(session.last_seen) >= self.idle_reseal_after;
        if let (Some(t), false) = (fresh, reseal_due) {
            return self
                .grant(&t.access_token, &session, policy, rid, identity, Vec::new())
                .map_err(Reply::from);
        }
        let mut session = session.into_owned();
        let mut changed = false;
        let token: String = match fresh {
            Some(t) => t.access_token.clone(),
            None => {
                let still_valid = kept.filter(|t| t.expires_at > now);
                match refresh_request(&session, now, rid, Some(audience)) {
                    Some(req) => {
                        let r = refresher.refresh(req).await;
                        changed = self.take_passed(&mut session, &r);
                        let refused = |fault: Fault, session: &Session<'_>| {
                            Reply::from(fault)
                                .with_cookies(self.reseal(session, present, changed, now, rid))
                        };
                        match r.outcome {
                            RefreshOutcome::Refreshed(tokens, issued_at) => {
                                refresh::apply_rotation(&mut session, &tokens, issued_at);
                                changed |= tokens.refresh_token.is_some();
                                tokens.access_token.clone()
                            }
                            RefreshOutcome::Rejected(_) => return Err(self.expired(present)),
                            RefreshOutcome::Refused(_) => {
                                return Err(refused(Fault::InsufficientScope, &session))
                            }
                            RefreshOutcome::Unavailable => match still_valid {
                                Some(t) => t.access_token.clone(),
                                None => return Err(refused(Fault::ProviderUnavailable, &session)),
                            },
                        }
                    }
                    None => match (still_valid, &session.refresh_token) {
                        (Some(t), _) => t.access_token.clone(),
                        (None, Some(_)) => return Err(self.expired(present)),
                        (None, None) => {
                            tracing::warn!(
                                request_id = rid,
                                "a route with its own audience needs a refresh token; the provider gave this session none"
                            );
                            return Err(Reply::from(Fault::InsufficientScope));
                        }
                    },
                }
            }
        };
        let set_cookies = self.renew(&mut session, present, changed, now, rid);
        self.grant(&token, &session, policy, rid, identity, set_cookies)
            .map_err(Reply::from)
    }

    /// Takes the refresh tokens of the refreshes `r` passed through ([`Refresh::passed`]);
    /// whether the session changed.
    fn take_passed(&self, session: &mut Session<'static>, r: &Refresh) -> bool {
        refresh::apply_passed(session, &r.passed);
        !r.passed.is_empty()
    }

    /// `401 session_expired`, clearing the session's cookies.
    fn expired(&self, present: &SessionCookies<'_>) -> Reply {
        Reply::from(Fault::SessionExpired).with_cookies(self.codec.clear_cookie_lines(present))
    }

    /// Sliding expiration renews at half-life: the cookie is re-sealed once more than half of
    /// the idle window has passed, not on every request (a client that never stores the new
    /// cookie, like a load generator or a script, would otherwise cause a re-seal and an 8 KB
    /// Set-Cookie on every call). The `Set-Cookie` lines when the session changed.
    fn renew(
        &self,
        session: &mut Session<'static>,
        present: &SessionCookies<'_>,
        mut changed: bool,
        now: u64,
        rid: &str,
    ) -> Vec<String> {
        if now.saturating_sub(session.last_seen) >= self.idle_reseal_after {
            session.last_seen = now;
            changed = true;
        }
        self.reseal(session, present, changed, now, rid)
    }

    /// The session's `Set-Cookie` lines if it `changed` (also on a refusal: a refresh token
    /// rotated on the way must reach the browser whatever the reply).
    fn reseal(
        &self,
        session: &Session<'_>,
        present: &SessionCookies<'_>,
        changed: bool,
        now: u64,
        rid: &str,
    ) -> Vec<String> {
        if !changed {
            return Vec::new();
        }
        match self.codec.set_cookie_lines(session, present, now) {
            Ok(lines) => lines,
            Err(e) => {
                tracing::error!(request_id = rid, error = %e, "session could not be re-sealed");
                Vec::new()
            }
        }
    }

    /// The grant for a request: `access_token` presented as the route asks ([`Self::present`]).
    fn grant(
        &self,
        access_token: &str,
        session: &Session<'_>,
        policy: Policy<'_>,
        rid: &str,
        identity: Option<Box<Identity>>,
        set_cookies: Vec<String>,
    ) -> Result<Grant, Fault> {
        let (authorization, dpop) = self.present(access_token, session, policy, rid)?;
        Ok(Grant {
            bearer: Some(authorization),
            identity,
            dpop,
            set_cookies,
            affinity: affinity(session),
        })
    }

    /// How the session's access token goes upstream: `Bearer`, or `DPoP` with what the proof
    /// needs. A session without a DPoP key (from before `[oidc] dpop`) cannot use a DPoP
    /// route: `401`, log in again.
    fn present(
        &self,
        access_token: &str,
        session: &Session<'_>,
        policy: Policy<'_>,
        rid: &str,
    ) -> Result<(HeaderValue, Option<Box<DpopGrant>>), Fault> {
        if !policy.dpop {
            return Ok((bearer(access_token, rid)?, None));
        }
        let key = self.dpop_keys.get(session).map_err(|e| {
            tracing::info!(request_id = rid, error = %e, "a DPoP route and a session without a usable DPoP key");
            Fault::Unauthenticated
        })?;
        let value = headers::dpop_value(access_token).map_err(|_| {
            tracing::error!(
                request_id = rid,
                "the access token is not a valid header value"
            );
            Fault::Internal
        })?;
        Ok((
            value,
            Some(Box::new(DpopGrant {
                key,
                ath: crate::oidc::dpop::ath(access_token),
            })),
        ))
    }
}

/// A refresh with `session`'s refresh token for `audience` (`None`: the session's own token),
/// or `None` when it has no refresh token or the token is past its expiry.
fn refresh_request<'s>(
    session: &'s Session<'_>,
    now: u64,
    request_id: &'s str,
    audience: Option<&'s Arc<Audience>>,
) -> Option<RefreshRequest<'s>> {
    let refresh_token = session
        .refresh_token
        .as_deref()
        .filter(|_| session.refresh_expires_at.is_none_or(|at| at > now))?;
    Some(RefreshRequest {
        refresh_token,
        sub: &session.claims.sub,
        session_id: session.id,
        request_id,
        dpop_key: session.dpop_key.as_deref(),
        audience,
    })
}

/// Whether a token expiring at `expires_at`, issued for `lifetime` seconds (0: not known), is
/// due for a refresh at `now` with `[session] refresh_skew` = `skew`, and whether the skew was
/// capped. It is due once it expires within the skew, but the skew is at most half the
/// lifetime: a skew as long as the tokens live would refresh on every request, spending a
/// refresh token each time.
fn refresh_due(expires_at: u64, lifetime: u64, now: u64, skew: u64) -> (bool, bool) {
    let capped = lifetime > 0 && skew > lifetime / 2;
    let skew = if capped { lifetime / 2 } else { skew };
    (expires_at <= now.saturating_add(skew), capped)
}

fn bearer(token: &str, request_id: &str) -> Result<HeaderValue, Fault> {
    headers::bearer_value(token).map_err(|_| {
        tracing::error!(request_id, "the access token is not a valid header value");
        Fault::Internal
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::config::{CsrfConfig, SameSite, SessionConfig};
    use crate::oidc::token_client::TokenResponse;
    use crate::reply::CsrfError;

    const NOW: u64 = 1_800_000_000;

    struct Provider {
        outcome: RefreshOutcome,
        /// Refreshes for other purposes that came first ([`Refresh::passed`]).
        passed: Vec<refresh::Spent>,
        /// The route token kept for any (session, audience).
        kept: Option<Arc<AudienceToken>>,
        calls: AtomicUsize,
        /// The audience of the last refresh asked for.
        asked: std::sync::Mutex<Option<[u8; 16]>>,
    }

    impl Provider {
        fn answering(outcome: RefreshOutcome) -> Provider {
            Provider {
                outcome,
                passed: Vec::new(),
                kept: None,
                calls: AtomicUsize::new(0),
                asked: Default::default(),
            }
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::Relaxed)
        }
    }

    impl Refresher for Provider {
        fn refresh(&self, req: RefreshRequest<'_>) -> impl Future<Output = Refresh> + Send {
            assert_eq!(req.refresh_token, "rt-1");
            self.calls.fetch_add(1, Ordering::Relaxed);
            *self.asked.lock().unwrap() = req.audience.map(|a| a.id);
            std::future::ready(Refresh {
                passed: self.passed.clone(),
                outcome: self.outcome.clone(),
            })
        }

        fn route_token(
            &self,
            _session: u128,
            _audience: &Audience,
            now: u64,
        ) -> impl Future<Output = Option<Arc<AudienceToken>>> + Send {
            std::future::ready(self.kept.clone().filter(|t| t.expires_at > now))
        }
    }

    fn gate() -> Gate {
        gate_with_skew(30)
    }

    fn gate_with_skew(refresh_skew: u64) -> Gate {
        let codec = SessionCodec::new(
            &SessionConfig {
                cookie_name: "tg".into(),
                dropped_host_prefix: false,
                keys: vec![[7u8; 32]],
                same_site: SameSite::Lax,
                max_lifetime: Duration::from_secs(86_400),
                idle_timeout: Duration::from_secs(3_600),
                refresh_skew: Duration::from_secs(30),
            },
            true,
        );
        let csrf = CsrfPolicy::new(
            &CsrfConfig {
                header: http::HeaderName::from_static("x-csrf"),
                allowed_origins: vec![],
            },
            "https://app.example.com",
        );
        Gate::new(
            codec,
            Arc::default(),
            None,
            csrf,
            Metrics::new(),
            refresh_skew,
            3_600,
        )
    }

    fn session() -> Session<'static> {
        let mut s = crate::session::fixture::session(NOW - 10, "at-1");
        s.access_expires_at = NOW + 600;
        s.refresh_token = Some("rt-1".into());
        s
    }

    fn headers_with(
        gate: &Gate,
        session: Option<&Session<'_>>,
        extra: &[(&str, &str)],
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(s) = session {
            let lines = gate
                .codec
                .set_cookie_lines(s, &SessionCookies::default(), NOW)
                .unwrap();
            let cookie: Vec<&str> = lines.iter().map(|l| l.split(';').next().unwrap()).collect();
            h.insert("cookie", cookie.join("; ").parse().unwrap());
        }
        for (k, v) in extra {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    async fn decide(
        gate: &Gate,
        auth: RouteAuth,
        method: &Method,
        headers: &HeaderMap,
        provider: &Provider,
    ) -> Result<Grant, Reply> {
        let facts = Facts {
            method,
            query: None,
            headers,
            body: None,
            request_id: "rid",
            now: NOW,
        };
        gate.decide(Policy::auth(auth), &facts, provider).await
    }

    fn refused(r: Result<Grant, Reply>) -> (u16, String, usize) {
        let reply = r.expect_err("refused");
        let code = reply.as_fault().map(|f| f.code().to_string()).unwrap();
        (reply.status(), code, reply.set_cookies().len())
    }

    fn untouched() -> Provider {
        Provider::answering(RefreshOutcome::Unavailable)
    }

    /// A skew longer than half the token's lifetime is capped there: with 300 s and a 60 s
    /// token, not due 10 s after issue, due 31 s after. An unknown lifetime is not capped.
    #[test]
    fn the_refresh_skew_is_at_most_half_the_token_lifetime() {
        let issued = NOW;
        let expires = issued + 60;
        assert_eq!(refresh_due(expires, 60, issued + 10, 300), (false, true));
        assert_eq!(refresh_due(expires, 60, issued + 29, 300), (false, true));
        assert_eq!(refresh_due(expires, 60, issued + 31, 300), (true, true));
        // Under half the lifetime the skew is used as configured.
        assert_eq!(refresh_due(expires, 60, issued + 10, 20), (false, false));
        assert_eq!(refresh_due(expires, 60, issued + 41, 20), (true, false));
        assert_eq!(refresh_due(expires, 3_600, issued + 10, 300), (true, false));
        // A session sealed before lifetimes were recorded.
        assert_eq!(refresh_due(expires, 0, issued + 10, 300), (true, false));
    }

    /// The same through the gate, for the session's token and for a route's token: no
    /// provider call until half-way through a token's life, however long the skew.
    #[tokio::test]
    async fn a_long_skew_does_not_refresh_a_young_token() {
        let g = gate_with_skew(300);
        for (age, calls) in [(10, 0), (31, 1)] {
            let mut s = session();
            s.access_lifetime = 60;
            s.access_expires_at = NOW - age + 60;
            let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
            let p = Provider::answering(RefreshOutcome::Refreshed(issued("at-2", None), NOW));
            let grant = decide(&g, RouteAuth::Required, &Method::GET, &h, &p)
                .await
                .unwrap();
            assert_eq!(p.calls(), calls, "{age} s after issue");
            let want = if calls == 0 {
                "Bearer at-1"
            } else {
                "Bearer at-2"
            };
            assert_eq!(grant.bearer.unwrap(), want);

            let a = orders();
            let mut p =
                Provider::answering(RefreshOutcome::Refreshed(issued("orders-2", None), NOW));
            p.kept = Some(Arc::new(AudienceToken {
                access_token: "orders-1".into(),
                expires_at: NOW - age + 60,
                lifetime: 60,
                refused: false,
            }));
            decide_route(&g, &route_session(&a), &a, &p).await.unwrap();
            assert_eq!(p.calls(), calls, "route token, {age} s after issue");
        }
    }

    #[tokio::test]
    async fn a_valid_session_gets_its_bearer_and_no_cookie() {
        let g = gate();
        let h = headers_with(&g, Some(&session()), &[("x-csrf", "1")]);
        let p = untouched();
        let grant = decide(&g, RouteAuth::Required, &Method::GET, &h, &p)
            .await
            .unwrap();
        assert_eq!(grant.bearer.unwrap(), "Bearer at-1");
        assert!(grant.set_cookies.is_empty());
        assert_eq!(p.calls(), 0);
    }

    /// A `require` rule the session's claims fail is 403 before anything else happens (no
    /// refresh, no bearer); one they pass gets the bearer, and the identity when asked for.
    #[tokio::test]
    async fn claim_rules_and_identity() {
        use crate::claims::{ClaimRule, ClaimValue};
        let g = gate().with_groups_claim("roles");
        let mut s = session();
        s.access_expires_at = NOW + 5; // due: a refresh would be tried if the rule passed
        s.kept_claims = vec![
            (
                "roles".to_string(),
                ClaimValue::from_json(&serde_json::json!(["staff", "ops"])).unwrap(),
            ),
            (
                "email_verified".to_string(),
                ClaimValue::from_json(&serde_json::json!(true)).unwrap(),
            ),
        ]
        .into();
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        let rule = |text: &str| -> ClaimRule {
            #[derive(serde::Deserialize)]
            struct R {
                require: ClaimRule,
            }
            toml::from_str::<R>(text).unwrap().require
        };
        let facts = Facts {
            method: &Method::GET,
            query: None,
            headers: &h,
            body: None,
            request_id: "rid",
            now: NOW,
        };
        let admins = rule(r#"require = { roles = ["admin"] }"#);
        let p = untouched();
        let policy = Policy {
            auth: RouteAuth::Required,
            require: Some(&admins),
            identity_headers: true,
            dpop: false,
            audience: None,
        };
        let r = g.decide(policy, &facts, &p).await;
        assert_eq!(refused(r), (403, "forbidden".into(), 0));
        assert_eq!(p.calls(), 0, "no refresh for a request that is refused");

        let staff = rule(r#"require = { roles = "staff" }"#);
        let p = Provider::answering(RefreshOutcome::Unavailable);
        let grant = g
            .decide(
                Policy {
                    require: Some(&staff),
                    ..policy
                },
                &facts,
                &p,
            )
            .await
            .unwrap();
        let who = grant.identity.expect("identity headers asked for");
        assert_eq!(who.user, s.claims.sub.as_ref());
        assert_eq!(who.email.unwrap(), s.claims.email.as_deref().unwrap());
        assert_eq!(who.groups.unwrap(), "staff,ops");
        let grant = g
            .decide(Policy::auth(RouteAuth::Required), &facts, &p)
            .await
            .unwrap();
        assert!(grant.identity.is_none(), "only where the route asks");

        // A rule on a claim the session did not keep (added after its login): log in again,
        // not 403. An unverified email is not sent.
        let mut s2 = s.clone();
        s2.kept_claims = vec![(
            "roles".to_string(),
            ClaimValue::from_json(&serde_json::json!(["staff"])).unwrap(),
        )]
        .into();
        let h2 = headers_with(&g, Some(&s2), &[("x-csrf", "1")]);
        let facts2 = Facts {
            headers: &h2,
            ..facts
        };
        let tenants = rule(r#"require = { tenant = "acme" }"#);
        let r = g
            .decide(
                Policy {
                    require: Some(&tenants),
                    ..policy
                },
                &facts2,
                &p,
            )
            .await;
        assert_eq!(refused(r).0, 401);
        let grant = g
            .decide(
                Policy {
                    require: Some(&staff),
                    ..policy
                },
                &facts2,
                &p,
            )
            .await
            .unwrap();
        assert_eq!(
            grant.identity.unwrap().email,
            None,
            "email_verified not true"
        );
    }

    #[tokio::test]
    async fn no_session_is_401_without_cookies_and_optional_passes() {
        let g = gate();
        let h = headers_with(&g, None, &[("x-csrf", "1")]);
        let p = untouched();
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &p).await;
        assert_eq!(refused(r), (401, "unauthenticated".into(), 0));
        let grant = decide(&g, RouteAuth::Optional, &Method::GET, &h, &p)
            .await
            .unwrap();
        assert!(grant.bearer.is_none());
    }

    #[tokio::test]
    async fn a_forged_session_is_401_and_cleared() {
        let g = gate();
        let mut h = HeaderMap::new();
        h.insert("cookie", "tg=AAAAforged".parse().unwrap());
        h.insert("x-csrf", "1".parse().unwrap());
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &untouched()).await;
        assert_eq!(refused(r), (401, "unauthenticated".into(), 1));
    }

    #[tokio::test]
    async fn csrf_header_and_websocket_origin() {
        let g = gate();
        let p = untouched();
        let h = headers_with(&g, Some(&session()), &[]);
        let r = decide(&g, RouteAuth::Required, &Method::POST, &h, &p).await;
        assert_eq!(refused(r).1, "csrf_header_missing");
        // A browser's WebSocket handshake cannot carry x-csrf; its Origin decides.
        let ws = headers_with(
            &g,
            Some(&session()),
            &[
                ("upgrade", "websocket"),
                ("origin", "https://app.example.com"),
            ],
        );
        assert!(decide(&g, RouteAuth::Required, &Method::GET, &ws, &p)
            .await
            .is_ok());
        let ws = headers_with(
            &g,
            Some(&session()),
            &[("upgrade", "websocket"), ("origin", "https://evil.example")],
        );
        let r = decide(&g, RouteAuth::Required, &Method::GET, &ws, &p).await;
        assert_eq!(refused(r).1, Fault::Csrf(CsrfError::ForeignOrigin).code());
        let ws = headers_with(&g, Some(&session()), &[("upgrade", "websocket")]);
        let r = decide(&g, RouteAuth::Required, &Method::GET, &ws, &p).await;
        assert_eq!(refused(r).1, "origin_missing");
    }

    fn due() -> Session<'static> {
        let mut s = session();
        s.access_expires_at = NOW + 5;
        s
    }

    #[tokio::test]
    async fn a_due_token_is_refreshed_and_resealed() {
        let g = gate();
        let h = headers_with(&g, Some(&due()), &[("x-csrf", "1")]);
        let tokens = TokenResponse {
            access_token: "at-2".into(),
            token_type: "Bearer".into(),
            expires_in: Some(300),
            refresh_token: Some("rt-2".into()),
            refresh_expires_in: None,
            id_token: None,
            scope: None,
        };
        let p = Provider::answering(RefreshOutcome::Refreshed(Arc::new(tokens), NOW));
        let grant = decide(&g, RouteAuth::Required, &Method::GET, &h, &p)
            .await
            .unwrap();
        assert_eq!(p.calls(), 1);
        assert_eq!(grant.bearer.unwrap(), "Bearer at-2");
        assert!(!grant.set_cookies.is_empty());
    }

    #[tokio::test]
    async fn refresh_refused_ends_the_session_unavailable_keeps_it() {
        let g = gate();
        let h = headers_with(&g, Some(&due()), &[("x-csrf", "1")]);
        let p = Provider::answering(RefreshOutcome::Rejected("invalid_grant".into()));
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &p).await;
        assert_eq!(refused(r), (401, "session_expired".into(), 1));
        // Provider down: the still-valid token is used.
        let p = untouched();
        let grant = decide(&g, RouteAuth::Required, &Method::GET, &h, &p)
            .await
            .unwrap();
        assert_eq!(grant.bearer.unwrap(), "Bearer at-1");
        // Provider down and the token already expired: 503, session kept.
        let mut gone = due();
        gone.access_expires_at = NOW - 1;
        let h = headers_with(&g, Some(&gone), &[("x-csrf", "1")]);
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &p).await;
        assert_eq!(refused(r), (503, "provider_unavailable".into(), 0));
    }

    #[tokio::test]
    async fn a_refresh_token_past_its_expiry_ends_the_session_without_the_provider() {
        let g = gate();
        let mut s = due();
        s.refresh_expires_at = Some(NOW - 1);
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        let p = untouched();
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &p).await;
        // The current token is still valid for a few seconds: it is used...
        assert!(r.is_ok());
        s.access_expires_at = NOW - 1;
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &p).await;
        // ...and once it is gone, so is the session.
        assert_eq!(refused(r), (401, "session_expired".into(), 1));
        assert_eq!(p.calls(), 0);
    }

    #[tokio::test]
    async fn a_revoked_session_is_401_and_cleared() {
        let g = gate();
        let s = session();
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        g.revoke(
            Revocation::Session {
                id: s.id,
                until: NOW + 3_600,
            },
            "logout",
            NOW,
        )
        .await
        .unwrap();
        let r = decide(&g, RouteAuth::Required, &Method::GET, &h, &untouched()).await;
        assert_eq!(refused(r), (401, "unauthenticated".into(), 1));
    }

    #[tokio::test]
    async fn idle_window_is_renewed_at_half_life() {
        let g = gate();
        let mut s = session();
        s.last_seen = NOW - 1_800;
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        let grant = decide(&g, RouteAuth::Required, &Method::GET, &h, &untouched())
            .await
            .unwrap();
        assert!(!grant.set_cookies.is_empty());
    }

    #[test]
    fn screen_refuses_trace_hostless_http11_and_bad_targets() {
        let mut h = HeaderMap::new();
        let s = |m: &Method, v, h: &HeaderMap, t: &str| {
            screen(m, v, h, t.as_bytes(), t, 12288, "rid").map(|_| ())
        };
        assert_eq!(
            s(&Method::GET, Version::HTTP_11, &h, "/api"),
            Err(Fault::BadRequest)
        );
        assert_eq!(s(&Method::GET, Version::HTTP_10, &h, "/api"), Ok(()));
        h.insert("host", "app".parse().unwrap());
        assert_eq!(s(&Method::GET, Version::HTTP_11, &h, "/api"), Ok(()));
        assert_eq!(
            s(&Method::TRACE, Version::HTTP_11, &h, "/api"),
            Err(Fault::MethodNotAllowed)
        );
        assert_eq!(
            s(&Method::GET, Version::HTTP_11, &h, "//api/admin"),
            Err(Fault::BadPath)
        );
    }

    fn orders() -> Arc<Audience> {
        Arc::new(Audience::new(
            Some("https://orders.example.com".into()),
            &["orders:read".to_string()],
        ))
    }

    fn issued(at: &str, rt: Option<&str>) -> Arc<TokenResponse> {
        Arc::new(TokenResponse {
            access_token: at.into(),
            token_type: "Bearer".into(),
            expires_in: Some(300),
            refresh_token: rt.map(Into::into),
            refresh_expires_in: None,
            id_token: None,
            scope: None,
        })
    }

    async fn decide_route(
        g: &Gate,
        session: &Session<'_>,
        audience: &Arc<Audience>,
        p: &Provider,
    ) -> Result<Grant, Reply> {
        let h = headers_with(g, Some(session), &[("x-csrf", "1")]);
        let facts = Facts {
            method: &Method::GET,
            query: None,
            headers: &h,
            body: None,
            request_id: "rid",
            now: NOW,
        };
        let mut policy = Policy::auth(RouteAuth::Required);
        policy.audience = Some(audience);
        g.decide(policy, &facts, p).await
    }

    /// The session's cookie in `lines`, opened.
    fn reopened(g: &Gate, lines: &[String]) -> Session<'static> {
        let cookie: Vec<&str> = lines.iter().map(|l| l.split(';').next().unwrap()).collect();
        let mut h = HeaderMap::new();
        h.insert("cookie", cookie.join("; ").parse().unwrap());
        let (_, payload) = g
            .codec
            .open(h.get_all("cookie").iter().map(|v| v.to_str().unwrap()));
        g.codec.decode(&payload.unwrap(), NOW).unwrap().into_owned()
    }

    fn route_session(audience: &Audience) -> Session<'static> {
        let mut s = session();
        s.resources = vec![audience.resource_tag().unwrap()].into();
        s
    }

    /// A kept route token goes upstream instead of the session's, with no provider call.
    #[tokio::test]
    async fn a_kept_route_token_is_used_without_asking() {
        let (g, a) = (gate(), orders());
        let mut p = untouched();
        p.kept = Some(Arc::new(AudienceToken {
            access_token: "orders-at".into(),
            expires_at: NOW + 600,
            lifetime: 3_600,
            refused: false,
        }));
        let grant = decide_route(&g, &route_session(&a), &a, &p).await.unwrap();
        assert_eq!(grant.bearer.unwrap(), "Bearer orders-at");
        assert!(grant.set_cookies.is_empty());
        assert_eq!(p.calls(), 0);
    }

    /// No kept token (or one about to expire): one is asked for with the route's audience;
    /// the refresh token it rotated to goes into the cookie, the session's own access token
    /// stays.
    #[tokio::test]
    async fn a_route_token_is_asked_for_and_the_rotation_kept() {
        let (g, a) = (gate(), orders());
        let mut p = Provider::answering(RefreshOutcome::Refreshed(
            issued("orders-at", Some("rt-2")),
            NOW,
        ));
        p.kept = Some(Arc::new(AudienceToken {
            access_token: "stale".into(),
            expires_at: NOW + 5,
            lifetime: 3_600,
            refused: false,
        }));
        let grant = decide_route(&g, &route_session(&a), &a, &p).await.unwrap();
        assert_eq!(grant.bearer.unwrap(), "Bearer orders-at");
        assert_eq!(p.calls(), 1);
        assert_eq!(*p.asked.lock().unwrap(), Some(a.id));
        let s = reopened(&g, &grant.set_cookies);
        assert_eq!(s.refresh_token.as_deref(), Some("rt-2"));
        assert_eq!(
            s.access_token, "at-1",
            "the session's own token is not the route's"
        );
    }

    /// The refresh token was spent first for the session's own token (another request): the
    /// cookie takes that refresh's tokens too.
    #[tokio::test]
    async fn refreshes_passed_on_the_way_reach_the_cookie() {
        let (g, a) = (gate(), orders());
        let mut p = Provider::answering(RefreshOutcome::Refreshed(
            issued("orders-at", Some("rt-3")),
            NOW,
        ));
        p.passed = vec![refresh::Spent {
            purpose: refresh::Purpose::SESSION,
            outcome: RefreshOutcome::Refreshed(issued("at-2", Some("rt-2")), NOW),
        }];
        let grant = decide_route(&g, &route_session(&a), &a, &p).await.unwrap();
        let s = reopened(&g, &grant.set_cookies);
        assert_eq!(s.access_token, "at-2");
        assert_eq!(s.refresh_token.as_deref(), Some("rt-3"));
    }

    /// The provider refuses the audience: 403 `insufficient_scope` for this route, the
    /// session kept (no cookie cleared); a rotation passed on the way still reaches it.
    #[tokio::test]
    async fn a_refused_audience_is_403_and_keeps_the_session() {
        let (g, a) = (gate(), orders());
        let p = Provider::answering(RefreshOutcome::Refused("invalid_target".into()));
        let r = decide_route(&g, &route_session(&a), &a, &p).await;
        assert_eq!(refused(r), (403, "insufficient_scope".into(), 0));

        // A remembered refusal: 403 without asking.
        let mut p = untouched();
        p.kept = Some(Arc::new(AudienceToken {
            access_token: String::new(),
            expires_at: NOW + 30,
            lifetime: 3_600,
            refused: true,
        }));
        let r = decide_route(&g, &route_session(&a), &a, &p).await;
        assert_eq!(refused(r).0, 403);
        assert_eq!(p.calls(), 0);

        let mut p = Provider::answering(RefreshOutcome::Refused("invalid_scope".into()));
        p.passed = vec![refresh::Spent {
            purpose: refresh::Purpose::SESSION,
            outcome: RefreshOutcome::Refreshed(issued("at-2", Some("rt-2")), NOW),
        }];
        let reply = decide_route(&g, &route_session(&a), &a, &p)
            .await
            .expect_err("refused");
        assert_eq!(reply.status(), 403);
        let s = reopened(&g, reply.set_cookies());
        assert_eq!(s.refresh_token.as_deref(), Some("rt-2"));
    }

    /// A resource configured after the session's login: 401 (log in again) without spending
    /// the refresh token on a refusal.
    #[tokio::test]
    async fn a_resource_the_login_did_not_ask_for_is_401() {
        let (g, a) = (gate(), orders());
        let p = untouched();
        let r = decide_route(&g, &session(), &a, &p).await;
        assert_eq!(refused(r).0, 401);
        assert_eq!(p.calls(), 0);
    }

    /// The provider is down: a kept token that has not expired yet is used; without one, 503.
    #[tokio::test]
    async fn a_route_token_outlives_an_outage_until_it_expires() {
        let (g, a) = (gate(), orders());
        let mut p = untouched();
        p.kept = Some(Arc::new(AudienceToken {
            access_token: "orders-at".into(),
            expires_at: NOW + 5,
            lifetime: 3_600,
            refused: false,
        }));
        let grant = decide_route(&g, &route_session(&a), &a, &p).await.unwrap();
        assert_eq!(grant.bearer.unwrap(), "Bearer orders-at");
        p.kept = None;
        let r = decide_route(&g, &route_session(&a), &a, &p).await;
        assert_eq!(refused(r).0, 503);
    }
}
