//! Refreshing access tokens on the hot path, one provider call per session at a time.
//!
//! When an SPA wakes up it fires many API calls at once, all carrying the same cookie with the
//! same expiring token. Each calling the provider would multiply the load and, with refresh
//! token rotation, break the session: the second use of a rotated refresh token is
//! `invalid_grant` (and some providers then revoke the whole family). So concurrent refreshes
//! of the same refresh token share one call (single flight, keyed by the token's SHA-256), and
//! a successful result is kept for [`RESULT_TTL`] so that requests still carrying the old
//! cookie, sent before the browser saw the new one, get the same new tokens instead of a second
//! refresh. A failure because the provider is unreachable is not kept: the next request tries
//! again. Waiting is bounded by the HTTP timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::token_client::{TokenError, TokenResponse};
use super::Oidc;
use crate::session::Session;

/// Puts tokens refreshed at `issued_at` (Unix seconds; lifetimes count from then, not from when
/// a later request picks up the shared result) into `session`. A rotated refresh token replaces
/// the old one; a new ID token replaces the old one as the logout hint (the claims stay those
/// validated at login).
pub fn apply(session: &mut Session, tokens: &TokenResponse, issued_at: u64) {
    session.access_token = tokens.access_token.clone();
    session.access_expires_at = super::callback::expires_at(issued_at, tokens.expires_in);
    if let Some(rt) = &tokens.refresh_token {
        session.refresh_token = Some(rt.clone());
        session.refresh_expires_at = tokens
            .refresh_expires_in
            .map(|s| super::callback::expires_at(issued_at, Some(s)));
    }
    if let Some(id) = &tokens.id_token {
        session.id_token = Some(id.clone());
    }
}

/// How long a successful refresh result answers for the old refresh token.
pub const RESULT_TTL: Duration = Duration::from_secs(60);

/// The outcome of a refresh, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// New tokens, and when they were issued (Unix seconds).
    Refreshed(Arc<TokenResponse>, u64),
    /// The provider refused the refresh token (revoked, expired, reused): log in again.
    Rejected(String),
    /// The provider could not be reached or failed: try again later, keep the session.
    Unavailable,
}

/// The single-flight key of a refresh token: its SHA-256 (the token itself is not kept).
pub fn flight_key(refresh_token: &str) -> [u8; 32] {
    Sha256::digest(refresh_token.as_bytes()).into()
}

struct Flight {
    cell: Arc<OnceCell<RefreshOutcome>>,
    started: Instant,
}

/// Single-flight table of refreshes in progress or recently done.
#[derive(Default)]
pub struct Flights {
    table: Mutex<HashMap<[u8; 32], Flight>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.table.lock().map(|t| t.len()).unwrap_or(0);
        write!(f, "Flights({n})")
    }
}

impl Flights {
    fn join(&self, key: [u8; 32]) -> Arc<OnceCell<RefreshOutcome>> {
        let Ok(mut table) = self.table.lock() else {
            return Arc::new(OnceCell::new());
        };
        table.retain(|_, f| f.started.elapsed() < RESULT_TTL);
        table
            .entry(key)
            .or_insert_with(|| Flight {
                cell: Arc::new(OnceCell::new()),
                started: Instant::now(),
            })
            .cell
            .clone()
    }

    /// Runs `work` for `key` unless a flight for it is in progress or recently succeeded, in
    /// which case its outcome is shared. Waits at most `wait`; an `Unavailable` outcome is not
    /// kept, so the next caller tries again. The key is the refresh token's SHA-256
    /// ([`flight_key`]).
    pub async fn run<F>(&self, key: [u8; 32], wait: Duration, work: F) -> RefreshOutcome
    where
        F: std::future::Future<Output = RefreshOutcome>,
    {
        let cell = self.join(key);
        let outcome = tokio::time::timeout(wait, cell.get_or_init(|| work))
            .await
            .cloned()
            .unwrap_or(RefreshOutcome::Unavailable);
        if matches!(outcome, RefreshOutcome::Unavailable) {
            self.forget(&key, &cell);
        }
        outcome
    }

    fn forget(&self, key: &[u8; 32], cell: &Arc<OnceCell<RefreshOutcome>>) {
        if let Ok(mut table) = self.table.lock() {
            if table.get(key).is_some_and(|f| Arc::ptr_eq(&f.cell, cell)) {
                table.remove(key);
            }
        }
    }
}

impl Oidc {
    /// Refreshes with `refresh_token` (of the session of user `sub`), sharing the call with
    /// concurrent requests.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        sub: &str,
        request_id: &str,
    ) -> RefreshOutcome {
        let wait = self.http_timeout + Duration::from_secs(2);
        self.flights
            .run(
                flight_key(refresh_token),
                wait,
                self.call_refresh(refresh_token, sub, request_id),
            )
            .await
    }

    async fn call_refresh(
        &self,
        refresh_token: &str,
        sub: &str,
        request_id: &str,
    ) -> RefreshOutcome {
        let Some(provider) = self.provider() else {
            return RefreshOutcome::Unavailable;
        };
        match self
            .tokens
            .refresh(provider.metadata.token_endpoint.as_str(), refresh_token)
            .await
        {
            Ok(mut tokens) => {
                // A new ID token only replaces the logout hint once it passes the login's
                // checks (but the nonce) and names the same user (OpenID Connect Core §12.2);
                // otherwise the one from login stays. The refresh itself stands either way.
                if let Some(id_token) = tokens.id_token.take() {
                    let checked = self
                        .validate_id_token(
                            &id_token,
                            &provider,
                            None,
                            &tokens.access_token,
                            crate::unix_now(),
                        )
                        .await;
                    match checked {
                        Ok(claims) if claims.sub == sub => tokens.id_token = Some(id_token),
                        Ok(_) => tracing::warn!(
                            request_id,
                            "refresh: the new ID token names another subject; keeping the old one"
                        ),
                        Err(e) => tracing::warn!(
                            request_id,
                            error = %e,
                            "refresh: the new ID token did not validate; keeping the old one"
                        ),
                    }
                }
                tracing::info!(
                    request_id,
                    rotated = tokens.refresh_token.is_some(),
                    "access token refreshed"
                );
                RefreshOutcome::Refreshed(Arc::new(tokens), crate::unix_now())
            }
            // Only `invalid_grant` says the refresh token itself is dead (RFC 6749 §5.2).
            // `invalid_client`, a rate limit or a firewall's 403 are the provider's or our
            // configuration's problem: the session is kept and the request answered 503.
            Err(TokenError::Provider { error, .. }) if error == "invalid_grant" => {
                tracing::info!(request_id, provider_error = %error, "refresh refused by the provider");
                RefreshOutcome::Rejected(error)
            }
            Err(TokenError::Provider { status, error }) => {
                tracing::error!(
                    request_id,
                    status,
                    provider_error = %error,
                    "refresh failed: the provider refused the client or the request; session kept"
                );
                RefreshOutcome::Unavailable
            }
            Err(e) => {
                tracing::warn!(request_id, error = %e, "refresh failed: provider unavailable");
                RefreshOutcome::Unavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Claims;

    fn tokens(expires_in: Option<u64>, refresh_expires_in: Option<u64>) -> TokenResponse {
        TokenResponse {
            access_token: "new-at".into(),
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: Some("new-rt".into()),
            refresh_expires_in,
            id_token: None,
            scope: None,
        }
    }

    fn session() -> Session {
        Session {
            access_token: "old-at".into(),
            access_expires_at: 10,
            refresh_token: Some("old-rt".into()),
            refresh_expires_at: None,
            id_token: Some("id".into()),
            id_expires_at: None,
            claims: Claims::default(),
            created_at: 0,
            last_seen: 0,
        }
    }

    #[test]
    fn lifetimes_count_from_the_refresh_not_from_the_late_request() {
        let mut s = session();
        apply(&mut s, &tokens(Some(300), Some(3600)), 1_000);
        assert_eq!(s.access_token, "new-at");
        assert_eq!(s.access_expires_at, 1_300);
        assert_eq!(s.refresh_token.as_deref(), Some("new-rt"));
        assert_eq!(s.refresh_expires_at, Some(4_600));
        assert_eq!(s.id_token.as_deref(), Some("id"), "kept when none is sent");
    }

    #[test]
    fn absurd_lifetimes_neither_overflow_nor_wrap() {
        let mut s = session();
        apply(
            &mut s,
            &tokens(Some(u64::MAX), Some(u64::MAX)),
            u64::MAX - 5,
        );
        assert_eq!(s.access_expires_at, u64::MAX);
        apply(&mut s, &tokens(Some(u64::MAX), None), 1_000);
        assert_eq!(s.access_expires_at, 1_000 + 366 * 24 * 3600);
    }
}
