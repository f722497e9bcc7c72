//! Per-route audiences (RFC 8707), end to end: the real provider (resource indicators on; its
//! API tokens are JWTs, so the upstream can read `aud` and `scope`; refresh tokens rotate),
//! a real upstream, the real binary.

mod common;

use base64::Engine as _;
use common::flow::*;
use common::idp::CLIENTS;
use common::*;

const ORDERS: &str = "https://orders.example";
const BILLING: &str = "https://billing.example";

/// The claims of the JWT in an `Authorization: Bearer` value, or `None` for an opaque token.
fn jwt_claims(authorization: &str) -> Option<serde_json::Value> {
    let token = authorization.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `Authorization` values the upstream saw on requests under `prefix`.
fn authorizations(echo: &Echo, prefix: &str) -> Vec<String> {
    echo.seen()
        .iter()
        .filter(|s| s.path.starts_with(prefix))
        .map(|s| s.header("authorization").unwrap_or_default().to_string())
        .collect()
}

fn audience_config(idp: &common::idp::Idp, echo: &Echo) -> TestConfig {
    TestConfig::for_client(idp, &CLIENTS[0])
        .route(
            "/orders",
            &echo.url(),
            &format!("resource = \"{ORDERS}\"\nscopes = [\"read\"]"),
        )
        .route(
            "/billing",
            &echo.url(),
            &format!("resource = \"{BILLING}\""),
        )
        .route("/api", &echo.url(), "")
        .route("/", &echo.url(), "auth = \"none\"")
}

/// Two routes with different resources get tokens with different `aud` (and the route's
/// scopes), the session's own routes keep the session's token, and a burst of requests to
/// both routes at once costs one refresh per route, with no refresh token spent twice
/// (the provider rotates them and would revoke the grant on reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_get_tokens_for_their_own_audience_one_refresh_each() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let tg = start_ready(port, &audience_config(&idp, &echo)).await;
    let b = logged_in(&tg).await;

    let paths: Vec<String> = (0..8)
        .flat_map(|i| {
            [
                format!("/orders/{i}"),
                format!("/billing/{i}"),
                format!("/api/{i}"),
            ]
        })
        .collect();
    let replies = futures_util::future::join_all(paths.iter().map(|p| {
        b.get(tg.url(p))
            .header("x-csrf", "1")
            .header("accept", "application/json")
            .send()
    }))
    .await;
    for (p, r) in paths.iter().zip(replies) {
        let r = r.unwrap();
        assert_eq!(r.status(), 200, "{p}: {}", tg.log());
    }

    for a in authorizations(&echo, "/orders") {
        let claims = jwt_claims(&a).unwrap_or_else(|| panic!("not a JWT: {a}"));
        assert_eq!(claims["aud"], ORDERS, "{claims}");
        assert_eq!(claims["scope"], "read", "the route's scopes only: {claims}");
        assert_eq!(claims["sub"], "test-user");
    }
    for a in authorizations(&echo, "/billing") {
        let claims = jwt_claims(&a).unwrap_or_else(|| panic!("not a JWT: {a}"));
        assert_eq!(claims["aud"], BILLING, "{claims}");
    }
    let session_tokens = authorizations(&echo, "/api");
    assert!(
        session_tokens.iter().all(|a| jwt_claims(a).is_none()),
        "the session's own token is the provider's opaque one: {session_tokens:?}"
    );

    let stats = idp.stats().await;
    assert_eq!(stats["resource_refreshes"][ORDERS], 1, "{stats}");
    assert_eq!(stats["resource_refreshes"][BILLING], 1, "{stats}");
    assert_eq!(stats["refresh_failures"], 0, "{stats}");

    // Kept for their lifetime: more calls ask the provider nothing.
    for p in ["/orders/again", "/billing/again", "/orders/third"] {
        let body = api_json(&b, &tg, p).await;
        assert_eq!(
            body["path"].as_str().map(|s| s.starts_with(p)),
            Some(true),
            "{body}"
        );
    }
    let stats = idp.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 2, "{stats}");

    tg.wait_metrics(&["tollgate_route_tokens_total{outcome=\"issued\"} 2"])
        .await;
}

/// A scope the grant does not cover: 403 `insufficient_scope` for that route only; the
/// session and its other routes go on, and the refusal spent no refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_audience_is_403_for_that_route_only() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    // `admin` is not a scope of the provider's APIs: it is never granted.
    let config = audience_config(&idp, &echo).route(
        "/admin",
        &echo.url(),
        &format!("resource = \"{ORDERS}\"\nscopes = [\"admin\"]"),
    );
    let tg = start_ready(port, &config).await;
    let b = logged_in(&tg).await;

    let before = echo.count();
    let r = b
        .get(tg.url("/admin/x"))
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert_eq!(
        echo.count(),
        before,
        "a refused request reached the upstream"
    );

    // The refusal did not spend the token; uses for other purposes arriving together right
    // after it take their turns with it (never two at once: the provider would revoke the
    // grant on the second).
    let paths = [
        "/orders/1",
        "/admin/2",
        "/billing/1",
        "/api/1",
        "/orders/2",
        "/billing/2",
    ];
    let replies = futures_util::future::join_all(
        paths
            .iter()
            .map(|p| b.get(tg.url(p)).header("x-csrf", "1").send()),
    )
    .await;
    for (p, r) in paths.iter().zip(replies) {
        let want = if p.starts_with("/admin") { 403 } else { 200 };
        assert_eq!(r.unwrap().status(), want, "{p}: {}", tg.log());
    }
    let stats = idp.stats().await;
    assert_eq!(stats["refresh_errors"]["invalid_scope"], 1, "{stats}");
    assert!(
        stats["refresh_errors"]["invalid_grant"].is_null(),
        "{stats}"
    );
}

/// A resource added to the config after the user logged in: 401, and the next login asks
/// for it and the route works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_added_after_login_needs_a_new_login() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let before = TestConfig::for_client(&idp, &CLIENTS[0])
        .route("/api", &echo.url(), "")
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = start_ready(port, &before).await;
    let b = logged_in(&tg).await;
    drop(tg);

    let tg = start_ready(port, &audience_config(&idp, &echo)).await;
    let r = b
        .get(tg.url("/orders/1"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "{}", tg.log());
    let stats = idp.stats().await;
    assert_eq!(
        stats["token_requests"]["refresh_token"], 0,
        "no refresh token spent: {stats}"
    );
    let r = b
        .get(tg.url("/api/1"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the session itself is fine");

    let r = b.get(tg.url("/login?return_to=/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = b
        .get(tg.url("/orders/1"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let claims = jwt_claims(echo.last().header("authorization").unwrap()).unwrap();
    assert_eq!(claims["aud"], ORDERS);
}

/// A browser that kept an older cookie (two responses each set one; the one holding the
/// refresh token already spent came last): every call with it still works, each purpose's
/// refresh goes on from the token the last one rotated to, and no refresh token is spent
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_that_missed_a_rotation_goes_on_from_it() {
    use reqwest::cookie::CookieStore;
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let config = audience_config(&idp, &echo).route(
        "/reports",
        &echo.url(),
        &format!("resource = \"{ORDERS}\"\nscopes = [\"write\"]"),
    );
    let tg = start_ready(port, &config).await;
    let (jar, b) = browser_with_jar();
    let r = b.get(tg.url("/login?return_to=/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let login_cookie = jar
        .cookies(&tg.url("/").parse().unwrap())
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();

    let c = plain();
    for p in [
        "/orders/1",
        "/billing/1",
        "/reports/1",
        "/orders/2",
        "/api/1",
    ] {
        let r = c
            .get(tg.url(p))
            .header("cookie", &login_cookie)
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}: {}", tg.log());
    }
    let stats = idp.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 3, "{stats}");
    assert_eq!(stats["refresh_failures"], 0, "{stats}");
    let claims = jwt_claims(&authorizations(&echo, "/reports")[0]).unwrap();
    assert_eq!(
        (claims["aud"].as_str(), claims["scope"].as_str()),
        (Some(ORDERS), Some("write"))
    );
}

/// Replicas share route tokens through the store: a token one replica obtained is used by
/// another without asking the provider, and a burst across both replicas costs one refresh
/// per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_route_tokens_through_the_store() {
    let redis = common::redis::Redis::start().await;
    let echo = Echo::start().await;
    let ports = [free_port(), free_port()];
    let idp = idp_for(&ports).await;
    let config = audience_config(&idp, &echo).section(&format!(
        "[store]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n",
        redis.url()
    ));
    let mut replicas = Vec::new();
    for port in ports {
        let tg = start_ready(port, &config).await;
        tg.wait_metrics(&["tollgate_store_up 1"]).await;
        replicas.push(tg);
    }
    let (a, z) = (&replicas[0], &replicas[1]);
    let b = logged_in(a).await;

    let r = b
        .get(a.url("/orders/1"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", a.log());
    let r = b
        .get(z.url("/orders/2"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", z.log());
    let tokens = authorizations(&echo, "/orders");
    assert_eq!(
        tokens[0], tokens[1],
        "the second replica used the first one's token"
    );
    z.wait_metrics(&["tollgate_route_tokens_total{outcome=\"store\"} 1"])
        .await;

    let replies = futures_util::future::join_all((0..8).map(|i| {
        let tg = if i % 2 == 0 { a } else { z };
        b.get(tg.url(&format!("/billing/{i}")))
            .header("x-csrf", "1")
            .send()
    }))
    .await;
    for r in replies {
        assert_eq!(r.unwrap().status(), 200);
    }
    let stats = idp.stats().await;
    assert_eq!(stats["resource_refreshes"][ORDERS], 1, "{stats}");
    assert_eq!(stats["resource_refreshes"][BILLING], 1, "{stats}");
    assert_eq!(stats["refresh_failures"], 0, "{stats}");
}
