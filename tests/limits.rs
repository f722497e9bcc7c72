//! What one client can hold or send: oversized request heads get `431` without reaching the
//! upstream, a head that stops arriving and an idle keep-alive connection are closed after
//! their timeouts, and `max_connections` bounds what idle clients can hold — the process
//! serves again as soon as they go.

mod common;

use std::time::Duration;

use common::raw::read_response;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on anything a test waits for; a hang fails instead of blocking CI.
const HANG: Duration = Duration::from_secs(20);

async fn start(server: &str) -> (Echo, Tollgate) {
    let echo = Echo::start().await;
    let config = TestConfig::without_provider()
        .threads(2)
        .server(server)
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    (echo, tg)
}

/// Waits until the peer closes `s` (bounded), discarding anything it sends.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(HANG, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// The value of an unlabelled or labelled metric line in `text`.
fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431_without_reaching_the_upstream() {
    let (echo, tg) = start("").await;
    let mut many = String::from("GET /x HTTP/1.1\r\nHost: a\r\n");
    for i in 0..500 {
        many.push_str(&format!("x-h-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let large = format!(
        "GET /x HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    for (what, request) in [("500 headers", many), ("a 100 KB header", large)] {
        let mut s = TcpStream::connect(tg.addr()).await.unwrap();
        // The client may still be writing when the 431 comes: write in the background.
        let (mut rd, mut wr) = s.split();
        let write = async {
            let _ = wr.write_all(request.as_bytes()).await;
        };
        let read = async {
            let mut tmp = Vec::new();
            let _ = tokio::time::timeout(HANG, rd.read_to_end(&mut tmp)).await;
            tmp
        };
        let (_, got) = tokio::join!(write, read);
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 431 "),
            "{what}: {text:.300}\n{}",
            tg.log()
        );
        assert!(
            text.contains("\"error\":\"request_header_fields_too_large\""),
            "{text}"
        );
        assert!(
            text.to_ascii_lowercase().contains("x-request-id: "),
            "{text}"
        );
        drop(s);
    }
    assert_eq!(echo.count(), 0, "nothing reached the upstream");
    let text = tg
        .wait_metrics(&[
            "tollgate_limits_total{limit=\"header_count\"} 1",
            "tollgate_limits_total{limit=\"header_bytes\"} 1",
        ])
        .await;
    assert!(text.contains("tollgate_requests_total{route=\"-\",status=\"431\"} 2"));
    // Within the limits, the same server answers normally.
    let (head, _) = common::raw::raw_request(&tg, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_stops_arriving_is_dropped_after_header_read_timeout() {
    let (echo, tg) = start("header_read_timeout = \"1s\"").await;
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    // A byte every 300 ms keeps a per-read timeout alive forever; the head's deadline is
    // from its first byte, so the connection goes all the same.
    let dribble = async {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if s.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(HANG, dribble).await;
    assert!(
        closed_by_peer(&mut s).await,
        "still open after the deadline"
    );
    assert_eq!(echo.count(), 0);
    tg.wait_metrics(&["tollgate_limits_total{limit=\"header_read_timeout\"} 1"])
        .await;
    // A connection that sends nothing at all goes the same way.
    let mut silent = TcpStream::connect(tg.addr()).await.unwrap();
    assert!(closed_by_peer(&mut silent).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let (_echo, tg) = start("keepalive_timeout = \"1s\"").await;
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    assert!(
        closed_by_peer(&mut s).await,
        "the idle connection stayed open"
    );
    tg.wait_metrics(&["tollgate_limits_total{limit=\"keepalive_timeout\"} 1"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_bounds_what_idle_clients_hold_and_the_process_recovers() {
    const MAX: usize = 20;
    let (_echo, tg) = start(&format!(
        "max_connections = {MAX}\nheader_read_timeout = \"60s\""
    ))
    .await;
    // Ten times the limit of clients that connect and send nothing.
    let mut idle = Vec::new();
    for _ in 0..10 * MAX {
        idle.push(TcpStream::connect(tg.addr()).await.unwrap());
    }
    let text = tg
        .wait_metrics(&[&format!("tollgate_connections {MAX}")])
        .await;
    assert!(
        metric(&text, "tollgate_limits_total{limit=\"max_connections\"} ").is_some(),
        "{text}"
    );
    // The process holds no more than MAX of them (so no more than their memory): the rest wait
    // in the kernel's backlog.
    // A new client is queued, not refused; once the idle ones go, it is served.
    let mut waiting = TcpStream::connect(tg.addr()).await.unwrap();
    waiting
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut one = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), waiting.peek(&mut one))
            .await
            .is_err(),
        "answered while max_connections were held"
    );
    drop(idle);
    let (head, _) = read_response(&mut waiting).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(waiting);
    tg.wait_metrics(&["tollgate_connections 0"]).await;
}

/// What happened to one attempt of the load below.
#[derive(Default)]
struct Outcomes {
    answered: usize,
    refused: usize,
    broken: Vec<String>,
}

/// One request on a new connection; `Err` describes a connection that was accepted but not
/// answered completely.
async fn one_request(addr: std::net::SocketAddr) -> Result<bool, String> {
    let Ok(Ok(mut s)) = tokio::time::timeout(HANG, TcpStream::connect(addr)).await else {
        return Ok(false);
    };
    if let Err(e) = s
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
    {
        return Err(format!("write: {e}"));
    }
    let mut got = Vec::new();
    match tokio::time::timeout(HANG, s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("read: {e} after {} bytes", got.len())),
        Err(_) => return Err("no answer".into()),
    }
    let text = String::from_utf8_lossy(&got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(format!("incomplete: {text:.200}"));
    };
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(usize::MAX);
    if head.starts_with("HTTP/1.1 200") && body.len() == length {
        Ok(true)
    } else {
        Err(format!("not a complete 200: {head:.200}"))
    }
}

/// SIGTERM under a steady load of new connections: every connection the kernel accepted gets
/// a complete response, and once the listener is closed new clients are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_answers_every_accepted_connection_then_refuses_new_ones() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let (_echo, mut tg) = start("grace_period = \"2s\"").await;
    let addr = tg.addr();
    let done = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (done, outcomes) = (done.clone(), outcomes.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Acquire) {
                    let r = one_request(addr).await;
                    let mut o = outcomes.lock().unwrap();
                    match r {
                        Ok(true) => o.answered += 1,
                        Ok(false) => o.refused += 1,
                        Err(e) => o.broken.push(e),
                    }
                }
            })
        })
        .collect();
    // Under way: a few hundred answered, then the signal.
    for _ in 0..400 {
        if outcomes.lock().unwrap().answered >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &tg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut exited = false;
    for _ in 0..400 {
        if tg.child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A moment more of load against the closed port.
    tokio::time::sleep(Duration::from_millis(200)).await;
    done.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    let o = outcomes.lock().unwrap();
    assert!(exited, "tollgate did not exit after SIGTERM: {}", tg.log());
    assert!(
        o.broken.is_empty(),
        "{} of {} accepted connections were not answered: {:?}\n{}",
        o.broken.len(),
        o.answered + o.broken.len(),
        &o.broken[..o.broken.len().min(5)],
        tg.log()
    );
    assert!(o.answered >= 300, "answered {}", o.answered);
    assert!(o.refused > 0, "new connections were never refused");
}

/// A `Cookie` header over `max_cookie_bytes`, or a session announcing more chunks than
/// tollgate ever writes, gets `431` (and the session cookies cleared) without reaching the
/// upstream; a session that would not fit is refused when it would be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_cookies_get_431_without_reaching_the_upstream() {
    let echo = Echo::start().await;
    let config = TestConfig::without_provider()
        .server("max_cookie_bytes = 8192")
        .route("/api", &echo.url(), "auth = \"required\"")
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    let client = reqwest::Client::new();

    let big = format!("a={}", "b".repeat(9000));
    for path in ["/public", "/api/x"] {
        let r = client
            .get(tg.url(path))
            .header("cookie", &big)
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "request_header_fields_too_large");
    }
    // Split over several Cookie fields, the same total is still too much.
    let half = format!("a={}", "b".repeat(4600));
    let r = client
        .get(tg.url("/public"))
        .header("cookie", &half)
        .header("cookie", &half)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);

    let name = tg.codec().cookie_name().to_string();
    let r = client
        .get(tg.url("/api/x"))
        .header("cookie", format!("{name}.0=11.abc; {name}.1=def"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let cleared = common::flow::set_cookies(&r);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with(&format!("{name}.0=;")) && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert_eq!(echo.count(), 0, "nothing reached the upstream");
    tg.wait_metrics(&[
        "tollgate_limits_total{limit=\"cookie_bytes\"} 3",
        "tollgate_limits_total{limit=\"session_chunks\"} 1",
    ])
    .await;
}

/// Bodies of tollgate's own endpoints are read up to `max_body_bytes`: beyond, `413`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_body_over_max_body_bytes_gets_413() {
    let (_echo, tg) = start("max_body_bytes = 1024").await;
    let r = reqwest::Client::new()
        .post(tg.url("/backchannel-logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("logout_token={}", "a".repeat(2000)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    tg.wait_metrics(&["tollgate_limits_total{limit=\"body_bytes\"} 1"])
        .await;
}

/// Sends a request head announcing a large body, then one body byte every `every` until the
/// connection fails; returns what tollgate answered (bounded by [`HANG`]).
async fn dribble_body(addr: std::net::SocketAddr, head: &str, every: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let write = async {
        loop {
            tokio::time::sleep(every).await;
            if wr.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    let read = async {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(HANG, rd.read_to_end(&mut got)).await;
        got
    };
    let got = tokio::select! {
        got = read => got,
        () = write => Vec::new(),
    };
    String::from_utf8_lossy(&got).into_owned()
}

/// A body tollgate reads itself (`/backchannel-logout`, open to anyone) must arrive whole
/// within `body_read_timeout`, however steadily it dribbles: `408`, the connection closed, and
/// the slots the slow clients held serve others again. (Before: a byte every few seconds kept
/// a connection forever, and `max_connections` such clients stopped the process serving.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_to_an_own_endpoint_gets_408_and_gives_its_slot_back() {
    let (_echo, tg) = start("max_connections = 2\nbody_read_timeout = \"1s\"").await;
    let head = "POST /backchannel-logout HTTP/1.1\r\nHost: a\r\n\
                content-type: application/x-www-form-urlencoded\r\ncontent-length: 100000\r\n\r\n";
    let every = Duration::from_millis(200);
    let (a, b) = tokio::join!(
        dribble_body(tg.addr(), head, every),
        dribble_body(tg.addr(), head, every)
    );
    for got in [a, b] {
        assert!(got.starts_with("HTTP/1.1 408 "), "{got:.300}\n{}", tg.log());
        assert!(got.contains("\"error\":\"request_timeout\""), "{got}");
        assert!(
            got.to_ascii_lowercase().contains("connection: close"),
            "{got}"
        );
    }
    let r = one_request(tg.addr()).await;
    assert_eq!(r, Ok(true), "a new client is served");
    tg.wait_metrics(&["tollgate_limits_total{limit=\"body_read_timeout\"} 2"])
        .await;
}

/// A proxied upload must arrive whole within the route's `read_timeout` (not per read): a
/// byte every 200 ms to a route with `read_timeout = "1s"` gets `408` and the connection
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_proxied_upload_is_cut_off_at_the_routes_read_timeout() {
    let echo = Echo::start().await;
    let config = TestConfig::without_provider().threads(2).route(
        "/",
        &echo.url(),
        "auth = \"none\"\nread_timeout = \"1s\"",
    );
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    let head = "POST /upload HTTP/1.1\r\nHost: a\r\ncontent-length: 100000\r\n\r\n";
    let started = std::time::Instant::now();
    let got = dribble_body(tg.addr(), head, Duration::from_millis(200)).await;
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:.300}\n{}", tg.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        echo.seen().iter().all(|s| s.body_len < 100_000),
        "the upstream never got a whole request"
    );
    // A body that never starts: answered when the upstream has waited read_timeout for it.
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(HANG, s.read_to_end(&mut got)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:.300}");
}

/// Connects with a small receive buffer (4 KiB, as the attack used) and asks for a large
/// answer.
async fn ask_for_big(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    s
}

/// Slow readers: a client that reads nothing of a large answer, and one that reads it at
/// 512 B/s, are cut off once they took less than `min_send_rate` over `send_rate_window` of
/// waiting; their upstream connections are released and their slots serve others. A client
/// that reads normally gets the whole answer. (Before: 8 such clients held every slot for
/// 150 s+.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_off_and_their_upstream_connections_released() {
    let (echo, tg) = start(
        "max_connections = 2\nwrite_timeout = \"5s\"\nmin_send_rate = 1024\nsend_rate_window = \"1s\"",
    )
    .await;
    let mut idle = ask_for_big(tg.addr()).await;
    let slow = ask_for_big(tg.addr()).await;
    let (cut, mut cut_seen) = tokio::sync::watch::channel(false);
    let trickle = tokio::spawn(async move {
        let mut s = slow;
        let mut buf = [0u8; 256];
        let mut read = 0usize;
        // 256 bytes every 500 ms until tollgate has cut it off; then whatever the kernels
        // still buffer, to the end.
        while !*cut_seen.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = cut_seen.changed() => {}
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return read,
                Ok(n) => read += n,
            }
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        read + rest.len()
    });
    tg.wait_metrics(&["tollgate_limits_total{limit=\"min_send_rate\"} 2"])
        .await;
    let _ = cut.send(true);
    // Both connections end (what the kernel had buffered may still be read first).
    assert!(
        closed_by_peer(&mut idle).await,
        "the idle reader was cut off"
    );
    let trickled = tokio::time::timeout(HANG, trickle).await.unwrap().unwrap();
    assert!(trickled < BIG_BODY, "{trickled}");
    let deadline = std::time::Instant::now() + HANG;
    while echo.open_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream connections still open: {}",
            echo.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client that reads gets everything.
    let body = reqwest::Client::new()
        .get(tg.url("/big"))
        .timeout(HANG)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), BIG_BODY);
}

/// The metrics listener has the front door's limits: unfinished request heads are closed
/// after `header_read_timeout` (before: they stayed open 30 s and more), and metrics are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_closes_unfinished_heads() {
    let (_echo, tg) = start("header_read_timeout = \"1s\"").await;
    let addr: std::net::SocketAddr = tg
        .metrics_url()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        held.push(s);
    }
    let r = reqwest::Client::new()
        .get(tg.metrics_url())
        .timeout(HANG)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for mut s in held {
        assert!(
            closed_by_peer(&mut s).await,
            "an unfinished head was kept open"
        );
    }
}
