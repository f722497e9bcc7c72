//! What the decision core takes and gives: a route's rules ([`Policy`]), what an allowed
//! request takes upstream ([`Grant`]), and the provider as the core sees it ([`Refresher`]).

use std::future::Future;
use std::sync::Arc;

use http::HeaderValue;

use crate::claims::ClaimRule;
use crate::config::{Audience, RouteAuth};
use crate::oidc::audience_tokens::AudienceToken;
use crate::oidc::refresh::{Refresh, RefreshOutcome, RefreshRequest};
use crate::oidc::Providers;
use crate::proxy::credential::DpopGrant;
use crate::proxy::headers::Identity;
use crate::session::Session;

/// Refreshes an access token at the provider (single flight; [`crate::oidc::refresh`]) and
/// finds kept route tokens ([`crate::oidc::audience`]).
pub(crate) trait Refresher: Sync {
    fn refresh(&self, req: RefreshRequest<'_>) -> impl Future<Output = Refresh> + Send;

    /// The kept, unexpired token of session `session` (of `provider`) for `audience`, if any.
    fn route_token(
        &self,
        provider: &str,
        session: u128,
        audience: &Audience,
        now: u64,
    ) -> impl Future<Output = Option<Arc<AudienceToken>>> + Send;
}

impl Refresher for Arc<Providers> {
    async fn refresh(&self, req: RefreshRequest<'_>) -> Refresh {
        match self.get(req.provider) {
            Some(oidc) => oidc.refresh(req).await,
            // A session of a provider no longer configured cannot be refreshed.
            None => Refresh::only(RefreshOutcome::Rejected("unknown_provider".into())),
        }
    }

    async fn route_token(
        &self,
        provider: &str,
        session: u128,
        audience: &Audience,
        now: u64,
    ) -> Option<Arc<AudienceToken>> {
        self.get(provider)?
            .audience_token(session, audience, now)
            .await
    }
}

/// What an allowed request takes upstream.
#[derive(Debug, Default)]
pub(crate) struct Grant {
    /// `Bearer <access token>` for the upstream request (marked sensitive).
    pub(crate) bearer: Option<HeaderValue>,
    /// Who the user is, for a route with `identity_headers`.
    /// (Boxed, as the next field: most routes have neither, and the grant is moved into every
    /// request's context.)
    pub(crate) identity: Option<Box<Identity>>,
    /// What the upstream request's DPoP proof is made with (`token_binding = "dpop"`).
    pub(crate) dpop: Option<Box<DpopGrant>>,
    /// `Set-Cookie` lines for the response (a refreshed or renewed session).
    pub(crate) set_cookies: Vec<String>,
    /// What a sticky upstream pool hashes: from the session's id (0 without a session).
    pub(crate) affinity: u64,
    /// The session's provider when it is not the default (an upstream's step-up challenge
    /// links to a login there).
    pub(crate) provider: Option<Box<str>>,
}

/// What a sticky upstream pool hashes for `session`: its random id, folded to 64 bits
/// (never 0, which means "no session").
pub(crate) fn affinity(session: &Session<'_>) -> u64 {
    ((session.id >> 64) as u64 ^ session.id as u64).max(1)
}

/// A route's rules for [`super::Gate::decide`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    pub(crate) auth: RouteAuth,
    /// Claims the session must have (`require`).
    pub(crate) require: Option<&'a ClaimRule>,
    /// Send [`Identity`] upstream.
    pub(crate) identity_headers: bool,
    /// `token_binding = "dpop"`: `Authorization: DPoP` and a proof.
    pub(crate) dpop: bool,
    /// `resource`/`scopes`: the route's own token instead of the session's.
    pub(crate) audience: Option<&'a Arc<Audience>>,
    /// `require_device_binding`: only sessions bound to their device (DBSC).
    pub(crate) require_device_binding: bool,
    /// `providers`: only sessions of these providers (empty: any).
    pub(crate) providers: &'a [String],
}

#[cfg(any(test, feature = "fuzzing"))]
impl Policy<'_> {
    /// Only the auth rule: no claim rule, no identity headers.
    pub(crate) fn auth(auth: RouteAuth) -> Policy<'static> {
        Policy {
            auth,
            require: None,
            identity_headers: false,
            dpop: false,
            audience: None,
            require_device_binding: false,
            providers: &[],
        }
    }
}
