//! What a refresh is and what comes of it: the request, its purpose (the session's own token
//! or a route's audience), the outcome every waiting request shares, and how an outcome is put
//! into a session.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Audience;
use crate::oidc::dpop::DpopKey;
use crate::oidc::lifetime::expires_at;
use crate::oidc::token_client::TokenResponse;
use crate::session::Session;

/// How long a successful refresh result answers for the old refresh token.
pub(crate) const RESULT_TTL: Duration = Duration::from_secs(60);

/// Puts tokens refreshed at `issued_at` (Unix seconds; lifetimes count from then, not from when
/// a later request picks up the shared result) into `session`. A rotated refresh token replaces
/// the old one; a new ID token replaces the old one as the logout hint (the claims stay those
/// validated at login).
pub fn apply(session: &mut Session<'static>, tokens: &TokenResponse, issued_at: u64) {
    session.access_token = tokens.access_token.clone().into();
    session.access_expires_at = expires_at(issued_at, tokens.expires_in);
    session.access_lifetime = crate::oidc::lifetime::lifetime(tokens.expires_in);
    if let Some(rt) = &tokens.refresh_token {
        session.refresh_token = Some(rt.clone().into());
        session.refresh_expires_at = tokens
            .refresh_expires_in
            .map(|s| expires_at(issued_at, Some(s)));
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
            .map(|s| expires_at(issued_at, Some(s)));
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
    /// Not a refresh of this replica's: a rotation found in the log ([`super::flights::Flights`]),
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

/// What a caller of [`crate::oidc::Oidc::refresh`] gets.
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
pub(crate) fn rotated_to<'s>(spent: &'s Spent, key: &[u8; 32]) -> Option<&'s str> {
    match &spent.outcome {
        RefreshOutcome::Refreshed(t, _) => t
            .refresh_token
            .as_deref()
            .filter(|next| flight_key(next) != *key),
        _ => None,
    }
}

/// What one refresh is: for whom, with what, for which purpose.
#[derive(Clone)]
pub(crate) struct RefreshRequest<'a> {
    /// The session's provider (`default` for `[oidc]`): the refresh goes there.
    pub(crate) provider: &'a str,
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
pub(crate) struct Job {
    pub(crate) sub: String,
    pub(crate) session_id: u128,
    pub(crate) request_id: String,
    pub(crate) dpop: Option<Arc<DpopKey>>,
    pub(crate) audience: Option<Arc<Audience>>,
}
