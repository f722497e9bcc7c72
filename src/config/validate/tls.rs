//! `[tls]`: HTTPS listeners with their certificate, and the protocol options.
//!
//! The certificate and key are loaded here as the server will load them, so `tollgate check`
//! refuses a chain and key that do not belong together, or files that do not parse.

use std::path::PathBuf;

use http::HeaderValue;

use crate::config::file::TlsSection;
use crate::config::{ConfigError, TlsConfig};

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
