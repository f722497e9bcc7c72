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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::proxy::front::shared::testing;

    /// Every test ends within this, whatever happens.
    const BOUND: Duration = Duration::from_secs(10);

    /// A client and the server's end of a connection in memory; the pipe holds at most
    /// `pipe` bytes, so a client's bytes reach the server in reads of at most that many.
    fn connection(pipe: usize) -> (DuplexStream, Stream) {
        let (client, server) = tokio::io::duplex(pipe);
        (client, Box::new(server))
    }

    fn watch(down: bool) -> (tokio::sync::watch::Sender<bool>, ShutdownWatch) {
        tokio::sync::watch::channel(down)
    }

    /// Reads a head that `client_sends` (then keeps the connection open), within `limits`.
    async fn read_with(
        limits: crate::config::Limits,
        pipe: usize,
        first: bool,
        client_sends: &[u8],
    ) -> (Result<(), NoHead>, BytesMut) {
        let shared = testing::shared(limits);
        let (mut client, mut server) = connection(pipe);
        let (_down, shutdown) = watch(false);
        let sent = client_sends.to_vec();
        // The client sends, then keeps the connection open until the test ends.
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&sent).await;
            std::future::pending::<()>().await;
            drop(client);
        });
        let mut buf = BytesMut::new();
        let r = tokio::time::timeout(
            BOUND,
            read_head(&mut server, &mut buf, first, &shared, &shutdown),
        )
        .await
        .expect("bounded");
        writer.abort();
        (r, buf)
    }

    /// A head of exactly `len` bytes with `fields` header fields.
    fn head(len: usize, fields: usize) -> Vec<u8> {
        let mut h = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..fields {
            h.extend_from_slice(format!("x-{i:03}: v\r\n").as_bytes());
        }
        let pad = len - h.len() - b"x-pad: \r\n\r\n".len();
        h.extend_from_slice(format!("x-pad: {}\r\n\r\n", "a".repeat(pad)).as_bytes());
        assert_eq!(h.len(), len);
        h
    }

    #[tokio::test]
    async fn a_head_of_exactly_max_header_bytes_passes_one_more_gets_431() {
        let mut limits = testing::limits();
        limits.max_header_bytes = 600;
        let (r, buf) = read_with(limits.clone(), 64, true, &head(600, 0)).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            &buf[..],
            &head(600, 0)[..],
            "the whole head, put back for Pingora"
        );
        let (r, _) = read_with(limits, 64, true, &head(601, 0)).await;
        assert!(matches!(r, Err(NoHead::TooLarge("header_bytes"))), "{r:?}");
    }

    #[tokio::test]
    async fn exactly_max_headers_fields_pass_one_more_gets_431() {
        let mut limits = testing::limits();
        limits.max_headers = 10;
        // The padding line is a field too: 9 + 1 = 10.
        let (r, _) = read_with(limits.clone(), 4096, true, &head(300, 9)).await;
        assert!(r.is_ok(), "{r:?}");
        let (r, _) = read_with(limits, 4096, true, &head(300, 10)).await;
        assert!(matches!(r, Err(NoHead::TooLarge("header_count"))), "{r:?}");
    }

    #[tokio::test]
    async fn a_head_split_over_many_reads_is_read_whole_with_what_follows() {
        // A pipe of 3 bytes: the head arrives in reads of 1 to 3 bytes, "\r\n\r\n" split too.
        let mut sent = b"POST /x HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\n\r\n".to_vec();
        let head_len = sent.len();
        sent.extend_from_slice(b"BODY");
        let (r, buf) = read_with(testing::limits(), 3, true, &sent).await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(&buf[..head_len], &sent[..head_len]);
        // Whatever came after the head stays in the buffer for Pingora (here: none or part of
        // the body, depending on where the last read ended).
        assert!(sent.starts_with(&buf), "{buf:?}");
    }

    #[tokio::test]
    async fn lf_only_heads_end_like_crlf_heads() {
        for sent in [
            &b"GET / HTTP/1.1\nHost: a\n\n"[..],
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            // Empty lines before the request line are skipped (RFC 9112 §2.2).
            &b"\r\n\nGET / HTTP/1.1\nHost: a\r\n\n"[..],
        ] {
            let (r, buf) = read_with(testing::limits(), 5, true, sent).await;
            assert!(r.is_ok(), "{sent:?}: {r:?}");
            assert_eq!(&buf[..], sent);
        }
    }

    #[tokio::test]
    async fn a_head_that_never_ends_runs_into_header_read_timeout() {
        let mut limits = testing::limits();
        limits.header_read_timeout = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        let (r, _) = read_with(limits, 64, true, b"GET / HTTP/1.1\r\nHost: a\r\n").await;
        assert!(matches!(r, Err(NoHead::Slow)), "{r:?}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn between_requests_idle_closed_and_shutdown_end_the_wait() {
        // The client closes: gone.
        let shared = testing::shared(testing::limits());
        let (client, mut server) = connection(64);
        drop(client);
        let (_down, shutdown) = watch(false);
        let r = tokio::time::timeout(
            BOUND,
            read_head(&mut server, &mut BytesMut::new(), false, &shared, &shutdown),
        )
        .await
        .expect("bounded");
        assert!(matches!(r, Err(NoHead::Gone)), "{r:?}");

        // Idle past keepalive_timeout.
        let mut limits = testing::limits();
        limits.keepalive_timeout = Duration::from_millis(50);
        let shared = testing::shared(limits);
        let (_client, mut server) = connection(64);
        let r = tokio::time::timeout(
            BOUND,
            read_head(&mut server, &mut BytesMut::new(), false, &shared, &shutdown),
        )
        .await
        .expect("bounded");
        assert!(matches!(r, Err(NoHead::Idle)), "{r:?}");

        // Shutdown while idle: at once, although keepalive_timeout is long.
        let shared = testing::shared(testing::limits());
        let (_client, mut server) = connection(64);
        let (down, shutdown) = watch(false);
        let mut buf = BytesMut::new();
        let read = read_head(&mut server, &mut buf, false, &shared, &shutdown);
        let r = tokio::time::timeout(BOUND, async {
            let (r, _) = tokio::join!(read, async {
                down.send_replace(true);
            });
            r
        })
        .await
        .expect("bounded");
        assert!(matches!(r, Err(NoHead::Idle)), "{r:?}");
    }

    #[tokio::test]
    async fn the_431_goes_out_whole_and_the_rest_of_the_request_is_read_away() {
        let shared = testing::shared(testing::limits());
        let (mut client, mut server) = connection(256);
        let answer = async {
            too_large(&mut server, "header_count", &shared).await;
        };
        let client_side = async {
            // The client is still sending when the answer comes; it reads it all.
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let send = async {
                let _ = wr.write_all(&[b'x'; 1000]).await;
            };
            let receive = async {
                let mut got = Vec::new();
                let mut chunk = [0u8; 512];
                loop {
                    let n = rd.read(&mut chunk).await.unwrap_or(0);
                    got.extend_from_slice(&chunk[..n]);
                    if n == 0 || got.ends_with(b"}") {
                        break got;
                    }
                }
            };
            let ((), got) = tokio::join!(send, receive);
            drop(client);
            got
        };
        let ((), got) = tokio::time::timeout(BOUND, async { tokio::join!(answer, client_side) })
            .await
            .expect("bounded");
        let text = String::from_utf8(got).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(
            text.contains(r#""message":"the request head is over the server.max_headers limit""#),
            "{text}"
        );
        let counted = testing::metric_line(
            &shared,
            "tollgate_requests_total{route=\"-\",status=\"431\"}",
        );
        assert!(counted.is_some_and(|l| l.ends_with(" 1")));
    }
}
