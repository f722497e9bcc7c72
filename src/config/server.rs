//! `[server]`: where tollgate listens and the public origin the browser sees.
//!
//! `public_url` decides more than its own key: the redirect URI, the accepted `Origin`, whether
//! cookies are `Secure` and the `X-Forwarded-Host` sent upstream. All of that is derived here,
//! once, so no other module re-parses it or has to guess a fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use url::Url;

use super::common::host_header;
use super::de::{self, bytes, secs, Addr, HttpUrl};
use super::error::ConfigError;
use super::session::{CHUNK_SIZE, MAX_CHUNKS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    #[serde(default = "default_listen", deserialize_with = "de::list")]
    pub listen: Vec<Addr>,
    pub public_url: HttpUrl,
    /// Default: the number of CPUs.
    #[serde(default, deserialize_with = "de::opt_lenient")]
    pub threads: Option<usize>,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub grace_period: Duration,
    #[serde(default = "secs::<60>", deserialize_with = "de::duration")]
    pub keepalive_timeout: Duration,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub header_read_timeout: Duration,
    #[serde(default = "max_connections", deserialize_with = "de::lenient")]
    pub max_connections: usize,
    #[serde(default = "bytes::<16384>", deserialize_with = "de::lenient")]
    pub max_header_bytes: usize,
    #[serde(default = "bytes::<100>", deserialize_with = "de::lenient")]
    pub max_headers: usize,
    #[serde(default = "bytes::<12288>", deserialize_with = "de::lenient")]
    pub max_cookie_bytes: usize,
    #[serde(default = "bytes::<65536>", deserialize_with = "de::lenient")]
    pub max_body_bytes: usize,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub body_read_timeout: Duration,
    #[serde(default = "secs::<30>", deserialize_with = "de::duration")]
    pub write_timeout: Duration,
    /// Bytes per second; 0 turns the rate check off (`write_timeout` still applies).
    #[serde(default = "bytes::<1024>", deserialize_with = "de::lenient")]
    pub min_send_rate: usize,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub send_rate_window: Duration,
    #[serde(default = "bytes::<32>", deserialize_with = "de::lenient")]
    pub h2_max_concurrent_streams: usize,
    #[serde(default, deserialize_with = "de::lenient")]
    pub redirect_to_https: bool,
    /// `/login` without a provider shows a page listing the providers.
    #[serde(default, deserialize_with = "de::lenient")]
    pub provider_chooser: bool,
    /// Where `tollgate --upgrade` takes the listening sockets from the running process.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// A hosts-format file consulted before the system resolver for upstream names.
    pub hosts_file: Option<String>,
}

fn default_upgrade_sock() -> String {
    "/run/tollgate/upgrade.sock".into()
}

fn max_connections() -> usize {
    4096
}

fn default_listen() -> Vec<Addr> {
    vec![Addr(SocketAddr::from(([127, 0, 0, 1], 8080)))]
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// The external origin the browser sees, e.g. `https://app.example.com`.
    pub public_url: Url,
    /// `public_url` as an origin string (`scheme://host[:port]`), as browsers send in `Origin`.
    pub public_origin: String,
    /// Whether cookies get the `Secure` attribute (`public_url` is https).
    pub secure_cookies: bool,
    /// `public_url`'s authority (`host[:port]`), as sent upstream in `X-Forwarded-Host`.
    pub forwarded_host: HeaderValue,
    pub threads: usize,
    pub grace_period: Duration,
    /// What one client may hold or send (`[server]` limits).
    pub limits: Limits,
    /// Plain listeners answer `308` to `public_url` (health and readiness excepted).
    pub redirect_to_https: bool,
    /// `/login` without a provider (and no host that picks one) lists the providers.
    pub provider_chooser: bool,
    /// The Unix socket a `tollgate --upgrade` process takes the listening sockets over.
    pub upgrade_sock: PathBuf,
    /// `hosts_file`: names found there resolve to its addresses, before the system resolver.
    pub hosts_file: Option<PathBuf>,
}

/// `[server]` limits on what one client can hold or send before tollgate answers for it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// An idle keep-alive connection is closed after this long.
    pub keepalive_timeout: Duration,
    /// A whole request head must arrive within this long (not reset per byte).
    pub header_read_timeout: Duration,
    /// Open client connections per process; more wait in the listen backlog.
    pub max_connections: usize,
    /// Request line and headers together, in bytes (`431` beyond).
    pub max_header_bytes: usize,
    /// Header fields per request (`431` beyond).
    pub max_headers: usize,
    /// All `Cookie` header values together, in bytes (`431` beyond); sessions that would not
    /// fit are refused at login.
    pub max_cookie_bytes: usize,
    /// Request bodies of tollgate's own endpoints (`413` beyond).
    pub max_body_bytes: usize,
    /// A request body tollgate reads itself must arrive whole within this long (`408`).
    pub body_read_timeout: Duration,
    /// A response write that makes no progress for this long ends the connection.
    pub write_timeout: Duration,
    /// A client that, while responses wait for it, takes fewer than `min_send_rate` bytes a
    /// second over `send_rate_window` of waiting is cut off; 0 turns the check off.
    pub min_send_rate: usize,
    pub send_rate_window: Duration,
    /// Concurrent streams one HTTP/2 connection may open, which also bounds the upstream
    /// connections it can hold (one per stream; an HTTP/1.1 connection holds at most one).
    pub h2_max_concurrent_streams: usize,
}

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
        provider_chooser: s.provider_chooser,
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
