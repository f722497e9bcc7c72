//! The configuration file format, deserialized into typed values.
//!
//! These structs mirror `conf/tollgate.toml` one to one and reject unknown keys, so a typo is an
//! error rather than a silently ignored setting. serde gives every value its type here
//! (enums, durations, URLs, addresses, header names; see [`super::de`]) and fills in the
//! documented defaults, so a wrong value is refused with its key while parsing. What a type
//! cannot express (a path without a query, a secret read from a file, two keys that exclude
//! each other) is checked in [`super::validate`], which builds the [`super::Config`] the rest of
//! tollgate uses.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::de::{self, Addr, HttpUrl, Issuer, UrlAsWritten};
use super::{AuthMethod, Balance, ParMode, Profile, RouteAuth, TokenBinding};
use crate::claims::ClaimRule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub server: ServerSection,
    pub oidc: OidcSection,
    pub session: SessionSection,
    #[serde(default)]
    pub csrf: CsrfSection,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
    pub store: Option<StoreSection>,
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub tracing: TracingSection,
}

/// `[tracing]`: OpenTelemetry traces over OTLP (the `OTEL_*` variables fill what is unset).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracingSection {
    pub otlp_endpoint: Option<HttpUrl>,
    /// `http/protobuf` or `grpc`.
    pub otlp_protocol: Option<String>,
    pub service_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_lenient")]
    pub sample_ratio: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    #[serde(deserialize_with = "de::list")]
    pub listen: Vec<Addr>,
    pub cert_file: String,
    pub key_file: String,
    #[serde(default = "default_min_tls")]
    pub min_version: String,
    #[serde(default = "yes", deserialize_with = "de::lenient")]
    pub http2: bool,
    #[serde(default = "default_hsts")]
    pub hsts: String,
}

fn default_min_tls() -> String {
    "1.2".to_string()
}

fn default_hsts() -> String {
    "max-age=63072000; includeSubDomains".to_string()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StoreSection {
    pub url: Option<String>,
    pub url_file: Option<String>,
    #[serde(default)]
    pub cluster_urls: Vec<String>,
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    #[serde(default = "millis::<500>", deserialize_with = "de::duration")]
    pub timeout: Duration,
}

fn default_key_prefix() -> String {
    "tollgate:".to_string()
}

fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    #[serde(default = "default_listen", deserialize_with = "de::list")]
    pub listen: Vec<Addr>,
    pub public_url: HttpUrl,
    /// Default: the number of CPUs.
    #[serde(default, deserialize_with = "de::opt_lenient")]
    pub threads: Option<usize>,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub grace_period: Duration,
    #[serde(default = "secs::<60>", deserialize_with = "de::duration")]
    pub keepalive_timeout: Duration,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub header_read_timeout: Duration,
    #[serde(default = "max_connections", deserialize_with = "de::lenient")]
    pub max_connections: usize,
    #[serde(default = "bytes::<16384>", deserialize_with = "de::lenient")]
    pub max_header_bytes: usize,
    #[serde(default = "bytes::<100>", deserialize_with = "de::lenient")]
    pub max_headers: usize,
    #[serde(default = "bytes::<12288>", deserialize_with = "de::lenient")]
    pub max_cookie_bytes: usize,
    #[serde(default = "bytes::<65536>", deserialize_with = "de::lenient")]
    pub max_body_bytes: usize,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub body_read_timeout: Duration,
    #[serde(default = "secs::<30>", deserialize_with = "de::duration")]
    pub write_timeout: Duration,
    /// Bytes per second; 0 turns the rate check off (`write_timeout` still applies).
    #[serde(default = "bytes::<1024>", deserialize_with = "de::lenient")]
    pub min_send_rate: usize,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub send_rate_window: Duration,
    #[serde(default = "bytes::<32>", deserialize_with = "de::lenient")]
    pub h2_max_concurrent_streams: usize,
    #[serde(default, deserialize_with = "de::lenient")]
    pub redirect_to_https: bool,
    /// Where `tollgate --upgrade` takes the listening sockets from the running process.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// A hosts-format file consulted before the system resolver for upstream names.
    pub hosts_file: Option<String>,
}

fn default_upgrade_sock() -> String {
    "/run/tollgate/upgrade.sock".into()
}

fn max_connections() -> usize {
    4096
}

fn bytes<const N: usize>() -> usize {
    N
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcSection {
    pub issuer: Issuer,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default = "default_auth_method")]
    pub auth_method: AuthMethod,
    pub private_key_file: Option<String>,
    #[serde(default = "default_scopes", deserialize_with = "de::list")]
    pub scopes: Vec<String>,
    #[serde(default = "default_callback_path")]
    pub callback_path: String,
    #[serde(default = "default_backchannel_logout_path")]
    pub backchannel_logout_path: String,
    #[serde(default)]
    pub extra_auth_params: BTreeMap<String, String>,
    pub private_key_alg: Option<jsonwebtoken::Algorithm>,
    pub private_key_id: Option<String>,
    pub authorization_endpoint: Option<HttpUrl>,
    pub token_endpoint: Option<HttpUrl>,
    pub jwks_uri: Option<HttpUrl>,
    pub end_session_endpoint: Option<HttpUrl>,
    pub revocation_endpoint: Option<HttpUrl>,
    pub pushed_authorization_request_endpoint: Option<HttpUrl>,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub http_timeout: Duration,
    #[serde(default = "bytes::<1048576>", deserialize_with = "de::lenient")]
    pub max_response_bytes: usize,
    #[serde(default = "secs::<3600>", deserialize_with = "de::duration")]
    pub metadata_refresh: Duration,
    /// Default: `server.public_url` with its `/` (`https://app.example.com/`). Sent as written.
    pub post_logout_redirect_uri: Option<UrlAsWritten>,
    #[serde(default, deserialize_with = "de::lenient")]
    pub allow_get_logout: bool,
    #[serde(default = "default_par")]
    pub par: ParMode,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default, deserialize_with = "de::lenient")]
    pub dpop: bool,
    pub profile: Option<Profile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionSection {
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// Base64 text: decoded in validation, which names each key without quoting it.
    #[serde(default, deserialize_with = "de::opt_list")]
    pub keys: Option<Vec<String>>,
    pub keys_file: Option<String>,
    #[serde(default = "default_same_site")]
    pub same_site: SameSiteSetting,
    #[serde(default = "secs::<86400>", deserialize_with = "de::duration")]
    pub max_lifetime: Duration,
    #[serde(default = "secs::<28800>", deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    #[serde(default = "secs::<30>", deserialize_with = "de::duration")]
    pub refresh_skew: Duration,
}

/// `same_site` as written. `"none"` is a real SameSite value, so it parses, and validation
/// refuses it with the reason (it would defeat the CSRF defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SameSiteSetting {
    #[serde(alias = "Lax")]
    Lax,
    #[serde(alias = "Strict")]
    Strict,
    #[serde(alias = "None")]
    None,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CsrfSection {
    #[serde(default = "default_csrf_header", deserialize_with = "de::header_name")]
    pub header: HeaderName,
    #[serde(default, deserialize_with = "de::list")]
    pub allowed_origins: Vec<HttpUrl>,
}

impl Default for CsrfSection {
    fn default() -> Self {
        CsrfSection {
            header: default_csrf_header(),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSection {
    pub prefix: String,
    /// One upstream URL, or a pool of them (every address of every name joins it).
    #[serde(deserialize_with = "de::list")]
    pub upstream: Vec<HttpUrl>,
    /// How a pool picks a member: `round_robin`, or `sticky` (consistent hashing on the
    /// session).
    #[serde(default)]
    pub balance: Balance,
    /// How often upstream names are resolved again.
    #[serde(default = "secs::<30>", deserialize_with = "de::duration")]
    pub resolve_interval: Duration,
    /// Active health checks: `GET` this path on every member (none: passive ejection only).
    pub health_check_path: Option<String>,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub health_check_interval: Duration,
    #[serde(default = "default_route_auth")]
    pub auth: RouteAuth,
    #[serde(default, deserialize_with = "de::lenient")]
    pub strip_prefix: bool,
    #[serde(default, deserialize_with = "de::lenient")]
    pub keep_authorization: bool,
    /// Leave the upstream's caching headers as they are on a route with sessions.
    #[serde(default, deserialize_with = "de::lenient")]
    pub cache_public: bool,
    pub require: Option<ClaimRule>,
    #[serde(default, deserialize_with = "de::lenient")]
    pub identity_headers: bool,
    #[serde(default)]
    pub token_binding: TokenBinding,
    /// RFC 8707 resource indicator of the route's own access token.
    pub resource: Option<String>,
    /// Scopes of the route's own access token.
    #[serde(default, deserialize_with = "de::list")]
    pub scopes: Vec<String>,
    #[serde(default = "secs::<5>", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    #[serde(default = "secs::<60>", deserialize_with = "de::duration")]
    pub read_timeout: Duration,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsSection {
    pub listen: Option<Addr>,
}

fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

fn default_listen() -> Vec<Addr> {
    vec![Addr(SocketAddr::from(([127, 0, 0, 1], 8080)))]
}

fn default_auth_method() -> AuthMethod {
    AuthMethod::ClientSecretBasic
}

fn default_par() -> ParMode {
    ParMode::Auto
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .map(String::from)
        .to_vec()
}

fn default_backchannel_logout_path() -> String {
    "/backchannel-logout".to_string()
}

fn default_callback_path() -> String {
    "/callback".into()
}

fn default_cookie_name() -> String {
    "__Host-tollgate".into()
}

fn default_same_site() -> SameSiteSetting {
    SameSiteSetting::Lax
}

fn default_csrf_header() -> HeaderName {
    HeaderName::from_static("x-csrf")
}

fn default_route_auth() -> RouteAuth {
    RouteAuth::Required
}
