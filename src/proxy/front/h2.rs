//! HTTP/2 connections (TLS with ALPN `h2`): streams as tasks, at most
//! `h2_max_concurrent_streams` at once, each under `write_timeout`; GOAWAY when draining.

use std::sync::Arc;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self as h2_server, H2Accept, HttpSession as H2Session};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;

use super::refuse;
use super::shared::Shared;
use crate::ops::metrics::Metrics;
use crate::reply::{Fault, HeadLimit, Reply};

/// Streams on one HTTP/2 connection (TLS with ALPN `h2`): each request is a task; the
/// connection closes after `keepalive_timeout` without streams, and says GOAWAY at shutdown or
/// once draining has started and it has answered a request. At a graceful upgrade draining
/// starts when the sockets go to the new process, five seconds before shutdown: clients move
/// there at once, as HTTP/1.1 clients do on `Connection: close`. (h2 sends GOAWAY for the
/// highest stream id first, then the last one it took once a ping's round trip has passed, so
/// requests in flight are not refused.)
pub(super) async fn serve_h2<A>(
    stream: Stream,
    app: &Arc<A>,
    shared: &Shared,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let limits = &shared.limits;
    let handshake = tokio::time::timeout(
        limits.header_read_timeout,
        h2_server::handshake(stream, Some(shared.h2.clone())),
    )
    .await;
    let Ok(Ok(mut conn)) = handshake else {
        shared.metrics.limit("header_read_timeout");
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut closing = shutdown.clone();
    let mut draining = shared.drain_started.subscribe();
    let mut goaway = false;
    // Whether a request on this connection has been answered: see the draining branch.
    let mut answered = false;
    let mut rejected = 0usize;
    loop {
        let idle = tasks.is_empty();
        let next = tokio::select! {
            biased;
            _ = closing.wait_for(|down| *down), if !goaway => {
                conn.graceful_shutdown();
                goaway = true;
                continue;
            }
            // Only once a request on the connection has been answered: a client's first
            // request on a new connection is not retried when GOAWAY comes before it is sent
            // (hyper's pool retries only on a reused connection), and after the handover this
            // process still accepts for a while, so a client moving away may well land here
            // again. Not at the first stream either: hyper may send requests that were waiting
            // for the connection before the one that opened it. By the first answer, all
            // requests queued at connect time are out.
            _ = draining.wait_for(|d| *d), if !goaway && answered => {
                conn.graceful_shutdown();
                goaway = true;
                continue;
            }
            Some(_) = tasks.join_next(), if !idle => {
                answered = true;
                continue;
            }
            accepted = H2Session::from_h2_conn(&mut conn, digest.clone()) => accepted,
            _ = tokio::time::sleep(limits.keepalive_timeout), if idle && !goaway => {
                shared.metrics.limit("keepalive_timeout");
                break;
            }
        };
        match next {
            Ok(Some(H2Accept::Session(h2))) => {
                if h2_field_count(&h2.req_header().headers) > limits.max_headers {
                    shared.metrics.limit("header_count");
                    let mut h2 = h2;
                    // Like every stream's: a client that gives no window cannot hold it.
                    h2.set_write_timeout(Some(limits.write_timeout));
                    tasks.spawn(too_many_h2_fields(h2, shared.metrics.clone()));
                    continue;
                }
                let (app, shutdown) = (app.clone(), shutdown.clone());
                let mut session = ServerSession::new_http2(h2);
                // A stream the client gives no flow-control window (or too little) waits
                // for it at most this long per write, then ends and frees its upstream
                // connection; the connection itself is watched by `Paced`.
                session.set_write_timeout(Some(limits.write_timeout));
                tasks.spawn(async move {
                    app.process_new_http(session, &shutdown).await;
                });
            }
            Ok(Some(H2Accept::Rejected)) => {
                rejected += 1;
                if rejected >= 32 {
                    break;
                }
            }
            _ => break,
        }
    }
    drop(conn);
    // Never abort a request: each ends by itself (and logs).
    while tasks.join_next().await.is_some() {}
}

/// The header fields of an HTTP/2 request as `max_headers` counts them: browsers send each
/// cookie as a field of its own over HTTP/2 (RFC 9113 §8.2.3), which count as the one `Cookie`
/// field they are over HTTP/1.1 (their bytes count against `max_header_bytes` and
/// `max_cookie_bytes` all the same).
fn h2_field_count(headers: &http::HeaderMap) -> usize {
    let cookies = headers.get_all(http::header::COOKIE).iter().count();
    headers.len() - cookies.saturating_sub(1)
}

/// `431` for an HTTP/2 request with more header fields than `max_headers`.
async fn too_many_h2_fields(mut h2: H2Session, metrics: Metrics) {
    let request_id = crate::proxy::request_id::generate();
    tracing::warn!(request_id = %request_id, limit = "header_count", "request head refused with 431");
    metrics.request("-", 431);
    let reply = Reply::from(Fault::HeaderFieldsTooLarge(HeadLimit::H2Fields));
    let Ok((resp, body)) = refuse::h2(&reply, &request_id) else {
        return;
    };
    if h2.write_response_header(Box::new(resp), false).is_ok() {
        let _ = h2.write_body(body, true).await;
    }
}
