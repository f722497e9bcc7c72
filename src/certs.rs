//! Loading a PEM certificate chain and its key, checking that they belong together: shared by
//! `[tls]` validation (`tollgate check`) and the front door's certificate store ([`crate::tls`]),
//! so validation calls no runtime code.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
    #[error("the key does not match the certificate, or is not usable: {0}")]
    Key(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a PEM certificate chain and its private key, checking that they belong together.
pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, CertError> {
    let file_err = |path: &Path, problem: String| CertError::File {
        path: path.display().to_string(),
        problem,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| file_err(cert_file, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert_file, "no certificate in the file".into()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key_file).map_err(|e| file_err(key_file, e.to_string()))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| CertError::Key(e.to_string()))
}
