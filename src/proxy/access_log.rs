//! The end of every request: its access log line (`target: tollgate::access`), its route's
//! metrics, and the end of its trace.

use std::borrow::Cow;

use pingora::proxy::Session;
use pingora::Error;

use super::ctx::Ctx;
use super::routes::RouteTable;
use crate::ops::metrics::{Metrics, RouteMetrics};
use crate::ops::telemetry;

/// Each route's metrics by route index, resolved once; then those of unrouted requests.
#[derive(Debug)]
pub(crate) struct AccessLog {
    route_metrics: Vec<RouteMetrics>,
    metrics: Metrics,
}

impl AccessLog {
    pub(crate) fn new(routes: &RouteTable, metrics: Metrics) -> AccessLog {
        let route_metrics = routes
            .iter()
            .map(|r| r.prefix.as_str())
            .chain(["-"])
            .map(|prefix| metrics.route(prefix))
            .collect();
        AccessLog {
            route_metrics,
            metrics,
        }
    }

    /// Counts the request in `ctx`, ends its trace and writes its log line.
    pub(crate) fn record(
        &self,
        session: &Session,
        e: Option<&Error>,
        ctx: &mut Ctx,
        routes: &RouteTable,
    ) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx
            .route
            .and_then(|i| routes.get(i))
            .map_or("-", |r| r.prefix.as_str());
        let unrouted = self.route_metrics.len() - 1;
        let route_metrics = ctx
            .route
            .and_then(|i| self.route_metrics.get(i))
            .or_else(|| self.route_metrics.get(unrouted));
        if let Some(m) = route_metrics {
            m.request(status);
            if let Some(l) = ctx.upstream_latency {
                m.upstream_latency(l.as_secs_f64());
            }
        }
        self.metrics.protocol(ctx.protocol, ctx.tls);
        let req = session.req_header();
        let latency_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = ctx.upstream_latency.map(|l| l.as_secs_f64() * 1000.0);
        let error = e.map(|e| e.etype().as_str());
        // The trace this request is part of: ours while traces are on, else the client's.
        let trace_id: Option<Cow<'_, str>> = match ctx.trace.as_mut() {
            Some(t) => {
                if route != "-" {
                    t.routed(req.method.as_str(), route);
                }
                t.finish(status, ctx.outcome, error);
                Some(Cow::Owned(t.trace_id()))
            }
            // Looked for only when the access log is written.
            None if tracing::enabled!(target: "tollgate::access", tracing::Level::INFO) => {
                telemetry::incoming_trace_id(&req.headers).map(Cow::Borrowed)
            }
            None => None,
        };
        tracing::info!(
            target: "tollgate::access",
            request_id = %ctx.request_id,
            trace_id = trace_id.as_deref(),
            method = %req.method,
            path = req.uri.path(),
            route,
            status,
            protocol = ctx.protocol,
            tls = ctx.tls,
            latency_ms,
            upstream_ms,
            outcome = ctx.outcome,
            error,
            "request"
        );
    }
}

/// Pingora's summary of a request for its own error lines. Pingora's default includes the
/// query string, which can carry secrets (an authorization code on the callback); ours
/// does not.
pub(crate) fn summary(session: &Session, ctx: &Ctx) -> String {
    let req = session.req_header();
    format!(
        "{} {} request_id={}",
        req.method,
        req.uri.path(),
        ctx.request_id
    )
}

/// The TLS version of the connection `session` arrived on: `none`, `1.2` or `1.3`.
pub(crate) fn tls_version(session: &Session) -> &'static str {
    let Some(ssl) = session.digest().and_then(|d| d.ssl_digest.as_deref()) else {
        return "none";
    };
    match ssl.version.as_ref() {
        "TLSv1_3" => "1.3",
        "TLSv1_2" => "1.2",
        _ => "other",
    }
}
