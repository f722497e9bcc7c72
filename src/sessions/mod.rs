//! The session service: everything that reads, checks or changes a user's session, in one place.
//!
//! A session is a sealed payload in the browser's cookies ([`crate::session`]); what may be
//! done with one lives here: opening it (checked against the time and the revocation list), the
//! CSRF rules a request carrying it must pass, revoking it (here and, through the store, on every
//! replica), the logout-token ids already seen, and the `Set-Cookie` lines a response carries.
//!
//! The gate (the hot path), tollgate's own endpoints, `/logout` and back-channel logout all use
//! it; none of them reaches into another's module for a session. What a session *is* next
//! (server-side storage, device binding, several providers) changes this module, not theirs.

pub(crate) mod csrf;

use std::sync::Arc;

use crate::ops::metrics::Metrics;
use crate::request::Facts;
use crate::session::cookie::{ChunkError, SessionCookies};
use crate::session::revocations::{Revocation, Revocations, SeenJtis};
use crate::session::{Payload, Session, SessionCodec, SessionError};
use crate::store::{Store, StoreError};
use csrf::CsrfPolicy;

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
    ) -> Sessions {
        Sessions {
            codec,
            revocations,
            store,
            seen_jtis: SeenJtis::default(),
            csrf,
            metrics,
        }
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

    /// The `Set-Cookie` lines that carry out `work` for a request that brought `present`. A
    /// session that cannot be sealed is logged and leaves the cookies as they are.
    pub(crate) fn cookie_lines(
        &self,
        work: CookieWork,
        present: &SessionCookies<'_>,
        now: u64,
        request_id: &str,
    ) -> Vec<String> {
        match work {
            CookieWork::Keep => Vec::new(),
            CookieWork::Clear => self.codec.clear_cookie_lines(present),
            CookieWork::Reseal(session) => {
                match self.codec.set_cookie_lines(&session, present, now) {
                    Ok(lines) => lines,
                    Err(e) => {
                        tracing::error!(request_id, error = %e, "session could not be re-sealed");
                        Vec::new()
                    }
                }
            }
        }
    }
}
