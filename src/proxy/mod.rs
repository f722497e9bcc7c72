//! The hot path: tollgate's Pingora `ProxyHttp` implementation, a thin adapter.
//!
//! Each hook does one thing and hands it to the file whose job it is, in the shape of
//! Pingora's own examples and River:
//! - `request_filter` reads an own endpoint's body and asks [`dispatch`] where the request
//!   goes and what the decision core ([`gate::Gate`]) says; every refusal is a [`Reply`]
//!   written by [`respond::write`], so a refused request never reaches an upstream;
//! - `request_body_filter` keeps an upload within its deadline ([`upstream::upload_deadline`]);
//! - `upstream_peer` and `fail_to_connect` pick the peer and retry another pool member
//!   ([`upstream`]);
//! - `upstream_request_filter` rewrites the request ([`upstream::rewrite`]);
//! - `response_filter` tags the response with the request id and the session's cookies
//!   ([`headers::rewrite_response`]);
//! - `fail_to_proxy` turns upstream failures into replies ([`upstream::failure`]);
//! - `logging` writes the access log line and the metrics ([`access_log`]).
//!
//! Per-request state lives in [`Ctx`].

pub(crate) mod access_log;
pub(crate) mod challenge;
pub(crate) mod credential;
pub(crate) mod ctx;
pub(crate) mod dispatch;
pub(crate) mod forward_auth;
pub(crate) mod front;
pub(crate) mod gate;
pub mod headers;
pub(crate) mod identity;
pub(crate) mod pool;
pub(crate) mod request_id;
pub(crate) mod respond;
pub(crate) mod routes;
pub(crate) mod screen;
pub(crate) mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::Config;
use crate::oidc::Providers;
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;
use crate::ops::telemetry::{self, RequestTrace};
use crate::reply::Reply;
use crate::session::revocations::Revocations;
use crate::store::Store;
use access_log::AccessLog;
use ctx::Ctx;
use dispatch::{BodyLimit, Dispatch};
use routes::{ResolveError, Route};
use upstream::{Forwarding, Upstream};

/// Everything the hot path needs, built once from the validated config.
#[derive(Debug)]
pub(crate) struct Tollgate {
    dispatch: Dispatch,
    access_log: AccessLog,
    /// Read on every request for a graceful upgrade under way ([`Readiness::handed_over`]).
    readiness: Arc<Readiness>,
    forwarding: Forwarding,
    /// `Strict-Transport-Security` for responses over TLS (`[tls] hsts`).
    hsts: Option<HeaderValue>,
}

impl Tollgate {
    pub(crate) fn new(
        config: &Config,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        providers: Arc<Providers>,
        revocations: Arc<Revocations>,
        store: Option<Arc<Store>>,
    ) -> Result<Self, ResolveError> {
        let dispatch = Dispatch::new(
            config,
            metrics.clone(),
            readiness.clone(),
            providers,
            revocations,
            store,
        )?;
        Ok(Tollgate {
            access_log: AccessLog::new(dispatch.routes(), metrics),
            dispatch,
            readiness,
            forwarding: Forwarding {
                proto: if config.server.secure_cookies {
                    "https"
                } else {
                    "http"
                },
                forwarded_host: config.server.forwarded_host.clone(),
            },
            hsts: config.tls.as_ref().and_then(|t| t.hsts.clone()),
        })
    }

    /// The routes' upstream pools (kept resolved and checked by [`pool::PoolService`]).
    pub(crate) fn pools(&self) -> Vec<Arc<pool::Pool>> {
        self.dispatch.routes().pools()
    }

    /// The `Strict-Transport-Security` value for this request's responses, over TLS only.
    fn hsts(&self, ctx: &Ctx) -> Option<&HeaderValue> {
        (ctx.tls != "none").then_some(self.hsts.as_ref()).flatten()
    }

    fn route(&self, ctx: &Ctx) -> pingora::Result<&Route> {
        ctx.route
            .and_then(|i| self.dispatch.routes().get(i))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no route chosen"))
    }

    /// Writes `reply` as the response, recording why tollgate answered itself.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reply: &Reply,
    ) -> pingora::Result<()> {
        ctx.outcome = reply.outcome();
        respond::write(session, reply, &ctx.request_id, self.hsts(ctx)).await
    }

    /// Rewrites `upstream_request` (a copy of `req`) for `upstream` ([`upstream::rewrite`]).
    pub(crate) fn rewrite_upstream(
        &self,
        req: &RequestHeader,
        upstream_request: &mut RequestHeader,
        upstream: &Upstream<'_>,
    ) -> Result<(), headers::RewriteError> {
        upstream::rewrite(
            req,
            upstream_request,
            upstream,
            &self.forwarding,
            self.dispatch.cookie_name(),
        )
    }

    /// Where requests go and the decision core (the fuzz harness drives them; the server
    /// shares its session service with the admin API).
    pub(crate) fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// No downstream modules. Pingora's default installs a response-compression module that
    /// is disabled (level 0): an allocation and a filter call per response for nothing, since
    /// tollgate never compresses (its upstreams do, and the SPA's assets come compressed).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        if self.readiness.handed_over() {
            // A graceful upgrade is under way: this connection ends with this response.
            session.set_keepalive(None);
        }
        ctx.request_id = request_id::from_headers(&session.req_header().headers);
        ctx.protocol = if session.is_http2() { "h2" } else { "h1" };
        if session.is_http2()
            && session.req_header().uri.path() == "/login"
            && !session
                .req_header()
                .headers
                .contains_key(http::header::HOST)
        {
            // HTTP/2 names the host in `:authority`; `/login` picks a provider by `Host` (its
            // `hosts`), as over HTTP/1.1.
            if let Some(authority) = session.req_header().uri.authority().map(|a| a.to_string()) {
                let _ = session
                    .req_header_mut()
                    .insert_header(http::header::HOST, authority);
            }
        }
        ctx.tls = access_log::tls_version(session);
        if telemetry::enabled() {
            let req = session.req_header();
            ctx.trace = RequestTrace::start(
                &req.headers,
                req.method.as_str(),
                req.uri.path(),
                &ctx.request_id,
            );
        }
        let body = match self.dispatch.own_body(session, &ctx.request_id).await {
            Ok(body) => body,
            Err(fault) => {
                self.answer(session, ctx, &Reply::from(fault)).await?;
                return Ok(true);
            }
        };
        // Traced: the provider and store calls made for this request are its span's children.
        let handled = match ctx.trace.as_ref().map(|t| t.cx.clone()) {
            None => self.dispatch.handle(session, ctx, body.as_deref()).await,
            Some(cx) => {
                use opentelemetry::context::FutureExt;
                self.dispatch
                    .handle(session, ctx, body.as_deref())
                    .with_context(cx)
                    .await
            }
        };
        let Some(reply) = handled else {
            return Ok(false);
        };
        self.answer(session, ctx, &reply).await?;
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        upstream::upload_deadline(session, body, end_of_stream, ctx).inspect_err(|_| {
            self.dispatch
                .body_timed_out(&ctx.request_id, BodyLimit::Route)
        })
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let route = self.route(ctx)?;
        upstream::peer(route, session, ctx)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        // `tollgate_upstream_connections_total{reused}`: how well the keep-alive pool serves.
        self.dispatch
            .gate()
            .sessions()
            .metrics()
            .upstream_connection(reused);
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let route = ctx.route.and_then(|i| self.dispatch.routes().get(i));
        upstream::connect_failed(route, ctx, &mut e);
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
        if upstream_response.status.as_u16() == 401 && ctx.route.is_some() {
            // RFC 9470: the upstream asks for a stronger or more recent login. Answered as a
            // route's own step-up rule is, through `fail_to_proxy` (the upstream's body is
            // not read; its connection is not reused).
            if let Some(c) = challenge::step_up(
                upstream_response
                    .headers
                    .get_all(http::header::WWW_AUTHENTICATE)
                    .iter()
                    .map(|v| v.as_bytes()),
            ) {
                if c.unusable {
                    // A login link would not satisfy it: the SPA would log in again and again.
                    tracing::warn!(request_id = %ctx.request_id, "the upstream asks for a step-up login with acr_values or max_age that /login cannot ask for");
                    ctx.replace = Some(crate::reply::Fault::StepUpNotMet);
                    return Err(Error::explain(
                        ErrorType::HTTPStatus(401),
                        "the upstream asks for a step-up login tollgate cannot ask for",
                    ));
                }
                tracing::info!(request_id = %ctx.request_id, "the upstream asks for a step-up login");
                let provider = ctx
                    .provider
                    .as_deref()
                    .unwrap_or(crate::config::DEFAULT_PROVIDER);
                self.dispatch
                    .gate()
                    .sessions()
                    .metrics()
                    .step_up(provider, "upstream");
                ctx.replace = Some(gate::step_up_required(
                    ctx.provider
                        .as_deref()
                        .unwrap_or(crate::config::DEFAULT_PROVIDER),
                    c.acr_values,
                    c.max_age,
                ));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(401),
                    "the upstream asks for a step-up login",
                ));
            }
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
            cookie_name: self.dispatch.cookie_name(),
            set_cookies: std::mem::take(&mut ctx.set_cookies),
            private: ctx.private,
        };
        headers::rewrite_response(upstream_response, rw)
            .map_err(|e| Error::because(ErrorType::InternalError, "rewriting the response", e))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (fault, upload_timed_out) = match ctx.replace.take() {
            Some(fault) => (Some(fault), false),
            None => upstream::failure(e, session, ctx),
        };
        if upload_timed_out {
            self.dispatch
                .body_timed_out(&ctx.request_id, BodyLimit::Route);
        }
        let mut code = fault.as_ref().map_or(0, |f| f.status());
        if session.response_written().is_some() {
            // Headers already went out (failure mid-body): the connection just ends.
            code = 0;
        } else if let Some(fault) = fault {
            // Pingora does not reuse a connection after a proxy failure; say so in the
            // response (`Connection: close`) so that clients do not send the next request on it.
            session.set_keepalive(None);
            // The gate's cookie lines (a refreshed session's new tokens, an upstream's step-up
            // answer included) go out with the error: the browser must not keep a spent
            // refresh token because the upstream failed.
            let reply = Reply::from(fault).with_cookies(std::mem::take(&mut ctx.set_cookies));
            if let Err(write_err) = self.answer(session, ctx, &reply).await {
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
        access_log::summary(session, ctx)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.access_log
            .record(session, e, ctx, self.dispatch.routes());
    }
}
