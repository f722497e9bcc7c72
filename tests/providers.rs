//! Several providers behind one tollgate, and step-up logins (RFC 9470), against real
//! `oidc-provider` instances: two providers with different issuers log in, call APIs with their
//! own tokens, refresh at their own provider, are ended by their own provider's back-channel
//! logout, and one provider down leaves the other's logins and sessions working. Step-up: a
//! password session on an MFA route gets `401 step_up_required`; following its link logs in
//! with MFA and the route answers; `max_age` is enforced; an upstream's
//! `insufficient_user_authentication` challenge becomes the same JSON.

mod common;

use std::time::Duration;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// `GET path` with the CSRF header, as the SPA calls an API: status and JSON body.
async fn call(b: &reqwest::Client, tg: &Tollgate, path: &str) -> (u16, serde_json::Value) {
    let r = b
        .get(tg.url(path))
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Polls `path` (bounded) until it answers `status`; the last answer.
async fn until(
    b: &reqwest::Client,
    tg: &Tollgate,
    path: &str,
    status: u16,
) -> (u16, serde_json::Value) {
    let mut last = call(b, tg, path).await;
    for _ in 0..100 {
        if last.0 == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = call(b, tg, path).await;
    }
    last
}

/// A browser logged in at `/login{query}`.
async fn logged_in_at(tg: &Tollgate, query: &str) -> reqwest::Client {
    let b = browser();
    let r = b
        .get(tg.url(&format!("/login{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login {query}: {}", tg.log());
    b
}

/// A login started at `provider`, answered (with a code of the attacker's choosing) on
/// `callback`: the answer to that callback.
async fn answered_elsewhere(tg: &Tollgate, provider: &str, callback: &str) -> reqwest::Response {
    let r = plain()
        .get(tg.url(&format!("/login?provider={provider}")))
        .send()
        .await
        .unwrap();
    let cookie = set_cookies(&r)[0].split(';').next().unwrap().to_string();
    // The login cookie is named after the state (`{cookie}-login-{state}`).
    let state = cookie
        .split('=')
        .next()
        .and_then(|name| name.rsplit_once("-login-"))
        .unwrap()
        .1
        .to_string();
    plain()
        .get(tg.url(&format!("{callback}?code=stolen&state={state}")))
        .header("cookie", &cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_each_serve_their_own_sessions() {
    let port = free_port();
    // Tokens live 4 s: refreshed from half-way through.
    // b answers at its own callback path, on public_url's host and on its own host.
    let (mut idp_a, idp_b) = (
        Idp::start_env(port, Some(4), &[]).await,
        Idp::start_for_uris(
            port,
            &format!(
                "http://127.0.0.1:{port}/callback/b,http://partner.localhost:{port}/callback/b"
            ),
            Some(4),
        )
        .await,
    );
    assert_ne!(idp_a.issuer, idp_b.issuer);
    let echo = Echo::start().await;
    let config = tollgate_config(&idp_a, &CLIENTS[0], &echo.url(), "")
        .server("provider_chooser = true")
        .section(&format!(
            "[providers.b]\nissuer = \"{}\"\n{}scopes = [\"openid\", \"profile\", \"email\"]\n\
             hosts = [\"partner.localhost\"]\n",
            idp_b.issuer,
            CLIENTS[0].oidc_toml()
        ))
        .route("/only-a", &echo.url(), "providers = [\"default\"]");
    let tg = start_ready(port, &config).await;
    let ready: serde_json::Value = plain()
        .get(tg.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["providers"]["b"], "up", "{ready}");

    // Without a provider, the chooser lists both (keeping return_to); a host of b's picks b.
    let r = plain()
        .get(tg.url("/login?return_to=/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = r.text().await.unwrap();
    for link in [
        "/login?provider=default&amp;return_to=%2Fx",
        "/login?provider=b&amp;return_to=%2Fx",
    ] {
        assert!(page.contains(link), "{link} in {page}");
    }
    let r = plain()
        .get(tg.url("/login"))
        .header("host", format!("Partner.localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("http://127.0.0.1:{}/", idp_b.port)),
        "{location}"
    );

    // A whole login on b's host: it comes back to that host (where its login cookie is),
    // and the SPA served there may call the API with that origin.
    let partner = reqwest::Client::builder()
        .cookie_store(true)
        .resolve("partner.localhost", tg.addr())
        .timeout(HANG)
        .build()
        .unwrap();
    let partner_url = |path: &str| format!("http://partner.localhost:{port}{path}");
    let r = partner
        .get(partner_url("/login?return_to=/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login on b's host: {}", tg.log());
    assert_eq!(r.url().as_str(), partner_url("/x"));
    let r = partner
        .post(partner_url("/api/x"))
        .header("x-csrf", "1")
        .header("origin", format!("http://partner.localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let session: serde_json::Value = partner
        .get(partner_url("/session"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["provider"], "b");
    assert_eq!(
        idp_b.stats().await["token_requests"]["authorization_code"],
        1
    );
    idp_b.reset_stats().await;

    // Mix-up: a login that went to b, answered on the default provider's callback, is
    // refused, and its code goes to no provider; and the other way round.
    let r = answered_elsewhere(&tg, "b", "/callback").await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "issuer_mismatch", "{body}");
    assert!(tg.log().contains("mix-up"));
    for idp in [&idp_a, &idp_b] {
        assert_eq!(idp.stats().await["token_requests"]["authorization_code"], 0);
    }
    let r = answered_elsewhere(&tg, "default", "/callback/b").await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "issuer_mismatch", "{body}");
    for idp in [&idp_a, &idp_b] {
        assert_eq!(idp.stats().await["token_requests"]["authorization_code"], 0);
    }

    // A login at each provider by name.
    let a = logged_in_at(&tg, "?provider=default").await;
    let b = logged_in_at(&tg, "?provider=b").await;
    assert_eq!(call(&a, &tg, "/session").await.1["provider"], "default");
    assert_eq!(call(&b, &tg, "/session").await.1["provider"], "b");
    for idp in [&idp_a, &idp_b] {
        assert_eq!(idp.stats().await["token_requests"]["authorization_code"], 1);
    }
    let (status, body) = call(&plain(), &tg, "/login?provider=nope").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unknown_provider");
    assert!(
        body["message"].as_str().unwrap().contains("default, b"),
        "{body}"
    );

    // Each session's API calls carry its own provider's token.
    for (browser, idp, other) in [(&a, &idp_a, &idp_b), (&b, &idp_b, &idp_a)] {
        assert_eq!(call(browser, &tg, "/api/x").await.0, 200);
        let bearer = echo.last().header("authorization").unwrap().to_string();
        let token = bearer.strip_prefix("Bearer ").unwrap();
        assert_eq!(idp.userinfo(token).await.0, 200);
        assert_eq!(other.userinfo(token).await.0, 401, "not the other's token");
    }
    // A route for the default provider's sessions only.
    assert_eq!(call(&a, &tg, "/only-a/x").await.0, 200);
    let (status, body) = call(&b, &tg, "/only-a/x").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("wrong_provider"))
    );

    // b's token is refreshed at b (a's provider sees no refresh).
    let mut refreshed = 0;
    for _ in 0..60 {
        assert_eq!(call(&b, &tg, "/api/x").await.0, 200, "{}", tg.log());
        refreshed = idp_b.stats().await["token_requests"]["refresh_token"]
            .as_u64()
            .unwrap();
        if refreshed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refreshed > 0, "b's session was refreshed at b");
    assert_eq!(idp_a.stats().await["token_requests"]["refresh_token"], 0);

    // A back-channel logout from b for the user ends b's session only, although both
    // providers call the user `test-user`.
    let token = idp_b
        .logout_token(
            serde_json::json!({"aud": CLIENTS[0].id, "sub": "test-user", "events": {EVENT: {}}}),
            false,
        )
        .await;
    let r = plain()
        .post(tg.url("/backchannel-logout"))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    assert_eq!(until(&b, &tg, "/api/x", 401).await.0, 401);
    assert_eq!(call(&a, &tg, "/api/x").await.0, 200, "a's session stays");
    // A logout token whose issuer is none of the providers is refused.
    let forged = idp_b
        .logout_token(
            serde_json::json!({"iss": "https://elsewhere.example", "aud": CLIENTS[0].id, "sub": "test-user", "events": {EVENT: {}}}),
            false,
        )
        .await;
    let r = plain()
        .post(tg.url("/backchannel-logout"))
        .form(&[("logout_token", forged)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The default provider down: b's logins and sessions go on. (A logout by `sub` ends the
    // user's sessions created up to its token's second: this login comes after it.)
    let logged_out_at = tollgate::unix_now();
    while tollgate::unix_now() <= logged_out_at {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idp_a.stop();
    let b2 = logged_in_at(&tg, "?provider=b").await;
    assert_eq!(call(&b2, &tg, "/api/x").await.0, 200);
    assert_eq!(call(&b2, &tg, "/session").await.1["provider"], "b");
}

/// Step-up (RFC 9470) at one provider: `acr` and `max_age` rules, the login they link to, the
/// callback's check, and an upstream's challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_up_logs_in_again_with_mfa() {
    let port = free_port();
    let idp = Idp::start_env(port, None, &[]).await;
    let echo = Echo::start().await;
    let challenger = step_up_upstream().await;
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "")
        .route(
            "/pay",
            &echo.url(),
            "require = { acr = [\"urn:tollgate:mfa\"] }",
        )
        .route("/recent", &echo.url(), "require = { max_age = 2 }")
        .route("/challenging", &challenger, "");
    let tg = start_ready(port, &config).await;

    let b = logged_in_at(&tg, "").await;
    assert_eq!(call(&b, &tg, "/api/x").await.0, 200);
    let (status, body) = call(&b, &tg, "/pay/x").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(body["acr_values"], "urn:tollgate:mfa");
    let login = body["login"].as_str().unwrap().to_string();
    assert_eq!(
        login,
        "/login?provider=default&acr_values=urn%3Atollgate%3Amfa"
    );
    // The SPA follows the link (with its return_to): the provider asks for MFA, and the
    // route answers.
    let r = b
        .get(tg.url(&format!("{login}&return_to=/")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}\n{}", idp.stats().await, tg.log());
    assert_eq!(call(&b, &tg, "/pay/x").await.0, 200);
    let logins = idp.stats().await["logins"].clone();
    assert_eq!(logins["urn:tollgate:pwd"], 1, "{logins}");
    assert_eq!(logins["urn:tollgate:mfa"], 1, "{logins}");

    // max_age: a login more than 2 s old must be renewed.
    let (status, body) = until(&b, &tg, "/recent/x", 401).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(body["max_age"], 2);
    let login = body["login"].as_str().unwrap().to_string();
    assert_eq!(login, "/login?provider=default&max_age=2");
    let r = b.get(tg.url(&login)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(call(&b, &tg, "/recent/x").await.0, 200);

    // An upstream's own challenge: the same JSON, with the upstream's values.
    let (status, body) = call(&b, &tg, "/challenging/x").await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "step_up_required");
    assert_eq!(body["acr_values"], "urn:tollgate:mfa");
    assert_eq!(body["max_age"], 300);
    assert_eq!(
        body["login"],
        "/login?provider=default&acr_values=urn%3Atollgate%3Amfa&max_age=300"
    );
    // The connection still serves the next request.
    assert_eq!(call(&b, &tg, "/api/x").await.0, 200);
    tg.wait_metrics(&[
        "tollgate_logins_total{outcome=\"ok\",provider=\"default\"} 3",
        "tollgate_step_ups_total{provider=\"default\",source=\"route\"} 2",
        "tollgate_step_ups_total{provider=\"default\",source=\"upstream\"} 1",
    ])
    .await;
}

/// An upstream that answers every request with an RFC 9470 challenge.
async fn step_up_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = b"{\"error\":\"insufficient_user_authentication\"}";
                        let head = format!(
                            "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer error=\"insufficient_user_authentication\", error_description=\"MFA needed\", acr_values=\"urn:tollgate:mfa\", max_age=300\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(head.as_bytes()).await.is_err()
                            || stream.write_all(body).await.is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A browser logged in at `tg` through `/login{query}`: the `Cookie` header it then sends.
async fn cookie_after_login(tg: &Tollgate, query: &str) -> String {
    use reqwest::cookie::CookieStore;
    let (jar, b) = browser_with_jar();
    let r = b
        .get(tg.url(&format!("/login{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login {query}: {}", tg.log());
    jar.cookies(&tg.url("/").parse().unwrap())
        .expect("session cookies")
        .to_str()
        .unwrap()
        .to_string()
}

/// `GET /api/x` at `tg` with `cookie`: the status, polled (bounded) until it is `want`.
async fn api_until(tg: &Tollgate, cookie: &str, want: u16) -> u16 {
    tg.status_until("/api/x", cookie, want).await
}

/// Two providers on two replicas sharing a real Redis store: each provider's sessions serve
/// on either replica; the store's per-user index and the admin API keep the providers' users
/// apart although both call their user `test-user`; a back-channel logout from b, delivered
/// to one replica, ends b's session on both and leaves the default provider's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_providers_share_a_store_without_colliding() {
    let echo = Echo::start().await;
    let redis = common::redis::Redis::start().await;
    let ports = [free_port(), free_port()];
    let admin_port = free_port();
    let idp_a = idp_for(&ports).await;
    let idp_b = Idp::start_for_uris(
        ports[0],
        &ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}/callback/b"))
            .collect::<Vec<_>>()
            .join(","),
        None,
    )
    .await;
    let token = tempfile::NamedTempFile::new().unwrap();
    const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef-0123456789";
    std::fs::write(token.path(), format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut tgs = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let mut sections = format!(
            "[store]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n\
             [providers.b]\nissuer = \"{}\"\n{}",
            redis.url(),
            idp_b.issuer,
            CLIENTS[0].oidc_toml()
        );
        if i == 0 {
            sections += &format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken_file = \"{}\"\n",
                token.path().display()
            );
        }
        let config = tollgate_config(&idp_a, &CLIENTS[0], &echo.url(), "")
            .session("storage = \"store\"")
            .section(&sections);
        tgs.push(start_ready(*port, &config).await);
    }

    let a = cookie_after_login(&tgs[0], "?provider=default").await;
    let b = cookie_after_login(&tgs[1], "?provider=b").await;
    for tg in &tgs {
        assert_eq!(api_until(tg, &a, 200).await, 200, "{}", tg.log());
        assert_eq!(api_until(tg, &b, 200).await, 200, "{}", tg.log());
    }
    let listed = |provider: &'static str| async move {
        let r = plain()
            .get(format!(
                "http://127.0.0.1:{admin_port}/sessions?sub=test-user&provider={provider}"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        body["sessions"].as_array().unwrap().clone()
    };
    let mut created_at = 0;
    for provider in ["default", "b"] {
        let sessions = listed(provider).await;
        assert_eq!(sessions.len(), 1, "{provider}: {sessions:?}");
        assert_eq!(sessions[0]["provider"], provider);
        created_at = sessions[0]["created_at"].as_u64().unwrap();
    }

    // b's back-channel logout, to replica 0, for b's `test-user`, issued in the very second
    // b's session was created (`iat` has whole seconds): it ends that session too.
    let logout = idp_b
        .logout_token(
            serde_json::json!({"aud": CLIENTS[0].id, "sub": "test-user", "iat": created_at, "events": {EVENT: {}}}),
            false,
        )
        .await;
    let r = plain()
        .post(tgs[0].url("/backchannel-logout"))
        .form(&[("logout_token", logout)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tgs[0].log());
    for tg in &tgs {
        assert_eq!(
            api_until(tg, &b, 401).await,
            401,
            "b's session ends everywhere: {}",
            tg.log()
        );
        assert_eq!(api_until(tg, &a, 200).await, 200, "the default's stays");
    }
    assert!(listed("b").await.is_empty());
    assert_eq!(listed("default").await.len(), 1);
    for tg in &tgs {
        for cookie in [&a, &b] {
            let value = cookie.split_once('=').unwrap().1;
            assert!(!tg.log().contains(value), "no cookie value in a log");
        }
    }
}
