//! OpenTelemetry traces: W3C Trace Context in and out, spans for the request, the upstream
//! call, the provider calls and the store operations, exported over OTLP.
//!
//! Off unless `[tracing] otlp_endpoint` or an `OTEL_EXPORTER_OTLP_*ENDPOINT` variable names a
//! collector. Off, the hot path pays one relaxed load per hook ([`enabled`]) and nothing else:
//! the request's [`RequestTrace`] is `None`, and `traceparent`/`tracestate` pass through to the
//! upstream untouched, like any other header.
//!
//! On, the spans are made with the OpenTelemetry API directly (not through `tracing` spans,
//! which the log subscriber would also see on every request), sampled with
//! `ParentBased(TraceIdRatioBased(sample_ratio))`, batched by the SDK's own thread, and sent
//! with our reqwest (HTTP/protobuf) or tonic (gRPC), both driven by a small runtime on a
//! thread of their own, so exporting never runs on a proxy thread.
//!
//! What a span may carry is fixed here: method, route prefix, path (never the query), status,
//! outcome, request id, upstream address, the provider call's kind and status, the store
//! operation's name. Never a token, cookie, code or secret.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::{OtlpProtocol, TracingConfig};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether traces are on (one relaxed load).
#[inline]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn tracer() -> Option<&'static SdkTracer> {
    if enabled() {
        TRACER.get()
    } else {
        None
    }
}

/// Where and how traces go: `[tracing]` keys, then the `OTEL_*` environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `None`: the exporter reads `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` itself.
    pub endpoint: Option<String>,
    /// The endpoint in effect (this one or the environment's) is `https`.
    pub https: bool,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    pub sample_ratio: f64,
}

/// Why traces could not be set up (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("{0} is {1:?}: {2}")]
    Env(&'static str, String, &'static str),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("cannot start the exporter's runtime: {0}")]
    Runtime(std::io::Error),
}

/// The settings for `config` and the environment `env` (a lookup, so tests pass their own),
/// or `None` when traces are off.
pub fn settings(
    config: &TracingConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Settings>, TelemetryError> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
    {
        return Ok(None);
    }
    let env_endpoint =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let https = match (&config.otlp_endpoint, &env_endpoint) {
        (Some(u), _) => u.scheme() == "https",
        (None, Some(e)) => e.trim().to_ascii_lowercase().starts_with("https://"),
        (None, None) => return Ok(None),
    };
    let protocol = match config.otlp_protocol {
        Some(p) => p,
        None => {
            let (name, value) = match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
                Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v),
                None => match var("OTEL_EXPORTER_OTLP_PROTOCOL") {
                    Some(v) => ("OTEL_EXPORTER_OTLP_PROTOCOL", v),
                    None => ("", "http/protobuf".into()),
                },
            };
            OtlpProtocol::parse(&value).ok_or(TelemetryError::Env(
                name,
                value,
                "must be \"http/protobuf\" or \"grpc\"",
            ))?
        }
    };
    // The config's endpoint is the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is:
    // the HTTP exporter posts to its /v1/traces.
    let endpoint = config.otlp_endpoint.as_ref().map(|u| {
        let base = u.as_str().trim_end_matches('/');
        match protocol {
            OtlpProtocol::HttpProtobuf if !base.ends_with("/v1/traces") => {
                format!("{base}/v1/traces")
            }
            _ => base.to_string(),
        }
    });
    let service_name = config
        .service_name
        .clone()
        .or_else(|| var("OTEL_SERVICE_NAME"))
        .unwrap_or_else(|| "tollgate".into());
    let sample_ratio = match config.sample_ratio {
        Some(r) => r,
        None => sampler_ratio(var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG"))?,
    };
    Ok(Some(Settings {
        endpoint,
        https,
        protocol,
        service_name,
        sample_ratio,
    }))
}

/// `OTEL_TRACES_SAMPLER` / `_ARG` as a ratio (tollgate always follows a sampled parent).
fn sampler_ratio(sampler: Option<String>, arg: Option<String>) -> Result<f64, TelemetryError> {
    let ratio = || -> Result<f64, TelemetryError> {
        match arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or(TelemetryError::Env(
                    "OTEL_TRACES_SAMPLER_ARG",
                    a,
                    "must be a number between 0 and 1",
                )),
        }
    };
    match sampler.as_deref().map(str::trim) {
        None | Some("always_on") | Some("parentbased_always_on") => Ok(1.0),
        Some("always_off") | Some("parentbased_always_off") => Ok(0.0),
        Some("traceidratio") | Some("parentbased_traceidratio") => ratio(),
        Some(other) => Err(TelemetryError::Env(
            "OTEL_TRACES_SAMPLER",
            other.to_string(),
            "must be always_on, always_off, traceidratio or their parentbased_ forms",
        )),
    }
}

/// The running exporter: flushed and stopped by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
    runtime: Option<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
}

impl Telemetry {
    /// Sends what is still batched (bounded by the exporter's timeout) and stops.
    pub fn shutdown(mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "traces: the last batch was not sent");
        }
        if let Some((thread, stop)) = self.runtime.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Starts the exporter for `settings` and turns traces on. Call once, outside any runtime.
pub fn start(settings: &Settings) -> Result<Telemetry, TelemetryError> {
    // The exporter's own runtime: tonic's channel and our reqwest client run their I/O there.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("tollgate-otlp")
        .build()
        .map_err(TelemetryError::Runtime)?;
    let handle = rt.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("tollgate-otlp".into())
        .spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(TelemetryError::Runtime)?;
    let exporter = {
        let _entered = handle.enter();
        match settings.protocol {
            OtlpProtocol::HttpProtobuf => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_http_client(OtlpHttp {
                        client,
                        handle: handle.clone(),
                    })
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(e) = &settings.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
            OtlpProtocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                // tonic's default TLS config trusts no roots: the system's, as for HTTP.
                if settings.https {
                    use opentelemetry_otlp::WithTonicConfig;
                    b = b.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_native_roots(),
                    );
                }
                if let Some(e) = &settings.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
        }
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let _ = TRACER.set(provider.tracer("tollgate"));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Telemetry {
        provider,
        runtime: Some((thread, stop)),
    })
}

/// opentelemetry-http's client trait over our reqwest, each request run on the exporter's
/// runtime (the batch thread that calls this has none).
#[derive(Debug)]
struct OtlpHttp {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let task = self.handle.spawn(async move {
            let (parts, body) = request.into_parts();
            let mut req = client
                .request(parts.method, parts.uri.to_string())
                .body(body);
            for (name, value) in parts.headers.iter() {
                req = req.header(name, value);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok::<_, reqwest::Error>(out)
        });
        Ok(task.await??)
    }
}

/// Keeps the exporter for the life of the server and flushes the batched spans when the
/// server begins to shut down (Pingora exits the process without returning to `main`).
pub(crate) struct FlushOnShutdown {
    pub(crate) telemetry: Telemetry,
    /// `[server] grace_period`: requests still finish during it, and so do their spans.
    pub(crate) grace_period: Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for FlushOnShutdown {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        let flush = || {
            let provider = self.telemetry.provider.clone();
            tokio::task::spawn_blocking(move || provider.force_flush())
        };
        let _ = flush().await;
        // Again shortly before the runtimes stop, for the spans of requests that finished
        // during the grace period.
        if let Some(rest) = self.grace_period.checked_sub(Duration::from_secs(1)) {
            tokio::time::sleep(rest).await;
            let _ = flush().await;
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Collects what a propagator injects, for headers set afterwards.
#[derive(Default)]
struct Collected(Vec<(&'static str, String)>);

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((name, value));
    }
}

/// One request's spans: the server span, and the upstream call's while it runs.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    /// The context with the request's span, the parent of everything this request does.
    pub(crate) cx: Context,
    upstream: Option<Context>,
}

impl RequestTrace {
    /// Starts the request's span, continuing the client's `traceparent` when it sent one.
    pub(crate) fn start(
        headers: &http::HeaderMap,
        method: &str,
        path: &str,
        request_id: &str,
    ) -> Option<Box<RequestTrace>> {
        let tracer = tracer()?;
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let mut span = tracer
            .span_builder(static_method(method))
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        // Attributes only for a span the sampler kept: a dropped one would throw them away,
        // and at `sample_ratio = 0.1` nine requests in ten are dropped.
        if span.is_recording() {
            span.set_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("url.path", path.to_string()),
                KeyValue::new("tollgate.request_id", request_id.to_string()),
            ]);
        }
        Some(Box::new(RequestTrace {
            cx: parent.with_span(span),
            upstream: None,
        }))
    }

    /// The trace id, for the access log (also of a trace the sampler dropped, which the
    /// upstream may still record).
    pub(crate) fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Names the request's span after its route (`GET /api`).
    pub(crate) fn routed(&self, method: &str, route: &str) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route.to_string()));
    }

    /// Starts the upstream call's span (`addr`: the peer chosen).
    pub(crate) fn upstream_started(&mut self, addr: &dyn std::fmt::Display) {
        let Some(tracer) = tracer() else { return };
        if let Some(cx) = self.upstream.take() {
            // A retry: the failed attempt's span ends here.
            cx.span().set_status(Status::error("attempt failed"));
            cx.span().end();
        }
        let mut span = tracer
            .span_builder("upstream")
            .with_kind(SpanKind::Client)
            .start_with_context(tracer, &self.cx);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("server.address", addr.to_string()));
        }
        self.upstream = Some(self.cx.with_span(span));
    }

    /// `traceparent` (and `tracestate`) for the upstream request: the upstream span's.
    pub(crate) fn upstream_headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Collected::default();
        let cx = self.upstream.as_ref().unwrap_or(&self.cx);
        TraceContextPropagator::new().inject_context(cx, &mut out);
        out.0
    }

    /// The upstream answered with `status` (an interim `1xx` is not the answer).
    pub(crate) fn upstream_answered(&mut self, status: u16) {
        if status < 200 {
            return;
        }
        if let Some(cx) = self.upstream.take() {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(""));
            }
            span.end();
        }
    }

    /// Ends the request's span (and an upstream span still open: the call failed).
    pub(crate) fn finish(&mut self, status: u16, outcome: &str, error: Option<&str>) {
        if let Some(cx) = self.upstream.take() {
            cx.span()
                .set_status(Status::error(error.unwrap_or("").to_string()));
            cx.span().end();
        }
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            span.set_attribute(KeyValue::new("tollgate.outcome", outcome.to_string()));
            if let Some(e) = error {
                span.set_attribute(KeyValue::new("error.type", e.to_string()));
            }
            if status >= 500 || status == 0 {
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// The request span's first name, without an allocation for the usual methods.
fn static_method(method: &str) -> std::borrow::Cow<'static, str> {
    match method {
        "GET" => "GET".into(),
        "POST" => "POST".into(),
        "PUT" => "PUT".into(),
        "DELETE" => "DELETE".into(),
        "PATCH" => "PATCH".into(),
        "HEAD" => "HEAD".into(),
        "OPTIONS" => "OPTIONS".into(),
        other => other.to_string().into(),
    }
}

/// A span for work done on behalf of the current request (a provider call, a store
/// operation): a child of the context the request's future carries, or nothing when traces
/// are off or no request is being traced.
pub(crate) struct ChildSpan(Option<Context>);

impl ChildSpan {
    pub(crate) fn start(name: &'static str, attributes: Vec<KeyValue>) -> ChildSpan {
        let Some(tracer) = tracer() else {
            return ChildSpan(None);
        };
        let parent = Context::current();
        if !parent.has_active_span() {
            return ChildSpan(None);
        }
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        ChildSpan(Some(parent.with_span(span)))
    }

    /// `traceparent` for an outgoing call made under this span.
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Collected::default();
        if let Some(cx) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut out);
        }
        out.0
    }

    pub(crate) fn attribute(&self, kv: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(kv);
        }
    }

    /// Ends the span, as failed when `error` says why.
    pub(crate) fn end(self, error: Option<&str>) {
        if let Some(cx) = self.0 {
            if let Some(e) = error {
                cx.span().set_status(Status::error(e.to_string()));
            }
            cx.span().end();
        }
    }
}

/// The trace id of a `traceparent` value (version 00), for the access log when traces are
/// off: the client's trace, which the upstream continues.
pub(crate) fn incoming_trace_id(headers: &http::HeaderMap) -> Option<&str> {
    const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
    let v = headers.get(&TRACEPARENT)?.to_str().ok()?;
    let id = v.get(3..35)?;
    (v.starts_with("00-")
        && v.as_bytes().get(35) == Some(&b'-')
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && id.bytes().any(|b| b != b'0'))
    .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        let c = TracingConfig::default();
        assert_eq!(settings(&c, env(&[])).unwrap(), None);
        let on = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]);
        assert!(settings(&c, on).unwrap().is_some());
        let tls = env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "https://collector:4317",
        )]);
        assert!(
            settings(&c, tls).unwrap().unwrap().https,
            "TLS from the environment's URL"
        );
        let off = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ]);
        assert_eq!(settings(&c, off).unwrap(), None);
    }

    #[test]
    fn config_keys_win_and_the_environment_fills_in() {
        let c = TracingConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".parse().unwrap()),
            ..Default::default()
        };
        let s = settings(
            &c,
            env(&[
                ("OTEL_SERVICE_NAME", "bff"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.endpoint.as_deref(),
            Some("http://127.0.0.1:4318/v1/traces")
        );
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.service_name, "bff");
        assert_eq!(s.sample_ratio, 0.25);

        let c = TracingConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".parse().unwrap()),
            otlp_protocol: Some(OtlpProtocol::Grpc),
            service_name: Some("edge".into()),
            sample_ratio: Some(0.5),
        };
        let s = settings(&c, env(&[("OTEL_SERVICE_NAME", "bff")]))
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!((s.service_name.as_str(), s.sample_ratio), ("edge", 0.5));
    }

    #[test]
    fn bad_environment_values_are_named() {
        let c = TracingConfig::default();
        let e = settings(
            &c,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let e = settings(
            &c,
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_TRACES_SAMPLER_ARG"));
    }

    #[test]
    fn incoming_trace_ids() {
        let mut h = http::HeaderMap::new();
        assert_eq!(incoming_trace_id(&h), None);
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            incoming_trace_id(&h),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f35",
            "zz",
        ] {
            h.insert("traceparent", bad.parse().unwrap());
            assert_eq!(incoming_trace_id(&h), None, "{bad}");
        }
    }
}
