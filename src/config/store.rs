//! `[store]`: where replicas share refresh results and revocations.
//!
//! The URLs may carry a password, so they are read like the other secrets (inline or from a
//! file) and never echoed in an error. One server (`url`/`url_file`) or a Redis Cluster
//! (`cluster_urls`, its seed nodes), not both: a config naming both would leave it unclear which
//! store the replicas share.

use std::time::Duration;

use serde::Deserialize;

use super::de::{self, millis};
use super::error::{ConfigError, Secret};
use super::oidc::secret_value;

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

const URL_SHAPE: &str =
    "must be redis://HOST[:PORT][/DB] or rediss:// (TLS), optionally with user:password@";

pub(super) fn store(s: StoreSection) -> Result<StoreConfig, ConfigError> {
    let url = secret_value("store.url", s.url, "store.url_file", s.url_file.as_deref())?
        .map(|u| u.trim().to_string());
    let target =
        match (url, s.cluster_urls.is_empty()) {
            (Some(_), false) => return Err(ConfigError::invalid(
                "store.cluster_urls",
                "set either store.url (one server) or store.cluster_urls (Redis Cluster), not both",
            )),
            (None, true) => {
                return Err(ConfigError::invalid(
                    "store.url",
                    "set store.url, store.url_file or store.cluster_urls",
                ))
            }
            (Some(url), true) => {
                if !url_ok(&url) {
                    return Err(ConfigError::invalid("store.url", URL_SHAPE));
                }
                StoreTarget::Single(Secret::new(url))
            }
            (None, false) => {
                let mut nodes = Vec::with_capacity(s.cluster_urls.len());
                for (i, url) in s.cluster_urls.into_iter().enumerate() {
                    let key = format!("store.cluster_urls[{i}]");
                    let url = url.trim().to_string();
                    if !url_ok(&url) {
                        return Err(ConfigError::invalid(&key, URL_SHAPE));
                    }
                    if !matches!(redis_url_db(&url), None | Some("0")) {
                        return Err(ConfigError::invalid(
                            &key,
                            "Redis Cluster has only database 0; leave the /DB out",
                        ));
                    }
                    nodes.push(Secret::new(url));
                }
                StoreTarget::Cluster(nodes)
            }
        };
    if s.key_prefix.is_empty() || s.key_prefix.contains(char::is_whitespace) {
        return Err(ConfigError::invalid(
            "store.key_prefix",
            "must be non-empty and without spaces",
        ));
    }
    if s.timeout.is_zero() {
        return Err(ConfigError::invalid(
            "store.timeout",
            "must be greater than zero",
        ));
    }
    Ok(StoreConfig {
        target,
        key_prefix: s.key_prefix,
        timeout: s.timeout,
    })
}

fn url_ok(url: &str) -> bool {
    (url.starts_with("redis://") || url.starts_with("rediss://")) && redis_url_host(url).is_some()
}

/// The host of a redis URL (after any `user:password@`), if it has one.
fn redis_url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}

/// The database number of a redis URL (its path without the `/`), if it names one.
fn redis_url_db(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let db = path.split(['?', '#']).next().unwrap_or("");
    (!db.is_empty()).then_some(db)
}
