//! One refresh per refresh token across replicas, through the store: a published result is
//! reused, otherwise the replica that takes the lock asks the provider and publishes the
//! outcome (sealed with the session keys) and a rotation; the others wait for it.

use std::sync::Arc;
use std::time::Duration;

use super::outcome::{rotated_to, Job, Purpose, RefreshOutcome, Spent, RESULT_TTL};
use crate::oidc::client::Oidc;
use crate::oidc::lifetime::expires_at;
use crate::oidc::token_client::TokenResponse;
use crate::store::{LockToken, Store, StoreError};

/// The wire version of a refresh result shared through the store (2: with its purpose).
const RESULT_VERSION: u8 = 2;
/// How often a replica looks for another replica's refresh result while it waits.
const WAIT_STEP: Duration = Duration::from_millis(25);

/// The wire version of a rotation in the store.
const ROTATION_VERSION: u8 = 1;

/// The flight this replica won the store's lock for, and what it refreshed with.
struct Won<'a> {
    flight: &'a str,
    lock: LockToken,
    key: [u8; 32],
    purpose: Purpose,
    refresh_token: &'a str,
    request_id: &'a str,
}

impl Oidc {
    /// The rotation of flight `key` recorded in the store, if any.
    pub(super) async fn stored_rotation(&self, key: &[u8; 32]) -> Option<String> {
        let store = self.store.as_ref()?;
        let flight: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let sealed = store.rotation(&flight).await.ok()??;
        self.sealer
            .open_value::<(String, Option<u64>)>(ROTATION_VERSION, &sealed, &flight)
            .map(|(next, _)| next)
    }

    /// What the refresh token with flight `key` rotated to: from this replica's log, else
    /// (with a store) from another replica's record. A store failure is a miss.
    pub(super) async fn rotated(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
        if self.flights.kept(key) {
            return None;
        }
        if let Some(found) = self.flights.logged(key) {
            return Some(found);
        }
        let store = self.store.as_ref()?;
        let flight: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // The rotation first: it is written after the result, so with it visible a result
        // still kept is visible too. (Looking for the result first raced with a publish in
        // between: the request then refreshed again from the new token, a second provider
        // call for one burst, seen across three replicas.)
        let sealed = store.rotation(&flight).await.ok()??;
        // A result another replica published has the tokens: the flight will reuse it.
        if store.result(&flight).await.ok()?.is_some() {
            return None;
        }
        let (next, expires_at) =
            self.sealer
                .open_value::<(String, Option<u64>)>(ROTATION_VERSION, &sealed, &flight)?;
        self.flights
            .record_rotation(*key, &next, expires_at, self.rotation_ttl);
        Some((next, expires_at))
    }

    /// One refresh per flight across replicas, when there is a store: a published result is
    /// reused (whatever its purpose: the caller looks); otherwise the replica that takes the
    /// lock refreshes and publishes the result (sealed with the session keys: the store never
    /// holds a token in clear) and the others wait for it. Any store failure falls back to
    /// this replica's own single flight.
    pub(super) async fn refresh_shared(
        &self,
        key: [u8; 32],
        purpose: Purpose,
        refresh_token: &str,
        job: &Job,
    ) -> Spent {
        let Some(store) = self.store.as_ref() else {
            return Spent {
                purpose,
                outcome: self.call_refresh(refresh_token, job).await,
            };
        };
        match self
            .shared_refresh(store, key, purpose, refresh_token, job)
            .await
        {
            Ok(spent) => spent,
            Err(e) => {
                self.metrics.refresh("fallback");
                tracing::warn!(request_id = %job.request_id, error = %e, "refresh: the store is unavailable; refreshing without it");
                Spent {
                    purpose,
                    outcome: self.call_refresh(refresh_token, job).await,
                }
            }
        }
    }

    async fn shared_refresh(
        &self,
        store: &Store,
        key: [u8; 32],
        purpose: Purpose,
        refresh_token: &str,
        job: &Job,
    ) -> Result<Spent, StoreError> {
        let flight: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // Another purpose's result of a token that did not rotate: this purpose takes its
        // own turn (under the same lock).
        let usable = |s: &Spent| s.purpose == purpose || rotated_to(s, &key).is_some();
        let mut waited = false;
        // Long enough to wait out one lock that lapses (its holder died).
        let give_up = tokio::time::Instant::now() + 2 * self.http_timeout + Duration::from_secs(3);
        loop {
            let published = match self.published(store, &flight).await {
                Err(StoreError::Unreadable) => {
                    // Another replica refreshed with keys this one does not have yet: asking
                    // the provider again could spend the token twice. Try again later.
                    tracing::warn!(request_id = %job.request_id, "refresh: another replica's result is sealed under a session key this replica does not have (a key rotation under way?); not refreshing");
                    return Ok(Spent {
                        purpose,
                        outcome: RefreshOutcome::Unavailable,
                    });
                }
                other => other?,
            };
            if let Some(spent) = published.filter(usable) {
                self.metrics
                    .refresh(if waited { "waited" } else { "reused" });
                return Ok(spent);
            }
            // Held while the provider is asked (its call, and a JWKS fetch when the ID token
            // names a new signing key: two HTTP timeouts) and the result published (the route
            // token's store write happens in between). A lock that lapsed early would let
            // another replica spend the token again; one that lasts long delays the others
            // only when its holder died.
            let hold = 2 * self.http_timeout + Duration::from_secs(2);
            if tokio::time::Instant::now() >= give_up {
                // Waited a whole lock's lifetime and more: never ask the provider this late.
                return Ok(Spent {
                    purpose,
                    outcome: RefreshOutcome::Unavailable,
                });
            }
            if let Some(lock) = store.try_lock(&flight, hold).await? {
                // The winner of the last round publishes, then unlocks: a result that
                // appeared between the look above and this lock would otherwise be missed,
                // and its spent token sent to the provider again (seen in a burst across
                // three replicas: `invalid_grant`, then a 401). Look again, holding the lock.
                match self.published(store, &flight).await {
                    Ok(Some(spent)) if usable(&spent) => {
                        if let Err(e) = store.unlock(&flight, lock).await {
                            tracing::warn!(request_id = %job.request_id, error = %e, "refresh: could not release the store lock");
                        }
                        self.metrics
                            .refresh(if waited { "waited" } else { "reused" });
                        return Ok(spent);
                    }
                    Ok(_) => {}
                    Err(StoreError::Unreadable) => {
                        let _ = store.unlock(&flight, lock).await;
                        return Ok(Spent {
                            purpose,
                            outcome: RefreshOutcome::Unavailable,
                        });
                    }
                    // Holding the lock, a failed look is "no result", as before the look:
                    // unlocking and falling back would let the waiting replicas in too.
                    Err(e) => {
                        tracing::warn!(request_id = %job.request_id, error = %e, "refresh: could not look for a published result again; refreshing under the lock");
                    }
                }
                // A rotation recorded without a result (its write failed, or the result
                // expired): the token is spent. Not this time; the next request follows the
                // rotation ([`Oidc::rotated`]).
                if matches!(store.rotation(&flight).await, Ok(Some(_))) {
                    let _ = store.unlock(&flight, lock).await;
                    tracing::warn!(request_id = %job.request_id, "refresh: the token was already rotated and its result is gone; not refreshing it again");
                    return Ok(Spent {
                        purpose,
                        outcome: RefreshOutcome::Unavailable,
                    });
                }
                self.metrics.refresh("won");
                let outcome = self.call_refresh(refresh_token, job).await;
                // From here on the token may be spent: a store failure is logged, never a
                // reason to ask the provider again with it.
                return Ok(self
                    .publish(
                        store,
                        Won {
                            flight: &flight,
                            lock,
                            key,
                            purpose,
                            refresh_token,
                            request_id: &job.request_id,
                        },
                        outcome,
                    )
                    .await);
            }
            // Another replica is refreshing: wait for its result (or for its lock to lapse).
            waited = true;
            tokio::time::sleep(WAIT_STEP).await;
        }
    }

    /// Publishes the outcome of this replica's provider call for the other replicas (sealed
    /// with the session keys: the store never holds a token in clear), records a rotation,
    /// and releases the lock. A refusal yields to a result another replica published under a
    /// lock that lapsed meanwhile. Store failures are logged and change nothing.
    async fn publish(&self, store: &Store, won: Won<'_>, outcome: RefreshOutcome) -> Spent {
        let Won {
            flight,
            lock,
            key,
            purpose,
            refresh_token,
            request_id,
        } = won;
        let warn = |e: StoreError| {
            tracing::warn!(request_id, error = %e, "refresh: the result was not shared through the store");
        };
        match &outcome {
            RefreshOutcome::Refreshed(tokens, issued_at) => {
                let sealed = self.sealer.seal_value(
                    RESULT_VERSION,
                    &(purpose, tokens.as_ref(), *issued_at),
                    flight,
                );
                if let Some(sealed) = sealed {
                    if let Err(e) = store
                        .put_result(flight, &sealed, RESULT_TTL.as_secs())
                        .await
                    {
                        warn(e);
                    }
                }
                // The rotation outlives the result, for cookies that missed it.
                if let Some(next) = tokens
                    .refresh_token
                    .as_deref()
                    .filter(|n| *n != refresh_token)
                {
                    let expires_at = tokens
                        .refresh_expires_in
                        .map(|s| expires_at(*issued_at, Some(s)));
                    let sealed =
                        self.sealer
                            .seal_value(ROTATION_VERSION, &(next, expires_at), flight);
                    if let Some(sealed) = sealed {
                        if let Err(e) = store
                            .put_rotation(flight, &sealed, self.rotation_ttl.as_secs())
                            .await
                        {
                            warn(e);
                        }
                    }
                }
            }
            RefreshOutcome::Rejected(_) | RefreshOutcome::Refused(_) => {
                let usable = |s: &Spent| s.purpose == purpose || rotated_to(s, &key).is_some();
                match self.published(store, flight).await {
                    Ok(Some(published)) if usable(&published) => return published,
                    Ok(_) => {}
                    Err(e) => warn(e),
                }
            }
            RefreshOutcome::Unavailable => {}
        }
        // Released once published: a replica that comes for another purpose of a token that
        // did not rotate need not wait for the lock to lapse.
        if let Err(e) = store.unlock(flight, lock).await {
            warn(e);
        }
        Spent { purpose, outcome }
    }

    /// The result another replica published for `flight`, unsealed. A result that is there
    /// but does not open (sealed under a session key this replica does not have yet, in the
    /// middle of a key rotation) is `Err(StoreError::Unreadable)`: the token it came from may
    /// be spent, so it must not be taken for "no result".
    pub(super) async fn published(
        &self,
        store: &Store,
        flight: &str,
    ) -> Result<Option<Spent>, StoreError> {
        let Some(sealed) = store.result(flight).await? else {
            return Ok(None);
        };
        self.sealer
            .open_value::<(Purpose, TokenResponse, u64)>(RESULT_VERSION, &sealed, flight)
            .map(|(purpose, tokens, at)| {
                Some(Spent {
                    purpose,
                    outcome: RefreshOutcome::Refreshed(Arc::new(tokens), at),
                })
            })
            .ok_or(StoreError::Unreadable)
    }
}
