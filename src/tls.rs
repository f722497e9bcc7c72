//! `[tls]` certificates: loading a PEM chain and key, and a resolver that a rotation swaps
//! atomically — new handshakes get the new certificate, established connections keep theirs.
//!
//! One `rustls::ServerConfig` lives for the process; only the [`CertifiedKey`] behind its
//! resolver changes. The file-watch loop (`server::watch`) re-reads the files when they change (cert-manager and
//! Kubernetes Secrets replace them in place, through a symlink swap) and on `SIGHUP`; a file
//! that does not load keeps the old certificate, logs an error and counts it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certs::provider;
pub use crate::certs::{load, CertError};
use crate::config::TlsConfig;

/// Hands every handshake the current certificate.
#[derive(Debug)]
pub(crate) struct CertStore(ArcSwap<CertifiedKey>);

impl CertStore {
    /// New handshakes get `key` from now on; established connections keep theirs.
    pub(crate) fn replace(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }
}

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
