//! `[tracing]` (OpenTelemetry export; unset keys come from the `OTEL_*` environment) and
//! `[metrics]` (the Prometheus listener).

use std::net::SocketAddr;

use serde::Deserialize;
use url::Url;

use super::de::{self, Addr, HttpUrl};
use super::error::ConfigError;

/// `[tracing]`: OpenTelemetry traces over OTLP (the `OTEL_*` variables fill what is unset).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TracingSection {
    pub otlp_endpoint: Option<HttpUrl>,
    /// `http/protobuf` or `grpc`.
    pub otlp_protocol: Option<String>,
    pub service_name: Option<String>,
    #[serde(default, deserialize_with = "de::opt_lenient")]
    pub sample_ratio: Option<f64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsSection {
    pub listen: Option<Addr>,
}

/// `[tracing]` as written; unset keys come from the `OTEL_*` environment at startup.
#[derive(Debug, Clone, Default)]
pub struct TracingConfig {
    pub otlp_endpoint: Option<Url>,
    pub otlp_protocol: Option<OtlpProtocol>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

/// `[tracing] otlp_protocol` (and `OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

impl OtlpProtocol {
    /// The spec's names; `http/json` is not supported.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// `[tracing]`: a known protocol, a ratio between 0 and 1, a non-empty service name.
pub(super) fn tracing(t: TracingSection) -> Result<TracingConfig, ConfigError> {
    let otlp_protocol = match t.otlp_protocol.as_deref() {
        None => None,
        Some(p) => Some(OtlpProtocol::parse(p).ok_or_else(|| {
            ConfigError::invalid(
                "tracing.otlp_protocol",
                format!("{p:?} must be \"http/protobuf\" or \"grpc\""),
            )
        })?),
    };
    if let Some(r) = t.sample_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(ConfigError::invalid(
                "tracing.sample_ratio",
                format!("{r} must be between 0 and 1"),
            ));
        }
    }
    if t.service_name
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            "tracing.service_name",
            "must not be empty",
        ));
    }
    Ok(TracingConfig {
        otlp_endpoint: t.otlp_endpoint.map(|u| u.0),
        otlp_protocol,
        service_name: t.service_name,
        sample_ratio: t.sample_ratio,
    })
}
