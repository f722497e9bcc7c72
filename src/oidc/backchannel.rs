//! `POST {backchannel_logout_path}`: OpenID Connect Back-Channel Logout 1.0.
//!
//! When the user logs out at the provider (or an administrator ends their session there), the
//! provider posts a signed logout token to every client of that provider session. tollgate
//! checks it as the specification's §2.6 asks — signature against the provider's keys with an
//! advertised asymmetric algorithm, `iss`, `aud` containing our `client_id`, a recent `iat`, `exp`
//! when present, the back-channel logout event, `sid` and/or `sub`, no `nonce`, and a `jti` not
//! seen before — and then revokes ([`crate::session::revocations`]) every session of that
//! provider session (`sid`), or, with only a `sub`, every session of that user that started
//! before the token was issued.
//!
//! Answers: `200` (empty JSON object, `Cache-Control: no-store`); `400 {"error":"invalid_request"}`
//! for a token that fails any check; `503` while the provider's keys are not loaded or the
//! shared store cannot record the revocation, so the provider retries.

use http::Method;
use jsonwebtoken::Validation;
use serde::Deserialize;

use super::client::Oidc;
use super::id_token::{self, KindDescription, LEEWAY_SECS};
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::revocations::{qualified, Revocation};
use crate::sessions::Sessions;

/// The event a logout token must carry.
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old a logout token may be (its `iat`), besides the clock leeway.
const MAX_AGE_SECS: u64 = 300;

#[derive(Debug, Deserialize)]
pub(crate) struct LogoutClaims {
    iat: u64,
    jti: String,
    sub: Option<String>,
    sid: Option<String>,
    events: serde_json::Map<String, serde_json::Value>,
    nonce: Option<serde_json::Value>,
}

/// Why a logout token was refused (logged; the answer is always `invalid_request`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogoutTokenError {
    #[error("the request has no logout_token")]
    Missing,
    #[error("the token's signature key: {0}")]
    Key(id_token::IdTokenError),
    #[error("the token failed validation: {0}")]
    Invalid(String),
    #[error("the token's iat is not recent")]
    Stale,
    #[error("the token lacks the back-channel logout event")]
    Event,
    #[error("the token names neither sid nor sub")]
    Subject,
    #[error("the token carries a nonce")]
    Nonce,
    #[error("the token's jti was seen before")]
    Replayed,
}

#[derive(Deserialize)]
struct Form {
    logout_token: Option<String>,
}

/// The `iss` a request's logout token claims, unverified: which provider is to check it.
pub(crate) fn claimed_issuer(body: &[u8]) -> Option<String> {
    use base64::Engine;
    let form: Form = serde_urlencoded::from_bytes(body).ok()?;
    let token = form.logout_token?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    serde_json::from_slice::<Iss>(&bytes).ok().map(|c| c.iss)
}

impl Oidc {
    /// `POST {backchannel_logout_path}` with a form `logout_token`.
    pub(crate) async fn backchannel_logout(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Result<Reply, Fault> {
        if facts.method != Method::POST {
            return Err(Fault::MethodNotAllowed);
        }
        let rid = facts.request_id;
        let provider = self.provider().ok_or(Fault::ProviderUnavailable)?;
        let claims = match self.logout_claims(facts, &provider).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(request_id = rid, reason = %e, "back-channel logout refused");
                return Err(Fault::InvalidLogoutToken);
            }
        };
        // Kept as long as the token could be accepted at all.
        let jti_ttl = MAX_AGE_SECS + 2 * LEEWAY_SECS;
        match sessions
            .first_use(&qualified(&self.name, &claims.jti), jti_ttl, facts.now)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(request_id = rid, reason = %LogoutTokenError::Replayed, "back-channel logout refused");
                return Err(Fault::InvalidLogoutToken);
            }
            Err(e) => {
                tracing::error!(request_id = rid, error = %e, "back-channel logout: the store cannot check the token id");
                return Err(Fault::StoreUnavailable);
            }
        }
        // Any session this ends was created before now, so it opens until at most this.
        let until = sessions.codec().lives_until(facts.now);
        // With only a `sub`: the user's sessions created up to the token's second, inclusive
        // (`iat` has whole seconds: a login in that second may be before it, and ending one
        // too many is the safe side of a logout).
        // (An `iat` ahead of this clock, within the minute allowed, counts as now: logins
        // after the logout must not end.)
        let before = claims.iat.min(facts.now).saturating_add(1);
        let revocation = match (&claims.sid, &claims.sub) {
            (Some(sid), _) => Revocation::ProviderSession {
                sid: qualified(&self.name, sid).into_owned(),
                until,
            },
            (None, Some(sub)) => Revocation::UserBefore {
                sub: qualified(&self.name, sub).into_owned(),
                before,
                until,
            },
            (None, None) => return Err(Fault::InvalidLogoutToken),
        };
        if let Err(e) = sessions.revoke(revocation, "backchannel", facts.now).await {
            // Enforced here; the provider retries, so every replica learns of it later.
            tracing::error!(request_id = rid, error = %e, "back-channel logout: the store did not record the revocation");
            return Err(Fault::StoreUnavailable);
        }
        // Stored sessions are ended too (their records removed, their ids revoked).
        let (value, by_sid) = match (&claims.sid, &claims.sub) {
            (Some(sid), _) => (sid.as_str(), true),
            (None, Some(sub)) => (sub.as_str(), false),
            (None, None) => return Err(Fault::InvalidLogoutToken),
        };
        let ended = match sessions.of_user(&self.name, value, by_sid, facts.now).await {
            Ok(found) => {
                // With only a `sub`, the sessions that started before the token.
                let found: Vec<_> = found
                    .into_iter()
                    .filter(|r| by_sid || r.session.created_at < before)
                    .collect();
                sessions
                    .end_records(&found, "backchannel", facts.now)
                    .await
                    .map(|()| found.len())
            }
            Err(e) => Err(e),
        };
        let ended = match ended {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(request_id = rid, error = %e, "back-channel logout: the store could not end the stored sessions");
                return Err(Fault::StoreUnavailable);
            }
        };
        tracing::info!(
            request_id = rid,
            provider = %self.name,
            by = if by_sid { "sid" } else { "sub" },
            stored_sessions = ended,
            "back-channel logout: sessions revoked"
        );
        Ok(Reply::json(200, &serde_json::json!({})).with_outcome("backchannel_logout"))
    }

    /// The checked claims of the request's logout token.
    pub(crate) async fn logout_claims(
        &self,
        facts: &Facts<'_>,
        provider: &std::sync::Arc<super::discovery::Provider>,
    ) -> Result<LogoutClaims, LogoutTokenError> {
        let form: Form = serde_urlencoded::from_bytes(facts.body.unwrap_or_default())
            .map_err(|_| LogoutTokenError::Missing)?;
        let token = form.logout_token.ok_or(LogoutTokenError::Missing)?;
        let claims = self
            .with_signing_key(&token, provider, |key, alg, provider| {
                let mut v = Validation::new(alg);
                v.set_issuer(&[&provider.metadata.issuer]);
                v.set_audience(&[&self.client_id]);
                v.set_required_spec_claims(&["iss", "aud", "iat"]);
                v.leeway = LEEWAY_SECS;
                v.validate_exp = true;
                jsonwebtoken::decode::<LogoutClaims>(&token, key, &v)
                    .map(|t| t.claims)
                    .map_err(|e| LogoutTokenError::Invalid(e.kind_description()))
            })
            .await
            .map_err(LogoutTokenError::Key)??;
        let now = facts.now;
        if claims.iat > now + LEEWAY_SECS || claims.iat + MAX_AGE_SECS + LEEWAY_SECS < now {
            return Err(LogoutTokenError::Stale);
        }
        if !claims.events.get(EVENT).is_some_and(|e| e.is_object()) {
            return Err(LogoutTokenError::Event);
        }
        if claims.sid.is_none() && claims.sub.is_none() {
            return Err(LogoutTokenError::Subject);
        }
        if claims.nonce.is_some() {
            return Err(LogoutTokenError::Nonce);
        }
        Ok(claims)
    }
}
