//! Prometheus metrics, served on `[metrics] listen`, away from the public port.
//!
//! - `tollgate_requests_total{route, status}`: every request tollgate answered or proxied;
//! - `tollgate_upstream_duration_seconds{route}`: time from choosing the upstream to its
//!   response header;
//! - `tollgate_session_open_failures_total{reason}`: session cookies that were present but did
//!   not open (tampered, expired, unknown key, revoked, …);
//! - `tollgate_store_up`: 1 while the shared store (`[store]`) is connected, else 0;
//! - `tollgate_store_operation_duration_seconds{op}`: each store operation;
//! - `tollgate_refresh_total{outcome}`: refreshes with a store — `won` (this replica called the
//!   provider), `waited` (another replica's result, after waiting), `reused` (a result already
//!   published), `fallback` (the store failed; refreshed locally);
//! - `tollgate_route_tokens_total{outcome}`: route tokens (RFC 8707, `[[routes]] resource` /
//!   `scopes`) — `issued` (the provider gave one), `refused` (`403 insufficient_scope`),
//!   `store` (another replica's, read from the store);
//! - `tollgate_revocations_total{source}`: sessions revoked here, by `logout` or `backchannel`;
//! - `tollgate_connections`: client connections open now;
//! - `tollgate_limits_total{limit}`: connections or requests stopped by a `[server]`/`[oidc]`
//!   limit — `max_connections` (an accept had to wait for a free slot), `header_read_timeout`,
//!   `keepalive_timeout` (an idle connection closed), `header_bytes`, `header_count`,
//!   `cookie_bytes` (`431`), `body_bytes` (`413`), `provider_response_bytes`, `tls_handshake`
//!   (a handshake that failed or did not finish within `header_read_timeout`);
//! - `tollgate_protocol_requests_total{protocol, tls}`: requests by `h1`/`h2` and TLS version
//!   (`none`, `1.2`, `1.3`);
//! - `tollgate_secret_reloads_total{secret, result}` (`ok`, `error`) and
//!   `tollgate_secret_stale{secret}`: secrets re-read from their files (`secret` is the config
//!   key: `session.keys_file`, `oidc.client_secret_file`, `oidc.private_key_file`,
//!   `store.url_file`, `admin.token_file`); stale is 1 while the file's current content could not be used;
//! - `tollgate_tls_cert_reloads_total{result}` (`ok`, `error`) and `tollgate_tls_cert_stale`:
//!   1 while the certificate files on disk did not load and the previous certificate is served.
//! - `tollgate_upstream_members{route, state}`: the addresses of a route's upstream pool, by
//!   `healthy` (active checks pass, or none configured), `unhealthy`, `ejected` (a connect
//!   failure took it out for a while);
//! - `tollgate_upstream_ejections_total{route}`: members taken out after a connect failure.
//! - `tollgate_sessions_active`: server-side sessions (`[session] storage = "store"`) in this
//!   replica's memory: every session with the in-process store, the recently used ones with
//!   `[store]`;
//! - `tollgate_logins_total{provider, outcome}`: logins finished at the callback, by provider,
//!   `ok`, `step_up_not_met` (a step-up login came back without what it asked for) or `failed`;
//! - `tollgate_step_ups_total{provider, source}`: `401 step_up_required` answers, by the
//!   session's provider and whether a route's rule (`route`) or the upstream (`upstream`) asked;
//! - `tollgate_upstream_connections_total{reused}`: upstream connections proxied requests went
//!   out on, `true` when taken from the keep-alive pool, `false` when newly made;
//! - `tollgate_dbsc_total{event}`: Device Bound Session Credentials — `registered`,
//!   `refreshed`, `refused` (a bound session's request without a valid bound cookie);
//! - `tollgate_admin_actions_total{action, outcome}`: admin API calls (`[admin]`), by `list`,
//!   `revoke`, `revoke_user` and `ok`, `not_found`, `unauthorized`, `bad_request`,
//!   `store_unavailable`.
//!
//! A registry of our own (not the process-global one) keeps tests independent.

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One route's request counters and upstream latency, resolved once: `with_label_values`
/// hashes its labels and takes a lock on every call (and the status needed a `String`), about
/// 1,000 instructions a request for three series. A status's counter is created on its first
/// use, so `/metrics` shows the same series as before.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: String,
    requests: IntCounterVec,
    by_status: Box<[OnceLock<IntCounter>]>,
    latencies: HistogramVec,
    upstream_latency: OnceLock<Histogram>,
}

impl RouteMetrics {
    pub(crate) fn request(&self, status: u16) {
        let counter = || {
            self.requests
                .with_label_values(&[&self.route, &status.to_string()])
        };
        match self.by_status.get(usize::from(status)) {
            Some(slot) => slot.get_or_init(counter).inc(),
            None => counter().inc(),
        }
    }

    pub(crate) fn upstream_latency(&self, seconds: f64) {
        self.upstream_latency
            .get_or_init(|| self.latencies.with_label_values(&[&self.route]))
            .observe(seconds);
    }
}

/// `(protocol, tls)` label pairs whose counters are resolved once, each on its first use.
const PROTOCOLS: [&str; 2] = ["h1", "h2"];
const TLS_VERSIONS: [&str; 4] = ["none", "1.2", "1.3", "other"];

#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream_latency: HistogramVec,
    session_failures: IntCounterVec,
    store_up: IntGauge,
    store_latency: HistogramVec,
    refreshes: IntCounterVec,
    route_tokens: IntCounterVec,
    revocations: IntCounterVec,
    connections: IntGauge,
    limits: IntCounterVec,
    protocols: IntCounterVec,
    protocol_counters: Arc<[OnceLock<IntCounter>; PROTOCOLS.len() * TLS_VERSIONS.len()]>,
    cert_reloads: IntCounterVec,
    cert_stale: IntGauge,
    secret_reloads: IntCounterVec,
    secret_stale: IntGaugeVec,
    upstream_members: IntGaugeVec,
    upstream_ejections: IntCounterVec,
    sessions_active: IntGauge,
    admin_actions: IntCounterVec,
    dbsc: IntCounterVec,
    logins: IntCounterVec,
    step_ups: IntCounterVec,
    upstream_connections: IntCounterVec,
    /// `upstream_connections` by `reused`, resolved once (the hot path).
    upstream_reused: [OnceLock<IntCounter>; 2],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("tollgate_requests_total", "Requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_duration_seconds",
                "Time from choosing the upstream to its response header",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let session_failures = IntCounterVec::new(
            Opts::new(
                "tollgate_session_open_failures_total",
                "Session cookies that were present but could not be used, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let store_up = IntGauge::new(
            "tollgate_store_up",
            "1 while the shared store is connected, else 0",
        )
        .expect("valid metric");
        let store_latency = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_store_operation_duration_seconds",
                "Shared store operations",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            &["op"],
        )
        .expect("valid metric");
        let refreshes = IntCounterVec::new(
            Opts::new(
                "tollgate_refresh_total",
                "Refreshes with a shared store, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let route_tokens = IntCounterVec::new(
            Opts::new(
                "tollgate_route_tokens_total",
                "Route tokens (per-route audiences), by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let revocations = IntCounterVec::new(
            Opts::new(
                "tollgate_revocations_total",
                "Sessions revoked here, by source",
            ),
            &["source"],
        )
        .expect("valid metric");
        let connections = IntGauge::new("tollgate_connections", "Client connections open now")
            .expect("valid metric");
        let limits = IntCounterVec::new(
            Opts::new(
                "tollgate_limits_total",
                "Connections or requests stopped by a configured limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let protocols = IntCounterVec::new(
            Opts::new(
                "tollgate_protocol_requests_total",
                "Requests by HTTP version and TLS version",
            ),
            &["protocol", "tls"],
        )
        .expect("valid metric");
        let cert_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_tls_cert_reloads_total",
                "TLS certificate reloads, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let secret_reloads = IntCounterVec::new(
            Opts::new(
                "tollgate_secret_reloads_total",
                "Secrets re-read from their files, by config key and result",
            ),
            &["secret", "result"],
        )
        .expect("valid metric");
        let secret_stale = IntGaugeVec::new(
            Opts::new(
                "tollgate_secret_stale",
                "1 while a secret file's current content could not be used (the previous value is in use)",
            ),
            &["secret"],
        )
        .expect("valid metric");
        let upstream_members = IntGaugeVec::new(
            Opts::new(
                "tollgate_upstream_members",
                "Addresses of a route's upstream pool, by state (healthy, unhealthy, ejected)",
            ),
            &["route", "state"],
        )
        .expect("valid metric");
        let upstream_ejections = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_ejections_total",
                "Upstream pool members taken out after a connect failure",
            ),
            &["route"],
        )
        .expect("valid metric");
        let sessions_active = IntGauge::new(
            "tollgate_sessions_active",
            "Server-side sessions in this replica's memory (storage = \"store\")",
        )
        .expect("valid metric");
        let admin_actions = IntCounterVec::new(
            Opts::new(
                "tollgate_admin_actions_total",
                "Admin API calls, by action (list, revoke, revoke_user) and outcome",
            ),
            &["action", "outcome"],
        )
        .expect("valid metric");
        let dbsc = IntCounterVec::new(
            Opts::new(
                "tollgate_dbsc_total",
                "Device Bound Session Credentials, by event (registered, refreshed, refused)",
            ),
            &["event"],
        )
        .expect("valid metric");
        let logins = IntCounterVec::new(
            Opts::new(
                "tollgate_logins_total",
                "Logins finished at the callback, by provider and outcome (ok, step_up_not_met, failed)",
            ),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let step_ups = IntCounterVec::new(
            Opts::new(
                "tollgate_step_ups_total",
                "401 step_up_required answers, by the session's provider and source (route, upstream)",
            ),
            &["provider", "source"],
        )
        .expect("valid metric");
        let upstream_connections = IntCounterVec::new(
            Opts::new(
                "tollgate_upstream_connections_total",
                "Upstream connections proxied requests went out on, by whether the keep-alive pool gave them (reused)",
            ),
            &["reused"],
        )
        .expect("valid metric");
        let cert_stale = IntGauge::new(
            "tollgate_tls_cert_stale",
            "1 while the certificate files did not load and the previous certificate is served",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(upstream_latency.clone()),
            Box::new(session_failures.clone()),
            Box::new(store_up.clone()),
            Box::new(store_latency.clone()),
            Box::new(refreshes.clone()),
            Box::new(route_tokens.clone()),
            Box::new(revocations.clone()),
            Box::new(connections.clone()),
            Box::new(limits.clone()),
            Box::new(protocols.clone()),
            Box::new(cert_reloads.clone()),
            Box::new(cert_stale.clone()),
            Box::new(secret_reloads.clone()),
            Box::new(secret_stale.clone()),
            Box::new(upstream_members.clone()),
            Box::new(upstream_ejections.clone()),
            Box::new(sessions_active.clone()),
            Box::new(admin_actions.clone()),
            Box::new(dbsc.clone()),
            Box::new(logins.clone()),
            Box::new(step_ups.clone()),
            Box::new(upstream_connections.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            registry,
            requests,
            upstream_latency,
            session_failures,
            store_up,
            store_latency,
            refreshes,
            route_tokens,
            revocations,
            connections,
            limits,
            protocols,
            protocol_counters: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            cert_reloads,
            cert_stale,
            secret_reloads,
            secret_stale,
            upstream_members,
            upstream_ejections,
            sessions_active,
            admin_actions,
            dbsc,
            logins,
            step_ups,
            upstream_connections,
            upstream_reused: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// A proxied request went out on an upstream connection: `reused` from the pool, or new.
    pub(crate) fn upstream_connection(&self, reused: bool) {
        self.upstream_reused[usize::from(reused)]
            .get_or_init(|| {
                self.upstream_connections.with_label_values(&[if reused {
                    "true"
                } else {
                    "false"
                }])
            })
            .inc();
    }

    /// A login finished at the callback of `provider`: `ok`, `step_up_not_met` or `failed`.
    pub(crate) fn login(&self, provider: &str, outcome: &str) {
        self.logins.with_label_values(&[provider, outcome]).inc();
    }

    /// A `401 step_up_required` for a session of `provider`, asked by `source` (`route`,
    /// `upstream`).
    pub(crate) fn step_up(&self, provider: &str, source: &str) {
        self.step_ups.with_label_values(&[provider, source]).inc();
    }

    /// A DBSC event: `registered`, `refreshed` or `refused`.
    pub(crate) fn dbsc(&self, event: &str) {
        self.dbsc.with_label_values(&[event]).inc();
    }

    /// How many server-side sessions this replica holds in memory now.
    pub(crate) fn sessions_active(&self, n: usize) {
        self.sessions_active
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An admin API call: `action` (`list`, `revoke`, `revoke_user`) and its `outcome` (`ok`,
    /// `not_found`, `unauthorized`, `store_unavailable`, `bad_request`).
    pub(crate) fn admin_action(&self, action: &str, outcome: &str) {
        self.admin_actions
            .with_label_values(&[action, outcome])
            .inc();
    }

    /// A route's upstream pool: how many members are `healthy`, `unhealthy` and `ejected`.
    pub(crate) fn upstream_members(&self, route: &str, healthy: i64, unhealthy: i64, ejected: i64) {
        for (state, n) in [
            ("healthy", healthy),
            ("unhealthy", unhealthy),
            ("ejected", ejected),
        ] {
            self.upstream_members
                .with_label_values(&[route, state])
                .set(n);
        }
    }

    pub(crate) fn upstream_ejection(&self, route: &str) {
        self.upstream_ejections.with_label_values(&[route]).inc();
    }

    pub(crate) fn protocol(&self, protocol: &str, tls: &str) {
        let p = PROTOCOLS.iter().position(|p| *p == protocol);
        let t = TLS_VERSIONS.iter().position(|t| *t == tls);
        let counter = || self.protocols.with_label_values(&[protocol, tls]);
        match (p, t) {
            (Some(p), Some(t)) => self.protocol_counters[p * TLS_VERSIONS.len() + t]
                .get_or_init(counter)
                .inc(),
            _ => counter().inc(),
        }
    }

    /// The counters and histogram of the route with `prefix` (`-` for requests no route
    /// took), for the hot path.
    pub(crate) fn route(&self, prefix: &str) -> RouteMetrics {
        RouteMetrics {
            route: prefix.to_string(),
            requests: self.requests.clone(),
            by_status: (0..600).map(|_| OnceLock::new()).collect(),
            latencies: self.upstream_latency.clone(),
            upstream_latency: OnceLock::new(),
        }
    }

    pub(crate) fn secret_reload(&self, secret: &str, ok: bool) {
        self.secret_reloads
            .with_label_values(&[secret, if ok { "ok" } else { "error" }])
            .inc();
        self.secret_stale
            .with_label_values(&[secret])
            .set(i64::from(!ok));
    }

    pub(crate) fn cert_reload(&self, ok: bool) {
        self.cert_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.cert_stale.set(i64::from(!ok));
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.dec();
    }

    pub(crate) fn limit(&self, limit: &str) {
        self.limits.with_label_values(&[limit]).inc();
    }

    pub(crate) fn store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    pub(crate) fn store_operation(&self, op: &str, seconds: f64) {
        self.store_latency.with_label_values(&[op]).observe(seconds);
    }

    pub(crate) fn refresh(&self, outcome: &str) {
        self.refreshes.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn route_token(&self, outcome: &str) {
        self.route_tokens.with_label_values(&[outcome]).inc();
    }

    pub(crate) fn revocation(&self, source: &str) {
        self.revocations.with_label_values(&[source]).inc();
    }

    pub(crate) fn request(&self, route: &str, status: u16) {
        let status = status.to_string();
        self.requests.with_label_values(&[route, &status]).inc();
    }

    pub(crate) fn session_failure(&self, reason: &str) {
        self.session_failures.with_label_values(&[reason]).inc();
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The Pingora app behind `[metrics] listen`: `GET /metrics`.
pub(crate) struct MetricsApp {
    pub metrics: Metrics,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !session.is_body_empty() {
            // Scrapes have no body: one that comes is not read (Pingora would drain it for
            // keep-alive, 60 s per read); the connection closes after the answer.
            session.set_keepalive(None);
        }
        let path = session.req_header().uri.path();
        let (status, ctype, body) = if path == "/metrics" {
            (200, "text/plain; version=0.0.4", self.metrics.render())
        } else {
            (
                404,
                "text/plain",
                b"not found: metrics are at /metrics\n".to_vec(),
            )
        };
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_handles_count_into_the_same_series() {
        let m = Metrics::new();
        let api = m.route("/api");
        api.request(200);
        api.request(200);
        api.request(999);
        m.route("-").request(431);
        api.upstream_latency(0.01);
        m.protocol("h2", "1.3");
        m.protocol("h2", "1.3");
        m.protocol("h3", "1.3");
        let text = String::from_utf8(m.render()).unwrap();
        for line in [
            "tollgate_requests_total{route=\"/api\",status=\"200\"} 2",
            "tollgate_requests_total{route=\"/api\",status=\"999\"} 1",
            "tollgate_requests_total{route=\"-\",status=\"431\"} 1",
            "tollgate_upstream_duration_seconds_count{route=\"/api\"} 1",
            "tollgate_protocol_requests_total{protocol=\"h2\",tls=\"1.3\"} 2",
            "tollgate_protocol_requests_total{protocol=\"h3\",tls=\"1.3\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // Series appear when first used, as before.
        assert!(!text.contains("status=\"404\""));
    }
}
