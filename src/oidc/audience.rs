//! Route tokens (RFC 8707): a route with `resource` or `scopes` gets an access token of its
//! own, asked for with the session's refresh token ([`super::refresh`]), one per session and
//! audience.
//!
//! A route token is kept for its lifetime: in memory here, and, with `[store]`, sealed in the
//! store (under the session keys, as refresh results are) so that every replica uses the one
//! token instead of asking the provider again. It is never put into the browser's cookie: a
//! cookie that grew with each API would soon pass what browsers keep, and every request would
//! carry every API's token.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::audience_tokens::AudienceToken;
use super::client::Oidc;
use super::token_client::TokenResponse;
use crate::config::Audience;

/// How long a refusal of an audience is remembered (per session; in memory only).
pub(crate) const REFUSAL_TTL: u64 = 60;

/// The wire version of a route token in the store. Its lifetime was appended to version 1
/// compatibly: builds before it read the token and expiry and ignore the rest, and an entry
/// they wrote reads here with the lifetime unknown (0).
const VERSION: u8 = 1;

/// The store's name for a route token: a hash of the session id and the audience id (the
/// store learns neither).
fn store_key(session: u128, audience: &[u8; 16]) -> String {
    let mut h = Sha256::new();
    h.update(b"tollgate route token\0");
    h.update(session.to_be_bytes());
    h.update(audience);
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Oidc {
    /// The kept token of `session` for `audience`, here or (with a store) from another
    /// replica; expired ones are not returned. A store failure is logged and is a miss.
    pub(crate) async fn audience_token(
        &self,
        session: u128,
        audience: &Audience,
        now: u64,
    ) -> Option<Arc<AudienceToken>> {
        if let Some(t) = self
            .audience_tokens
            .get(session, &audience.id)
            .filter(|t| t.expires_at > now)
        {
            return Some(t);
        }
        let store = self.store.as_ref()?;
        let key = store_key(session, &audience.id);
        let sealed = match store.route_token(&key).await {
            Ok(sealed) => sealed?,
            Err(e) => {
                tracing::warn!(error = %e, "route token: the store is unavailable");
                return None;
            }
        };
        let (access_token, expires_at, lifetime) = match self
            .sealer
            .open_value::<(String, u64, u64)>(VERSION, &sealed, &key)
        {
            Some(t) => t,
            None => {
                let (token, expires_at) = self
                    .sealer
                    .open_value::<(String, u64)>(VERSION, &sealed, &key)?;
                (token, expires_at, 0)
            }
        };
        let token = Arc::new(AudienceToken {
            access_token,
            expires_at,
            lifetime,
            refused: false,
        });
        if token.expires_at <= now {
            return None;
        }
        self.audience_tokens
            .put(session, audience.id, token.clone(), now);
        self.metrics.route_token("store");
        Some(token)
    }

    /// Remembers that the provider refused `job`'s audience to its session, for
    /// [`REFUSAL_TTL`]: an SPA calling the route again does not make each call a provider call.
    pub(super) fn keep_refusal(&self, job: &super::refresh::Job) {
        let Some(audience) = job.audience.as_deref() else {
            return;
        };
        let now = crate::unix_now();
        let refusal = Arc::new(AudienceToken {
            access_token: String::new(),
            expires_at: now + REFUSAL_TTL,
            lifetime: REFUSAL_TTL,
            refused: true,
        });
        self.audience_tokens
            .put(job.session_id, audience.id, refusal, now);
    }

    /// Forgets a session's route tokens (its logout), here and in the store (other
    /// replicas' memory keeps theirs until they expire; the session's revocation stops their
    /// use).
    pub(crate) async fn forget_audience_tokens(&self, session: u128) {
        self.audience_tokens.forget_session(session);
        let Some(store) = self.store.as_ref() else {
            return;
        };
        for audience in &self.audience_ids {
            if let Err(e) = store
                .delete_route_token(&store_key(session, audience))
                .await
            {
                tracing::warn!(error = %e, "logout: a route token was not removed from the store");
                return;
            }
        }
    }

    /// Keeps a route token the provider just issued, here and in the store.
    pub(super) async fn keep_audience_token(
        &self,
        job: &super::refresh::Job,
        tokens: &TokenResponse,
        issued_at: u64,
    ) {
        let Some(audience) = job.audience.as_deref() else {
            return;
        };
        self.metrics.route_token("issued");
        let token = Arc::new(AudienceToken {
            access_token: tokens.access_token.clone(),
            expires_at: super::lifetime::expires_at(issued_at, tokens.expires_in),
            lifetime: super::lifetime::lifetime(tokens.expires_in),
            refused: false,
        });
        self.audience_tokens
            .put(job.session_id, audience.id, token.clone(), issued_at);
        let Some(store) = self.store.as_ref() else {
            return;
        };
        let key = store_key(job.session_id, &audience.id);
        let ttl = token.expires_at.saturating_sub(crate::unix_now());
        if ttl == 0 {
            return;
        }
        let Some(sealed) = self.sealer.seal_value(
            VERSION,
            &(
                token.access_token.as_str(),
                token.expires_at,
                token.lifetime,
            ),
            &key,
        ) else {
            return;
        };
        if let Err(e) = store.put_route_token(&key, &sealed, ttl).await {
            tracing::warn!(request_id = %job.request_id, error = %e, "route token: not shared through the store");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keys_differ_by_session_and_audience() {
        assert_ne!(store_key(1, &[1; 16]), store_key(2, &[1; 16]));
        assert_ne!(store_key(1, &[1; 16]), store_key(1, &[2; 16]));
        assert_eq!(store_key(1, &[1; 16]).len(), 32);
    }
}
