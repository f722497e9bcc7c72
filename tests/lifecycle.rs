//! The session's life after login: refresh on the hot path (single flight), the provider
//! refusing or being down, `/session`, and logout — against the real test provider.

mod common;

use std::sync::Arc;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;
use reqwest::cookie::CookieStore;
use tollgate::session::cookie::SessionCookies;
use tollgate::session::Session;

const CLIENT: usize = 0; // tollgate-basic

struct Setup {
    echo: Echo,
    idp: Idp,
    tg: Tollgate,
    jar: Arc<reqwest::cookie::Jar>,
    browser: reqwest::Client,
}

/// Provider, upstream and tollgate, and a browser that has logged in.
async fn logged_in(extra_oidc: &str) -> Setup {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let tg = start_tollgate_with(port, &idp, &CLIENTS[CLIENT], &echo, extra_oidc).await;
    let (jar, browser) = browser_with_jar();
    let r = browser
        .get(tg.url("/login?return_to=/landing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login failed: {}", tg.log());
    Setup {
        echo,
        idp,
        tg,
        jar,
        browser,
    }
}

impl Setup {
    /// The browser's `Cookie` header for tollgate.
    fn cookie_header(&self) -> String {
        let url = self.tg.url("/").parse().unwrap();
        self.jar
            .cookies(&url)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    /// The session in the browser's cookies, opened with the library.
    fn session(&self) -> Session<'static> {
        self.session_in(&self.cookie_header())
    }

    fn session_in(&self, cookie_header: &str) -> Session<'static> {
        open_session(&self.tg.codec(), cookie_header).expect("the browser holds a session")
    }

    /// A `Cookie` header carrying `session` (re-sealed with the library, e.g. to backdate it).
    fn cookie_for(&self, session: &Session<'_>) -> String {
        let lines = self
            .tg
            .codec()
            .set_cookie_lines(session, &SessionCookies::default(), tollgate::unix_now())
            .unwrap();
        cookie_header(&lines)
    }

    fn secret(&self) -> &'static str {
        CLIENTS[CLIENT].secret.unwrap()
    }
}

async fn api(client: &reqwest::Client, tg: &Tollgate, cookie: Option<&str>) -> reqwest::Response {
    let mut req = client.get(tg.url("/api/data")).header("x-csrf", "1");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap()
}

/// A session whose access token has expired (the provider issued it; only the recorded expiry
/// is moved into the past, as time would).
fn expired(mut s: Session) -> Session {
    s.access_expires_at = tollgate::unix_now() - 1;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_access_token_is_refreshed_once_for_a_burst() {
    let s = logged_in("").await;
    let original = s.session();
    assert!(
        original.refresh_token.is_some(),
        "the provider issued a refresh token"
    );
    s.idp.reset_stats().await;

    // One call with an expired token: refreshed, forwarded with the new token, new cookie set.
    let cookie = s.cookie_for(&expired(original.clone()));
    let c = plain();
    let r = api(&c, &s.tg, Some(&cookie)).await;
    assert_eq!(r.status(), 200, "{}", s.tg.log());
    let new_cookies = set_cookies(&r);
    assert!(
        !new_cookies.is_empty(),
        "the refreshed session comes back as a cookie"
    );
    let upstream_token = s.echo.last().header("authorization").unwrap().to_string();
    assert_ne!(upstream_token, format!("Bearer {}", original.access_token));
    let refreshed = s.session_in(&cookie_header(&new_cookies));
    assert_eq!(upstream_token, format!("Bearer {}", refreshed.access_token));
    assert!(refreshed.access_expires_at > tollgate::unix_now());
    assert_ne!(
        refreshed.refresh_token, original.refresh_token,
        "rotated refresh token kept"
    );
    let (status, _) = s.idp.userinfo(&refreshed.access_token).await;
    assert_eq!(status, 200);
    assert_eq!(s.idp.stats().await["token_requests"]["refresh_token"], 1);
    // The provider's ID token from the refresh passed validation (else a warning is logged).
    assert!(refreshed.id_token.is_some());
    assert!(!s.tg.log().contains("new ID token"), "{}", s.tg.log());

    // 100 parallel calls with one expired token: exactly one refresh at the provider.
    s.idp.reset_stats().await;
    let burst_cookie = s.cookie_for(&expired(refreshed));
    let calls = (0..100).map(|_| {
        let (c, url, cookie) = (c.clone(), s.tg.url("/api/burst"), burst_cookie.clone());
        tokio::spawn(async move {
            c.get(url)
                .header("cookie", cookie)
                .header("x-csrf", "1")
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(statuses.iter().all(|&st| st == 200), "{statuses:?}");
    let stats = s.idp.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 1, "{stats}");
    assert_eq!(stats["refresh_failures"], 0, "{stats}");
    let tokens: std::collections::HashSet<String> = s
        .echo
        .seen()
        .iter()
        .filter(|r| r.path == "/api/burst")
        .map(|r| r.header("authorization").unwrap().to_string())
        .collect();
    assert_eq!(
        tokens.len(),
        1,
        "every request of the burst carried the one new token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_refresh_token_ends_the_session() {
    let s = logged_in("").await;
    let session = s.session();
    s.idp
        .revoke(
            CLIENTS[CLIENT].id,
            s.secret(),
            session.refresh_token.as_deref().unwrap(),
        )
        .await;
    let r = api(&plain(), &s.tg, Some(&s.cookie_for(&expired(session)))).await;
    assert_eq!(r.status(), 401);
    let cleared = set_cookies(&r);
    assert!(
        !cleared.is_empty() && cleared.iter().all(|c| c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "session_expired");
    assert_eq!(
        s.echo
            .seen()
            .iter()
            .filter(|r| r.path == "/api/data")
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_invalid_grant_ends_the_session() {
    let s = logged_in("").await;
    let cookie = s.cookie_for(&expired(s.session()));
    // The provider refusing the client (a rotated secret) or rate-limiting says nothing about
    // the session: 503, the cookies stay, and the next try refreshes.
    for (status, error) in [(401, "invalid_client"), (429, "slow_down")] {
        s.idp.refuse_next_token(status, error).await;
        let r = api(&plain(), &s.tg, Some(&cookie)).await;
        assert_eq!(r.status(), 503, "{status} {error}: {}", s.tg.log());
        assert!(r.headers().get("retry-after").is_some());
        assert!(set_cookies(&r).is_empty(), "the session is kept");
    }
    let r = api(&plain(), &s.tg, Some(&cookie)).await;
    assert_eq!(r.status(), 200, "{}", s.tg.log());
    assert!(!set_cookies(&r).is_empty(), "refreshed and re-sealed");
    // invalid_grant, and only it, ends the session: revoked_refresh_token_ends_the_session.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_gives_503_and_the_session_survives() {
    let mut s = logged_in("http_timeout = \"3s\"").await;
    let cookie = s.cookie_for(&expired(s.session()));
    s.idp.stop();
    let r = api(&plain(), &s.tg, Some(&cookie)).await;
    assert_eq!(r.status(), 503, "{}", s.tg.log());
    assert!(r.headers().get("retry-after").is_some());
    assert!(set_cookies(&r).is_empty(), "the session is kept");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "provider_unavailable");

    // The provider comes back (with its state): the same cookie works again.
    s.idp.restart().await;
    let r = api(&plain(), &s.tg, Some(&cookie)).await;
    assert_eq!(r.status(), 200, "{}", s.tg.log());
    assert!(!set_cookies(&r).is_empty());
}

/// `/session`: the claims, never a token; the CSRF header is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_endpoint_shows_claims_never_tokens() {
    let s = logged_in("").await;
    let session = s.session();
    let r = s.browser.get(s.tg.url("/session")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .browser
        .get(s.tg.url("/session"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(info["sub"], "test-user");
    assert_eq!(info["name"], "Test User");
    assert_eq!(info["email"], "test.user@example.com");
    assert_eq!(info["logout_url"], "/logout");
    assert!(info["expires_at"].as_u64().unwrap() > tollgate::unix_now());
    assert!(!text.contains(&*session.access_token));
    assert!(!text.contains(session.refresh_token.as_deref().unwrap()));
}

/// `GET /logout` is off by default; a POST without the CSRF header is refused; the session
/// survives both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_needs_post_and_the_csrf_header() {
    let s = logged_in("").await;
    let r = s.browser.get(s.tg.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let r = s.browser.post(s.tg.url("/logout")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = api(&s.browser, &s.tg, None).await;
    assert_eq!(r.status(), 200, "the session is still there");
}

/// `POST /logout` from the SPA: revoke, clear every cookie, and a tollgate URL that sends the
/// browser on to the provider's end-session endpoint with the ID token as the hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_clears_and_hands_the_browser_to_the_provider() {
    let s = logged_in("").await;
    let session = s.session();
    let r = s
        .browser
        .post(s.tg.url("/logout"))
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cleared = set_cookies(&r);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("tollgate") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    // The SPA gets a tollgate URL: the provider URL carries the ID token as id_token_hint,
    // which must never reach page script.
    let pending = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("tollgate-logout=") && !c.contains("Max-Age=0"))
        .expect("a pending-logout cookie");
    assert!(pending.contains("HttpOnly"), "{pending}");
    let text = r.text().await.unwrap();
    let id_token = session.id_token.clone().unwrap().into_owned();
    assert!(
        !text.contains(&id_token),
        "the ID token reached page script: {text}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["logout_url"], "/logout/continue");
    // The browser navigates there and is sent on to the provider, with the hint.
    let no_redirects = reqwest::Client::builder()
        .cookie_provider(s.jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HANG)
        .build()
        .unwrap();
    let r = no_redirects
        .get(s.tg.url("/logout/continue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|c| c.starts_with("tollgate-logout=;") && c.contains("Max-Age=0")),
        "the pending logout is single-use"
    );
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let url = reqwest::Url::parse(&location).unwrap();
    assert_eq!(
        url.as_str().split('?').next().unwrap(),
        format!("{}/logout", s.idp.issuer)
    );
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q.get("id_token_hint"), Some(&id_token));
    assert_eq!(q["post_logout_redirect_uri"], s.tg.url("/"));
    assert!(q.contains_key("state"));
    // Used once: again, it only goes to post_logout_redirect_uri.
    let r = no_redirects
        .get(s.tg.url("/logout/continue"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], s.tg.url("/").as_str());

    // The refresh token no longer works at the provider; /session is 401 now.
    let (status, body) = s
        .idp
        .try_refresh(
            CLIENTS[CLIENT].id,
            s.secret(),
            session.refresh_token.as_deref().unwrap(),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let r = s
        .browser
        .get(s.tg.url("/session"))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The provider's own logout page accepts the hint (RP-initiated logout).
    let r = plain().get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A refresh result is kept for a minute for requests still carrying the old cookie; a logout
/// forgets it, so a copy of the pre-refresh cookie gets nothing after the user logged out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_forgets_the_kept_refresh_result() {
    let s = logged_in("").await;
    let c = plain();
    let old_cookie = s.cookie_for(&expired(s.session()));
    let r = api(&c, &s.tg, Some(&old_cookie)).await;
    assert_eq!(r.status(), 200, "{}", s.tg.log());
    let new_cookie = cookie_header(&set_cookies(&r));
    // Within the minute the kept result answers the old cookie...
    assert_eq!(api(&c, &s.tg, Some(&old_cookie)).await.status(), 200);
    // ...until the user logs out.
    let r = c
        .post(s.tg.url("/logout"))
        .header("cookie", &new_cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = api(&c, &s.tg, Some(&old_cookie)).await;
    assert_eq!(
        r.status(),
        401,
        "a pre-refresh cookie came back to life after logout"
    );
}

/// A copy of the cookie taken before a logout no longer opens: the session id is revoked
/// (before, it worked until its access token needed a refresh).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_cookie_stops_working_after_logout() {
    let s = logged_in("").await;
    let copy = s.cookie_header();
    let c = plain();
    assert_eq!(api(&c, &s.tg, Some(&copy)).await.status(), 200);
    let r = c
        .post(s.tg.url("/logout"))
        .header("cookie", &copy)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = api(&c, &s.tg, Some(&copy)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "unauthenticated"
    );
}

/// The value of `attr="…"` after `after` in `html`.
/// A logout at the provider (its end-session endpoint, without tollgate) reaches tollgate as a
/// back-channel logout, and the session ends here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_logout_ends_the_session_through_the_back_channel() {
    let s = logged_in("").await;
    let session = s.session();
    assert!(
        session.claims.sid.is_some(),
        "the ID token names the provider session"
    );
    let cookie = s.cookie_header();
    assert_eq!(api(&plain(), &s.tg, Some(&cookie)).await.status(), 200);
    s.idp.reset_stats().await;

    // The user logs out at the provider: its confirmation form, submitted.
    end_session_at_provider(
        &s.browser,
        &s.idp,
        CLIENTS[CLIENT].id,
        session.id_token.as_deref().unwrap(),
    )
    .await;
    // The provider may answer the browser before its back-channel call is done: wait for it.
    let stats = backchannel_delivered(&s.idp, 1).await;
    assert_eq!(
        stats["backchannel"]["success"],
        1,
        "{stats}; {}",
        s.tg.log()
    );
    // tollgate has revoked the provider session: the browser's cookie opens to nothing.
    let r = api(&plain(), &s.tg, Some(&cookie)).await;
    assert_eq!(r.status(), 401, "{}", s.tg.log());
}

/// Logout tokens that fail a check of OpenID Connect Back-Channel Logout §2.6 get `400
/// invalid_request` and revoke nothing; a good one gets `200` once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_logout_tokens_are_refused() {
    let s = logged_in("").await;
    let session = s.session();
    let sid = session.claims.sid.clone().unwrap().into_owned();
    let event = serde_json::json!({ "http://schemas.openid.net/event/backchannel-logout": {} });
    let good = serde_json::json!({ "aud": CLIENTS[CLIENT].id, "sid": sid, "events": event });
    let with = |extra: serde_json::Value| {
        let mut c = good.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let post = |token: String| {
        plain()
            .post(s.tg.url("/backchannel-logout"))
            .form(&[("logout_token", token)])
            .send()
    };
    let now = tollgate::unix_now();
    let mut no_event = good.clone();
    no_event.as_object_mut().unwrap().remove("events");
    let mut no_subject = good.clone();
    no_subject.as_object_mut().unwrap().remove("sid");
    for (what, token) in [
        ("forged", s.idp.logout_token(good.clone(), true).await),
        (
            "wrong aud",
            s.idp
                .logout_token(with(serde_json::json!({"aud": "someone-else"})), false)
                .await,
        ),
        (
            "nonce",
            s.idp
                .logout_token(with(serde_json::json!({"nonce": "n"})), false)
                .await,
        ),
        ("no event", s.idp.logout_token(no_event, false).await),
        (
            "neither sid nor sub",
            s.idp.logout_token(no_subject, false).await,
        ),
        (
            "stale",
            s.idp
                .logout_token(with(serde_json::json!({"iat": now - 3600})), false)
                .await,
        ),
        (
            "expired",
            s.idp
                .logout_token(with(serde_json::json!({"exp": now - 600})), false)
                .await,
        ),
        (
            "other issuer",
            s.idp
                .logout_token(
                    with(serde_json::json!({"iss": "https://evil.example"})),
                    false,
                )
                .await,
        ),
    ] {
        let r = post(token).await.unwrap();
        assert_eq!(r.status(), 400, "{what}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{what}");
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["error"],
            "invalid_request",
            "{what}"
        );
    }
    let r = post("not-a-jwt".into()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        api(&s.browser, &s.tg, None).await.status(),
        200,
        "nothing was revoked"
    );

    // A good token: 200, the session ends; the same token again (replay): 400.
    let token = s.idp.logout_token(good.clone(), false).await;
    let r = post(token.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "{}", s.tg.log());
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(api(&s.browser, &s.tg, None).await.status(), 401);
    assert_eq!(post(token).await.unwrap().status(), 400, "replayed jti");
}
