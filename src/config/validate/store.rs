//! `[store]`: where replicas share refresh results and revocations.
//!
//! The URL may carry a password, so it is read like the other secrets (inline or from a file,
//! never echoed in an error). Redis Cluster (`cluster_urls`) is part of the interface but not
//! built yet: it is refused with that reason rather than ignored.

use super::oidc::secret_value;
use crate::config::file::StoreSection;
use crate::config::{ConfigError, Secret, StoreConfig};

pub(super) fn store(s: StoreSection) -> Result<StoreConfig, ConfigError> {
    if !s.cluster_urls.is_empty() {
        return Err(ConfigError::invalid(
            "store.cluster_urls",
            "Redis Cluster is not supported yet; use store.url (standalone Redis or Valkey)",
        ));
    }
    let url = secret_value("store.url", s.url, "store.url_file", s.url_file.as_deref())?
        .map(|u| u.trim().to_string())
        .ok_or_else(|| ConfigError::invalid("store.url", "set store.url or store.url_file"))?;
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    if !scheme_ok || redis_url_host(&url).is_none() {
        return Err(ConfigError::invalid(
            "store.url",
            "must be redis://HOST[:PORT][/DB] or rediss:// (TLS), optionally with user:password@",
        ));
    }
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
        url: Secret::new(url),
        key_prefix: s.key_prefix,
        timeout: s.timeout,
    })
}

/// The host of a redis URL (after any `user:password@`), if it has one.
fn redis_url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    (!host.is_empty()).then_some(host)
}
