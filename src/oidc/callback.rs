//! `GET /callback`: finishing the login.
//!
//! In order: the provider's `error`, the `state` and its login cookie, the RFC 9207 `iss`
//! (mix-up defence), the code exchange, the ID token; only then is a session stored. Every
//! failure is a [`Fault`] (a page for a person, JSON for a program) that says what happened,
//! with the provider's error code where there is one (capped to a plain word), and a log line
//! with the request id; the login cookie of a known state is deleted whatever the outcome (it
//! is single-use).

use serde::Deserialize;

use super::client::Oidc;
use super::dpop::DpopKey;
use super::id_token::{self, Expected, IdTokenError};
use super::lifetime::{expires_at, lifetime};
use super::login::{self, LoginState, LoginStateError};
use super::token_client::TokenError;
use crate::reply::{provider_code, Fault, Format, Reply};
use crate::request::Facts;
use crate::session::cookie::{is_plausible_state, login_cookie_name};
use crate::session::{Claims, Session};
use crate::sessions::{Sessions, StartError};

/// Whether the ID token of a step-up login has what the login asked for: one of the `acr`
/// values, and an `auth_time` within `max_age` of the login's start (clock leeway allowed).
fn step_up_met(login: &LoginState, claims: &id_token::IdClaims) -> bool {
    let acr_ok = login.acr_values.is_empty()
        || claims
            .acr()
            .is_some_and(|a| login.acr_values.iter().any(|v| v == a));
    let age_ok = login.max_age.is_none_or(|max| {
        claims.auth_time().is_some_and(|t| {
            t.saturating_add(max).saturating_add(id_token::LEEWAY_SECS) >= login.created_at
        })
    });
    acr_ok && age_ok
}

#[derive(Debug, Default, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

impl Oidc {
    /// `GET /callback`. Whatever the outcome, the login cookie of a known state is expired.
    pub(crate) async fn callback(&self, facts: &Facts<'_>, sessions: &Sessions) -> Reply {
        let rid = facts.request_id;
        let Ok(q) = serde_urlencoded::from_str::<CallbackQuery>(facts.query.unwrap_or("")) else {
            tracing::info!(request_id = rid, "callback: unparseable query");
            return Reply::fault(
                Fault::CallbackUnreadable,
                Format::for_person(facts.accept()),
            );
        };
        let login_cookie = q
            .state
            .as_deref()
            .filter(|s| is_plausible_state(s))
            .map(|s| login_cookie_name(&self.session_cookie, s));
        match self
            .finish_login(facts, sessions, &q, login_cookie.as_deref())
            .await
        {
            Ok(reply) => {
                self.metrics.login(&self.name, "ok");
                reply
            }
            Err(fault) => {
                let outcome = match fault {
                    Fault::StepUpNotMet => "step_up_not_met",
                    _ => "failed",
                };
                self.metrics.login(&self.name, outcome);
                let reply = Reply::fault(fault, Format::for_person(facts.accept()));
                match login_cookie {
                    Some(name) => reply.with_cookies([self.expire_login_cookie(&name)]),
                    None => reply,
                }
            }
        }
    }

    fn expire_login_cookie(&self, name: &str) -> String {
        login::login_cookie_line(name, "", std::time::Duration::ZERO, self.secure_cookies)
    }

    async fn finish_login(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
        q: &CallbackQuery,
        login_cookie: Option<&str>,
    ) -> Result<Reply, Fault> {
        let rid = facts.request_id;
        // FAPI 2.0: `iss` on every authorization response, errors included (RFC 9207 §2).
        if self.fapi2 {
            let issuer = self.provider().map(|p| p.metadata.issuer.clone());
            match (q.iss.as_deref(), issuer) {
                (None, _) => return Err(Fault::IssuerMissing),
                (Some(iss), Some(expected)) if iss != expected => {
                    return Err(Fault::IssuerMismatch)
                }
                _ => {}
            }
        }
        if let Some(error) = q.error.as_deref() {
            let error = provider_code(error);
            tracing::info!(request_id = rid, provider_error = %error, "callback: the provider returned an error");
            return Err(Fault::ProviderError(error));
        }
        let Some(cookie_name) = login_cookie else {
            tracing::info!(request_id = rid, "callback: missing or malformed state");
            return Err(Fault::InvalidState);
        };
        let value = crate::session::cookie::find(cookie_name, facts.cookie_headers());
        let now = facts.now;
        let login = LoginState::open(&self.sealer, cookie_name, value, now).map_err(|e| {
            tracing::info!(request_id = rid, reason = %e, "callback: login state not usable");
            match e {
                LoginStateError::Expired => Fault::LoginExpired,
                _ => Fault::UnknownState,
            }
        })?;
        if login
            .provider
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_PROVIDER)
            != self.name
        {
            // The answer came back on another provider's callback path: a provider sent the
            // browser back with a login that went elsewhere (mix-up, RFC 9700 §4.4). Its code
            // must not go to the provider the login names.
            tracing::warn!(
                request_id = rid,
                login_provider = login.provider.as_deref().unwrap_or(crate::config::DEFAULT_PROVIDER),
                callback_provider = %self.name,
                "callback: the answer came back on another provider's callback (mix-up?)"
            );
            return Err(Fault::IssuerMismatch);
        }
        let provider = self.loaded_provider()?;
        match q.iss.as_deref() {
            Some(iss) if iss != provider.metadata.issuer => {
                tracing::warn!(
                    request_id = rid,
                    "callback: iss does not match the issuer (mix-up?)"
                );
                return Err(Fault::IssuerMismatch);
            }
            // RFC 9207; FAPI 2.0 requires it whatever the provider advertises.
            None if provider.metadata.iss_parameter_supported || self.fapi2 => {
                tracing::warn!(
                    request_id = rid,
                    "callback: iss missing although the provider promises it"
                );
                return Err(Fault::IssuerMissing);
            }
            _ => {}
        }
        let code = q
            .code
            .as_deref()
            .filter(|c| !c.is_empty())
            .ok_or(Fault::MissingCode)?;

        // The key the login made, named in its authorization request (`dpop_jkt`).
        let dpop = match (&login.dpop_key, self.dpop) {
            (Some(pkcs8), true) => Some(DpopKey::from_pkcs8(pkcs8).map_err(|e| {
                tracing::error!(request_id = rid, error = %e, "callback: the login's DPoP key does not load");
                Fault::Internal
            })?),
            // A login started before `dpop` was turned on (or off): start again.
            (None, true) | (Some(_), false) => return Err(Fault::UnknownState),
            (None, false) => None,
        };
        let exchange_started = std::time::Instant::now();
        let tokens = self
            .tokens
            .exchange_code(
                provider.metadata.token_endpoint.as_str(),
                code,
                login.redirect_uri.as_deref().unwrap_or(&self.redirect_uri),
                &login.code_verifier,
                dpop.as_ref(),
            )
            .await
            .map_err(|e| {
                tracing::warn!(request_id = rid, error = %e, provider_error = e.provider_error(), "callback: code exchange failed");
                match e {
                    TokenError::Provider { status: 400, error } if error == "invalid_grant" => {
                        Fault::CodeRejected
                    }
                    e => e.fault(Fault::TokenRefused),
                }
            })?;
        // The provider's share of the callback (the load benchmark subtracts it).
        let provider_ms = exchange_started.elapsed().as_secs_f64() * 1000.0;
        let Some(raw_id_token) = tokens.id_token.as_deref() else {
            tracing::warn!(
                request_id = rid,
                "callback: no id_token in the token response"
            );
            return Err(Fault::MissingIdToken);
        };
        let claims = self
            .validate_id_token(
                raw_id_token,
                &provider,
                Some(&login.nonce),
                &tokens.access_token,
                now,
            )
            .await
            .map_err(|e| {
                tracing::warn!(request_id = rid, error = %e, "callback: ID token rejected");
                Fault::InvalidIdToken {
                    nonce: e == IdTokenError::Nonce,
                }
            })?;

        if !step_up_met(&login, &claims) {
            tracing::warn!(
                request_id = rid,
                acr = claims.acr().unwrap_or("-"),
                asked = %login.acr_values.join(" "),
                "callback: the step-up login did not reach what it asked for"
            );
            return Err(Fault::StepUpNotMet);
        }
        let kept_claims = claims.keep(&self.kept_claims);
        let session = Session {
            access_expires_at: expires_at(now, tokens.expires_in),
            refresh_expires_at: tokens.refresh_expires_in.map(|s| expires_at(now, Some(s))),
            refresh_token: tokens.refresh_token.map(Into::into),
            id_token: Some(raw_id_token.to_string().into()),
            access_token: tokens.access_token.into(),
            claims: Claims {
                sub: claims.sub.into(),
                sid: claims.sid.map(Into::into),
                name: claims.name.or(claims.preferred_username).map(Into::into),
                email: claims.email.map(Into::into),
            },
            created_at: now,
            last_seen: now,
            id: rand::random(),
            kept_claims: kept_claims.into(),
            dpop_key: dpop.map(|k| k.pkcs8().to_vec().into()),
            resources: self.resource_tags.clone().into(),
            access_lifetime: lifetime(tokens.expires_in),
            device_key: None,
            provider: login.provider.clone().map(Into::into),
        };
        let sub = session.claims.sub.to_string();
        // With device binding on, the browser is offered to bind this new session (DBSC).
        let registration = sessions.registration_header(&session, now);
        let mut cookies = sessions.start(session, facts).await.map_err(|e| {
            tracing::error!(request_id = rid, error = %e, "callback: session could not be stored");
            match e {
                StartError::TooLarge => Fault::SessionTooLarge,
                StartError::Store => Fault::StoreUnavailable,
            }
        })?;
        cookies.push(self.expire_login_cookie(cookie_name));
        tracing::info!(request_id = rid, provider = %self.name, sub = %sub, provider_ms, "login complete");
        let reply = Reply::redirect(302, login.return_to)
            .with_cookies(cookies)
            .with_outcome("callback");
        Ok(match registration {
            Some(header) => reply.with_header("secure-session-registration", header),
            None => reply,
        })
    }

    pub(crate) async fn validate_id_token(
        &self,
        token: &str,
        provider: &std::sync::Arc<super::discovery::Provider>,
        nonce: Option<&str>,
        access_token: &str,
        now: u64,
    ) -> Result<id_token::IdClaims, IdTokenError> {
        self.with_signing_key(token, provider, |key, alg, provider| {
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
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(acr: &[&str], max_age: Option<u64>) -> LoginState {
        LoginState {
            nonce: "n".into(),
            code_verifier: "v".into(),
            return_to: "/".into(),
            created_at: 10_000,
            dpop_key: None,
            provider: None,
            acr_values: acr.iter().map(|a| a.to_string()).collect(),
            max_age,
            redirect_uri: None,
        }
    }

    fn claims(v: serde_json::Value) -> id_token::IdClaims {
        let mut base = serde_json::json!({"sub": "u", "iat": 10_000, "aud": "c"});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    /// A step-up login's ID token must reach one of the asked `acr` values and have
    /// authenticated within `max_age` of the login's start; an ordinary login asks nothing.
    #[test]
    fn a_step_up_login_must_reach_what_it_asked() {
        let mfa = claims(serde_json::json!({"acr": "urn:mfa", "auth_time": 10_000}));
        let pwd = claims(serde_json::json!({"acr": "urn:pwd", "auth_time": 10_000}));
        let none = claims(serde_json::json!({}));
        assert!(step_up_met(&login(&[], None), &none));
        assert!(step_up_met(&login(&["urn:mfa", "urn:hw"], None), &mfa));
        assert!(!step_up_met(&login(&["urn:mfa"], None), &pwd));
        assert!(!step_up_met(&login(&["urn:mfa"], None), &none));
        // max_age 60: authenticated at most 60 s (and the clock leeway) before the login.
        let old = claims(serde_json::json!({"auth_time": 10_000 - 60 - id_token::LEEWAY_SECS - 1}));
        let recent = claims(serde_json::json!({"auth_time": 9_990}));
        assert!(step_up_met(&login(&[], Some(60)), &recent));
        assert!(!step_up_met(&login(&[], Some(60)), &old));
        assert!(!step_up_met(&login(&[], Some(60)), &none), "no auth_time");
    }
}
