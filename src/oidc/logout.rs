//! `/logout`: end the session here and at the provider.
//!
//! The refresh token is revoked (RFC 7009) when the provider has a revocation endpoint, so the
//! session cannot be revived from a copied cookie; a failed revocation is logged and does not
//! block the logout. Every tollgate cookie is cleared, and the browser goes to the provider's
//! `end_session_endpoint` (RP-initiated logout, with `id_token_hint`, `post_logout_redirect_uri`,
//! `state` and `client_id`) or, without one, straight to `post_logout_redirect_uri`.
//!
//! `POST /logout` needs the CSRF header like an API call; `GET /logout` is off unless
//! `[oidc] allow_get_logout` is set, because a cross-site page could trigger it. A POST that
//! asks for JSON (the SPA's `fetch`) gets `{"logout_url": …}` to navigate to; otherwise the
//! answer is a redirect.

use serde::Serialize;

use super::pages::Page;
use super::Oidc;
use crate::session::Session;

#[derive(Serialize)]
struct LogoutJson<'a> {
    logout_url: &'a str,
}

impl Oidc {
    pub fn allow_get_logout(&self) -> bool {
        self.allow_get_logout
    }

    /// Ends `session` (if any): revokes, clears `clear_cookies`, and answers with where to go.
    pub async fn logout(
        &self,
        session: Option<&Session>,
        clear_cookies: Vec<String>,
        json: bool,
        request_id: &str,
    ) -> Page {
        let provider = self.provider();
        if let (Some(s), Some(p)) = (session, provider.as_ref()) {
            match (&s.refresh_token, &p.metadata.revocation_endpoint) {
                (Some(rt), Some(endpoint)) => {
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
                (Some(_), None) => {
                    tracing::info!(request_id, "provider has no revocation endpoint")
                }
                _ => {}
            }
        }
        let url = match provider
            .as_ref()
            .and_then(|p| p.metadata.end_session_endpoint.clone())
        {
            Some(mut url) => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(hint) = session.and_then(|s| s.id_token.as_deref()) {
                        q.append_pair("id_token_hint", hint);
                    }
                    q.append_pair("post_logout_redirect_uri", &self.post_logout_redirect_uri)
                        .append_pair("client_id", &self.client_id)
                        .append_pair("state", &super::login::random_token());
                }
                url.to_string()
            }
            None => self.post_logout_redirect_uri.clone(),
        };
        tracing::info!(request_id, had_session = session.is_some(), "logout");
        let page = if json {
            Page {
                status: 200,
                headers: vec![
                    ("content-type", "application/json".into()),
                    ("cache-control", "no-store".into()),
                ],
                body: serde_json::to_vec(&LogoutJson { logout_url: &url }).unwrap_or_default(),
            }
        } else {
            let mut p = Page::redirect(&url);
            p.status = 303;
            p
        };
        page.with_cookies(clear_cookies)
    }
}
