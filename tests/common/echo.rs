//! A real HTTP/1.1 upstream on a loopback port that records every request it receives, so a
//! test can assert what reached it (and that nothing did).

use std::convert::Infallible;
use std::net::SocketAddr;
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
/// - `…/big`: answers [`BIG_BODY`] bytes;
/// - a WebSocket handshake: answers 101 and echoes bytes on the upgraded connection.
pub struct Echo {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    pub slow_started: Arc<Notify>,
    /// Set by [`Echo::stop`]: the listener and every connection close.
    stop: tokio::sync::watch::Sender<bool>,
    /// Connections open now, and the most open at once.
    connections: Arc<Connections>,
}

/// The echo's open connections, counted.
#[derive(Default)]
struct Connections {
    open: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// One open connection to the echo: counted until it closes.
struct OpenConnection(Arc<Connections>);

impl OpenConnection {
    fn new(c: &Arc<Connections>) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = c.open.fetch_add(1, SeqCst) + 1;
        c.peak.fetch_max(now, SeqCst);
        OpenConnection(c.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `…/big` answers this many bytes (512 chunks of 64 KiB): more than any socket buffers hold.
pub const BIG_BODY: usize = 512 * STREAM_CHUNK;
static BIG_CHUNK: [u8; STREAM_CHUNK] = [b'x'; STREAM_CHUNK];

pub const STREAM_CHUNK: usize = 64 * 1024;
pub const STREAM_CHUNKS: usize = 8;

impl Echo {
    pub async fn start() -> Echo {
        Self::start_on("127.0.0.1:0".parse().unwrap(), None).await
    }

    /// A plain echo upstream on `bind` (a fixed address, e.g. another loopback IP).
    pub async fn start_at(bind: SocketAddr) -> Echo {
        Self::start_on(bind, None).await
    }

    /// Stops listening and closes every open connection, as a stopped process would.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
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
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut stop_accepting = stopped.clone();
        let connections = Arc::new(Connections::default());
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop_accepting.changed() => return,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let (s, r, ss) = (s.clone(), r.clone(), ss.clone());
                let tls = tls.clone();
                let mut stop_serving = stopped.clone();
                let open = OpenConnection::new(&counted);
                tokio::spawn(async move {
                    let _open = open;
                    tokio::select! {
                     _ = stop_serving.changed() => {}
                     _ = async move {
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
                     } => {}
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
            stop,
            connections,
        }
    }

    /// Connections to the echo open now.
    pub fn open_connections(&self) -> usize {
        self.connections
            .open
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> usize {
        self.connections
            .peak
            .load(std::sync::atomic::Ordering::SeqCst)
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
    if path.ends_with("/big") {
        let chunks = (0..BIG_BODY / STREAM_CHUNK)
            .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from_static(&BIG_CHUNK))));
        return Ok(Response::builder()
            .status(200)
            .header("content-type", "application/octet-stream")
            .header("content-length", BIG_BODY)
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
            .unwrap());
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
        resp = resp
            .header("cache-control", "public, max-age=600")
            .header("cdn-cache-control", "max-age=3600")
            .header("surrogate-control", "max-age=3600");
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
