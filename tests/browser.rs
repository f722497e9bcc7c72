//! The browser end to end: Debian's Chromium, driven by `playwright-core`
//! (`tests/e2e/browser.mjs`), logs in through the provider's login form and uses the demo SPA
//! (`deploy/demo/`) through the real `tollgate` binary. Screenshots of each step land in
//! `target/e2e/`.
//!
//! Needs `chromium` (Debian package) and `npm ci` in `tests/e2e` and `tests/idp`; `.ci/run`
//! installs all three. Without them this test fails and says what to install.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::idp::{Idp, CLIENTS};
use common::{free_port, wait_http, TestConfig, Tollgate};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The demo's echo API and static SPA (`deploy/demo/apps.js`), stopped on drop.
struct DemoApps {
    child: Child,
    api_port: u16,
    spa_port: u16,
}

impl DemoApps {
    async fn start(userinfo_url: &str) -> DemoApps {
        let (api_port, spa_port) = (free_port(), free_port());
        let child = Command::new("node")
            .arg(repo().join("deploy/demo/apps.js"))
            .env("API_PORT", api_port.to_string())
            .env("SPA_PORT", spa_port.to_string())
            .env("USERINFO_URL", userinfo_url)
            .stdout(Stdio::null())
            .spawn()
            .expect("start node (is Node.js installed?)");
        let mut apps = DemoApps {
            child,
            api_port,
            spa_port,
        };
        for port in [api_port, spa_port] {
            let url = format!("http://127.0.0.1:{port}/");
            if let Err(e) = wait_http(&mut apps.child, &url, Duration::from_secs(20)).await {
                panic!("the demo apps did not serve: {e}");
            }
        }
        apps
    }
}

impl Drop for DemoApps {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spa_login_api_call_and_logout_in_chromium() {
    in_chromium(false).await;
}

/// The same over HTTPS (`[tls]`, HTTP/2 by ALPN): the production cookie (`__Host-tollgate`,
/// `Secure`) is the one Chromium stores and sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spa_login_api_call_and_logout_in_chromium_over_https() {
    in_chromium(true).await;
}

/// A certificate for 127.0.0.1 (self-signed; the browser is told to accept it), written to
/// `dir`; returns the `[tls]` lines for `port`.
fn tls_section(dir: &Path, port: u16) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt, pem) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    format!(
        "[tls]\nlisten = [\"127.0.0.1:{port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        crt.display(),
        pem.display()
    )
}

async fn in_chromium(https: bool) {
    let e2e = repo().join("tests/e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/e2e (.ci/run does)"
    );
    assert!(
        chromium().exists(),
        "no Chromium at {}: install Debian's chromium (`apt-get install chromium`; .ci/run does) \
         or point CHROMIUM at one",
        chromium().display()
    );

    let port = free_port();
    let tls_port = free_port();
    let base = if https {
        format!("https://127.0.0.1:{tls_port}")
    } else {
        format!("http://127.0.0.1:{port}")
    };
    let idp = Idp::start_with(&format!("{base}/callback"), &format!("{base}/"), None, true).await;
    let apps = DemoApps::start(&format!("{}/userinfo", idp.issuer)).await;
    let certs = tempfile::tempdir().unwrap();
    let mut config = TestConfig::for_client(&idp, &CLIENTS[0]);
    if https {
        config = config
            .public_url(&base)
            .random_key()
            .section(&tls_section(certs.path(), tls_port));
    }
    let config = config
        .scopes(&["openid", "profile", "email", "offline_access"])
        .route("/api", &format!("http://127.0.0.1:{}", apps.api_port), "")
        .route(
            "/api/payments",
            &format!("http://127.0.0.1:{}", apps.api_port),
            "require = { acr = [\"urn:tollgate:mfa\"] }",
        )
        .route(
            "/",
            &format!("http://127.0.0.1:{}", apps.spa_port),
            "auth = \"none\"",
        );
    let mut tg = Tollgate::start_on(port, |p, m| config.render(p, m)).await;
    tg.wait_for("/readyz").await.expect("tollgate ready");

    let shots = repo().join(if https {
        "target/e2e-https"
    } else {
        "target/e2e"
    });
    // Screenshots of an earlier run must not stand in for this one's.
    let _ = std::fs::remove_dir_all(&shots);
    let out = tokio::process::Command::new("node")
        .arg(e2e.join("browser.mjs"))
        .env("BASE_URL", &base)
        // The SPA served directly: another origin, for the cross-site WebSocket check.
        .env("FOREIGN_URL", format!("http://127.0.0.1:{}", apps.spa_port))
        .env("CHROMIUM", chromium())
        .env("SCREENSHOT_DIR", &shots)
        .current_dir(&e2e)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), out)
        .await
        .expect("the browser test finished within 180 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed ({}); screenshots in {}; tollgate's log:\n{}",
        out.status,
        shots.display(),
        tg.log()
    );
    for step in [
        "spa-anonymous",
        "provider-login-form",
        "spa-logged-in",
        "api-call-with-bearer",
        "step-up-provider-login",
        "step-up-api-call",
        "document-cookie-empty",
        "spa-logged-out",
        "api-call-after-logout-401",
    ] {
        assert!(
            screenshot(&shots, step),
            "no screenshot of step {step} in {}",
            shots.display()
        );
    }
    assert!(
        !tg.log().contains("Bearer "),
        "tollgate's log must not carry the bearer token"
    );
    // Over plain HTTP the foreign page (another port, same site) sends the session cookie, and
    // tollgate's Origin check refuses it. Over HTTPS the foreign page is http: cross-scheme is
    // cross-site for SameSite, so Chromium does not even send the cookie (browser.mjs checks
    // the handshake is refused either way).
    if !https {
        assert!(
            tg.log().contains("origin_not_allowed"),
            "the cross-site WebSocket was refused by tollgate's Origin check"
        );
    }
}

fn screenshot(dir: &Path, step: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(&format!("-{step}.png"))
        })
    })
}
