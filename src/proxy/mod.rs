//! The hot path: tollgate's Pingora `ProxyHttp` implementation.
//!
//! Each phase does one thing, in the shape of Pingora's own examples:
//! - `request_filter` decides: built-in endpoints, routing, session and CSRF checks; it answers
//!   refusals itself (via [`errors::Reject`]) so a refused request never reaches an upstream;
//! - `upstream_peer` only picks the route's prepared peer;
//! - `upstream_request_filter` only rewrites the request ([`headers`]);
//! - `response_filter` tags the response with the request id;
//! - `fail_to_proxy` turns upstream failures into 502/504 JSON;
//! - `logging` writes the access log line and the metrics.
//!
//! Per-request state lives in [`Ctx`].

pub mod csrf;
pub mod errors;
pub mod headers;
pub mod request_id;
pub mod routes;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, COOKIE, TRANSFER_ENCODING};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::config::{Config, RouteAuth};
use crate::oidc::callback::CallbackRequest;
use crate::oidc::pages::{wants_json, Page};
use crate::oidc::refresh::{self, RefreshOutcome};
use crate::oidc::Oidc;
use crate::ops::health::{self, Readiness};
use crate::ops::metrics::Metrics;
use crate::session::cookie::{ChunkError, SessionCookies};
use crate::session::{Payload, Session as UserSession, SessionCodec, SessionError};

/// The `Cookie` header values of a request, as text.
fn cookie_values(req: &RequestHeader) -> impl Iterator<Item = &str> {
    req.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
}
use csrf::CsrfPolicy;
use errors::Reject;
use headers::UpstreamRewrite;
use routes::{ResolveError, RouteTable};

/// Everything the hot path needs, built once from the validated config.
#[derive(Debug)]
pub struct Tollgate {
    routes: RouteTable,
    codec: SessionCodec,
    csrf: CsrfPolicy,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    oidc: Arc<Oidc>,
    proto: &'static str,
    /// `public_url`'s authority, for `X-Forwarded-Host`.
    forwarded_host: HeaderValue,
    callback_path: String,
    refresh_skew: u64,
    idle_reseal_after: u64,
}

/// The login endpoints tollgate answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Login,
    Callback,
    Logout,
    Session,
}

/// Per-request state.
#[derive(Debug)]
pub struct Ctx {
    pub request_id: String,
    started: Instant,
    route: Option<usize>,
    /// The normalised request path, when it differs from the URI's ([`target`]).
    path: Option<String>,
    /// `Bearer <access token>`, ready for the upstream request (marked sensitive).
    bearer: Option<HeaderValue>,
    /// Set-Cookie lines to add to the response (clearing a session that did not open).
    set_cookies: Vec<String>,
    upstream_started: Option<Instant>,
    upstream_latency: Option<Duration>,
    /// Why tollgate answered itself, for the access log.
    outcome: &'static str,
}

impl Tollgate {
    pub fn new(
        config: &Config,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        oidc: Arc<Oidc>,
    ) -> Result<Self, ResolveError> {
        Ok(Tollgate {
            routes: RouteTable::new(&config.routes)?,
            codec: SessionCodec::new(&config.session, config.server.secure_cookies),
            csrf: CsrfPolicy::new(&config.csrf, &config.server.public_origin),
            metrics,
            readiness,
            oidc,
            proto: if config.server.secure_cookies {
                "https"
            } else {
                "http"
            },
            forwarded_host: config.server.forwarded_host.clone(),
            callback_path: config.oidc.callback_path.clone(),
            refresh_skew: config.session.refresh_skew.as_secs(),
            idle_reseal_after: (config.session.idle_timeout.as_secs() / 2).max(1),
        })
    }

    pub fn codec(&self) -> &SessionCodec {
        &self.codec
    }

    /// Answers a built-in endpoint, if `path` is one.
    fn builtin(&self, path: &str) -> Option<(u16, Vec<u8>)> {
        match path {
            "/healthz" => Some(health::healthz()),
            "/readyz" => Some(self.readiness.readyz()),
            _ => None,
        }
    }

    fn endpoint(&self, path: &str) -> Option<Endpoint> {
        if path == "/login" {
            Some(Endpoint::Login)
        } else if path == "/logout" {
            Some(Endpoint::Logout)
        } else if path == "/session" {
            Some(Endpoint::Session)
        } else if path == self.callback_path {
            Some(Endpoint::Callback)
        } else {
            None
        }
    }

    /// Runs `/login` or `/callback`.
    async fn run_endpoint(
        &self,
        session: &Session,
        endpoint: Endpoint,
        ctx: &Ctx,
    ) -> Result<Page, Reject> {
        let req = session.req_header();
        let json = wants_json(req.headers.get("accept").and_then(|v| v.to_str().ok()));
        if endpoint == Endpoint::Logout {
            return self.logout(req, ctx, json).await;
        }
        if req.method != http::Method::GET && req.method != http::Method::HEAD {
            return Err(Reject::MethodNotAllowed);
        }
        let query = req.uri.query().map(str::to_string);
        Ok(match endpoint {
            Endpoint::Login => self.oidc.login(query.as_deref(), json, &ctx.request_id),
            Endpoint::Session => self.session_info(req, ctx)?,
            Endpoint::Logout => unreachable!("handled above"),
            Endpoint::Callback => {
                let cookie_headers: Vec<String> = req
                    .headers
                    .get_all(COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(String::from))
                    .collect();
                self.oidc
                    .callback(
                        CallbackRequest {
                            query: query.as_deref(),
                            cookie_headers: &cookie_headers,
                            json,
                            request_id: &ctx.request_id,
                        },
                        &self.codec,
                    )
                    .await
            }
        })
    }

    async fn write_page(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        page: Page,
    ) -> pingora::Result<()> {
        let mut resp = ResponseHeader::build(page.status, Some(page.headers.len() + 3))?;
        for (name, value) in page.headers {
            resp.append_header(name, value)?;
        }
        resp.insert_header("content-length", page.body.len().to_string())?;
        resp.insert_header(request_id::HEADER, &ctx.request_id)?;
        let head_only = session.req_header().method == http::Method::HEAD || page.body.is_empty();
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(Bytes::from(page.body)), true)
                .await?;
        }
        Ok(())
    }

    /// Finds and opens the request's session; `None` when there is none or it does not open
    /// (counted and logged here).
    fn open_session<'r>(
        &self,
        req: &'r RequestHeader,
        ctx: &Ctx,
        now: u64,
    ) -> (SessionCookies<'r>, Result<UserSession, SessionError>) {
        let (present, payload) = self.find_payload(req);
        let opened = payload.and_then(|p| self.codec.view(&p, now).map(|v| v.to_session()));
        if let Err(e) = &opened {
            self.note_open_failure(ctx, e);
        }
        (present, opened)
    }

    /// Finds the request's session cookies and decrypts them (not yet decoded).
    fn find_payload<'r>(
        &self,
        req: &'r RequestHeader,
    ) -> (SessionCookies<'r>, Result<Payload, SessionError>) {
        let present = SessionCookies::scan(self.codec.cookie_name(), cookie_values(req));
        let payload = present
            .value()
            .map_err(SessionError::from)
            .and_then(|v| self.codec.open_payload(&v));
        (present, payload)
    }

    /// Counts and logs a session that was present but could not be used.
    fn note_open_failure(&self, ctx: &Ctx, e: &SessionError) {
        if !matches!(e, SessionError::Cookie(ChunkError::Missing)) {
            self.metrics.session_failure(e.reason());
            tracing::info!(request_id = %ctx.request_id, reason = e.reason(), "session did not open");
        }
    }

    /// Decides what to do with a request; `Err` is the refusal to send. Refreshes the access
    /// token when it is due, and re-seals the cookie when the session changed.
    async fn decide(
        &self,
        req: &RequestHeader,
        ctx: &mut Ctx,
        canonical: Option<String>,
    ) -> Result<(), Reject> {
        let (index, route) = self.routes.find(ctx.path(req)).ok_or(Reject::NotFound)?;
        if let Some(c) = canonical {
            // `/api%2Fadmin`, `/api;x/admin`: the upstream may serve another route's path.
            if self.routes.find(&c).map(|(i, _)| i) != Some(index) {
                tracing::info!(request_id = %ctx.request_id, "path routes differently once decoded");
                return Err(Reject::BadPath);
            }
        }
        ctx.route = Some(index);
        if route.auth == RouteAuth::None {
            return Ok(());
        }
        let now = crate::unix_now();
        let (present, payload) = self.find_payload(req);
        let opened = payload
            .as_ref()
            .map_err(|e| *e)
            .and_then(|p| self.codec.view(p, now));
        let view = match opened {
            Ok(v) => v,
            Err(e) => {
                self.note_open_failure(ctx, &e);
                if route.auth == RouteAuth::Optional {
                    return Ok(());
                }
                if !matches!(e, SessionError::Cookie(ChunkError::Missing)) {
                    ctx.set_cookies = self.codec.clear_cookie_lines(&present);
                }
                return Err(Reject::Unauthenticated);
            }
        };
        self.csrf.check(&req.headers).map_err(Reject::Csrf)?;

        // The common case: a valid token, no renewal due. The token goes from the decrypted
        // payload straight into the header value, with no owned copy of the session.
        let refresh_due = view.access_expires_at <= now + self.refresh_skew;
        let reseal_due = now.saturating_sub(view.last_seen) >= self.idle_reseal_after;
        if !refresh_due && !reseal_due {
            ctx.bearer = Some(headers::bearer_value(view.access_token).map_err(|_| {
                tracing::error!(request_id = %ctx.request_id, "the access token is not a valid header value");
                Reject::Internal
            })?);
            return Ok(());
        }
        let mut session = view.to_session();
        drop(payload);

        let mut changed = false;
        if session.access_expires_at <= now + self.refresh_skew {
            let still_valid = session.access_expires_at > now;
            match session.refresh_token.clone() {
                Some(refresh_token) => {
                    match self
                        .oidc
                        .refresh(&refresh_token, &session.claims.sub, &ctx.request_id)
                        .await
                    {
                        RefreshOutcome::Refreshed(tokens, issued_at) => {
                            refresh::apply(&mut session, &tokens, issued_at);
                            changed = true;
                        }
                        RefreshOutcome::Rejected(_) => {
                            ctx.set_cookies = self.codec.clear_cookie_lines(&present);
                            return Err(Reject::SessionExpired);
                        }
                        // Keep the session; use the current token while it lasts.
                        RefreshOutcome::Unavailable if still_valid => {}
                        RefreshOutcome::Unavailable => return Err(Reject::ProviderUnavailable),
                    }
                }
                None if still_valid => {}
                None => {
                    ctx.set_cookies = self.codec.clear_cookie_lines(&present);
                    return Err(Reject::SessionExpired);
                }
            }
        }
        // Sliding expiration renews at half-life: the cookie is re-sealed once more than half of
        // the idle window has passed, not on every request (a client that never stores the new
        // cookie, like a load generator or a script, would otherwise cause a re-seal and an
        // 8 KB Set-Cookie on every call).
        if now.saturating_sub(session.last_seen) >= self.idle_reseal_after {
            session.last_seen = now;
            changed = true;
        }
        if changed {
            match self.codec.set_cookie_lines(&session, &present, now) {
                Ok(lines) => ctx.set_cookies = lines,
                Err(e) => {
                    tracing::error!(request_id = %ctx.request_id, error = %e, "session could not be re-sealed")
                }
            }
        }
        ctx.bearer = Some(headers::bearer_value(&session.access_token).map_err(|_| {
            tracing::error!(request_id = %ctx.request_id, "the access token is not a valid header value");
            Reject::Internal
        })?);
        Ok(())
    }

    /// `/session`: what the SPA may know about the user; never a token.
    fn session_info(&self, req: &RequestHeader, ctx: &Ctx) -> Result<Page, Reject> {
        self.csrf.check(&req.headers).map_err(Reject::Csrf)?;
        let now = crate::unix_now();
        let session = self
            .open_session(req, ctx, now)
            .1
            .map_err(|_| Reject::Unauthenticated)?;
        let body = serde_json::json!({
            "sub": session.claims.sub,
            "name": session.claims.name,
            "email": session.claims.email,
            "sid": session.claims.sid,
            "expires_at": self.codec.expires_at(&session),
            "logout_url": "/logout",
        });
        Ok(Page {
            status: 200,
            headers: vec![
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into()),
            ],
            body: serde_json::to_vec(&body).unwrap_or_default(),
        })
    }

    /// `/logout` (POST with the CSRF header; GET only when allowed).
    async fn logout(&self, req: &RequestHeader, ctx: &Ctx, json: bool) -> Result<Page, Reject> {
        if req.method == http::Method::POST {
            self.csrf.check(&req.headers).map_err(Reject::Csrf)?;
        } else if !(req.method == http::Method::GET && self.oidc.allow_get_logout()) {
            return Err(Reject::MethodNotAllowed);
        }
        let now = crate::unix_now();
        let (present, opened) = self.open_session(req, ctx, now);
        let clear = self.codec.clear_cookie_lines(&present);
        let json = json && req.method == http::Method::POST;
        Ok(self
            .oidc
            .logout(opened.ok().as_ref(), clear, json, &ctx.request_id)
            .await)
    }

    async fn respond(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        body: Bytes,
    ) -> pingora::Result<()> {
        let mut resp = errors::json_response_header(status, &ctx.request_id, body.len())?;
        for line in ctx.set_cookies.drain(..) {
            resp.append_header("set-cookie", line)?;
        }
        let req = session.req_header();
        let has_body = req.headers.contains_key(TRANSFER_ENCODING)
            || req
                .headers
                .get(CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
        let head_only = req.method == http::Method::HEAD;
        if has_body {
            // Do not read (drain) an unwanted upload just to keep the connection alive.
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }
}

impl Ctx {
    /// The path to answer, route and proxy: normalised ([`target`]).
    fn path<'a>(&'a self, req: &'a RequestHeader) -> &'a str {
        self.path.as_deref().unwrap_or(req.uri.path())
    }

    fn reject(&mut self, r: Reject) -> (u16, Bytes) {
        self.outcome = r.code();
        (r.status(), r.body(&self.request_id))
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
            set_cookies: Vec::new(),
            upstream_started: None,
            upstream_latency: None,
            outcome: "proxied",
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        ctx.request_id = request_id::from_headers(&session.req_header().headers);
        let req = session.req_header();
        let canonical = match target::check(req.raw_path(), req.uri.path()) {
            Ok(t) => {
                if let std::borrow::Cow::Owned(p) = t.path {
                    ctx.path = Some(p);
                }
                t.canonical
            }
            Err(e) => {
                tracing::info!(request_id = %ctx.request_id, reason = %e, "request target refused");
                let (status, body) = ctx.reject(Reject::BadPath);
                self.respond(session, ctx, status, body).await?;
                return Ok(true);
            }
        };
        if let Some(endpoint) = self.endpoint(ctx.path(req)) {
            match self.run_endpoint(session, endpoint, ctx).await {
                Ok(page) => {
                    ctx.outcome = match endpoint {
                        Endpoint::Login => "login",
                        Endpoint::Callback => "callback",
                        Endpoint::Logout => "logout",
                        Endpoint::Session => "session",
                    };
                    self.write_page(session, ctx, page).await?;
                }
                Err(r) => {
                    let (status, body) = ctx.reject(r);
                    self.respond(session, ctx, status, body).await?;
                }
            }
            return Ok(true);
        }
        let req = session.req_header();
        if let Some((status, body)) = self.builtin(ctx.path(req)) {
            ctx.outcome = "builtin";
            self.respond(session, ctx, status, Bytes::from(body))
                .await?;
            return Ok(true);
        }
        match self.decide(session.req_header(), ctx, canonical).await {
            Ok(()) => Ok(false),
            Err(r) => {
                let (status, body) = ctx.reject(r);
                self.respond(session, ctx, status, body).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .and_then(|i| self.routes.get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        ctx.upstream_started = Some(Instant::now());
        Ok(route.peer())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let route = ctx
            .route
            .and_then(|i| self.routes.get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))?;
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        let new_path = route.upstream_path(ctx.path(req));
        let changed = new_path.as_ref() != req.uri.path();
        headers::rewrite(
            upstream_request,
            &UpstreamRewrite {
                bearer: ctx.bearer.as_ref(),
                drop_client_authorization: route.auth != RouteAuth::None,
                cookie_name: self.codec.cookie_name(),
                client_ip,
                proto: self.proto,
                forwarded_host: &self.forwarded_host,
                request_id: &ctx.request_id,
                upstream_host: &route.host_header,
                path: changed.then_some(new_path.as_ref()),
            },
        )
        .map_err(|e| {
            Error::because(
                ErrorType::InternalError,
                "rewriting the upstream request",
                e,
            )
        })
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if ctx.upstream_latency.is_none() {
            ctx.upstream_latency = ctx.upstream_started.map(|t| t.elapsed());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        upstream_response.insert_header(request_id::HEADER, &ctx.request_id)?;
        // A refreshed or re-sealed session travels back on the proxied response.
        for line in ctx.set_cookies.drain(..) {
            upstream_response.append_header("set-cookie", line)?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = Reject::from_proxy_error(e);
        let mut code = reject.map_or(0, Reject::status);
        if session.response_written().is_some() {
            // Headers already went out (failure mid-body): the connection just ends.
            code = 0;
        } else if let Some(r) = reject {
            // Pingora does not reuse a connection after a proxy failure; say so in the
            // response (`Connection: close`) so that clients do not send the next request on it.
            session.set_keepalive(None);
            let (status, body) = ctx.reject(r);
            if let Err(write_err) = self.respond(session, ctx, status, body).await {
                tracing::debug!(request_id = %ctx.request_id, error = %write_err, "could not send error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
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
        self.metrics.request(route, status);
        if let Some(l) = ctx.upstream_latency {
            self.metrics.upstream_latency(route, l.as_secs_f64());
        }
        let req = session.req_header();
        let latency_ms = ctx.started.elapsed().as_secs_f64() * 1000.0;
        let upstream_ms = ctx.upstream_latency.map(|l| l.as_secs_f64() * 1000.0);
        let error = e.map(|e| e.etype().as_str());
        tracing::info!(
            target: "tollgate::access",
            request_id = %ctx.request_id,
            method = %req.method,
            path = req.uri.path(),
            route,
            status,
            latency_ms,
            upstream_ms,
            outcome = ctx.outcome,
            error,
            "request"
        );
    }
}
