//! The decision core: what to do with a request on a route, without Pingora.
//!
//! [`Gate::decide`] takes the route's rules ([`Policy`]), the request's [`Facts`] and the time,
//! and returns either a [`Grant`] — the `Authorization` value for the upstream, the identity
//! headers and the cookies to set on its response — or the [`Reply`] to send instead. It runs
//! in three steps, each a short function:
//!
//! 1. open the session and check it: CSRF, the route's claim rule ([`Gate::admit`]);
//! 2. pick the token: the session's own, or the route's audience token ([`Source`]); use it
//!    while it is not due, else refresh, and look the outcome up in one table
//!    ([`after_refresh`]);
//! 3. carry out the cookie work once, at the end ([`Sessions::cookie_lines`]).
//!
//! The provider is reached only through [`Refresher`], so a unit test drives every branch
//! (missing, forged, expired session; CSRF; refresh refused, unavailable, accepted; idle
//! renewal) with a stand-in, and the Pingora adapter in [`super`] only moves facts in and
//! results out.

mod grant;
mod plan;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::credential::DpopKeys;
use super::headers::Identity;
use super::identity::identity;
use crate::config::{Audience, RouteAuth};
use crate::oidc::audience_tokens::AudienceToken;
use crate::oidc::refresh::{self, RefreshOutcome};
use crate::ops::metrics::Metrics;
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::cookie::{ChunkError, SessionCookies};
use crate::session::{Session, SessionError};
use crate::sessions::{CookieWork, Sessions};
use grant::affinity;
pub(crate) use grant::{Grant, Policy, Refresher};
use plan::{
    after_refresh, refresh_due, refresh_request, reseal_if, take, Attempt, Current, Next, Source,
};

/// The session rules of the hot path, built once from the config.
#[derive(Debug)]
pub(crate) struct Gate {
    sessions: Arc<Sessions>,
    metrics: Metrics,
    refresh_skew: u64,
    /// Set once `refresh_skew` was first capped at half a token's lifetime (logged once).
    skew_capped: AtomicBool,
    idle_reseal_after: u64,
    /// The claim that lists the user's groups (`[oidc] groups_claim`).
    groups_claim: String,
    /// Other providers' `groups_claim`, where it differs, by provider name.
    other_groups_claims: Vec<(String, String)>,
    /// Sessions' DPoP keys, loaded once.
    dpop_keys: DpopKeys,
}

impl Gate {
    pub(crate) fn new(
        sessions: Arc<Sessions>,
        metrics: Metrics,
        refresh_skew: u64,
        idle_timeout: u64,
    ) -> Gate {
        Gate {
            sessions,
            metrics,
            refresh_skew,
            skew_capped: AtomicBool::new(false),
            idle_reseal_after: (idle_timeout / 2).max(1),
            groups_claim: "groups".into(),
            other_groups_claims: Vec::new(),
            dpop_keys: DpopKeys::default(),
        }
    }

    /// Reads the user's groups from `claim` (default `groups`).
    pub(crate) fn with_groups_claim(mut self, claim: &str) -> Gate {
        self.groups_claim = claim.to_string();
        self
    }

    /// Reads the groups of provider `provider`'s sessions from `claim`.
    pub(crate) fn with_provider_groups_claim(mut self, provider: &str, claim: &str) -> Gate {
        if claim != self.groups_claim {
            self.other_groups_claims
                .push((provider.to_string(), claim.to_string()));
        }
        self
    }

    /// The groups claim of `session`'s provider.
    fn groups_claim(&self, session: &Session<'_>) -> &str {
        let provider = session.provider_name();
        self.other_groups_claims
            .iter()
            .find(|(p, _)| p == provider)
            .map_or(self.groups_claim.as_str(), |(_, c)| c.as_str())
    }

    /// The session service the gate decides with.
    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
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

    /// Whether the session's cookie is due for its sliding renewal: once more than half of
    /// the idle window has passed, not on every request (a client that never stores the new
    /// cookie, like a load generator or a script, would otherwise cause a re-seal and an 8 KB
    /// Set-Cookie on every call).
    fn renewal_due(&self, session: &Session<'_>, now: u64) -> bool {
        now.saturating_sub(session.last_seen) >= self.idle_reseal_after
    }

    /// Decides a request on a route with `policy`. Refreshes the token when it is due and
    /// re-seals the cookie when the session changed; the cookie lines are made once, here.
    pub(crate) async fn decide(
        &self,
        policy: Policy<'_>,
        facts: &Facts<'_>,
        refresher: &impl Refresher,
    ) -> Result<Grant, Reply> {
        if policy.auth == RouteAuth::None {
            return Ok(Grant::default());
        }
        let opened = self.sessions.open(facts).await;
        let (verdict, work) = match self.sessions.session(&opened.payload, facts) {
            Ok(session) => {
                let (verdict, work) = self
                    .with_session(session, &opened.present, policy, facts, refresher)
                    .await;
                match work {
                    // A cookie session met under `storage = "store"` moves in now.
                    CookieWork::Keep if opened.moved => match &opened.payload {
                        Ok(p) => (verdict, CookieWork::Reseal(Box::new(p.session().clone()))),
                        Err(_) => (verdict, work),
                    },
                    work => (verdict, work),
                }
            }
            // Not a logout: the store holding the session did not answer.
            Err(SessionError::StoreUnavailable) => (Err(Fault::StoreUnavailable), CookieWork::Keep),
            Err(_) if policy.auth == RouteAuth::Optional => return Ok(Grant::default()),
            // Nothing to clear when nothing came.
            Err(SessionError::Cookie(ChunkError::Missing)) => {
                (Err(Fault::Unauthenticated), CookieWork::Keep)
            }
            Err(e) => (Err(self.no_session(e)), CookieWork::Clear),
        };
        let lines = self.sessions.cookie_lines(work, &opened, facts).await;
        match verdict {
            Ok(mut grant) => {
                grant.set_cookies = lines;
                Ok(grant)
            }
            Err(fault) => Err(Reply::from(fault).with_cookies(lines)),
        }
    }

    /// The fault for a session that did not open.
    fn no_session(&self, e: SessionError) -> Fault {
        match e {
            SessionError::Cookie(ChunkError::TooManyChunks) => {
                self.metrics.limit("session_chunks");
                Fault::CookieTooLarge
            }
            _ => Fault::Unauthenticated,
        }
    }

    /// Step 1: whether `session` may make this request at all (CSRF, the route's claim rule).
    fn admit(
        &self,
        session: &Session<'_>,
        policy: Policy<'_>,
        facts: &Facts<'_>,
    ) -> Result<(), Fault> {
        self.sessions
            .csrf()
            .check(facts.headers, facts.method)
            .map_err(Fault::Csrf)?;
        let provider = session.provider_name();
        if !policy.providers.is_empty() && !policy.providers.iter().any(|p| p == provider) {
            tracing::info!(
                request_id = facts.request_id,
                provider,
                "the route does not take sessions of this provider"
            );
            return Err(Fault::WrongProvider);
        }
        let Some(rule) = policy.require else {
            return Ok(());
        };
        if rule.asks_unknown(&session.kept_claims) {
            // Logged in before the rule named this claim: log in again to keep it (a 403
            // would lock out members of the group until the session ends).
            tracing::info!(
                request_id = facts.request_id,
                "the route's require rule reads a claim this session did not keep"
            );
            return Err(Fault::Unauthenticated);
        }
        if !rule.allows(&session.kept_claims) {
            tracing::info!(
                request_id = facts.request_id,
                sub = %session.claims.sub,
                "the session's claims do not satisfy the route's require rule"
            );
            return Err(Fault::Forbidden);
        }
        if let Some(step_up) = rule.step_up() {
            if !step_up.satisfied(&session.kept_claims, facts.now) {
                tracing::info!(
                    request_id = facts.request_id,
                    "the session's login is not strong or recent enough for the route: step-up"
                );
                self.metrics.step_up(provider, "route");
                return Err(step_up_required(
                    provider,
                    (!step_up.acr.is_empty()).then(|| step_up.acr_values()),
                    step_up.max_age,
                ));
            }
        }
        Ok(())
    }

    /// A route's token before any refresh: `Err` when the route cannot be served from this
    /// session at all, else the kept token if there is one.
    async fn route_token(
        &self,
        audience: &Arc<Audience>,
        session: &Session<'_>,
        facts: &Facts<'_>,
        refresher: &impl Refresher,
    ) -> Result<Option<Arc<AudienceToken>>, Fault> {
        if let Some(tag) = audience.resource_tag() {
            if !session.resources.contains(&tag) {
                // Configured after this session's login: the grant does not cover it, and
                // asking would spend the refresh token for a refusal. A new login asks for it.
                tracing::info!(
                    request_id = facts.request_id,
                    "the route's resource was not asked for at this session's login"
                );
                return Err(Fault::Unauthenticated);
            }
        }
        let kept = refresher
            .route_token(session.provider_name(), session.id, audience, facts.now)
            .await;
        if kept.as_ref().is_some_and(|t| t.refused) {
            return Err(Fault::InsufficientScope);
        }
        Ok(kept)
    }

    /// Steps 1 and 2 for an open session: the verdict, and what to do with the cookies.
    async fn with_session(
        &self,
        session: Session<'_>,
        present: &SessionCookies<'_>,
        policy: Policy<'_>,
        facts: &Facts<'_>,
        refresher: &impl Refresher,
    ) -> (Result<Grant, Fault>, CookieWork) {
        let (now, rid) = (facts.now, facts.request_id);
        if let Err(fault) = self.admit(&session, policy, facts) {
            return (Err(fault), CookieWork::Keep);
        }
        // A session bound to its device needs the device's proof on every request.
        if self
            .sessions
            .check_device(&session, present, facts)
            .is_err()
        {
            return (Err(Fault::DeviceProofRequired), CookieWork::Keep);
        }
        if policy.require_device_binding && session.device_key.is_none() {
            return (Err(Fault::DeviceBindingRequired), CookieWork::Keep);
        }
        let identity = if policy.identity_headers {
            identity(&session, self.groups_claim(&session), rid)
        } else {
            None
        };
        let source = match policy.audience {
            Some(a) => Source::Route(a),
            None => Source::Session,
        };
        let kept = match &source {
            Source::Session => None,
            Source::Route(a) => match self.route_token(a, &session, facts, refresher).await {
                Ok(kept) => kept,
                Err(fault) => return (Err(fault), CookieWork::Keep),
            },
        };
        let current = match &source {
            Source::Session => Some(Current {
                token: &*session.access_token,
                expires_at: session.access_expires_at,
                lifetime: session.access_lifetime,
            }),
            Source::Route(_) => kept.as_deref().map(|t| Current {
                token: t.access_token.as_str(),
                expires_at: t.expires_at,
                lifetime: t.lifetime,
            }),
        };
        let due = current
            .as_ref()
            .is_none_or(|c| self.refresh_due(c.expires_at, c.lifetime, now));

        // The common case: a valid token, no renewal due. The token goes from the decrypted
        // payload straight into the header value, with no owned copy of the session.
        if !due && !self.renewal_due(&session, now) {
            if let Some(c) = &current {
                let grant = self.grant(c.token, &session, policy, rid, identity);
                return (grant, CookieWork::Keep);
            }
        }
        let current = current.map(|c| Current {
            token: c.token.to_owned(),
            expires_at: c.expires_at,
            lifetime: c.lifetime,
        });
        let mut session = session.into_owned();
        let last_seen = session.last_seen;
        let (token, refreshed) = if due {
            match self
                .refresh(&source, &mut session, current, facts, refresher)
                .await
            {
                Ok(taken) => taken,
                Err((fault, work)) => return (Err(fault), work),
            }
        } else {
            // Not due: only the renewal below.
            (current.map(|c| c.token).unwrap_or_default(), false)
        };
        let renewed = self.renewal_due(&session, now);
        if renewed {
            session.last_seen = now;
        }
        match self.grant(&token, &session, policy, rid, identity) {
            Ok(grant) => (Ok(grant), reseal_if(refreshed || renewed, session)),
            // Refused after all: the tokens a refresh brought still reach the browser (a
            // rotated refresh token must not be lost), but a refusal renews nothing.
            Err(fault) if refreshed => {
                session.last_seen = last_seen;
                (Err(fault), reseal_if(true, session))
            }
            Err(fault) => (Err(fault), CookieWork::Keep),
        }
    }

    /// Refreshes the token of `source`, which is due: the token to use and whether the session
    /// changed, or the refusal and its cookie work ([`after_refresh`]).
    async fn refresh(
        &self,
        source: &Source<'_>,
        session: &mut Session<'static>,
        current: Option<Current<String>>,
        facts: &Facts<'_>,
        refresher: &impl Refresher,
    ) -> Result<(String, bool), (Fault, CookieWork)> {
        let (now, rid) = (facts.now, facts.request_id);
        let audience = match source {
            Source::Session => None,
            Source::Route(a) => Some(*a),
        };
        let still_valid = current.filter(|c| c.expires_at > now);
        let mut changed = false;
        let mut new_token = None;
        let attempt = match refresh_request(session, now, rid, audience) {
            Some(req) => {
                let r = refresher.refresh(req).await;
                refresh::apply_passed(session, &r.passed);
                changed = !r.passed.is_empty();
                match r.outcome {
                    RefreshOutcome::Refreshed(tokens, issued_at) => {
                        changed |= take(source, session, &tokens, issued_at);
                        new_token = Some(tokens.access_token.clone());
                        Attempt::Refreshed
                    }
                    RefreshOutcome::Rejected(_) => Attempt::Rejected,
                    RefreshOutcome::Refused(_) => Attempt::Refused,
                    RefreshOutcome::Unavailable => Attempt::Unavailable,
                }
            }
            None => Attempt::NoRefreshToken {
                expired: session.refresh_token.is_some(),
            },
        };
        let next = after_refresh(source, attempt, still_valid.is_some());
        if matches!(source, Source::Route(_))
            && next == Next::Refuse(Fault::InsufficientScope)
            && attempt == (Attempt::NoRefreshToken { expired: false })
        {
            tracing::warn!(
                request_id = rid,
                "a route with its own audience needs a refresh token; the provider gave this session none"
            );
        }
        match (next, new_token, still_valid) {
            (Next::UseNew, Some(token), _) => Ok((token, changed)),
            (Next::UseCurrent, _, Some(c)) => Ok((c.token, changed)),
            (Next::Expire, ..) => Err((Fault::SessionExpired, CookieWork::Clear)),
            (Next::Refuse(fault), ..) => Err((fault, reseal_if(changed, session.clone()))),
            // Not reached: `UseNew` comes with a token, `UseCurrent` with a valid one.
            _ => Err((Fault::Internal, CookieWork::Keep)),
        }
    }

    /// The grant for a request: `access_token` presented as the route asks.
    fn grant(
        &self,
        access_token: &str,
        session: &Session<'_>,
        policy: Policy<'_>,
        rid: &str,
        identity: Option<Box<Identity>>,
    ) -> Result<Grant, Fault> {
        let (authorization, dpop) =
            self.dpop_keys
                .present(access_token, session, policy.dpop, rid)?;
        Ok(Grant {
            bearer: Some(authorization),
            identity,
            dpop,
            set_cookies: Vec::new(),
            affinity: affinity(session),
            provider: session.provider.as_deref().map(Box::from),
        })
    }
}

/// `401 step_up_required` (RFC 9470) for a session of `provider`: the login link asks that
/// provider for `acr_values` and `max_age` (the SPA adds its `return_to`).
pub(crate) fn step_up_required(
    provider: &str,
    acr_values: Option<String>,
    max_age: Option<u64>,
) -> Fault {
    // The session's provider, named even when it is the default one: a chooser or a host
    // that maps to another provider must not send the step-up elsewhere.
    let mut login = url::form_urlencoded::Serializer::new(String::new());
    login.append_pair("provider", provider);
    if let Some(acr) = &acr_values {
        login.append_pair("acr_values", acr);
    }
    if let Some(max_age) = max_age {
        login.append_pair("max_age", &max_age.to_string());
    }
    Fault::StepUpRequired(Box::new(crate::reply::StepUpAsk {
        login: format!("/login?{}", login.finish()),
        acr_values,
        max_age,
    }))
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use crate::oidc::refresh::{Refresh, RefreshRequest};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use http::{HeaderMap, Method};

    use super::*;
    use crate::config::{CsrfConfig, SameSite, SessionConfig};
    use crate::oidc::token_client::TokenResponse;
    use crate::reply::CsrfError;
    use crate::session::cookie::SessionCookies;
    use crate::session::revocations::Revocation;
    use crate::session::SessionCodec;
    use crate::sessions::csrf::CsrfPolicy;

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
            _provider: &str,
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
                storage: Default::default(),
                device_binding: Default::default(),
                bound_cookie_lifetime: Duration::from_secs(300),
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
            Arc::new(Sessions::new(
                codec,
                Arc::default(),
                None,
                csrf,
                Metrics::new(),
                crate::config::Storage::Cookie,
            )),
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
                .sessions
                .codec()
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
            client: None,
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

    /// DBSC on the hot path: a session bound to a device needs its own fresh bound cookie on
    /// every request (401 `device_proof_required`); a route that requires a binding refuses an
    /// unbound session (403 `device_binding_required`).
    #[tokio::test]
    async fn a_bound_session_needs_its_fresh_bound_cookie() {
        use crate::session::dbsc::seal_bound;
        let g = gate();
        let p = untouched();
        let mut bound = session();
        bound.device_key = Some(vec![4u8; 65].into());
        let sealer = g.sessions.codec().sealer().clone();
        let cookie = |id: u128, until: u64| {
            format!(
                "tg-bound={}",
                seal_bound(&sealer, "tg-bound", id, until).unwrap()
            )
        };
        fn facts(h: &HeaderMap) -> Facts<'_> {
            Facts {
                method: &Method::GET,
                query: None,
                headers: h,
                body: None,
                request_id: "rid",
                now: NOW,
                client: None,
            }
        }
        let required = Policy::auth(RouteAuth::Required);
        let binding = Policy {
            require_device_binding: true,
            providers: &[],
            ..Policy::auth(RouteAuth::Required)
        };
        for (what, extra, policy, want) in [
            ("no bound cookie", None, required, Some(401)),
            (
                "another session's",
                Some(cookie(bound.id ^ 1, NOW + 60)),
                required,
                Some(401),
            ),
            ("expired", Some(cookie(bound.id, NOW)), required, Some(401)),
            ("fresh", Some(cookie(bound.id, NOW + 60)), required, None),
            (
                "fresh, on a route that requires it",
                Some(cookie(bound.id, NOW + 60)),
                binding,
                None,
            ),
        ] {
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|c| ("cookie", c.as_str()))
                .chain([("x-csrf", "1")])
                .collect();
            let h = headers_with(&g, Some(&bound), &extra);
            let f = facts(&h);
            let r = g.decide(policy, &f, &p).await;
            match want {
                Some(status) => {
                    let (s, code, cookies) = refused(r);
                    assert_eq!(
                        (s, code.as_str(), cookies),
                        (status, "device_proof_required", 0),
                        "{what}"
                    );
                }
                None => assert!(r.is_ok(), "{what}"),
            }
        }
        // An unbound session works as before, except where a binding is required.
        let h = headers_with(&g, Some(&session()), &[("x-csrf", "1")]);
        assert!(g.decide(required, &facts(&h), &p).await.is_ok());
        let (s, code, _) = refused(g.decide(binding, &facts(&h), &p).await);
        assert_eq!((s, code.as_str()), (403, "device_binding_required"));
    }

    /// A request refused at the last step (a DPoP route, and a session without a DPoP key)
    /// still sends the browser what a refresh on the way brought (the rotated refresh token),
    /// but without renewing the session; a refusal with nothing refreshed sets no cookie.
    #[tokio::test]
    async fn a_refusal_after_a_refresh_keeps_the_rotated_token() {
        let g = gate();
        let policy = Policy {
            dpop: true,
            ..Policy::auth(RouteAuth::Required)
        };
        let facts = |h| Facts {
            method: &Method::GET,
            query: None,
            headers: h,
            body: None,
            request_id: "rid",
            now: NOW,
            client: None,
        };
        // Due, and idle long enough for a renewal too.
        let mut s = session();
        s.access_expires_at = NOW + 5;
        s.last_seen = NOW - 1_800;
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        let p = Provider::answering(RefreshOutcome::Refreshed(issued("at-2", Some("rt-2")), NOW));
        let reply = g
            .decide(policy, &facts(&h), &p)
            .await
            .expect_err("no DPoP key");
        assert_eq!(reply.status(), 401);
        let kept = reopened(&g, reply.set_cookies());
        assert_eq!(kept.refresh_token.as_deref(), Some("rt-2"));
        assert_eq!(kept.last_seen, NOW - 1_800, "a refusal renews nothing");
        // Only the renewal due: refused without a cookie.
        let mut s = session();
        s.last_seen = NOW - 1_800;
        let h = headers_with(&g, Some(&s), &[("x-csrf", "1")]);
        let reply = g
            .decide(policy, &facts(&h), &untouched())
            .await
            .expect_err("no DPoP key");
        assert_eq!((reply.status(), reply.set_cookies().len()), (401, 0));
    }

    /// The one table of refresh outcomes, row by row, for both token sources.
    #[test]
    fn the_refresh_outcome_table() {
        let a = orders();
        let route = Source::Route(&a);
        let s = Source::Session;
        let scope = Next::Refuse(Fault::InsufficientScope);
        let down = Next::Refuse(Fault::ProviderUnavailable);
        let none = |expired| Attempt::NoRefreshToken { expired };
        #[rustfmt::skip]
        let rows = [
            // attempt,              still valid, session's token,   route's token
            (Attempt::Refreshed,     false,       Next::UseNew,      Next::UseNew),
            (Attempt::Rejected,      true,        Next::Expire,      Next::Expire),
            (Attempt::Refused,       true,        Next::UseCurrent,  scope.clone()),
            (Attempt::Refused,       false,       down.clone(),      scope.clone()),
            (Attempt::Unavailable,   true,        Next::UseCurrent,  Next::UseCurrent),
            (Attempt::Unavailable,   false,       down.clone(),      down.clone()),
            (none(true),             true,        Next::UseCurrent,  Next::UseCurrent),
            (none(true),             false,       Next::Expire,      Next::Expire),
            (none(false),            false,       Next::Expire,      scope.clone()),
        ];
        for (attempt, valid, own, routed) in rows {
            assert_eq!(
                after_refresh(&s, attempt, valid),
                own,
                "{attempt:?} {valid}"
            );
            assert_eq!(
                after_refresh(&route, attempt, valid),
                routed,
                "{attempt:?} {valid}"
            );
        }
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
            client: None,
        };
        let admins = rule(r#"require = { roles = ["admin"] }"#);
        let p = untouched();
        let policy = Policy {
            auth: RouteAuth::Required,
            require: Some(&admins),
            identity_headers: true,
            dpop: false,
            audience: None,
            require_device_binding: false,
            providers: &[],
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
        g.sessions
            .revoke(
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
            client: None,
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
            .sessions
            .codec()
            .open(h.get_all("cookie").iter().map(|v| v.to_str().unwrap()));
        g.sessions
            .codec()
            .decode(&payload.unwrap(), NOW)
            .unwrap()
            .into_owned()
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
