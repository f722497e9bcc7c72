//! WebSocket tunnels through a proxy, counted: the load half of `benches/load/websocket.py`
//! (issue 28's target of 0 lost in 100,000 upgraded connections).
//!
//! - `ws_load upstream ADDR` listens on `ADDR` as an upstream that answers every handshake at
//!   once: the `101` and a first message (`hello`) go out as soon as the connection is
//!   accepted, before the request is read (the ordering that tore tunnels down in
//!   cloudflare/pingora#946); then it echoes every byte. It prints `ready` and runs until
//!   killed.
//! - `ws_load client ADDR PATH TOTAL CONCURRENCY [COOKIE]` makes `TOTAL` upgrades through the
//!   proxy at `ADDR`, `CONCURRENCY` at a time. Each one must read the `101` and `hello`, send
//!   `ping N` and read it back, then close. It prints one JSON line: how many went through,
//!   how many were lost after the `101` (the tunnel closed or stalled before the echo), how
//!   many got another status, and how many failed to connect, with the first few reasons.
//!
//! Loopback only: the addresses are the caller's, and every step has a 10 s deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(10);
const ANSWER: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let code = match args.first().map(String::as_str) {
        Some("upstream") if args.len() == 2 => runtime.block_on(upstream(&args[1])),
        Some("client") if (5..=6).contains(&args.len()) => runtime.block_on(client(&args[1..])),
        _ => {
            eprintln!(
                "usage: ws_load upstream ADDR | ws_load client ADDR PATH TOTAL CONCURRENCY [COOKIE]"
            );
            2
        }
    };
    std::process::exit(code);
}

async fn upstream(addr: &str) -> i32 {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {addr}: {e}");
            return 1;
        }
    };
    println!("ready");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            if s.write_all(ANSWER).await.is_err() {
                return;
            }
            // The request head, then every byte back.
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                seen.extend_from_slice(&buf[..n]);
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let rest = seen.split_off(end + 4);
                    if !rest.is_empty() && s.write_all(&rest).await.is_err() {
                        return;
                    }
                    break;
                }
                if seen.len() > 64 * 1024 {
                    return;
                }
            }
            let (mut r, mut w) = s.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    lost: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    reasons: Mutex<Vec<String>>,
}

impl Counts {
    fn note(&self, counter: &AtomicU64, reason: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.reasons.lock() {
            if r.len() < 5 {
                r.push(reason);
            }
        }
    }
}

enum Outcome {
    Ok,
    /// The `101` came, then the tunnel closed or stalled before the echo.
    Lost(String),
    /// Another status than `101`.
    Refused(String),
    /// No connection, or no answer at all.
    Failed(String),
}

async fn client(args: &[String]) -> i32 {
    let (Ok(addr), Ok(total), Ok(concurrency)) = (
        args[0].parse::<SocketAddr>(),
        args[2].parse::<u64>(),
        args[3].parse::<u64>(),
    ) else {
        eprintln!("ADDR TOTAL CONCURRENCY: a socket address and two numbers");
        return 2;
    };
    let path = args[1].clone();
    let cookie = args.get(4).cloned();
    let next = Arc::new(AtomicU64::new(0));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, counts, path, cookie) =
            (next.clone(), counts.clone(), path.clone(), cookie.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                match one(addr, &path, cookie.as_deref(), i).await {
                    Outcome::Ok => {
                        counts.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Lost(r) => counts.note(&counts.lost, format!("{i}: lost: {r}")),
                    Outcome::Refused(r) => {
                        counts.note(&counts.refused, format!("{i}: refused: {r}"))
                    }
                    Outcome::Failed(r) => counts.note(&counts.failed, format!("{i}: failed: {r}")),
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let reasons = counts.reasons.lock().map(|r| r.clone()).unwrap_or_default();
    let reasons: Vec<String> = reasons
        .iter()
        .map(|r| format!("\"{}\"", r.replace(['"', '\\'], "'")))
        .collect();
    println!(
        "{{\"total\": {total}, \"ok\": {}, \"lost_after_101\": {}, \"refused\": {}, \"failed\": {}, \
         \"seconds\": {seconds:.2}, \"per_second\": {:.0}, \"reasons\": [{}]}}",
        counts.ok.load(Ordering::Relaxed),
        counts.lost.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        total as f64 / seconds.max(1e-9),
        reasons.join(", ")
    );
    0
}

/// One upgrade, its first message, one echo.
async fn one(addr: SocketAddr, path: &str, cookie: Option<&str>, i: u64) -> Outcome {
    let mut s = match tokio::time::timeout(STEP, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Outcome::Failed(format!("connect: {e}")),
        Err(_) => return Outcome::Failed("connect: timed out".into()),
    };
    let _ = s.set_nodelay(true);
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: http://{addr}\r\n"
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Outcome::Failed(format!("send: {e}"));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if !got.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&got[..got.len().min(40)]).into_owned();
                return Outcome::Refused(line);
            }
            if got.len() >= end + 4 + 5 {
                break end;
            }
        }
        match tokio::time::timeout(STEP, s.read(&mut buf)).await {
            Ok(Ok(0)) if got.starts_with(b"HTTP/1.1 101") => {
                return Outcome::Lost("closed before the first message".into())
            }
            Ok(Ok(0)) => return Outcome::Failed("closed before an answer".into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Outcome::Failed(format!("read: {e}")),
            Err(_) => return Outcome::Failed("no answer in 10 s".into()),
        }
    };
    if &got[head_end + 4..head_end + 9] != b"hello" {
        return Outcome::Lost("another first message".into());
    }
    let message = format!("ping {i}");
    if let Err(e) = s.write_all(message.as_bytes()).await {
        return Outcome::Lost(format!("send after the 101: {e}"));
    }
    let mut back = vec![0u8; message.len()];
    // Bytes after `hello` in the first read are already part of the echo.
    let early = (got.len() - (head_end + 9)).min(back.len());
    back[..early].copy_from_slice(&got[head_end + 9..head_end + 9 + early]);
    match tokio::time::timeout(STEP, s.read_exact(&mut back[early..])).await {
        Ok(Ok(_)) if back == message.as_bytes() => Outcome::Ok,
        Ok(Ok(_)) => Outcome::Lost("a wrong echo".into()),
        Ok(Err(e)) => Outcome::Lost(format!("closed before the echo: {e}")),
        Err(_) => Outcome::Lost("no echo in 10 s".into()),
    }
}
