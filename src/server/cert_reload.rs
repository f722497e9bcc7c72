//! `[tls]`: the certificate and key are loaded again when their files change (the file-watch
//! loop, [`super::watch`]) and on `SIGHUP`; a pair that does not load keeps the previous one.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::watch::Reload;
use crate::ops::metrics::Metrics;
use crate::tls::{load, CertStore};

/// Reloads the front door's certificate.
pub(crate) struct CertReload {
    /// `tls.cert_file` and `tls.key_file`.
    pub(crate) files: [(&'static str, PathBuf); 2],
    pub(crate) store: Arc<CertStore>,
    pub(crate) metrics: Metrics,
}

#[async_trait]
impl Reload for CertReload {
    fn files(&self) -> &[(&'static str, PathBuf)] {
        &self.files
    }

    fn changed_reason(&self) -> &'static str {
        "the certificate files changed"
    }

    /// Both files go together, whichever changed. A failure is not retried until a file
    /// changes again (or `SIGHUP`): the error is logged and counted once per change.
    async fn reload(&self, _changed: &[&'static str], why: &str) -> Vec<&'static str> {
        let [(_, cert), (_, key)] = &self.files;
        match load(cert, key) {
            Ok(key) => {
                self.store.replace(key);
                self.metrics.cert_reload(true);
                tracing::info!(why, "TLS certificate loaded");
            }
            Err(e) => {
                self.metrics.cert_reload(false);
                tracing::error!(why, error = %e, "TLS certificate not reloaded; keeping the previous one");
            }
        }
        Vec::new()
    }
}
