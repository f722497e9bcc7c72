//! Several tollgate processes sharing one `redis-server` (`[store]`): a logout or a
//! back-channel logout received by one replica is enforced by all of them, and a store outage
//! neither stops the sessions being served nor, once the store is back, the sharing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::redis::Redis;
use common::*;
use reqwest::cookie::CookieStore;

struct Cluster {
    _echo: Echo,
    idp: Idp,
    redis: Redis,
    replicas: Vec<Tollgate>,
}

/// A provider, an upstream, a redis-server and `n` replicas with the same config and keys.
async fn cluster(n: usize) -> Cluster {
    let echo = Echo::start().await;
    let redis = Redis::start().await;
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let idp = idp_for(&ports).await;
    let store = format!(
        "[store]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n",
        redis.url()
    );
    let mut replicas = Vec::new();
    for port in &ports {
        let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "").section(&store);
        let mut tg = Tollgate::start_on(*port, |p, m| config.render(p, m)).await;
        tg.wait_for("/readyz").await.expect("replica ready");
        replicas.push(tg);
    }
    Cluster {
        _echo: echo,
        idp,
        redis,
        replicas,
    }
}

/// Logs a browser in through `tg` and returns the `Cookie` header it then holds.
async fn log_in(tg: &Tollgate) -> String {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .timeout(HANG)
        .build()
        .unwrap();
    let r = browser.get(tg.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 200, "login failed: {}", tg.log());
    jar.cookies(&tg.url("/").parse().unwrap())
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn api_status(tg: &Tollgate, cookie: &str) -> u16 {
    tg.with_session(&plain(), reqwest::Method::GET, "/api/data", cookie)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls `tg` with `cookie` until it answers `status` (bounded: a correctness check, not a
/// timing one); returns the last status.
async fn until_status(tg: &Tollgate, cookie: &str, status: u16) -> u16 {
    let mut last = 0;
    for _ in 0..100 {
        last = api_status(tg, cookie).await;
        if last == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last
}

async fn logout(tg: &Tollgate, cookie: &str) {
    let r = plain()
        .post(tg.url("/logout"))
        .header("cookie", cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}

/// A logout on one replica: the copied cookie gets 401 on the others too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_replica_is_enforced_by_all() {
    let c = cluster(3).await;
    let cookie = log_in(&c.replicas[0]).await;
    for tg in &c.replicas {
        assert_eq!(
            api_status(tg, &cookie).await,
            200,
            "any replica serves the session"
        );
    }
    logout(&c.replicas[0], &cookie).await;
    c.replicas[0]
        .wait_metrics(&["tollgate_revocations_total{source=\"logout\"} 1"])
        .await;
    for (i, tg) in c.replicas.iter().enumerate() {
        assert_eq!(
            until_status(tg, &cookie, 401).await,
            401,
            "replica {i}: {}",
            tg.log()
        );
    }
    // A replica started after the logout loads it from the store.
    let late = {
        let store = format!(
            "[store]\nurl = \"{}\"\nkey_prefix = \"test:\"\n",
            c.redis.url()
        );
        let echo = Echo::start().await;
        let config = tollgate_config(&c.idp, &CLIENTS[0], &echo.url(), "").section(&store);
        let mut tg = Tollgate::start(|p, m| config.render(p, m)).await;
        tg.wait_for("/readyz").await.unwrap();
        (echo, tg)
    };
    assert_eq!(
        until_status(&late.1, &cookie, 401).await,
        401,
        "{}",
        late.1.log()
    );
}

/// A back-channel logout posted to one replica ends the session on every replica, and its
/// token cannot be replayed at another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_reaches_every_replica_once() {
    let c = cluster(2).await;
    let cookie = log_in(&c.replicas[0]).await;
    let session = open_session(&c.replicas[0].codec(), &cookie).expect("a session");
    let claims = serde_json::json!({
        "aud": CLIENTS[0].id,
        "sid": session.claims.sid.as_deref().unwrap(),
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    let token = c.idp.logout_token(claims, false).await;
    let post = |tg: &Tollgate| {
        plain()
            .post(tg.url("/backchannel-logout"))
            .form(&[("logout_token", token.clone())])
            .send()
    };
    assert_eq!(post(&c.replicas[0]).await.unwrap().status(), 200);
    assert_eq!(
        post(&c.replicas[1]).await.unwrap().status(),
        400,
        "the jti was used at another replica"
    );
    for tg in &c.replicas {
        assert_eq!(until_status(tg, &cookie, 401).await, 401, "{}", tg.log());
    }
}

/// With the store down, sessions are still served and a logout is still enforced where it
/// happened; once the store is back, logouts reach every replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_degrades_to_one_replica_and_recovers() {
    let mut c = cluster(2).await;
    let first = log_in(&c.replicas[0]).await;
    c.replicas[1].wait_metrics(&["tollgate_store_up 1"]).await;
    c.redis.stop();
    c.replicas[1].wait_metrics(&["tollgate_store_up 0"]).await;
    for tg in &c.replicas {
        assert_eq!(
            api_status(tg, &first).await,
            200,
            "served while the store is down"
        );
    }
    logout(&c.replicas[0], &first).await;
    assert_eq!(
        api_status(&c.replicas[0], &first).await,
        401,
        "enforced where it happened"
    );

    c.redis.restart().await;
    // The replicas reconnect by themselves; a logout after that reaches both.
    let mut reached = false;
    for _ in 0..50 {
        let next = log_in(&c.replicas[0]).await;
        logout(&c.replicas[0], &next).await;
        if until_status(&c.replicas[1], &next, 401).await == 401 {
            reached = true;
            break;
        }
    }
    assert!(reached, "{}\n{}", c.replicas[0].log(), c.replicas[1].log());
    assert!(
        !c.replicas[1].log().contains("panicked"),
        "{}",
        c.replicas[1].log()
    );
}

/// A burst of 100 calls spread round-robin over three replicas, all with one access token due
/// for refresh, against a provider that rotates refresh tokens and revokes the grant when a
/// used one comes back: exactly one refresh at the provider, every call 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_across_replicas_for_a_burst() {
    let c = cluster(3).await;
    let cookie = log_in(&c.replicas[0]).await;
    let mut session = open_session(&c.replicas[0].codec(), &cookie).expect("a session");
    assert!(session.refresh_token.is_some());
    session.access_expires_at = tollgate::unix_now() - 1;
    let expired = c.replicas[0].mint_cookie_for(session);
    c.idp.reset_stats().await;
    let client = plain();
    let calls = (0..100).map(|i| {
        let tg = &c.replicas[i % c.replicas.len()];
        tg.with_session(&client, reqwest::Method::GET, "/api/burst", &expired)
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let stats = c.idp.stats().await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?} {stats}\n{}",
        c.replicas[1].log()
    );
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["refresh_failures"], 0, "{stats}");
    // Exactly one replica won the lock; the outcomes are in the metrics.
    let mut won = 0;
    for tg in &c.replicas {
        let text = tg.wait_metrics(&["tollgate_store_up 1"]).await;
        won += text
            .lines()
            .filter(|l| l.starts_with("tollgate_refresh_total{outcome=\"won\"} 1"))
            .count();
    }
    assert_eq!(won, 1);
}
