//! The login state that travels from `/login` to `/callback` in a sealed, short-lived cookie.
//!
//! Every login gets its own `state`, `nonce` and PKCE verifier (256 bits each from the OS
//! RNG) and its own cookie, named after the state (`NAME-login-STATE`), so two tabs logging in
//! at once do not overwrite each other. A browser keeps at most [`MAX_PENDING_LOGINS`] of
//! them (the newest; older ones are expired by the next `/login`), so that repeated `/login`
//! calls — a cross-site page can trigger them — cannot grow the `Cookie` header past what a
//! server in front accepts and lock the user out. The cookie is sealed like the session (the cookie name,
//! hence the state, is bound in), lives ten minutes, and is `SameSite=Lax` whatever the session
//! uses: the provider's redirect back is a cross-site top-level navigation, which `Strict`
//! cookies would not survive.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dpop::DpopKey;
use crate::config::SameSite;
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::cookie::login_cookie_name as cookie_name;
use crate::session::seal::Sealer;

/// How long a login may take, from `/login` to `/callback`.
pub(crate) const LOGIN_TTL: Duration = Duration::from_secs(600);
/// 2: the DPoP key.
const PAYLOAD_VERSION: u8 = 2;

/// What `/callback` needs to finish the login `/login` started.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginState {
    pub nonce: String,
    pub code_verifier: String,
    pub return_to: String,
    pub created_at: u64,
    /// With `[oidc] dpop`: the session's key pair (PKCS#8), made here so that the
    /// authorization request can name it (`dpop_jkt`, RFC 9449 §10) and the code is bound to
    /// it; the code exchange proves possession of it.
    #[serde(default)]
    pub dpop_key: Option<Vec<u8>>,
    /// The provider the login went to, when it is not `[oidc]`. (This and the next two are
    /// appended compatibly: a cookie of an earlier build opens with them empty.)
    #[serde(default)]
    pub provider: Option<String>,
    /// A step-up login (RFC 9470): the `acr` values asked for (any one will do) ...
    #[serde(default)]
    pub acr_values: Vec<String>,
    /// ... and how long ago, at most, the user may have authenticated.
    #[serde(default)]
    pub max_age: Option<u64>,
    /// The `redirect_uri` the login sent, when it is not the provider's at `public_url` (a
    /// login on one of the providers' `hosts`): the code exchange must send it again.
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

impl std::fmt::Debug for LoginState {
    /// The verifier, nonce and DPoP key never reach a log line, even through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState")
            .field("return_to", &self.return_to)
            .field("created_at", &self.created_at)
            .field("has_dpop_key", &self.dpop_key.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginStateError {
    #[error("no login cookie for this state")]
    Missing,
    #[error("the login cookie does not open")]
    Invalid,
    #[error("the login took longer than ten minutes")]
    Expired,
}

/// 256 random bits, base64url (43 characters).
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 PKCE challenge for `verifier` (RFC 7636 §4.2).
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Login cookies a browser keeps at once, the new one included (several tabs may log in).
pub(crate) const MAX_PENDING_LOGINS: usize = 3;

impl LoginState {
    pub fn seal(&self, sealer: &Sealer, cookie_name: &str) -> Option<String> {
        sealer.seal_value(PAYLOAD_VERSION, self, cookie_name)
    }

    pub fn open(
        sealer: &Sealer,
        cookie_name: &str,
        value: Option<&str>,
        now: u64,
    ) -> Result<LoginState, LoginStateError> {
        let value = value.ok_or(LoginStateError::Missing)?;
        let raw = sealer
            .open(value, cookie_name.as_bytes())
            .map_err(|_| LoginStateError::Invalid)?;
        let state = match raw.split_first() {
            Some((v, body)) if *v == PAYLOAD_VERSION => decode(body),
            _ => None,
        }
        .ok_or(LoginStateError::Invalid)?;
        if now >= state.created_at.saturating_add(LOGIN_TTL.as_secs()) {
            return Err(LoginStateError::Expired);
        }
        Ok(state)
    }
}

/// A login state, or one sealed before the last fields were appended (`provider`,
/// `acr_values`, `max_age`, `redirect_uri`): postcard writes fields in order, so a trailing 0
/// reads as "none" for each one missing.
fn decode(body: &[u8]) -> Option<LoginState> {
    (0..=4).find_map(|missing| {
        let padded = [body, &[0u8; 4][..missing]].concat();
        postcard::from_bytes::<LoginState>(&padded).ok()
    })
}

/// `/login?return_to=…&prompt=…&acr_values=…&max_age=…` query parameters (`provider` is read
/// by [`super::providers::Providers::for_login`]).
#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
    prompt: Option<String>,
    acr_values: Option<String>,
    max_age: Option<String>,
}

/// The most `acr` values a step-up login asks for, and the longest one.
const MAX_ACR_VALUES: usize = 8;
const MAX_ACR_LEN: usize = 200;

/// `acr_values` as a login may ask for them: space-separated, printable, bounded.
pub(crate) fn step_up_acr(values: Option<&str>) -> Result<Vec<String>, Fault> {
    let Some(values) = values else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = values
        .split(' ')
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect();
    let valid = list.len() <= MAX_ACR_VALUES
        && list.iter().all(|v| {
            v.len() <= MAX_ACR_LEN
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
    if valid {
        Ok(list)
    } else {
        Err(Fault::BadRequest)
    }
}

/// `max_age` as a login may ask for it: seconds, at most a year.
pub(crate) fn step_up_max_age(value: Option<&str>) -> Result<Option<u64>, Fault> {
    match value {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= 365 * 86400)
            .map(Some)
            .ok_or(Fault::BadRequest),
    }
}

/// The `claims` request parameter of a step-up login: the operator's own `claims` (from
/// `extra_auth_params`, when it is a JSON object) with `id_token.acr` set to an essential
/// claim for `acr_values`.
fn essential_acr(operator: Option<&str>, acr_values: &[String]) -> String {
    let mut claims = operator
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    let acr = serde_json::json!({"essential": true, "values": acr_values});
    match claims.get_mut("id_token") {
        Some(serde_json::Value::Object(id_token)) => {
            id_token.insert("acr".into(), acr);
        }
        _ => claims["id_token"] = serde_json::json!({ "acr": acr }),
    }
    claims.to_string()
}

/// `prompt` values passed on to the provider (OpenID Connect Core §3.1.2.1).
const ALLOWED_PROMPTS: [&str; 4] = ["none", "login", "consent", "select_account"];

fn allowed_prompt(p: &str) -> bool {
    !p.is_empty() && p.split(' ').all(|v| ALLOWED_PROMPTS.contains(&v))
}

/// A `Set-Cookie` line for a login (or pending-logout) cookie: `SameSite=Lax` whatever the
/// session uses, since the provider's redirect back is a cross-site navigation (`value` empty
/// and `max_age` zero to delete it).
pub(crate) fn login_cookie_line(
    name: &str,
    value: &str,
    max_age: Duration,
    secure: bool,
) -> String {
    crate::session::cookie::cookie_line(name, value, max_age, secure, SameSite::Lax)
}

impl super::client::Oidc {
    /// `GET /login`: a redirect to the provider's authorization endpoint, with the login
    /// cookie, and the expiry of the oldest pending logins beyond [`MAX_PENDING_LOGINS`].
    /// When the provider takes pushed authorization requests (`[oidc] par`), the parameters
    /// are pushed first, with the client's authentication, and the redirect carries only
    /// `client_id` and the `request_uri` the provider gave (RFC 9126 §4).
    pub(crate) async fn login(&self, facts: &Facts<'_>) -> Result<Reply, Fault> {
        let provider = self.loaded_provider()?;
        let q: LoginQuery =
            serde_urlencoded::from_str(facts.query.unwrap_or("")).unwrap_or_default();
        let now = facts.now;
        let state = random_token();
        let dpop = match self.dpop {
            true => Some(DpopKey::generate().map_err(|e| {
                tracing::error!(request_id = facts.request_id, error = %e, "login: no DPoP key");
                Fault::Internal
            })?),
            false => None,
        };
        let acr_values = step_up_acr(q.acr_values.as_deref())?;
        let max_age = step_up_max_age(q.max_age.as_deref())?;
        let login = LoginState {
            nonce: random_token(),
            code_verifier: random_token(),
            return_to: super::return_to::safe_return_to(q.return_to.as_deref()),
            created_at: now,
            dpop_key: dpop.as_ref().map(|k| k.pkcs8().to_vec()),
            provider: (self.name != crate::config::DEFAULT_PROVIDER).then(|| self.name.clone()),
            acr_values,
            max_age,
            redirect_uri: self.host_redirect_uri(facts).map(str::to_string),
        };
        let name = cookie_name(&self.session_cookie, &state);
        let sealed = login.seal(&self.sealer, &name).ok_or(Fault::Internal)?;
        let mut params: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", self.client_id.clone()),
            (
                "redirect_uri",
                login
                    .redirect_uri
                    .clone()
                    .unwrap_or_else(|| self.redirect_uri.clone()),
            ),
            ("scope", self.scope.clone()),
            ("state", state),
            ("nonce", login.nonce.clone()),
            ("code_challenge", code_challenge(&login.code_verifier)),
            ("code_challenge_method", "S256".into()),
        ];
        for r in &self.resources {
            params.push(("resource", r.clone()));
        }
        let essential_claims =
            !login.acr_values.is_empty() && provider.metadata.claims_parameter_supported;
        for (k, v) in &self.extra_auth_params {
            // A step-up login's own `acr_values` and `max_age` win; the operator's `claims`
            // is merged into the step-up's own when there is one.
            let replaced = match k.as_str() {
                "acr_values" => !login.acr_values.is_empty(),
                "max_age" => login.max_age.is_some(),
                "claims" => essential_claims,
                _ => false,
            };
            if !replaced {
                params.push((k, v.clone()));
            }
        }
        if !login.acr_values.is_empty() {
            if essential_claims {
                // `acr` as an essential claim: a provider must reach one of the values or
                // fail (oidc-provider re-authenticates only for essential claims). Not with
                // `acr_values` too, which would make the request voluntary again there.
                params.push((
                    "claims",
                    essential_acr(self.operator_claims(), &login.acr_values),
                ));
            } else {
                params.push(("acr_values", login.acr_values.join(" ")));
            }
        }
        if let Some(max_age) = login.max_age {
            params.push(("max_age", max_age.to_string()));
        }
        if let Some(prompt) = q.prompt.filter(|p| allowed_prompt(p)) {
            params.push(("prompt", prompt));
        }
        if let Some(key) = &dpop {
            params.push(("dpop_jkt", key.thumbprint().to_string()));
        }
        let mut url = provider.metadata.authorization_endpoint.clone();
        match &provider.metadata.par_endpoint {
            Some(par) => {
                let Ok(_slot) = self.par_slots.try_acquire() else {
                    self.metrics.limit("par_in_flight");
                    tracing::warn!(
                        request_id = facts.request_id,
                        "login: too many pushed authorization requests in flight"
                    );
                    return Err(Fault::ProviderUnavailable);
                };
                let request_uri = self
                    .tokens
                    .push_authorization(
                        par.as_str(),
                        provider.metadata.token_endpoint.as_str(),
                        params,
                    )
                    .await
                    .map_err(|e| {
                        tracing::warn!(request_id = facts.request_id, error = %e, provider_error = e.provider_error(), "login: pushed authorization request failed");
                        e.fault(Fault::ParRefused)
                    })?;
                url.query_pairs_mut()
                    .append_pair("client_id", &self.client_id)
                    .append_pair("request_uri", &request_uri);
            }
            None => {
                let mut p = url.query_pairs_mut();
                for (k, v) in &params {
                    p.append_pair(k, v);
                }
            }
        }
        let mut cookies: Vec<String> = self
            .stale_logins(facts.cookie_headers(), now)
            .into_iter()
            .map(|old| login_cookie_line(&old, "", Duration::ZERO, self.secure_cookies))
            .collect();
        cookies.push(login_cookie_line(
            &name,
            &sealed,
            LOGIN_TTL,
            self.secure_cookies,
        ));
        Ok(Reply::redirect(302, url.as_str())
            .with_cookies(cookies)
            .with_outcome("login"))
    }

    /// The names of the pending login cookies to expire so that, with a new one, at most
    /// [`MAX_PENDING_LOGINS`] remain: the oldest, and any that do not open.
    fn stale_logins<'c>(
        &self,
        cookie_headers: impl Iterator<Item = &'c str>,
        now: u64,
    ) -> Vec<String> {
        let mut pending: Vec<(u64, &str)> = Vec::new();
        let mut stale = Vec::new();
        for (name, value) in cookie_headers.flat_map(crate::session::cookie::pairs) {
            if crate::session::cookie::login_cookie_state(name, &self.session_cookie).is_none() {
                continue;
            }
            match LoginState::open(&self.sealer, name, Some(value), now) {
                Ok(login) => pending.push((login.created_at, name)),
                Err(_) => stale.push(name.to_string()),
            }
        }
        pending.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
        stale.extend(
            pending
                .iter()
                .skip(MAX_PENDING_LOGINS - 1)
                .map(|(_, n)| n.to_string()),
        );
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_known_vector() {
        // RFC 7636, Appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert!(crate::session::cookie::is_plausible_state(&a));
        assert_ne!(a, random_token());
        assert!(!crate::session::cookie::is_plausible_state("short"));
        assert!(!crate::session::cookie::is_plausible_state(
            "has;semicolon-and-is-long-enough"
        ));
    }

    #[test]
    fn a_step_up_keeps_the_operators_claims() {
        let acr = ["urn:mfa".to_string()];
        let v = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
        assert_eq!(
            v(essential_acr(None, &acr)),
            serde_json::json!({"id_token": {"acr": {"essential": true, "values": ["urn:mfa"]}}})
        );
        assert_eq!(
            v(essential_acr(
                Some(
                    r#"{"userinfo": {"email": null}, "id_token": {"groups": null, "acr": {"value": "x"}}}"#
                ),
                &acr
            )),
            serde_json::json!({
                "userinfo": {"email": null},
                "id_token": {"groups": null, "acr": {"essential": true, "values": ["urn:mfa"]}}
            })
        );
        assert_eq!(
            v(essential_acr(Some("not json"), &acr)),
            v(essential_acr(None, &acr))
        );
    }

    #[test]
    fn sealed_state_round_trip_binding_and_expiry() {
        let sealer = Sealer::new(&[[5u8; 32]]);
        let s = LoginState {
            nonce: random_token(),
            code_verifier: random_token(),
            return_to: "/app".into(),
            created_at: 1000,
            dpop_key: Some(vec![1, 2, 3]),
            provider: Some("b".into()),
            acr_values: vec!["urn:mfa".into()],
            max_age: Some(60),
            redirect_uri: Some("http://partner.localhost:8080/callback/b".into()),
        };
        let name = cookie_name("tg", "state-aaaaaaaaaaaaaaaa");
        let sealed = s.seal(&sealer, &name).unwrap();
        assert_eq!(
            LoginState::open(&sealer, &name, Some(&sealed), 1001).unwrap(),
            s
        );
        let other = cookie_name("tg", "state-bbbbbbbbbbbbbbbb");
        assert_eq!(
            LoginState::open(&sealer, &other, Some(&sealed), 1001),
            Err(LoginStateError::Invalid),
            "a login cookie only opens under its own state"
        );
        assert_eq!(
            LoginState::open(&sealer, &name, Some(&sealed), 1600),
            Err(LoginStateError::Expired)
        );
        assert_eq!(
            LoginState::open(&sealer, &name, None, 1001),
            Err(LoginStateError::Missing)
        );
    }

    /// A login cookie sealed before `provider`, `acr_values` and `max_age` were appended opens
    /// with them empty.
    #[test]
    fn an_earlier_login_state_opens() {
        #[derive(Serialize)]
        struct Before {
            nonce: String,
            code_verifier: String,
            return_to: String,
            created_at: u64,
            dpop_key: Option<Vec<u8>>,
        }
        let sealer = Sealer::new(&[[5u8; 32]]);
        let name = cookie_name("tg", "state-aaaaaaaaaaaaaaaa");
        let before = Before {
            nonce: "n".into(),
            code_verifier: "v".into(),
            return_to: "/a".into(),
            created_at: 1000,
            dpop_key: None,
        };
        let sealed = sealer.seal_value(PAYLOAD_VERSION, &before, &name).unwrap();
        let state = LoginState::open(&sealer, &name, Some(&sealed), 1001).unwrap();
        assert_eq!(state.return_to, "/a");
        assert_eq!(state.provider, None);
        assert!(state.acr_values.is_empty());
        assert_eq!(state.max_age, None);
    }

    #[test]
    fn step_up_parameters_are_bounded() {
        assert_eq!(
            step_up_acr(Some("urn:mfa  urn:hw")).unwrap(),
            ["urn:mfa", "urn:hw"]
        );
        assert!(step_up_acr(Some("a\"b")).is_err());
        assert!(step_up_acr(Some(&"a ".repeat(9))).is_err());
        assert_eq!(step_up_max_age(Some("600")).unwrap(), Some(600));
        assert!(step_up_max_age(Some("-1")).is_err());
        assert!(step_up_max_age(Some("99999999999")).is_err());
    }

    #[test]
    fn prompts() {
        assert!(allowed_prompt("login"));
        assert!(allowed_prompt("login consent"));
        assert!(!allowed_prompt("create"));
        assert!(!allowed_prompt(""));
        assert!(!allowed_prompt("login&evil=1"));
    }
}
