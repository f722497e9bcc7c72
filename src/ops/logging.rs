//! Structured logging via `tracing`.
//!
//! The filter comes from `TOLLGATE_LOG` (same syntax as `RUST_LOG`, default `info`), the format
//! from `--log-format`: `json` for log pipelines, `pretty` for people. Pingora logs through the
//! `log` crate; those records are bridged into the same output. Nothing logged anywhere in
//! tollgate contains a token, a secret or a cookie value: request lines carry the path without
//! its query string.

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Libraries whose debug and trace output prints whole requests (headers with the bearer
/// token, bodies with tokens from the provider). They are capped at INFO whatever
/// `TOLLGATE_LOG` asks for, so no filter setting can make a token reach the log.
const CAPPED_TARGETS: [&str; 6] = [
    "pingora",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tokio_rustls",
];

/// Where a library warns about each malformed thing a client sends (rustls: an IP address as
/// SNI, which wrk, h2load and probes send on every handshake). A client could otherwise write
/// one log line per connection; these are capped at ERROR.
const CLIENT_NOISE: [&str; 1] = ["rustls::msgs::handshake"];

fn is_capped(target: &str, level: &Level) -> bool {
    (*level > Level::INFO && CAPPED_TARGETS.iter().any(|t| target.starts_with(t)))
        || (*level > Level::ERROR && CLIENT_NOISE.iter().any(|t| target.starts_with(t)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = filter_fn(|meta| !is_capped(meta.target(), meta.level()));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(cap).with_filter(filter))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatty_libraries_are_capped_at_info() {
        assert!(is_capped("pingora_proxy::proxy_h1", &Level::DEBUG));
        assert!(is_capped("hyper::proto", &Level::TRACE));
        assert!(!is_capped("pingora_core::server", &Level::INFO));
        assert!(!is_capped("tollgate::access", &Level::DEBUG));
    }

    #[test]
    fn per_connection_client_noise_is_capped_at_error() {
        assert!(is_capped("rustls::msgs::handshake", &Level::WARN));
        assert!(!is_capped("rustls::msgs::handshake", &Level::ERROR));
        assert!(!is_capped("tollgate::tls", &Level::WARN));
    }
}
