//! Secrets that change under a running process: the files named by `*_file` keys
//! (`session.keys_file`, `oidc.client_secret_file`, `oidc.private_key_file`,
//! `store.url_file`, `admin.token_file`) are re-read when they change and on `SIGHUP`.
//!
//! The files are watched by the one file-watch loop ([`super::watch`]). A change reloads the whole
//! configuration file with the process's `TOLLGATE__*` environment, as at startup, so a secret
//! passes exactly the checks it passed then (a key of 32 bytes, a private key that fits its
//! algorithm, a URL that parses); only the changed secrets are applied. A file that no longer
//! passes keeps the previous value in use: an error in the log (naming the key, never the
//! value) and `tollgate_secret_stale{secret} 1` until a good version arrives.
//!
//! What a new value changes: a new cookie key ring seals from the next response on and opens
//! every session sealed under any key still listed (so rotating is: add the new key first,
//! keep the old one until the longest session has ended); a client secret or private key
//! authenticates the next call to the provider; a store URL is used by the next connection; an
//! admin token is required from the next admin call on.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::watch::Reload;
use crate::admin::Admin;
use crate::config::{Config, StoreTarget};
use crate::oidc::client_auth::ClientAuth;
use crate::oidc::Providers;
use crate::ops::metrics::Metrics;
use crate::store::Store;

/// Watches the secret files of a config and applies their new contents.
pub(crate) struct SecretWatch {
    /// The config file, read again on a change.
    pub(crate) config_path: PathBuf,
    /// Each secret's config key and file.
    pub(crate) files: Vec<(&'static str, PathBuf)>,
    pub(crate) providers: Arc<Providers>,
    pub(crate) store: Option<Arc<Store>>,
    /// The admin API, when `[admin]` is configured (its token file is a secret file).
    pub(crate) admin: Option<Arc<Admin>>,
    pub(crate) metrics: Metrics,
}

#[async_trait]
impl Reload for SecretWatch {
    fn files(&self) -> &[(&'static str, PathBuf)] {
        &self.files
    }

    fn changed_reason(&self) -> &'static str {
        "a secret file changed"
    }

    fn retry_reason(&self) -> &'static str {
        "retrying a secret that did not reload"
    }

    /// Reads the config again and applies the secrets named in `changed`; returns those
    /// that could not be applied (tried again by the watch loop).
    async fn reload(&self, changed: &[&'static str], why: &str) -> Vec<&'static str> {
        if changed.is_empty() {
            return Vec::new();
        }
        let config = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                for secret in changed {
                    self.metrics.secret_reload(secret, false);
                }
                tracing::error!(why, secrets = ?changed, error = %e, "secrets not reloaded; the previous values stay in use");
                return changed.to_vec();
            }
        };
        let mut failed = Vec::new();
        for &secret in changed {
            let result = self.apply(secret, &config).await;
            self.metrics.secret_reload(secret, result.is_ok());
            match result {
                Ok(what) => tracing::info!(why, secret, "{what}"),
                Err(e) => {
                    failed.push(secret);
                    tracing::error!(why, secret, error = %e, "secret not reloaded; the previous value stays in use")
                }
            }
        }
        failed
    }
}

impl SecretWatch {
    async fn apply(&self, secret: &str, config: &Config) -> Result<String, String> {
        match secret {
            "session.keys_file" => {
                let keys = &config.session.keys;
                // One key ring, shared by every provider's client and the sessions.
                let sealer = self.providers.default_provider().sealer();
                if sealer.has_keys(keys) {
                    return Ok("session keys unchanged".into());
                }
                sealer.replace_keys(keys);
                Ok(format!(
                    "session keys reloaded: {} key(s); new cookies are sealed with key id {}",
                    keys.len(),
                    keys.first()
                        .map(crate::session::seal::key_id_hex)
                        .unwrap_or_default()
                ))
            }
            "oidc.client_secret_file" | "oidc.private_key_file" => {
                let auth = ClientAuth::new(&config.oidc).map_err(|e| e.to_string())?;
                self.providers.default_provider().replace_client_auth(auth);
                Ok("client authentication reloaded; the next provider call uses it".into())
            }
            other if other.starts_with("providers.") => {
                // providers.NAME.client_secret_file or providers.NAME.private_key_file
                let name = other
                    .strip_prefix("providers.")
                    .and_then(|rest| rest.split_once('.'))
                    .map(|(name, _)| name)
                    .unwrap_or_default();
                let (Some(oidc), Some(p)) = (self.providers.get(name), config.provider(name))
                else {
                    return Err(format!(
                        "provider {name:?} was not configured at startup; restart to add it"
                    ));
                };
                let auth = ClientAuth::new(p).map_err(|e| e.to_string())?;
                oidc.replace_client_auth(auth);
                Ok(format!(
                    "client authentication of provider {name} reloaded; its next call uses it"
                ))
            }
            "store.url_file" => {
                let (Some(store), Some(c)) = (&self.store, &config.store) else {
                    return Err("the store was not configured at startup; restart to add it".into());
                };
                let StoreTarget::Single(url) = &c.target else {
                    return Err("store.url_file now names a cluster; restart to change".into());
                };
                if !store.replace_url(url).await.map_err(|e| e.to_string())? {
                    return Ok("store URL unchanged".into());
                }
                Ok("store URL reloaded; the next connection uses it".into())
            }
            "admin.token_file" => {
                let (Some(admin), Some(c)) = (&self.admin, &config.admin) else {
                    return Err(
                        "the admin API was not configured at startup; restart to add it".into(),
                    );
                };
                if !admin.replace_token(&c.token) {
                    return Ok("admin token unchanged".into());
                }
                Ok("admin token reloaded; the next admin call needs it".into())
            }
            other => Err(format!("{other} cannot be reloaded")),
        }
    }
}
