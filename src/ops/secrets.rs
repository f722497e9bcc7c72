//! Secrets that change under a running process: the files named by `*_file` keys
//! (`session.keys_file`, `oidc.client_secret_file`, `oidc.private_key_file`,
//! `store.url_file`) are re-read when they change and on `SIGHUP`.
//!
//! Kubernetes updates a mounted Secret in place by swapping a `..data` symlink, so a file is
//! known by the target of its symlink chain, its size and its modification time
//! ([`crate::tls::stamp`]), looked at every [`crate::tls::POLL`]. A change reloads the whole
//! configuration file with the process's `TOLLGATE__*` environment, as at startup, so a secret
//! passes exactly the checks it passed then (a key of 32 bytes, a private key that fits its
//! algorithm, a URL that parses); only the changed secrets are applied. A file that no longer
//! passes keeps the previous value in use: an error in the log (naming the key, never the
//! value) and `tollgate_secret_stale{secret} 1` until a good version arrives.
//!
//! What a new value changes: a new cookie key ring seals from the next response on and opens
//! every session sealed under any key still listed (so rotating is: add the new key first,
//! keep the old one until the longest session has ended); a client secret or private key
//! authenticates the next call to the provider; a store URL is used by the next connection.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Config, StoreTarget};
use crate::oidc::client_auth::ClientAuth;
use crate::oidc::Oidc;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::tls::{stamp, POLL};

/// How often a secret whose reload failed is tried again while its file does not change.
const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

type Stamp = Option<(PathBuf, u64, std::time::SystemTime)>;

/// Watches the secret files of a config and applies their new contents.
pub(crate) struct SecretWatch {
    /// The config file, read again on a change.
    pub(crate) config_path: PathBuf,
    /// Each secret's config key and file.
    pub(crate) files: Vec<(&'static str, PathBuf)>,
    pub(crate) oidc: Arc<Oidc>,
    pub(crate) store: Option<Arc<Store>>,
    pub(crate) metrics: Metrics,
}

impl SecretWatch {
    fn stamps(&self) -> Vec<Stamp> {
        self.files.iter().map(|(_, f)| stamp(f)).collect()
    }

    /// Reads the config again and applies the secrets named in `changed`; returns those
    /// that could not be applied (tried again every [`RETRY`]).
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

    async fn apply(&self, secret: &str, config: &Config) -> Result<String, String> {
        match secret {
            "session.keys_file" => {
                let keys = &config.session.keys;
                if self.oidc.sealer().has_keys(keys) {
                    return Ok("session keys unchanged".into());
                }
                self.oidc.sealer().replace_keys(keys);
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
                self.oidc.replace_client_auth(auth);
                Ok("client authentication reloaded; the next provider call uses it".into())
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
            other => Err(format!("{other} cannot be reloaded")),
        }
    }
}

#[async_trait]
impl BackgroundService for SecretWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; secret files are still watched");
                None
            }
        };
        let mut seen = self.stamps();
        // Secrets whose last reload failed: tried again every RETRY until one passes (a file
        // another one depends on may be fixed without the failed one changing again).
        let mut pending: Vec<&'static str> = Vec::new();
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let hangup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = hangup => {
                    seen = self.stamps();
                    let all: Vec<&'static str> = self.files.iter().map(|(k, _)| *k).collect();
                    pending = self.reload(&all, "SIGHUP").await;
                    retry_at = tokio::time::Instant::now() + RETRY;
                }
                _ = tokio::time::sleep(POLL) => {
                    let now = self.stamps();
                    let changed: Vec<&'static str> = self
                        .files
                        .iter()
                        .zip(now.iter().zip(&seen))
                        .filter(|(_, (a, b))| a != b)
                        .map(|((k, _), _)| *k)
                        .collect();
                    seen = now;
                    let mut why = "a secret file changed";
                    let mut changed = changed;
                    if tokio::time::Instant::now() >= retry_at {
                        for p in &pending {
                            if !changed.contains(p) {
                                changed.push(p);
                                why = "retrying a secret that did not reload";
                            }
                        }
                    }
                    if !changed.is_empty() {
                        let failed = self.reload(&changed, why).await;
                        pending.retain(|p| !changed.contains(p));
                        pending.extend(failed);
                        retry_at = tokio::time::Instant::now() + RETRY;
                    }
                }
            }
        }
    }
}
