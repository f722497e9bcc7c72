//! A real `redis-server` (Debian's package) on a free loopback port, stopped on drop; tests can
//! stop and start it again to see tollgate ride out a store outage.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::process::free_port;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers `PING`.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server; .ci/run does)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn stop(&mut self) {
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
