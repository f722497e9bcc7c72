//! Refreshing access tokens on the hot path, one provider call per session at a time.
//!
//! When an SPA wakes up it fires many API calls at once, all carrying the same cookie with the
//! same expiring token. Each calling the provider would multiply the load and, with refresh
//! token rotation, break the session: the second use of a rotated refresh token is
//! `invalid_grant` (and some providers then revoke the whole family). So concurrent refreshes
//! of the same refresh token share one call (single flight, keyed by the token's SHA-256), and
//! a successful result is kept for [`outcome::RESULT_TTL`] so that requests still carrying the old
//! cookie, sent before the browser saw the new one, get the same new tokens instead of a second
//! refresh. A failure because the provider is unreachable is not kept: the next request tries
//! again. Waiting is bounded by the HTTP timeout.

mod call;
pub mod flights;
pub(crate) mod outcome;
mod rotation;
mod shared;

use std::sync::Arc;
use std::time::Duration;

use crate::oidc::client::Oidc;
use crate::oidc::dpop::DpopKey;
use crate::oidc::token_client::TokenResponse;
pub use flights::Flights;
pub use outcome::{
    apply, apply_passed, apply_rotation, flight_key, Purpose, Refresh, RefreshOutcome, Spent,
};
pub(crate) use outcome::{rotated_to, Job, RefreshRequest};

/// The most refreshes one caller follows through ([`Oidc::refresh`]): each is another
/// purpose's use of a rotated refresh token that happened first.
const MAX_HOPS: usize = 8;

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
                    .map(|s| crate::oidc::lifetime::expires_at(*at, Some(s)));
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
}

#[cfg(test)]
mod tests {
    use super::rotation::ROTATIONS;
    use super::*;
    use crate::session::Session;

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
        // Ordered by signals, not by time: the other use's flight is under way (its work has
        // started) before the session's caller comes, and that caller has joined the flight
        // (polled once: it found the flight and waits on it) before the work ends.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (started, has_started) = tokio::sync::oneshot::channel::<()>();
        let turn = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run(key, other, wait, async move {
                        let _ = started.send(());
                        let _ = released.await;
                        Spent {
                            purpose: other,
                            outcome: refreshed("other-at", "rt-2").outcome,
                        }
                    })
                    .await
            })
        };
        has_started.await.unwrap();
        let mut session = Box::pin(flights.run(key, Purpose::SESSION, wait, async {
            panic!("rt-1 spent beside another use")
        }));
        assert!(
            futures_util::poll!(&mut session).is_pending(),
            "the session's caller waits for the flight in progress"
        );
        let _ = release.send(());
        let (turn, session) = (turn.await.unwrap(), session.await);
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
