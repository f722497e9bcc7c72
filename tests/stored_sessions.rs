//! Server-side sessions (`[session] storage = "store"`): a provider whose ID token carries 300
//! groups (too large for cookies) logs in with a cookie of a few dozen bytes that passes an
//! nginx with default buffers; a session survives a restart and is served by a second replica
//! on the same Redis, whose dump holds no token or subject in clear; the admin API lists and
//! ends sessions on every replica; `/logout?everywhere=1` and a back-channel logout by `sub`
//! end a user's other sessions; switching modes keeps people logged in or answers a clean
//! 401; a store outage answers a cold session 503, never a logout.

mod common;

use std::time::Duration;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::nginx::Nginx;
use common::redis::Redis;
use common::*;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef-0123456789";

/// The admin token's file (kept for the test's life).
fn token_file() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), format!("{ADMIN_TOKEN}\n")).unwrap();
    f
}

/// Store mode on `redis` (in process without), with the admin API on `admin` when given.
fn stored(
    idp: &Idp,
    echo: &Echo,
    redis: Option<&Redis>,
    admin: Option<(u16, &tempfile::NamedTempFile)>,
) -> TestConfig {
    let mut sections = String::new();
    if let Some(r) = redis {
        sections += &format!(
            "[store]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n",
            r.url()
        );
    }
    if let Some((port, file)) = admin {
        sections += &format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
            file.path().display()
        );
    }
    tollgate_config(idp, &CLIENTS[0], &echo.url(), "")
        .session("storage = \"store\"")
        .section(&sections)
}

async fn api_status(tg: &Tollgate, cookie: &str) -> u16 {
    tg.with_session(&plain(), reqwest::Method::GET, "/api/data", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `tg` answers `cookie` with `status` (bounded); the last status.
async fn until_status(tg: &Tollgate, cookie: &str, status: u16) -> u16 {
    tg.status_until("/api/data", cookie, status).await
}

/// Whether every one of `tgs` refuses `cookie` (401) within one second of `since`: the admin
/// API's promise (a revocation reaches the replicas through the store's pub/sub).
async fn refused_everywhere_within_a_second(
    tgs: &[Tollgate],
    cookie: &str,
    since: std::time::Instant,
) -> bool {
    let deadline = since + Duration::from_secs(1);
    for tg in tgs {
        while api_status(tg, cookie).await != 401 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    true
}

/// The `Cookie` header a browser would send after these `Set-Cookie` lines replaced `cookie`.
fn after(cookie: &str, set: &[String]) -> String {
    let mut jar: Vec<(String, String)> = cookie
        .split("; ")
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for line in set {
        let pair = line.split(';').next().unwrap();
        let (name, value) = pair.split_once('=').unwrap();
        jar.retain(|(n, _)| n != name);
        if !line.contains("Max-Age=0") {
            jar.push((name.to_string(), value.to_string()));
        }
    }
    jar.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// 300 groups: cookie mode refuses the login with a clear page; store mode logs in with a
/// handle cookie of at most 300 bytes, and the API call works through nginx's default buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_claim_too_large_for_cookies_logs_in_with_store() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = Idp::start_env(port, None, &[("IDP_GROUPS", "300")]).await;
    {
        let tg = start_ready(port, &tollgate_config(&idp, &CLIENTS[0], &echo.url(), "")).await;
        let r = browser()
            .get(tg.url("/login?return_to=/"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        let page = r.text().await.unwrap();
        assert!(
            page.contains("too large") && page.contains("storage"),
            "{page}"
        );
    }
    let tg = start_ready(port, &stored(&idp, &echo, None, None)).await;
    let cookie = login_cookie(&tg).await;
    assert!(cookie.len() <= 300, "{} bytes: {cookie}", cookie.len());
    assert_eq!(api_status(&tg, &cookie).await, 200, "{}", tg.log());
    let nginx = Nginx::start(tg.addr()).await;
    let r = plain()
        .get(format!("http://127.0.0.1:{}/api/data", nginx.port))
        .header("cookie", &cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "through nginx: {}", tg.log());
    assert!(echo.last().header("authorization").is_some());
    assert!(tg.log().contains("sessions live in this process only"));
}

/// Every key the store holds, and its value(s), as text.
fn redis_dump(redis: &Redis) -> String {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-u", &redis.url(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut dump = String::new();
    for key in cli(&["--scan"]).lines() {
        let kind = cli(&["TYPE", key]);
        let value = match kind.trim() {
            "string" => cli(&["GET", key]),
            "set" => cli(&["SMEMBERS", key]),
            "zset" => cli(&["ZRANGE", key, "0", "-1"]),
            other => format!("({other})"),
        };
        dump += &format!("{key} = {value}\n");
    }
    dump
}

/// A session on Redis survives a restart of tollgate, is served by a second replica, and the
/// store holds neither its tokens nor its subject in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_session_survives_a_restart_and_any_replica_serves_it() {
    let echo = Echo::start().await;
    let redis = Redis::start().await;
    let ports = [free_port(), free_port()];
    let idp = idp_for(&ports).await;
    let config = stored(&idp, &echo, Some(&redis), None);
    let first = start_ready(ports[0], &config).await;
    let cookie = login_cookie(&first).await;
    assert!(cookie.len() <= 300, "{cookie}");
    assert_eq!(api_status(&first, &cookie).await, 200);
    let bearer = echo.last().header("authorization").unwrap().to_string();
    let second = start_ready(ports[1], &config).await;
    assert_eq!(api_status(&second, &cookie).await, 200, "{}", second.log());
    second.wait_metrics(&["tollgate_sessions_active 1"]).await;
    drop(first);
    let first = start_ready(ports[0], &config).await;
    assert_eq!(api_status(&first, &cookie).await, 200, "after a restart");

    let dump = redis_dump(&redis);
    assert!(dump.contains("test:session:"), "{dump}");
    assert!(dump.contains("test:sessions-of:sub:"), "{dump}");
    let token = bearer.trim_start_matches("Bearer ");
    for secret in [token, &token[token.len() - 20..], "test-user", "staff"] {
        assert!(!dump.contains(secret), "{secret} in the store's dump");
    }
}

/// The admin API on two replicas: lists a user's sessions (never a cookie value), ends one and
/// then all of them, each within a moment on every replica; refuses calls without the token.
/// `/logout?everywhere=1` and a back-channel logout by `sub` end the user's other sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_logout_everywhere_end_sessions_on_every_replica() {
    let echo = Echo::start().await;
    let redis = Redis::start().await;
    let ports = [free_port(), free_port()];
    let admin_ports = [free_port(), free_port()];
    let idp = idp_for(&ports).await;
    let token = token_file();
    let mut tgs = Vec::new();
    for (port, admin) in ports.iter().zip(admin_ports) {
        let config = stored(&idp, &echo, Some(&redis), Some((admin, &token)));
        tgs.push(start_ready(*port, &config).await);
    }
    let admin = |i: usize, method: reqwest::Method, path: &str| {
        plain()
            .request(method, format!("http://127.0.0.1:{}{path}", admin_ports[i]))
            .bearer_auth(ADMIN_TOKEN)
    };
    let list = |i: usize| async move {
        let r = admin(i, reqwest::Method::GET, "/sessions?sub=test-user")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        body["sessions"].as_array().unwrap().clone()
    };

    let one = login_cookie(&tgs[0]).await;
    let listed = list(1).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let s = &listed[0];
    let id = s["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(s["provider"], "default");
    assert_eq!(s["client"], "127.0.0.1");
    assert!(s["created_at"].as_u64().unwrap() <= s["expires_at"].as_u64().unwrap());
    assert!(s["last_seen"].is_u64() && s["user_agent"].is_string());
    let value = one.split_once('=').unwrap().1;
    assert!(!serde_json::to_string(&listed).unwrap().contains(value));

    // `tollgate sessions list` calls the same API, from the config's [admin].
    let config_file = tempfile::NamedTempFile::new().unwrap();
    let text =
        stored(&idp, &echo, Some(&redis), Some((admin_ports[0], &token))).render(ports[0], 1);
    std::fs::write(config_file.path(), text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["sessions", "list", "--sub", "test-user", "--config"])
        .arg(config_file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["sessions"][0]["id"], id.as_str());

    let two = login_cookie(&tgs[0]).await;
    let three = login_cookie(&tgs[1]).await;
    assert_eq!(list(0).await.len(), 3);

    // Refusals.
    let r = plain()
        .get(format!(
            "http://127.0.0.1:{}/sessions?sub=test-user",
            admin_ports[0]
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = plain()
        .get(format!(
            "http://127.0.0.1:{}/sessions?sub=test-user",
            admin_ports[0]
        ))
        .bearer_auth("test-admin-token-0123456789abcdef-0123456788")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = admin(
        0,
        reqwest::Method::DELETE,
        &format!("/sessions/{}", "0".repeat(32)),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    // One session ends, on every replica; the others stay.
    let r = admin(1, reqwest::Method::DELETE, &format!("/sessions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ended = std::time::Instant::now();
    assert!(
        refused_everywhere_within_a_second(&tgs, &one, ended).await,
        "{}",
        tgs[0].log()
    );
    for tg in &tgs {
        assert_eq!(api_status(tg, &two).await, 200);
    }
    assert!(tgs[1].log().contains("admin"), "{}", tgs[1].log());
    tgs[1]
        .wait_metrics(&["tollgate_admin_actions_total{action=\"revoke\",outcome=\"ok\"} 1"])
        .await;

    // Log out everywhere from one browser: the other's session ends on every replica.
    let r = tgs[0]
        .with_session(
            &plain(),
            reqwest::Method::POST,
            "/logout?everywhere=1",
            &two,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    for tg in &tgs {
        assert_eq!(until_status(tg, &three, 401).await, 401, "{}", tg.log());
    }
    assert!(list(0).await.is_empty());

    // All of a user's sessions at once.
    let four = login_cookie(&tgs[0]).await;
    let five = login_cookie(&tgs[1]).await;
    let r = admin(0, reqwest::Method::DELETE, "/sessions?sub=test-user")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ended = std::time::Instant::now();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["ended"], 2);
    for c in [&four, &five] {
        assert!(
            refused_everywhere_within_a_second(&tgs, c, ended).await,
            "{}",
            tgs[1].log()
        );
    }

    // A back-channel logout by sub ends the stored sessions too.
    let six = login_cookie(&tgs[1]).await;
    assert_eq!(list(0).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await; // iat must follow the login
    let claims = serde_json::json!({
        "aud": CLIENTS[0].id,
        "sub": "test-user",
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    let logout_token = idp.logout_token(claims, false).await;
    let r = plain()
        .post(tgs[0].url("/backchannel-logout"))
        .form(&[("logout_token", logout_token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for tg in &tgs {
        assert_eq!(until_status(tg, &six, 401).await, 401, "{}", tg.log());
    }
    assert!(list(1).await.is_empty());

    // A new token in the file: required from the next call on, on every replica.
    let new_token = "a-new-admin-token-0123456789abcdef-0123456789";
    std::fs::write(token.path(), new_token).unwrap();
    for port in admin_ports {
        let url = format!("http://127.0.0.1:{port}/sessions?sub=test-user");
        let mut status = 0;
        // The file watch polls every 2 s: bounded, well past that.
        for _ in 0..100 {
            let r = plain()
                .get(&url)
                .bearer_auth(new_token)
                .send()
                .await
                .unwrap();
            status = r.status().as_u16();
            if status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(status, 200, "the new token was not taken up");
        let r = plain()
            .get(&url)
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "the old token still works");
    }
}

/// Cookie mode to store mode: the cookie session is moved into the store on its next request
/// (the browser gets the handle instead). Back to cookie mode: the handle gets a clean 401, and
/// `/logout?everywhere=1` ends the user's other cookie sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_storage_moves_sessions_in_and_refuses_handles_cleanly() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let cookies = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "");
    let tg = start_ready(port, &cookies).await;
    let whole = login_cookie(&tg).await;
    drop(tg);

    let tg = start_ready(port, &stored(&idp, &echo, None, None)).await;
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/data", &whole)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let handle = after(&whole, &set_cookies(&r));
    assert!(handle.len() < 300 && handle != whole, "{handle}");
    assert_eq!(api_status(&tg, &handle).await, 200);
    assert!(tg.log().contains("moved into the store"));
    drop(tg);

    let tg = start_ready(port, &cookies).await;
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/data", &handle)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["login"].is_string(), "{body}");
    assert!(tg.log().contains("store_handle"), "{}", tg.log());

    // In cookie mode, logging out everywhere ends the user's other cookie sessions too.
    let a = login_cookie(&tg).await;
    let b = login_cookie(&tg).await;
    let r = tg
        .with_session(&plain(), reqwest::Method::POST, "/logout?everywhere=1", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(api_status(&tg, &b).await, 401);
}

/// The store down: a session this replica has in memory keeps working; one it has not seen
/// gets 503 store_unavailable with Retry-After, and its cookie is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_answers_a_cold_session_503_and_serves_warm_ones() {
    let echo = Echo::start().await;
    let mut redis = Redis::start().await;
    let ports = [free_port(), free_port()];
    let idp = idp_for(&ports).await;
    let config = stored(&idp, &echo, Some(&redis), None);
    let warm = start_ready(ports[0], &config).await;
    let cold = start_ready(ports[1], &config).await;
    let cookie = login_cookie(&warm).await;
    redis.stop();
    cold.wait_metrics(&["tollgate_store_up 0"]).await;
    assert_eq!(api_status(&warm, &cookie).await, 200, "{}", warm.log());
    let r = cold
        .with_session(&plain(), reqwest::Method::GET, "/api/data", &cookie)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        !set_cookies(&r).iter().any(|c| c.starts_with("tollgate")),
        "no logout"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "store_unavailable");
}

/// A refresh under `storage = "store"` writes the new tokens to the store and leaves the cookie
/// as it is: another replica, which never saw the session, sends the new token without asking
/// the provider again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_writes_the_store_and_leaves_the_cookie() {
    let echo = Echo::start().await;
    let redis = Redis::start().await;
    let ports = [free_port(), free_port()];
    let redirects: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/callback"))
        .collect();
    let post_logout: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/"))
        .collect();
    // Four-second access tokens: refreshed half-way through.
    let idp = Idp::start(&redirects.join(","), &post_logout.join(","), Some(4)).await;
    let config = stored(&idp, &echo, Some(&redis), None);
    let first = start_ready(ports[0], &config).await;
    let cookie = login_cookie(&first).await;
    assert_eq!(api_status(&first, &cookie).await, 200);
    let issued = echo.last().header("authorization").unwrap().to_string();
    idp.reset_stats().await;
    // Bounded wait for the token to come due (a clock condition, checked every 200 ms).
    let mut refreshed = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = first
            .with_session(&plain(), reqwest::Method::GET, "/api/data", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", first.log());
        let ours: Vec<String> = set_cookies(&r)
            .into_iter()
            .filter(|c| c.starts_with("tollgate"))
            .collect();
        assert!(ours.is_empty(), "the cookie changed: {ours:?}");
        let now = echo.last().header("authorization").unwrap().to_string();
        if now != issued {
            refreshed = Some(now);
            break;
        }
    }
    let refreshed = refreshed.expect("refreshed within 10 s");
    let second = start_ready(ports[1], &config).await;
    assert_eq!(api_status(&second, &cookie).await, 200);
    assert_eq!(
        echo.last().header("authorization").unwrap(),
        refreshed,
        "the other replica read the new token from the store"
    );
    let stats = idp.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");
}
