//! `[oidc] profile = "fapi2"`: a configuration that is not FAPI 2.0 conformant is refused by
//! `tollgate check` and at startup, naming the key; a conformant one logs in end to end
//! (private_key_jwt + PAR + DPoP) against the real provider, which itself requires PAR and
//! DPoP-bound tokens of that client.

mod common;

use common::dpop_rs::DpopResourceServer;
use common::flow::*;
use common::idp::{CLIENTS, FAPI2_CLIENT};
use common::*;

/// `tollgate check` on `config`: exit code and what it printed.
fn check(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("--config")
        .arg(&path)
        .arg("check")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fapi2_refuses_what_does_not_conform_and_logs_in_with_what_does() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;

    // A client secret: refused, naming the key, before anything starts.
    let basic = TestConfig::for_client(&idp, &CLIENTS[0])
        .oidc("profile = \"fapi2\"\ndpop = true")
        .route("/", &echo.url(), "auth = \"none\"")
        .render(port, free_port());
    let (code, out) = check(&basic);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("oidc.auth_method") && out.contains("private_key_jwt"),
        "{out}"
    );
    // Without DPoP, or with par = "never": refused too.
    let fapi = |extra: &str| {
        TestConfig::for_client(&idp, &FAPI2_CLIENT)
            .oidc(&format!("profile = \"fapi2\"\n{extra}"))
            .route("/", &echo.url(), "auth = \"none\"")
            .render(port, free_port())
    };
    let (code, out) = check(&fapi(""));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("oidc.dpop"), "{out}");
    let (code, out) = check(&fapi("dpop = true\npar = \"never\""));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("oidc.par"), "{out}");
    let (code, out) = check(&fapi("dpop = true"));
    assert_eq!(code, Some(0), "{out}");
    // A session route that would send the bound token as a plain bearer: refused.
    let bearer = TestConfig::for_client(&idp, &FAPI2_CLIENT)
        .oidc("profile = \"fapi2\"\ndpop = true")
        .route("/api", &echo.url(), "")
        .render(port, free_port());
    let (code, out) = check(&bearer);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("routes[0].token_binding"), "{out}");

    // The conformant configuration: a full login and a DPoP-bound API call.
    let rs = DpopResourceServer::for_idp(&idp).await;
    let config = TestConfig::for_client(&idp, &FAPI2_CLIENT)
        .oidc("profile = \"fapi2\"\ndpop = true")
        .route("/orders", &rs.url(), "token_binding = \"dpop\"")
        .route("/", &echo.url(), "auth = \"none\"");
    let tg = start_ready(port, &config).await;
    let b = logged_in(&tg).await;
    let body = api_json(&b, &tg, "/orders/1").await;
    assert_eq!(body["ok"], true, "{body} {:?}", rs.verdicts());
    let stats = idp.stats().await;
    assert_eq!(stats["authorize"]["pushed"], 1, "{stats}");
    assert_eq!(stats["authorize"]["plain"], 0, "{stats}");
    assert_eq!(stats["dpop"]["bound_grants"], 1, "{stats}");
}
