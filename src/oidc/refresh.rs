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
use crate::config::Audience;
use crate::session::Session;
use crate::store::{LockToken, Store, StoreError};

/// A flight's own time limit, in callers' waits ([`Flights::run`]): far past its longest
/// legitimate run (waiting out another replica's lock, a provider call, a JWKS fetch, store
/// writes), so it never cuts a provider call short.
const FLIGHT_LIMIT_FACTOR: u32 = 4;

/// Puts tokens refreshed at `issued_at` (Unix seconds; lifetimes count from then, not from when
/// a later request picks up the shared result) into `session`. A rotated refresh token replaces
/// the old one; a new ID token replaces the old one as the logout hint (the claims stay those
/// validated at login).
pub fn apply(session: &mut Session<'static>, tokens: &TokenResponse, issued_at: u64) {
    session.access_token = tokens.access_token.clone().into();
    session.access_expires_at = super::callback::expires_at(issued_at, tokens.expires_in);
    session.access_lifetime = super::callback::lifetime(tokens.expires_in);
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

/// Puts what a refresh for a route's audience changed into `session`: only a rotated refresh
/// token (the access token it brought belongs to the route, not to the session).
pub fn apply_rotation(session: &mut Session<'static>, tokens: &TokenResponse, issued_at: u64) {
    if let Some(rt) = &tokens.refresh_token {
        session.refresh_token = Some(rt.clone().into());
        session.refresh_expires_at = tokens
            .refresh_expires_in
            .map(|s| super::callback::expires_at(issued_at, Some(s)));
    }
}

/// Puts every refresh a caller passed through on its way into `session` ([`Refresh::passed`]).
pub fn apply_passed(session: &mut Session<'static>, passed: &[Spent]) {
    for spent in passed {
        if let RefreshOutcome::Refreshed(tokens, at) = &spent.outcome {
            if spent.purpose == Purpose::SESSION {
                apply(session, tokens, *at);
            } else {
                apply_rotation(session, tokens, *at);
            }
        }
    }
}

/// The wire version of a refresh result shared through the store (2: with its purpose).
const RESULT_VERSION: u8 = 2;
/// How often a replica looks for another replica's refresh result while it waits.
const WAIT_STEP: Duration = Duration::from_millis(25);
/// The most refreshes one caller follows through ([`Oidc::refresh`]): each is another
/// purpose's use of a rotated refresh token that happened first.
const MAX_HOPS: usize = 8;

/// How long a successful refresh result answers for the old refresh token.
pub(crate) const RESULT_TTL: Duration = Duration::from_secs(60);

/// The outcome of a refresh, shared by every request that waited for it.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// New tokens, and when they were issued (Unix seconds).
    Refreshed(Arc<TokenResponse>, u64),
    /// The provider refused the refresh token (revoked, expired, reused): log in again.
    Rejected(String),
    /// The provider will not issue a token for this audience (`invalid_target`,
    /// `invalid_scope`): the route answers 403, the session stays.
    Refused(String),
    /// The provider could not be reached or failed: try again later, keep the session.
    Unavailable,
}

/// What a refresh is for: the session's own access token, or a route's [`Audience`] (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Purpose(pub [u8; 16]);

impl Purpose {
    /// The session's own access token.
    pub const SESSION: Purpose = Purpose([0; 16]);
    /// Not a refresh of this replica's: a rotation found in the log ([`Flights::rotated`]),
    /// which brings only the refresh token it rotated to.
    pub const ROTATED: Purpose = Purpose([0xff; 16]);

    pub fn of(audience: Option<&Audience>) -> Purpose {
        audience.map_or(Purpose::SESSION, |a| Purpose(a.id))
    }
}

/// One use of a refresh token: what it was for, and what came of it.
#[derive(Debug, Clone)]
pub struct Spent {
    pub purpose: Purpose,
    pub outcome: RefreshOutcome,
}

/// What a caller of [`Oidc::refresh`] gets.
#[derive(Debug, Clone)]
pub struct Refresh {
    /// Refreshes for other purposes that spent (and rotated) the caller's refresh token first,
    /// in order: the session must take their refresh tokens ([`apply_passed`]).
    pub passed: Vec<Spent>,
    /// The outcome for the caller's purpose.
    pub outcome: RefreshOutcome,
}

impl Refresh {
    /// An outcome with nothing passed on the way.
    pub fn only(outcome: RefreshOutcome) -> Refresh {
        Refresh {
            passed: Vec::new(),
            outcome,
        }
    }
}

/// The single-flight key of a refresh token: its SHA-256 (the token itself is not kept).
/// Every use of a token meets here first, whatever its purpose: with rotation, a token is good
/// for one use only, so uses for the session and for each route's audience take turns.
pub fn flight_key(refresh_token: &str) -> [u8; 32] {
    Sha256::digest(refresh_token.as_bytes()).into()
}

/// The token `spent` rotated the token of flight `key` to, if it did.
fn rotated_to<'s>(spent: &'s Spent, key: &[u8; 32]) -> Option<&'s str> {
    match &spent.outcome {
        RefreshOutcome::Refreshed(t, _) => t
            .refresh_token
            .as_deref()
            .filter(|next| flight_key(next) != *key),
        _ => None,
    }
}

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

/// A refresh token that was used and rotated: what it rotated to (and when that one
/// expires, if the provider said), kept until `until`.
struct Rotation {
    next: String,
    /// `next`'s flight key (logout walks the log by it).
    next_key: [u8; 32],
    next_expires_at: Option<u64>,
    until: Instant,
}

/// The most rotations kept ([`Flights::record_rotation`]): a few hundred bytes each.
const ROTATIONS: usize = 65_536;

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
    rotations: Mutex<HashMap<[u8; 32], Rotation>>,
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
        let Ok(mut log) = self.rotations.lock() else {
            return false;
        };
        let now = Instant::now();
        let mut evicted = false;
        if log.len() >= ROTATIONS && !log.contains_key(&key) {
            log.retain(|_, r| r.until > now);
            if log.len() >= ROTATIONS {
                // The oldest quarter goes: a cookie that missed one of these rotations will
                // spend its token again (counted; a store keeps them all).
                let mut untils: Vec<Instant> = log.values().map(|r| r.until).collect();
                untils.sort_unstable();
                let cut = untils[ROTATIONS / 4];
                log.retain(|_, r| r.until > cut);
                evicted = true;
            }
        }
        log.insert(
            key,
            Rotation {
                next: next.to_owned(),
                next_key: flight_key(next),
                next_expires_at,
                until: now + keep,
            },
        );
        evicted
    }

    /// Whether a flight of `key` is in progress or kept: it has the whole outcome, which a
    /// caller needs more than the log's rotation.
    fn kept(&self, key: &[u8; 32]) -> bool {
        self.table
            .lock()
            .ok()
            .is_some_and(|t| t.get(key).is_some_and(|f| f.started.elapsed() < RESULT_TTL))
    }

    /// What the kept flight of `key` rotated its token to, if it did.
    fn kept_rotation(&self, key: &[u8; 32]) -> Option<String> {
        let table = self.table.lock().ok()?;
        let f = table.get(key)?;
        let spent = f.outcome.borrow();
        rotated_to(spent.as_ref()?, key).map(str::to_owned)
    }

    /// What the token with flight `key` rotated to, from the log.
    fn logged(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
        let log = self.rotations.lock().ok()?;
        log.get(key)
            .filter(|r| r.until > Instant::now())
            .map(|r| (r.next.clone(), r.next_expires_at))
    }

    /// What the token with flight `key` rotated to, when no flight of it is kept.
    #[cfg(test)]
    fn rotated(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
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
        let mut log = self.rotations.lock().ok();
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

/// Where a caller goes after the flight of its token answered for another purpose.
#[derive(Debug, PartialEq, Eq)]
enum Hop {
    /// On with the token it rotated to.
    Follow(String),
    /// The token is still good: join its flight again (its own use takes the next turn).
    Again,
    /// The outcome stands for every purpose (a dead token; the provider unreachable).
    Stop,
}

fn next_hop(spent: &Spent, key: &[u8; 32]) -> Hop {
    if let Some(next) = rotated_to(spent, key) {
        return Hop::Follow(next.to_owned());
    }
    match &spent.outcome {
        RefreshOutcome::Refreshed(..) | RefreshOutcome::Refused(_) => Hop::Again,
        RefreshOutcome::Rejected(_) | RefreshOutcome::Unavailable => Hop::Stop,
    }
}

/// A rotation from the log as a step passed on the way: only the refresh token.
fn rotation_step(next: String, next_expires_at: Option<u64>) -> Spent {
    let now = crate::unix_now();
    Spent {
        purpose: Purpose::ROTATED,
        outcome: RefreshOutcome::Refreshed(
            Arc::new(TokenResponse {
                access_token: String::new(),
                token_type: String::new(),
                expires_in: None,
                refresh_token: Some(next),
                refresh_expires_in: next_expires_at.map(|at| at.saturating_sub(now).max(1)),
                id_token: None,
                scope: None,
            }),
            now,
        ),
    }
}

/// The wire version of a rotation in the store.
const ROTATION_VERSION: u8 = 1;

/// What one refresh is: for whom, with what, for which purpose.
#[derive(Clone)]
pub(crate) struct RefreshRequest<'a> {
    pub(crate) refresh_token: &'a str,
    /// The session's user, and its id (a route token is kept per session).
    pub(crate) sub: &'a str,
    pub(crate) session_id: u128,
    pub(crate) request_id: &'a str,
    /// The session's DPoP key (PKCS#8), which the refresh must prove.
    pub(crate) dpop_key: Option<&'a [u8]>,
    /// A route's audience; `None`: the session's own token.
    pub(crate) audience: Option<&'a Arc<Audience>>,
}

/// The owned parts of a [`RefreshRequest`] that the flight's task needs.
pub(super) struct Job {
    pub(super) sub: String,
    pub(super) session_id: u128,
    pub(super) request_id: String,
    pub(super) dpop: Option<Arc<DpopKey>>,
    pub(super) audience: Option<Arc<Audience>>,
}

impl Oidc {
    /// Refreshes for `req`'s purpose, sharing the provider call with concurrent requests
    /// ([`Flights::run`]). A flight that answers for another purpose means the refresh token
    /// was used for that first: the caller goes on with the token it rotated to (and reports
    /// the step in [`Refresh::passed`]), or, if it did not rotate, to its own purpose's flight.
    pub(crate) async fn refresh(self: &Arc<Self>, req: RefreshRequest<'_>) -> Refresh {
        // A session's DPoP key: the refresh proves possession of it, so the new tokens are
        // bound to it too.
        let dpop = match req.dpop_key.map(DpopKey::from_pkcs8).transpose() {
            Ok(key) => key.map(Arc::new),
            Err(e) => {
                tracing::error!(request_id = req.request_id, error = %e, "refresh: the session's DPoP key does not load");
                return Refresh::only(RefreshOutcome::Rejected("dpop_key".into()));
            }
        };
        // With a store, a replica may first wait out another's lock, then refresh itself.
        let wait = match self.store {
            // Another's lock (its hold, below) plus this replica's own call.
            Some(_) => 3 * self.http_timeout + Duration::from_secs(4),
            None => self.http_timeout + Duration::from_secs(2),
        };
        let purpose = Purpose::of(req.audience.map(|a| a.as_ref()));
        let job = Arc::new(Job {
            sub: req.sub.to_owned(),
            session_id: req.session_id,
            request_id: req.request_id.to_owned(),
            dpop,
            audience: req.audience.cloned(),
        });
        let mut token = req.refresh_token.to_owned();
        let mut key = flight_key(&token);
        let mut passed = Vec::new();
        for _ in 0..MAX_HOPS {
            if let Some((next, expires_at)) = self.rotated(&key).await {
                passed.push(rotation_step(next.clone(), expires_at));
                token = next;
                key = flight_key(&token);
                continue;
            }
            let (this, job2, rt) = (self.clone(), job.clone(), token.clone());
            let spent = self
                .flights
                .run(key, purpose, wait, async move {
                    this.refresh_shared(key, purpose, &rt, &job2).await
                })
                .await;
            if let (Some(next), RefreshOutcome::Refreshed(t, at)) =
                (rotated_to(&spent, &key), &spent.outcome)
            {
                let expires_at = t
                    .refresh_expires_in
                    .map(|s| super::callback::expires_at(*at, Some(s)));
                if self
                    .flights
                    .record_rotation(key, next, expires_at, self.rotation_ttl)
                {
                    self.metrics.limit("rotation_log");
                }
            }
            if spent.purpose == purpose {
                return Refresh {
                    passed,
                    outcome: spent.outcome,
                };
            }
            match next_hop(&spent, &key) {
                Hop::Follow(next) => {
                    token = next;
                    key = flight_key(&token);
                    passed.push(spent);
                }
                Hop::Again => {}
                Hop::Stop => {
                    return Refresh {
                        passed,
                        outcome: spent.outcome,
                    }
                }
            }
        }
        tracing::warn!(
            request_id = req.request_id,
            "refresh: the refresh token was rotated by too many other refreshes in a row"
        );
        Refresh {
            passed,
            outcome: RefreshOutcome::Unavailable,
        }
    }

    /// The newest refresh token `refresh_token` rotated to, as far as this replica (its kept
    /// flights and log) and the store know: what a logout must revoke, since the cookie may
    /// hold a token already spent.
    pub(crate) async fn newest_refresh_token(&self, refresh_token: &str) -> String {
        let mut token = refresh_token.to_owned();
        for _ in 0..MAX_HOPS {
            let key = flight_key(&token);
            let next = match self.flights.kept_rotation(&key) {
                Some(next) => Some(next),
                None => match self.flights.logged(&key) {
                    Some((next, _)) => Some(next),
                    None => self.stored_rotation(&key).await,
                },
            };
            match next {
                Some(next) => token = next,
                None => break,
            }
        }
        token
    }

    /// The rotation of flight `key` recorded in the store, if any.
    async fn stored_rotation(&self, key: &[u8; 32]) -> Option<String> {
        let store = self.store.as_ref()?;
        let flight: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let sealed = store.rotation(&flight).await.ok()??;
        self.sealer
            .open_value::<(String, Option<u64>)>(ROTATION_VERSION, &sealed, &flight)
            .map(|(next, _)| next)
    }

    /// Ends the refreshes of a session that is logging out ([`Flights::end_session`]) and
    /// forgets its route tokens here.
    pub(crate) async fn end_refreshes(
        &self,
        session_id: u128,
        refresh_token: Option<&str>,
        access_token: &str,
    ) {
        self.flights.end_session(refresh_token, access_token);
        self.forget_audience_tokens(session_id).await;
    }

    /// What the refresh token with flight `key` rotated to: from this replica's log, else
    /// (with a store) from another replica's record. A store failure is a miss.
    async fn rotated(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
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
    async fn refresh_shared(
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
                        (&flight, lock),
                        key,
                        purpose,
                        refresh_token,
                        outcome,
                        &job.request_id,
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
    #[allow(clippy::too_many_arguments)]
    async fn publish(
        &self,
        store: &Store,
        (flight, lock): (&str, LockToken),
        key: [u8; 32],
        purpose: Purpose,
        refresh_token: &str,
        outcome: RefreshOutcome,
        request_id: &str,
    ) -> Spent {
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
                        .map(|s| super::callback::expires_at(*issued_at, Some(s)));
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
    async fn published(&self, store: &Store, flight: &str) -> Result<Option<Spent>, StoreError> {
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

    async fn call_refresh(&self, refresh_token: &str, job: &Job) -> RefreshOutcome {
        let Some(provider) = self.provider() else {
            return RefreshOutcome::Unavailable;
        };
        let request_id = job.request_id.as_str();
        let audience = job.audience.as_deref();
        match self
            .tokens
            .refresh(
                provider.metadata.token_endpoint.as_str(),
                refresh_token,
                job.dpop.as_deref(),
                audience,
            )
            .await
        {
            Ok(mut tokens) => {
                let issued_at = crate::unix_now();
                if audience.is_some() {
                    // A route's token: the ID token stays the one the session keeps.
                    tokens.id_token = None;
                    let tokens = Arc::new(tokens);
                    self.keep_audience_token(job, &tokens, issued_at).await;
                    tracing::info!(
                        request_id,
                        rotated = tokens.refresh_token.is_some(),
                        "route token issued"
                    );
                    return RefreshOutcome::Refreshed(tokens, issued_at);
                }
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
                        Ok(claims) if claims.sub == job.sub => tokens.id_token = Some(id_token),
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
                RefreshOutcome::Refreshed(Arc::new(tokens), issued_at)
            }
            // Only `invalid_grant` says the refresh token itself is dead (RFC 6749 §5.2).
            // `invalid_client`, a rate limit or a firewall's 403 are the provider's or our
            // configuration's problem: the session is kept and the request answered 503.
            Err(TokenError::Provider { error, .. }) if error == "invalid_grant" => {
                tracing::info!(request_id, provider_error = %error, "refresh refused by the provider");
                RefreshOutcome::Rejected(error)
            }
            // A route's audience the grant does not cover (RFC 8707 §2, RFC 6749 §5.2).
            Err(TokenError::Provider { error, .. })
                if audience.is_some()
                    && (error == "invalid_target" || error == "invalid_scope") =>
            {
                tracing::info!(request_id, provider_error = %error, "the provider refused the route's audience");
                self.metrics.route_token("refused");
                self.keep_refusal(job);
                RefreshOutcome::Refused(error)
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

    fn refreshed(at: &str, rt: &str) -> Spent {
        let mut t = tokens(Some(300), None);
        t.access_token = at.into();
        t.refresh_token = Some(rt.into());
        Spent {
            purpose: Purpose::SESSION,
            outcome: RefreshOutcome::Refreshed(Arc::new(t), 0),
        }
    }

    #[tokio::test]
    async fn a_refresh_outlives_the_request_that_started_it() {
        let flights = Flights::default();
        let key = flight_key("old-rt");
        let wait = Duration::from_secs(5);
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        // The first request starts the refresh and is dropped (client gone) before the
        // provider answers.
        let first = flights.run(key, Purpose::SESSION, wait, async move {
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
            .run(key, Purpose::SESSION, wait, async {
                panic!("the old refresh token was spent again")
            })
            .await;
        match second.outcome {
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
            .run(flight_key("old-rt"), Purpose::SESSION, wait, async {
                refreshed("at-2", "rt-2")
            })
            .await;
        flights
            .run(flight_key("rt-2"), Purpose::SESSION, wait, async {
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
                .run(flight_key(rt), Purpose::SESSION, wait, async {
                    panic!("the provider was asked after logout")
                })
                .await;
            assert!(
                matches!(again.outcome, RefreshOutcome::Rejected(_)),
                "{what}: a refresh after logout got {again:?}"
            );
        }
        // Another session's kept result is untouched.
        flights
            .run(flight_key("other"), Purpose::SESSION, wait, async {
                refreshed("at-x", "rt-x")
            })
            .await;
        flights.end_session(Some("rt-3"), "at-3");
        let other = flights
            .run(flight_key("other"), Purpose::SESSION, wait, async {
                panic!("kept")
            })
            .await;
        assert!(matches!(other.outcome, RefreshOutcome::Refreshed(..)));
    }

    /// Where a caller goes after the flight of its token answered for another purpose.
    #[test]
    fn a_use_for_another_purpose_leads_on() {
        let key = flight_key("rt-1");
        // Rotated: on with the new token, whatever the first use was for.
        assert_eq!(
            next_hop(&refreshed("at-2", "rt-2"), &key),
            Hop::Follow("rt-2".into())
        );
        // Not rotated (the same token back): the token's flight again, for a turn of its own.
        assert_eq!(next_hop(&refreshed("at-2", "rt-1"), &key), Hop::Again);
        let refused = Spent {
            purpose: Purpose([1; 16]),
            outcome: RefreshOutcome::Refused("invalid_target".into()),
        };
        assert_eq!(next_hop(&refused, &key), Hop::Again);
        // A dead token is dead for every purpose.
        let dead = Spent {
            purpose: Purpose::SESSION,
            outcome: RefreshOutcome::Rejected("invalid_grant".into()),
        };
        assert_eq!(next_hop(&dead, &key), Hop::Stop);
    }

    /// Every use of one token takes its turn in the token's one flight: a use for another
    /// purpose replaces a finished result that left the token good (refused, or not rotated),
    /// never one in progress, and a caller that finds another purpose's use in progress waits
    /// for it instead of spending the token beside it.
    #[tokio::test]
    async fn uses_of_one_token_never_overlap() {
        let flights = Arc::new(Flights::default());
        let key = flight_key("rt-1");
        let wait = Duration::from_secs(5);
        let (route, other) = (Purpose([1; 16]), Purpose([2; 16]));
        // A refusal is kept for its purpose...
        let refused = flights
            .run(key, route, wait, async move {
                Spent {
                    purpose: route,
                    outcome: RefreshOutcome::Refused("invalid_scope".into()),
                }
            })
            .await;
        assert!(matches!(refused.outcome, RefreshOutcome::Refused(_)));
        let again = flights
            .run(key, route, wait, async { panic!("the refusal is kept") })
            .await;
        assert!(matches!(again.outcome, RefreshOutcome::Refused(_)));
        // ...and another purpose takes the next turn, while the session's use, arriving
        // during it, waits for it rather than spending rt-1 beside it.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let turn = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run(key, other, wait, async move {
                        let _ = released.await;
                        Spent {
                            purpose: other,
                            outcome: refreshed("other-at", "rt-2").outcome,
                        }
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let session = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run(key, Purpose::SESSION, wait, async {
                        panic!("rt-1 spent beside another use")
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = release.send(());
        let (turn, session) = (turn.await.unwrap(), session.await.unwrap());
        assert_eq!(turn.purpose, other);
        assert_eq!(
            session.purpose, other,
            "the session's caller got the rotation to follow"
        );
        assert_eq!(next_hop(&session, &key), Hop::Follow("rt-2".into()));
        // Rotated: never replaced, whoever comes.
        let later = flights
            .run(key, route, wait, async {
                panic!("rt-1 spent after it rotated")
            })
            .await;
        assert_eq!(later.purpose, other);
    }

    /// A cookie that missed a rotation goes on from the logged token once the kept results
    /// are gone, never spending the old one again; a logout ends the logged chain too.
    #[tokio::test]
    async fn rotations_are_logged_beyond_the_kept_results() {
        let flights = Flights::default();
        let keep = Duration::from_secs(600);
        flights.record_rotation(flight_key("rt-1"), "rt-2", Some(99), keep);
        flights.record_rotation(flight_key("rt-2"), "rt-3", None, keep);
        assert_eq!(
            flights.rotated(&flight_key("rt-1")),
            Some(("rt-2".to_string(), Some(99)))
        );
        // A kept flight answers instead (it has the tokens).
        flights
            .run(flight_key("rt-2"), Purpose::SESSION, keep, async {
                refreshed("at-3", "rt-3")
            })
            .await;
        assert_eq!(flights.rotated(&flight_key("rt-2")), None);
        assert_eq!(flights.rotated(&flight_key("unknown")), None);

        // Logout holding rt-3: rt-1 and rt-2 are ended, and no longer logged.
        flights.end_session(Some("rt-3"), "at-3");
        for rt in ["rt-1", "rt-2", "rt-3"] {
            assert_eq!(flights.logged(&flight_key(rt)), None, "{rt} still logged");
            let again = flights
                .run(flight_key(rt), Purpose::SESSION, keep, async {
                    panic!("the provider was asked after logout")
                })
                .await;
            assert!(matches!(again.outcome, RefreshOutcome::Rejected(_)), "{rt}");
        }
    }

    #[test]
    fn the_rotation_log_is_bounded() {
        let flights = Flights::default();
        for i in 0..(ROTATIONS + 100) {
            flights.record_rotation(
                flight_key(&i.to_string()),
                "next",
                None,
                Duration::from_secs(60 + i as u64),
            );
        }
        let n = flights.rotations.lock().unwrap().len();
        assert!(n <= ROTATIONS, "{n} kept");
        // The newest stays.
        assert!(flights
            .logged(&flight_key(&(ROTATIONS + 99).to_string()))
            .is_some());
    }
}
