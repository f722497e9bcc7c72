//! Device Bound Session Credentials in real Chromium (issue 26, in progress): tollgate's own
//! `[tls]` front door on `https://localhost` with a self-signed certificate Chromium is told to
//! trust (by its SPKI hash), `device_binding = "dbsc"` with a 10 s bound cookie. The browser
//! (`tests/e2e/dbsc.mjs`) logs in, registers its key, calls the API, waits past the bound
//! cookie's lifetime and calls again: DevTools must report a registration and a refresh, the
//! API must answer 200 both times, and tollgate must count them.
//!
//! Needs Debian's `chromium` and `npm ci` in `tests/e2e` (as `tests/browser.rs`).

mod common;

use std::process::Command;

use base64::Engine;
use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_binds_the_session_and_refreshes_its_bound_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .encode(ring::digest::digest(&ring::digest::SHA256, &key.public_key_der()).as_ref());

    let echo = Echo::start().await;
    let (plain_port, tls_port) = (free_port(), free_port());
    let origin = format!("https://localhost:{tls_port}");
    let idp = Idp::start(
        &format!("{origin}/callback"),
        &format!("{origin}/"),
        Some(60),
    )
    .await;
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "")
        .public_url(&origin)
        .random_key()
        .session("device_binding = \"dbsc\"\nbound_cookie_lifetime = \"10s\"")
        .section(&format!(
            "[tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert_file.display(),
            key_file.display()
        ));
    let mut tg = Tollgate::start_on(plain_port, |p, m| config.render(p, m)).await;
    tg.wait_for("/readyz").await.expect("ready");

    let e2e = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/e2e (.ci/run does)"
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("dbsc.mjs")
            .current_dir(&e2e)
            .env("BASE_URL", &origin)
            .env("SPKI", &spki)
            .env("BOUND_SECS", "10")
            .output()
            .expect("node")
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{printed}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tg.log()
    );
    let metrics = tg
        .wait_metrics(&["tollgate_dbsc_total{event=\"registered\"} 1"])
        .await;
    assert!(
        metrics.contains("tollgate_dbsc_total{event=\"refreshed\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("tollgate_dbsc_total{event=\"refused\"}"),
        "a real browser never sees a refusal: {metrics}"
    );

    // Replay from elsewhere (the cookies an infostealer copies), over the plain listener.
    let result: serde_json::Value =
        serde_json::from_str(printed.trim().lines().last().unwrap()).unwrap();
    let cookies: Vec<String> = result["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let all = cookies.join("; ");
    let session_only: String = cookies
        .iter()
        .filter(|c| !c.starts_with("__Host-tollgate-bound="))
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    assert_ne!(all, session_only, "a bound cookie was set: {cookies:?}");
    let replay = |cookie: String| {
        let url = tg.url("/api/replay");
        async move {
            let r = plain()
                .get(url)
                .header("cookie", cookie)
                .header("x-csrf", "1")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    assert_eq!(
        replay(session_only).await,
        (401, "device_proof_required".to_string()),
        "the session cookie without its bound cookie"
    );
    // The whole copy works only while its bound cookie lasts (10 s at most); then the thief,
    // who cannot sign a refresh, is out. Polled, bounded.
    let mut last = (0, String::new());
    for _ in 0..150 {
        last = replay(all.clone()).await;
        if last.0 == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        last,
        (401, "device_proof_required".to_string()),
        "{}",
        tg.log()
    );
    let metrics = tg
        .wait_metrics(&["tollgate_dbsc_total{event=\"refused\"} 2"])
        .await;
    assert!(metrics.contains("tollgate_dbsc_total{event=\"refused\"} 2"));
}
