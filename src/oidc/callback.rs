//! `GET /callback`: finishing the login.
//!
//! In order: the provider's `error`, the `state` and its login cookie, the RFC 9207 `iss`
//! (mix-up defence), the code exchange, the ID token; only then is a session stored. Every
//! failure is a page that says what happened, with the provider's error code where there is
//! one, and a log line with the request id; the login cookie of a known state is deleted
//! whatever the outcome (it is single-use).

use serde::Deserialize;

use super::id_token::{self, Expected, IdTokenError};
use super::login::{self, LoginState, LoginStateError};
use super::pages::{login_error, Page};
use super::token_client::{sanitize, TokenError};
use super::Oidc;
use crate::session::cookie::SessionCookies;
use crate::session::{Claims, Session, SessionCodec};

/// Default access-token lifetime when the provider omits `expires_in`.
pub const DEFAULT_EXPIRES_IN: u64 = 3600;
/// Longer lifetimes from the provider are taken as this (a year): no overflow, no absurd dates.
const MAX_EXPIRES_IN: u64 = 366 * 24 * 3600;

/// When a token issued at `issued_at` with the provider's `expires_in` expires.
pub fn expires_at(issued_at: u64, expires_in: Option<u64>) -> u64 {
    issued_at.saturating_add(expires_in.unwrap_or(DEFAULT_EXPIRES_IN).min(MAX_EXPIRES_IN))
}

#[derive(Debug, Default, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// The request facts the callback needs, copied out of the request before any await.
pub struct CallbackRequest<'a> {
    pub query: Option<&'a str>,
    pub cookie_headers: &'a [String],
    pub json: bool,
    pub request_id: &'a str,
}

impl Oidc {
    pub async fn callback(&self, req: CallbackRequest<'_>, codec: &SessionCodec) -> Page {
        let rid = req.request_id;
        let fail = |status: u16, code: &str, message: &str, clear: Option<&str>| {
            let page = login_error(status, code, message, rid, req.json);
            match clear {
                Some(name) => page.with_cookies(vec![login::login_cookie_line(
                    name,
                    "",
                    std::time::Duration::ZERO,
                    self.secure_cookies,
                )]),
                None => page,
            }
        };
        let Ok(q) = serde_urlencoded::from_str::<CallbackQuery>(req.query.unwrap_or("")) else {
            tracing::info!(request_id = rid, "callback: unparseable query");
            return fail(
                400,
                "invalid_request",
                "The sign-in response could not be read.",
                None,
            );
        };
        let state = q.state.as_deref().filter(|s| login::is_plausible_state(s));
        let login_cookie = state.map(|s| login::cookie_name(&self.session_cookie, s));
        let clear = login_cookie.as_deref();

        if let Some(error) = q.error.as_deref() {
            let error = sanitize(error);
            tracing::info!(request_id = rid, provider_error = %error, "callback: the provider returned an error");
            return fail(
                400,
                &error,
                "The identity provider did not complete the sign-in.",
                clear,
            );
        }
        let Some(cookie_name) = login_cookie.as_deref() else {
            tracing::info!(request_id = rid, "callback: missing or malformed state");
            return fail(
                400,
                "invalid_state",
                "The sign-in response has no valid state.",
                None,
            );
        };
        let value = crate::session::cookie::find(
            cookie_name,
            req.cookie_headers.iter().map(String::as_str),
        );
        let now = crate::unix_now();
        let login = match LoginState::open(&self.sealer, cookie_name, value, now) {
            Ok(l) => l,
            Err(e) => {
                tracing::info!(request_id = rid, reason = %e, "callback: login state not usable");
                let (code, message) = match e {
                    LoginStateError::Expired => ("login_expired", "The sign-in took too long."),
                    _ => (
                        "unknown_state",
                        "This sign-in was not started in this browser, or it has expired.",
                    ),
                };
                return fail(400, code, message, clear);
            }
        };
        let Some(provider) = self.provider() else {
            return fail(
                503,
                "provider_unavailable",
                "The identity provider is not available yet.",
                clear,
            );
        };
        match q.iss.as_deref() {
            Some(iss) if iss != provider.metadata.issuer => {
                tracing::warn!(
                    request_id = rid,
                    "callback: iss does not match the issuer (mix-up?)"
                );
                return fail(
                    400,
                    "issuer_mismatch",
                    "The sign-in response came from another issuer.",
                    clear,
                );
            }
            None if provider.metadata.iss_parameter_supported => {
                tracing::warn!(
                    request_id = rid,
                    "callback: iss missing although the provider promises it"
                );
                return fail(
                    400,
                    "issuer_missing",
                    "The sign-in response lacks its issuer.",
                    clear,
                );
            }
            _ => {}
        }
        let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
            return fail(
                400,
                "invalid_request",
                "The sign-in response has no code.",
                clear,
            );
        };

        let exchange_started = std::time::Instant::now();
        let tokens = match self
            .tokens
            .exchange_code(
                provider.metadata.token_endpoint.as_str(),
                code,
                &self.redirect_uri,
                &login.code_verifier,
            )
            .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(request_id = rid, error = %e, provider_error = e.provider_error(), "callback: code exchange failed");
                return match &e {
                    TokenError::Provider { status, error } if *status == 400 && error == "invalid_grant" => fail(
                        400,
                        "invalid_grant",
                        "The sign-in could not be completed: the code was already used or has expired.",
                        clear,
                    ),
                    TokenError::Provider { error, .. } => fail(
                        502,
                        error,
                        "The identity provider refused to issue tokens.",
                        clear,
                    ),
                    TokenError::Unreachable(_) => fail(
                        502,
                        "provider_unreachable",
                        "The identity provider could not be reached.",
                        clear,
                    ),
                    TokenError::Invalid(_) | TokenError::ClientAuth(_) => fail(
                        502,
                        "invalid_token_response",
                        "The identity provider's answer could not be used.",
                        clear,
                    ),
                };
            }
        };
        // The provider's share of the callback (the load benchmark subtracts it).
        let provider_ms = exchange_started.elapsed().as_secs_f64() * 1000.0;
        let Some(raw_id_token) = tokens.id_token.as_deref() else {
            tracing::warn!(
                request_id = rid,
                "callback: no id_token in the token response"
            );
            return fail(
                502,
                "missing_id_token",
                "The identity provider sent no ID token.",
                clear,
            );
        };
        let claims = match self
            .validate_id_token(
                raw_id_token,
                &provider,
                Some(&login.nonce),
                &tokens.access_token,
                now,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(request_id = rid, error = %e, "callback: ID token rejected");
                let status = if e == IdTokenError::Nonce { 400 } else { 502 };
                return fail(
                    status,
                    "invalid_id_token",
                    "The identity provider's ID token is not valid for this sign-in.",
                    clear,
                );
            }
        };

        let session = Session {
            access_expires_at: expires_at(now, tokens.expires_in),
            access_token: tokens.access_token,
            refresh_expires_at: tokens.refresh_expires_in.map(|s| expires_at(now, Some(s))),
            refresh_token: tokens.refresh_token,
            id_token: Some(raw_id_token.to_string()),
            id_expires_at: Some(claims.exp),
            claims: Claims {
                sub: claims.sub,
                sid: claims.sid,
                name: claims.name.or(claims.preferred_username),
                email: claims.email,
            },
            created_at: now,
            last_seen: now,
        };
        let previous = SessionCookies::scan(
            codec.cookie_name(),
            req.cookie_headers.iter().map(String::as_str),
        );
        let mut cookies = match codec.set_cookie_lines(&session, &previous, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(request_id = rid, error = %e, "callback: session could not be stored");
                return fail(
                    500,
                    "session_too_large",
                    "The session could not be stored.",
                    clear,
                );
            }
        };
        cookies.push(login::login_cookie_line(
            cookie_name,
            "",
            std::time::Duration::ZERO,
            self.secure_cookies,
        ));
        tracing::info!(request_id = rid, sub = %session.claims.sub, provider_ms, "login complete");
        Page::redirect(&login.return_to).with_cookies(cookies)
    }

    pub(super) async fn validate_id_token(
        &self,
        token: &str,
        provider: &std::sync::Arc<super::discovery::Provider>,
        nonce: Option<&str>,
        access_token: &str,
        now: u64,
    ) -> Result<id_token::IdClaims, IdTokenError> {
        let (alg, kid) = id_token::header(token)?;
        if !provider.metadata.id_token_algs.contains(&alg) {
            return Err(IdTokenError::Algorithm(alg));
        }
        let provider = self
            .provider_with_kid(provider.clone(), kid.as_deref(), alg)
            .await;
        let key = provider
            .jwks
            .find(kid.as_deref(), alg)
            .ok_or(IdTokenError::UnknownKey)?;
        id_token::validate(
            token,
            alg,
            key,
            &Expected {
                issuer: &provider.metadata.issuer,
                client_id: &self.client_id,
                nonce,
                algorithms: &provider.metadata.id_token_algs,
                access_token,
                now,
            },
        )
    }
}
