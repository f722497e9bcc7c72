//! Device Bound Session Credentials in real Chromium (issue 26, in progress): tollgate's own
//! `[tls]` front door on `https://localhost` with a self-signed certificate Chromium is told to
//! trust (by its SPKI hash), `device_binding = "dbsc"` with a 10 s bound cookie. The browser
//! (`tests/e2e/dbsc.mjs`) logs in, registers its key, calls the API, waits past the bound
//! cookie's lifetime and calls again: DevTools must report a registration and a refresh, the
//! API must answer 200 both times, and tollgate must count them.
//!
//! Needs Debian's `chromium` and `npm ci` in `tests/e2e` (as `tests/browser.rs`).
//!
//! The refusals a browser never meets (forged, wrong-key, replayed and other sessions'
//! proofs) and a refresh on another replica are driven by a software device that speaks the
//! protocol as Chromium does, against two replicas sharing a real Redis.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use base64::Engine;
use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::redis::Redis;
use common::*;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A self-signed certificate for `localhost` in `dir`: (cert file, key file, the base64
/// SHA-256 of its public key, which Chromium is told to trust).
fn localhost_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let spki = base64::engine::general_purpose::STANDARD
        .encode(ring::digest::digest(&ring::digest::SHA256, &key.public_key_der()).as_ref());
    (cert_file, key_file, spki)
}

/// The `[tls]` section for `port` with `cert` and `key`.
fn tls_section(port: u16, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[tls]\nlisten = [\"127.0.0.1:{port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_binds_the_session_and_refreshes_its_bound_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file, spki) = localhost_cert(dir.path());

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
        .section(&tls_section(tls_port, &cert_file, &key_file));
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

/// A device with a software P-256 key that answers challenges as Chromium does.
struct Device(EcdsaKeyPair);

impl Device {
    fn new() -> Device {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Device(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap(),
        )
    }

    /// A `dbsc+jwt` for `jti`, naming `named`'s key in its header and signed with this one's
    /// (a forgery when they differ).
    fn proof_naming(&self, named: &Device, jti: &str) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let point = named.0.public_key().as_ref();
        let header = serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": {
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }});
        let payload = serde_json::json!({"jti": jti, "iat": 0});
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", b64(&header), b64(&payload));
        let sig = self
            .0
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn proof(&self, jti: &str) -> String {
        self.proof_naming(self, jti)
    }
}

/// A browser's cookies for tollgate, kept from the `Set-Cookie` lines it is answered with.
#[derive(Clone, Default)]
struct Cookies(BTreeMap<String, String>);

impl Cookies {
    fn take(&mut self, r: &reqwest::Response) {
        for line in set_cookies(r) {
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if line.contains("Max-Age=0") {
                self.0.remove(name);
            } else {
                self.0.insert(name.to_string(), value.to_string());
            }
        }
    }

    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn without_bound(&self) -> Cookies {
        let mut c = self.clone();
        c.0.retain(|n, _| !n.ends_with("-bound"));
        c
    }
}

/// Logs a new user in at `origin` (https) over TLS: its cookies and the registration challenge
/// of the login's answer.
async fn login(origin: &str) -> (Cookies, String) {
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            // Stop at the callback's answer: it carries the registration header.
            if attempt.previous().last().map(|u| u.path()) == Some("/callback") {
                attempt.stop()
            } else if attempt.previous().len() > 20 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        }))
        .timeout(HANG)
        .build()
        .unwrap();
    let r = client
        .get(format!("{origin}/login?return_to=/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.url().path(), "/callback", "{}", r.status());
    assert!(
        r.status().is_redirection(),
        "the login's answer: {}",
        r.status()
    );
    let registration = r
        .headers()
        .get("secure-session-registration")
        .expect("the login's answer offers registration")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        registration.starts_with("(ES256);path=\"/dbsc/register\";challenge=\""),
        "{registration}"
    );
    let challenge = registration.split('"').nth(3).unwrap().to_string();
    let mut cookies = Cookies::default();
    cookies.take(&r);
    (cookies, challenge)
}

/// `POST path` at `tg` with `cookies`, and `proof` as `Secure-Session-Response`: status,
/// response.
async fn dbsc_post(
    tg: &Tollgate,
    path: &str,
    cookies: &Cookies,
    proof: Option<&str>,
    id: Option<&str>,
) -> reqwest::Response {
    let mut req = plain()
        .post(tg.url(path))
        .header("cookie", cookies.header());
    if let Some(p) = proof {
        req = req.header("secure-session-response", p);
    }
    if let Some(id) = id {
        req = req.header("sec-secure-session-id", id);
    }
    req.send().await.unwrap()
}

async fn api(tg: &Tollgate, cookies: &Cookies) -> (u16, String) {
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/x", &cookies.header())
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

async fn refused(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// Two replicas with `[store]` on a real Redis: a device registers on one and refreshes on the
/// other; forged, wrong-key, other sessions', replayed and re-registration proofs are refused,
/// and a refresh nonce registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_are_checked_on_any_replica_and_refused_when_not_the_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file, _) = localhost_cert(dir.path());
    let redis = Redis::start().await;
    let echo = Echo::start().await;
    let plain_ports = [free_port(), free_port()];
    let tls_ports = [free_port(), free_port()];
    let origins: Vec<String> = tls_ports
        .iter()
        .map(|p| format!("https://localhost:{p}"))
        .collect();
    let callbacks: Vec<String> = origins.iter().map(|o| format!("{o}/callback")).collect();
    let homes: Vec<String> = origins.iter().map(|o| format!("{o}/")).collect();
    let idp = Idp::start(&callbacks.join(","), &homes.join(","), Some(60)).await;
    let base = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "")
        .random_key()
        .session("storage = \"store\"\ndevice_binding = \"dbsc\"\nbound_cookie_lifetime = \"10s\"")
        .section(&format!(
            "[store]\nurl = \"{}\"\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n",
            redis.url()
        ));
    let mut tgs = Vec::new();
    for i in 0..2 {
        let config = base.clone().public_url(&origins[i]).section(&tls_section(
            tls_ports[i],
            &cert_file,
            &key_file,
        ));
        tgs.push(start_ready(plain_ports[i], &config).await);
    }
    let (one, two) = (&tgs[0], &tgs[1]);

    let (mut a, a_challenge) = login(&origins[0]).await;
    let (b, b_challenge) = login(&origins[0]).await;
    // Replica two reads A's session before it is bound (and keeps it in memory).
    assert_eq!(api(two, &a).await.0, 200);

    let device = Device::new();
    let thief = Device::new();
    let invalid = (400, "invalid_device_proof".to_string());
    // A forgery: the device's key named, the thief's signature.
    let r = dbsc_post(
        one,
        "/dbsc/register",
        &a,
        Some(&thief.proof_naming(&device, &a_challenge)),
        None,
    )
    .await;
    assert_eq!(refused(r).await, invalid, "forged");
    // Another session's challenge.
    let r = dbsc_post(
        one,
        "/dbsc/register",
        &a,
        Some(&device.proof(&b_challenge)),
        None,
    )
    .await;
    assert_eq!(refused(r).await, invalid, "another session's challenge");

    // The device registers on replica one.
    let r = dbsc_post(
        one,
        "/dbsc/register",
        &a,
        Some(&device.proof(&a_challenge)),
        None,
    )
    .await;
    assert_eq!(r.status(), 200, "{}", one.log());
    a.take(&r);
    let config: serde_json::Value = r.json().await.unwrap();
    assert_eq!(config["refresh_url"], "/dbsc/refresh");
    assert_eq!(config["credentials"][0]["name"], "__Host-tollgate-bound");
    let id = config["session_identifier"].as_str().unwrap().to_string();
    assert!(
        a.0.contains_key("__Host-tollgate-bound"),
        "{:?}",
        a.0.keys()
    );
    // The same registration again, and the thief's own: the session is bound already.
    let r = dbsc_post(
        two,
        "/dbsc/register",
        &a,
        Some(&device.proof(&a_challenge)),
        None,
    )
    .await;
    assert_eq!(refused(r).await, invalid, "registered twice");

    // On replica two at once: the session cookie alone is refused, with its bound cookie it
    // passes. B, never bound, works as before.
    let device_proof_required = (401, "device_proof_required".to_string());
    assert_eq!(api(two, &a.without_bound()).await, device_proof_required);
    assert_eq!(api(two, &a).await.0, 200);
    assert_eq!(api(two, &b).await.0, 200);

    // A refresh on replica two: a challenge first.
    let r = dbsc_post(two, "/dbsc/refresh", &a.without_bound(), None, Some(&id)).await;
    assert_eq!(r.status(), 403);
    let challenge = r
        .headers()
        .get("secure-session-challenge")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.ends_with(&format!(";id=\"{id}\"")), "{challenge}");
    let nonce = challenge.split('"').nth(1).unwrap().to_string();
    // The thief (who has the cookies) cannot register their key with that nonce, nor answer
    // it with their own key.
    let r = dbsc_post(
        two,
        "/dbsc/register",
        &a.without_bound(),
        Some(&thief.proof(&nonce)),
        None,
    )
    .await;
    assert_eq!(refused(r).await, invalid, "a nonce registers nothing");
    let r = dbsc_post(
        two,
        "/dbsc/refresh",
        &a.without_bound(),
        Some(&thief.proof(&nonce)),
        Some(&id),
    )
    .await;
    assert_eq!(refused(r).await, invalid, "wrong key");
    // The device answers it: a fresh bound cookie.
    let answer = device.proof(&nonce);
    let r = dbsc_post(
        two,
        "/dbsc/refresh",
        &a.without_bound(),
        Some(&answer),
        Some(&id),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", two.log());
    let before = a.0["__Host-tollgate-bound"].clone();
    a.take(&r);
    assert_ne!(a.0["__Host-tollgate-bound"], before);
    assert_eq!(api(one, &a).await.0, 200);
    // The same answer again, on the other replica: used up.
    let r = dbsc_post(
        one,
        "/dbsc/refresh",
        &a.without_bound(),
        Some(&answer),
        Some(&id),
    )
    .await;
    assert_eq!(refused(r).await, invalid, "replayed nonce");

    one.wait_metrics(&[
        "tollgate_dbsc_total{event=\"registered\"} 1",
        "tollgate_dbsc_total{event=\"refused\"} 3",
    ])
    .await;
    two.wait_metrics(&[
        "tollgate_dbsc_total{event=\"refreshed\"} 1",
        "tollgate_dbsc_total{event=\"refused\"} 4",
    ])
    .await;
    // Proofs, challenges and keys never reach the log.
    for tg in &tgs {
        let log = tg.log();
        for secret in [&answer, &nonce, &a_challenge, &a.0["__Host-tollgate-bound"]] {
            assert!(!log.contains(secret.as_str()), "{log}");
        }
    }

    // Logout ends the binding: the bound cookie is cleared and the copy no longer works.
    let r = one
        .with_session(&plain(), reqwest::Method::POST, "/logout", &a.header())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        set_cookies(&r)
            .iter()
            .any(|l| l.starts_with("__Host-tollgate-bound=") && l.contains("Max-Age=0")),
        "{:?}",
        set_cookies(&r)
    );
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = api(two, &a).await;
        if last.0 == 401 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 401, "{}", two.log());
}
