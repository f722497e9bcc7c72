//! Providers that differ from the common case: what tollgate tells the operator at start-up
//! and how it copes with what the provider's metadata leaves out or gets wrong, against the
//! real test provider.

mod common;

use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;
use reqwest::cookie::CookieStore;

const CLIENT: usize = 0; // tollgate-basic

/// The JSON log lines of `log` whose message is `message`.
fn log_lines(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Providers compare redirect URIs character for character: the start-up log names the
/// exact strings tollgate sends, the default post-logout URI with the `/` after the host and
/// a configured one as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_log_names_the_exact_uris_to_register() {
    for configured in [None, Some("http://app.example.test")] {
        let mut config = TestConfig::without_provider().route("/", "http://127.0.0.1:1", "");
        if let Some(uri) = configured {
            config = config.oidc(&format!("post_logout_redirect_uri = \"{uri}\""));
        }
        let tg = Tollgate::start(|p, m| config.render(p, m)).await;
        let public = format!("http://127.0.0.1:{}", tg.port);
        let lines = log_lines(&tg.log(), "register exactly these URIs at the provider");
        assert_eq!(lines.len(), 1, "{}", tg.log());
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["redirect_uri"], format!("{public}/callback"));
        assert_eq!(
            line["post_logout_redirect_uri"],
            configured.map_or(format!("{public}/"), str::to_string)
        );
        assert_eq!(
            line["backchannel_logout_uri"],
            format!("{public}/backchannel-logout")
        );
    }
}

/// A provider whose discovery document omits `revocation_endpoint` but whose RFC 8414
/// metadata lists it (in either form): logout revokes the refresh token all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_revokes_through_the_rfc8414_metadata_when_discovery_lacks_the_endpoint() {
    let echo = Echo::start().await;
    for (form, path) in [
        (
            "inserted",
            "/.well-known/oauth-authorization-server/test/as",
        ),
        (
            "appended",
            "/test/as/.well-known/oauth-authorization-server",
        ),
    ] {
        let port = free_port();
        let idp = Idp::start_env(
            port,
            None,
            &[("IDP_DISCOVERY_NO_REVOCATION", "1"), ("IDP_RFC8414", form)],
        )
        .await;
        let discovery: serde_json::Value =
            reqwest::get(format!("{}/.well-known/openid-configuration", idp.issuer))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert!(discovery.get("revocation_endpoint").is_none(), "{form}");
        let tg = start_tollgate(port, &idp, &CLIENTS[CLIENT], &echo).await;
        let log = tg.log();
        let found = log_lines(
            &log,
            "revocation endpoint taken from the provider's RFC 8414 metadata (its discovery \
             document lists none)",
        );
        assert_eq!(found.len(), 1, "{form}: {log}");
        assert_eq!(found[0]["metadata"], idp.url(path), "{form}");

        let (jar, b) = browser_with_jar();
        let r = b.get(tg.url("/login?return_to=/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{form}: login failed: {}", tg.log());
        let cookie = jar
            .cookies(&tg.url("/").parse().unwrap())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let session = open_session(&tg.codec(), &cookie).expect("a session");
        let refresh_token = session.refresh_token.expect("a refresh token");
        let r = plain()
            .post(tg.url("/logout"))
            .header("cookie", &cookie)
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{form}");
        let (status, body) = idp
            .try_refresh(
                CLIENTS[CLIENT].id,
                CLIENTS[CLIENT].secret.unwrap(),
                &refresh_token,
            )
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{form}: the refresh token still works after logout: {}",
            tg.log()
        );
        assert!(tg.log().contains("refresh token revoked"), "{form}");
    }
}

/// Without a revocation endpoint anywhere, tollgate warns once when the metadata loads, not at
/// every logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_revocation_endpoint_anywhere_is_warned_once() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = Idp::start_env(
        port,
        None,
        &[("IDP_DISCOVERY_NO_REVOCATION", "1"), ("IDP_RFC8414", "off")],
    )
    .await;
    let tg = start_tollgate(port, &idp, &CLIENTS[CLIENT], &echo).await;
    for _ in 0..2 {
        let cookie = login_cookie(&tg).await;
        let r = plain()
            .post(tg.url("/logout"))
            .header("cookie", &cookie)
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    let log = tg.log();
    let warned = log_lines(
        &log,
        "the provider advertises no revocation endpoint: logout cannot revoke refresh tokens \
         (set [oidc] revocation_endpoint if it has one)",
    );
    assert_eq!(warned.len(), 1, "{log}");
    assert_eq!(warned[0]["level"], "WARN");
    let reason = warned[0]["reason"].as_str().unwrap();
    assert!(reason.contains("answered 404"), "{reason}");
    let per_logout = log_lines(&log, "provider has no revocation endpoint");
    assert_eq!(per_logout.len(), 2, "{log}");
    assert!(per_logout.iter().all(|l| l["level"] == "DEBUG"), "{log}");
}

/// A configured scope the provider does not advertise is named in one warning at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_the_provider_does_not_list_are_warned_about() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let config = tollgate_config(&idp, &CLIENTS[CLIENT], &echo.url(), "").scopes(&[
        "openid",
        "offline_access",
        "no_such_scope",
        "profile",
    ]);
    let tg = start_ready(port, &config).await;
    let log = tg.log();
    let warned = log_lines(
        &log,
        "[oidc] scopes has scopes the provider does not list in scopes_supported: it may \
         refuse logins with invalid_scope (offline_access is the usual one; remove them)",
    );
    assert_eq!(warned.len(), 1, "{log}");
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["scopes"], "no_such_scope");
}

/// `[session] refresh_skew` longer than the provider's access tokens live: capped at half
/// their lifetime, so API calls right after login do not each spend a refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_skew_longer_than_the_token_lifetime_does_not_refresh_every_request() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = Idp::start_env(port, Some(60), &[]).await;
    let config =
        tollgate_config(&idp, &CLIENTS[CLIENT], &echo.url(), "").session("refresh_skew = \"120s\"");
    let tg = start_ready(port, &config).await;
    let b = logged_in(&tg).await;
    idp.reset_stats().await;
    for _ in 0..2 {
        let r = b
            .get(tg.url("/api/data"))
            .header("x-csrf", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", tg.log());
    }
    assert_eq!(
        idp.stats().await["token_requests"]["refresh_token"],
        0,
        "{}",
        tg.log()
    );
    let log = tg.log();
    let warned = log_lines(
        &log,
        "[session] refresh_skew is more than half the provider's access token lifetime: tokens \
         are refreshed half-way through instead (logged once)",
    );
    assert_eq!(warned.len(), 1, "{log}");
    assert_eq!(warned[0]["effective_skew_secs"], 30);
}

/// An issuer configured with a trailing `/` that the provider's discovery document does not
/// have: `/login` says that the issuers differ, naming both, instead of "cannot be reached".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_names_both_issuers_when_they_do_not_match() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let configured = format!("{}/", idp.issuer);
    let config = TestConfig::with_oidc_text(format!(
        "issuer = \"{configured}\"\n{}",
        CLIENTS[CLIENT].oidc_toml()
    ))
    .route("/", &echo.url(), "auth = \"none\"");
    let tg = Tollgate::start_on(port, |p, m| config.render(p, m)).await;
    let login = || async {
        let r = plain()
            .get(tg.url("/login"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    // Until the first discovery attempt has failed, /login can only say "unavailable".
    let mut answer = login().await;
    for _ in 0..100 {
        if answer.1["error"] == "provider_issuer_mismatch" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        answer = login().await;
    }
    let (status, body) = answer;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "provider_issuer_mismatch", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{configured:?}"))
            && message.contains(&format!("{:?}", idp.issuer))
            && message.contains("does not match"),
        "{message}"
    );
    // The page a person sees says the same.
    let r = plain().get(tg.url("/login")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let page = r.text().await.unwrap();
    assert!(
        page.contains(&format!("&quot;{configured}&quot;"))
            && page.contains(&format!("&quot;{}&quot;", idp.issuer)),
        "{page}"
    );
    // And the log line.
    let log = tg.log();
    let lines = log_lines(&log, "provider metadata not loaded");
    let error = lines[0]["error"].as_str().unwrap();
    assert!(
        error.contains("does not match the configured issuer")
            && error.contains(&configured)
            && error.contains(&idp.issuer),
        "{error}"
    );
}
