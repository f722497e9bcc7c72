//! OpenID Connect: logging the user in with the authorization code flow (PKCE S256).
//!
//! The flow, module by module:
//! [`discovery`] (provider metadata, kept fresh in the background) and [`jwks`] (signing keys)
//! → `/login` builds the authorization request and seals the per-login state ([`login`],
//! [`return_to`]) → `/callback` checks it, exchanges the code server-side ([`token_client`],
//! authenticating per [`client_auth`]), validates the ID token ([`id_token`]) and stores the
//! session ([`callback`]); [`refresh`] and [`logout`] run the rest of its life. Failures are
//! [`crate::reply::Fault`]s.

pub(crate) mod backchannel;
pub(crate) mod callback;
pub(crate) mod client_auth;
pub(crate) mod discovery;
pub(crate) mod id_token;
pub(crate) mod jwks;
pub mod login;
pub(crate) mod logout;
pub mod refresh;
pub(crate) mod return_to;
pub mod token_client;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::session::seal::Sealer;
use client_auth::{ClientAuth, ClientAuthError};
use discovery::{Provider, ProviderStore};
use jwks::Jwks;
use token_client::TokenClient;

/// The least time between two JWKS fetches caused by an unknown `kid`.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// The HTTP client for every request to the provider (shared: connection reuse). Failing to
/// build it (no TLS roots, say) is a startup error: a default client would have no timeouts.
pub(crate) fn http_client(config: &Config) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(config.oidc.http_timeout)
        .connect_timeout(config.oidc.http_timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Everything the login endpoints need, built once from the config.
#[derive(Debug)]
pub(crate) struct Oidc {
    pub(crate) provider: Arc<ProviderStore>,
    http: reqwest::Client,
    tokens: TokenClient,
    sealer: Sealer,
    client_id: String,
    redirect_uri: String,
    scope: String,
    extra_auth_params: Vec<(String, String)>,
    session_cookie: String,
    secure_cookies: bool,
    last_jwks_refetch: tokio::sync::Mutex<Option<Instant>>,
    flights: refresh::Flights,
    store: Option<Arc<crate::store::Store>>,
    metrics: crate::ops::metrics::Metrics,
    http_timeout: Duration,
    post_logout_redirect_uri: String,
    allow_get_logout: bool,
}

impl Oidc {
    pub(crate) fn new(
        config: &Config,
        http: reqwest::Client,
        provider: Arc<ProviderStore>,
        store: Option<Arc<crate::store::Store>>,
        metrics: crate::ops::metrics::Metrics,
    ) -> Result<Oidc, ClientAuthError> {
        let auth = ClientAuth::new(&config.oidc)?;
        let public = config.server.public_origin.trim_end_matches('/');
        Ok(Oidc {
            provider,
            tokens: TokenClient::new(http.clone(), auth),
            http,
            sealer: Sealer::new(&config.session.keys),
            client_id: config.oidc.client_id.clone(),
            redirect_uri: format!("{public}{}", config.oidc.callback_path),
            scope: config.oidc.scopes.join(" "),
            extra_auth_params: config
                .oidc
                .extra_auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            session_cookie: config.session.cookie_name.clone(),
            secure_cookies: config.server.secure_cookies,
            last_jwks_refetch: tokio::sync::Mutex::new(None),
            flights: refresh::Flights::default(),
            store,
            metrics,
            http_timeout: config.oidc.http_timeout,
            post_logout_redirect_uri: config.oidc.post_logout_redirect_uri.to_string(),
            allow_get_logout: config.oidc.allow_get_logout,
        })
    }

    /// The provider snapshot, if metadata has loaded.
    pub(crate) fn provider(&self) -> Option<Arc<Provider>> {
        self.provider.get()
    }

    /// Runs `check` with the provider key that signed `token` (a JWT from the provider: ID
    /// token or logout token): its algorithm must be one the provider advertises for ID tokens
    /// (asymmetric only, never `none` or HMAC), and an unknown `kid` fetches the keys again
    /// first (rate-limited).
    pub(crate) async fn with_signing_key<R>(
        &self,
        token: &str,
        provider: &Arc<Provider>,
        check: impl FnOnce(&jsonwebtoken::DecodingKey, jsonwebtoken::Algorithm, &Provider) -> R,
    ) -> Result<R, id_token::IdTokenError> {
        let (alg, kid) = id_token::header(token)?;
        if !provider.metadata.id_token_algs.contains(&alg) {
            return Err(id_token::IdTokenError::Algorithm(alg));
        }
        let provider = self
            .provider_with_kid(provider.clone(), kid.as_deref(), alg)
            .await;
        let key = provider
            .jwks
            .find(kid.as_deref(), alg)
            .ok_or(id_token::IdTokenError::UnknownKey)?;
        Ok(check(key, alg, &provider))
    }

    /// The provider as it is now, after fetching the JWKS again if `kid` is unknown (key
    /// rotation), at most once per [`JWKS_REFETCH_INTERVAL`] whatever the traffic.
    async fn provider_with_kid(
        &self,
        provider: Arc<Provider>,
        kid: Option<&str>,
        alg: jsonwebtoken::Algorithm,
    ) -> Arc<Provider> {
        if provider.jwks.find(kid, alg).is_some() {
            return provider;
        }
        let mut last = self.last_jwks_refetch.lock().await;
        // Another request may have refreshed the keys while this one waited for the lock.
        if let Some(current) = self.provider.get() {
            if current.jwks.find(kid, alg).is_some() {
                return current;
            }
        }
        if last.is_some_and(|t| t.elapsed() < JWKS_REFETCH_INTERVAL) {
            return provider;
        }
        let fetched = Instant::now();
        *last = Some(fetched);
        match Jwks::fetch(&self.http, &provider.metadata.jwks_uri).await {
            Ok(jwks) => {
                tracing::info!(
                    kid = kid.unwrap_or("-"),
                    "unknown kid: provider keys fetched again"
                );
                self.provider
                    .replace_jwks(jwks, fetched)
                    .unwrap_or(provider)
            }
            Err(e) => {
                tracing::warn!(error = %e, "refetching provider keys failed");
                provider
            }
        }
    }
}
