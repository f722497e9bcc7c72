//! Single flight: concurrent refreshes of one refresh token share one provider call, and a
//! result is kept for [`RESULT_TTL`] for requests still carrying the old cookie.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::outcome::{flight_key, rotated_to, Purpose, RefreshOutcome, Spent, RESULT_TTL};
use super::rotation::RotationLog;

/// A flight's own time limit, in callers' waits ([`Flights::run`]): far past its longest
/// legitimate run (waiting out another replica's lock, a provider call, a JWKS fetch, store
/// writes), so it never cuts a provider call short.
const FLIGHT_LIMIT_FACTOR: u32 = 4;

/// Whether a caller for `purpose` starts a flight of its own in place of the kept `spent`:
/// the token is still good (the kept use did not rotate it, or was refused) and the kept
/// outcome is for another purpose. A flight in progress, a rotation (followed instead), a
/// dead token and a result for the same purpose are never replaced, so every use of a token
/// takes its turn in the one flight of the token.
fn replaces(spent: Option<&Spent>, purpose: Purpose, key: &[u8; 32]) -> bool {
    match spent {
        None => false,
        Some(s) if s.purpose == purpose => false,
        Some(s) => match &s.outcome {
            RefreshOutcome::Refreshed(..) => rotated_to(s, key).is_none(),
            RefreshOutcome::Refused(_) => true,
            RefreshOutcome::Rejected(_) | RefreshOutcome::Unavailable => false,
        },
    }
}

struct Flight {
    outcome: watch::Receiver<Option<Spent>>,
    started: Instant,
}

type Table = Mutex<HashMap<[u8; 32], Flight>>;

/// Single-flight table of refreshes in progress or recently done, and the log of rotations.
#[derive(Default)]
pub struct Flights {
    table: Arc<Table>,
    /// Rotated refresh tokens by the old token's [`flight_key`], kept for the session idle
    /// window: when two purposes refresh at once, the browser gets two cookies with two
    /// different refresh tokens, and keeps whichever response came last, perhaps the one
    /// holding the token already spent. Its next refresh, maybe long after the kept results
    /// are gone, must go on from where the token rotated to, not spend it again (the
    /// provider would revoke the grant).
    pub(super) rotations: RotationLog,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.table.lock().map(|t| t.len()).unwrap_or(0);
        write!(f, "Flights({n})")
    }
}

impl Flights {
    /// The flight for `key`, and the sender when this caller started it ([`replaces`]).
    fn join(
        &self,
        key: [u8; 32],
        purpose: Purpose,
    ) -> (
        watch::Receiver<Option<Spent>>,
        Option<watch::Sender<Option<Spent>>>,
    ) {
        let (tx, rx) = watch::channel(None);
        let Ok(mut table) = self.table.lock() else {
            return (rx, Some(tx));
        };
        table.retain(|_, f| f.started.elapsed() < RESULT_TTL);
        if let Some(f) = table.get(&key) {
            if !replaces(f.outcome.borrow().as_ref(), purpose, &key) {
                return (f.outcome.clone(), None);
            }
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
    /// which case its outcome is shared (it may be for another purpose: the caller looks). The
    /// work runs as a task of its own, so a refresh the provider accepted is kept even when
    /// every request that waited for it is gone (the next request must not spend the old
    /// refresh token again). Waits at most `wait`; an `Unavailable` outcome is not kept, so
    /// the next caller tries again.
    pub async fn run<F>(&self, key: [u8; 32], purpose: Purpose, wait: Duration, work: F) -> Spent
    where
        F: std::future::Future<Output = Spent> + Send + 'static,
    {
        let (mut rx, start) = self.join(key, purpose);
        if let Some(tx) = start {
            let table = self.table.clone();
            let kept = rx.clone();
            let task = async move {
                // Callers stop waiting after `wait`; the flight itself may run longer, since
                // a provider call that started must finish and be recorded (cut short, its
                // rotation would be lost and the next request would spend the old token).
                // The limit is only a safety net past every bounded step the work has.
                let spent = tokio::time::timeout(FLIGHT_LIMIT_FACTOR * wait, work)
                    .await
                    .unwrap_or(Spent {
                        purpose,
                        outcome: RefreshOutcome::Unavailable,
                    });
                if matches!(spent.outcome, RefreshOutcome::Unavailable) {
                    forget_flight(&table, &key, &kept);
                }
                let _ = tx.send(Some(spent));
            };
            // Traced: the flight's provider and store calls are children of the request
            // that started it.
            if crate::ops::telemetry::enabled() {
                use opentelemetry::context::FutureExt;
                tokio::spawn(task.with_current_context());
            } else {
                tokio::spawn(task);
            }
        }
        let spent = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
            Ok(Ok(spent)) => spent.clone(),
            _ => None,
        };
        spent.unwrap_or(Spent {
            purpose,
            outcome: RefreshOutcome::Unavailable,
        })
    }

    /// Records that the token with flight `key` rotated to `next` (for `keep`). `true` when
    /// rotations still in their window had to go for room.
    pub(crate) fn record_rotation(
        &self,
        key: [u8; 32],
        next: &str,
        next_expires_at: Option<u64>,
        keep: Duration,
    ) -> bool {
        self.rotations.record(key, next, next_expires_at, keep)
    }

    /// Whether a flight of `key` is in progress or kept: it has the whole outcome, which a
    /// caller needs more than the log's rotation.
    pub(crate) fn kept(&self, key: &[u8; 32]) -> bool {
        self.table
            .lock()
            .ok()
            .is_some_and(|t| t.get(key).is_some_and(|f| f.started.elapsed() < RESULT_TTL))
    }

    /// What the kept flight of `key` rotated its token to, if it did.
    pub(crate) fn kept_rotation(&self, key: &[u8; 32]) -> Option<String> {
        let table = self.table.lock().ok()?;
        let f = table.get(key)?;
        let spent = f.outcome.borrow();
        rotated_to(spent.as_ref()?, key).map(str::to_owned)
    }

    /// What the token with flight `key` rotated to, from the log.
    pub(crate) fn logged(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
        self.rotations.logged(key)
    }

    /// What the token with flight `key` rotated to, when no flight of it is kept.
    #[cfg(test)]
    pub(crate) fn rotated(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
        if self.kept(key) {
            return None;
        }
        self.logged(key)
    }

    /// Ends a session's refreshes (logout): for [`RESULT_TTL`], a refresh with its current
    /// refresh token, or with any older one whose kept result led to the session's current
    /// tokens (the whole chain of rotations still kept, whatever each was for), is answered
    /// `Rejected` without asking the provider. So a copy of an older cookie gets nothing
    /// back, and a request that races the logout cannot refresh the session while its token
    /// is being revoked.
    pub(crate) fn end_session(&self, refresh_token: Option<&str>, access_token: &str) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let mut ended: std::collections::HashSet<[u8; 32]> =
            refresh_token.map(flight_key).into_iter().collect();
        let mut log = self.rotations.lock();
        loop {
            let before = ended.len();
            if let Some(log) = log.as_mut() {
                let led: Vec<[u8; 32]> = log
                    .iter()
                    .filter(|(k, r)| !ended.contains(*k) && ended.contains(&r.next_key))
                    .map(|(k, _)| *k)
                    .collect();
                ended.extend(led);
            }
            let led: Vec<[u8; 32]> = table
                .iter()
                .filter(|(key, _)| !ended.contains(*key))
                .filter(|(key, flight)| match &*flight.outcome.borrow() {
                    Some(
                        spent @ Spent {
                            outcome: RefreshOutcome::Refreshed(t, _),
                            ..
                        },
                    ) => {
                        t.access_token == access_token
                            || rotated_to(spent, key)
                                .is_some_and(|rt| ended.contains(&flight_key(rt)))
                    }
                    _ => false,
                })
                .map(|(key, _)| *key)
                .collect();
            ended.extend(led);
            if ended.len() == before {
                break;
            }
        }
        let now = Instant::now();
        for key in ended {
            if let Some(log) = log.as_mut() {
                log.remove(&key);
            }
            let (_, outcome) = watch::channel(Some(Spent {
                purpose: Purpose::SESSION,
                outcome: RefreshOutcome::Rejected("logged_out".into()),
            }));
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
fn forget_flight(table: &Table, key: &[u8; 32], rx: &watch::Receiver<Option<Spent>>) {
    if let Ok(mut table) = table.lock() {
        if table.get(key).is_some_and(|f| f.outcome.same_channel(rx)) {
            table.remove(key);
        }
    }
}
