//! The upstream side of a proxied request: which peer takes it (a route's fixed peer or a pool
//! member, sticky by session or client address), another member when one refuses, the
//! rewritten request with its credentials and DPoP proof, the upload's deadline, and what a
//! failure to proxy answers.

use std::net::IpAddr;
use std::time::Instant;

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use super::credential::DpopGrant;
use super::ctx::Ctx;
use super::headers::{self, Identity, RewriteError, UpstreamRewrite};
use super::pool::Member;
use super::routes::Route;
use crate::reply::Fault;

/// The error type of a pool with no member to take a request (`503`).
const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";

/// The error type of a proxied request body that did not arrive within the route's
/// `read_timeout` (`408`).
const REQUEST_BODY_TIMEOUT: &str = "request body timeout";

/// Attempts of one request on a pool whose members refuse connections.
const MAX_POOL_ATTEMPTS: usize = 3;

/// What every upstream request says about where it came from.
#[derive(Debug)]
pub(crate) struct Forwarding {
    /// `X-Forwarded-Proto`: `https` or `http`.
    pub(crate) proto: &'static str,
    /// `public_url`'s authority, for `X-Forwarded-Host`.
    pub(crate) forwarded_host: HeaderValue,
}

/// What the upstream request of a routed request is rewritten with.
#[derive(Debug)]
pub(crate) struct Upstream<'a> {
    pub(crate) route: &'a Route,
    /// The normalised downstream path the request was routed on.
    pub(crate) path: &'a str,
    pub(crate) bearer: Option<&'a HeaderValue>,
    pub(crate) identity: Option<&'a Identity>,
    pub(crate) dpop: Option<&'a DpopGrant>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) request_id: &'a str,
    /// The pool member chosen (`None` on a route with a fixed peer).
    pub(crate) member: Option<&'a Member>,
}

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

/// The peer for this attempt of the request in `ctx` on `route`: its fixed peer, or a pool
/// member (recorded in `ctx`) other than those that refused already.
pub(crate) fn peer(
    route: &Route,
    session: &Session,
    ctx: &mut Ctx,
) -> pingora::Result<Box<HttpPeer>> {
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
pub(crate) fn connect_failed(route: Option<&Route>, ctx: &mut Ctx, e: &mut Error) {
    let pool = route.and_then(|r| r.pool.as_ref());
    if let (Some(pool), Some(member)) = (pool, ctx.member.take()) {
        pool.eject(&member);
        ctx.failed.push(member.addr);
        e.set_retry(ctx.failed.len() < MAX_POOL_ATTEMPTS && pool.has_other(&ctx.failed));
    }
}

/// Rewrites `upstream_request` (a copy of `req`) for `upstream`: path, credentials,
/// cookies and forwarding headers ([`headers::rewrite`]).
pub(crate) fn rewrite(
    req: &RequestHeader,
    upstream_request: &mut RequestHeader,
    upstream: &Upstream<'_>,
    forwarding: &Forwarding,
    cookie_name: &str,
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
            cookie_name,
            client_ip: upstream.client_ip,
            proto: forwarding.proto,
            forwarded_host: &forwarding.forwarded_host,
            request_id: upstream.request_id,
            upstream_host: upstream
                .member
                .map_or(&route.host_header, |m| &m.host_header),
            path: changed.then_some(new_path.as_ref()),
        },
    )
}

/// A proxied body must arrive whole within the route's `read_timeout` of its first bytes
/// (not per read: a byte every few seconds does not keep it going). HTTP/1.1 reads of it
/// wait at most until then (Pingora's own wait is 60 s per read, restarted by every byte).
/// A body whose first bytes never come, and over HTTP/2 (no read timeout in Pingora) one
/// that stalls, is ended by the upstream's read timeout instead: `408` all the same
/// ([`failure`]). An upgraded connection's stream (WebSocket) is no upload: it lives as
/// long as it is used. `Err` when the deadline has passed.
pub(crate) fn upload_deadline(
    session: &mut Session,
    body: &Option<bytes::Bytes>,
    end_of_stream: bool,
    ctx: &mut Ctx,
) -> Result<(), Box<Error>> {
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
        return Err(Error::new_down(ErrorType::Custom(REQUEST_BODY_TIMEOUT)));
    }
    session.set_read_timeout(Some(deadline - now));
    Ok(())
}

/// What a failure to proxy answers (`None`: nobody is left to answer), and whether it was an
/// upload that did not arrive in time (to be counted as such).
pub(crate) fn failure(e: &Error, session: &mut Session, ctx: &Ctx) -> (Option<Fault>, bool) {
    let fault = proxy_fault(e);
    if fault == Some(Fault::UpstreamTimeout)
        && ctx.upload_timeout.is_some()
        && !session.was_upgraded()
        && !session.is_body_done()
    {
        // The upstream waited past read_timeout for an upload that had not arrived (over
        // HTTP/2, which has no per-read timeout, this is how a stalled upload ends).
        return (Some(Fault::RequestTimeout), true);
    }
    (fault, false)
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
