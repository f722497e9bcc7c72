//! HTTP/1 connections: each request head is read here first, within `header_read_timeout`,
//! `max_header_bytes` and `max_headers` (`431` beyond), then put back in front of the stream
//! for Pingora, which parses it at once; between requests an idle connection is closed after
//! `keepalive_timeout` or at shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::head::{HeadScanner, Scan};
use super::refuse;
use super::shared::Shared;
use crate::reply::{Fault, HeadLimit, Reply};

/// How long a refused client's remaining request bytes are read (and discarded) after the
/// `431`, so that closing does not reset the connection before the client reads the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Room reserved for each read of a request head.
const READ_CHUNK: usize = 4096;

/// Why no request head was handed to Pingora.
#[derive(Debug)]
enum NoHead {
    /// The client closed, or the connection broke.
    Gone,
    /// Idle past `keepalive_timeout`, or shutting down between requests.
    Idle,
    /// The head did not arrive within `header_read_timeout`.
    Slow,
    /// Too large or too many fields: answer `431`.
    TooLarge(&'static str),
}

/// Requests on one HTTP/1 connection: read a head, hand it to Pingora, repeat while it keeps
/// alive.
pub(super) async fn serve<A>(
    mut stream: Stream,
    app: &Arc<A>,
    shared: &Shared,
    shutdown: &ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        let mut buf = BytesMut::new();
        match read_head(&mut stream, &mut buf, first, shared, shutdown).await {
            Ok(()) => {}
            Err(NoHead::Gone) => return,
            Err(NoHead::Idle) => {
                if !first {
                    shared.metrics.limit("keepalive_timeout");
                }
                return;
            }
            Err(NoHead::Slow) => {
                shared.metrics.limit("header_read_timeout");
                tracing::info!(
                    "connection closed: the request head did not arrive within header_read_timeout"
                );
                return;
            }
            Err(NoHead::TooLarge(limit)) => {
                shared.metrics.limit(limit);
                too_large(&mut stream, limit, shared).await;
                return;
            }
        }
        let mut session = ServerSession::new_http1(stream);
        if let Some(s) = settings.take() {
            s.apply_to_session(&mut session);
        }
        // The head (and whatever came after it) is parsed from here before any network read.
        session.set_pipelined_prefix(buf);
        let closing = *shutdown.borrow() || shared.draining.load(Ordering::Acquire);
        // Only whether to keep the connection: the idle wait itself is `read_head`'s.
        session.set_keepalive(if closing { None } else { Some(60) });
        let Some(reused) = app.process_new_http(session, shutdown).await else {
            return;
        };
        let (next, persisted) = reused.consume();
        stream = next;
        settings = persisted;
        first = false;
    }
}

/// Reads one whole request head (and whatever came with it), within the limits.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    first: bool,
    shared: &Shared,
    shutdown: &ShutdownWatch,
) -> Result<(), NoHead> {
    let limits = &shared.limits;
    let mut scanner = HeadScanner::new(limits.max_header_bytes, limits.max_headers);
    let deadline = if first {
        tokio::time::Instant::now() + limits.header_read_timeout
    } else {
        // Idle until the next request's first byte, at most keepalive_timeout; the head's
        // own deadline starts then.
        let mut closing = shutdown.clone();
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = tokio::time::timeout(limits.keepalive_timeout, stream.read_buf(buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Gone),
                Ok(Ok(n)) => n,
                Err(_) => return Err(NoHead::Idle),
            },
            _ = closing.wait_for(|down| *down) => return Err(NoHead::Idle),
        };
        debug_assert!(n > 0);
        tokio::time::Instant::now() + limits.header_read_timeout
    };
    loop {
        match scanner.scan(buf) {
            Scan::Complete(_) => return Ok(()),
            Scan::TooLarge => return Err(NoHead::TooLarge("header_bytes")),
            Scan::TooManyFields => return Err(NoHead::TooLarge("header_count")),
            Scan::Incomplete => {}
        }
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Gone),
            Ok(Ok(_)) => {}
            Err(_) => return Err(NoHead::Slow),
        }
    }
}

/// Answers `431` to a head over the limits, then closes without resetting the connection.
async fn too_large(stream: &mut Stream, limit: &'static str, shared: &Shared) {
    let request_id = crate::proxy::request_id::generate();
    let head_limit = match limit {
        "header_count" => HeadLimit::Fields,
        _ => HeadLimit::Bytes,
    };
    let reply = refuse::http1(
        &Reply::from(Fault::HeaderFieldsTooLarge(head_limit)),
        &request_id,
    );
    tracing::warn!(request_id = %request_id, limit, "request head refused with 431");
    shared.metrics.request("-", 431);
    if stream.write_all(&reply).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = pingora::protocols::Shutdown::shutdown(&mut **stream).await;
    // Read what the client still sends, so that closing with unread data does not reset the
    // connection before the client has read the 431.
    let mut sink = [0u8; 4096];
    let mut read = 0usize;
    let linger = tokio::time::Instant::now() + LINGER;
    while read < LINGER_BYTES {
        match tokio::time::timeout_at(linger, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => break,
        }
    }
}
