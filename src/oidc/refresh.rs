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
use tokio::sync::watch;

use super::dpop::DpopKey;
use super::token_client::{TokenError, TokenResponse};
use super::Oidc;
use crate::session::Session;
use crate::store::{Store, StoreError};

/// Puts tokens refreshed at `issued_at` (Unix seconds; lifetimes count from then, not from when
/// a later request picks up the shared result) into `session`. A rotated refresh token replaces
/// the old one; a new ID token replaces the old one as the logout hint (the claims stay those
/// validated at login).
pub fn apply(session: &mut Session<'static>, tokens: &TokenResponse, issued_at: u64) {
    session.access_token = tokens.access_token.clone().into();
    session.access_expires_at = super::callback::expires_at(issued_at, tokens.expires_in);
    if let Some(rt) = &tokens.refresh_token {
        session.refresh_token = Some(rt.clone().into());
        session.refresh_expires_at = tokens
            .refresh_expires_in
            .map(|s| super::callback::expires_at(issued_at, Some(s)));
    }
    if let Some(id) = &tokens.id_token {
        session.id_token = Some(id.clone().into());
    }
}

/// The wire version of a refresh result shared through the store.
const RESULT_VERSION: u8 = 1;
/// How often a replica looks for another replica's refresh result while it waits.
const WAIT_STEP: Duration = Duration::from_millis(25);

/// How long a successful refresh result answers for the old refresh token.
pub(crate) const RESULT_TTL: Duration = Duration::from_secs(60);

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
    outcome: watch::Receiver<Option<RefreshOutcome>>,
    started: Instant,
}

type Table = Mutex<HashMap<[u8; 32], Flight>>;

/// Single-flight table of refreshes in progress or recently done.
#[derive(Default)]
pub struct Flights {
    table: Arc<Table>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.table.lock().map(|t| t.len()).unwrap_or(0);
        write!(f, "Flights({n})")
    }
}

impl Flights {
    /// The flight for `key`, and the sender when this caller started it.
    fn join(
        &self,
        key: [u8; 32],
    ) -> (
        watch::Receiver<Option<RefreshOutcome>>,
        Option<watch::Sender<Option<RefreshOutcome>>>,
    ) {
        let (tx, rx) = watch::channel(None);
        let Ok(mut table) = self.table.lock() else {
            return (rx, Some(tx));
        };
        table.retain(|_, f| f.started.elapsed() < RESULT_TTL);
        if let Some(f) = table.get(&key) {
            return (f.outcome.clone(), None);
        }
        table.insert(
            key,
            Flight {
                outcome: rx.clone(),
                started: Instant::now(),
            },
        );
        (rx, Some(tx))
    }

    /// Runs `work` for `key` unless a flight for it is in progress or recently succeeded, in
    /// which case its outcome is shared. The work runs as a task of its own, so a refresh the
    /// provider accepted is kept even when every request that waited for it is gone (the
    /// next request must not spend the old refresh token again). Waits at most `wait`; an
    /// `Unavailable` outcome is not kept, so the next caller tries again. The key is the
    /// refresh token's SHA-256 ([`flight_key`]).
    pub async fn run<F>(&self, key: [u8; 32], wait: Duration, work: F) -> RefreshOutcome
    where
        F: std::future::Future<Output = RefreshOutcome> + Send + 'static,
    {
        let (mut rx, start) = self.join(key);
        if let Some(tx) = start {
            let table = self.table.clone();
            let kept = rx.clone();
            tokio::spawn(async move {
                let outcome = tokio::time::timeout(wait, work)
                    .await
                    .unwrap_or(RefreshOutcome::Unavailable);
                if matches!(outcome, RefreshOutcome::Unavailable) {
                    forget_flight(&table, &key, &kept);
                }
                let _ = tx.send(Some(outcome));
            });
        }
        let outcome = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            _ => None,
        };
        outcome.unwrap_or(RefreshOutcome::Unavailable)
    }

    /// Ends a session's refreshes (logout): for [`RESULT_TTL`], a refresh with its current
    /// refresh token, or with any older one whose kept result led to the session's current
    /// tokens (the whole chain of rotations still kept), is answered `Rejected` without asking
    /// the provider. So a copy of an older cookie gets nothing back, and a request that races
    /// the logout cannot refresh the session while its token is being revoked.
    pub(crate) fn end_session(&self, refresh_token: Option<&str>, access_token: &str) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let mut ended: Vec<[u8; 32]> = refresh_token.map(flight_key).into_iter().collect();
        loop {
            let before = ended.len();
            for (key, flight) in table.iter() {
                if ended.contains(key) {
                    continue;
                }
                if let Some(RefreshOutcome::Refreshed(t, _)) = &*flight.outcome.borrow() {
                    let led_here = t.access_token == access_token
                        || t.refresh_token
                            .as_deref()
                            .is_some_and(|rt| ended.contains(&flight_key(rt)));
                    if led_here {
                        ended.push(*key);
                    }
                }
            }
            if ended.len() == before {
                break;
            }
        }
        let now = Instant::now();
        for key in ended {
            let (_, outcome) = watch::channel(Some(RefreshOutcome::Rejected("logged_out".into())));
            table.insert(
                key,
                Flight {
                    outcome,
                    started: now,
                },
            );
        }
    }
}

/// Removes `key`'s flight if it is still the one `rx` belongs to.
fn forget_flight(table: &Table, key: &[u8; 32], rx: &watch::Receiver<Option<RefreshOutcome>>) {
    if let Ok(mut table) = table.lock() {
        if table.get(key).is_some_and(|f| f.outcome.same_channel(rx)) {
            table.remove(key);
        }
    }
}

impl Oidc {
    /// Refreshes with `refresh_token` (of the session of user `sub`), sharing the call with
    /// concurrent requests.
    pub(crate) async fn refresh(
        self: &Arc<Self>,
        refresh_token: &str,
        sub: &str,
        request_id: &str,
        dpop_key: Option<&[u8]>,
    ) -> RefreshOutcome {
        // A session's DPoP key: the refresh proves possession of it, so the new tokens are
        // bound to it too.
        let dpop = match dpop_key.map(DpopKey::from_pkcs8).transpose() {
            Ok(key) => key.map(Arc::new),
            Err(e) => {
                tracing::error!(request_id, error = %e, "refresh: the session's DPoP key does not load");
                return RefreshOutcome::Rejected("dpop_key".into());
            }
        };
        // With a store, a replica may first wait out another's lock, then refresh itself.
        let wait = match self.store {
            Some(_) => 2 * self.http_timeout + Duration::from_secs(2),
            None => self.http_timeout + Duration::from_secs(2),
        };
        let this = self.clone();
        let (token, sub, rid) = (
            refresh_token.to_owned(),
            sub.to_owned(),
            request_id.to_owned(),
        );
        self.flights
            .run(flight_key(refresh_token), wait, async move {
                this.refresh_shared(&token, &sub, &rid, dpop.as_deref())
                    .await
            })
            .await
    }

    /// Ends the refreshes of a session that is logging out ([`Flights::end_session`]).
    pub(crate) fn end_refreshes(&self, refresh_token: Option<&str>, access_token: &str) {
        self.flights.end_session(refresh_token, access_token);
    }

    /// One refresh per refresh token across replicas, when there is a store: a published result
    /// is reused; otherwise the replica that takes the lock refreshes and publishes the result
    /// (sealed with the session keys: the store never holds a token in clear) and the others
    /// wait for it. Any store failure falls back to this replica's own single flight.
    async fn refresh_shared(
        &self,
        refresh_token: &str,
        sub: &str,
        request_id: &str,
        dpop: Option<&DpopKey>,
    ) -> RefreshOutcome {
        let Some(store) = self.store.as_ref() else {
            return self
                .call_refresh(refresh_token, sub, request_id, dpop)
                .await;
        };
        match self
            .shared_refresh(store, refresh_token, sub, request_id, dpop)
            .await
        {
            Ok(outcome) => outcome,
            Err(e) => {
                self.metrics.refresh("fallback");
                tracing::warn!(request_id, error = %e, "refresh: the store is unavailable; refreshing without it");
                self.call_refresh(refresh_token, sub, request_id, dpop)
                    .await
            }
        }
    }

    async fn shared_refresh(
        &self,
        store: &Store,
        refresh_token: &str,
        sub: &str,
        request_id: &str,
        dpop: Option<&DpopKey>,
    ) -> Result<RefreshOutcome, StoreError> {
        let flight: String = flight_key(refresh_token)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut waited = false;
        loop {
            if let Some(outcome) = self.published(store, &flight).await? {
                self.metrics
                    .refresh(if waited { "waited" } else { "reused" });
                return Ok(outcome);
            }
            if store.try_lock(&flight, self.http_timeout).await? {
                self.metrics.refresh("won");
                let outcome = self
                    .call_refresh(refresh_token, sub, request_id, dpop)
                    .await;
                match &outcome {
                    RefreshOutcome::Refreshed(tokens, issued_at) => {
                        let sealed = self.sealer.seal_value(
                            RESULT_VERSION,
                            &(tokens.as_ref(), *issued_at),
                            &flight,
                        );
                        if let Some(sealed) = sealed {
                            store
                                .put_result(&flight, &sealed, RESULT_TTL.as_secs())
                                .await?;
                        }
                    }
                    // The lock may have expired under a slow call and another replica refreshed
                    // first: its result is the session's, not this refusal.
                    RefreshOutcome::Rejected(_) => {
                        if let Some(published) = self.published(store, &flight).await? {
                            return Ok(published);
                        }
                        store.unlock(&flight).await?;
                    }
                    RefreshOutcome::Unavailable => store.unlock(&flight).await?,
                }
                return Ok(outcome);
            }
            // Another replica is refreshing: wait for its result (or for its lock to lapse).
            waited = true;
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// The result another replica published for `flight`, unsealed.
    async fn published(
        &self,
        store: &Store,
        flight: &str,
    ) -> Result<Option<RefreshOutcome>, StoreError> {
        Ok(store.result(flight).await?.and_then(|sealed| {
            self.sealer
                .open_value::<(TokenResponse, u64)>(RESULT_VERSION, &sealed, flight)
                .map(|(tokens, at)| RefreshOutcome::Refreshed(Arc::new(tokens), at))
        }))
    }

    async fn call_refresh(
        &self,
        refresh_token: &str,
        sub: &str,
        request_id: &str,
        dpop: Option<&DpopKey>,
    ) -> RefreshOutcome {
        let Some(provider) = self.provider() else {
            return RefreshOutcome::Unavailable;
        };
        match self
            .tokens
            .refresh(
                provider.metadata.token_endpoint.as_str(),
                refresh_token,
                dpop,
            )
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

    fn session() -> Session<'static> {
        let mut s = crate::session::fixture::session(0, "old-at");
        s.access_expires_at = 10;
        s.refresh_token = Some("old-rt".into());
        s.id_token = Some("id".into());
        s
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

    fn refreshed(at: &str, rt: &str) -> RefreshOutcome {
        let mut t = tokens(Some(300), None);
        t.access_token = at.into();
        t.refresh_token = Some(rt.into());
        RefreshOutcome::Refreshed(Arc::new(t), 0)
    }

    #[tokio::test]
    async fn a_refresh_outlives_the_request_that_started_it() {
        let flights = Flights::default();
        let key = flight_key("old-rt");
        let wait = Duration::from_secs(5);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        // The first request starts the refresh and is dropped (client gone) before the
        // provider answers.
        let first = flights.run(key, wait, async move {
            let _ = released.await;
            refreshed("at-2", "rt-2")
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), first)
                .await
                .is_err(),
            "still waiting for the provider"
        );
        let _ = release.send(());
        // The next request with the same old refresh token gets the accepted result and does
        // not call the provider again.
        let second = flights
            .run(key, wait, async {
                panic!("the old refresh token was spent again")
            })
            .await;
        match second {
            RefreshOutcome::Refreshed(t, _) => assert_eq!(t.access_token, "at-2"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn logout_ends_every_kept_refresh_of_the_session() {
        let flights = Flights::default();
        let wait = Duration::from_secs(5);
        // Two rotations: old-rt → rt-2 → rt-3; the user logs out holding rt-3.
        flights
            .run(flight_key("old-rt"), wait, async {
                refreshed("at-2", "rt-2")
            })
            .await;
        flights
            .run(flight_key("rt-2"), wait, async {
                refreshed("at-3", "rt-3")
            })
            .await;
        flights.end_session(Some("rt-3"), "at-3");
        for (rt, what) in [
            ("old-rt", "two rotations back"),
            ("rt-2", "one rotation back"),
            ("rt-3", "the current token, racing the logout"),
        ] {
            let again = flights
                .run(flight_key(rt), wait, async {
                    panic!("the provider was asked after logout")
                })
                .await;
            assert!(
                matches!(again, RefreshOutcome::Rejected(_)),
                "{what}: a refresh after logout got {again:?}"
            );
        }
        // Another session's kept result is untouched.
        flights
            .run(flight_key("other"), wait, async {
                refreshed("at-x", "rt-x")
            })
            .await;
        flights.end_session(Some("rt-3"), "at-3");
        let other = flights
            .run(flight_key("other"), wait, async { panic!("kept") })
            .await;
        assert!(matches!(other, RefreshOutcome::Refreshed(..)));
    }
}
