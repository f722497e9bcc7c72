//! `/logout`: end the session here and at the provider.
//!
//! The refresh token is revoked (RFC 7009) when the provider has a revocation endpoint, so the
//! session cannot be revived from a copied cookie, and any refresh result kept for it (see
//! [`super::refresh`]) is forgotten; a failed revocation is logged and does not block the
//! logout. Every tollgate cookie is cleared, and the browser goes to the provider's
//! `end_session_endpoint` (RP-initiated logout, with `id_token_hint`, `post_logout_redirect_uri`,
//! `state` and `client_id`) or, without one, straight to `post_logout_redirect_uri`.
//!
//! `POST /logout` needs the CSRF header like an API call; `GET /logout` is off unless
//! `[oidc] allow_get_logout` is set, because a cross-site page could trigger it. A POST that
//! asks for JSON (the SPA's `fetch`) gets `{"logout_url": "/logout/continue"}` to navigate to:
//! the provider URL carries the ID token as `id_token_hint`, which must never reach page
//! script, so it waits sealed in a short-lived HttpOnly cookie until that navigation, which
//! answers with the redirect. Otherwise the answer is the redirect itself.
//!
//! `/logout?everywhere=1` (same method and CSRF rules) also ends every other session of the
//! user on every replica: with `[session] storage = "store"` each one is ended and its refresh
//! token revoked at the provider; with cookies, which no replica can list, every session of the
//! user that started before this moment is revoked (their refresh tokens are not known here, so
//! they stay valid at the provider until they expire).

use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use super::client::Oidc;
use crate::reply::{wants_json, Fault, Reply};
use crate::request::Facts;
use crate::session::cookie::{self, logout_cookie_name};
use crate::session::{Session, SessionError};
use crate::sessions::Sessions;

/// Where `POST /logout` with `Accept: application/json` sends the SPA.
pub(crate) const CONTINUE_PATH: &str = "/logout/continue";
/// How long a pending provider logout waits for the browser.
const PENDING_TTL: Duration = Duration::from_secs(300);
const PAYLOAD_VERSION: u8 = 1;

/// Whether the query asks to end all of the user's sessions (`everywhere=1`).
fn everywhere(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .unwrap_or_default()
            .iter()
            .any(|(k, v)| k == "everywhere" && matches!(v.as_str(), "1" | "true"))
    })
}

#[derive(Serialize)]
struct LogoutJson<'a> {
    logout_url: &'a str,
}

/// The provider logout URL waiting for `/logout/continue`.
#[derive(Serialize, Deserialize)]
struct Pending {
    url: String,
    created_at: u64,
}

impl Oidc {
    /// `/logout`: revokes, clears every session cookie, and answers with where to go.
    pub(crate) async fn logout(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Result<Reply, Fault> {
        if facts.method == Method::POST {
            sessions
                .csrf()
                .check(facts.headers, facts.method)
                .map_err(Fault::Csrf)?;
        } else if !(facts.method == Method::GET && self.allow_get_logout) {
            return Err(Fault::MethodNotAllowed);
        }
        let rid = facts.request_id;
        let everywhere = everywhere(facts.query);
        let opened = sessions.open(facts).await;
        let session = match sessions.session(&opened.payload, facts) {
            Ok(s) => Some(s),
            // Not logged out, and nothing cleared: the session may still be there.
            Err(SessionError::StoreUnavailable) => return Err(Fault::StoreUnavailable),
            Err(_) => None,
        };
        let json = facts.method == Method::POST && wants_json(facts.accept());
        let mut clear = sessions.codec().clear_cookie_lines(&opened.present);
        // Every other cookie of tollgate's goes too: pending logins, and an earlier pending
        // logout unless a new one replaces it.
        clear.extend(self.helper_cookies(facts, !json).map(|name| {
            super::login::login_cookie_line(&name, "", Duration::ZERO, self.secure_cookies)
        }));
        if let Some(s) = &session {
            // A copy of this cookie taken before the logout opens to nothing from now on.
            if let Err(e) = sessions.end(s, "logout", facts.now).await {
                if sessions.stored() {
                    // The session lives in the store: ended here only, it would come back.
                    tracing::error!(request_id = rid, error = %e, "logout: the store could not end the session");
                    return Err(Fault::StoreUnavailable);
                }
                tracing::warn!(request_id = rid, error = %e, "logout: the store did not record the end of the session; other replicas may accept copies of this cookie");
            }
            self.end_tokens(s, rid).await;
            if everywhere {
                // Sessions that start from now on are not affected.
                match sessions
                    .end_user(
                        &self.name,
                        &s.claims.sub,
                        facts.now + 1,
                        "logout",
                        facts.now,
                    )
                    .await
                {
                    Ok(others) => {
                        let others: Vec<_> = others
                            .into_iter()
                            .filter(|r| r.session.id != s.id)
                            .collect();
                        self.end_all_tokens(&others, rid).await;
                        tracing::info!(
                            request_id = rid,
                            sessions = others.len(),
                            "logout everywhere: the user's other sessions ended"
                        );
                    }
                    Err(e) => {
                        tracing::error!(request_id = rid, error = %e, "logout everywhere: the store could not end the user's other sessions");
                        return Err(Fault::StoreUnavailable);
                    }
                }
            }
        }
        tracing::info!(request_id = rid, had_session = session.is_some(), "logout");
        let with_hint = self.end_session_url(session.as_ref(), true);
        if json {
            let pending = self.pending_cookie(&with_hint, facts.now).or_else(|| {
                tracing::info!(
                    request_id = rid,
                    "the ID token is too large for the pending-logout cookie; logging out without id_token_hint"
                );
                self.pending_cookie(&self.end_session_url(None, false), facts.now)
            });
            let reply = Reply::json(
                200,
                &LogoutJson {
                    logout_url: CONTINUE_PATH,
                },
            );
            return Ok(reply
                .with_cookies(clear)
                .with_cookies(pending)
                .with_outcome("logout"));
        }
        Ok(Reply::redirect(303, with_hint)
            .with_cookies(clear)
            .with_outcome("logout"))
    }

    /// Revokes what `s` holds at the provider, and forgets any refresh result kept for it.
    pub(crate) async fn end_tokens(&self, s: &Session<'_>, rid: &str) {
        // The cookie may hold a refresh token already rotated (two routes refreshed at
        // once and the browser kept the older cookie): the newest one is revoked.
        let newest = match s.refresh_token.as_deref() {
            Some(rt) => Some(self.newest_refresh_token(rt).await),
            None => None,
        };
        self.end_refreshes(s.id, newest.as_deref(), &s.access_token)
            .await;
        self.revoke(newest.as_deref(), rid).await;
    }

    /// [`Self::end_tokens`] for each of `ended`, a few at a time.
    pub(crate) async fn end_all_tokens(&self, ended: &[crate::session::record::Record], rid: &str) {
        for batch in ended.chunks(8) {
            futures_util::future::join_all(batch.iter().map(|r| self.end_tokens(&r.session, rid)))
                .await;
        }
    }

    /// The names of the request's pending login cookies, its DBSC bound cookie, and its
    /// pending-logout cookie when `with_logout`.
    fn helper_cookies<'f>(
        &self,
        facts: &Facts<'f>,
        with_logout: bool,
    ) -> impl Iterator<Item = String> + 'f {
        let session_cookie = self.session_cookie.clone();
        let logout = logout_cookie_name(&session_cookie);
        // The DBSC bound cookie proves a session that ends here.
        let bound = cookie::bound_cookie_name(&session_cookie);
        facts
            .cookie_headers()
            .flat_map(cookie::pairs)
            .filter(move |(name, _)| {
                cookie::login_cookie_state(name, &session_cookie).is_some()
                    || (with_logout && *name == logout)
                    || *name == bound
            })
            .map(|(name, _)| name.to_string())
    }

    /// `GET /logout/continue`: the redirect to the provider that a JSON `/logout` prepared.
    /// Without one pending (used already, expired), the browser goes to
    /// `post_logout_redirect_uri`.
    pub(crate) fn logout_continue(&self, facts: &Facts<'_>) -> Result<Reply, Fault> {
        if facts.method != Method::GET && facts.method != Method::HEAD {
            return Err(Fault::MethodNotAllowed);
        }
        let name = logout_cookie_name(&self.session_cookie);
        let Some(value) = cookie::find(&name, facts.cookie_headers()) else {
            return Ok(Reply::redirect(303, self.post_logout_redirect_uri.clone()));
        };
        let expire =
            super::login::login_cookie_line(&name, "", Duration::ZERO, self.secure_cookies);
        let url = self
            .sealer
            .open_value::<Pending>(PAYLOAD_VERSION, value, &name)
            .filter(|p| facts.now < p.created_at.saturating_add(PENDING_TTL.as_secs()))
            .map_or_else(|| self.post_logout_redirect_uri.clone(), |p| p.url);
        Ok(Reply::redirect(303, url)
            .with_cookies([expire])
            .with_outcome("logout"))
    }

    /// The sealed `Set-Cookie` line holding `url` for `/logout/continue`, if it fits one cookie.
    fn pending_cookie(&self, url: &str, now: u64) -> Option<String> {
        let name = logout_cookie_name(&self.session_cookie);
        let pending = Pending {
            url: url.to_string(),
            created_at: now,
        };
        let sealed = self.sealer.seal_value(PAYLOAD_VERSION, &pending, &name)?;
        (sealed.len() <= cookie::CHUNK_SIZE).then(|| {
            super::login::login_cookie_line(&name, &sealed, PENDING_TTL, self.secure_cookies)
        })
    }

    /// RFC 7009 revocation of the session's refresh token; failures are logged only.
    async fn revoke(&self, refresh_token: Option<&str>, request_id: &str) {
        let (Some(rt), Some(p)) = (refresh_token, self.provider()) else {
            return;
        };
        let Some(endpoint) = &p.metadata.revocation_endpoint else {
            // Warned once when the metadata loaded ([`super::discovery`]).
            tracing::debug!(request_id, "provider has no revocation endpoint");
            return;
        };
        match self
            .tokens
            .revoke(endpoint.as_str(), p.metadata.token_endpoint.as_str(), rt)
            .await
        {
            Ok(()) => tracing::info!(request_id, "refresh token revoked"),
            Err(e) => {
                tracing::warn!(request_id, error = %e, "revoking the refresh token failed; logging out anyway")
            }
        }
    }

    /// The provider's end-session URL for `session` (with its ID token as the hint when
    /// `hint`), or `post_logout_redirect_uri` when the provider has none.
    fn end_session_url(&self, session: Option<&Session<'_>>, hint: bool) -> String {
        let provider = self.provider();
        let Some(mut url) = provider
            .as_ref()
            .and_then(|p| p.metadata.end_session_endpoint.clone())
        else {
            return self.post_logout_redirect_uri.clone();
        };
        {
            let mut q = url.query_pairs_mut();
            if let Some(id_token) = session.and_then(|s| s.id_token.as_deref()).filter(|_| hint) {
                q.append_pair("id_token_hint", id_token);
            }
            q.append_pair("post_logout_redirect_uri", &self.post_logout_redirect_uri)
                .append_pair("client_id", &self.client_id)
                .append_pair("state", &super::login::random_token());
        }
        url.to_string()
    }
}
