//! Test harness: a real echo upstream, the real `tollgate` binary, and session minting.
//!
//! Everything listens on 127.0.0.1. The upstream records every request it receives, so a test
//! can assert what reached it (and that nothing did). tollgate runs as a child process started
//! from `CARGO_BIN_EXE_tollgate`; tests wait for `/readyz`, never for a fixed time.

#![allow(dead_code)]

pub mod config;
pub mod flow;
pub mod idp;

pub use config::TestConfig;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

use tollgate::config::Config;
use tollgate::session::cookie::SessionCookies;
use tollgate::session::{Claims, Session, SessionCodec};

/// What the echo upstream saw of one request.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    /// The TLS server name the client asked for (TLS upstreams only).
    pub sni: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body_sha256: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A real HTTP/1.1 upstream on a loopback port.
///
/// - any path: answers 200 with the [`Seen`] record as JSON (after reading the whole body);
/// - `…/stream`: sends one 64 KiB chunk, waits for [`Echo::release_stream`], sends the rest;
/// - `…/slow`: waits 3 s before answering;
/// - a WebSocket handshake: answers 101 and echoes bytes on the upgraded connection.
pub struct Echo {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    pub slow_started: Arc<Notify>,
}

pub const STREAM_CHUNK: usize = 64 * 1024;
pub const STREAM_CHUNKS: usize = 8;

impl Echo {
    pub async fn start() -> Echo {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None).await
    }

    /// An echo upstream speaking TLS with `acceptor`'s certificate, on `bind`.
    pub async fn start_tls(bind: SocketAddr, acceptor: tokio_rustls::TlsAcceptor) -> Echo {
        Self::start_on(bind, Some(acceptor)).await
    }

    async fn start_on(bind: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Echo {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let is_tls = tls.is_some();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let slow_started = Arc::new(Notify::new());
        let (s, r, ss) = (seen.clone(), release.clone(), slow_started.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, r, ss) = (s.clone(), r.clone(), ss.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let svc = service_fn(move |req| {
                                handle(req, None, s.clone(), r.clone(), ss.clone())
                            });
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let sni = stream.get_ref().1.server_name().map(String::from);
                            let svc = service_fn(move |req| {
                                handle(req, sni.clone(), s.clone(), r.clone(), ss.clone())
                            });
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            tls: is_tls,
            seen,
            release,
            slow_started,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }

    pub fn release_stream(&self) {
        self.release.notify_one();
    }
}

fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into()).boxed()
}

async fn handle(
    mut req: Request<Incoming>,
    sni: Option<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    slow_started: Arc<Notify>,
) -> Result<Response<BoxBody>, Infallible> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let is_ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws {
        seen.lock().unwrap().push(Seen {
            sni,
            method,
            path,
            headers,
            body_len: 0,
            body_sha256: String::new(),
        });
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(full(Bytes::new()))
            .unwrap());
    }

    let mut hasher = Sha256::new();
    let mut body_len = 0;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            body_len += data.len();
            hasher.update(data);
        }
    }
    let record = Seen {
        sni,
        method,
        path: path.clone(),
        headers,
        body_len,
        body_sha256: hex(&hasher.finalize()),
    };
    seen.lock().unwrap().push(record.clone());

    if path.ends_with("/slow") {
        slow_started.notify_one();
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path.ends_with("/stream") {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
        tokio::spawn(async move {
            let chunk = |i: usize| Bytes::from(vec![b'a' + i as u8; STREAM_CHUNK]);
            let _ = tx.send(Ok(Frame::data(chunk(0)))).await;
            release.notified().await;
            for i in 1..STREAM_CHUNKS {
                let _ = tx.send(Ok(Frame::data(chunk(i)))).await;
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        return Ok(Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap());
    }
    let json = serde_json::to_vec(&record).unwrap();
    let mut resp = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("set-cookie", "upstream=1; Path=/");
    // A response a shared cache may keep.
    if path.contains("/cacheable") {
        resp = resp.header("cache-control", "public, max-age=600");
    }
    // An upstream that tries to set (end, replace) tollgate's session, beside its own cookie.
    if path.contains("/set-tollgate-cookies") {
        resp = resp
            .header("set-cookie", "tollgate=forged; Path=/")
            .header("set-cookie", "tollgate.1=forged; Path=/")
            .header("set-cookie", "tollgate-theme=dark; Path=/");
    }
    Ok(resp.body(full(json)).unwrap())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `url` every 100 ms until it answers 200, for at most `within`, and fails at once if
/// `child` exits. Tests wait on readiness this way, never on a fixed sleep.
pub async fn wait_http(child: &mut Child, url: &str, within: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no 200 from {url} within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A port that was free a moment ago (the OS hands out ports round-robin, so reuse is rare).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let metrics_port = free_port();
        let mut t = Self::spawn(port, metrics_port, make(port, metrics_port), &[]);
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

    /// The codec tollgate uses, built from the same config text through the library.
    pub fn codec(&self) -> SessionCodec {
        let config = Config::from_toml_str(
            &self.config_text,
            Path::new("test.toml"),
            std::iter::empty(),
        )
        .unwrap();
        SessionCodec::new(&config.session, config.server.secure_cookies)
    }

    /// A `Cookie` header value carrying a freshly minted session with `access_token`.
    pub fn mint_cookie(&self, access_token: &str) -> String {
        self.mint_cookie_for(session_with(access_token))
    }

    pub fn mint_cookie_for(&self, session: Session) -> String {
        let lines = self
            .codec()
            .set_cookie_lines(&session, &SessionCookies::default(), tollgate::unix_now())
            .unwrap();
        cookie_header(&lines)
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `name=value; …` from `Set-Cookie` lines, skipping deletions.
pub fn cookie_header(set_cookie_lines: &[String]) -> String {
    set_cookie_lines
        .iter()
        .filter(|l| !l.contains("Max-Age=0"))
        .map(|l| l.split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A session with `access_token` valid for five minutes and realistic ID/refresh tokens.
pub fn session_with(access_token: &str) -> Session {
    let now = tollgate::unix_now();
    Session {
        access_token: access_token.to_string(),
        access_expires_at: now + 300,
        refresh_token: Some("r".repeat(1200)),
        refresh_expires_at: None,
        id_token: Some("i".repeat(1200)),
        id_expires_at: Some(now + 300),
        claims: Claims {
            sub: "user-1".into(),
            sid: Some("sid-1".into()),
            name: Some("Ada Lovelace".into()),
            email: Some("ada@example.com".into()),
        },
        created_at: now,
        last_seen: now,
    }
}

/// A JWT-shaped access token of about `len` bytes that is easy to search for in logs.
pub fn access_token(len: usize) -> String {
    let mut t = String::from("eyJhbGciOiJSUzI1NiJ9.ACCESS");
    while t.len() < len {
        t.push_str("xYz0");
    }
    t
}
