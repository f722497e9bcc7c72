//! The token endpoint client: code exchange (and, later, refresh), server-side only.
//!
//! One shared `reqwest` client (connection reuse, the `[oidc] http_timeout`) serves every
//! request. A code exchange is never retried: a code is single-use, and a retry after a lost
//! response would only turn into `invalid_grant`. Responses are checked before anything is
//! stored: JSON, an `access_token`, and `token_type` Bearer. Errors keep the provider's error
//! code (safe to log) and drop everything else the provider said.

use serde::Deserialize;

use super::client_auth::{ClientAuth, ClientAuthError};

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
}

impl TokenError {
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
    auth: ClientAuth,
    /// `[oidc] max_response_bytes`.
    max_body: usize,
    metrics: crate::ops::metrics::Metrics,
}

impl TokenClient {
    pub(crate) fn new(
        http: reqwest::Client,
        auth: ClientAuth,
        max_body: usize,
        metrics: crate::ops::metrics::Metrics,
    ) -> Self {
        TokenClient {
            http,
            auth,
            max_body,
            metrics,
        }
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange_code(
        &self,
        token_endpoint: &str,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, TokenError> {
        self.request(
            token_endpoint,
            vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code.to_string()),
                ("redirect_uri", redirect_uri.to_string()),
                ("code_verifier", code_verifier.to_string()),
            ],
        )
        .await
    }

    /// Uses a refresh token (RFC 6749 §6) with the same client authentication.
    pub async fn refresh(
        &self,
        token_endpoint: &str,
        refresh_token: &str,
    ) -> Result<TokenResponse, TokenError> {
        self.request(
            token_endpoint,
            vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", refresh_token.to_string()),
            ],
        )
        .await
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
        self.post_form(revocation_endpoint, token_endpoint, form, false)
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
        let body = self.post_form(par_endpoint, audience, form, true).await?;
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

    async fn request(
        &self,
        token_endpoint: &str,
        form: Vec<(&'static str, String)>,
    ) -> Result<TokenResponse, TokenError> {
        let body = self
            .post_form(token_endpoint, token_endpoint, form, false)
            .await?;
        parse_token_response(&body)
    }
}

/// The tokens in the body of a token endpoint's 2xx answer, checked before anything is stored:
/// JSON, `token_type` Bearer, an `access_token` that can go into a header as it is.
pub(crate) fn parse_token_response(body: &[u8]) -> Result<TokenResponse, TokenError> {
    let tokens: TokenResponse = serde_json::from_slice(body)
        .map_err(|_| TokenError::Invalid("not a JSON token response"))?;
    if !tokens.token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Invalid("token_type is not Bearer"));
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
        mut form: Vec<(&str, String)>,
        name_client: bool,
    ) -> Result<bytes::Bytes, TokenError> {
        let creds = self.auth.credentials(audience, crate::unix_now())?;
        form.extend(creds.form);
        // `name_client`: the form must carry `client_id` even where the client's
        // authentication does not (`client_secret_basic`); never twice.
        if name_client && !form.iter().any(|(k, _)| *k == "client_id") {
            form.push(("client_id", self.auth.client_id().to_string()));
        }
        let mut req = self
            .http
            .post(endpoint)
            .header("accept", "application/json")
            .form(&form);
        if let Some(a) = creds.authorization {
            req = req.header("authorization", a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| TokenError::Unreachable(describe(&e)))?;
        let status = resp.status().as_u16();
        let body = super::read_body(resp, self.max_body)
            .await
            .map_err(|e| match e {
                super::BodyError::TooLarge(_) => {
                    self.metrics.limit("provider_response_bytes");
                    TokenError::TooLarge
                }
                super::BodyError::Http(e) => TokenError::Unreachable(describe(&e)),
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
