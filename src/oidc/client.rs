//! The relying party: tollgate as the provider's OpenID Connect client, built once from the
//! config. [`Oidc`] holds what every flow needs (the provider's metadata, the token client,
//! the key ring, the refresh flights, the route tokens); each flow adds its own methods in its
//! own file (`login`, `callback`, `refresh`, `audience`, `logout`, `backchannel`), which import
//! this one and never each other's internals.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::audience_tokens::AudienceTokens;
use super::client_auth::{ClientAuth, ClientAuthError};
use super::discovery::{DiscoveryError, Provider, ProviderStore};
use super::id_token;
use super::jwks::Jwks;
use super::refresh::flights::Flights;
use super::refresh::outcome::RESULT_TTL;
use super::token_client::TokenClient;
use crate::config::Config;
use crate::reply::Fault;
use crate::request::Facts;
use crate::session::seal::Sealer;

/// The least time between two JWKS fetches caused by an unknown `kid`.
const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// Everything the login endpoints need, built once from the config.
#[derive(Debug)]
pub(crate) struct Oidc {
    /// The provider's name: `default` for `[oidc]`, `NAME` for `[providers.NAME]`.
    pub(crate) name: String,
    /// The issuer as configured (what its ID and logout tokens' `iss` must be).
    pub(crate) issuer_id: String,
    pub(crate) provider: Arc<ProviderStore>,
    pub(super) http: reqwest::Client,
    pub(super) tokens: TokenClient,
    pub(super) sealer: Sealer,
    pub(super) client_id: String,
    pub(super) redirect_uri: String,
    /// Host (lowercase, no port) → this provider's `redirect_uri` for a login on that host,
    /// for every host some provider lists in `hosts`.
    host_redirect_uris: std::collections::HashMap<String, String>,
    pub(super) scope: String,
    /// The resources every login asks for (RFC 8707 §2.1; [`Config::resources`]).
    pub(super) resources: Vec<String>,
    /// Their tags, recorded in each new session.
    pub(super) resource_tags: Vec<u64>,
    pub(super) extra_auth_params: Vec<(String, String)>,
    pub(super) session_cookie: String,
    pub(super) secure_cookies: bool,
    pub(super) last_jwks_refetch: tokio::sync::Mutex<Option<Instant>>,
    pub(super) flights: Flights,
    /// How long a rotation is remembered ([`Flights::record_rotation`]): the
    /// session idle window, past which a cookie that missed it has expired anyway.
    pub(super) rotation_ttl: Duration,
    /// Route tokens (RFC 8707) by session and audience ([`super::audience`]).
    pub(super) audience_tokens: AudienceTokens,
    /// The configured audiences' ids (a logout removes their tokens from the store).
    pub(super) audience_ids: Vec<[u8; 16]>,
    pub(super) store: Option<Arc<crate::store::Store>>,
    pub(super) metrics: crate::ops::metrics::Metrics,
    pub(super) http_timeout: Duration,
    pub(super) max_response_bytes: usize,
    pub(super) post_logout_redirect_uri: String,
    pub(super) allow_get_logout: bool,
    /// ID token claims a session keeps ([`Config::kept_claim_names`]).
    pub(super) kept_claims: Vec<String>,
    /// `[oidc] dpop`: sessions get a DPoP key, token requests carry proofs.
    pub(super) dpop: bool,
    /// `[oidc] profile = "fapi2"`.
    pub(super) fapi2: bool,
    /// Pushed authorization requests in flight ([`PAR_IN_FLIGHT`]).
    pub(super) par_slots: tokio::sync::Semaphore,
}

/// At most this many `/login`s push to the provider at once: `/login` needs no session and a
/// cross-site page or a bot can call it in a loop, and each push is a client-authenticated
/// call that counts against the client's quota at the provider. Beyond it, `503
/// provider_unavailable` with `Retry-After` (and `tollgate_limits_total{limit="par_in_flight"}`).
pub(crate) const PAR_IN_FLIGHT: usize = 64;

impl Oidc {
    /// The client of `[oidc]`, the default provider (tests and the fuzz harness; the server
    /// builds one per provider with [`Oidc::at`]).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn new(
        config: &Config,
        http: reqwest::Client,
        provider: Arc<ProviderStore>,
        store: Option<Arc<crate::store::Store>>,
        metrics: crate::ops::metrics::Metrics,
    ) -> Result<Oidc, ClientAuthError> {
        let sealer = Sealer::new(&config.session.keys);
        Oidc::at(config, &config.oidc, sealer, http, provider, store, metrics)
    }

    /// The client of provider `p` (one of `config`'s), sealing with `sealer` (one key ring
    /// for every provider: a reload replaces it for all).
    pub(crate) fn at(
        config: &Config,
        p: &crate::config::OidcConfig,
        sealer: Sealer,
        http: reqwest::Client,
        provider: Arc<ProviderStore>,
        store: Option<Arc<crate::store::Store>>,
        metrics: crate::ops::metrics::Metrics,
    ) -> Result<Oidc, ClientAuthError> {
        let auth = ClientAuth::new(p)?;
        Ok(Oidc {
            name: p.name.clone(),
            issuer_id: p.issuer_id.clone(),
            provider,
            tokens: TokenClient::new(http.clone(), auth, p.max_response_bytes, metrics.clone())
                // FAPI 2.0: client assertions name the issuer as their audience.
                .with_assertion_audience(p.fapi2.then(|| p.issuer_id.clone()))
                .with_provider(&p.name),
            http,
            sealer,
            client_id: p.client_id.clone(),
            redirect_uri: config.redirect_uri_at(p, &config.server.public_origin),
            host_redirect_uris: config
                .host_origins()
                .into_iter()
                .map(|(host, origin)| {
                    let uri = config.redirect_uri_at(p, &origin);
                    (host, uri)
                })
                .collect(),
            scope: config.login_scope_at(p),
            resources: config.resources(),
            resource_tags: config
                .resources()
                .iter()
                .map(|r| crate::config::resource_tag(r))
                .collect(),
            extra_auth_params: p
                .extra_auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            session_cookie: config.session.cookie_name.clone(),
            secure_cookies: config.server.secure_cookies,
            last_jwks_refetch: tokio::sync::Mutex::new(None),
            flights: Flights::default(),
            audience_tokens: AudienceTokens::default(),
            audience_ids: {
                let mut ids: Vec<[u8; 16]> = config
                    .routes
                    .iter()
                    .filter_map(|r| r.audience.as_ref().map(|a| a.id))
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            },
            rotation_ttl: config.session.idle_timeout.max(RESULT_TTL),
            store,
            metrics,
            http_timeout: p.http_timeout,
            max_response_bytes: p.max_response_bytes,
            post_logout_redirect_uri: p.post_logout_redirect_uri.clone(),
            allow_get_logout: p.allow_get_logout,
            kept_claims: config.kept_claim_names(),
            dpop: p.dpop,
            fapi2: p.fapi2,
            par_slots: tokio::sync::Semaphore::new(PAR_IN_FLIGHT),
        })
    }

    /// The `redirect_uri` of a login on the request's host when that is one of the providers'
    /// `hosts` (the login cookie is set there, so the answer must come back there); `None` on
    /// `public_url`'s host or any other.
    pub(super) fn host_redirect_uri(&self, facts: &Facts<'_>) -> Option<&str> {
        if self.host_redirect_uris.is_empty() {
            return None;
        }
        let host = facts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(crate::request::host_without_port)?;
        self.host_redirect_uris.get(&host).map(String::as_str)
    }

    /// The `claims` parameter among `extra_auth_params`, if the operator set one.
    pub(super) fn operator_claims(&self) -> Option<&str> {
        self.extra_auth_params
            .iter()
            .find(|(k, _)| k == "claims")
            .map(|(_, v)| v.as_str())
    }

    /// The key ring every sealed value uses (cookies, login state, shared results).
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Authenticates to the provider with `auth` from the next call on.
    pub(crate) fn replace_client_auth(&self, auth: ClientAuth) {
        self.tokens.replace_auth(auth);
    }

    /// The provider snapshot, if metadata has loaded.
    pub(crate) fn provider(&self) -> Option<Arc<Provider>> {
        self.provider.get()
    }

    /// The loaded provider, or the fault a person in the login flow gets without one: a
    /// discovery document naming another issuer is said so (with both issuers), since
    /// retrying will not help; anything else is "unavailable".
    pub(crate) fn loaded_provider(&self) -> Result<Arc<Provider>, Fault> {
        if let Some(p) = self.provider() {
            return Ok(p);
        }
        Err(match self.provider.failure().as_deref() {
            Some(DiscoveryError::IssuerMismatch { expected, found }) => {
                Fault::ProviderIssuerMismatch {
                    configured: expected.clone(),
                    discovered: found.clone(),
                }
            }
            _ => Fault::ProviderUnavailable,
        })
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
        match Jwks::fetch(
            &self.http,
            &provider.metadata.jwks_uri,
            self.max_response_bytes,
        )
        .await
        {
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
