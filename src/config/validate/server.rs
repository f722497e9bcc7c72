//! `[server]`: where tollgate listens and the public origin the browser sees.
//!
//! `public_url` decides more than its own key: the redirect URI, the accepted `Origin`, whether
//! cookies are `Secure` and the `X-Forwarded-Host` sent upstream. All of that is derived here,
//! once, so no other module re-parses it or has to guess a fallback.

use super::host_header;
use crate::config::file::ServerSection;
use crate::config::{ConfigError, Limits, ServerConfig};
use crate::config::{CHUNK_SIZE, MAX_CHUNKS};

/// Pingora parses at most this many header fields; more must be refused before it sees them.
pub(crate) const MAX_HEADERS_CEILING: usize = 256;

pub(super) fn server(s: ServerSection) -> Result<ServerConfig, ConfigError> {
    if s.listen.is_empty() {
        return Err(ConfigError::invalid(
            "server.listen",
            "at least one address is required",
        ));
    }
    let limits = limits(&s)?;
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
    upgrade_sock_safe(&s.upgrade_sock)?;
    if let Some(path) = &s.hosts_file {
        if let Err(e) = std::fs::metadata(path) {
            return Err(ConfigError::invalid(
                "server.hosts_file",
                format!("cannot read {path}: {e}"),
            ));
        }
    }
    Ok(ServerConfig {
        listen: s.listen.into_iter().map(|a| a.0).collect(),
        public_origin: public_url.origin().ascii_serialization(),
        secure_cookies: public_url.scheme() == "https",
        forwarded_host,
        public_url,
        threads,
        grace_period: s.grace_period,
        upgrade_sock: std::path::PathBuf::from(&s.upgrade_sock),
        hosts_file: s.hosts_file.as_deref().map(std::path::PathBuf::from),
        limits,
        redirect_to_https: s.redirect_to_https,
    })
}

fn limits(s: &ServerSection) -> Result<Limits, ConfigError> {
    let positive = |key: &str, zero: bool| {
        if zero {
            Err(ConfigError::invalid(key, "must be greater than zero"))
        } else {
            Ok(())
        }
    };
    positive("server.keepalive_timeout", s.keepalive_timeout.is_zero())?;
    positive(
        "server.header_read_timeout",
        s.header_read_timeout.is_zero(),
    )?;
    positive("server.max_connections", s.max_connections == 0)?;
    positive("server.max_body_bytes", s.max_body_bytes == 0)?;
    positive("server.body_read_timeout", s.body_read_timeout.is_zero())?;
    positive("server.write_timeout", s.write_timeout.is_zero())?;
    if s.send_rate_window < std::time::Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "server.send_rate_window",
            "must be at least 1s",
        ));
    }
    if s.h2_max_concurrent_streams == 0 || s.h2_max_concurrent_streams > 1000 {
        return Err(ConfigError::invalid(
            "server.h2_max_concurrent_streams",
            "must be between 1 and 1000",
        ));
    }
    if s.max_header_bytes < 1024 {
        return Err(ConfigError::invalid(
            "server.max_header_bytes",
            "must be at least 1024",
        ));
    }
    if s.max_headers == 0 || s.max_headers > MAX_HEADERS_CEILING {
        return Err(ConfigError::invalid(
            "server.max_headers",
            format!("must be between 1 and {MAX_HEADERS_CEILING}"),
        ));
    }
    let cookie_ceiling = (MAX_CHUNKS * CHUNK_SIZE).min(s.max_header_bytes.saturating_sub(512));
    if s.max_cookie_bytes < 4096 || s.max_cookie_bytes > cookie_ceiling {
        return Err(ConfigError::invalid(
            "server.max_cookie_bytes",
            format!(
                "must be between 4096 and {cookie_ceiling} (server.max_header_bytes less 512, \
                 and at most {MAX_CHUNKS} session chunks)"
            ),
        ));
    }
    Ok(Limits {
        keepalive_timeout: s.keepalive_timeout,
        header_read_timeout: s.header_read_timeout,
        max_connections: s.max_connections,
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        max_cookie_bytes: s.max_cookie_bytes,
        max_body_bytes: s.max_body_bytes,
        body_read_timeout: s.body_read_timeout,
        write_timeout: s.write_timeout,
        min_send_rate: s.min_send_rate,
        send_rate_window: s.send_rate_window,
        h2_max_concurrent_streams: s.h2_max_concurrent_streams,
    })
}

/// The running process sends its listening sockets to whoever listens at `upgrade_sock` when
/// it gets SIGQUIT: in a directory other users can write to (`/tmp`), one of them could be
/// listening there first and receive them.
fn upgrade_sock_safe(path: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::path::Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    match std::fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o002 != 0 => Err(ConfigError::invalid(
            "server.upgrade_sock",
            format!(
                "{} is writable by other users, who could receive the listening sockets at an upgrade; use a private directory (the default /run/tollgate/, e.g. systemd RuntimeDirectory=tollgate)",
                dir.display()
            ),
        )),
        // A directory that does not exist (yet) is only needed for an upgrade.
        _ => Ok(()),
    }
}
