//! `[server]`: where tollgate listens and the public origin the browser sees.
//!
//! `public_url` decides more than its own key: the redirect URI, the accepted `Origin`, whether
//! cookies are `Secure` and the `X-Forwarded-Host` sent upstream. All of that is derived here,
//! once, so no other module re-parses it or has to guess a fallback.

use super::host_header;
use crate::config::file::ServerSection;
use crate::config::{ConfigError, ServerConfig};

pub(super) fn server(s: ServerSection) -> Result<ServerConfig, ConfigError> {
    if s.listen.is_empty() {
        return Err(ConfigError::invalid(
            "server.listen",
            "at least one address is required",
        ));
    }
    let public_url = s.public_url.0;
    if public_url.path() != "/" || public_url.query().is_some() {
        return Err(ConfigError::invalid(
            "server.public_url",
            "must be an origin only (scheme, host, optional port), without a path or query",
        ));
    }
    let (_, forwarded_host) =
        host_header(&public_url).map_err(|p| ConfigError::invalid("server.public_url", p))?;
    let threads = match s.threads {
        Some(0) => return Err(ConfigError::invalid("server.threads", "must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    Ok(ServerConfig {
        listen: s.listen.into_iter().map(|a| a.0).collect(),
        public_origin: public_url.origin().ascii_serialization(),
        secure_cookies: public_url.scheme() == "https",
        forwarded_host,
        public_url,
        threads,
        grace_period: s.grace_period,
    })
}
