//! OpenID Connect: logging the user in with the authorization code flow (PKCE S256).
//!
//! The flow, module by module:
//! [`discovery`] (provider metadata, kept fresh in the background) and [`jwks`] (signing keys)
//! → `/login` builds the authorization request and seals the per-login state ([`login`],
//! [`return_to`]) → `/callback` checks it, exchanges the code server-side ([`token_client`],
//! authenticating per [`client_auth`]), validates the ID token ([`id_token`]) and stores the
//! session ([`callback`]); [`refresh`] and [`logout`] run the rest of its life. Failures are
//! [`crate::reply::Fault`]s.

pub(crate) mod audience;
pub(crate) mod backchannel;
pub(crate) mod callback;
pub(crate) mod client_auth;
pub(crate) mod discovery;
pub mod dpop;
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
use crate::reply::Fault;
use crate::session::seal::Sealer;
use client_auth::{ClientAuth, ClientAuthError};
use discovery::{DiscoveryError, Provider, ProviderStore};
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

/// A provider response body larger than `[oidc] max_response_bytes`, or one that broke off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the response is larger than oidc.max_response_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("the response broke off: {0}")]
    Http(#[source] reqwest::Error),
}

impl BodyError {
    pub(crate) fn is_too_large(&self) -> bool {
        matches!(self, BodyError::TooLarge(_))
    }
}

/// Reads a provider's response body, at most `max` bytes: a provider (or whatever answers
/// at its address) cannot make tollgate allocate without bound. The client's `http_timeout`
/// bounds a slow body.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<bytes::Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let expected = resp.content_length().map_or(0, |n| n as usize);
    let mut body = bytes::BytesMut::with_capacity(expected.min(max));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Http)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
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
    /// The resources every login asks for (RFC 8707 §2.1; [`Config::resources`]).
    resources: Vec<String>,
    /// Their tags, recorded in each new session.
    resource_tags: Vec<u64>,
    extra_auth_params: Vec<(String, String)>,
    session_cookie: String,
    secure_cookies: bool,
    last_jwks_refetch: tokio::sync::Mutex<Option<Instant>>,
    flights: refresh::Flights,
    /// How long a rotation is remembered ([`refresh::Flights::record_rotation`]): the
    /// session idle window, past which a cookie that missed it has expired anyway.
    rotation_ttl: Duration,
    /// Route tokens (RFC 8707) by session and audience ([`audience`]).
    audience_tokens: audience::AudienceTokens,
    /// The configured audiences' ids (a logout removes their tokens from the store).
    audience_ids: Vec<[u8; 16]>,
    store: Option<Arc<crate::store::Store>>,
    metrics: crate::ops::metrics::Metrics,
    http_timeout: Duration,
    max_response_bytes: usize,
    post_logout_redirect_uri: String,
    allow_get_logout: bool,
    /// ID token claims a session keeps ([`Config::kept_claim_names`]).
    kept_claims: Vec<String>,
    /// `[oidc] dpop`: sessions get a DPoP key, token requests carry proofs.
    dpop: bool,
    /// `[oidc] profile = "fapi2"`.
    fapi2: bool,
    /// Pushed authorization requests in flight ([`PAR_IN_FLIGHT`]).
    par_slots: tokio::sync::Semaphore,
}

/// At most this many `/login`s push to the provider at once: `/login` needs no session and a
/// cross-site page or a bot can call it in a loop, and each push is a client-authenticated
/// call that counts against the client's quota at the provider. Beyond it, `503
/// provider_unavailable` with `Retry-After` (and `tollgate_limits_total{limit="par_in_flight"}`).
pub(crate) const PAR_IN_FLIGHT: usize = 64;

impl Oidc {
    pub(crate) fn new(
        config: &Config,
        http: reqwest::Client,
        provider: Arc<ProviderStore>,
        store: Option<Arc<crate::store::Store>>,
        metrics: crate::ops::metrics::Metrics,
    ) -> Result<Oidc, ClientAuthError> {
        let auth = ClientAuth::new(&config.oidc)?;
        Ok(Oidc {
            provider,
            tokens: TokenClient::new(
                http.clone(),
                auth,
                config.oidc.max_response_bytes,
                metrics.clone(),
            )
            // FAPI 2.0: client assertions name the issuer as their audience.
            .with_assertion_audience(config.oidc.fapi2.then(|| config.oidc.issuer_id.clone())),
            http,
            sealer: Sealer::new(&config.session.keys),
            client_id: config.oidc.client_id.clone(),
            redirect_uri: config.redirect_uri(),
            scope: config.login_scope(),
            resources: config.resources(),
            resource_tags: config
                .resources()
                .iter()
                .map(|r| crate::config::resource_tag(r))
                .collect(),
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
            audience_tokens: audience::AudienceTokens::default(),
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
            rotation_ttl: config.session.idle_timeout.max(refresh::RESULT_TTL),
            store,
            metrics,
            http_timeout: config.oidc.http_timeout,
            max_response_bytes: config.oidc.max_response_bytes,
            post_logout_redirect_uri: config.oidc.post_logout_redirect_uri.clone(),
            allow_get_logout: config.oidc.allow_get_logout,
            kept_claims: config.kept_claim_names(),
            dpop: config.oidc.dpop,
            fapi2: config.oidc.fapi2,
            par_slots: tokio::sync::Semaphore::new(PAR_IN_FLIGHT),
        })
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

#[cfg(test)]
mod body_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one response per connection: `head` then `body`, on a loopback port.
    async fn serve(head: String, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        format!("http://{addr}/")
    }

    async fn get(url: &str, max: usize) -> Result<bytes::Bytes, BodyError> {
        let resp = reqwest::get(url).await.unwrap();
        read_body(resp, max).await
    }

    #[tokio::test]
    async fn provider_bodies_are_read_up_to_the_cap() {
        let big = vec![b'x'; 100_000];
        let with_length = serve(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()),
            big.clone(),
        )
        .await;
        assert!(get(&with_length, 10_000).await.unwrap_err().is_too_large());
        assert_eq!(get(&with_length, 100_000).await.unwrap().len(), 100_000);

        // Chunked, so the size is known only while reading.
        let mut chunked = Vec::new();
        for part in big.chunks(8192) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let without_length = serve(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
            chunked,
        )
        .await;
        assert!(get(&without_length, 10_000)
            .await
            .unwrap_err()
            .is_too_large());
        assert_eq!(get(&without_length, 200_000).await.unwrap().len(), 100_000);
    }
}
