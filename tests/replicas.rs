//! Several tollgate processes sharing one store (`[store]`): a logout or a back-channel logout
//! received by one replica is enforced by all of them, a burst on a token due for refresh
//! costs one refresh at the provider, a replica that dies holding the refresh lock delays the
//! others only until the lock lapses, and a store outage neither stops the sessions being
//! served nor, once the store is back, the sharing. The refresh and revocation paths run
//! against one `redis-server` and against a three-node Redis Cluster.

mod common;

use std::time::Duration;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::redis::{Redis, RedisCluster};
use common::*;
use reqwest::cookie::CookieStore;

/// The store the replicas share.
enum Backend {
    Single(Redis),
    Cluster(RedisCluster),
}

impl Backend {
    fn section(&self) -> String {
        let target = match self {
            Backend::Single(r) => format!("url = \"{}\"", r.url()),
            Backend::Cluster(c) => format!(
                "cluster_urls = [{}]",
                c.urls()
                    .iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!("[store]\n{target}\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n")
    }

    fn redis(&mut self) -> &mut Redis {
        match self {
            Backend::Single(r) => r,
            Backend::Cluster(_) => panic!("a single redis-server was expected"),
        }
    }
}

struct Replicas {
    _echo: Echo,
    idp: Idp,
    store: Backend,
    /// The replicas' extra environment, for one started later.
    env: Vec<(String, String)>,
    replicas: Vec<Tollgate>,
}

/// A provider, an upstream, one redis-server and `n` replicas with the same config and keys.
async fn replicas(n: usize) -> Replicas {
    start(n, Backend::Single(Redis::start().await), "", &[]).await
}

/// The same on a three-node Redis Cluster.
async fn replicas_on_cluster(n: usize) -> Replicas {
    start(n, Backend::Cluster(RedisCluster::start().await), "", &[]).await
}

async fn start(n: usize, store: Backend, extra_oidc: &str, env: &[(&str, &str)]) -> Replicas {
    let echo = Echo::start().await;
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let idp = idp_for(&ports).await;
    let section = store.section();
    let mut replicas = Vec::new();
    for port in &ports {
        let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), extra_oidc).section(&section);
        let mut tg = Tollgate::start_on_with_env(*port, |p, m| config.render(p, m), env).await;
        tg.wait_for("/readyz").await.expect("replica ready");
        tg.wait_metrics(&["tollgate_store_up 1"]).await;
        replicas.push(tg);
    }
    Replicas {
        _echo: echo,
        idp,
        store,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        replicas,
    }
}

/// Logs a browser in through `tg` and returns the `Cookie` header it then holds.
async fn log_in(tg: &Tollgate) -> String {
    log_in_with_browser(tg).await.0
}

/// As [`log_in`], also returning the browser (which holds the provider's session cookie).
async fn log_in_with_browser(tg: &Tollgate) -> (String, reqwest::Client) {
    let (jar, browser) = browser_with_jar();
    let r = browser.get(tg.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 200, "login failed: {}", tg.log());
    let cookie = jar
        .cookies(&tg.url("/").parse().unwrap())
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (cookie, browser)
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
    logout_is_enforced_by_all(replicas(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_on_one_replica_is_enforced_by_all_on_a_redis_cluster() {
    logout_is_enforced_by_all(replicas_on_cluster(3).await).await;
}

async fn logout_is_enforced_by_all(c: Replicas) {
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
        let echo = Echo::start().await;
        let config =
            tollgate_config(&c.idp, &CLIENTS[0], &echo.url(), "").section(&c.store.section());
        let env: Vec<(&str, &str)> = c
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut tg = Tollgate::start_with_env(|p, m| config.render(p, m), &env).await;
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

/// `rediss://` with an ACL user (the default user off), the server's certificate from a private
/// CA trusted through `SSL_CERT_FILE`: revocations and refreshes are shared as over plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_tls_with_an_acl_user_is_shared() {
    let ca = common::ca::Ca::new();
    ca.issue(1);
    let (cert_file, key_file) = (ca.cert_file(), ca.key_file());
    let ca_file = cert_file.with_file_name("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let redis = Redis::start_tls(&cert_file, &key_file, "tollgate", "s3cret-pw").await;
    assert!(redis.url().starts_with("rediss://tollgate:s3cret-pw@"));
    let c = start(
        2,
        Backend::Single(redis),
        "",
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    )
    .await;
    for tg in &c.replicas {
        assert!(
            !tg.log().contains("s3cret-pw"),
            "the store password is not logged"
        );
    }
    logout_is_enforced_by_all(c).await;
}

/// A back-channel logout posted to one replica ends the session on every replica, and its
/// token cannot be replayed at another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_back_channel_logout_reaches_every_replica_once() {
    let c = replicas(2).await;
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

/// A logout at the provider (its end-session endpoint, without tollgate) reaches one replica
/// as a back-channel logout, and the session gets 401 on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_at_the_provider_ends_the_session_on_every_replica() {
    let c = replicas(3).await;
    // Logged in through another replica than the one the provider calls back.
    let (cookie, browser) = log_in_with_browser(&c.replicas[2]).await;
    for tg in &c.replicas {
        assert_eq!(api_status(tg, &cookie).await, 200);
    }
    let session = open_session(&c.replicas[0].codec(), &cookie).expect("a session");
    c.idp.reset_stats().await;
    end_session_at_provider(
        &browser,
        &c.idp,
        CLIENTS[0].id,
        session.id_token.as_deref().unwrap(),
    )
    .await;
    let stats = backchannel_delivered(&c.idp, 1).await;
    assert_eq!(stats["backchannel"]["success"], 1, "{stats}");
    for (i, tg) in c.replicas.iter().enumerate() {
        assert_eq!(
            until_status(tg, &cookie, 401).await,
            401,
            "replica {i}: {}",
            tg.log()
        );
    }
}

/// With the store down, sessions are still served and a logout is still enforced where it
/// happened; once the store is back, logouts reach every replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_degrades_to_one_replica_and_recovers() {
    let mut c = replicas(2).await;
    let first = log_in(&c.replicas[0]).await;
    c.store.redis().stop();
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

    c.store.redis().restart().await;
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
    one_refresh_for_a_burst(replicas(3).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_across_replicas_for_a_burst_on_a_redis_cluster() {
    one_refresh_for_a_burst(replicas_on_cluster(3).await).await;
}

/// A cookie of a fresh session whose access token is due for refresh.
async fn due_for_refresh(tg: &Tollgate) -> String {
    let cookie = log_in(tg).await;
    let mut session = open_session(&tg.codec(), &cookie).expect("a session");
    assert!(session.refresh_token.is_some());
    session.access_expires_at = tollgate::unix_now() - 1;
    tg.mint_cookie_for(session)
}

/// How many times `outcome` appears in `tg`'s `tollgate_refresh_total`.
async fn refreshes(tg: &Tollgate, outcome: &str) -> u64 {
    let text = tg.wait_metrics(&["tollgate_store_up"]).await;
    let prefix = format!("tollgate_refresh_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

async fn one_refresh_for_a_burst(c: Replicas) {
    let expired = due_for_refresh(&c.replicas[0]).await;
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
        won += refreshes(tg, "won").await;
    }
    assert_eq!(won, 1);
}

/// A replica killed while it holds the refresh lock (its token request never reached the
/// provider's grant logic): another replica waits for the lock to lapse — at most its lifetime,
/// `http_timeout` — then refreshes itself, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_the_refresh_lock_delays_the_others_only_until_it_lapses() {
    let mut c = start(
        2,
        Backend::Single(Redis::start().await),
        "http_timeout = \"2s\"",
        &[],
    )
    .await;
    let expired = due_for_refresh(&c.replicas[0]).await;
    c.idp.reset_stats().await;
    c.idp.stall_next_token().await;

    // Replica 0 takes the lock and calls the provider, which never answers.
    let doomed = {
        let request =
            c.replicas[0].with_session(&plain(), reqwest::Method::GET, "/api/a", &expired);
        tokio::spawn(request.send())
    };
    let mut stalled = false;
    for _ in 0..200 {
        if c.idp.stats().await["stalled"] == 1 {
            stalled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        stalled,
        "replica 0 never called the provider: {}",
        c.replicas[0].log()
    );
    c.replicas[0].child.kill().unwrap();
    c.replicas[0].child.wait().unwrap();
    assert!(
        doomed.await.unwrap().is_err(),
        "the killed replica answered"
    );

    // Replica 1 finds the lock taken, waits it out, then refreshes.
    let status = api_status(&c.replicas[1], &expired).await;
    let stats = c.idp.stats().await;
    assert_eq!(status, 200, "{stats}\n{}", c.replicas[1].log());
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["refresh_failures"], 0, "{stats}");
    assert_eq!(refreshes(&c.replicas[1], "won").await, 1);
}
