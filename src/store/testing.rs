//! A real `redis-server` for the store's unit tests: a free loopback port, no persistence,
//! killed on drop. The integration tests have their own (`tests/common/redis.rs`), which unit
//! tests cannot import.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::conn::Store;
use crate::config::{Secret, StoreConfig, StoreTarget};
use crate::ops::metrics::Metrics;

/// Every store test finishes within this, or fails.
pub(crate) const BOUND: Duration = Duration::from_secs(20);

/// `[store] timeout` in these tests.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(2);

/// A loopback port nothing listens on (just now).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

/// A store on `url` with key prefix `prefix` (no connection is made until an operation).
pub(crate) fn store_at(url: &str, prefix: &str, timeout: Duration) -> Store {
    Store::new(
        &StoreConfig {
            target: StoreTarget::Single(Secret::new(url.to_string())),
            key_prefix: prefix.to_string(),
            timeout,
        },
        Metrics::new(),
    )
    .expect("a valid store URL")
}

/// A `redis-server` child process, stopped on drop.
pub(crate) struct Redis {
    child: Option<Child>,
    pub(crate) port: u16,
}

impl Redis {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub(crate) async fn start() -> Redis {
        // The port is free when chosen; another process may take it before the server binds
        // it, and then the server exits: try another.
        for _ in 0..5 {
            let mut r = Redis {
                child: None,
                port: free_port(),
            };
            if r.try_start().await {
                return r;
            }
        }
        panic!("redis-server did not start on any of five free ports");
    }

    /// Starts a server on `port` (one a test chose earlier), waiting until it answers.
    pub(crate) async fn start_on(port: u16) -> Redis {
        let mut r = Redis { child: None, port };
        assert!(r.try_start().await, "redis-server did not start on {port}");
        r
    }

    /// `true` once the server answers `PING`; `false` when it exited (port taken).
    async fn try_start(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    self.child = None;
                    return false;
                }
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop();
        panic!(
            "redis-server did not answer on port {} within 10 s",
            self.port
        );
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// A store on this server with key prefix `prefix`.
    pub(crate) fn store(&self, prefix: &str) -> Store {
        store_at(&self.url(), prefix, TIMEOUT)
    }

    /// A plain connection, to look at keys as the store left them.
    pub(crate) async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis-server")
    }

    /// Stops the server (the port stays this guard's, for [`Redis::start_on`]).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a server on `port` answers `PING` with `+PONG`.
async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"+PONG\r\n"
}

/// Raw `TTL` of `key` in seconds (-2: no such key, -1: no expiry).
pub(crate) async fn ttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("TTL")
}

/// Raw `GET` of `key`.
pub(crate) async fn get(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}
