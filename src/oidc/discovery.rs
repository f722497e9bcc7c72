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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use url::Url;

use super::jwks::{Jwks, JwksError};
use crate::config::{OidcConfig, ParMode};
use crate::ops::health::Readiness;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error("fetching {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading {url}: {source}")]
    Body {
        url: String,
        #[source]
        source: super::http::BodyError,
    },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is not a valid discovery document: {problem}")]
    Document { url: String, problem: String },
    #[error(
        "the discovery document's issuer {found:?} does not match the configured issuer \
         {expected:?} (they must be identical, trailing slash included)"
    )]
    IssuerMismatch { expected: String, found: String },
    #[error(transparent)]
    Jwks(#[from] JwksError),
    /// The provider and the configuration cannot work together (`key` names the setting).
    #[error("{key}: {problem}")]
    Conflict { key: &'static str, problem: String },
}

impl DiscoveryError {
    /// Whether a response was over `[oidc] max_response_bytes`.
    pub(crate) fn is_too_large(&self) -> bool {
        match self {
            DiscoveryError::Body { source, .. } => source.is_too_large(),
            DiscoveryError::Jwks(j) => j.is_too_large(),
            _ => false,
        }
    }
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
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    pushed_authorization_request_endpoint: Option<String>,
    #[serde(default)]
    require_pushed_authorization_requests: bool,
    dpop_signing_alg_values_supported: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    acr_values_supported: Option<Vec<String>>,
    #[serde(default)]
    claims_parameter_supported: bool,
}

/// The provider as tollgate uses it: discovered values with the config's overrides applied.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    pub issuer: String,
    pub authorization_endpoint: Url,
    pub token_endpoint: Url,
    pub jwks_uri: Url,
    pub end_session_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    /// ID token algorithms the provider signs with; anything else is refused.
    pub id_token_algs: Vec<jsonwebtoken::Algorithm>,
    /// RFC 9207: the provider promises `iss` in every authorization response.
    pub iss_parameter_supported: bool,
    /// Where `/login` pushes the authorization request (RFC 9126), when it does: set by
    /// `[oidc] par` and what the provider offers.
    pub par_endpoint: Option<Url>,
    /// Where `revocation_endpoint` came from, or why there is none (logged at load).
    pub revocation_source: RevocationSource,
    /// `[oidc] scopes` the provider does not list in `scopes_supported` (logged at load).
    pub unsupported_scopes: Vec<String>,
    /// The discovery document's `acr_values_supported`, if it has one (step-up rules are
    /// checked against it at load).
    pub acr_values_supported: Option<Vec<String>>,
    /// The provider takes the `claims` request parameter: a step-up login asks for `acr` as
    /// an essential claim there (OpenID Connect Core §5.5.1.1), else with `acr_values`.
    pub claims_parameter_supported: bool,
}

/// The scopes of `configured` that `supported` (a discovery document's `scopes_supported`)
/// does not list, in config order; none when the document has no such list (it is optional).
fn unsupported_scopes(configured: &[String], supported: Option<&[String]>) -> Vec<String> {
    let Some(supported) = supported else {
        return Vec::new();
    };
    configured
        .iter()
        .filter(|s| !supported.contains(s))
        .cloned()
        .collect()
}

/// Where the revocation endpoint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RevocationSource {
    /// `[oidc] revocation_endpoint`.
    Config,
    /// The OpenID discovery document.
    Discovery,
    /// The RFC 8414 authorization server metadata at this URL (discovery lacked it).
    AuthorizationServerMetadata(String),
    /// None anywhere: why (logouts cannot revoke refresh tokens).
    Missing(String),
    /// The RFC 8414 metadata could not be fetched (network, 5xx): why. A refresh keeps the
    /// endpoint an earlier load found there rather than turn revocation off until the next.
    Unavailable(String),
}

/// The RFC 8414 metadata fields tollgate reads when discovery lacks them.
#[derive(Debug, Deserialize)]
struct AuthorizationServerDocument {
    issuer: String,
    revocation_endpoint: Option<String>,
}

/// The RFC 8414 authorization server metadata URLs for `issuer_id`, in the order tried: the
/// well-known segment between host and path (RFC 8414 §3.1), then appended to the issuer as
/// OpenID discovery does (what many providers serve as well). One URL for an issuer without
/// a path. The issuer's trailing `/` is removed first.
pub(crate) fn authorization_server_metadata_urls(issuer_id: &str) -> Vec<String> {
    const WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
    let issuer = issuer_id.trim_end_matches('/');
    let authority_at = issuer.find("://").map_or(0, |i| i + 3);
    let path_at = issuer[authority_at..]
        .find('/')
        .map_or(issuer.len(), |i| authority_at + i);
    let (base, path) = issuer.split_at(path_at);
    let inserted = format!("{base}{WELL_KNOWN}{path}");
    let appended = format!("{issuer}{WELL_KNOWN}");
    if inserted == appended {
        vec![inserted]
    } else {
        vec![inserted, appended]
    }
}

/// `{issuer}/.well-known/openid-configuration`, the issuer's trailing `/` removed first
/// (OpenID Connect Discovery §4).
pub(crate) fn discovery_url(issuer_id: &str) -> String {
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
pub(crate) async fn fetch_metadata(
    http: &reqwest::Client,
    cfg: &OidcConfig,
) -> Result<Metadata, DiscoveryError> {
    if cfg.endpoints.skip_discovery() {
        let doc = Document {
            issuer: cfg.issuer_id.clone(),
            authorization_endpoint: None,
            token_endpoint: None,
            jwks_uri: None,
            end_session_endpoint: None,
            revocation_endpoint: None,
            id_token_signing_alg_values_supported: vec!["RS256".into()],
            authorization_response_iss_parameter_supported: false,
            pushed_authorization_request_endpoint: None,
            require_pushed_authorization_requests: false,
            dpop_signing_alg_values_supported: None,
            scopes_supported: None,
            acr_values_supported: None,
            claims_parameter_supported: false,
        };
        return metadata(doc, cfg);
    }
    let bytes = fetch_json(http, &discovery_url(&cfg.issuer_id), cfg.max_response_bytes).await?;
    let mut doc = document(&bytes, cfg)?;
    if doc.revocation_endpoint.is_some() || cfg.endpoints.revocation_endpoint.is_some() {
        return metadata(doc, cfg);
    }
    // Some providers list the revocation endpoint only in their OAuth metadata (RFC 8414).
    let source = match revocation_from_authorization_server(http, cfg).await {
        Ok((url, endpoint)) => {
            doc.revocation_endpoint = Some(endpoint);
            RevocationSource::AuthorizationServerMetadata(url)
        }
        Err((why, true)) => RevocationSource::Unavailable(why),
        Err((why, false)) => RevocationSource::Missing(why),
    };
    let mut m = metadata(doc, cfg)?;
    m.revocation_source = source;
    Ok(m)
}

/// GETs a provider JSON document: a success status and at most `max` bytes, within the
/// client's timeouts.
async fn fetch_json(
    http: &reqwest::Client,
    url: &str,
    max: usize,
) -> Result<bytes::Bytes, DiscoveryError> {
    let resp = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|source| DiscoveryError::Http {
            url: url.to_string(),
            source,
        })?;
    if !resp.status().is_success() {
        return Err(DiscoveryError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        });
    }
    super::http::read_body(resp, max)
        .await
        .map_err(|source| DiscoveryError::Body {
            url: url.to_string(),
            source,
        })
}

/// The revocation endpoint from the provider's RFC 8414 metadata (each of
/// [`authorization_server_metadata_urls`] in turn, fetched as discovery is): the URL it came
/// from and the endpoint, or why there is none and whether that may pass (a network error or
/// a 5xx answer: the document could not be read, rather than said there is none).
async fn revocation_from_authorization_server(
    http: &reqwest::Client,
    cfg: &OidcConfig,
) -> Result<(String, String), (String, bool)> {
    let mut why = Vec::new();
    let mut transient = false;
    for url in authorization_server_metadata_urls(&cfg.issuer_id) {
        let found = match fetch_json(http, &url, cfg.max_response_bytes).await {
            Ok(bytes) => revocation_in_authorization_server_document(&bytes, &url, cfg),
            Err(e) => {
                transient |= matches!(e, DiscoveryError::Http { .. } | DiscoveryError::Body { .. })
                    || matches!(e, DiscoveryError::Status { status, .. } if status >= 500);
                Err(e)
            }
        };
        match found {
            Ok(Some(endpoint)) => return Ok((url, endpoint)),
            Ok(None) => why.push(format!("{url} lists no revocation_endpoint")),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err((
        format!(
            "the discovery document lists no revocation_endpoint; {}",
            why.join("; ")
        ),
        transient,
    ))
}

/// The usable `revocation_endpoint` of an RFC 8414 document fetched from `url`: its `issuer`
/// must be the configured one (RFC 8414 §3.3), the endpoint https (or http under an http
/// issuer).
fn revocation_in_authorization_server_document(
    bytes: &[u8],
    url: &str,
    cfg: &OidcConfig,
) -> Result<Option<String>, DiscoveryError> {
    let doc: AuthorizationServerDocument =
        serde_json::from_slice(bytes).map_err(|e| DiscoveryError::Document {
            url: url.to_string(),
            problem: e.to_string(),
        })?;
    if doc.issuer != cfg.issuer_id {
        return Err(DiscoveryError::IssuerMismatch {
            expected: cfg.issuer_id.clone(),
            found: doc.issuer,
        });
    }
    let Some(endpoint) = doc.revocation_endpoint else {
        return Ok(None);
    };
    match Url::parse(&endpoint) {
        Ok(u) if endpoint_scheme_allowed(u.scheme(), &cfg.issuer_id) => Ok(Some(endpoint)),
        _ => Err(DiscoveryError::Document {
            url: url.to_string(),
            problem: format!(
                "revocation_endpoint {endpoint:?} is not an https URL of the issuer's"
            ),
        }),
    }
}

/// The provider metadata from a discovery document's bytes (as fetched from
/// [`discovery_url`]) and the config's overrides, without the RFC 8414 fallback (for the fuzz
/// harness and tests).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn metadata_from_document(
    bytes: &[u8],
    cfg: &OidcConfig,
) -> Result<Metadata, DiscoveryError> {
    metadata(document(bytes, cfg)?, cfg)
}

/// A discovery document's bytes, parsed; its issuer must be the configured one.
fn document(bytes: &[u8], cfg: &OidcConfig) -> Result<Document, DiscoveryError> {
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| DiscoveryError::Document {
        url: discovery_url(&cfg.issuer_id),
        problem: e.to_string(),
    })?;
    if doc.issuer != cfg.issuer_id {
        return Err(DiscoveryError::IssuerMismatch {
            expected: cfg.issuer_id.clone(),
            found: doc.issuer,
        });
    }
    Ok(doc)
}

/// `doc` with the config's endpoint overrides applied, checked.
fn metadata(doc: Document, cfg: &OidcConfig) -> Result<Metadata, DiscoveryError> {
    let pick = |name: &str, configured: &Option<Url>, discovered: Option<String>| {
        if let Some(u) = configured {
            return Ok(Some(u.clone()));
        }
        discovered
            .map(|d| {
                let problem = |p: String| DiscoveryError::Document {
                    url: discovery_url(&cfg.issuer_id),
                    problem: format!("{name} {d:?}: {p}"),
                };
                let u = Url::parse(&d).map_err(|e| problem(e.to_string()))?;
                // Browsers are redirected to some of these and tokens are sent to others:
                // a `javascript:` or `data:` URL, or plain http under an https issuer, is
                // refused rather than followed.
                if !endpoint_scheme_allowed(u.scheme(), &cfg.issuer_id) {
                    return Err(problem(format!(
                        "scheme {:?} (the issuer's endpoints must be https{})",
                        u.scheme(),
                        if cfg.issuer_id.starts_with("http://") {
                            " or http"
                        } else {
                            ""
                        }
                    )));
                }
                Ok(u)
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
    if cfg.fapi2 {
        // FAPI 2.0 §5.4: PS256, ES256 or EdDSA only.
        use jsonwebtoken::Algorithm::{EdDSA, ES256, PS256};
        id_token_algs.retain(|a| matches!(a, PS256 | ES256 | EdDSA));
        if id_token_algs.is_empty() {
            return Err(DiscoveryError::Conflict {
                key: "oidc.profile",
                problem: "is \"fapi2\" but the provider signs ID tokens with none of PS256, \
                          ES256 or EdDSA (id_token_signing_alg_values_supported)"
                    .into(),
            });
        }
    }
    if cfg.dpop {
        match &doc.dpop_signing_alg_values_supported {
            Some(algs) if !algs.iter().any(|a| a == "ES256") => {
                return Err(DiscoveryError::Conflict {
                    key: "oidc.dpop",
                    problem: format!(
                        "is on, but the provider takes DPoP proofs only in {algs:?} (tollgate signs ES256)"
                    ),
                })
            }
            None if !cfg.fapi2 => {
                tracing::warn!(
                    issuer = %cfg.issuer_id,
                    "[oidc] dpop is on but the provider does not advertise DPoP \
                     (dpop_signing_alg_values_supported): logins fail unless it supports it anyway"
                );
            }
            None => {
                return Err(DiscoveryError::Conflict {
                    key: "oidc.dpop",
                    problem: "the provider does not advertise DPoP \
                              (dpop_signing_alg_values_supported), which oidc.profile = \"fapi2\" needs"
                        .into(),
                })
            }
            _ => {}
        }
    }
    let par_endpoint = par_endpoint(
        cfg.par,
        pick(
            "pushed_authorization_request_endpoint",
            &e.pushed_authorization_request_endpoint,
            doc.pushed_authorization_request_endpoint,
        )?,
        doc.require_pushed_authorization_requests,
    )?;
    let revocation_source = match (&e.revocation_endpoint, &doc.revocation_endpoint) {
        (Some(_), _) => RevocationSource::Config,
        (None, Some(_)) => RevocationSource::Discovery,
        (None, None) if e.skip_discovery() => RevocationSource::Missing(
            "no [oidc] revocation_endpoint (and no discovery: the endpoints are configured)".into(),
        ),
        (None, None) => {
            RevocationSource::Missing("the discovery document lists no revocation_endpoint".into())
        }
    };
    Ok(Metadata {
        unsupported_scopes: unsupported_scopes(&cfg.scopes, doc.scopes_supported.as_deref()),
        acr_values_supported: doc.acr_values_supported.clone(),
        claims_parameter_supported: doc.claims_parameter_supported,
        revocation_source,
        par_endpoint,
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
        id_token_algs,
        iss_parameter_supported: doc.authorization_response_iss_parameter_supported,
        issuer: doc.issuer,
    })
}

/// The PAR endpoint `/login` uses under `mode`, given the one offered (discovered or
/// configured) and whether the provider requires PAR.
fn par_endpoint(
    mode: ParMode,
    offered: Option<Url>,
    required: bool,
) -> Result<Option<Url>, DiscoveryError> {
    match (mode, offered) {
        (ParMode::Never, _) if required => Err(DiscoveryError::Conflict {
            key: "oidc.par",
            problem: "is \"never\" but the provider requires pushed authorization requests \
                      (require_pushed_authorization_requests); set it to \"auto\""
                .into(),
        }),
        (ParMode::Never, _) => Ok(None),
        (ParMode::Always, None) => Err(DiscoveryError::Conflict {
            key: "oidc.par",
            problem: "is \"always\" but the provider advertises no \
                      pushed_authorization_request_endpoint (set one in [oidc], or par = \"auto\")"
                .into(),
        }),
        (ParMode::Auto, None) if required => Err(DiscoveryError::Conflict {
            key: "oidc.pushed_authorization_request_endpoint",
            problem: "the provider requires pushed authorization requests but advertises no \
                      endpoint for them; set one in [oidc]"
                .into(),
        }),
        (_, offered) => Ok(offered),
    }
}

/// The schemes a discovered endpoint may have: https, or http too when the issuer itself is
/// plain http (a provider on loopback in development and tests).
fn endpoint_scheme_allowed(scheme: &str, issuer: &str) -> bool {
    scheme == "https" || (scheme == "http" && issuer.starts_with("http://"))
}

/// The loaded provider: metadata and signing keys, replaced as a whole on refresh.
#[derive(Debug)]
pub(crate) struct Provider {
    pub metadata: Metadata,
    pub jwks: Arc<Jwks>,
    /// When the fetch of `jwks` started: of two racing fetches, the later one's keys win.
    jwks_fetched: Instant,
}

/// Shared, swappable view of the provider for the hot path and the background refresher.
#[derive(Debug, Default)]
pub(crate) struct ProviderStore {
    current: RwLock<Option<Arc<Provider>>>,
    /// Why the last load failed, until one succeeds: what `/login` tells people while no
    /// provider is loaded.
    failure: RwLock<Option<Arc<DiscoveryError>>>,
}

impl ProviderStore {
    pub(crate) fn get(&self) -> Option<Arc<Provider>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// Why the last load failed (none since the last success).
    pub(crate) fn failure(&self) -> Option<Arc<DiscoveryError>> {
        self.failure.read().ok().and_then(|g| g.clone())
    }

    /// Records why a load failed.
    pub(crate) fn set_failure(&self, e: DiscoveryError) {
        if let Ok(mut g) = self.failure.write() {
            *g = Some(Arc::new(e));
        }
    }

    /// Stores freshly loaded metadata and keys, unless the keys already stored were fetched
    /// later (an unknown-`kid` refetch that finished while this load was under way): then the
    /// new metadata is kept with those newer keys.
    pub(crate) fn set(&self, metadata: Metadata, jwks: Jwks, jwks_fetched: Instant) {
        if let Ok(mut g) = self.failure.write() {
            *g = None;
        }
        if let Ok(mut g) = self.current.write() {
            let provider = match g.as_ref() {
                Some(cur) if cur.jwks_fetched > jwks_fetched => Provider {
                    metadata,
                    jwks: cur.jwks.clone(),
                    jwks_fetched: cur.jwks_fetched,
                },
                _ => Provider {
                    metadata,
                    jwks: Arc::new(jwks),
                    jwks_fetched,
                },
            };
            *g = Some(Arc::new(provider));
        }
    }

    /// Replaces only the keys (after an unknown `kid`), keeping the metadata stored now, which
    /// the background refresher may have renewed meanwhile. Returns the provider as stored.
    pub(crate) fn replace_jwks(&self, jwks: Jwks, fetched: Instant) -> Option<Arc<Provider>> {
        let mut g = self.current.write().ok()?;
        let cur = g.as_ref()?;
        if cur.jwks_fetched < fetched {
            *g = Some(Arc::new(Provider {
                metadata: cur.metadata.clone(),
                jwks: Arc::new(jwks),
                jwks_fetched: fetched,
            }));
        }
        g.clone()
    }

    /// Loads metadata and keys once.
    pub(crate) async fn load(
        &self,
        http: &reqwest::Client,
        cfg: &OidcConfig,
    ) -> Result<(), DiscoveryError> {
        let mut metadata = fetch_metadata(http, cfg).await?;
        if let (RevocationSource::Unavailable(_), Some(cur)) =
            (&metadata.revocation_source, self.get())
        {
            // The endpoint an earlier load found stays while the document cannot be read.
            if let RevocationSource::AuthorizationServerMetadata(_) = cur.metadata.revocation_source
            {
                tracing::debug!(
                    "RFC 8414 metadata not readable now; keeping its revocation endpoint"
                );
                metadata.revocation_endpoint = cur.metadata.revocation_endpoint.clone();
                metadata.revocation_source = cur.metadata.revocation_source.clone();
            }
        }
        let fetched = Instant::now();
        let jwks = Jwks::fetch(http, &metadata.jwks_uri, cfg.max_response_bytes).await?;
        self.set(metadata, jwks, fetched);
        Ok(())
    }
}

/// Background service: first load with backoff, then periodic refresh.
pub(crate) struct MetadataRefresher {
    pub store: Arc<ProviderStore>,
    pub http: reqwest::Client,
    pub config: OidcConfig,
    pub readiness: Arc<Readiness>,
    pub metrics: crate::ops::metrics::Metrics,
    /// The `acr` values the routes' step-up rules ask for: each should be in the provider's
    /// `acr_values_supported`.
    pub step_up_acr: Vec<String>,
}

/// Logs what the operator should know about freshly loaded metadata: at the first load, and
/// again only when it changed since `before` (not at every periodic refresh, nor per request).
fn announce(provider: &str, before: Option<&Metadata>, now: &Metadata, step_up_acr: &[String]) {
    if before.is_none()
        || before.map(|b| &b.acr_values_supported) != Some(&now.acr_values_supported)
    {
        if let Some(supported) = &now.acr_values_supported {
            let missing: Vec<&str> = step_up_acr
                .iter()
                .filter(|a| !supported.contains(a))
                .map(String::as_str)
                .collect();
            if !missing.is_empty() {
                tracing::warn!(
                    provider,
                    issuer = %now.issuer,
                    acr = %missing.join(" "),
                    supported = %supported.join(" "),
                    "routes ask for acr values the provider does not list in acr_values_supported: \
                     their step-up logins may not reach them"
                );
            }
        }
    }
    // Said again only when the kind of source changes (not each time a reason's text does).
    let kind = std::mem::discriminant::<RevocationSource>;
    if before.map(|b| kind(&b.revocation_source)) != Some(kind(&now.revocation_source)) {
        match &now.revocation_source {
            RevocationSource::Missing(why) | RevocationSource::Unavailable(why) => tracing::warn!(
                issuer = %now.issuer,
                reason = %why,
                "the provider advertises no revocation endpoint: logout cannot revoke refresh \
                 tokens (set [oidc] revocation_endpoint if it has one)"
            ),
            RevocationSource::AuthorizationServerMetadata(url) => tracing::info!(
                issuer = %now.issuer,
                metadata = %url,
                "revocation endpoint taken from the provider's RFC 8414 metadata (its discovery \
                 document lists none)"
            ),
            RevocationSource::Config | RevocationSource::Discovery => {}
        }
    }
    if !now.unsupported_scopes.is_empty()
        && before.map(|b| &b.unsupported_scopes) != Some(&now.unsupported_scopes)
    {
        tracing::warn!(
            issuer = %now.issuer,
            scopes = %now.unsupported_scopes.join(" "),
            "[oidc] scopes has scopes the provider does not list in scopes_supported: it may \
             refuse logins with invalid_scope (offline_access is the usual one; remove them)"
        );
    }
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[async_trait]
impl BackgroundService for MetadataRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = BACKOFF_START;
        loop {
            let before = self.store.get();
            let wait = match self.store.load(&self.http, &self.config).await {
                Ok(()) => {
                    let name = self.config.name.as_str();
                    if !self.readiness.provider_loaded(name) {
                        tracing::info!(provider = name, issuer = %self.config.issuer_id, "provider metadata and keys loaded");
                    }
                    if let Some(now) = self.store.get() {
                        announce(
                            name,
                            before.as_ref().map(|p| &p.metadata),
                            &now.metadata,
                            &self.step_up_acr,
                        );
                    }
                    self.readiness.set_provider_loaded(name);
                    backoff = BACKOFF_START;
                    self.config.metadata_refresh
                }
                Err(e @ DiscoveryError::Conflict { .. })
                    if !self.readiness.provider_loaded(&self.config.name) =>
                {
                    // Not transient: this provider cannot serve this configuration. At
                    // startup that stops the process, as a configuration error does.
                    tracing::error!(error = %e, "the provider does not fit the configuration");
                    eprintln!("tollgate: cannot start: {e}");
                    std::process::exit(2);
                }
                Err(e) => {
                    if e.is_too_large() {
                        self.metrics.limit("provider_response_bytes");
                    }
                    // Keep serving with the previous snapshot, if any.
                    tracing::warn!(provider = %self.config.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "provider metadata not loaded");
                    self.readiness.set_provider_down(&self.config.name);
                    self.store.set_failure(e);
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

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    fn jwks(kid: &str) -> Jwks {
        let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"{kid}","n":"{N}","e":"AQAB"}}]}}"#);
        Jwks::parse(doc.as_bytes(), "test").unwrap()
    }

    fn metadata(token_endpoint: &str) -> Metadata {
        let u = |s: &str| Url::parse(s).unwrap();
        Metadata {
            issuer: "https://idp.example".into(),
            authorization_endpoint: u("https://idp.example/auth"),
            token_endpoint: u(token_endpoint),
            jwks_uri: u("https://idp.example/jwks"),
            end_session_endpoint: None,
            revocation_endpoint: None,
            id_token_algs: vec![jsonwebtoken::Algorithm::RS256],
            iss_parameter_supported: false,
            par_endpoint: None,
            revocation_source: RevocationSource::Discovery,
            unsupported_scopes: Vec::new(),
            acr_values_supported: None,
            claims_parameter_supported: false,
        }
    }

    #[test]
    fn par_mode_against_what_the_provider_offers() {
        let offered = || Some(Url::parse("https://idp.example/par").unwrap());
        let conflict = |r: Result<Option<Url>, DiscoveryError>| match r {
            Err(DiscoveryError::Conflict { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            par_endpoint(ParMode::Auto, offered(), false).unwrap(),
            offered()
        );
        assert_eq!(par_endpoint(ParMode::Auto, None, false).unwrap(), None);
        assert_eq!(
            par_endpoint(ParMode::Always, offered(), false).unwrap(),
            offered()
        );
        assert_eq!(
            par_endpoint(ParMode::Never, offered(), false).unwrap(),
            None
        );
        assert_eq!(
            par_endpoint(ParMode::Always, offered(), true).unwrap(),
            offered()
        );
        assert_eq!(
            conflict(par_endpoint(ParMode::Always, None, false)),
            "oidc.par"
        );
        assert_eq!(
            conflict(par_endpoint(ParMode::Never, offered(), true)),
            "oidc.par"
        );
        assert_eq!(
            conflict(par_endpoint(ParMode::Auto, None, true)),
            "oidc.pushed_authorization_request_endpoint"
        );
    }

    #[test]
    fn the_later_key_fetch_wins_and_metadata_is_never_rolled_back() {
        let rs = jsonwebtoken::Algorithm::RS256;
        let store = ProviderStore::default();
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        store.set(metadata("https://idp.example/token-v1"), jwks("old"), t0);

        // An unknown-kid refetch keeps the metadata stored now.
        store.set(metadata("https://idp.example/token-v2"), jwks("old"), t0);
        let p = store.replace_jwks(jwks("new"), t2).unwrap();
        assert!(p.jwks.find(Some("new"), rs).is_some());
        assert_eq!(p.metadata.token_endpoint.path(), "/token-v2");

        // A periodic load whose key fetch started before that refetch keeps the newer keys.
        store.set(metadata("https://idp.example/token-v3"), jwks("old"), t1);
        let p = store.get().unwrap();
        assert!(p.jwks.find(Some("new"), rs).is_some());
        assert_eq!(p.metadata.token_endpoint.path(), "/token-v3");

        // An older refetch result does not replace newer keys either.
        let p = store.replace_jwks(jwks("stale"), t1).unwrap();
        assert!(p.jwks.find(Some("new"), rs).is_some());
    }

    /// The example config's `[oidc]` without endpoint overrides.
    fn example_oidc() -> OidcConfig {
        let text = include_str!("../../conf/tollgate.toml");
        let mut cfg = crate::config::Config::from_toml_str(
            text,
            std::path::Path::new("t"),
            std::iter::empty(),
        )
        .unwrap()
        .oidc;
        cfg.endpoints = Default::default();
        cfg
    }

    #[test]
    fn discovered_endpoints_must_be_https_or_the_issuers_http() {
        let mut cfg = example_oidc();
        let doc = |issuer: &str, auth: &str| {
            serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": auth,
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
            })
            .to_string()
        };
        for (issuer, auth, ok) in [
            ("https://idp.example", "https://idp.example/auth", true),
            ("https://idp.example", "javascript:alert(1)//", false),
            ("https://idp.example", "data:text/html,x", false),
            ("https://idp.example", "http://idp.example/auth", false),
            ("http://127.0.0.1:9", "http://127.0.0.1:9/auth", true),
            ("http://127.0.0.1:9", "javascript:alert(1)", false),
        ] {
            cfg.issuer_id = issuer.into();
            let r = metadata_from_document(doc(issuer, auth).as_bytes(), &cfg);
            assert_eq!(r.is_ok(), ok, "{issuer} {auth}: {r:?}");
        }
    }

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
    fn authorization_server_metadata_urls_insert_then_append() {
        assert_eq!(
            authorization_server_metadata_urls("https://idp.example.com/realms/x/"),
            vec![
                "https://idp.example.com/.well-known/oauth-authorization-server/realms/x",
                "https://idp.example.com/realms/x/.well-known/oauth-authorization-server",
            ]
        );
        // Without a path both forms are one URL.
        for issuer in ["https://idp.example.com", "https://idp.example.com/"] {
            assert_eq!(
                authorization_server_metadata_urls(issuer),
                vec!["https://idp.example.com/.well-known/oauth-authorization-server"]
            );
        }
        assert_eq!(
            authorization_server_metadata_urls("http://127.0.0.1:9/test/as"),
            vec![
                "http://127.0.0.1:9/.well-known/oauth-authorization-server/test/as",
                "http://127.0.0.1:9/test/as/.well-known/oauth-authorization-server",
            ]
        );
    }

    #[test]
    fn revocation_from_authorization_server_metadata_needs_the_same_issuer() {
        let mut cfg = example_oidc();
        cfg.issuer_id = "https://idp.example".into();
        let url = "https://idp.example/.well-known/oauth-authorization-server";
        let doc = |issuer: &str, revocation: Option<&str>| {
            let mut d = serde_json::json!({ "issuer": issuer });
            if let Some(r) = revocation {
                d["revocation_endpoint"] = r.into();
            }
            d.to_string()
        };
        let read = |d: String| revocation_in_authorization_server_document(d.as_bytes(), url, &cfg);
        assert_eq!(
            read(doc(
                "https://idp.example",
                Some("https://idp.example/revoke")
            ))
            .unwrap(),
            Some("https://idp.example/revoke".to_string())
        );
        assert_eq!(read(doc("https://idp.example", None)).unwrap(), None);
        assert!(matches!(
            read(doc(
                "https://idp.example/",
                Some("https://idp.example/revoke")
            )),
            Err(DiscoveryError::IssuerMismatch { .. })
        ));
        assert!(matches!(
            read(doc(
                "https://idp.example",
                Some("http://idp.example/revoke")
            )),
            Err(DiscoveryError::Document { .. })
        ));
        assert!(read("not json".into()).is_err());
    }

    #[test]
    fn where_the_revocation_endpoint_comes_from() {
        let mut cfg = example_oidc();
        cfg.issuer_id = "https://idp.example".into();
        let doc = |revocation: bool| {
            let mut d = serde_json::json!({
                "issuer": "https://idp.example",
                "authorization_endpoint": "https://idp.example/auth",
                "token_endpoint": "https://idp.example/token",
                "jwks_uri": "https://idp.example/jwks",
            });
            if revocation {
                d["revocation_endpoint"] = "https://idp.example/revoke".into();
            }
            d.to_string()
        };
        let source = |d: String, cfg: &OidcConfig| {
            metadata_from_document(d.as_bytes(), cfg)
                .unwrap()
                .revocation_source
        };
        assert_eq!(source(doc(true), &cfg), RevocationSource::Discovery);
        assert!(matches!(
            source(doc(false), &cfg),
            RevocationSource::Missing(_)
        ));
        cfg.endpoints.revocation_endpoint = Some(Url::parse("https://idp.example/r").unwrap());
        assert_eq!(source(doc(false), &cfg), RevocationSource::Config);
    }

    #[test]
    fn configured_scopes_missing_from_scopes_supported() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let configured = v(&["openid", "profile", "offline_access", "email"]);
        assert_eq!(
            unsupported_scopes(&configured, Some(&v(&["openid", "profile", "email"]))),
            v(&["offline_access"])
        );
        assert_eq!(
            unsupported_scopes(&configured, Some(&v(&["openid"]))),
            v(&["profile", "offline_access", "email"])
        );
        assert!(unsupported_scopes(
            &configured,
            Some(&v(&["openid", "offline_access", "profile", "email", "x"]))
        )
        .is_empty());
        // The list is optional: without it nothing is known to be missing.
        assert!(unsupported_scopes(&configured, None).is_empty());

        // From a discovery document, against the example's [oidc] scopes.
        let mut cfg = example_oidc();
        cfg.issuer_id = "https://idp.example".into();
        let doc = serde_json::json!({
            "issuer": "https://idp.example",
            "authorization_endpoint": "https://idp.example/auth",
            "token_endpoint": "https://idp.example/token",
            "jwks_uri": "https://idp.example/jwks",
            "scopes_supported": ["openid", "profile", "email"],
        })
        .to_string();
        let m = metadata_from_document(doc.as_bytes(), &cfg).unwrap();
        assert_eq!(m.unsupported_scopes, v(&["offline_access"]));
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
