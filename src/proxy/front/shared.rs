//! What every connection of a listener is served with: the limits, the counters and the
//! drain state one front door shares among its tasks. Its own file so that every other file
//! of the front door can use it while it uses none of them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::server::ShutdownWatch;
use tokio::sync::Semaphore;

use super::pace::PaceLimits;
use crate::config::Limits;
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;

pub(crate) struct Shared {
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) draining: AtomicBool,
    /// Becomes `true` with `draining`: HTTP/2 connections wait on it to say GOAWAY (HTTP/1.1
    /// connections read `draining` between requests).
    pub(crate) drain_started: tokio::sync::watch::Sender<bool>,
    /// The listening sockets went to a new process (graceful upgrade): at shutdown they are
    /// left as they are, the new process accepts from them.
    pub(crate) handed_over: AtomicBool,
    /// HTTP/2 settings for TLS connections that negotiate `h2`.
    pub(crate) h2: H2Options,
    /// What a client that does not read its responses is allowed ([`super::pace`]).
    pub(crate) pace: PaceLimits,
    /// Connections are counted in `tollgate_open_connections` (not on the metrics listener).
    pub(crate) counted: bool,
}

impl Shared {
    /// The state of a front door with `limits`; its connections are counted.
    pub(crate) fn new(limits: Limits, metrics: Metrics, readiness: Arc<Readiness>) -> Self {
        let mut h2 = default_h2_options();
        // Over this, h2 itself answers 431 for the stream (decoded names and values, plus 32
        // bytes per field, RFC 9113 §6.5.2).
        h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        // Each stream can hold an upstream connection: this bounds what one client holds.
        h2.max_concurrent_streams(u32::try_from(limits.h2_max_concurrent_streams).unwrap_or(32));
        let pace = PaceLimits {
            write_timeout: limits.write_timeout,
            min_send_rate: limits.min_send_rate as u64,
            window: limits.send_rate_window,
        };
        Shared {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            metrics,
            readiness,
            draining: AtomicBool::new(false),
            drain_started: tokio::sync::watch::Sender::new(false),
            handed_over: AtomicBool::new(false),
            h2,
            pace,
            counted: true,
        }
    }

    /// From now on connections close after their current request (HTTP/1.1: `Connection:
    /// close`; HTTP/2: GOAWAY, streams under way finish).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_started.send_replace(true);
    }
}

/// What every connection of one listener is served with.
pub(crate) struct Door<A> {
    pub(crate) tls: Option<Arc<Acceptor>>,
    pub(crate) app: Arc<A>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) shutdown: ShutdownWatch,
}

impl<A> Clone for Door<A> {
    fn clone(&self) -> Self {
        Door {
            tls: self.tls.clone(),
            app: self.app.clone(),
            shared: self.shared.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// A front door's state for tests, with limits a test can reach quickly.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Shared;
    use crate::config::Limits;
    use crate::ops::health::Readiness;
    use crate::ops::metrics::Metrics;

    /// Generous limits (no test waits on them) but those named by the test.
    pub(crate) fn limits() -> Limits {
        Limits {
            keepalive_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 16,
            max_header_bytes: 8192,
            max_headers: 100,
            max_cookie_bytes: 8192,
            max_body_bytes: 1 << 20,
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            min_send_rate: 0,
            send_rate_window: Duration::from_secs(10),
            h2_max_concurrent_streams: 8,
        }
    }

    pub(crate) fn shared(limits: Limits) -> Arc<Shared> {
        Arc::new(Shared::new(
            limits,
            Metrics::new(),
            Arc::new(Readiness::default()),
        ))
    }

    /// What `metrics` rendered says about `line` (a metric line's prefix), if anything.
    pub(crate) fn metric_line(shared: &Shared, prefix: &str) -> Option<String> {
        let text = String::from_utf8(shared.metrics.render()).ok()?;
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
    }
}
