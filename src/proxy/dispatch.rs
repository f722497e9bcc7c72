//! What `request_filter` decides: where a request goes (one of tollgate's endpoints or a
//! route), and, on a route, what the decision core says ([`Gate::decide`]). A reply to send
//! comes back as a [`Reply`]; a request to proxy leaves its grant in the [`Ctx`].

use std::borrow::Cow;
use std::sync::Arc;

use pingora::http::RequestHeader;
use pingora::proxy::Session;

use super::ctx::Ctx;
use super::forward_auth::ForwardAuth;
use super::gate::{Gate, Policy};
use super::routes::{ResolveError, RouteTable};
use super::screen::screen;
use crate::config::{Config, Limits};
use crate::endpoints::{Endpoint, Endpoints};
use crate::oidc::Providers;
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::revocations::Revocations;
use crate::session::SessionCodec;
use crate::sessions::csrf::CsrfPolicy;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::target::Target;

/// Room in `[server] max_cookie_bytes` kept for cookies besides the session's (a pending
/// login or logout, the application's own): a session that needs more is refused at login.
const COOKIE_ROOM: usize = 2048;

/// Where a request goes ([`Dispatch::destination`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// One of tollgate's own endpoints (never proxied).
    Endpoint(Endpoint),
    /// The route with this index in the route table.
    Route(usize),
    /// `[forward_auth] path`: an ingress asks about a request it is about to proxy.
    ForwardAuth,
}

/// Which limit a request body did not arrive within.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyLimit {
    /// `[server] body_read_timeout`: a body tollgate reads itself.
    Server,
    /// The route's `read_timeout`: a proxied upload.
    Route,
}

/// The routes, the endpoints and the decision core, built once from the validated config.
#[derive(Debug)]
pub(crate) struct Dispatch {
    routes: RouteTable,
    gate: Gate,
    endpoints: Endpoints,
    providers: Arc<Providers>,
    metrics: Metrics,
    limits: Limits,
    /// `[server] redirect_to_https`: plain requests get `308` to `public_url`.
    redirect_to_https: bool,
    public_origin: String,
    /// `[forward_auth]`, when on.
    forward_auth: Option<ForwardAuth>,
}

impl Dispatch {
    pub(crate) fn new(
        config: &Config,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        providers: Arc<Providers>,
        revocations: Arc<Revocations>,
        store: Option<Arc<Store>>,
    ) -> Result<Dispatch, ResolveError> {
        let sessions = Sessions::new(
            SessionCodec::new(&config.session, config.server.secure_cookies)
                .with_sealer(providers.default_provider().sealer().clone())
                .with_cookie_budget(
                    config
                        .server
                        .limits
                        .max_cookie_bytes
                        .saturating_sub(COOKIE_ROOM),
                ),
            revocations,
            store,
            CsrfPolicy::new(&config.csrf, &config.server.public_origin)
                .with_origins(config.host_origins().into_iter().map(|(_, origin)| origin)),
            metrics.clone(),
            config.session.storage,
        )
        .with_device_binding(config.session.device_binding == crate::config::DeviceBinding::Dbsc);
        let gate = Gate::new(
            Arc::new(sessions),
            metrics.clone(),
            config.session.refresh_skew.as_secs(),
            config.session.idle_timeout.as_secs(),
        )
        .with_groups_claim(&config.oidc.groups_claim);
        let gate = config.providers.iter().fold(gate, |g, p| {
            g.with_provider_groups_claim(&p.name, &p.groups_claim)
        });
        let routes = RouteTable::new(
            &config.routes,
            config.server.hosts_file.as_deref(),
            &metrics,
        )?;
        Ok(Dispatch {
            routes,
            gate,
            endpoints: Endpoints::new(
                providers.clone(),
                readiness,
                config.oidc.callback_path.clone(),
                config.oidc.backchannel_logout_path.clone(),
            )
            .with_binding(crate::binding::Binding::from_config(config)),
            providers,
            metrics,
            limits: config.server.limits.clone(),
            redirect_to_https: config.server.redirect_to_https,
            public_origin: config.server.public_origin.clone(),
            forward_auth: config
                .forward_auth
                .clone()
                .map(|f| ForwardAuth::new(f, &config.server.public_origin)),
        })
    }

    pub(crate) fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The decision core (the fuzz harness drives it; its session service is shared with
    /// the admin API).
    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The session cookie's name (the upstream never gets it).
    pub(crate) fn cookie_name(&self) -> &str {
        self.gate.sessions().codec().cookie_name()
    }

    /// Where `req` goes, before any session is read: its checked target ([`screen`]) and
    /// one of tollgate's endpoints or a route (`RouteTable::resolve`).
    /// On `[forward_auth] listen` only the forward-auth endpoint is served, and it is served
    /// nowhere else (`forward_auth_listener`).
    pub(crate) fn destination<'r>(
        &self,
        req: &'r RequestHeader,
        request_id: &str,
        forward_auth_listener: bool,
    ) -> Result<(Target<'r>, Destination), Fault> {
        let target = screen(
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
        if forward_auth_listener {
            return match self.forward_auth.as_ref() {
                Some(f) if f.serves(&target.path) => Ok((target, Destination::ForwardAuth)),
                _ => Err(Fault::NotFound),
            };
        }
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

    /// The body of a request to one of tollgate's own endpoints that reads one (`None` for any
    /// other request): whole, within `[server] max_body_bytes` and `body_read_timeout`.
    pub(crate) async fn own_body(
        &self,
        session: &mut Session,
        request_id: &str,
    ) -> Result<Option<bytes::Bytes>, Fault> {
        if !self.endpoints.takes_body(session.req_header().uri.path()) {
            return Ok(None);
        }
        let limits = &self.limits;
        let read = tokio::time::timeout(
            limits.body_read_timeout,
            read_body(session, limits.max_body_bytes),
        );
        match read.await.unwrap_or(Err(Fault::RequestTimeout)) {
            Ok(body) => Ok(Some(body)),
            Err(fault) => {
                match fault {
                    Fault::PayloadTooLarge => self.metrics.limit("body_bytes"),
                    Fault::RequestTimeout => self.body_timed_out(request_id, BodyLimit::Server),
                    _ => {}
                }
                Err(fault)
            }
        }
    }

    /// Counts and logs a request body that did not arrive within `limit` (`408`).
    pub(crate) fn body_timed_out(&self, request_id: &str, limit: BodyLimit) {
        self.metrics.limit("body_read_timeout");
        match limit {
            BodyLimit::Server => tracing::info!(
                request_id,
                "request body did not arrive within server.body_read_timeout"
            ),
            BodyLimit::Route => tracing::info!(
                request_id,
                "request body did not arrive within the route's read_timeout"
            ),
        }
    }

    /// Everything `request_filter` decides, as a reply to send or `None` to proxy (with the
    /// grant in `ctx`).
    pub(crate) async fn handle(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        body: Option<&[u8]>,
    ) -> Option<Reply> {
        let req = session.req_header();
        let forward_auth_listener = self.forward_auth.as_ref().is_some_and(|f| {
            session
                .server_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|local| f.listens_on(*local))
        });
        let (target, destination) =
            match self.destination(req, &ctx.request_id, forward_auth_listener) {
                Ok(d) => d,
                Err(fault) => return Some(Reply::from(fault)),
            };
        if self.redirect_to_https
            && !forward_auth_listener
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
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
        };
        let index = match destination {
            Destination::Endpoint(endpoint) => {
                let sessions = self.gate.sessions();
                return Some(self.endpoints.answer(endpoint, &facts, sessions).await);
            }
            Destination::Route(index) => index,
            Destination::ForwardAuth => {
                let (reply, route) = self.forward_auth(req, &target.path, &facts).await;
                ctx.route = route;
                return Some(reply);
            }
        };
        let Some(route) = self.routes.get(index) else {
            return Some(Reply::from(Fault::Internal));
        };
        let policy = Policy {
            auth: route.auth,
            require: route.require.as_ref(),
            identity_headers: route.identity_headers,
            dpop: route.dpop,
            audience: route.audience.as_ref(),
            require_device_binding: route.require_device_binding,
            providers: &route.providers,
        };
        ctx.route = Some(index);
        let grant = match self.gate.decide(policy, &facts, &self.providers).await {
            Ok(grant) => grant,
            Err(reply) => return Some(reply),
        };
        ctx.bearer = grant.bearer;
        ctx.identity = grant.identity;
        ctx.dpop = grant.dpop;
        ctx.set_cookies = grant.set_cookies;
        // A session's affinity is never 0.
        ctx.private = grant.affinity != 0 && !route.cache_public;
        ctx.affinity = grant.affinity;
        ctx.provider = grant.provider;
        ctx.upload_timeout = Some(route.read_timeout);
        if let Cow::Owned(p) = target.path {
            ctx.path = Some(p);
        }
        None
    }
}

impl Dispatch {
    /// `[forward_auth] path`: decides the request a trusted ingress describes (or, from
    /// anywhere else, this one) as if it had arrived itself, on its route; `200` with what
    /// the ingress copies upstream, or the refusal it would have had. With the route it was
    /// decided on, for the access log.
    async fn forward_auth(
        &self,
        req: &RequestHeader,
        path: &str,
        facts: &Facts<'_>,
    ) -> (Reply, Option<usize>) {
        let reply = |r: Reply| (r, None);
        let Some(fa) = self.forward_auth.as_ref() else {
            return reply(Reply::from(Fault::Internal));
        };
        let rid = facts.request_id;
        let original = match fa.describe(
            &req.method,
            path,
            req.uri.query(),
            &req.headers,
            facts.client,
            rid,
        ) {
            Ok(o) => o,
            Err(fault) => return reply(Reply::from(fault)),
        };
        let target = match crate::target::check(original.target.as_bytes(), original.path()) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(request_id = rid, reason = %e, "forward-auth: original target refused");
                return reply(Reply::from(Fault::BadPath));
            }
        };
        if original.trusted && self.endpoints.find(&target.path).is_some() {
            // tollgate's own endpoints (`/login`, `/callback`, …) check their own requests.
            return reply(Reply::empty(200).with_outcome("forward_auth"));
        }
        let index = match self.routes.resolve(&target) {
            Ok(i) => i,
            Err(fault) => {
                tracing::info!(
                    request_id = rid,
                    code = fault.code(),
                    "forward-auth: not routed"
                );
                return reply(Reply::from(fault));
            }
        };
        let Some(route) = self.routes.get(index) else {
            return reply(Reply::from(Fault::Internal));
        };
        let policy = Policy {
            auth: route.auth,
            require: route.require.as_ref(),
            // The ingress copies them if it wants them.
            identity_headers: true,
            dpop: route.dpop,
            audience: route.audience.as_ref(),
            require_device_binding: route.require_device_binding,
            providers: &route.providers,
        };
        let facts = Facts {
            method: &original.method,
            query: original.query(),
            ..*facts
        };
        let answer = match self.gate.decide(policy, &facts, &self.providers).await {
            Ok(grant) => fa
                .allowed(&original, grant, route.keep_authorization, rid)
                .unwrap_or_else(Reply::from),
            Err(refused) => refused,
        };
        (answer, Some(index))
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
