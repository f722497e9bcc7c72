//! The configuration file format, exactly as users write it.
//!
//! These structs mirror `conf/tollgate.toml` one to one and reject unknown keys, so a typo is an
//! error rather than a silently ignored setting. They carry no meaning beyond syntax: the
//! checks that give values their meaning live in [`super::validate`], which turns this into the
//! typed [`super::Config`] the rest of tollgate uses.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerSection,
    pub oidc: OidcSection,
    pub session: SessionSection,
    #[serde(default)]
    pub csrf: CsrfSection,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_listen", deserialize_with = "string_or_list")]
    pub listen: Vec<String>,
    pub public_url: String,
    #[serde(default, deserialize_with = "opt_lenient")]
    pub threads: Option<usize>,
    #[serde(default)]
    pub grace_period: Option<DurationValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default)]
    pub auth_method: Option<String>,
    pub private_key_file: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_list")]
    pub scopes: Option<Vec<String>>,
    pub callback_path: Option<String>,
    #[serde(default)]
    pub extra_auth_params: BTreeMap<String, String>,
    pub private_key_alg: Option<String>,
    pub private_key_id: Option<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub http_timeout: Option<DurationValue>,
    pub metadata_refresh: Option<DurationValue>,
    pub post_logout_redirect_uri: Option<String>,
    #[serde(default, deserialize_with = "opt_lenient")]
    pub allow_get_logout: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSection {
    pub cookie_name: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_list")]
    pub keys: Option<Vec<String>>,
    pub keys_file: Option<String>,
    pub same_site: Option<String>,
    pub max_lifetime: Option<DurationValue>,
    pub idle_timeout: Option<DurationValue>,
    pub refresh_skew: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfSection {
    pub header: Option<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub prefix: String,
    pub upstream: String,
    pub auth: Option<String>,
    #[serde(default, deserialize_with = "opt_lenient")]
    pub strip_prefix: Option<bool>,
    pub connect_timeout: Option<DurationValue>,
    pub read_timeout: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    pub listen: Option<String>,
}

/// A duration as written in the file: `"30s"`, `"8h"`, `"1h 30m"`, or a bare number of seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:8080".to_string()]
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Accepts `"a"` as well as `["a", "b"]`; environment overrides are plain strings.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

fn opt_string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    string_or_list(d).map(Some)
}

/// A number or boolean that may also arrive as a string (from an environment override).
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Native(T),
    Text(String),
}

fn opt_lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    match Lenient::<T>::deserialize(d)? {
        Lenient::Native(v) => Ok(Some(v)),
        Lenient::Text(s) => s
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("invalid value {s:?}"))),
    }
}
