//! Configuration: from `conf/tollgate.toml` plus `TOLLGATE__*` overrides to a validated model.
//!
//! Loading happens in three steps, each in its own module: [`env`] applies environment
//! overrides to the parsed TOML document, serde deserializes it into the typed structs of
//! [`file`] (enums, durations, URLs, addresses and header names get their types there, with the
//! deserializers of [`de`]), and [`validate`] checks what types cannot express, section by
//! section, and builds the [`Config`] below. Nothing outside this module sees raw strings: URLs
//! are parsed, keys decoded, secrets read from their files, header values built. Every error
//! names the key it is about.

mod de;
pub(crate) mod env;
pub(crate) mod file;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

use crate::claims::ClaimRule;

/// Why a configuration was refused. The message always names the key (or variable, or file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {problem}")]
    Env { var: String, problem: String },
    #[error("`{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// A value that must never be printed: client secrets, private keys.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration every other module works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub oidc: OidcConfig,
    pub session: SessionConfig,
    pub csrf: CsrfConfig,
    pub routes: Vec<RouteConfig>,
    pub metrics: MetricsConfig,
    /// `[store]`: the shared store replicas use (Redis or Valkey); `None` for one process.
    pub store: Option<StoreConfig>,
    /// `[tls]`: HTTPS listeners; `None` for plain HTTP only.
    pub tls: Option<TlsConfig>,
    /// `[tracing]`: what the config file says of OpenTelemetry export ([`crate::ops::telemetry`]
    /// adds the `OTEL_*` environment).
    pub tracing: TracingConfig,
    /// The secrets read from files (`session.keys_file`, `oidc.client_secret_file`,
    /// `oidc.private_key_file`, `store.url_file`): each key and its file, for the reload
    /// ([`crate::ops::secrets`]).
    pub secret_files: Vec<(&'static str, PathBuf)>,
}

/// `[tracing]` as written; unset keys come from the `OTEL_*` environment at startup.
#[derive(Debug, Clone, Default)]
pub struct TracingConfig {
    pub otlp_endpoint: Option<Url>,
    pub otlp_protocol: Option<OtlpProtocol>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

/// `[tracing] otlp_protocol` (and `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

impl OtlpProtocol {
    /// The spec's names; `http/json` is not supported.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }
}

/// `[tls]`: tollgate terminates TLS itself (HTTP/2 by ALPN).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain and private key; re-read when they change and on SIGHUP.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Only TLS 1.3 (else 1.2 and 1.3).
    pub tls13_only: bool,
    /// Offer `h2` by ALPN (besides `http/1.1`).
    pub http2: bool,
    /// `Strict-Transport-Security` on every HTTPS response; `None` when `hsts = ""`.
    pub hsts: Option<HeaderValue>,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where the store is: one server, or the seed nodes of a Redis Cluster.
    pub target: StoreTarget,
    /// Prepended to every key and channel.
    pub key_prefix: String,
    /// The longest one store operation may take.
    pub timeout: Duration,
}

/// `[store] url` (one Redis or Valkey server) or `[store] cluster_urls` (Redis Cluster seed
/// nodes). Each URL is `redis://` or `rediss://`, possibly with `user:password@` (hence secrets).
#[derive(Debug, Clone)]
pub enum StoreTarget {
    Single(Secret),
    Cluster(Vec<Secret>),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// The external origin the browser sees, e.g. `https://app.example.com`.
    pub public_url: Url,
    /// `public_url` as an origin string (`scheme://host[:port]`), as browsers send in `Origin`.
    pub public_origin: String,
    /// Whether cookies get the `Secure` attribute (`public_url` is https).
    pub secure_cookies: bool,
    /// `public_url`'s authority (`host[:port]`), as sent upstream in `X-Forwarded-Host`.
    pub forwarded_host: HeaderValue,
    pub threads: usize,
    pub grace_period: Duration,
    /// What one client may hold or send (`[server]` limits).
    pub limits: Limits,
    /// Plain listeners answer `308` to `public_url` (health and readiness excepted).
    pub redirect_to_https: bool,
    /// The Unix socket a `tollgate --upgrade` process takes the listening sockets over.
    pub upgrade_sock: PathBuf,
    /// `hosts_file`: names found there resolve to its addresses, before the system resolver.
    pub hosts_file: Option<PathBuf>,
}

/// `[server]` limits on what one client can hold or send before tollgate answers for it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// An idle keep-alive connection is closed after this long.
    pub keepalive_timeout: Duration,
    /// A whole request head must arrive within this long (not reset per byte).
    pub header_read_timeout: Duration,
    /// Open client connections per process; more wait in the listen backlog.
    pub max_connections: usize,
    /// Request line and headers together, in bytes (`431` beyond).
    pub max_header_bytes: usize,
    /// Header fields per request (`431` beyond).
    pub max_headers: usize,
    /// All `Cookie` header values together, in bytes (`431` beyond); sessions that would not
    /// fit are refused at login.
    pub max_cookie_bytes: usize,
    /// Request bodies of tollgate's own endpoints (`413` beyond).
    pub max_body_bytes: usize,
    /// A request body tollgate reads itself must arrive whole within this long (`408`).
    pub body_read_timeout: Duration,
    /// A response write that makes no progress for this long ends the connection.
    pub write_timeout: Duration,
    /// A client that, while responses wait for it, takes fewer than `min_send_rate` bytes a
    /// second over `send_rate_window` of waiting is cut off; 0 turns the check off.
    pub min_send_rate: usize,
    pub send_rate_window: Duration,
    /// Concurrent streams one HTTP/2 connection may open, which also bounds the upstream
    /// connections it can hold (one per stream; an HTTP/1.1 connection holds at most one).
    pub h2_max_concurrent_streams: usize,
}

/// `[oidc] profile`: a security profile the configuration must conform to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// FAPI 2.0 Security Profile (final, 2025).
    Fapi2,
}

/// `[oidc] par`: whether `/login` uses pushed authorization requests (RFC 9126).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParMode {
    /// When the provider advertises `pushed_authorization_request_endpoint`.
    Auto,
    /// Always: a provider without the endpoint is refused at startup.
    Always,
    /// Never: a provider that requires PAR is refused at startup.
    Never,
}

impl ParMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ParMode::Auto => "auto",
            ParMode::Always => "always",
            ParMode::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    ClientSecretJwt,
    PrivateKeyJwt,
    None,
}

impl AuthMethod {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }

    pub fn needs_client_secret(self) -> bool {
        matches!(
            self,
            AuthMethod::ClientSecretBasic
                | AuthMethod::ClientSecretPost
                | AuthMethod::ClientSecretJwt
        )
    }
}

/// The kind of key found in `private_key_file`, which decides the JWT algorithms it can sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateKeyKind {
    Rsa,
    Ec,
    Ed25519,
}

#[derive(Debug, Clone)]
pub struct PrivateKey {
    pub kind: PrivateKeyKind,
    pub pem: Secret,
    /// The JWS algorithm for client assertions (RS256, PS256, ES256 or EdDSA).
    pub alg: jsonwebtoken::Algorithm,
    /// `kid` for the assertion header, when the provider needs it to pick the key.
    pub kid: Option<String>,
}

/// Provider endpoints set in the config; each replaces the discovered one.
#[derive(Debug, Clone, Default)]
pub struct EndpointOverrides {
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub jwks_uri: Option<Url>,
    pub end_session_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    pub pushed_authorization_request_endpoint: Option<Url>,
}

impl EndpointOverrides {
    /// With these three set, tollgate needs no discovery document.
    pub fn skip_discovery(&self) -> bool {
        self.authorization_endpoint.is_some()
            && self.token_endpoint.is_some()
            && self.jwks_uri.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: Url,
    /// The issuer exactly as configured (trailing slash and all): discovery documents and ID
    /// tokens must carry this string, compared as written (OpenID Connect Discovery §4.3).
    pub issuer_id: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub auth_method: AuthMethod,
    pub private_key: Option<PrivateKey>,
    pub scopes: Vec<String>,
    pub callback_path: String,
    /// Where the provider posts back-channel logout tokens (`{public_url}{path}` is registered
    /// as `backchannel_logout_uri`).
    pub backchannel_logout_path: String,
    pub extra_auth_params: BTreeMap<String, String>,
    pub endpoints: EndpointOverrides,
    /// Timeout of every request to the provider (discovery, JWKS, token).
    pub http_timeout: Duration,
    /// The largest response body read from the provider.
    pub max_response_bytes: usize,
    /// How often provider metadata and keys are fetched again.
    pub metadata_refresh: Duration,
    /// Where the provider sends the browser after logout (and tollgate, without one), exactly
    /// as sent: as configured, or `public_url` with its `/`.
    pub post_logout_redirect_uri: String,
    /// Whether `GET /logout` works (besides `POST /logout` with the CSRF header).
    pub allow_get_logout: bool,
    /// Pushed authorization requests: `auto`, `always` or `never`.
    pub par: ParMode,
    /// The claim that lists the user's groups (`X-Auth-Request-Groups`).
    pub groups_claim: String,
    /// DPoP-bound tokens (RFC 9449): a key pair per session, proofs on every token request.
    pub dpop: bool,
    /// `profile = "fapi2"`: the FAPI 2.0 Security Profile, checked at load
    /// ([`validate`]'s `fapi2`) and in force at run time (algorithms, `iss`, RSA sizes).
    pub fapi2: bool,
}

// The session cookie's wire limits ([`crate::session::cookie`]), here so that validation
// (`[server] max_cookie_bytes` against what a session may need) reads no runtime code.
/// The longest value put in one cookie; with the name and attributes it stays under 4096 bytes.
pub const CHUNK_SIZE: usize = 3800;
/// Chunks beyond this are ignored on read and never written (≈ 38 KB of session).
pub const MAX_CHUNKS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

#[derive(Clone)]
pub struct SessionConfig {
    /// The cookie name actually used (without `__Host-` when cookies are not `Secure`).
    pub cookie_name: String,
    /// Set when the configured name had to lose its `__Host-` prefix (http `public_url`).
    pub dropped_host_prefix: bool,
    /// Sealing keys: the first seals, all open.
    pub keys: Vec<[u8; 32]>,
    pub same_site: SameSite,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    /// Refresh the access token when it expires within this long.
    pub refresh_skew: Duration,
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("same_site", &self.same_site)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("refresh_skew", &self.refresh_skew)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct CsrfConfig {
    /// The header that authenticated requests must carry.
    pub header: HeaderName,
    /// Origins accepted in `Origin` besides `public_url`'s.
    pub allowed_origins: Vec<String>,
}

/// `[[routes]] token_binding`: how the access token is presented to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenBinding {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// `Authorization: DPoP <token>` and a `DPoP` proof for the upstream request.
    Dpop,
}

/// `[[routes]] balance`: how a pool of upstream addresses is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each request to the next healthy member.
    #[default]
    RoundRobin,
    /// Consistent hashing on the session (the client address without one): a user stays on
    /// one member while it is healthy, and only the users of a member that leaves move.
    Sticky,
}

/// One URL of a route's `upstream` list.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub url: Url,
    /// The URL's authority (`host[:port]`).
    pub host: String,
    /// The same, as the upstream request's `Host` header value.
    pub host_header: HeaderValue,
}

/// `[[routes]] health_check_path` and `health_check_interval`.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
}

/// `[[routes]] resource` and `scopes`: the audience of a route's own access token (RFC 8707),
/// obtained with the session's refresh token. Two routes with the same resource and scopes
/// share one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// `resource=` for the token request: an absolute URI without fragment.
    pub resource: Option<String>,
    /// `scope=` for the token request (space-separated), if the route names scopes.
    pub scope: Option<String>,
    /// What caches, single flights and the store know it by: a hash of both, the same on
    /// every replica with the same config.
    pub id: [u8; 16],
}

impl Audience {
    pub fn new(resource: Option<String>, scopes: &[String]) -> Audience {
        let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, b"tollgate audience\0");
        sha2::Digest::update(&mut h, resource.as_deref().unwrap_or("").as_bytes());
        sha2::Digest::update(&mut h, b"\0");
        sha2::Digest::update(&mut h, scope.as_deref().unwrap_or("").as_bytes());
        let digest = sha2::Digest::finalize(h);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Audience {
            resource,
            scope,
            id,
        }
    }

    /// The resource's tag in a session ([`resource_tag`]).
    pub fn resource_tag(&self) -> Option<u64> {
        self.resource.as_deref().map(resource_tag)
    }
}

/// What a session records of a resource asked for at its login: 8 bytes of its SHA-256.
pub fn resource_tag(resource: &str) -> u64 {
    let d = <sha2::Sha256 as sha2::Digest>::digest(resource.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    Required,
    Optional,
    None,
}

impl RouteAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteAuth::Required => "required",
            RouteAuth::Optional => "optional",
            RouteAuth::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Normalised prefix: starts with `/`, no trailing `/` except for the catch-all `/`.
    pub prefix: String,
    /// The first upstream URL (all of a pool's share its scheme and path).
    pub upstream: Url,
    /// Every upstream URL, the first included.
    pub upstreams: Vec<UpstreamUrl>,
    pub balance: Balance,
    pub resolve_interval: Duration,
    pub health_check: Option<HealthCheckConfig>,
    /// `Host` for the upstream request: the upstream URL's authority (`host[:port]`).
    pub host: String,
    /// The same, as a header value built once.
    pub host_header: HeaderValue,
    pub auth: RouteAuth,
    pub strip_prefix: bool,
    /// Pass a client-sent `Authorization` to the upstream (`auth = "none"` routes only).
    pub keep_authorization: bool,
    /// Answers to requests with a session keep the upstream's caching headers (else they
    /// are made `private`, CDN-only headers dropped).
    pub cache_public: bool,
    /// Claims the session must have (`require`; empty: none).
    pub require: ClaimRule,
    /// Send `X-Auth-Request-User`, `-Email` and `-Groups` to the upstream.
    pub identity_headers: bool,
    /// How the access token goes upstream: `Bearer`, or `DPoP` with a proof.
    pub token_binding: TokenBinding,
    /// The route's own access token (`resource`, `scopes`), instead of the session's.
    pub audience: Option<Arc<Audience>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// The process's `TOLLGATE__*` variables. (`std::env::vars` would panic on any variable that
/// is not UTF-8, ours or not; others are skipped, and one of ours that is not is an error.)
fn process_overrides() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(env::PREFIX)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: name.to_string(),
            problem: "the value is not valid UTF-8".into(),
        })?;
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

impl Config {
    /// The ID token claims a session keeps: those the routes' `require` rules read, and the
    /// groups claim when a route sends identity headers (`sub` and `email` are kept anyway).
    pub fn kept_claim_names(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<&str> = self
            .routes
            .iter()
            .flat_map(|r| r.require.claim_names())
            .collect();
        if self.routes.iter().any(|r| r.identity_headers) {
            names.insert(&self.oidc.groups_claim);
            // X-Auth-Request-Email goes only with a verified address.
            names.insert("email_verified");
        }
        names.into_iter().map(str::to_string).collect()
    }

    /// The resources the routes name, each once, in config order: `/login` asks for all of
    /// them (RFC 8707 §2.1).
    pub fn resources(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self
            .routes
            .iter()
            .filter_map(|r| r.audience.as_ref()?.resource.as_ref())
        {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// The `redirect_uri` tollgate sends (`{public_url}{callback_path}`): what the provider
    /// must have registered, character for character.
    pub fn redirect_uri(&self) -> String {
        format!(
            "{}{}",
            self.server.public_origin.trim_end_matches('/'),
            self.oidc.callback_path
        )
    }

    /// The `backchannel_logout_uri` to register at the provider.
    pub fn backchannel_logout_uri(&self) -> String {
        format!(
            "{}{}",
            self.server.public_origin.trim_end_matches('/'),
            self.oidc.backchannel_logout_path
        )
    }

    /// The login's `scope`: `[oidc] scopes`, then every scope a route names, each once (the
    /// grant must cover what a route's token asks for).
    pub fn login_scope(&self) -> String {
        let mut scopes: Vec<&str> = self.oidc.scopes.iter().map(String::as_str).collect();
        for s in self
            .routes
            .iter()
            .filter_map(|r| r.audience.as_ref()?.scope.as_deref())
            .flat_map(|s| s.split(' '))
        {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        scopes.join(" ")
    }

    /// Reads `path`, applies the process environment's `TOLLGATE__*` overrides and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, process_overrides()?)
    }

    /// Parses and validates config text with the given environment (tests pass their own).
    /// Relative `*_file` paths are resolved against the working directory.
    pub fn from_toml_str<I>(text: &str, origin: &Path, vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut doc: toml::Value = toml::from_str::<toml::Table>(text)
            .map(toml::Value::Table)
            .map_err(|e| ConfigError::Syntax {
                path: origin.to_path_buf(),
                message: e.message().to_string(),
            })?;
        env::apply_overrides(&mut doc, vars)?;
        let raw: file::FileConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                e.into_inner().message().to_string(),
            )
        })?;
        validate::validate(raw)
    }
}
