//! Slow readers: a client connection whose writes wait on the client too long is cut off.
//!
//! Pingora 0.9 offers a write timeout and a minimum send rate per write call (`ServerSession::
//! set_write_timeout`, `set_min_send_rate`), but the rate is per call (a 64 KB write may take
//! 64 s at 1 KiB/s, and an 8 MB answer hours), its HTTP/2 session ignores the rate, and neither
//! sees tollgate's own writes outside a session. So the front door puts [`Paced`] between the
//! socket (or TLS) and everything above it. It only acts while a write *waits on the client*
//! (the socket's buffer is full): time the upstream takes to produce an answer, or a quiet
//! server-sent-events stream, never counts.
//!
//! - **No progress:** a write that waits `write_timeout` without a byte taken fails.
//! - **Too slow:** once writes have waited `send_rate_window` in all, the bytes the client took
//!   since the first wait must be at least `min_send_rate` × the window; otherwise the next
//!   wait fails. A client that keeps up starts over with a fresh window.
//!
//! A failed write is an I/O error (`TimedOut`) to Pingora: the request ends, its upstream
//! connection is released (not reused), and the client connection closes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::ops::metrics::Metrics;

/// `[server] write_timeout`, `min_send_rate`, `send_rate_window`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PaceLimits {
    pub(crate) write_timeout: Duration,
    /// Bytes per second; 0: no rate check.
    pub(crate) min_send_rate: u64,
    pub(crate) window: Duration,
}

/// Why a waiting write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stalled {
    NoProgress,
    TooSlow,
}

impl Stalled {
    /// The `tollgate_limits_total` label.
    pub(crate) fn limit(self) -> &'static str {
        match self {
            Stalled::NoProgress => "write_timeout",
            Stalled::TooSlow => "min_send_rate",
        }
    }
}

/// The accounting of one connection's waits on the client (pure: times are passed in).
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// The current window, from the first wait in it.
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    /// Bytes taken by the client since the window started.
    bytes: u64,
    /// Time spent waiting in this window, not counting the wait under way.
    waited: Duration,
    /// When the wait under way started.
    waiting_since: Option<Instant>,
    /// The last time the client took bytes, or the wait under way started.
    progress: Instant,
}

impl Pace {
    /// A write took `n` bytes at `now`.
    pub(crate) fn wrote(&mut self, n: usize, now: Instant, limits: &PaceLimits) {
        let Some(w) = self.window.as_mut() else {
            return;
        };
        if let Some(since) = w.waiting_since.take() {
            w.waited += now.saturating_duration_since(since);
        }
        if n > 0 {
            w.bytes = w.bytes.saturating_add(n as u64);
            w.progress = now;
        }
        // A window whose waiting time is complete and whose rate held: start over.
        if w.waited >= limits.window && w.bytes >= required(limits) {
            self.window = None;
        }
    }

    /// A write waits on the client at `now`: `Err` when the connection is to be cut off,
    /// else the instant to look again (if nothing happens before).
    pub(crate) fn waits(&mut self, now: Instant, limits: &PaceLimits) -> Result<Instant, Stalled> {
        let w = self.window.get_or_insert(Window {
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            progress: now,
        });
        let since = match w.waiting_since {
            Some(since) => since,
            None => {
                // A new wait: time before it (between requests, or while the upstream took
                // its time) is not time without progress.
                w.waiting_since = Some(now);
                w.progress = now;
                now
            }
        };
        if now.saturating_duration_since(w.progress) >= limits.write_timeout {
            return Err(Stalled::NoProgress);
        }
        let mut next = w.progress + limits.write_timeout;
        if limits.min_send_rate > 0 {
            let mut waited = w.waited + now.saturating_duration_since(since);
            if waited >= limits.window {
                if w.bytes < required(limits) {
                    return Err(Stalled::TooSlow);
                }
                // The rate held over this window: the next one starts now, still waiting (a
                // burst before a window's end buys that window, not a long stall after it).
                w.bytes = 0;
                w.waited = Duration::ZERO;
                w.waiting_since = Some(now);
                waited = Duration::ZERO;
            }
            next = next.min(now + (limits.window - waited));
        }
        Ok(next)
    }
}

/// The bytes a window must see.
fn required(limits: &PaceLimits) -> u64 {
    let bytes = limits.min_send_rate as f64 * limits.window.as_secs_f64();
    bytes as u64
}

/// A client stream whose waiting writes are timed ([`Pace`]).
#[derive(Debug)]
pub(crate) struct Paced<S> {
    inner: S,
    limits: PaceLimits,
    pace: Pace,
    /// Wakes the writer when the limit is reached while it waits.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the connection was cut off: every later write fails the same way.
    stalled: Option<Stalled>,
    metrics: Metrics,
}

impl<S> Paced<S> {
    pub(crate) fn new(inner: S, limits: PaceLimits, metrics: Metrics) -> Self {
        Paced {
            inner,
            limits,
            pace: Pace::default(),
            timer: None,
            stalled: None,
            metrics,
        }
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }

    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Accounts for the outcome of one write-side poll of the inner stream.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
        taken: impl FnOnce(&T) -> usize,
    ) -> Poll<std::io::Result<T>> {
        if let Some(s) = self.stalled {
            return Poll::Ready(Err(stalled_error(s)));
        }
        match polled {
            Poll::Ready(Ok(v)) => {
                // Nothing to account while no write has waited (the common case: no clock).
                if self.pace.window.is_some() {
                    self.pace.wrote(taken(&v), Instant::now(), &self.limits);
                }
                Poll::Ready(Ok(v))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.pace.waits(Instant::now(), &self.limits) {
                Err(s) => {
                    self.stalled = Some(s);
                    self.timer = None;
                    self.metrics.limit(s.limit());
                    tracing::info!(
                        limit = s.limit(),
                        "connection cut off: the client does not read its response"
                    );
                    Poll::Ready(Err(stalled_error(s)))
                }
                Ok(at) => {
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    // Registers the waker; a deadline already past is seen on the next poll.
                    if timer.as_mut().poll(cx).is_ready() {
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending
                }
            },
        }
    }
}

fn stalled_error(s: Stalled) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        match s {
            Stalled::NoProgress => "the client took no response bytes within server.write_timeout",
            Stalled::TooSlow => "the client read the response slower than server.min_send_rate",
        },
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, polled, |n| *n)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, polled, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, polled, |()| 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, polled, |()| 0)
    }
}

#[async_trait::async_trait]
impl<S> pingora::protocols::Shutdown for Paced<S>
where
    S: pingora::protocols::Shutdown + Send,
{
    async fn shutdown(&mut self) {
        if self.stalled.is_some() {
            // The client does not read: a TLS close_notify would wait on it too.
            return;
        }
        // Closing flushes (TLS: the rest of the records and close_notify), bounded as a write.
        let _ = tokio::time::timeout(self.limits.write_timeout, self.inner.shutdown()).await;
    }
}

super::stream::delegate_stream_traits!(Paced);

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PaceLimits = PaceLimits {
        write_timeout: Duration::from_secs(30),
        min_send_rate: 1024,
        window: Duration::from_secs(10),
    };

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_client_that_takes_nothing_is_cut_off_after_the_window() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert_eq!(p.waits(t0, &LIMITS), Ok(at(t0, 10_000)));
        assert_eq!(p.waits(at(t0, 9_999), &LIMITS), Ok(at(t0, 10_000)));
        assert_eq!(p.waits(at(t0, 10_000), &LIMITS), Err(Stalled::TooSlow));
    }

    #[test]
    fn without_a_rate_no_progress_for_write_timeout_cuts_off() {
        let limits = PaceLimits {
            min_send_rate: 0,
            ..LIMITS
        };
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert_eq!(p.waits(t0, &limits), Ok(at(t0, 30_000)));
        p.wrote(100, at(t0, 20_000), &limits);
        assert_eq!(p.waits(at(t0, 20_000), &limits), Ok(at(t0, 50_000)));
        assert_eq!(p.waits(at(t0, 50_000), &limits), Err(Stalled::NoProgress));
    }

    #[test]
    fn a_slow_reader_under_the_rate_is_cut_off_and_a_faster_one_is_not() {
        for (per_second, cut) in [(512u64, true), (2048, false)] {
            let t0 = Instant::now();
            let mut p = Pace::default();
            let mut result = Ok(t0);
            // Waits all the time; the client takes `per_second` bytes each second.
            for s in 0..30u64 {
                result = p.waits(at(t0, s * 1000), &LIMITS);
                if result.is_err() {
                    break;
                }
                p.wrote(per_second as usize, at(t0, s * 1000 + 999), &LIMITS);
            }
            assert_eq!(result.is_err(), cut, "{per_second} B/s: {result:?}");
        }
    }

    #[test]
    fn time_not_spent_waiting_does_not_count() {
        // A stream that sends a little now and then to a client that keeps up: each write
        // waits a moment only, for an hour.
        let t0 = Instant::now();
        let mut p = Pace::default();
        for s in 0..3600u64 {
            assert!(p.waits(at(t0, s * 1000), &LIMITS).is_ok(), "second {s}");
            p.wrote(100, at(t0, s * 1000 + 5), &LIMITS);
        }
    }

    #[test]
    fn idle_time_between_waits_is_not_time_without_progress() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert!(p.waits(t0, &LIMITS).is_ok());
        p.wrote(4096, at(t0, 100), &LIMITS);
        // A keep-alive connection's next response, a minute later, waits again.
        assert_eq!(p.waits(at(t0, 60_000), &LIMITS), Ok(at(t0, 69_900)));
    }

    #[test]
    fn a_burst_before_the_windows_end_does_not_buy_a_long_stall() {
        // 10 KiB just before each window ends, then nothing: cut off at the next window's end,
        // not after write_timeout.
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert!(p.waits(t0, &LIMITS).is_ok());
        p.wrote(10_240, at(t0, 9_900), &LIMITS);
        assert_eq!(p.waits(at(t0, 9_900), &LIMITS), Ok(at(t0, 10_000)));
        // The window's waiting time is complete and its rate held: a new one starts.
        assert_eq!(p.waits(at(t0, 10_000), &LIMITS), Ok(at(t0, 20_000)));
        assert_eq!(p.waits(at(t0, 20_000), &LIMITS), Err(Stalled::TooSlow));
    }

    #[test]
    fn a_window_that_held_the_rate_starts_over() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        assert!(p.waits(t0, &LIMITS).is_ok());
        p.wrote(20_000, at(t0, 10_000), &LIMITS);
        assert!(p.window.is_none());
        // A new window, counted from the next wait.
        assert_eq!(p.waits(at(t0, 60_000), &LIMITS), Ok(at(t0, 70_000)));
    }
}
