//! Forward-auth against real Debian nginx (`auth_request`) in front of tollgate and an API, all
//! on loopback, with the real test provider: a login through nginx; a logged-in call reaches
//! the API with a bearer tollgate handed nginx; anonymous calls get 401 and navigations
//! nginx's redirect to `/login`; cross-site and header-less writes are refused; a refresh's new
//! cookie reaches the browser through `auth_request_set`. And the spoofing class of
//! oauth2-proxy's GHSA-7x63: a direct call to `/auth` from an address outside
//! `trusted_proxies`, describing another request, gets no token.

mod common;

use std::time::Duration;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::nginx::Nginx;
use common::*;

/// nginx's side: `deploy/forward-auth/nginx.conf` as shipped, with loopback addresses for
/// tollgate, the API and nginx itself.
fn nginx_server(nginx: u16, tollgate: u16, forward_auth: u16, api: &str) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/forward-auth/nginx.conf");
    let text = std::fs::read_to_string(path).unwrap();
    for placeholder in ["listen 80;", "tollgate:8080", "tollgate:9093", "api:8080"] {
        assert!(text.contains(placeholder), "{placeholder} in nginx.conf");
    }
    text.replace("listen 80;", &format!("listen 127.0.0.1:{nginx};"))
        .replace("tollgate:8080", &format!("127.0.0.1:{tollgate}"))
        .replace("tollgate:9093", &format!("127.0.0.1:{forward_auth}"))
        .replace("api:8080", api.trim_start_matches("http://"))
}

/// `method path` through nginx with `cookie` and the SPA's headers: status, headers, body.
async fn through(
    nginx: &Nginx,
    method: reqwest::Method,
    path: &str,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = plain().request(method, nginx.url(path));
    for (k, v) in extra {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_tollgate() {
    let echo = Echo::start().await;
    let nginx_port = free_port();
    let public = format!("http://127.0.0.1:{nginx_port}");
    let public = public.as_str();
    // Tokens live 4 s: refreshed from half-way through.
    let idp = Idp::start(
        &format!("{public}/callback"),
        &format!("{public}/"),
        Some(4),
    )
    .await;
    let fa_port = free_port();
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "")
        .public_url(public)
        .section(&format!(
            "[forward_auth]\nlisten = \"127.0.0.1:{fa_port}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n"
        ));
    let port = free_port();
    let tg = start_ready(port, &config).await;
    let api = echo.url();
    let nginx =
        Nginx::start_server(nginx_port, &nginx_server(nginx_port, port, fa_port, &api)).await;

    // Anonymous: the API gets nothing; a fetch gets 401, a navigation the way to log in.
    let (status, _, body) = through(&nginx, reqwest::Method::GET, "/api/x", &[]).await;
    assert_eq!(status, 401, "{body} {}", nginx.log());
    let (status, headers, _) = through(
        &nginx,
        reqwest::Method::GET,
        "/api/x?a=1",
        &[("accept", "text/html")],
    )
    .await;
    assert_eq!(status, 302);
    assert_eq!(
        headers["location"],
        format!("{public}/login?return_to=/api/x?a=1").as_str()
    );
    assert_eq!(echo.count(), 0);

    // A login through nginx (public_url is nginx's origin).
    let (jar, browser) = browser_with_jar();
    let r = browser
        .get(nginx.url("/login?return_to=/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let cookie = {
        use reqwest::cookie::CookieStore;
        jar.cookies(&nginx.url("/").parse().unwrap())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    // (Cookies are per host, not per port: the provider's are in the jar too.)
    assert!(cookie.contains("tollgate="), "{cookie}");

    // /session through nginx (routed to tollgate itself).
    let (status, _, body) = through(
        &nginx,
        reqwest::Method::GET,
        "/session",
        &[("cookie", cookie.as_str()), ("x-csrf", "1")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"sub\":\"test-user\""), "{body}");

    // A logged-in call reaches the API with the bearer and the user tollgate gave nginx.
    let spa = [("cookie", cookie.as_str()), ("x-csrf", "1")];
    let (status, _, body) = through(&nginx, reqwest::Method::GET, "/api/x", &spa).await;
    assert_eq!(status, 200, "{body} {}", tg.log());
    let seen = echo.last();
    let bearer = seen.header("authorization").unwrap().to_string();
    let token = bearer.strip_prefix("Bearer ").expect("a bearer");
    assert_eq!(idp.userinfo(token).await.0, 200, "a real access token");
    assert_eq!(seen.header("x-auth-request-user"), Some("test-user"));
    // A write from the SPA's own origin passes; from another site, or without the CSRF
    // header, it is refused before the API sees it.
    let origin = public;
    let (status, _, _) = through(
        &nginx,
        reqwest::Method::POST,
        "/api/x",
        &[spa[0], spa[1], ("origin", origin)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo.last().method, "POST");
    let before = echo.count();
    for extra in [
        &[spa[0], spa[1], ("origin", "https://evil.example")][..],
        &[spa[0], ("origin", origin)][..],
    ] {
        let (status, _, _) = through(&nginx, reqwest::Method::POST, "/api/x", extra).await;
        assert_eq!(status, 403, "{extra:?}");
    }
    assert_eq!(echo.count(), before, "refused writes never reach the API");

    // A refresh: the new cookie comes back through auth_request_set, and the API gets the new
    // token.
    let mut refreshed = None;
    for _ in 0..100 {
        let (status, headers, _) = through(&nginx, reqwest::Method::GET, "/api/x", &spa).await;
        assert_eq!(status, 200, "{}", tg.log());
        // (The echo API sets a cookie of its own on every answer.)
        if let Some(line) = headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|l| l.starts_with("tollgate"))
        {
            refreshed = Some(line.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = refreshed.expect("a refreshed session's cookie through nginx");
    assert!(line.starts_with("tollgate"), "{line}");
    assert!(line.contains("HttpOnly"), "{line}");
    assert_ne!(echo.last().header("authorization").unwrap(), bearer);
    assert_eq!(
        idp.stats().await["token_requests"]["refresh_token"],
        1,
        "one refresh"
    );

    // Spoofing. The answers with a token come only from [forward_auth] listen, and there only
    // for trusted_proxies: a request describing /api/x gets no token from 127.0.0.2 there, none
    // on the public port (where /auth is an ordinary path), none through nginx (the browser's
    // way in, nginx being trusted), in either form; the same request from 127.0.0.1 to the
    // forward-auth port gets one (so the others could fail).
    let fa_url = format!("http://127.0.0.1:{fa_port}/auth");
    let described = |local: &str, url: String| {
        let client = reqwest::Client::builder()
            .local_address(local.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let cookie = cookie.clone();
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .header("x-csrf", "1")
                .header("x-original-uri", "/api/x")
                .header("x-original-method", "GET")
                .send()
                .await
                .unwrap()
        }
    };
    for (local, url) in [
        ("127.0.0.2", fa_url.clone()),
        ("127.0.0.1", tg.url("/auth")),
        ("127.0.0.1", nginx.url("/auth")),
        ("127.0.0.1", nginx.url("/auth/api/x")),
    ] {
        let r = described(local, url.clone()).await;
        let token = r
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(
            token.as_deref().is_none_or(|t| !t.contains("Bearer")),
            "{url} from {local}: {:?}",
            r.headers()
        );
        assert!(r.headers().get("x-auth-request-user").is_none(), "{url}");
    }
    assert!(tg.log().contains("outside forward_auth.trusted_proxies"));
    let r = described("127.0.0.1", fa_url.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Bearer "));

    // Logout through nginx ends the session: the API is refused again.
    let r = browser
        .post(nginx.url("/logout"))
        .header("x-csrf", "1")
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_redirection(),
        "{}",
        r.status()
    );
    let (status, _, _) = through(&nginx, reqwest::Method::GET, "/api/x", &spa).await;
    assert_eq!(status, 401);
    // No token or cookie value in tollgate's log.
    let value = cookie
        .split("; ")
        .find_map(|c| c.strip_prefix("tollgate="))
        .unwrap();
    assert!(!tg.log().contains(value));
    assert!(!tg.log().contains(token));
}
