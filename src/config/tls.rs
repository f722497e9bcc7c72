//! `[tls]`: HTTPS listeners with their certificate, and the protocol options.
//!
//! The certificate and key are loaded here as the server will load them, so `tollgate check`
//! refuses a chain and key that do not belong together, or files that do not parse.

use std::net::SocketAddr;
use std::path::PathBuf;

use http::HeaderValue;
use serde::Deserialize;

use super::de::{self, yes, Addr};
use super::error::ConfigError;

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

/// `[tls]`: tollgate terminates TLS itself (HTTP/2 by ALPN).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain and private key; re-read when they change and on SIGHUP.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Only TLS 1.3 (else 1.2 and 1.3).
    pub tls13_only: bool,
    /// Offer `h2` by ALPN (besides `http/1.1`).
    pub http2: bool,
    /// `Strict-Transport-Security` on every HTTPS response; `None` when `hsts = ""`.
    pub hsts: Option<HeaderValue>,
}

pub(super) fn tls(t: TlsSection) -> Result<TlsConfig, ConfigError> {
    if t.listen.is_empty() {
        return Err(ConfigError::invalid(
            "tls.listen",
            "at least one address is required",
        ));
    }
    let tls13_only = match t.min_version.as_str() {
        "1.2" => false,
        "1.3" => true,
        other => {
            return Err(ConfigError::invalid(
                "tls.min_version",
                format!("{other:?} must be \"1.2\" or \"1.3\""),
            ))
        }
    };
    let hsts = match t.hsts.trim() {
        "" => None,
        v => Some(HeaderValue::from_str(v).map_err(|_| {
            ConfigError::invalid(
                "tls.hsts",
                "must be a valid header value (or \"\" for none)",
            )
        })?),
    };
    let (cert_file, key_file) = (PathBuf::from(&t.cert_file), PathBuf::from(&t.key_file));
    crate::certs::load(&cert_file, &key_file)
        .map_err(|e| ConfigError::invalid("tls.cert_file", e.to_string()))?;
    Ok(TlsConfig {
        listen: t.listen.into_iter().map(|a| a.0).collect(),
        cert_file,
        key_file,
        tls13_only,
        http2: t.http2,
        hsts,
    })
}
