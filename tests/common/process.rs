//! The `tollgate` binary as a child process started from `CARGO_BIN_EXE_tollgate`, and the
//! waits that make tests independent of timing: readiness, metrics.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Polls `url` every 100 ms until it answers 200, for at most `within`, and fails at once if
/// `child` exits. Tests wait on readiness this way, never on a fixed sleep.
pub async fn wait_http(child: &mut Child, url: &str, within: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + within;
    let mut last;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        match client.get(url).send().await {
            Ok(r) if r.status() == 200 => return Ok(()),
            Ok(r) => last = format!("last answer {}", r.status()),
            Err(e) => last = format!("last probe failed: {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no 200 from {url} within {within:?} ({last})"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port that was free a moment ago (the OS hands out ports round-robin, so reuse is rare).
pub fn free_port() -> u16 {
    // Not from the kernel's ephemeral range (port 0 would give one): a port chosen here is
    // bound by a child process a little later, and meanwhile any outbound connection (the
    // tests make many) can take an ephemeral port as its source, which failed a run with
    // "Address already in use". Below the range, only another listener can take it: each
    // test process walks its own sequence from a random start, skipping ports in use.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = ephemeral_range();
    let (first, span) = if low > 12_000 {
        (10_000u32, u32::from(low) - 10_000)
    } else {
        (u32::from(high) + 1, 65_535 - u32::from(high))
    };
    let _ = NEXT.compare_exchange(
        0,
        1 + rand::random::<u32>() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = first + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if let Ok(l) = StdListener::bind(("127.0.0.1", port as u16)) {
            drop(l);
            return port as u16;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// The kernel's ephemeral port range (Linux), or the common default.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32_768, 60_999))
}

pub const KEY: &str = "bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=";
pub const CLIENT_SECRET: &str = "integration-client-secret";

/// The `tollgate` binary running as a child process.
pub struct Tollgate {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub config_text: String,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tollgate {
    /// Starts tollgate with `config_text` (built by `make(port, metrics_port)`) and waits
    /// until `/readyz` answers 200.
    pub async fn start(make: impl Fn(u16, u16) -> String) -> Tollgate {
        Self::start_with_env(make, &[]).await
    }

    /// Starts tollgate on `port` (chosen beforehand, e.g. because the provider must know the
    /// redirect URI) and waits until it serves.
    pub async fn start_on(port: u16, make: impl Fn(u16, u16) -> String) -> Tollgate {
        Self::start_on_with_env(port, make, &[]).await
    }

    /// As [`Self::start_on`], with extra environment variables for the process.
    pub async fn start_on_with_env(
        port: u16,
        make: impl Fn(u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> Tollgate {
        let metrics_port = free_port();
        let mut t = Self::spawn(port, metrics_port, make(port, metrics_port), env);
        if let Err(e) = t.wait_ready().await {
            panic!("tollgate did not start: {e}");
        }
        t
    }

    fn spawn(port: u16, metrics_port: u16, text: String, env: &[(&str, &str)]) -> Tollgate {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tollgate.toml");
        std::fs::write(&config, &text).unwrap();
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("--config")
            .arg(&config)
            .arg("--log-format")
            .arg("json")
            .env("TOLLGATE_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tollgate");
        Tollgate {
            child,
            port,
            metrics_port,
            config_text: text,
            log_path,
            _dir: dir,
        }
    }

    /// Starts tollgate on `port` expecting it to stop by itself (a configuration the provider
    /// cannot serve): its exit code and log, or a panic if it still runs after 30 s.
    pub async fn start_expecting_exit(
        port: u16,
        make: impl Fn(u16, u16) -> String,
    ) -> (Option<i32>, String) {
        let metrics_port = free_port();
        let mut t = Self::spawn(port, metrics_port, make(port, metrics_port), &[]);
        for _ in 0..300 {
            if let Some(status) = t.child.try_wait().unwrap() {
                return (status.code(), t.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("tollgate kept running: {}", t.log());
    }

    /// As [`Self::start`], with extra environment variables for the process.
    pub async fn start_with_env(
        make: impl Fn(u16, u16) -> String,
        env: &[(&str, &str)],
    ) -> Tollgate {
        let mut last_err = String::new();
        for _ in 0..3 {
            let (port, metrics_port) = (free_port(), free_port());
            let mut t = Self::spawn(port, metrics_port, make(port, metrics_port), env);
            match t.wait_ready().await {
                Ok(()) => return t,
                Err(e) => last_err = e,
            }
        }
        panic!("tollgate did not become ready: {last_err}");
    }

    /// Waits until the proxy serves (`/healthz`); `/readyz` additionally needs the provider,
    /// which tests without one never have.
    async fn wait_ready(&mut self) -> Result<(), String> {
        self.wait_for("/healthz").await
    }

    /// Waits until `path` answers 200 (bounded), failing if the process exits.
    pub async fn wait_for(&mut self, path: &str) -> Result<(), String> {
        let url = self.url(path);
        match wait_http(&mut self.child, &url, Duration::from_secs(30)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.child.kill();
                Err(format!("{e}: {}", self.log()))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// Scrapes `/metrics` until every line in `expected` is present (bounded at 10 s) and
    /// returns the last scrape. Metrics are recorded in Pingora's logging phase, which can run
    /// just after the client already holds its response, so a single scrape may be early.
    pub async fn wait_metrics(&self, expected: &[&str]) -> String {
        let client = reqwest::Client::new();
        let mut last = String::new();
        for _ in 0..100 {
            if let Ok(r) = client.get(self.metrics_url()).send().await {
                last = r.text().await.unwrap_or_default();
                if expected.iter().all(|e| last.contains(e)) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("metrics never showed {expected:?}; last scrape:\n{last}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
