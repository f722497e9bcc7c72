//! Provider metadata: OpenID discovery, endpoint overrides, and keeping both fresh.
//!
//! Login cannot start before tollgate knows the provider's endpoints and keys, so metadata is
//! fetched by a background service at startup, retried with exponential backoff while the
//! provider is unreachable, and refreshed periodically after that. `/readyz` reports not-ready
//! until the first load succeeds. The hot path only reads the current snapshot (an `Arc` behind
//! a read lock): no request ever waits on a discovery fetch.
//!
//! The document's `issuer` must equal the configured issuer exactly (OpenID Connect Discovery
//! §4.3); endpoints set in the config replace discovered ones, and with the authorization,
//! token and JWKS endpoints all configured no discovery document is needed at all.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use url::Url;

use super::jwks::{Jwks, JwksError};
use crate::config::OidcConfig;
use crate::ops::health::Readiness;

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("fetching {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is not a valid discovery document: {problem}")]
    Document { url: String, problem: String },
    #[error("discovery document issuer {found:?} is not the configured issuer {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// The discovery document fields tollgate uses.
#[derive(Debug, Clone, Deserialize)]
struct Document {
    issuer: String,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    jwks_uri: Option<String>,
    end_session_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
}

/// The provider as tollgate uses it: discovered values with the config's overrides applied.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
    pub end_session_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    pub userinfo_endpoint: Option<Url>,
    /// ID token algorithms the provider signs with; anything else is refused.
    pub id_token_algs: Vec<jsonwebtoken::Algorithm>,
    /// RFC 9207: the provider promises `iss` in every authorization response.
    pub iss_parameter_supported: bool,
}

/// `{issuer}/.well-known/openid-configuration`, the issuer's trailing `/` removed first
/// (OpenID Connect Discovery §4).
pub fn discovery_url(issuer_id: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer_id.trim_end_matches('/')
    )
}

fn parse_algs(names: &[String]) -> Vec<jsonwebtoken::Algorithm> {
    names
        .iter()
        // `none` and unknown names never parse: they can never be accepted.
        .filter_map(|n| n.parse::<jsonwebtoken::Algorithm>().ok())
        // ID tokens are verified against the provider's public keys only.
        .filter(|a| {
            !matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        })
        .collect()
}

/// Fetches (or assembles from overrides) the provider metadata.
pub async fn fetch_metadata(
    http: &reqwest::Client,
    cfg: &OidcConfig,
) -> Result<Metadata, DiscoveryError> {
    let expected_issuer = cfg.issuer_id.clone();
    let doc = if cfg.endpoints.skip_discovery() {
        Document {
            issuer: expected_issuer.clone(),
            authorization_endpoint: None,
            token_endpoint: None,
            jwks_uri: None,
            end_session_endpoint: None,
            revocation_endpoint: None,
            userinfo_endpoint: None,
            id_token_signing_alg_values_supported: vec!["RS256".into()],
            authorization_response_iss_parameter_supported: false,
        }
    } else {
        let url = discovery_url(&cfg.issuer_id);
        let resp = http
            .get(&url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|source| DiscoveryError::Http {
                url: url.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(DiscoveryError::Status {
                url,
                status: resp.status().as_u16(),
            });
        }
        let bytes = resp.bytes().await.map_err(|source| DiscoveryError::Http {
            url: url.clone(),
            source,
        })?;
        let doc: Document =
            serde_json::from_slice(&bytes).map_err(|e| DiscoveryError::Document {
                url: url.clone(),
                problem: e.to_string(),
            })?;
        if doc.issuer != expected_issuer {
            return Err(DiscoveryError::IssuerMismatch {
                expected: expected_issuer,
                found: doc.issuer,
            });
        }
        doc
    };
    let pick = |name: &str, configured: &Option<Url>, discovered: Option<String>| {
        if let Some(u) = configured {
            return Ok(Some(u.clone()));
        }
        discovered
            .map(|d| {
                Url::parse(&d).map_err(|e| DiscoveryError::Document {
                    url: discovery_url(&cfg.issuer_id),
                    problem: format!("{name} {d:?}: {e}"),
                })
            })
            .transpose()
    };
    let required = |name: &str, v: Option<Url>| {
        v.ok_or_else(|| DiscoveryError::Document {
            url: discovery_url(&cfg.issuer_id),
            problem: format!("no {name} (and none set in [oidc])"),
        })
    };
    let e = &cfg.endpoints;
    let mut id_token_algs = parse_algs(&doc.id_token_signing_alg_values_supported);
    if id_token_algs.is_empty() {
        // Discovery makes the field required; RS256 is the algorithm every provider supports.
        id_token_algs.push(jsonwebtoken::Algorithm::RS256);
    }
    Ok(Metadata {
        authorization_endpoint: required(
            "authorization_endpoint",
            pick(
                "authorization_endpoint",
                &e.authorization_endpoint,
                doc.authorization_endpoint,
            )?,
        )?,
        token_endpoint: required(
            "token_endpoint",
            pick("token_endpoint", &e.token_endpoint, doc.token_endpoint)?,
        )?,
        jwks_uri: required("jwks_uri", pick("jwks_uri", &e.jwks_uri, doc.jwks_uri)?)?,
        end_session_endpoint: pick(
            "end_session_endpoint",
            &e.end_session_endpoint,
            doc.end_session_endpoint,
        )?,
        revocation_endpoint: pick(
            "revocation_endpoint",
            &e.revocation_endpoint,
            doc.revocation_endpoint,
        )?,
        userinfo_endpoint: pick("userinfo_endpoint", &None, doc.userinfo_endpoint)?,
        id_token_algs,
        iss_parameter_supported: doc.authorization_response_iss_parameter_supported,
        issuer: doc.issuer,
    })
}

/// The loaded provider: metadata and signing keys, replaced as a whole on refresh.
#[derive(Debug)]
pub struct Provider {
    pub metadata: Metadata,
    pub jwks: Jwks,
}

/// Shared, swappable view of the provider for the hot path and the background refresher.
#[derive(Debug, Default)]
pub struct ProviderStore {
    current: RwLock<Option<Arc<Provider>>>,
}

impl ProviderStore {
    pub fn get(&self) -> Option<Arc<Provider>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    pub fn set(&self, provider: Provider) {
        if let Ok(mut g) = self.current.write() {
            *g = Some(Arc::new(provider));
        }
    }

    /// Loads metadata and keys once.
    pub async fn load(
        &self,
        http: &reqwest::Client,
        cfg: &OidcConfig,
    ) -> Result<(), DiscoveryError> {
        let metadata = fetch_metadata(http, cfg).await?;
        let jwks = Jwks::fetch(http, &metadata.jwks_uri).await?;
        self.set(Provider { metadata, jwks });
        Ok(())
    }
}

/// Background service: first load with backoff, then periodic refresh.
pub struct MetadataRefresher {
    pub store: Arc<ProviderStore>,
    pub http: reqwest::Client,
    pub config: OidcConfig,
    pub readiness: Arc<Readiness>,
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[async_trait]
impl BackgroundService for MetadataRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = BACKOFF_START;
        loop {
            let wait = match self.store.load(&self.http, &self.config).await {
                Ok(()) => {
                    if !self.readiness.provider_loaded() {
                        tracing::info!(issuer = %self.config.issuer_id, "provider metadata and keys loaded");
                    }
                    self.readiness.set_provider_loaded();
                    backoff = BACKOFF_START;
                    self.config.metadata_refresh
                }
                Err(e) => {
                    // Keep serving with the previous snapshot, if any.
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "provider metadata not loaded");
                    let w = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    w
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_and_discovery_urls() {
        assert_eq!(
            discovery_url("https://idp.example.com/realms/x"),
            "https://idp.example.com/realms/x/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example.com"),
            "https://idp.example.com/.well-known/openid-configuration"
        );
        // Auth0 writes its issuer with a trailing slash; it is kept for comparison only.
        assert_eq!(
            discovery_url("https://tenant.auth0.com/"),
            "https://tenant.auth0.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn algorithms_exclude_none_and_symmetric() {
        let algs = parse_algs(&[
            "none".into(),
            "HS256".into(),
            "RS256".into(),
            "ES256".into(),
            "XX1".into(),
        ]);
        assert_eq!(
            algs,
            vec![
                jsonwebtoken::Algorithm::RS256,
                jsonwebtoken::Algorithm::ES256
            ]
        );
    }
}
