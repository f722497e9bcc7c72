//! `[tls]` certificates: loading a PEM chain and key, and a resolver that a rotation swaps
//! atomically — new handshakes get the new certificate, established connections keep theirs.
//!
//! One `rustls::ServerConfig` lives for the process; only the [`CertifiedKey`] behind its
//! resolver changes. [`CertWatch`] re-reads the files when they change (cert-manager and
//! Kubernetes Secrets replace them in place, through a symlink swap) and on `SIGHUP`; a file
//! that does not load keeps the old certificate, logs an error and counts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certs::provider;
pub use crate::certs::{load, CertError};
use crate::config::TlsConfig;
use crate::ops::metrics::Metrics;

/// Hands every handshake the current certificate.
#[derive(Debug)]
pub(crate) struct CertStore(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The TLS acceptor configuration for `[tls]`, and the store rotation swaps.
pub(crate) fn server_config(
    tls: &TlsConfig,
    first: CertifiedKey,
) -> Result<(Arc<rustls::ServerConfig>, Arc<CertStore>), CertError> {
    let store = Arc::new(CertStore(ArcSwap::from_pointee(first)));
    let versions: &[&rustls::SupportedProtocolVersion] = if tls.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| CertError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = if tls.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    // Stateless resumption tickets (ChaCha20-Poly1305 under a key rustls makes at start and
    // rotates every 6 hours), so a returning browser resumes however many clients came in
    // between: rustls' default is a 256-entry stateful cache, and 512 clients in turn found
    // their sessions evicted (1.5 % resumed, RESULTS.md). TLS 1.3 resumption stays
    // forward-secret (rustls only offers psk_dhe_ke). Keys are per process: a browser moved
    // to another replica makes a full handshake.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| CertError::Config(e.to_string()))?;
    Ok((Arc::new(config), store))
}

/// How often the certificate files are looked at.
pub(crate) const POLL: Duration = Duration::from_secs(2);

/// What identifies a file's content without reading it: the target of any symlink chain
/// (Kubernetes swaps a `..data` link), its size and its modification time.
pub(crate) fn stamp(path: &Path) -> Option<(PathBuf, u64, SystemTime)> {
    let target = std::fs::canonicalize(path).ok()?;
    let meta = std::fs::metadata(&target).ok()?;
    Some((target, meta.len(), meta.modified().ok()?))
}

/// Re-reads the certificate when its files change, and on `SIGHUP`.
pub(crate) struct CertWatch {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) store: Arc<CertStore>,
    pub(crate) metrics: Metrics,
}

impl CertWatch {
    fn reload(&self, why: &str) {
        match load(&self.cert_file, &self.key_file) {
            Ok(key) => {
                self.store.0.store(Arc::new(key));
                self.metrics.cert_reload(true);
                tracing::info!(why, "TLS certificate loaded");
            }
            Err(e) => {
                self.metrics.cert_reload(false);
                tracing::error!(why, error = %e, "TLS certificate not reloaded; keeping the previous one");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for CertWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; certificate files are still watched");
                None
            }
        };
        let mut seen = (stamp(&self.cert_file), stamp(&self.key_file));
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
                    seen = (stamp(&self.cert_file), stamp(&self.key_file));
                    self.reload("SIGHUP");
                }
                _ = tokio::time::sleep(POLL) => {
                    let now = (stamp(&self.cert_file), stamp(&self.key_file));
                    if now != seen {
                        seen = now;
                        self.reload("the certificate files changed");
                    }
                }
            }
        }
    }
}
