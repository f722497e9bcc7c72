//! How an access token goes upstream: `Authorization: Bearer …`, or `Authorization: DPoP …`
//! with what the request's proof needs (`token_binding = "dpop"`), and the cache of sessions'
//! DPoP keys that makes the second cheap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::HeaderValue;

use super::headers;
use crate::oidc::dpop::{DpopError, DpopKey};
use crate::reply::Fault;
use crate::session::Session;

/// The session's DPoP key and the access token's hash, for the upstream request's proof,
/// which needs the upstream URL (known once the request is rewritten).
#[derive(Debug, Clone)]
pub(crate) struct DpopGrant {
    pub(crate) key: Arc<DpopKey>,
    pub(crate) ath: String,
}

/// Loaded DPoP keys by session id: loading one from the session's PKCS#8 verifies it (a
/// scalar multiplication), as costly as the proof's signature. Bounded: emptied when full.
#[derive(Debug, Default)]
pub(crate) struct DpopKeys(Mutex<HashMap<u128, Arc<DpopKey>>>);

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

    /// How `access_token` of `session` goes upstream: `Bearer`, or (`dpop`) `DPoP` with what
    /// the proof needs. A session without a DPoP key (from before `[oidc] dpop`) cannot use a
    /// DPoP route: `401`, log in again.
    pub(crate) fn present(
        &self,
        access_token: &str,
        session: &Session<'_>,
        dpop: bool,
        rid: &str,
    ) -> Result<(HeaderValue, Option<Box<DpopGrant>>), Fault> {
        if !dpop {
            return Ok((bearer(access_token, rid)?, None));
        }
        let key = self.get(session).map_err(|e| {
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

fn bearer(token: &str, request_id: &str) -> Result<HeaderValue, Fault> {
    headers::bearer_value(token).map_err(|_| {
        tracing::error!(request_id, "the access token is not a valid header value");
        Fault::Internal
    })
}
