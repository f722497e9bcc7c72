//! The token endpoint client: code exchange (and, later, refresh), server-side only.
//!
//! One shared `reqwest` client (connection reuse, the `[oidc] http_timeout`) serves every
//! request. A code exchange is never retried: a code is single-use, and a retry after a lost
//! response would only turn into `invalid_grant`. Responses are checked before anything is
//! stored: JSON, an `access_token`, and `token_type` Bearer. Errors keep the provider's error
//! code (safe to log) and drop everything else the provider said.

use serde::Deserialize;

use super::client_auth::{ClientAuth, ClientAuthError};
use super::dpop::{DpopError, DpopKey};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the provider answered {status} with error {error:?}")]
    Provider { status: u16, error: String },
    #[error("the provider's token response is not usable: {0}")]
    Invalid(&'static str),
    #[error("the provider's answer is larger than oidc.max_response_bytes")]
    TooLarge,
    #[error(transparent)]
    ClientAuth(#[from] ClientAuthError),
    #[error(transparent)]
    Dpop(#[from] DpopError),
}

impl TokenError {
    /// The reply to a failed call to the provider's token or PAR endpoint; `refused` wraps
    /// the provider's own error code.
    pub(crate) fn fault(self, refused: fn(String) -> crate::reply::Fault) -> crate::reply::Fault {
        use crate::reply::Fault;
        match self {
            TokenError::Provider { error, .. } => refused(crate::reply::provider_code(&error)),
            TokenError::Unreachable(_) => Fault::ProviderUnreachable,
            TokenError::Invalid(_) | TokenError::TooLarge | TokenError::ClientAuth(_) => {
                Fault::InvalidTokenResponse
            }
            TokenError::Dpop(_) => Fault::Internal,
        }
    }

    /// The provider's OAuth error code, when it gave one.
    pub fn provider_error(&self) -> Option<&str> {
        match self {
            TokenError::Provider { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A successful token response (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
#[derive(Deserialize, serde::Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    /// Some providers (Keycloak and others) say how long the refresh token lives.
    pub refresh_expires_in: Option<u64>,
    pub id_token: Option<String>,
    pub scope: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("has_id_token", &self.id_token.is_some())
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

#[derive(Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    /// Swapped whole when the client secret or private key file changes.
    auth: arc_swap::ArcSwap<ClientAuth>,
    /// `[oidc] max_response_bytes`.
    max_body: usize,
    metrics: crate::ops::metrics::Metrics,
    /// The provider's latest `DPoP-Nonce` (RFC 9449 §8), put in the next proofs so that they
    /// are not refused for the lack of one first.
    dpop_nonce: std::sync::Mutex<Option<String>>,
    /// A client assertion's `aud` for every endpoint, when set (the issuer, under FAPI 2.0);
    /// otherwise the token endpoint.
    assertion_audience: Option<String>,
    /// The provider's name, on the calls' spans (`default` for `[oidc]`).
    provider: String,
}

impl TokenClient {
    /// Authenticates from the next request on with `auth` (a reloaded secret or key).
    pub(crate) fn replace_auth(&self, auth: ClientAuth) {
        self.auth.store(std::sync::Arc::new(auth));
    }

    pub(crate) fn new(
        http: reqwest::Client,
        auth: ClientAuth,
        max_body: usize,
        metrics: crate::ops::metrics::Metrics,
    ) -> Self {
        TokenClient {
            http,
            auth: arc_swap::ArcSwap::from_pointee(auth),
            max_body,
            metrics,
            dpop_nonce: std::sync::Mutex::new(None),
            assertion_audience: None,
            provider: "default".to_string(),
        }
    }

    /// Client assertions name `audience` (when given) instead of the token endpoint.
    pub(crate) fn with_assertion_audience(mut self, audience: Option<String>) -> Self {
        self.assertion_audience = audience;
        self
    }

    /// Names the provider on its calls' spans (`tollgate.provider`).
    pub(crate) fn with_provider(mut self, name: &str) -> Self {
        self.provider = name.to_string();
        self
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens; with `dpop`,
    /// bound to that key (a DPoP proof, and a `DPoP` token type required back).
    pub async fn exchange_code(
        &self,
        token_endpoint: &str,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, TokenError> {
        self.request(
            token_endpoint,
            vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code.to_string()),
                ("redirect_uri", redirect_uri.to_string()),
                ("code_verifier", code_verifier.to_string()),
            ],
            dpop,
        )
        .await
    }

    /// Uses a refresh token (RFC 6749 §6) with the same client authentication (and the
    /// session's DPoP key, when it has one).
    pub async fn refresh(
        &self,
        token_endpoint: &str,
        refresh_token: &str,
        dpop: Option<&DpopKey>,
        audience: Option<&crate::config::Audience>,
    ) -> Result<TokenResponse, TokenError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh_token.to_string()),
        ];
        // A route's own token (RFC 8707 §2.2): its resource and scopes.
        if let Some(a) = audience {
            if let Some(r) = &a.resource {
                form.push(("resource", r.clone()));
            }
            if let Some(s) = &a.scope {
                form.push(("scope", s.clone()));
            }
        }
        self.request(token_endpoint, form, dpop).await
    }

    /// Revokes a refresh token (RFC 7009). The provider answers 200 even for unknown tokens.
    /// A client assertion names `token_endpoint` as its audience here too: RFC 7523 §3 and
    /// OpenID Connect Core §9 name the token endpoint (or the issuer), and strict providers
    /// refuse an assertion addressed to the revocation endpoint.
    pub async fn revoke(
        &self,
        revocation_endpoint: &str,
        token_endpoint: &str,
        refresh_token: &str,
    ) -> Result<(), TokenError> {
        let form = vec![
            ("token", refresh_token.to_string()),
            ("token_type_hint", "refresh_token".to_string()),
        ];
        self.post_form(revocation_endpoint, token_endpoint, form, false, None)
            .await
            .map(|_| ())
    }

    /// Pushes an authorization request (RFC 9126) with the client's authentication (an
    /// assertion's audience is `audience`, the token endpoint as for every other call) and
    /// returns its `request_uri`. `params` are the authorization request's parameters.
    pub async fn push_authorization(
        &self,
        par_endpoint: &str,
        audience: &str,
        params: Vec<(&str, String)>,
    ) -> Result<String, TokenError> {
        let form = params
            .into_iter()
            .filter(|(k, _)| *k != "client_id")
            .collect();
        let body = self
            .post_form(par_endpoint, audience, form, true, None)
            .await?;
        #[derive(Deserialize)]
        struct Pushed {
            request_uri: String,
        }
        let pushed: Pushed = serde_json::from_slice(&body)
            .map_err(|_| TokenError::Invalid("not a JSON pushed authorization response"))?;
        // It goes into the browser's redirect as a query parameter: printable ASCII only.
        if pushed.request_uri.is_empty()
            || pushed.request_uri.len() > 2048
            || !pushed
                .request_uri
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b))
        {
            return Err(TokenError::Invalid("request_uri is empty or not a URI"));
        }
        Ok(pushed.request_uri)
    }

    /// A token request; with `dpop`, a proof on it, sent again once with the provider's
    /// nonce if it asks for one (`use_dpop_nonce`; the code or refresh token was not used).
    async fn request(
        &self,
        token_endpoint: &str,
        form: Vec<(&'static str, String)>,
        dpop: Option<&DpopKey>,
    ) -> Result<TokenResponse, TokenError> {
        let Some(key) = dpop else {
            let body = self
                .post_form(token_endpoint, token_endpoint, form, false, None)
                .await?;
            return parse_token_response(&body, "Bearer");
        };
        let mut retried = false;
        loop {
            let nonce = self.dpop_nonce.lock().ok().and_then(|n| n.clone());
            let proof = key.proof(
                "POST",
                token_endpoint,
                None,
                nonce.as_deref(),
                crate::unix_now(),
            )?;
            match self
                .post_form(
                    token_endpoint,
                    token_endpoint,
                    form.clone(),
                    false,
                    Some(proof),
                )
                .await
            {
                Err(TokenError::Provider { error, .. })
                    if error == "use_dpop_nonce" && !retried && self.has_new_nonce(&nonce) =>
                {
                    retried = true;
                }
                Err(e) => return Err(e),
                Ok(body) => return parse_token_response(&body, "DPoP"),
            }
        }
    }

    /// Whether the provider gave a nonce other than `used` since.
    fn has_new_nonce(&self, used: &Option<String>) -> bool {
        self.dpop_nonce
            .lock()
            .is_ok_and(|n| n.is_some() && *n != *used)
    }
}

/// The tokens in the body of a token endpoint's 2xx answer, checked before anything is stored:
/// JSON, the `token_type` asked for (`Bearer`, or `DPoP` for a proof-bound request), an
/// `access_token` that can go into a header as it is.
pub(crate) fn parse_token_response(
    body: &[u8],
    token_type: &'static str,
) -> Result<TokenResponse, TokenError> {
    let tokens: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| TokenError::Invalid("not a JSON token response"))?;
    if !tokens.token_type.eq_ignore_ascii_case(token_type) {
        return Err(TokenError::Invalid(if token_type == "DPoP" {
            "token_type is not DPoP (the provider did not bind the token to the key)"
        } else {
            "token_type is not Bearer"
        }));
    }
    if tokens.access_token.is_empty()
        || !tokens
            .access_token
            .bytes()
            .all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(TokenError::Invalid(
            "access_token is empty or not a header-safe string",
        ));
    }
    Ok(tokens)
}

/// The provider's error code in the body of a token endpoint's error answer (sanitized), or
/// `unparseable_error`.
pub(crate) fn provider_error(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|b| crate::reply::provider_code(&b.error))
        .unwrap_or_else(|_| "unparseable_error".to_string())
}

impl TokenClient {
    /// POSTs `form` to `endpoint` with the client's credentials (an assertion's audience is
    /// `audience`); the body of a 2xx answer, else the provider's error code.
    async fn post_form(
        &self,
        endpoint: &str,
        audience: &str,
        form: Vec<(&str, String)>,
        name_client: bool,
        dpop_proof: Option<String>,
    ) -> Result<bytes::Bytes, TokenError> {
        // Traced as the kind of call (the grant type, `revocation` or `par`) and its status;
        // never the form, which holds codes, tokens and credentials.
        let span = if crate::ops::telemetry::enabled() {
            let call = match form.iter().find(|(k, _)| *k == "grant_type") {
                Some((_, g)) if g == "authorization_code" => "authorization_code",
                Some((_, g)) if g == "refresh_token" => "refresh_token",
                Some(_) => "other",
                None if name_client => "par",
                None => "revocation",
            };
            crate::ops::telemetry::ChildSpan::start(
                "oidc.provider",
                vec![
                    opentelemetry::KeyValue::new("tollgate.oidc.call", call),
                    opentelemetry::KeyValue::new("tollgate.provider", self.provider.clone()),
                ],
            )
        } else {
            crate::ops::telemetry::ChildSpan::start("oidc.provider", Vec::new())
        };
        let result = self
            .post_form_traced(endpoint, audience, form, name_client, dpop_proof, &span)
            .await;
        let error = match &result {
            Ok(_) => None,
            Err(TokenError::Provider { status, .. }) => {
                span.attribute(opentelemetry::KeyValue::new(
                    "http.response.status_code",
                    i64::from(*status),
                ));
                Some("provider refused")
            }
            Err(_) => Some("provider unreachable"),
        };
        span.end(error);
        result
    }

    async fn post_form_traced(
        &self,
        endpoint: &str,
        audience: &str,
        mut form: Vec<(&str, String)>,
        name_client: bool,
        dpop_proof: Option<String>,
        span: &crate::ops::telemetry::ChildSpan,
    ) -> Result<bytes::Bytes, TokenError> {
        let audience = self.assertion_audience.as_deref().unwrap_or(audience);
        let auth = self.auth.load();
        let creds = auth.credentials(audience, crate::unix_now())?;
        form.extend(creds.form);
        // `name_client`: the form must carry `client_id` even where the client's
        // authentication does not (`client_secret_basic`); never twice.
        if name_client && !form.iter().any(|(k, _)| *k == "client_id") {
            form.push(("client_id", auth.client_id().to_string()));
        }
        let mut req = self
            .http
            .post(endpoint)
            .header("accept", "application/json")
            .form(&form);
        if let Some(a) = creds.authorization {
            req = req.header("authorization", a);
        }
        if let Some(proof) = dpop_proof {
            req = req.header("dpop", proof);
        }
        for (name, value) in span.headers() {
            req = req.header(name, value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| TokenError::Unreachable(describe(&e)))?;
        let status = resp.status().as_u16();
        if let Some(nonce) = resp
            .headers()
            .get("dpop-nonce")
            .and_then(|v| v.to_str().ok())
            .filter(|n| !n.is_empty() && n.len() <= 512)
        {
            if let Ok(mut slot) = self.dpop_nonce.lock() {
                *slot = Some(nonce.to_string());
            }
        }
        let body = super::http::read_body(resp, self.max_body)
            .await
            .map_err(|e| match e {
                super::http::BodyError::TooLarge(_) => {
                    self.metrics.limit("provider_response_bytes");
                    TokenError::TooLarge
                }
                super::http::BodyError::Http(e) => TokenError::Unreachable(describe(&e)),
            })?;
        if !(200..300).contains(&status) {
            let error = provider_error(&body);
            return Err(TokenError::Provider { status, error });
        }
        Ok(body)
    }
}

/// An error description without URLs or query strings (reqwest's Display includes the URL).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_string()
}
