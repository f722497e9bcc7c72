//! The hot path: tollgate's Pingora `ProxyHttp` implementation, a thin adapter.
//!
//! Each phase does one thing, in the shape of Pingora's own examples and River:
//! - `request_filter` screens the request ([`gate::screen`]), answers tollgate's own
//!   endpoints ([`crate::endpoints`]), routes, and asks the decision core ([`gate::Gate`])
//!   whether and with which credentials the request goes upstream; every refusal is a
//!   [`Reply`] written by [`respond::write`], so a refused request never reaches an upstream;
//! - `upstream_peer` only picks the route's prepared peer;
//! - `upstream_request_filter` only rewrites the request ([`headers::rewrite`]);
//! - `response_filter` tags the response with the request id and the session's cookies
//!   ([`headers::rewrite_response`]);
//! - `fail_to_proxy` turns upstream failures into 502/504 replies;
//! - `logging` writes the access log line and the metrics.
//!
//! Per-request state lives in [`Ctx`].

pub(crate) mod credential;
pub(crate) mod front;
pub(crate) mod gate;
pub mod headers;
pub(crate) mod identity;
pub(crate) mod pool;
pub(crate) mod request_id;
pub(crate) mod respond;
pub(crate) mod routes;
pub(crate) mod screen;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::Config;
use crate::config::Limits;
use crate::endpoints::{Endpoint, Endpoints};
use crate::oidc::Oidc;
use crate::ops::health::Readiness;
use crate::ops::metrics::{Metrics, RouteMetrics};
use crate::ops::telemetry::{self, RequestTrace};
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::revocations::Revocations;
use crate::session::SessionCodec;
use crate::sessions::csrf::CsrfPolicy;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::target::Target;
use gate::Gate;
use headers::{RewriteError, UpstreamRewrite};
use routes::{ResolveError, Route, RouteTable};

/// Everything the hot path needs, built once from the validated config.
#[derive(Debug)]
pub(crate) struct Tollgate {
    routes: RouteTable,
    /// Each route's metrics by route index, resolved once; then those of unrouted requests.
    route_metrics: Vec<RouteMetrics>,
    gate: Gate,
    endpoints: Endpoints,
    /// Read on every request for a graceful upgrade under way ([`Readiness::handed_over`]).
    readiness: Arc<Readiness>,
    metrics: Metrics,
    oidc: Arc<Oidc>,
    proto: &'static str,
    /// `public_url`'s authority, for `X-Forwarded-Host`.
    forwarded_host: HeaderValue,
    limits: Limits,
    /// `Strict-Transport-Security` for responses over TLS (`[tls] hsts`).
    hsts: Option<HeaderValue>,
    /// `[server] redirect_to_https`: plain requests get `308` to `public_url`.
    redirect_to_https: bool,
    public_origin: String,
}

/// The error type of a pool with no member to take a request (`503`).
const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";

/// The error type of a proxied request body that did not arrive within the route's
/// `read_timeout` (`408`).
const REQUEST_BODY_TIMEOUT: &str = "request body timeout";

/// Attempts of one request on a pool whose members refuse connections.
const MAX_POOL_ATTEMPTS: usize = 3;

/// A sticky pool's key for a request without a session: the client's address.
fn client_affinity(session: &Session) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
        .hash(&mut h);
    h.finish().max(1)
}

/// Room in `[server] max_cookie_bytes` kept for cookies besides the session's (a pending
/// login or logout, the application's own): a session that needs more is refused at login.
const COOKIE_ROOM: usize = 2048;

/// Per-request state.
#[derive(Debug)]
pub(crate) struct Ctx {
    request_id: String,
    started: Instant,
    route: Option<usize>,
    /// The normalised request path, when it differs from the URI's ([`target`]).
    path: Option<String>,
    /// `Bearer <access token>`, ready for the upstream request (marked sensitive).
    bearer: Option<HeaderValue>,
    /// The identity headers' values, on a route with `identity_headers`.
    identity: Option<Box<headers::Identity>>,
    /// The DPoP key and token hash, on a route with `token_binding = "dpop"`.
    dpop: Option<Box<credential::DpopGrant>>,
    /// Set-Cookie lines for the proxied response (a refreshed or renewed session).
    set_cookies: Vec<String>,
    upstream_started: Option<Instant>,
    upstream_latency: Option<Duration>,
    /// What a sticky pool hashes ([`gate::Grant::affinity`]).
    affinity: u64,
    /// The pool member this attempt goes to, and the addresses of this request's attempts
    /// that could not connect (a retry goes elsewhere).
    member: Option<Arc<pool::Member>>,
    failed: Vec<std::net::SocketAddr>,
    /// The request's spans, while traces are on ([`telemetry`]).
    trace: Option<Box<RequestTrace>>,
    /// `h1` or `h2`, and the TLS version (`none`, `1.2`, `1.3`), for metrics and the log.
    protocol: &'static str,
    tls: &'static str,
    /// Why tollgate answered itself, for the access log.
    outcome: &'static str,
    /// The answer is for a session: shared caches must not keep it (`cache_public` off).
    private: bool,
    /// The route's `read_timeout`, which bounds the whole upload of a request body, and once
    /// its first bytes came (not an upgrade's), when it must have arrived.
    upload_timeout: Option<Duration>,
    body_deadline: Option<Instant>,
}

impl Tollgate {
    pub(crate) fn new(
        config: &Config,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        oidc: Arc<Oidc>,
        revocations: Arc<Revocations>,
        store: Option<Arc<Store>>,
    ) -> Result<Self, ResolveError> {
        let sessions = Sessions::new(
            SessionCodec::new(&config.session, config.server.secure_cookies)
                .with_sealer(oidc.sealer().clone())
                .with_cookie_budget(
                    config
                        .server
                        .limits
                        .max_cookie_bytes
                        .saturating_sub(COOKIE_ROOM),
                ),
            revocations,
            store,
            CsrfPolicy::new(&config.csrf, &config.server.public_origin),
            metrics.clone(),
        );
        let gate = Gate::new(
            Arc::new(sessions),
            metrics.clone(),
            config.session.refresh_skew.as_secs(),
            config.session.idle_timeout.as_secs(),
        )
        .with_groups_claim(&config.oidc.groups_claim);
        let routes = RouteTable::new(
            &config.routes,
            config.server.hosts_file.as_deref(),
            &metrics,
        )?;
        let route_metrics = routes
            .iter()
            .map(|r| r.prefix.as_str())
            .chain(["-"])
            .map(|prefix| metrics.route(prefix))
            .collect();
        Ok(Tollgate {
            routes,
            route_metrics,
            gate,
            readiness: readiness.clone(),
            endpoints: Endpoints::new(
                oidc.clone(),
                readiness,
                config.oidc.callback_path.clone(),
                config.oidc.backchannel_logout_path.clone(),
            ),
            metrics,
            oidc,
            limits: config.server.limits.clone(),
            hsts: config.tls.as_ref().and_then(|t| t.hsts.clone()),
            redirect_to_https: config.server.redirect_to_https,
            public_origin: config.server.public_origin.clone(),
            proto: if config.server.secure_cookies {
                "https"
            } else {
                "http"
            },
            forwarded_host: config.server.forwarded_host.clone(),
        })
    }

    /// The routes' upstream pools (kept resolved and checked by [`pool::PoolService`]).
    pub(crate) fn pools(&self) -> Vec<Arc<pool::Pool>> {
        self.routes.pools()
    }

    /// The `Strict-Transport-Security` value for this request's responses, over TLS only.
    fn hsts(&self, ctx: &Ctx) -> Option<&HeaderValue> {
        (ctx.tls != "none").then_some(self.hsts.as_ref()).flatten()
    }

    fn route(&self, ctx: &Ctx) -> pingora::Result<&Route> {
        ctx.route
            .and_then(|i| self.routes.get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))
    }

    /// Where `req` goes, before any session is read: its checked target ([`gate::screen`]) and
    /// one of tollgate's endpoints or a route (`RouteTable::resolve`).
    pub(crate) fn destination<'r>(
        &self,
        req: &'r RequestHeader,
        request_id: &str,
    ) -> Result<(Target<'r>, Destination), Fault> {
        let target = screen::screen(
            &req.method,
            req.version,
            &req.headers,
            req.raw_path(),
            req.uri.path(),
            self.limits.max_cookie_bytes,
            request_id,
        )
        .inspect_err(|fault| {
            if *fault == Fault::CookieTooLarge {
                self.metrics.limit("cookie_bytes");
            }
        })?;
        if let Some(endpoint) = self.endpoints.find(&target.path) {
            return Ok((target, Destination::Endpoint(endpoint)));
        }
        match self.routes.resolve(&target) {
            Ok(index) => Ok((target, Destination::Route(index))),
            Err(fault) => {
                tracing::info!(request_id, code = fault.code(), "not routed");
                Err(fault)
            }
        }
    }

    /// Everything `request_filter` decides, as a reply to send or `None` to proxy.
    async fn handle(&self, session: &Session, ctx: &mut Ctx, body: Option<&[u8]>) -> Option<Reply> {
        let req = session.req_header();
        let (target, destination) = match self.destination(req, &ctx.request_id) {
            Ok(d) => d,
            Err(fault) => return Some(Reply::from(fault)),
        };
        if self.redirect_to_https
            && ctx.tls == "none"
            && !matches!(target.path.as_ref(), "/healthz" | "/readyz")
        {
            let location = match req.uri.query() {
                Some(q) => format!("{}{}?{q}", self.public_origin, target.path),
                None => format!("{}{}", self.public_origin, target.path),
            };
            return Some(Reply::redirect(308, location));
        }
        let facts = Facts {
            method: &req.method,
            query: req.uri.query(),
            headers: &req.headers,
            body,
            request_id: &ctx.request_id,
            now: crate::unix_now(),
        };
        let index = match destination {
            Destination::Endpoint(endpoint) => {
                return Some(
                    self.endpoints
                        .answer(endpoint, &facts, self.gate.sessions())
                        .await,
                )
            }
            Destination::Route(index) => index,
        };
        let Some(route) = self.routes.get(index) else {
            return Some(Reply::from(Fault::Internal));
        };
        let policy = gate::Policy {
            auth: route.auth,
            require: route.require.as_ref(),
            identity_headers: route.identity_headers,
            dpop: route.dpop,
            audience: route.audience.as_ref(),
        };
        match self.gate.decide(policy, &facts, &self.oidc).await {
            Ok(grant) => {
                ctx.route = Some(index);
                ctx.bearer = grant.bearer;
                ctx.identity = grant.identity;
                ctx.dpop = grant.dpop;
                ctx.set_cookies = grant.set_cookies;
                // A session's affinity is never 0.
                ctx.private = grant.affinity != 0 && !route.cache_public;
                ctx.affinity = grant.affinity;
                ctx.upload_timeout = Some(route.read_timeout);
                if let Cow::Owned(p) = target.path {
                    ctx.path = Some(p);
                }
                None
            }
            Err(reply) => {
                ctx.route = Some(index);
                Some(reply)
            }
        }
    }
}

/// Where a request goes ([`Tollgate::destination`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// One of tollgate's own endpoints (never proxied).
    Endpoint(Endpoint),
    /// The route with this index in the route table.
    Route(usize),
}

/// What the upstream request of a routed request is rewritten with.
#[derive(Debug)]
pub(crate) struct Upstream<'a> {
    pub(crate) route: &'a Route,
    /// The normalised downstream path the request was routed on.
    pub(crate) path: &'a str,
    pub(crate) bearer: Option<&'a HeaderValue>,
    pub(crate) identity: Option<&'a headers::Identity>,
    pub(crate) dpop: Option<&'a credential::DpopGrant>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) request_id: &'a str,
    /// The pool member chosen (`None` on a route with a fixed peer).
    pub(crate) member: Option<&'a pool::Member>,
}

impl Tollgate {
    /// Rewrites `upstream_request` (a copy of `req`) for `upstream`: path, credentials,
    /// cookies and forwarding headers ([`headers::rewrite`]).
    pub(crate) fn rewrite_upstream(
        &self,
        req: &RequestHeader,
        upstream_request: &mut RequestHeader,
        upstream: &Upstream<'_>,
    ) -> Result<(), RewriteError> {
        let route = upstream.route;
        let new_path = route.upstream_path(upstream.path);
        let changed = new_path.as_ref() != req.uri.path();
        // RFC 9449 §4.2: the proof names the method and the URL the upstream serves.
        let dpop_proof = match upstream.dpop {
            Some(grant) => {
                let origin = upstream.member.map_or(&route.origin, |m| &m.origin);
                let htu = format!("{origin}{new_path}");
                let proof = grant
                    .key
                    .proof_with_ath(
                        req.method.as_str(),
                        &htu,
                        Some(&grant.ath),
                        None,
                        crate::unix_now(),
                    )
                    .map_err(|_| RewriteError::Header)?;
                Some(HeaderValue::try_from(proof).map_err(|_| RewriteError::Header)?)
            }
            None => None,
        };
        headers::rewrite(
            upstream_request,
            &UpstreamRewrite {
                bearer: upstream.bearer,
                identity: upstream.identity,
                dpop_proof: dpop_proof.as_ref(),
                drop_client_authorization: !route.keep_authorization,
                cookie_name: self.gate.sessions().codec().cookie_name(),
                client_ip: upstream.client_ip,
                proto: self.proto,
                forwarded_host: &self.forwarded_host,
                request_id: upstream.request_id,
                upstream_host: upstream
                    .member
                    .map_or(&route.host_header, |m| &m.host_header),
                path: changed.then_some(new_path.as_ref()),
            },
        )
    }

    /// The route table ([`crate::fuzzing`] reads it).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The decision core ([`crate::fuzzing`] drives it).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Ctx {
    /// The path to route and proxy: normalised ([`target`]).
    fn path<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.path.as_deref().unwrap_or(req.uri.path())
    }
}

/// Reads the whole request body, at most `limit` bytes (for tollgate's own endpoints).
async fn read_body(session: &mut Session, limit: usize) -> Result<bytes::Bytes, Fault> {
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| Fault::BadRequest)?
    {
        if buf.len() + chunk.len() > limit {
            return Err(Fault::PayloadTooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Classifies a proxying failure reported by Pingora; `None` when nobody is left to answer.
fn proxy_fault(e: &Error) -> Option<Fault> {
    use ErrorType::*;
    match e.etype() {
        Custom(NO_HEALTHY_UPSTREAM) => Some(Fault::NoHealthyUpstream),
        Custom(REQUEST_BODY_TIMEOUT) => Some(Fault::RequestTimeout),
        HTTPStatus(code) if *code >= 500 => Some(Fault::UpstreamUnavailable),
        HTTPStatus(_) => Some(Fault::BadRequest),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            match e.esource() {
                // Only request bodies are read from the client under a timeout here (the
                // head was read by the front door): the upload stalled.
                ErrorSource::Downstream if *e.etype() == ReadTimedout => {
                    Some(Fault::RequestTimeout)
                }
                ErrorSource::Downstream => None,
                _ => Some(Fault::UpstreamTimeout),
            }
        }
        _ => match e.esource() {
            ErrorSource::Upstream => Some(Fault::UpstreamUnavailable),
            ErrorSource::Downstream => match e.etype() {
                // The client is gone: nobody to answer.
                WriteError | ReadError | ConnectionClosed => None,
                _ => Some(Fault::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(Fault::Internal),
        },
    }
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
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
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        if self.readiness.handed_over() {
            // A graceful upgrade is under way: this connection ends with this response.
            session.set_keepalive(None);
        }
        ctx.request_id = request_id::from_headers(&session.req_header().headers);
        ctx.protocol = if session.is_http2() { "h2" } else { "h1" };
        ctx.tls = tls_version(session);
        if telemetry::enabled() {
            let req = session.req_header();
            ctx.trace = RequestTrace::start(
                &req.headers,
                req.method.as_str(),
                req.uri.path(),
                &ctx.request_id,
            );
        }
        let mut body = None;
        if self.endpoints.takes_body(session.req_header().uri.path()) {
            let limits = &self.limits;
            let read = tokio::time::timeout(
                limits.body_read_timeout,
                read_body(session, limits.max_body_bytes),
            );
            let read = read.await.unwrap_or(Err(Fault::RequestTimeout));
            match read {
                Ok(b) => body = Some(b),
                Err(fault) => {
                    match fault {
                        Fault::PayloadTooLarge => self.metrics.limit("body_bytes"),
                        Fault::RequestTimeout => {
                            self.metrics.limit("body_read_timeout");
                            tracing::info!(request_id = %ctx.request_id, "request body did not arrive within server.body_read_timeout");
                        }
                        _ => {}
                    }
                    let reply = Reply::from(fault);
                    ctx.outcome = reply.outcome();
                    respond::write(session, &reply, &ctx.request_id, self.hsts(ctx)).await?;
                    return Ok(true);
                }
            }
        }
        // Traced: the provider and store calls made for this request are its span's children.
        let handled = match ctx.trace.as_ref().map(|t| t.cx.clone()) {
            None => self.handle(session, ctx, body.as_deref()).await,
            Some(cx) => {
                use opentelemetry::context::FutureExt;
                self.handle(session, ctx, body.as_deref())
                    .with_context(cx)
                    .await
            }
        };
        let Some(reply) = handled else {
            return Ok(false);
        };
        ctx.outcome = reply.outcome();
        respond::write(session, &reply, &ctx.request_id, self.hsts(ctx)).await?;
        Ok(true)
    }

    /// A proxied body must arrive whole within the route's `read_timeout` of its first bytes
    /// (not per read: a byte every few seconds does not keep it going). HTTP/1.1 reads of it
    /// wait at most until then (Pingora's own wait is 60 s per read, restarted by every byte).
    /// A body whose first bytes never come, and over HTTP/2 (no read timeout in Pingora) one
    /// that stalls, is ended by the upstream's read timeout instead: `408` all the same
    /// (`fail_to_proxy`). An upgraded connection's stream (WebSocket) is no
    /// upload: it lives as long as it is used.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if end_of_stream {
            return Ok(());
        }
        let deadline = match (ctx.body_deadline, ctx.upload_timeout) {
            (Some(deadline), _) => deadline,
            (None, Some(timeout)) if body.is_some() && !session.was_upgraded() => {
                let deadline = Instant::now() + timeout;
                ctx.body_deadline = Some(deadline);
                deadline
            }
            _ => return Ok(()),
        };
        let now = Instant::now();
        if now >= deadline {
            self.metrics.limit("body_read_timeout");
            tracing::info!(request_id = %ctx.request_id, "request body did not arrive within the route's read_timeout");
            return Err(Error::new_down(ErrorType::Custom(REQUEST_BODY_TIMEOUT)));
        }
        session.set_read_timeout(Some(deadline - now));
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = self.route(ctx)?;
        let peer = match (&route.pool, route.peer()) {
            (_, Some(peer)) => peer,
            (Some(pool), None) => {
                let key = if ctx.affinity == 0 && pool.sticky() {
                    client_affinity(session)
                } else {
                    ctx.affinity
                };
                let member = pool.select(key, &ctx.failed).map_err(|_| {
                    Error::explain(ErrorType::Custom(NO_HEALTHY_UPSTREAM), "no healthy member")
                })?;
                let peer = member.peer();
                ctx.member = Some(member);
                peer
            }
            (None, None) => return Err(Error::explain(ErrorType::InternalError, "no upstream")),
        };
        if let Some(t) = ctx.trace.as_mut() {
            t.upstream_started(pingora::upstreams::peer::Peer::address(&*peer));
        }
        ctx.upstream_started = Some(Instant::now());
        Ok(peer)
    }

    /// A pool member that refused the connection is ejected, and the request is tried on
    /// another member (at most [`MAX_POOL_ATTEMPTS`] in all).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let pool = ctx
            .route
            .and_then(|i| self.routes.get(i))
            .and_then(|r| r.pool.as_ref());
        if let (Some(pool), Some(member)) = (pool, ctx.member.take()) {
            pool.eject(&member);
            ctx.failed.push(member.addr);
            e.set_retry(ctx.failed.len() < MAX_POOL_ATTEMPTS && pool.has_other(&ctx.failed));
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let route = self.route(ctx)?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        let upstream = Upstream {
            route,
            path: ctx.path(req),
            bearer: ctx.bearer.as_ref(),
            identity: ctx.identity.as_deref(),
            dpop: ctx.dpop.as_deref(),
            client_ip,
            request_id: &ctx.request_id,
            member: ctx.member.as_deref(),
        };
        self.rewrite_upstream(req, upstream_request, &upstream)
            .map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "rewriting the upstream request",
                    e,
                )
            })?;
        // The upstream continues the trace from the upstream call's span.
        if let Some(t) = &ctx.trace {
            for (name, value) in t.upstream_headers() {
                upstream_request.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if ctx.upstream_latency.is_none() {
            ctx.upstream_latency = ctx.upstream_started.map(|t| t.elapsed());
        }
        if let Some(t) = ctx.trace.as_mut() {
            t.upstream_answered(upstream_response.status.as_u16());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let rw = headers::ResponseRewrite {
            request_id: &ctx.request_id,
            hsts: self.hsts(ctx),
            cookie_name: self.gate.sessions().codec().cookie_name(),
            set_cookies: std::mem::take(&mut ctx.set_cookies),
            private: ctx.private,
        };
        headers::rewrite_response(upstream_response, rw)
            .map_err(|e| Error::because(ErrorType::InternalError, "rewriting the response", e))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let mut fault = proxy_fault(e);
        if fault == Some(Fault::UpstreamTimeout)
            && ctx.upload_timeout.is_some()
            && !session.was_upgraded()
            && !session.is_body_done()
        {
            // The upstream waited past read_timeout for an upload that had not arrived (over
            // HTTP/2, which has no per-read timeout, this is how a stalled upload ends).
            self.metrics.limit("body_read_timeout");
            fault = Some(Fault::RequestTimeout);
        }
        let mut code = fault.as_ref().map_or(0, Fault::status);
        if session.response_written().is_some() {
            // Headers already went out (failure mid-body): the connection just ends.
            code = 0;
        } else if let Some(fault) = fault {
            // Pingora does not reuse a connection after a proxy failure; say so in the
            // response (`Connection: close`) so that clients do not send the next request on it.
            session.set_keepalive(None);
            let reply = Reply::from(fault);
            ctx.outcome = reply.outcome();
            if let Err(write_err) =
                respond::write(session, &reply, &ctx.request_id, self.hsts(ctx)).await
            {
                tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that goes away mid-request (a closed tab, a reset HTTP/2 stream, a benchmark
    /// ending) is not a fault of tollgate's and must not fill the error log at the rate
    /// clients can leave: Pingora's ERROR line is dropped for downstream errors, and the
    /// access log line records the request with its error type.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        let downstream = matches!(e.esource(), ErrorSource::Downstream);
        if downstream {
            tracing::debug!(request_id = %ctx.request_id, error = %e.etype().as_str(), "client went away");
        }
        downstream
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // Pingora's default summary includes the query string, which can carry secrets
        // (an authorization code on the callback). Ours does not.
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            req.uri.path(),
            ctx.request_id
        )
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let route = ctx
            .route
            .and_then(|i| self.routes.get(i))
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
            None => telemetry::incoming_trace_id(&req.headers).map(Cow::Borrowed),
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

/// The TLS version of the connection `session` arrived on: `none`, `1.2` or `1.3`.
fn tls_version(session: &Session) -> &'static str {
    let Some(ssl) = session.digest().and_then(|d| d.ssl_digest.as_deref()) else {
        return "none";
    };
    match ssl.version.as_ref() {
        "TLSv1_3" => "1.3",
        "TLSv1_2" => "1.2",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_map_to_gateway_codes() {
        let e = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(proxy_fault(&e), Some(Fault::UpstreamUnavailable));
        let e = Error::new_up(ErrorType::ReadTimedout);
        assert_eq!(proxy_fault(&e), Some(Fault::UpstreamTimeout));
        let e = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(proxy_fault(&e), None);
        let e = Error::new_down(ErrorType::ReadTimedout);
        assert_eq!(proxy_fault(&e), Some(Fault::RequestTimeout));
        let e = Error::new_down(ErrorType::Custom(REQUEST_BODY_TIMEOUT));
        assert_eq!(proxy_fault(&e), Some(Fault::RequestTimeout));
    }
}
