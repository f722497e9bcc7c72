//! Structured logging via `tracing`.
//!
//! The filter comes from `TOLLGATE_LOG` (same syntax as `RUST_LOG`, default `info`), the format
//! from `--log-format`: `json` for log pipelines, `pretty` for people. Pingora logs through the
//! `log` crate; those records are bridged into the same output. Nothing logged anywhere in
//! tollgate contains a token, a secret or a cookie value: request lines carry the path without
//! its query string.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber. Safe to call once; later calls are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("TOLLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
