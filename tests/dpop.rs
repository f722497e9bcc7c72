//! DPoP-bound tokens end to end (RFC 9449): the real provider (DPoP with required nonces, token
//! introspection), a resource server that accepts only proof-bound tokens
//! ([`common::dpop_rs`]), the real binary.

mod common;

use common::dpop_rs::DpopResourceServer;
use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_bound_tokens_work_upstream_and_are_useless_without_the_session_key() {
    let echo = Echo::start().await;
    let port = free_port();
    let mut idp = idp_for(&[port]).await;
    idp.restart_with("IDP_DPOP_NONCE", "1").await;
    let client = &CLIENTS[0];
    let rs = DpopResourceServer::for_idp(&idp).await;
    let config = TestConfig::for_client(&idp, client)
        .oidc("dpop = true")
        .route("/orders", &rs.url(), "token_binding = \"dpop\"")
        .route("/api", &echo.url(), "")
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = start_ready(port, &config).await;

    // The login binds the code to the session's key (dpop_jkt) and the exchange carries a
    // proof; the provider demands a nonce first, and tollgate retries once with it.
    let b = logged_in(&tg).await;
    let stats = idp.stats().await;
    assert_eq!(stats["dpop"]["bound_grants"], 1, "{stats}");
    assert!(
        stats["dpop"]["nonce_refusals"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // Through tollgate the resource server gets `DPoP <token>` and a fresh proof for its own
    // URL, and finds the token bound to the proof's key.
    for path in ["/orders/1", "/orders/2"] {
        let body = api_json(&b, &tg, path).await;
        assert_eq!(body["ok"], true, "{body} {:?}", rs.verdicts());
        assert_eq!(body["sub"], "test-user");
    }

    // A route without token_binding still gets a Bearer (the echo does not check binding).
    let r = b
        .get(tg.url("/api/x"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = echo
        .last()
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .expect("a bearer on the other route")
        .to_string();

    // The token taken from an upstream is useless: with a proof from another key the
    // resource server refuses it, and so does the provider's userinfo as a plain bearer.
    let thief = tollgate::oidc::dpop::DpopKey::generate().unwrap();
    let htu = format!("{}/orders/3", rs.url());
    let proof = thief
        .proof("GET", &htu, Some(&token), None, tollgate::unix_now())
        .unwrap();
    let r = reqwest::Client::new()
        .get(&htu)
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("bound to"),
        "{body}"
    );
    let (status, _) = idp.userinfo(&token).await;
    assert_eq!(status, 401, "a DPoP-bound token must not work as a bearer");

    let log = tg.log();
    assert!(
        !log.contains(&token),
        "the access token leaked into the log"
    );
}

/// Refreshes prove the session's key too: the refreshed token is bound to the same key and
/// keeps working at the resource server. (Tokens live 2 s and `refresh_skew` is 1 s, the most
/// it may be for them: API calls find the token due a second after it was issued, and one of
/// them refreshes first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_token_is_bound_to_the_same_key() {
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let post_logout = format!("http://127.0.0.1:{port}/");
    let idp = Idp::start(&redirect, &post_logout, Some(2)).await;
    let client = &CLIENTS[0];
    let rs = DpopResourceServer::for_idp(&idp).await;
    let echo = Echo::start().await;
    let config = TestConfig::for_client(&idp, client)
        .scopes(&["openid", "profile", "email", "offline_access"])
        .oidc("dpop = true")
        .session("refresh_skew = \"1s\"")
        .route("/orders", &rs.url(), "token_binding = \"dpop\"")
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = start_ready(port, &config).await;
    let b = logged_in(&tg).await;
    let deadline = std::time::Instant::now() + HANG;
    let stats = loop {
        let body = api_json(&b, &tg, "/orders/1").await;
        assert_eq!(body["ok"], true, "{body} {:?} {}", rs.verdicts(), tg.log());
        let stats = idp.stats().await;
        if stats["token_requests"]["refresh_token"].as_u64().unwrap() >= 1 {
            break stats;
        }
        assert!(std::time::Instant::now() < deadline, "no refresh: {stats}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        stats["dpop"]["bound_grants"].as_u64().unwrap() >= 2,
        "the refresh was bound too: {stats}"
    );
}
