//! Per-request state of the proxy ([`Ctx`]): what one hook learns and a later one needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderValue;
use pingora::http::RequestHeader;

use super::credential::DpopGrant;
use super::headers::Identity;
use super::pool::Member;
use crate::ops::telemetry::RequestTrace;

/// Per-request state.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) request_id: String,
    pub(crate) started: Instant,
    pub(crate) route: Option<usize>,
    /// The normalised request path, when it differs from the URI's ([`crate::target`]).
    pub(crate) path: Option<String>,
    /// `Bearer <access token>`, ready for the upstream request (marked sensitive).
    pub(crate) bearer: Option<HeaderValue>,
    /// The identity headers' values, on a route with `identity_headers`.
    pub(crate) identity: Option<Box<Identity>>,
    /// The DPoP key and token hash, on a route with `token_binding = "dpop"`.
    pub(crate) dpop: Option<Box<DpopGrant>>,
    /// Set-Cookie lines for the proxied response (a refreshed or renewed session).
    pub(crate) set_cookies: Vec<String>,
    pub(crate) upstream_started: Option<Instant>,
    pub(crate) upstream_latency: Option<Duration>,
    /// What a sticky pool hashes ([`super::gate::Grant::affinity`]).
    pub(crate) affinity: u64,
    /// The pool member this attempt goes to, and the addresses of this request's attempts
    /// that could not connect (a retry goes elsewhere).
    pub(crate) member: Option<Arc<Member>>,
    pub(crate) failed: Vec<std::net::SocketAddr>,
    /// The request's spans, while traces are on ([`crate::ops::telemetry`]).
    pub(crate) trace: Option<Box<RequestTrace>>,
    /// `h1` or `h2`, and the TLS version (`none`, `1.2`, `1.3`), for metrics and the log.
    pub(crate) protocol: &'static str,
    pub(crate) tls: &'static str,
    /// Why tollgate answered itself, for the access log.
    pub(crate) outcome: &'static str,
    /// The answer is for a session: shared caches must not keep it (`cache_public` off).
    pub(crate) private: bool,
    /// The route's `read_timeout`, which bounds the whole upload of a request body, and once
    /// its first bytes came (not an upgrade's), when it must have arrived.
    pub(crate) upload_timeout: Option<Duration>,
    pub(crate) body_deadline: Option<Instant>,
    /// The session's provider when it is not the default (a step-up link names it).
    pub(crate) provider: Option<Box<str>>,
    /// What to answer instead of the upstream's response (its step-up challenge).
    pub(crate) replace: Option<crate::reply::Fault>,
}

impl Ctx {
    pub(crate) fn new() -> Ctx {
        Ctx {
            request_id: String::new(),
            started: Instant::now(),
            route: None,
            path: None,
            bearer: None,
            identity: None,
            dpop: None,
            set_cookies: Vec::new(),
            upstream_started: None,
            upstream_latency: None,
            affinity: 0,
            member: None,
            failed: Vec::new(),
            trace: None,
            protocol: "h1",
            tls: "none",
            outcome: "proxied",
            private: false,
            upload_timeout: None,
            body_deadline: None,
            provider: None,
            replace: None,
        }
    }

    /// The path to route and proxy: normalised ([`crate::target`]).
    pub(crate) fn path<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.path.as_deref().unwrap_or(req.uri.path())
    }
}
