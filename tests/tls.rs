//! tollgate as the HTTPS front door (`[tls]`): the whole session lifecycle over HTTP/2 (ALPN
//! `h2`, checked) and over HTTP/1.1, with the production cookie (`__Host-`, `Secure`); HSTS;
//! certificate rotation under a running process; `min_version`; `redirect_to_https`.

mod common;

use std::sync::Arc;

use common::ca::Ca;
use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;
use reqwest::redirect::Policy;
use tokio_rustls::rustls;

struct Https {
    echo: Echo,
    idp: Idp,
    tg: Tollgate,
    tls_port: u16,
    ca: Ca,
}

impl Https {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.tls_port)
    }

    /// A browser-like client trusting the test CA, with `jar`; `h1` keeps it to HTTP/1.1.
    fn browser_with(&self, h1: bool, jar: Arc<reqwest::cookie::Jar>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap())
            .cookie_provider(jar)
            .redirect(Policy::limited(20))
            .timeout(HANG);
        if h1 {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    fn browser(&self, h1: bool) -> reqwest::Client {
        self.browser_with(h1, Arc::new(reqwest::cookie::Jar::default()))
    }
}

/// tollgate with a plain listener and `[tls]`, `public_url` on the TLS port, the provider
/// redirecting there; `tls_lines` and `server_lines` go into their sections.
async fn start(tls_lines: &str, server_lines: &str) -> Https {
    start_with_routes(tls_lines, server_lines, &[]).await
}

/// As [`start`], with more routes to the echo upstream: `(prefix, route lines)`.
async fn start_with_routes(tls_lines: &str, server_lines: &str, routes: &[(&str, &str)]) -> Https {
    let ca = Ca::new();
    ca.issue(1);
    let echo = Echo::start().await;
    let (plain_port, tls_port) = (free_port(), free_port());
    let origin = format!("https://127.0.0.1:{tls_port}");
    let idp = Idp::start(
        &format!("{origin}/callback"),
        &format!("{origin}/"),
        Some(60),
    )
    .await;
    let mut config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "");
    for (prefix, lines) in routes {
        config = config.route(prefix, &echo.url(), lines);
    }
    let config = config
        .public_url(&origin)
        .random_key()
        .server(server_lines)
        .section(&format!(
            "[tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{tls_lines}\n",
            ca.cert_file().display(),
            ca.key_file().display()
        ));
    let mut tg = Tollgate::start_on(plain_port, |p, m| config.render(p, m)).await;
    tg.wait_for("/readyz").await.expect("ready");
    Https {
        echo,
        idp,
        tg,
        tls_port,
        ca,
    }
}

/// Login, an API call, a refresh and a logout over HTTPS, as `h1` says.
async fn lifecycle(h: &Https, h1: bool) {
    use reqwest::cookie::CookieStore;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = h.browser_with(h1, jar.clone());
    let expected = if h1 {
        reqwest::Version::HTTP_11
    } else {
        reqwest::Version::HTTP_2
    };
    let r = browser.get(h.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", h.tg.log());
    assert_eq!(r.url().as_str(), h.url("/"), "back at the app after login");
    assert_eq!(r.version(), expected, "ALPN chose the protocol");
    assert_eq!(
        r.headers()["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );

    let api = browser
        .get(h.url("/api/data"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200, "{}", h.tg.log());
    assert_eq!(api.version(), expected);
    let seen = h.echo.last();
    assert!(
        seen.header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ")),
        "the upstream got the bearer"
    );

    // The production cookie (__Host-, Secure: checked on the refresh's Set-Cookie below).
    let cookie = jar
        .cookies(&h.url("/").parse().unwrap())
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(cookie.contains("__Host-tollgate"), "{cookie}");

    // Refresh: the same session with its access token due.
    let codec = h.tg.codec();
    let mut session = open_session(&codec, &cookie).expect("a session");
    session.access_expires_at = tollgate::unix_now() - 1;
    let due = h.tg.mint_cookie_for(session);
    h.idp.reset_stats().await;
    let client = h.browser(h1);
    let r = client
        .get(h.url("/api/data"))
        .header("cookie", &due)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", h.tg.log());
    let set = set_cookies(&r);
    assert!(
        set.iter().any(|l| l.starts_with("__Host-tollgate")),
        "the refreshed session is sealed anew: {set:?}"
    );
    for l in set.iter().filter(|l| l.starts_with("__Host-tollgate")) {
        assert!(
            l.contains("; Secure") && l.contains("; HttpOnly") && l.contains("; Path=/"),
            "{l}"
        );
    }
    let stats = h.idp.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");

    // HTTP/2 clients may send each cookie as its own `cookie` field (RFC 9113 §8.2.3): the
    // session opens from them, and the upstream gets the rest joined into one field.
    let client = h.browser(h1);
    let mut req = client
        .get(h.url("/api/data"))
        .header("x-csrf", "1")
        .header("cookie", "app=1");
    for pair in cookie.split("; ") {
        req = req.header("cookie", pair);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", h.tg.log());
    let seen = h.echo.last();
    assert_eq!(seen.header_count("cookie"), 1, "one field upstream");
    let upstream = seen.header("cookie").unwrap_or_default();
    assert!(upstream.starts_with("app=1; "), "{upstream}");
    assert!(!upstream.contains("tollgate"), "{upstream}");

    // Logout.
    let r = browser
        .post(h.url("/logout"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let after = browser
        .get(h.url("/api/data"))
        .header("cookie", &cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        after.status(),
        401,
        "the old cookie is refused after logout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_lifecycle_over_http2_and_http1() {
    let h = start("", "").await;
    lifecycle(&h, false).await;
    lifecycle(&h, true).await;
    h.tg.wait_metrics(&[
        "tollgate_protocol_requests_total{protocol=\"h2\",tls=\"1.3\"}",
        "tollgate_protocol_requests_total{protocol=\"h1\",tls=\"1.3\"}",
    ])
    .await;
}

/// The leaf certificate a new TLS connection to `port` is shown.
async fn served_certificate(
    port: u16,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(HANG, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake hung".to_string())?
        .map_err(|e| e.to_string())?;
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(certs.first().map(|c| c.to_vec()).unwrap_or_default())
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections_while_open_ones_continue() {
    let mut h = start("", "").await;
    let all = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let first = served_certificate(h.tls_port, &h.ca.pem(), all)
        .await
        .unwrap();
    // An HTTP/2 connection opened before the rotation.
    let open = h.browser(false);
    let r = open.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    let second = h.ca.issue(2);
    assert_ne!(first, second);
    h.tg.wait_metrics(&["tollgate_tls_cert_reloads_total{result=\"ok\"} 1"])
        .await;
    let now = served_certificate(h.tls_port, &h.ca.pem(), all)
        .await
        .unwrap();
    assert_eq!(now, second, "a new connection sees the new certificate");
    for _ in 0..3 {
        let r = open.get(h.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the open connection keeps working");
    }

    // A file that does not parse: the served certificate stays, the metric says so.
    std::fs::write(h.ca.cert_file(), "not a certificate").unwrap();
    h.tg.wait_metrics(&[
        "tollgate_tls_cert_reloads_total{result=\"error\"} 1",
        "tollgate_tls_cert_stale 1",
    ])
    .await;
    let still = served_certificate(h.tls_port, &h.ca.pem(), all)
        .await
        .unwrap();
    assert_eq!(still, second);
    assert!(h.tg.child.try_wait().unwrap().is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let h = start("min_version = \"1.3\"", "").await;
    let only12 = served_certificate(h.tls_port, &h.ca.pem(), &[&rustls::version::TLS12]).await;
    assert!(only12.is_err(), "a TLS 1.2-only client got in");
    let only13 = served_certificate(h.tls_port, &h.ca.pem(), &[&rustls::version::TLS13]).await;
    assert!(only13.is_ok(), "{only13:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_to_https_answers_308_except_health() {
    let h = start("", "redirect_to_https = true").await;
    let plain = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    let r = plain
        .get(h.tg.url("/api/data?x=1&y=%20"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], h.url("/api/data?x=1&y=%20"));
    assert!(
        r.headers().get("strict-transport-security").is_none(),
        "no HSTS over plain HTTP"
    );
    for path in ["/healthz", "/readyz"] {
        let r = plain.get(h.tg.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// Over HTTP/2 the head limits hold too: more fields than `max_headers` get `431` (JSON,
/// request id) and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_with_too_many_fields_get_431() {
    let h = start("", "max_headers = 50").await;
    let client = h.browser(false);
    let mut req = client.get(h.url("/public"));
    for i in 0..60 {
        req = req.header(format!("x-h-{i}"), "v");
    }
    let before = h.echo.count();
    let r = req.send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 431);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "request_header_fields_too_large");
    assert_eq!(h.echo.count(), before, "nothing reached the upstream");
    // The connection goes on serving.
    let r = client.get(h.url("/public")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    h.tg.wait_metrics(&["tollgate_limits_total{limit=\"header_count\"} 1"])
        .await;
}

/// Browsers send each cookie as a field of its own over HTTP/2: 60 cookies are one `Cookie`
/// field for `max_headers` (before: `431`, a site with many cookies locked out over h2 only),
/// and the upstream gets them joined in one header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_crumbs_count_as_one_field() {
    let h = start("", "max_headers = 50").await;
    let client = h.browser(false);
    let mut req = client.get(h.url("/public"));
    for i in 0..60 {
        req = req.header("cookie", format!("c{i}=v{i}"));
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let cookie = h.echo.last().header("cookie").unwrap().to_string();
    assert_eq!(cookie.split("; ").count(), 60, "{cookie}");
    assert_eq!(h.echo.last().header_count("cookie"), 1);
}

type H2Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// One HTTP/2 connection to `h` held by hand (hyper over rustls, ALPN h2), with the stream
/// flow-control window the client announces (`SETTINGS_INITIAL_WINDOW_SIZE`).
async fn h2_connection(
    h: &Https,
    window: u32,
) -> (
    hyper::client::conn::http2::SendRequest<H2Body>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(h.ca.pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls_config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", h.tls_port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(window)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    (send, tokio::spawn(conn))
}

/// HTTP/2 streams that give tollgate no flow-control window cannot hold upstream
/// connections: at most `h2_max_concurrent_streams` are open at once, and each is ended after
/// `write_timeout` without progress, its upstream connection released, while the client
/// connection stays open. (Before: one connection with a zero window and 100 streams of a large
/// answer held 100 upstream connections, 71 still after 100 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_http2_streams_do_not_hold_upstream_connections() {
    use http_body_util::BodyExt;
    let h = start(
        "",
        "write_timeout = \"2s\"\nh2_max_concurrent_streams = 4\nmax_headers = 50",
    )
    .await;
    let (mut send, conn) = h2_connection(&h, 0).await;
    // Once a request is answered the client has the server's settings (and queues streams
    // past the limit instead of having them refused).
    let req = hyper::Request::head(h.url("/healthz"))
        .body(http_body_util::Empty::new().boxed())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut send = send.clone();
        let req = hyper::Request::get(h.url("/public/big"))
            .body(http_body_util::Empty::new().boxed())
            .unwrap();
        streams.push(tokio::spawn(async move {
            // The head arrives (HEADERS are not flow-controlled); the body never can.
            let resp = send.send_request(req).await?;
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame?;
            }
            Ok::<_, hyper::Error>(())
        }));
    }
    // tollgate's own `431` (more fields than max_headers) waits for window like any answer.
    let mut refused = hyper::Request::get(h.url("/public/x"));
    for i in 0..60 {
        refused = refused.header(format!("x-h-{i}"), "v");
    }
    let refused = refused.body(http_body_util::Empty::new().boxed()).unwrap();
    let mut sender = send.clone();
    streams.push(tokio::spawn(async move {
        let resp = sender.send_request(refused).await?;
        assert_eq!(resp.status(), 431);
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok::<_, hyper::Error>(())
    }));
    for s in streams {
        let ended = tokio::time::timeout(HANG, s)
            .await
            .expect("every stream ends");
        assert!(
            ended.unwrap().is_err(),
            "a stream without window cannot complete"
        );
    }
    assert_eq!(h.echo.count(), 8);
    // At most h2_max_concurrent_streams (4) at once; the echo may count one more, a closed
    // connection whose end it has not read yet when the next stream's connection arrives (seen
    // on a loaded 2-core CI machine). Without the limit all 8 would be open at once.
    assert!(
        h.echo.peak_connections() <= 5,
        "{} upstream connections at once",
        h.echo.peak_connections()
    );
    let deadline = std::time::Instant::now() + HANG;
    while h.echo.open_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "upstream connections held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        !conn.is_finished(),
        "the client connection itself stays open"
    );
}

/// Over HTTP/2 too, a body tollgate reads itself must arrive within `body_read_timeout`: a
/// stream whose body never ends gets `408` (before: it stayed open with no limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_that_never_ends_gets_408() {
    use http_body_util::BodyExt;
    let h = start("", "body_read_timeout = \"1s\"").await;
    let (mut send, _conn) = h2_connection(&h, 65_535).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    tx.send(bytes::Bytes::from_static(b"logout_token="))
        .await
        .unwrap();
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
        let chunk = rx.recv().await?;
        Some((Ok(hyper::body::Frame::data(chunk)), rx))
    }));
    let req = hyper::Request::post(h.url("/backchannel-logout"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(BodyExt::boxed(body))
        .unwrap();
    let resp = tokio::time::timeout(HANG, send.send_request(req))
        .await
        .expect("an answer before the body ends")
        .unwrap();
    assert_eq!(resp.status(), 408);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "request_timeout");
    drop(tx);
}

/// Over HTTP/2 a proxied upload that never ends is bounded by the route's `read_timeout`
/// too (HTTP/2 has no per-read timeout in Pingora): the stream gets `408` within it, and the
/// connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upload_that_never_ends_is_bounded_by_the_routes_read_timeout() {
    use http_body_util::BodyExt;
    let h = start_with_routes(
        "",
        "",
        &[("/upload", "auth = \"none\"\nread_timeout = \"1s\"")],
    )
    .await;
    let (mut send, _conn) = h2_connection(&h, 65_535).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    tx.send(bytes::Bytes::from_static(b"a")).await.unwrap();
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
        let chunk = rx.recv().await?;
        Some((Ok(hyper::body::Frame::data(chunk)), rx))
    }));
    let req = hyper::Request::post(h.url("/upload"))
        .body(BodyExt::boxed(body))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(HANG, send.send_request(req)).await;
    let took = started.elapsed();
    let status = resp
        .expect("an answer before the body ends")
        .unwrap()
        .status();
    assert_eq!(status, 408);
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    drop(tx);
    let req = hyper::Request::get(h.url("/healthz"))
        .body(http_body_util::Empty::new().boxed())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
}

/// Bodies stream through HTTP/2 both ways: a 10 MiB upload arrives whole at the upstream, and
/// a response's first chunk reaches the client while the upstream still holds the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_over_http2() {
    use sha2::Digest;
    let h = start("", "").await;
    let client = h.browser(false);
    let upload: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = common::echo::hex(&sha2::Sha256::digest(&upload));
    let r = client
        .post(h.url("/public/upload"))
        .body(upload)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = h.echo.last();
    assert_eq!(seen.body_len, 10 * 1024 * 1024);
    assert_eq!(seen.body_sha256, expected);

    let mut r = client.get(h.url("/public/stream")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut received = 0usize;
    while received < common::echo::STREAM_CHUNK {
        let chunk = tokio::time::timeout(HANG, r.chunk())
            .await
            .expect("the first chunk arrives before the upstream finishes")
            .unwrap()
            .expect("stream ended early");
        received += chunk.len();
    }
    h.echo.release_stream();
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(
        received,
        common::echo::STREAM_CHUNK * common::echo::STREAM_CHUNKS
    );
}

/// `SIGHUP` re-reads the certificate files (here unchanged, so only the signal can have done
/// it) and does not stop the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let mut h = start("", "").await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &h.tg.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    h.tg.wait_metrics(&["tollgate_tls_cert_reloads_total{result=\"ok\"} 1"])
        .await;
    assert!(h.tg.child.try_wait().unwrap().is_none(), "still running");
    let r = h
        .browser(false)
        .get(h.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A client that goes away is not tollgate's fault and must not flood the error log: a
/// response abandoned mid-stream (over HTTP/2 and HTTP/1.1) is recorded by its access log line
/// with the error, never at ERROR; a client that sends an IP address as SNI (probes, wrk)
/// costs no WARN per handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_are_logged_quietly() {
    let h = start("", "").await;
    for h1 in [false, true] {
        let client = h.browser(h1);
        let mut r = client.get(h.url("/public/stream")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let first = tokio::time::timeout(HANG, r.chunk())
            .await
            .expect("first chunk");
        assert!(first.unwrap().is_some());
        drop(r);
        drop(client);
        h.echo.release_stream();
    }
    // Both abandoned responses reach the access log (with the error that ended them, when
    // the kernel reported one: the rest of a small body may also just fill the closed
    // socket's buffer).
    let deadline = std::time::Instant::now() + HANG;
    loop {
        let log = h.tg.log();
        let abandoned = log
            .lines()
            .filter(|l| l.contains("\"tollgate::access\"") && l.contains("/public/stream"))
            .count();
        if abandoned >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "access log lines missing:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A handshake whose SNI is an IP address. rustls clients send no SNI for an address, so
    // OpenSSL's client names it, as wrk and h2load do.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", h.tls_port)])
        .args(["-servername", "127.0.0.1", "-brief"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (apt: openssl)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("CONNECTION ESTABLISHED"), "{said}");
    // The handshake is logged at DEBUG by the front door once done; wait for a request after it.
    let r = h.browser(true).get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let log = h.tg.log();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("\"level\":\"WARN\""))
        .collect();
    assert!(
        loud.is_empty(),
        "client departures logged loudly:\n{}",
        loud.join("\n")
    );
}

/// A TLS client that connects, makes a request and connects again (with whatever it was
/// given on the first connection) over `config`; says whether the second handshake resumed.
async fn connect_and_get(port: u16, config: Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio::time::timeout(HANG, connector.connect(name, tcp))
        .await
        .expect("handshake hung")
        .unwrap();
    let kind = tls.get_ref().1.handshake_kind().unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Reading to the end also takes in the session tickets sent after the handshake.
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(HANG, tls.read_to_end(&mut reply))
        .await
        .expect("reply hung");
    assert!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    kind
}

/// A returning browser resumes its TLS session even after many other clients came in between
/// (the server holds no per-client state: resumption tickets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_after_many_others() {
    let h = start("", "").await;
    let config = |ca_pem: &str| {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut c = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    };
    let returning = config(&h.ca.pem());
    let first = connect_and_get(h.tls_port, returning.clone()).await;
    assert_eq!(first, rustls::HandshakeKind::Full);
    // 300 other browsers, each with its own session (more than a 256-entry session cache).
    for _ in 0..300 {
        connect_and_get(h.tls_port, config(&h.ca.pem())).await;
    }
    let again = connect_and_get(h.tls_port, returning).await;
    assert_eq!(again, rustls::HandshakeKind::Resumed);
}
