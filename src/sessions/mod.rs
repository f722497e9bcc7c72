//! The session service: everything that reads, checks or changes a user's session, in one place.
//!
//! A session is sealed ([`crate::session`]) and lives either whole in the browser's cookies
//! (`[session] storage = "cookie"`) or in the store behind a small sealed handle
//! (`storage = "store"`, [`records`]); what may be done with one lives here: opening it
//! (checked against the time and the revocation list), the CSRF rules a request carrying it
//! must pass, starting and ending it, revoking it (here and, through the store, on every
//! replica), listing and ending a user's sessions, the logout-token ids already seen, and the
//! `Set-Cookie` lines a response carries.
//!
//! The gate (the hot path), tollgate's own endpoints, `/logout`, back-channel logout and the
//! admin API all use it; none of them knows where sessions live. Switching `storage` keeps
//! people logged in where it can: under `"store"`, a whole cookie session is moved into the
//! store on its next request ([`Opened::moved`]); under `"cookie"`, a handle opens to a clean
//! `401` ([`SessionError::Handle`]).

pub(crate) mod csrf;
pub(crate) mod device;
pub(crate) mod records;

use std::sync::Arc;

use crate::config::Storage;
use crate::ops::metrics::Metrics;
use crate::request::Facts;
use crate::session::cookie::{ChunkError, SessionCookies};
use crate::session::record::{user_agent_family, Meta, Record};
use crate::session::revocations::{Revocation, Revocations, SeenJtis};
use crate::session::{Payload, Session, SessionCodec, SessionError};
use crate::store::{Store, StoreError};
use csrf::CsrfPolicy;
use records::{Found, Records, Write, FRESH_SECS};

/// The session service, built once from the config and shared by everything that serves a
/// request.
#[derive(Debug)]
pub(crate) struct Sessions {
    codec: SessionCodec,
    revocations: Arc<Revocations>,
    store: Option<Arc<Store>>,
    seen_jtis: SeenJtis,
    csrf: CsrfPolicy,
    metrics: Metrics,
    /// With `storage = "store"`: where sessions live.
    records: Option<Records>,
    /// The DBSC bound cookie's name (`{cookie_name}-bound`).
    bound_cookie: String,
    /// `device_binding = "dbsc"`: logins offer browsers to bind the session.
    device_binding: bool,
}

/// A request's session cookies and what they opened to.
#[derive(Debug)]
pub(crate) struct Opened<'r> {
    /// The session cookies the request carried (a reply that clears or replaces them needs
    /// their names).
    pub(crate) present: SessionCookies<'r>,
    /// The session, lifetimes not yet checked ([`Sessions::session`]).
    pub(crate) payload: Result<Payload, SessionError>,
    /// What the admin API lists about a stored session.
    meta: Option<Arc<Meta>>,
    /// A whole cookie session met under `storage = "store"`: moved into the store by the
    /// response ([`Sessions::cookie_lines`] with `CookieWork::Reseal`).
    pub(crate) moved: bool,
}

/// Why a session could not be started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StartError {
    #[error(
        "the sealed session is too large for {} cookies",
        crate::config::MAX_CHUNKS
    )]
    TooLarge,
    #[error("the session store cannot be reached")]
    Store,
}

/// What a response does to the session's cookies: decided once per request, carried out once
/// at the end ([`Sessions::cookie_lines`]).
#[derive(Debug, Default)]
pub(crate) enum CookieWork {
    /// Leave them as they are.
    #[default]
    Keep,
    /// Clear every chunk the request carried (a session that cannot be used).
    Clear,
    /// Seal this session into them (refreshed, rotated or renewed).
    Reseal(Box<Session<'static>>),
}

impl Sessions {
    pub(crate) fn new(
        codec: SessionCodec,
        revocations: Arc<Revocations>,
        store: Option<Arc<Store>>,
        csrf: CsrfPolicy,
        metrics: Metrics,
        storage: Storage,
    ) -> Sessions {
        let records =
            (storage == Storage::Store).then(|| Records::new(store.clone(), metrics.clone()));
        let bound_cookie = crate::session::cookie::bound_cookie_name(codec.cookie_name());
        Sessions {
            bound_cookie,
            device_binding: false,
            codec,
            revocations,
            store,
            seen_jtis: SeenJtis::default(),
            csrf,
            metrics,
            records,
        }
    }

    pub(crate) fn codec(&self) -> &SessionCodec {
        &self.codec
    }

    /// Offers device binding (DBSC) at each login (`device_binding = "dbsc"`).
    pub(crate) fn with_device_binding(mut self, on: bool) -> Sessions {
        self.device_binding = on;
        self
    }

    /// Whether logins offer device binding.
    pub(crate) fn device_binding(&self) -> bool {
        self.device_binding
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
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

    /// The request's session: its cookies, and the session they open to (from the cookies,
    /// or through the handle from memory or the store).
    pub(crate) async fn open<'r>(&self, facts: &Facts<'r>) -> Opened<'r> {
        let present = SessionCookies::scan(self.codec.cookie_name(), facts.cookie_headers());
        let mut opened = Opened {
            payload: Err(SessionError::Cookie(ChunkError::Missing)),
            present,
            meta: None,
            moved: false,
        };
        let sealed = match opened.present.value() {
            Ok(v) => v,
            Err(e) => {
                opened.payload = Err(e.into());
                return opened;
            }
        };
        let Some(records) = &self.records else {
            opened.payload = self.codec.open_sealed(&sealed).map_err(|e| {
                // A handle from a `storage = "store"` configuration: say so in the log.
                if self.codec.open_handle(&sealed).is_ok() {
                    SessionError::Handle
                } else {
                    e
                }
            });
            return opened;
        };
        let id = match self.codec.open_handle(&sealed) {
            Ok(id) => id,
            Err(handle_error) => {
                // A whole cookie session from `storage = "cookie"`: moved on this request.
                opened.payload = self.codec.open_sealed(&sealed).map_err(|_| handle_error);
                opened.moved = opened.payload.is_ok();
                return opened;
            }
        };
        let mut found = records.get(id, &self.codec, facts.now, FRESH_SECS).await;
        if let Ok(Found::Record(r)) = &found {
            // A copy idle-expired here may have been used on another replica since.
            if self
                .codec
                .decode(&Payload::from(r.session.clone()), facts.now)
                == Err(SessionError::Idle)
            {
                found = records.get(id, &self.codec, facts.now, 0).await;
            } else if self.device_binding() && r.session.device_key.is_none() {
                // A session can be bound until its registration challenge expires, maybe on
                // another replica, so a copy read before then may be stale: it is read again,
                // so that a cookie without its bound cookie does not pass on a copy from before
                // the binding. A copy read after then is trusted for FRESH_SECS as usual.
                let settled = r
                    .session
                    .created_at
                    .saturating_add(crate::session::dbsc::REGISTRATION_TTL_SECS + 1);
                if facts.now < settled.saturating_add(FRESH_SECS) {
                    let fresh_for = FRESH_SECS.min(facts.now.saturating_sub(settled));
                    found = records.get(id, &self.codec, facts.now, fresh_for).await;
                }
            }
        }
        opened.payload = match found {
            Ok(Found::Record(r)) => {
                opened.meta = Some(r.meta);
                Ok(Payload::from(r.session))
            }
            Ok(Found::Gone) => Err(SessionError::NotStored),
            Err(e) => {
                tracing::error!(request_id = facts.request_id, error = %e, "the session store cannot be reached");
                Err(SessionError::StoreUnavailable)
            }
        };
        opened
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
            if !matches!(
                e,
                SessionError::Cookie(ChunkError::Missing) | SessionError::StoreUnavailable
            ) {
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

    /// The `Set-Cookie` lines that carry out `work` for the request's `opened` session. Under
    /// `storage = "store"` a re-seal writes the store and leaves the handle cookie as it is
    /// (or, for a session moved in from a cookie, replaces the cookies with a handle). A
    /// session that cannot be sealed or written is logged and leaves the cookies as they are.
    pub(crate) async fn cookie_lines(
        &self,
        work: CookieWork,
        opened: &Opened<'_>,
        facts: &Facts<'_>,
    ) -> Vec<String> {
        let (now, request_id) = (facts.now, facts.request_id);
        let session = match work {
            CookieWork::Keep => return Vec::new(),
            CookieWork::Clear => return self.codec.clear_cookie_lines(&opened.present),
            CookieWork::Reseal(session) => session,
        };
        let Some(records) = &self.records else {
            return match self.codec.set_cookie_lines(&session, &opened.present, now) {
                Ok(lines) => lines,
                Err(e) => {
                    tracing::error!(request_id, error = %e, "session could not be re-sealed");
                    Vec::new()
                }
            };
        };
        let meta = opened
            .meta
            .clone()
            .unwrap_or_else(|| Arc::new(self.meta(facts, &session)));
        let session: Arc<Session<'static>> = Arc::new(*session);
        if let Err(e) = records
            .put(
                session.clone(),
                meta,
                &self.codec,
                now,
                if opened.moved {
                    Write::MoveIn
                } else {
                    Write::Update
                },
            )
            .await
        {
            tracing::error!(request_id, error = %e, "the session could not be written to the store");
            return Vec::new();
        }
        if !opened.moved {
            return Vec::new();
        }
        match self
            .codec
            .handle_cookie_lines(&session, &opened.present, now)
        {
            Ok(lines) => {
                tracing::info!(request_id, "a cookie session moved into the store");
                lines
            }
            Err(e) => {
                tracing::error!(request_id, error = %e, "the session handle could not be sealed");
                Vec::new()
            }
        }
    }

    /// What the admin API will list about a session started by this request.
    fn meta(&self, facts: &Facts<'_>, session: &Session<'_>) -> Meta {
        Meta {
            provider: session.provider_name().into(),
            user_agent: user_agent_family(
                facts
                    .headers
                    .get(http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok()),
            )
            .into(),
            client: facts.client.map(|ip| ip.to_string()).unwrap_or_default(),
        }
    }

    /// Starts `session` (a login): the `Set-Cookie` lines that carry it, or its handle after
    /// writing it to the store. Replaces whatever session cookies the request brought.
    pub(crate) async fn start(
        &self,
        session: Session<'static>,
        facts: &Facts<'_>,
    ) -> Result<Vec<String>, StartError> {
        let previous = SessionCookies::scan(self.codec.cookie_name(), facts.cookie_headers());
        let Some(records) = &self.records else {
            let lines = self
                .codec
                .set_cookie_lines(&session, &previous, facts.now)
                .map_err(|_| StartError::TooLarge)?;
            // A new login (a step-up, another account) in a browser that had a session: that
            // one ends, so a copy of its cookie opens to nothing either.
            if let Some(old) = previous
                .value()
                .ok()
                .and_then(|v| self.codec.open_sealed(&v).ok())
                .filter(|old| old.session().id != session.id)
            {
                if let Err(e) = self.end(old.session(), "login", facts.now).await {
                    tracing::warn!(request_id = facts.request_id, error = %e, "the session this login replaces was ended here only");
                }
            }
            return Ok(lines);
        };
        // A new login in a browser that had a stored session: that one ends (it would stay
        // listed, and usable from a copy of its cookie, until it expired).
        if let Some(old) = previous
            .value()
            .ok()
            .and_then(|v| self.codec.open_handle(&v).ok())
            .filter(|old| *old != session.id)
        {
            if let Ok(Found::Record(r)) = records.get(old, &self.codec, facts.now, 0).await {
                if let Err(e) = self.end_records(&[r], "login", facts.now).await {
                    tracing::warn!(request_id = facts.request_id, error = %e, "the session this login replaces could not be ended");
                }
            }
        }
        let session = Arc::new(session);
        records
            .put(
                session.clone(),
                Arc::new(self.meta(facts, &session)),
                &self.codec,
                facts.now,
                Write::Start,
            )
            .await
            .map_err(|e| {
                tracing::error!(request_id = facts.request_id, error = %e, "the new session could not be written to the store");
                StartError::Store
            })?;
        self.codec
            .handle_cookie_lines(&session, &previous, facts.now)
            .map_err(|_| StartError::TooLarge)
    }

    /// Ends `session` (logout): revoked on every replica, and its record removed from the
    /// store. `Err` when the store did not record the revocation.
    pub(crate) async fn end(
        &self,
        session: &Session<'_>,
        source: &'static str,
        now: u64,
    ) -> Result<(), StoreError> {
        let revocation = Revocation::Session {
            id: session.id,
            until: self.codec.lives_until(session.created_at),
        };
        let revoked = self.revoke(revocation, source, now).await;
        if let Some(records) = &self.records {
            let record = Record {
                session: Arc::new(session.clone().into_owned()),
                meta: Arc::new(Meta::default()),
            };
            records.delete(&record).await?;
        }
        revoked
    }

    /// The live stored sessions of user `sub` (`by_sid`: of provider session `sub`), oldest
    /// first. Empty under `storage = "cookie"`, where no replica knows them.
    pub(crate) async fn of_user(
        &self,
        provider: &str,
        sub: &str,
        by_sid: bool,
        now: u64,
    ) -> Result<Vec<Record>, StoreError> {
        match &self.records {
            Some(records) => {
                records
                    .of_user(provider, sub, by_sid, &self.codec, now)
                    .await
            }
            None => Ok(Vec::new()),
        }
    }

    /// The stored session `id`, if it is live.
    pub(crate) async fn find(&self, id: u128, now: u64) -> Result<Option<Record>, StoreError> {
        let Some(records) = &self.records else {
            return Ok(None);
        };
        Ok(match records.get(id, &self.codec, now, 0).await? {
            Found::Record(r)
                if self
                    .codec
                    .decode(&Payload::from(r.session.clone()), now)
                    .is_ok() =>
            {
                Some(r)
            }
            _ => None,
        })
    }

    /// Ends every session of user `sub` on every replica: every session of `sub` that started
    /// before `before` is revoked (under `storage = "cookie"` no replica knows them otherwise;
    /// under `"store"`, this catches cookie sessions not moved in yet), and stored sessions are
    /// ended one by one and returned, for their refresh tokens to be revoked at the provider.
    pub(crate) async fn end_user(
        &self,
        provider: &str,
        sub: &str,
        before: u64,
        source: &'static str,
        now: u64,
    ) -> Result<Vec<Record>, StoreError> {
        // Stored sessions are ended by id below, so a login in this very second is not caught
        // here; a cookie session (not yet moved in) started before now is.
        let before = if self.records.is_some() { now } else { before };
        let revocation = Revocation::UserBefore {
            sub: crate::session::revocations::qualified(provider, sub).into_owned(),
            before,
            until: self.codec.lives_until(now),
        };
        self.revoke(revocation, source, now).await?;
        let ended = self.of_user(provider, sub, false, now).await?;
        self.end_records(&ended, source, now).await?;
        Ok(ended)
    }

    /// Ends the stored sessions in `ended`: revoked on every replica, their records removed.
    pub(crate) async fn end_records(
        &self,
        ended: &[Record],
        source: &'static str,
        now: u64,
    ) -> Result<(), StoreError> {
        let Some(records) = &self.records else {
            return Ok(());
        };
        for r in ended {
            let revocation = Revocation::Session {
                id: r.session.id,
                until: self.codec.lives_until(r.session.created_at),
            };
            self.revoke(revocation, source, now).await?;
            records.delete(r).await?;
        }
        Ok(())
    }

    /// Whether the request proves the device `session` is bound to (DBSC): its bound cookie
    /// (among the cookies `present`) is this session's and fresh. `Ok` for a session that is not bound.
    pub(crate) fn check_device(
        &self,
        session: &Session<'_>,
        present: &SessionCookies<'_>,
        facts: &Facts<'_>,
    ) -> Result<(), crate::session::dbsc::BoundError> {
        if session.device_key.is_none() {
            return Ok(());
        }
        crate::session::dbsc::check_bound(
            self.codec.sealer(),
            &self.bound_cookie,
            present.bound(),
            session.id,
            facts.now,
        )
        .inspect_err(|e| {
            self.metrics.dbsc("refused");
            tracing::info!(
                request_id = facts.request_id,
                reason = e.reason(),
                "a device-bound session without a valid bound cookie"
            );
        })
    }

    /// Whether sessions live in the store (`storage = "store"`).
    pub(crate) fn stored(&self) -> bool {
        self.records.is_some()
    }

    /// Whether sessions live only in this process (`storage = "store"` without `[store]`).
    pub(crate) fn in_process(&self) -> bool {
        self.records.as_ref().is_some_and(Records::in_process)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsrfConfig, SameSite, SessionConfig};
    use crate::session::fixture;
    use http::{HeaderMap, Method};
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    /// A new login (a step-up, another account) in a browser whose cookie holds a session
    /// ends that session: a copy of the old cookie opens to nothing.
    #[tokio::test]
    async fn a_new_login_ends_the_cookie_session_it_replaces() {
        let config = SessionConfig {
            cookie_name: "tg".into(),
            dropped_host_prefix: false,
            keys: vec![[3u8; 32]],
            same_site: SameSite::Lax,
            max_lifetime: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            refresh_skew: Duration::from_secs(30),
            storage: Default::default(),
            device_binding: Default::default(),
            bound_cookie_lifetime: Duration::from_secs(300),
        };
        let s = Sessions::new(
            SessionCodec::new(&config, false),
            Arc::default(),
            None,
            csrf::CsrfPolicy::new(
                &CsrfConfig {
                    header: http::HeaderName::from_static("x-csrf"),
                    allowed_origins: vec![],
                },
                "http://127.0.0.1:1",
            ),
            Metrics::new(),
            config.storage,
        );
        let empty = HeaderMap::new();
        let first = fixture::session(NOW, "at");
        let old = cookie(&s.start(first, &facts(&empty)).await.unwrap());
        assert!(opens(&s, &old).await);
        let mut second = fixture::session(NOW, "at");
        second.id = first_id_plus_one(&old, &s);
        let new = cookie(&s.start(second, &facts(&old)).await.unwrap());
        assert!(opens(&s, &new).await);
        assert!(!opens(&s, &old).await, "the replaced session is revoked");
    }

    fn facts(headers: &HeaderMap) -> Facts<'_> {
        Facts {
            method: &Method::GET,
            query: None,
            headers,
            body: None,
            request_id: "rid",
            now: NOW,
            client: None,
        }
    }

    fn cookie(lines: &[String]) -> HeaderMap {
        let pairs: Vec<&str> = lines.iter().map(|l| l.split(';').next().unwrap()).collect();
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, pairs.join("; ").parse().unwrap());
        h
    }

    async fn opens(s: &Sessions, h: &HeaderMap) -> bool {
        let f = facts(h);
        let opened = s.open(&f).await;
        s.session(&opened.payload, &f).is_ok()
    }

    /// An id other than the session's in `h`.
    fn first_id_plus_one(h: &HeaderMap, s: &Sessions) -> u128 {
        let found = SessionCookies::scan(
            s.codec.cookie_name(),
            [h[http::header::COOKIE].to_str().unwrap()],
        );
        let payload = s.codec.open_sealed(&found.value().unwrap()).unwrap();
        payload.session().id.wrapping_add(1)
    }
}
