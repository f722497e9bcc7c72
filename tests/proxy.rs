//! The hot path end to end: the real `tollgate` binary between a client and a real upstream.

mod common;

use std::time::Duration;

use common::flow::{plain, HANG};
use common::*;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start() -> (Echo, Tollgate) {
    let echo = Echo::start().await;
    let down = free_port();
    let api = echo.url();
    // `/api` (required) and `/opt` (optional) on the echo upstream, `/down` to a closed port,
    // `/` (none) on the echo upstream too.
    let config = TestConfig::without_provider()
        .threads(2)
        .server(r#"grace_period = "5s""#)
        .section("[csrf]\nallowed_origins = [\"http://localhost:3000\"]")
        .route("/api", &api, "auth = \"required\"\nread_timeout = \"1s\"")
        .route("/opt", &api, "auth = \"optional\"")
        .route("/pub", &api, "auth = \"required\"\ncache_public = true")
        .route(
            "/down",
            &format!("http://127.0.0.1:{down}"),
            "auth = \"none\"\nconnect_timeout = \"2s\"",
        )
        .route("/", &api, "auth = \"none\"");
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    (echo, tg)
}

async fn json(resp: reqwest::Response) -> serde_json::Value {
    resp.json().await.expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_never_reach_the_upstream() {
    let (echo, tg) = start().await;
    let c = plain();
    let token = access_token(1200);
    let cookie = tg.mint_cookie(&token);

    // No cookie: 401 with the login hint.
    let r = c
        .get(tg.url("/api/items"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("x-request-id").is_some());
    let body = json(r).await;
    assert_eq!(body["error"], "unauthenticated");
    assert_eq!(body["login"], "/login");

    // A valid cookie without the CSRF header: 403.
    let r = c
        .get(tg.url("/api/items"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["error"], "csrf_header_missing");

    // A valid cookie and header, but a foreign Origin: 403.
    let r = tg
        .with_session(&c, reqwest::Method::POST, "/api/items", &cookie)
        .header("origin", "https://evil.example")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["error"], "origin_not_allowed");

    // A tampered cookie: 401, and the broken cookies are cleared.
    let mut tampered = cookie.clone().into_bytes();
    let pos = tampered.len() - 10;
    tampered[pos] = if tampered[pos] == b'A' { b'B' } else { b'A' };
    let r = tg
        .with_session(
            &c,
            reqwest::Method::GET,
            "/api/items",
            &String::from_utf8(tampered).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let cleared: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert!(
        !cleared.is_empty(),
        "a cookie that does not open is cleared"
    );
    assert!(cleared
        .iter()
        .all(|v| v.to_str().unwrap().contains("Max-Age=0")));

    // A cookie sealed under another key (e.g. after a botched rotation): 401.
    let r = c
        .get(tg.url("/api/items"))
        .header(
            "cookie",
            "tollgate=AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    assert_eq!(echo.count(), 0, "no refused request may reach the upstream");

    // Metrics count the refusals and the failed opens by reason.
    tg.wait_metrics(&[
        r#"tollgate_requests_total{route="/api",status="401"} 3"#,
        r#"tollgate_requests_total{route="/api",status="403"} 2"#,
        r#"tollgate_session_open_failures_total{reason="tampered"} 1"#,
        r#"tollgate_session_open_failures_total{reason="unknown_key"} 1"#,
    ])
    .await;

    let log = tg.log();
    assert!(
        !log.contains(&token[30..60]),
        "the access token leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_bearer_not_cookies() {
    let (echo, tg) = start().await;
    let c = plain();
    // Three ~1.2 KB JWTs: the session spans several cookies.
    let token = access_token(1200);
    let cookie = tg.mint_cookie(&token);
    assert!(
        cookie.contains("tollgate.1="),
        "expected a chunked session: {}",
        &cookie[..40]
    );

    let r = tg
        .with_session(
            &c,
            reqwest::Method::GET,
            "/api/items?page=2",
            &format!("theme=dark; {cookie}; lang=en"),
        )
        .header("authorization", "Bearer client-forged")
        .header("origin", tg.url(""))
        .header("x-request-id", "client-id-42")
        .header("x-forwarded-for", "198.51.100.7")
        // tollgate answers any Host; the upstream hears public_url's.
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-42");
    let seen = echo.last();
    assert_eq!(seen.path, "/api/items?page=2");
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(seen.header_count("authorization"), 1);
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));
    assert_eq!(seen.header("x-csrf"), Some("1"));
    assert_eq!(seen.header("x-request-id"), Some("client-id-42"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("127.0.0.1:{}", tg.port).as_str())
    );
    assert_eq!(seen.header("host"), Some(echo.addr.to_string().as_str()));

    // An allowed extra origin passes too; an invalid request id is replaced.
    let r = tg
        .with_session(&c, reqwest::Method::GET, "/api/x", &cookie)
        .header("origin", "http://localhost:3000")
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    assert_eq!(echo.last().header("x-request-id"), Some(rid.as_str()));

    // Optional route: anonymous requests pass without any Authorization.
    let r = c
        .get(tg.url("/opt/public"))
        .header("authorization", "Bearer client-forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header("authorization"), None);
    // ... and logged-in ones get the bearer token.
    let r = tg
        .with_session(&c, reqwest::Method::GET, "/opt/public", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        echo.last().header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );

    // auth = none (the SPA): tollgate's cookies are still stripped.
    let r = c
        .get(tg.url("/index.html"))
        .header("cookie", format!("{cookie}; theme=dark"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header("cookie"), Some("theme=dark"));
    assert_eq!(echo.last().header("authorization"), None);

    let log = tg.log();
    assert!(
        log.contains("\"request_id\":\"client-id-42\""),
        "access log line with request id"
    );
    assert!(
        !log.contains(&token[30..60]),
        "the access token leaked into the log"
    );
    assert!(
        !log.contains(&cookie[20..50]),
        "a cookie value leaked into the log"
    );
    assert!(
        !log.contains(CLIENT_SECRET),
        "the client secret leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_pass_intact_both_ways() {
    let (echo, tg) = start().await;
    let c = plain();
    let cookie = tg.mint_cookie(&access_token(800));

    // A 10 MB upload arrives byte for byte.
    let upload: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let expected = hex(&Sha256::digest(&upload));
    let r = tg
        .with_session(&c, reqwest::Method::POST, "/api/upload", &cookie)
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    assert_eq!(seen.body_len, 10 * 1024 * 1024);
    assert_eq!(seen.body_sha256, expected);

    // A streamed response: the first chunk arrives while the upstream is still holding the
    // rest back, so tollgate is streaming, not buffering.
    let mut r = tg
        .with_session(&c, reqwest::Method::GET, "/api/stream", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut received = Vec::new();
    while received.len() < STREAM_CHUNK {
        let chunk = tokio::time::timeout(HANG, r.chunk())
            .await
            .expect("first chunk should arrive before the upstream finishes")
            .unwrap()
            .expect("stream ended early");
        received.extend_from_slice(&chunk);
    }
    echo.release_stream();
    while let Some(chunk) = r.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert_eq!(received.len(), STREAM_CHUNK * STREAM_CHUNKS);
    for (i, part) in received.chunks(STREAM_CHUNK).enumerate() {
        assert!(
            part.iter().all(|&b| b == b'a' + i as u8),
            "chunk {i} corrupted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_gateway_errors() {
    let (echo, tg) = start().await;
    let c = plain();

    // Nothing listens behind /down: 502 with the request id, not a hang.
    let r = c.get(tg.url("/down/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        r.headers()["connection"],
        "close",
        "the connection is not reused after a failure"
    );
    let body = json(r).await;
    assert_eq!(body["error"], "upstream_unavailable");
    assert_eq!(body["request_id"], rid.as_str());

    // The upstream accepts but answers after read_timeout (1 s): 504.
    let cookie = tg.mint_cookie(&access_token(100));
    let r = tg
        .with_session(&c, reqwest::Method::GET, "/api/slow", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(json(r).await["error"], "upstream_timeout");
    assert_eq!(echo.last().path, "/api/slow");

    let log = tg.log();
    assert!(log.contains(&rid), "the 502 is logged with its request id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_endpoints_and_bad_paths() {
    let (echo, tg) = start().await;
    let c = plain();
    let r = c.get(tg.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["status"], "ok");
    // No provider behind the configured issuer: not ready, and saying why.
    let r = c.get(tg.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(json(r).await["waiting_for"][0], "provider_metadata");
    // Login cannot start without provider metadata: a clear 503.
    let r = c
        .get(tg.url("/login"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(json(r).await["error"], "provider_unavailable");
    // Logout is a POST with the CSRF header; /session needs a session.
    let r = c.post(tg.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(tg.url("/session"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(json(r).await["error"], "unauthenticated");
    // Dot segments could make routing and the upstream disagree: refused.
    for path in ["/static/%2e%2e/api/items", "/static/../api/items"] {
        let (head, body) = raw_request(
            &tg,
            &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
        assert!(String::from_utf8_lossy(&body).contains("bad_path"));
    }
    assert_eq!(echo.count(), 0);
    tg.wait_metrics(&["tollgate_requests_total{"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_targets_are_routed_as_the_upstream_reads_them() {
    let (echo, tg) = start().await;
    let cookie = tg.mint_cookie(&access_token(300));
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nx-csrf: 1\r\n{extra}\r\n")
    };
    let with_cookie = format!("Cookie: {cookie}\r\n");

    // Refused before routing, session or not: a target that is not origin-form (Pingora would
    // route it as `/` and forward it as written), and paths an upstream could resolve to
    // another route than tollgate's (`%2F`, `;params`, `..;`).
    for target in [
        "x:/api/items",
        "api/items",
        "/api%2Fitems",
        "/api;v=1/items",
        "/static/..;/api/items",
    ] {
        let (head, body) = raw_request(&tg, &get(target, &with_cookie)).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{target}: {head}");
        assert!(
            String::from_utf8_lossy(&body).contains("bad_path"),
            "{target}"
        );
    }
    assert_eq!(echo.count(), 0, "a refused target reached the upstream");

    // An escaped letter names the same path: `/%61pi` is `/api`, under `/api`'s rule...
    let (head, _) = raw_request(&tg, &get("/%61pi/items", "")).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(echo.count(), 0);
    // ...and goes upstream as the path it was routed on.
    let (head, _) = raw_request(&tg, &get("/%61pi/it%65ms?q=%61", &with_cookie)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo.last().path, "/api/items?q=%61");

    // Absolute-form is routed on its path and sent upstream in origin-form.
    let authority = format!("127.0.0.1:{}", tg.port);
    let request = format!(
        "GET http://{authority}/api/items HTTP/1.1\r\nHost: {authority}\r\nx-csrf: 1\r\n{with_cookie}\r\n"
    );
    let (head, _) = raw_request(&tg, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo.last().path, "/api/items");

    // An escaped slash that stays within one route passes as written (e.g. GitLab's
    // `projects/group%2Fname`).
    let (head, _) = raw_request(&tg, &get("/api/projects/group%2Fname", &with_cookie)).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echo.last().path, "/api/projects/group%2Fname");
    assert_eq!(echo.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_and_websocket_upgrade() {
    let (echo, tg) = start().await;
    let cookie = tg.mint_cookie(&access_token(300));

    // Two requests on one downstream connection.
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    for i in 0..2 {
        let req = format!(
            "GET /api/ka/{i} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nx-csrf: 1\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(echo.last().path, format!("/api/ka/{i}"));
    }

    // A WebSocket handshake goes through with the bearer token, then bytes flow both ways
    // (once: the Pingora race that could close the tunnel right after the 101,
    // cloudflare/pingora#946, is fixed in vendor/pingora-proxy).
    websocket_round_trip(&tg, &cookie)
        .await
        .unwrap_or_else(|e| panic!("websocket: {e}; log: {}", tg.log()));
    let seen = echo.last();
    assert_eq!(seen.path, "/api/ws");
    assert!(seen.header("authorization").unwrap().starts_with("Bearer "));
}

/// Opens a WebSocket through tollgate and echoes one message; `Err` when the tunnel closes
/// right after the handshake.
async fn websocket_round_trip(tg: &Tollgate, cookie: &str) -> Result<(), String> {
    let port = tg.port;
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    let req = format!(
        "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n\
         Origin: http://127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG, s.read(&mut tmp))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the handshake answer");
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping-through-tollgate").await.unwrap();
    let mut echoed = vec![0u8; 21];
    tokio::time::timeout(HANG, s.read_exact(&mut echoed))
        .await
        .unwrap()
        .map_err(|e| e.to_string())?;
    assert_eq!(&echoed, b"ping-through-tollgate");
    // A tunnel in use lives past the route's read_timeout (1 s): that bounds an upload, not an
    // upgraded connection's life.
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        s.write_all(b"ping-through-tollgate").await.unwrap();
        tokio::time::timeout(HANG, s.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the tunnel ended after {:?}: {e}", started.elapsed()));
        assert_eq!(&echoed, b"ping-through-tollgate");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests() {
    let (echo, mut tg) = start().await;
    let cookie = tg.mint_cookie(&access_token(100));
    // /opt has the default read timeout (60 s), so the 3 s slow answer is awaited.
    let c = plain();
    let url = tg.url("/opt/slow");
    let in_flight = tokio::spawn(async move {
        c.get(url)
            .header("cookie", cookie)
            .header("x-csrf", "1")
            .send()
            .await
    });
    tokio::time::timeout(HANG, echo.slow_started.notified())
        .await
        .unwrap();
    let pid = tg.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    // The listener closes: new connections are refused while the request is still running.
    let deadline = std::time::Instant::now() + HANG;
    while TcpStream::connect(tg.addr()).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the slow request should still be in flight"
    );
    let r = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(r.status(), 200);
    // tollgate then exits by itself, successfully.
    let deadline = std::time::Instant::now() + HANG;
    loop {
        if let Some(status) = tg.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tollgate did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Regression tests for the review and attack-run findings (issue 10), one per behaviour.

/// Empty path segments (`//api`, `/%2F/api`) must not route around `/api`'s rule to the
/// catch-all: nginx, Tomcat and Spring merge slashes and serve them as `/api/…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_segments_cannot_reach_a_protected_route_through_the_catch_all() {
    let (echo, tg) = start().await;
    for target in [
        "//api/items",
        "///api/items",
        "/%2F/api/items",
        "/;/api/items",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer stolen\r\n\r\n"
        );
        let (head, body) = raw_request(&tg, &request).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{target}: {head}");
        assert!(
            String::from_utf8_lossy(&body).contains("bad_path"),
            "{target}"
        );
    }
    assert_eq!(
        echo.count(),
        0,
        "an empty-segment path reached the upstream"
    );
}

/// `auth = "none"` routes drop a client's `Authorization` too, unless the route keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authorization_is_dropped_on_anonymous_routes_unless_kept() {
    let echo = Echo::start().await;
    let api = echo.url();
    let config = TestConfig::without_provider()
        .route("/keep", &api, "auth = \"none\"\nkeep_authorization = true")
        .route("/", &api, "auth = \"none\"");
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    let c = plain();
    for (path, kept) in [("/index.html", false), ("/keep/x", true)] {
        let r = c
            .get(tg.url(path))
            .header("authorization", "Bearer client-token")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            echo.last().header("authorization"),
            kept.then_some("Bearer client-token"),
            "{path}"
        );
    }
}

/// A response that carries tollgate's `Set-Cookie` (here an idle renewal) is never left
/// cacheable by a shared cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_with_session_cookies_are_private_and_not_stored() {
    let (_echo, tg) = start().await;
    let mut session = session_with(&access_token(300));
    // Past half of the default idle window (8 h): the cookie is re-sealed on this request.
    session.last_seen -= 5 * 3600;
    let cookie = tg.mint_cookie_for(session);
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/cacheable", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get_all("set-cookie").iter().any(|v| {
            let v = v.to_str().unwrap();
            v.starts_with("tollgate=") || v.starts_with("tollgate.0=")
        }),
        "the session was renewed"
    );
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    // Without a tollgate cookie on the response, the upstream's caching stands.
    let r = plain().get(tg.url("/cacheable")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "public, max-age=600");
}

/// A CDN in front of tollgate sees the session cookie, never the bearer: an answer made for a
/// session is made `private` (the browser keeps `max-age`), and CDN-only cache headers are
/// dropped, unless the route says `cache_public = true`. Answers without a session (`optional`
/// and `none` routes) keep the upstream's caching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_a_session_are_not_left_to_shared_caches() {
    let (_echo, tg) = start().await;
    let cookie = tg.mint_cookie(&access_token(300));
    for (path, cache_control, cdn) in [
        ("/api/cacheable", "private, max-age=600", false),
        ("/opt/cacheable", "private, max-age=600", false),
        ("/pub/cacheable", "public, max-age=600", true),
    ] {
        let r = tg
            .with_session(&plain(), reqwest::Method::GET, path, &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r
            .headers()
            .get("set-cookie")
            .is_some_and(|v| v.to_str().unwrap().starts_with("upstream=")));
        assert_eq!(r.headers()["cache-control"], cache_control, "{path}");
        assert_eq!(r.headers().contains_key("cdn-cache-control"), cdn, "{path}");
        assert_eq!(r.headers().contains_key("surrogate-control"), cdn, "{path}");
    }
    // An answer with no Cache-Control at all is private too (no heuristic caching).
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/plain", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "private");
    // Without a session the upstream's caching stands.
    for path in ["/opt/cacheable", "/cacheable"] {
        let r = plain().get(tg.url(path)).send().await.unwrap();
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=600",
            "{path}"
        );
        assert!(r.headers().contains_key("cdn-cache-control"), "{path}");
    }
}

/// An app's cookie that starts with tollgate's cookie name reaches the app; an upstream cannot
/// set one of tollgate's cookies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_cookies_pass_and_upstreams_cannot_set_tollgates_cookies() {
    let (echo, tg) = start().await;
    let cookie = tg.mint_cookie(&access_token(300));
    let r = tg
        .with_session(
            &plain(),
            reqwest::Method::GET,
            "/api/set-tollgate-cookies",
            &format!("{cookie}; tollgate-theme=light"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header("cookie"), Some("tollgate-theme=light"));
    let set: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set, ["upstream=1; Path=/", "tollgate-theme=dark; Path=/"]);
}

/// A browser's WebSocket handshake carries cookies and `Origin`, never `x-csrf`: the allowed
/// Origin is its CSRF defence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshakes_are_checked_by_origin() {
    let (echo, tg) = start().await;
    let cookie = tg.mint_cookie(&access_token(300));
    let handshake = |origin: &str| {
        format!(
            "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n{origin}\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    for (origin, code) in [
        ("", "origin_missing"),
        ("Origin: https://evil.example\r\n", "origin_not_allowed"),
    ] {
        let (head, body) = raw_request(&tg, &handshake(origin)).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{origin}: {head}");
        assert!(String::from_utf8_lossy(&body).contains(code), "{origin}");
    }
    assert_eq!(echo.count(), 0);
    let allowed = format!("Origin: http://127.0.0.1:{}\r\n", tg.port);
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    s.write_all(handshake(&allowed).as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(HANG, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &buf, b"HTTP/1.1 101",
        "without x-csrf, with the app's Origin"
    );
    assert!(echo
        .last()
        .header("authorization")
        .unwrap()
        .starts_with("Bearer "));
}

/// Forwarding headers are tollgate's to write; `X-Forwarded-For` keeps every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_clients_do_not_reach_the_upstream() {
    let (echo, tg) = start().await;
    let request = "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\
        Forwarded: for=1.2.3.4;host=evil\r\nX-Real-IP: 1.2.3.4\r\n\
        X-Original-URL: /api/admin\r\nX-Rewrite-URL: /api/admin\r\n\
        X_Forwarded_For: 1.2.3.4\r\nX-Forwarded_Host: evil\r\n\
        X-Forwarded-For: 203.0.113.1\r\nX-Forwarded-For: 203.0.113.2\r\n\r\n";
    let (head, _) = raw_request(&tg, request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = echo.last();
    for name in [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x_forwarded_for",
        "x-forwarded_host",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.1, 203.0.113.2, 127.0.0.1")
    );
    assert_eq!(seen.header_count("x-forwarded-for"), 1);
}

/// Hop-by-hop fields, and those a client's `Connection` names, end at tollgate (Pingora's
/// standard upstream request policy, done in one pass over the names by tollgate's patch in
/// `vendor/PATCHES.md`); the other fields pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_do_not_reach_the_upstream() {
    let (echo, tg) = start().await;
    let hop_by_hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
        "x-nominated",
    ];
    let requests = [
        "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive, X-Nominated\r\n\
         Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authenticate: Basic\r\n\
         Proxy-Authorization: Basic dTpw\r\nTE: trailers\r\nTrailer: x-checksum\r\n\
         X-Nominated: 1\r\nX-App: kept\r\n\r\n",
        "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-App: kept\r\n\r\n",
        // Only one of them.
        "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nTE: trailers\r\nX-App: kept\r\n\r\n",
    ];
    for request in requests {
        let (head, _) = raw_request(&tg, request).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let seen = echo.last();
        for name in hop_by_hop {
            assert_eq!(seen.header(name), None, "{name} reached the upstream");
        }
        assert_eq!(seen.header("x-app"), Some("kept"));
    }
}

/// `TRACE` is refused, an HTTP/1.1 request needs `Host`, and tollgate's own replies say
/// `nosniff`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_hostless_requests_are_refused() {
    let (echo, tg) = start().await;
    let (head, _) = raw_request(&tg, "TRACE /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    let (head, body) = raw_request(&tg, "GET /index.html HTTP/1.1\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("bad_request"));
    assert!(
        head.to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{head}"
    );
    assert_eq!(echo.count(), 0);
}

/// An upstream that answers a WebSocket handshake at once: the `101` and a first message go
/// out as soon as the connection is accepted, before the request is read; then it echoes.
async fn eager_websocket_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                              Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello";
                if s.write_all(answer.as_bytes()).await.is_err() {
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
                }
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    format!("http://{addr}")
}

/// cloudflare/pingora#946: a fast upstream's `101` read before the upgrade request's empty
/// body tore the tunnel down at once (about one connection in two with this upstream, which
/// answers before reading). Every one of 32 tunnels must carry the upstream's first message
/// and then the client's bytes both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_tunnel_to_a_fast_upstream_stays_open() {
    let upstream = eager_websocket_upstream().await;
    let config = TestConfig::without_provider()
        .threads(2)
        .route("/", &upstream, "auth = \"none\"");
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    for i in 0..32 {
        let mut s = TcpStream::connect(tg.addr()).await.unwrap();
        let req = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n\
                   Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        // The 101 and the upstream's first message, then an echo of ours.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let want_first = |got: &[u8]| {
            got.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|end| got[end + 4..].starts_with(b"hello"))
        };
        while !want_first(&got) {
            let n = tokio::time::timeout(HANG, s.read(&mut buf))
                .await
                .expect("the 101 in time")
                .unwrap();
            assert!(
                n > 0,
                "tunnel {i}: closed before the first message: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let message = format!("ping {i}");
        let sent = s.write_all(message.as_bytes()).await;
        let mut back = vec![0u8; message.len()];
        let echoed = match sent {
            Ok(()) => tokio::time::timeout(HANG, s.read_exact(&mut back)).await,
            Err(e) => panic!("tunnel {i}: closed after the 101: {e}"),
        };
        match echoed {
            Ok(Ok(_)) => assert_eq!(back, message.as_bytes(), "tunnel {i}"),
            Ok(Err(e)) => panic!("tunnel {i}: closed after the 101 (pingora#946): {e}"),
            Err(_) => panic!("tunnel {i}: no echo in time"),
        }
    }
}

/// cloudflare/pingora#201 (#998): a pooled upstream connection taken back while its idle
/// poller was letting go of it was dropped and dialled again, with an ERROR line. Eight
/// clients at a time keep taking connections from the pool and giving them back: no error
/// line, and new connections only as many as the concurrency needs; the metric says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_are_reused_quietly() {
    let echo = Echo::start().await;
    let config =
        TestConfig::without_provider()
            .threads(2)
            .route("/", &echo.url(), "auth = \"none\"");
    let tg = Tollgate::start(|port, metrics| config.render(port, metrics)).await;
    const CLIENTS: u64 = 8;
    const EACH: u64 = 250;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = tg.url("/");
        tasks.push(tokio::spawn(async move {
            let client = plain();
            for i in 0..EACH {
                let r = client.get(format!("{url}r/{c}/{i}")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let metrics = tg
        .wait_metrics(&["tollgate_upstream_connections_total{reused=\"true\"}"])
        .await;
    let count = |reused: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "tollgate_upstream_connections_total{{reused=\"{reused}\"}} "
                ))
            })
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let (new, reused) = (count("false"), count("true"));
    assert_eq!(new + reused, CLIENTS * EACH, "{metrics}");
    let lost = tg
        .log()
        .matches("failed to acquire reusable stream")
        .count();
    assert_eq!(
        lost,
        0,
        "{lost} pooled connections lost; {new} new of {}",
        CLIENTS * EACH
    );
    assert!(
        new <= 2 * CLIENTS,
        "{new} of {} requests dialled a new upstream connection",
        CLIENTS * EACH
    );
}
