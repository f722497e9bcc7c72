//! Route rules on the user's claims and identity headers, end to end: the real provider (whose
//! test user is in group `staff`, not `admin`), a real upstream, the real binary.

mod common;

use common::flow::*;
use common::idp::CLIENTS;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_rules_refuse_before_the_upstream_and_identity_headers_cannot_be_spoofed() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let config = TestConfig::for_client(&idp, &CLIENTS[0])
        .route(
            "/admin",
            &echo.url(),
            "require = { groups = [\"admin\"] }\nidentity_headers = true",
        )
        .route(
            "/staff",
            &echo.url(),
            "require = { groups = [\"admin\", \"staff\"], email_verified = true }\n\
             identity_headers = true",
        )
        .route("/api", &echo.url(), "")
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = start_ready(port, &config).await;
    let b = logged_in(&tg).await;

    // Not in `admin`: 403, and the upstream never sees the request.
    let before = echo.count();
    let r = b
        .get(tg.url("/admin/reports"))
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "forbidden", "{body}");
    assert_eq!(
        echo.count(),
        before,
        "a refused request reached the upstream"
    );

    // In `staff` with a verified email: through, with who the user is, whatever the client
    // claimed to be.
    let r = b
        .get(tg.url("/staff/roster"))
        .header("x-csrf", "1")
        .header("X-Auth-Request-User", "admin")
        .header("X-Auth-Request-Groups", "admin")
        .header("X_Auth_Request_Email", "boss@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let seen = echo.last();
    assert_eq!(seen.header("x-auth-request-user"), Some("test-user"));
    assert_eq!(
        seen.header("x-auth-request-email"),
        Some("test.user@example.com")
    );
    assert_eq!(seen.header("x-auth-request-groups"), Some("staff"));
    for name in [
        "x-auth-request-user",
        "x-auth-request-groups",
        "x-auth-request-email",
    ] {
        assert_eq!(
            seen.header_count(name),
            1,
            "{name} arrives once, tollgate's"
        );
    }
    assert_eq!(seen.header_count("x_auth_request_email"), 0);
    assert!(seen
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ")));

    // A route without identity headers gets none, spoofed or not.
    let r = b
        .get(tg.url("/api/x"))
        .header("x-csrf", "1")
        .header("X-Auth-Request-User", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header_count("x-auth-request-user"), 0);
    // Nor does a public route.
    let r = plain()
        .get(tg.url("/public"))
        .header("X-Auth-Request-User", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header_count("x-auth-request-user"), 0);

    let log = tg.log();
    assert!(
        log.contains("do not satisfy the route's require rule"),
        "{log}"
    );
}
