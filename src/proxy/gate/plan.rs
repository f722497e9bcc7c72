//! The refresh plan: where a request's token comes from ([`Source`]), what happened when it
//! was due ([`Attempt`]), and the one table that says what the request does next
//! ([`after_refresh`]), with the small rules around it (when a token is due, what a refresh
//! asks for, what its tokens change in the session).

use std::sync::Arc;

use crate::config::Audience;
use crate::oidc::refresh::{self, RefreshRequest};
use crate::oidc::token_client::TokenResponse;
use crate::reply::Fault;
use crate::session::Session;
use crate::sessions::CookieWork;

/// Where the request's access token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source<'a> {
    /// The session's own access token, refreshed in the session.
    Session,
    /// A route's audience token (`resource`, `scopes`; [`crate::oidc::audience`]): kept beside
    /// the session and asked for with its refresh token; the session's own token is not used,
    /// nor refreshed, for it.
    Route(&'a Arc<Audience>),
}

/// A token the request could use as it is, and when it falls due.
#[derive(Debug, Clone)]
pub(crate) struct Current<T> {
    pub(crate) token: T,
    pub(crate) expires_at: u64,
    /// Seconds it was issued for (0: not known).
    pub(crate) lifetime: u64,
}

/// What happened when the request's token was due ([`after_refresh`]'s input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The provider issued a new token.
    Refreshed,
    /// The provider rejected the refresh token (`invalid_grant`): the session is over.
    Rejected,
    /// The provider refused this request (another error code).
    Refused,
    /// The provider could not be reached or answered nonsense.
    Unavailable,
    /// No refresh was asked for: the session has no refresh token, or it expired.
    NoRefreshToken { expired: bool },
}

/// What the request does next ([`after_refresh`]'s output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Go on with the new token.
    UseNew,
    /// Go on with the current token: it has not expired yet.
    UseCurrent,
    /// Refuse with this fault; the session's cookies are re-sealed if a refresh on the way
    /// changed the session.
    Refuse(Fault),
    /// `401 session_expired`, clearing the session's cookies.
    Expire,
}

/// The one table of refresh outcomes, for both token sources. `still_valid`: the current
/// token has not expired (a token due for refresh may still be used a little longer).
pub(crate) fn after_refresh(source: &Source<'_>, attempt: Attempt, still_valid: bool) -> Next {
    let route = matches!(source, Source::Route(_));
    match attempt {
        Attempt::Refreshed => Next::UseNew,
        Attempt::Rejected => Next::Expire,
        // The provider refused a route's audience to this session: that is the answer.
        Attempt::Refused if route => Next::Refuse(Fault::InsufficientScope),
        // Keep the session; use the current token while it lasts.
        Attempt::Refused | Attempt::Unavailable if still_valid => Next::UseCurrent,
        Attempt::Refused | Attempt::Unavailable => Next::Refuse(Fault::ProviderUnavailable),
        Attempt::NoRefreshToken { .. } if still_valid => Next::UseCurrent,
        // A route's token is only ever asked for with a refresh token.
        Attempt::NoRefreshToken { expired: false } if route => {
            Next::Refuse(Fault::InsufficientScope)
        }
        Attempt::NoRefreshToken { .. } => Next::Expire,
    }
}

/// Takes a refresh's new tokens into `session`: for the session's own token, all of them; for
/// a route's token, only a rotated refresh token (the access token is the route's, kept
/// beside the session). Whether the session changed.
pub(crate) fn take(
    source: &Source<'_>,
    session: &mut Session<'static>,
    tokens: &TokenResponse,
    issued_at: u64,
) -> bool {
    match source {
        Source::Session => {
            refresh::apply(session, tokens, issued_at);
            true
        }
        Source::Route(_) => {
            refresh::apply_rotation(session, tokens, issued_at);
            tokens.refresh_token.is_some()
        }
    }
}

/// Re-seal `session` if it `changed` (also on a refusal: a refresh token rotated on the way
/// must reach the browser whatever the reply).
pub(crate) fn reseal_if(changed: bool, session: Session<'static>) -> CookieWork {
    if changed {
        CookieWork::Reseal(Box::new(session))
    } else {
        CookieWork::Keep
    }
}

/// A refresh with `session`'s refresh token for `audience` (`None`: the session's own token),
/// or `None` when it has no refresh token or the token is past its expiry.
pub(crate) fn refresh_request<'s>(
    session: &'s Session<'_>,
    now: u64,
    request_id: &'s str,
    audience: Option<&'s Arc<Audience>>,
) -> Option<RefreshRequest<'s>> {
    let refresh_token = session
        .refresh_token
        .as_deref()
        .filter(|_| session.refresh_expires_at.is_none_or(|at| at > now))?;
    Some(RefreshRequest {
        provider: session.provider_name(),
        refresh_token,
        sub: &session.claims.sub,
        session_id: session.id,
        request_id,
        dpop_key: session.dpop_key.as_deref(),
        audience,
    })
}

/// Whether a token expiring at `expires_at`, issued for `lifetime` seconds (0: not known), is
/// due for a refresh at `now` with `[session] refresh_skew` = `skew`, and whether the skew was
/// capped. It is due once it expires within the skew, but the skew is at most half the
/// lifetime: a skew as long as the tokens live would refresh on every request, spending a
/// refresh token each time.
pub(crate) fn refresh_due(expires_at: u64, lifetime: u64, now: u64, skew: u64) -> (bool, bool) {
    let capped = lifetime > 0 && skew > lifetime / 2;
    let skew = if capped { lifetime / 2 } else { skew };
    (expires_at <= now.saturating_add(skew), capped)
}
