//! Login end to end: the real `tollgate` binary, the real test OpenID Provider (`oidc-provider`
//! on Node.js) and a real upstream, driven by an HTTP client that follows redirects and keeps
//! cookies, like a browser without JavaScript.

mod common;

use common::flow::*;
use common::idp::{Idp, TestClient, CLIENTS, PUBLIC_CLIENT};
use common::*;
use reqwest::cookie::CookieStore;
use reqwest::redirect::Policy;
use reqwest::Url;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_every_client_auth_method() {
    let echo = Echo::start().await;
    let clients: Vec<&TestClient> = CLIENTS.iter().chain([&PUBLIC_CLIENT]).collect();
    let ports: Vec<u16> = clients.iter().map(|_| free_port()).collect();
    let idp = idp_for(&ports).await;

    for (client, port) in clients.iter().zip(&ports) {
        let what = format!(
            "{} ({}{})",
            client.id,
            client.auth_method,
            client.key.map(|k| format!(", {}", k.1)).unwrap_or_default()
        );
        let tg = start_tollgate(*port, &idp, client, &echo).await;
        let b = browser();
        // /login → provider → /callback → return_to (the SPA route, served by the upstream).
        let r = b
            .get(tg.url("/login?return_to=/landing"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "{what}: login did not complete: {}",
            tg.log()
        );
        assert_eq!(r.url().path(), "/landing", "{what}");
        assert_eq!(
            echo.last().header("authorization"),
            None,
            "{what}: auth = none route"
        );

        // An API call carries the bearer token, which the provider's userinfo accepts.
        let r = b
            .get(tg.url("/api/me"))
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let seen = echo.last();
        let bearer = seen
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_else(|| panic!("{what}: no bearer token upstream"))
            .to_string();
        let cookie = seen.header("cookie").unwrap_or_default();
        assert!(
            !cookie.contains("tollgate"),
            "{what}: tollgate cookies reached the upstream"
        );
        let (status, info) = idp.userinfo(&bearer).await;
        assert_eq!(status, 200, "{what}: userinfo refused the token: {info}");
        assert_eq!(info["sub"], "test-user", "{what}");

        let log = tg.log();
        assert!(log.contains("login complete"), "{what}");
        assert!(
            !log.contains(&bearer),
            "{what}: the access token leaked into the log"
        );
        if let Some(secret) = client.secret {
            assert!(
                !log.contains(secret),
                "{what}: the client secret leaked into the log"
            );
        }
    }
    let stats = idp.stats().await;
    assert_eq!(
        stats["token_requests"]["authorization_code"],
        clients.len(),
        "{stats}"
    );
    // The provider offers PAR, so every login pushed its request with the client's
    // authentication (`[oidc] par = "auto"`), whatever the method.
    assert_eq!(stats["par"]["success"], clients.len(), "{stats}");
    assert_eq!(stats["authorize"]["pushed"], clients.len(), "{stats}");
    assert_eq!(stats["authorize"]["plain"], 0, "{stats}");
}

/// Drives a login up to the provider's redirect back to tollgate, without following it.
/// Returns the login cookie (`name=value`) and the callback URL.
async fn login_until_callback(
    tg: &Tollgate,
    login_path: &str,
    edit_authorize: impl Fn(&mut Url),
) -> (String, Url) {
    let r = plain().get(tg.url(login_path)).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", tg.log());
    let login_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .find(|c| c.contains("-login-"))
        .expect("a login cookie");
    let mut authorize = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    edit_authorize(&mut authorize);
    (login_cookie, provider_until_callback(tg, authorize).await)
}

/// Follows an authorization request through the provider (which logs the test user in) and
/// returns tollgate's callback URL it redirects back to, without following that.
async fn provider_until_callback(tg: &Tollgate, authorize: Url) -> Url {
    let tollgate_port = tg.port;
    // Follow the provider's redirects, but stop before tollgate's callback.
    let provider_side = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(HANG)
        .redirect(Policy::custom(move |attempt| {
            if attempt.url().port() == Some(tollgate_port) {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .build()
        .unwrap();
    let r = provider_side.get(authorize).send().await.unwrap();
    assert!(
        r.status().is_redirection(),
        "the provider should redirect back, got {}",
        r.status()
    );
    let callback = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(callback.path(), "/callback");
    callback
}

/// Replaces the value of query parameter `name` in `url`.
fn replace_param(url: &mut Url, name: &str, value: &str) {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
}

async fn get_json(
    url: &str,
    cookie: Option<&str>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut req = plain().get(url).header("accept", "application/json");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, headers)
}

/// The provider, an upstream and tollgate for the callback tests.
async fn callback_setup() -> (Echo, Idp, Tollgate) {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let tg = start_tollgate(port, &idp, &CLIENTS[0], &echo).await;
    (echo, idp, tg)
}

/// No state, an unknown state, and a provider error: JSON for a program, a page for a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_without_a_known_state_or_with_a_provider_error_is_refused() {
    let (_echo, _idp, tg) = callback_setup().await;
    let (s, b, _) = get_json(&tg.url("/callback?code=abc"), None).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_state")));
    let (s, b, _) = get_json(
        &tg.url("/callback?code=abc&state=AAAAAAAAAAAAAAAAAAAAAAAA"),
        None,
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("unknown_state")));
    let (s, b, _) = get_json(
        &tg.url(
            "/callback?error=access_denied&error_description=no&state=AAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        None,
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("access_denied")));
    assert_eq!(b["login"], "/login");
    // The same as an HTML page for a browser.
    let r = plain()
        .get(tg.url("/callback?error=access_denied&state=AAAAAAAAAAAAAAAAAAAAAAAA"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("access_denied") && html.contains("href=\"/login\""),
        "{html}"
    );
}

/// A login cookie older than ten minutes is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_login_cookie_is_refused() {
    let (_echo, _idp, tg) = callback_setup().await;
    let codec_keys = [tollgate::config::validate::decode_key(KEY).unwrap()];
    let sealer = tollgate::session::seal::Sealer::new(&codec_keys);
    let state = "BBBBBBBBBBBBBBBBBBBBBBBB";
    let name = tollgate::session::cookie::login_cookie_name("tollgate", state);
    let old = tollgate::oidc::login::LoginState {
        nonce: "n".into(),
        code_verifier: "v".repeat(43),
        return_to: "/".into(),
        created_at: tollgate::unix_now() - 601,
        dpop_key: None,
        provider: None,
        acr_values: Vec::new(),
        max_age: None,
        redirect_uri: None,
    }
    .seal(&sealer, &name)
    .unwrap();
    let (s, b, _) = get_json(
        &tg.url(&format!("/callback?code=abc&state={state}")),
        Some(&format!("{name}={old}")),
    )
    .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("login_expired")));
}

/// A code is exchanged once: the replay fails cleanly at the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_is_used_once() {
    let (_echo, _idp, tg) = callback_setup().await;
    let (login_cookie, callback) = login_until_callback(&tg, "/login", |_| {}).await;
    let r = plain()
        .get(callback.as_str())
        .header("cookie", &login_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/");
    let set = set_cookies(&r);
    assert!(
        set.iter()
            .any(|c| c.starts_with("tollgate=") || c.starts_with("tollgate.0=")),
        "{set:?}"
    );
    assert!(
        set.iter()
            .any(|c| c.starts_with(login_cookie.split('=').next().unwrap())
                && c.contains("Max-Age=0")),
        "login cookie deleted: {set:?}"
    );
    let (s, b, _) = get_json(callback.as_str(), Some(&login_cookie)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{}",
        tg.log()
    );
}

/// RFC 9207: an `iss` that is not the issuer (mix-up) is refused before any exchange, and so is a response without `iss` from a provider that promises it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_from_another_issuer_or_without_iss_is_refused() {
    let (_echo, _idp, tg) = callback_setup().await;
    let (login_cookie, mut callback) = login_until_callback(&tg, "/login", |_| {}).await;
    replace_param(&mut callback, "iss", "https://evil.example");
    let (s, b, _) = get_json(callback.as_str(), Some(&login_cookie)).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("issuer_mismatch")));

    // The provider advertises RFC 9207, so a response without iss is refused too.
    let (login_cookie, mut callback) = login_until_callback(&tg, "/login", |_| {}).await;
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .filter(|(k, _)| k != "iss")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    callback.query_pairs_mut().clear().extend_pairs(pairs);
    let (s, b, _) = get_json(callback.as_str(), Some(&login_cookie)).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("issuer_missing")));
}

/// An ID token whose nonce is not the one this login sent is refused. (With PAR the browser
/// never sees the nonce to change it, so this login is sent the classic way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_for_another_login_is_refused() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let tg = start_tollgate_with(port, &idp, &CLIENTS[0], &echo, "par = \"never\"").await;
    let (login_cookie, callback) = login_until_callback(&tg, "/login", |u| {
        replace_param(u, "nonce", "attacker-nonce")
    })
    .await;
    let (s, b, _) = get_json(callback.as_str(), Some(&login_cookie)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_id_token")),
        "{}",
        tg.log()
    );
}

/// `return_to` never leaves the origin: every open-redirect form falls back to `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_to_never_leaves_the_origin() {
    let (_echo, _idp, tg) = callback_setup().await;
    for bad in [
        "//evil.example",
        "/\\evil.example",
        "https://evil.example",
        "%2F%2Fevil.example",
        "/%09/evil.example",
        "/a%0D%0ALocation:%20https://evil.example",
    ] {
        let path = format!("/login?return_to={}", bad.replace('\\', "%5C"));
        let (login_cookie, callback) = login_until_callback(&tg, &path, |_| {}).await;
        let r = plain()
            .get(callback.as_str())
            .header("cookie", &login_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302, "{bad}");
        assert_eq!(r.headers()["location"], "/", "{bad}");
    }
    let (login_cookie, callback) =
        login_until_callback(&tg, "/login?return_to=/app/items%3Fid%3D3", |_| {}).await;
    let r = plain()
        .get(callback.as_str())
        .header("cookie", &login_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/app/items?id=3");
}

/// The provider goes down between login and callback: a clean 502, and tollgate serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_at_the_callback_is_a_clean_502() {
    let (_echo, mut idp, tg) = callback_setup().await;
    let (login_cookie, callback) = login_until_callback(&tg, "/login", |_| {}).await;
    idp.stop();
    let (s, b, _) = get_json(callback.as_str(), Some(&login_cookie)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("provider_unreachable"))
    );
    let r = plain().get(tg.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = plain().get(tg.url("/landing")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_log_in_at_once() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    // Without PAR, so that the parameters can be read in the redirect below (with PAR the
    // provider reads them, and accepted them in the other tests).
    let tg = start_tollgate_with(port, &idp, &CLIENTS[1], &echo, "par = \"never\"").await;
    let (cookie_a, callback_a) = login_until_callback(&tg, "/login?return_to=/a", |_| {}).await;
    let (cookie_b, callback_b) = login_until_callback(&tg, "/login?return_to=/b", |_| {}).await;
    assert_ne!(
        cookie_a.split('=').next(),
        cookie_b.split('=').next(),
        "one login cookie per state"
    );
    let both = format!("{cookie_a}; {cookie_b}");
    let r = plain()
        .get(callback_b.as_str())
        .header("cookie", &both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/b");
    let r = plain()
        .get(callback_a.as_str())
        .header("cookie", &both)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/a");
    // The authorization request carried everything the flow needs.
    let r = plain()
        .get(tg.url("/login?prompt=login"))
        .send()
        .await
        .unwrap();
    let authorize = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    for k in [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "prompt",
    ] {
        assert!(q.contains_key(k), "authorization request lacks {k}");
    }
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], tg.url("/callback"));
    assert!(q["state"].len() >= 22 && q["nonce"].len() >= 22);
}

/// Repeated `/login` calls (a cross-site page can trigger them) keep at most three pending
/// login cookies, newest first, so the `Cookie` header stays small; the newest still logs in.
/// A long `return_to` is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_logins_are_bounded_per_browser() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let tg = start_tollgate(port, &idp, &CLIENTS[1], &echo).await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(Policy::none())
        .timeout(HANG)
        .build()
        .unwrap();
    let long = format!("/{}", "a".repeat(600));
    let mut last = None;
    for i in 0..12 {
        let path = if i == 0 {
            format!("/login?return_to={long}")
        } else {
            format!("/login?return_to=/tab{i}")
        };
        let r = browser.get(tg.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 302);
        for line in r.headers().get_all("set-cookie") {
            let line = line.to_str().unwrap();
            if line.contains("-login-") && !line.contains("Max-Age=0") {
                assert!(line.len() < 700, "a login cookie of {} bytes", line.len());
            }
        }
        last = Some(r.headers()["location"].to_str().unwrap().to_string());
    }
    let header = jar
        .cookies(&tg.url("/").parse().unwrap())
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let pending = header.matches("tollgate-login-").count();
    assert_eq!(pending, 3, "pending login cookies: {header}");
    assert!(
        header.len() < 2048,
        "Cookie header of {} bytes",
        header.len()
    );
    // The newest login completes.
    let callback = provider_until_callback(&tg, Url::parse(&last.unwrap()).unwrap()).await;
    let r = browser.get(callback).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", tg.log());
    assert_eq!(r.headers()["location"], "/tab11");
}

/// The provider's `error` on the callback is shown on tollgate's page only as a plain code:
/// text meant to mislead the user becomes `provider_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_error_text_is_not_shown_verbatim() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let tg = start_tollgate(port, &idp, &CLIENTS[1], &echo).await;
    let lure = "Your%20account%20is%20locked.%20Call%20%2B1%20555%200100";
    let r = plain()
        .get(tg.url(&format!("/callback?error={lure}&state=x")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let page = r.text().await.unwrap();
    assert!(page.contains("<code>provider_error</code>"), "{page}");
    // The lure's words, not its digits alone: the page's random request id may hold "555".
    assert!(
        !page.contains("locked") && !page.contains("555 0100"),
        "{page}"
    );
    let (status, body, _) = get_json(&tg.url("/callback?error=access_denied"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("access_denied"))
    );
}

/// RFC 9126: with PAR the browser carries only `client_id` and the provider's `request_uri`;
/// `par = "never"` sends the parameters in the redirect as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_request_is_pushed_unless_par_is_never() {
    let echo = Echo::start().await;
    let ports = [free_port(), free_port()];
    let idp = idp_for(&ports).await;
    let tg = start_tollgate(ports[0], &idp, &CLIENTS[0], &echo).await;
    let r = plain().get(tg.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 302, "{}", tg.log());
    let location = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let keys: Vec<String> = location
        .query_pairs()
        .map(|(k, _)| k.into_owned())
        .collect();
    assert_eq!(keys, ["client_id", "request_uri"], "{location}");
    let request_uri = location
        .query_pairs()
        .find(|(k, _)| k == "request_uri")
        .unwrap()
        .1
        .into_owned();
    assert!(request_uri.starts_with("urn:ietf:params:oauth:request_uri:"));
    let r = browser()
        .get(tg.url("/login?return_to=/pushed"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.url().path()),
        (200, "/pushed"),
        "{}",
        tg.log()
    );

    let classic = start_tollgate_with(ports[1], &idp, &CLIENTS[0], &echo, "par = \"never\"").await;
    let r = plain().get(classic.url("/login")).send().await.unwrap();
    let location = Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(
        location.query_pairs().any(|(k, _)| k == "code_challenge"),
        "{location}"
    );
    assert!(
        !location.query_pairs().any(|(k, _)| k == "request_uri"),
        "{location}"
    );
    let r = browser()
        .get(classic.url("/login?return_to=/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.url().path()), (200, "/plain"));
    let stats = idp.stats().await;
    assert_eq!(stats["authorize"]["pushed"], 1, "{stats}");
    assert_eq!(stats["authorize"]["plain"], 1, "{stats}");
}

/// A provider that requires PAR (`require_pushed_authorization_requests`) is honoured under
/// `auto` and stops a `par = "never"` tollgate at startup, naming the key; `always` against a
/// provider without PAR stops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn par_settings_that_cannot_work_stop_tollgate_at_startup() {
    let echo = Echo::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut idp = idp_for(&ports).await;
    idp.restart_with("IDP_PAR", "required").await;

    let tg = start_tollgate(ports[0], &idp, &CLIENTS[0], &echo).await;
    let r = browser()
        .get(tg.url("/login?return_to=/ok"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.url().path()),
        (200, "/ok"),
        "{}",
        tg.log()
    );

    let never = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "par = \"never\"");
    let (code, log) = Tollgate::start_expecting_exit(ports[1], |p, m| never.render(p, m)).await;
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("oidc.par") && log.contains("requires pushed authorization"),
        "{log}"
    );

    idp.restart_with("IDP_PAR", "off").await;
    let always = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "par = \"always\"");
    let (code, log) = Tollgate::start_expecting_exit(ports[2], |p, m| always.render(p, m)).await;
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("oidc.par") && log.contains("pushed_authorization_request_endpoint"),
        "{log}"
    );
}

/// The provider refusing the pushed request (here: the wrong client secret) is the same kind
/// of error page as a failed callback, with the provider's code and a way to try again; no
/// redirect to the provider happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_pushed_request_is_an_error_page() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let wrong = TestConfig::with_oidc_text(format!(
        "issuer = \"{}\"\nclient_id = \"tollgate-basic\"\nclient_secret = \"not-the-secret\"\n",
        idp.issuer
    ))
    .route("/", &echo.url(), "auth = \"none\"");
    let mut tg = Tollgate::start_on(port, |p, m| wrong.render(p, m)).await;
    tg.wait_for("/readyz").await.unwrap();
    let (s, b, _) = get_json(&tg.url("/login"), None).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (502, Some("invalid_client")),
        "{b}"
    );
    assert_eq!(b["login"], "/login");
    let r = plain()
        .get(tg.url("/login"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("invalid_client") && html.contains("href=\"/login\""),
        "{html}"
    );
    assert!(
        !tg.log().contains("not-the-secret"),
        "the secret leaked into the log"
    );
    let stats = idp.stats().await;
    assert_eq!(stats["par"]["error"], 2, "{stats}");
    assert_eq!(stats["authorize"]["pushed"], 0, "{stats}");
}
