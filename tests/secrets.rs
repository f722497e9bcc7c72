//! Secrets that change under a running tollgate: the files named by `*_file` keys, replaced
//! the way Kubernetes updates a mounted Secret (a new directory, then the `..data` symlink
//! swapped over it), are re-read without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::flow::*;
use common::idp::CLIENTS;
use common::*;
use sha2::{Digest, Sha256};

/// A directory laid out like a mounted Kubernetes Secret: `NAME -> ..data/NAME`, `..data ->
/// ..<version>`; [`SecretDir::write`] swaps in a new version atomically.
struct SecretDir {
    dir: tempfile::TempDir,
    version: u32,
}

impl SecretDir {
    fn new(name: &str, content: &str) -> SecretDir {
        let mut s = SecretDir {
            dir: tempfile::tempdir().unwrap(),
            version: 0,
        };
        s.write(name, content);
        std::os::unix::fs::symlink(format!("..data/{name}"), s.dir.path().join(name)).unwrap();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&mut self, name: &str, content: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.path().join(&version)).unwrap();
        std::fs::write(self.dir.path().join(&version).join(name), content).unwrap();
        let tmp = self.dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("..data")).unwrap();
    }
}

/// Waits (bounded) for a metrics line that holds every one of `parts`.
async fn metric_line(tg: &Tollgate, parts: &[&str]) -> String {
    let client = reqwest::Client::new();
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(r) = client.get(tg.metrics_url()).send().await {
            last = r.text().await.unwrap_or_default();
            if let Some(line) = last.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no metrics line with {parts:?}; last scrape:\n{last}");
}

/// The key id (hex) a session cookie was sealed with: bytes 1..5 of the sealed value.
fn cookie_key_id(cookie_header: &str) -> String {
    let value = cookie_header
        .split("; ")
        .find_map(|c| {
            c.strip_prefix("tollgate=")
                .or_else(|| c.strip_prefix("tollgate.0="))
        })
        .unwrap_or_else(|| panic!("no session cookie in {cookie_header}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .unwrap();
    raw[1..5].iter().map(|b| format!("{b:02x}")).collect()
}

fn key_id(key_b64: &str) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(key_b64)
        .unwrap();
    let digest = Sha256::new()
        .chain_update(b"tollgate-key-id")
        .chain_update(&key)
        .finalize();
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random key, base64.
fn random_key() -> String {
    let mut k = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Tollgate (ready) with its cookie keys in `keys` of a Secret-like directory holding `KEY`.
async fn with_keys_file() -> (Echo, common::idp::Idp, SecretDir, Tollgate) {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let secret = SecretDir::new("keys", &format!("{KEY}\n"));
    let keys_path = secret.path("keys");
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "");
    let mut tg = Tollgate::start_on(port, |p, m| {
        with_file(
            config.render(p, m),
            "keys = ",
            file_line("keys_file", &keys_path),
        )
    })
    .await;
    tg.wait_for("/readyz").await.unwrap();
    (echo, idp, secret, tg)
}

async fn api_status(tg: &Tollgate, cookie: &str) -> u16 {
    plain()
        .get(tg.url("/api/x"))
        .header("cookie", cookie)
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn with_file(config: String, line_start: &str, file_line: String) -> String {
    let line = config
        .lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("no {line_start} line"))
        .to_string();
    config.replacen(&line, &file_line, 1)
}

fn file_line(key: &str, path: &Path) -> String {
    format!("{key} = {:?}", path.display().to_string())
}

/// A new key ring in `keys_file` takes effect without a restart: sessions sealed under a key
/// still listed keep working, new cookies carry the new key's id; a file that does not parse
/// keeps the old ring (error, metric); a key taken out of the ring stops opening its cookies,
/// even ones opened (and kept opened) before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_cookie_key_file_keeps_sessions_and_seals_with_the_new_key() {
    let (_echo, _idp, mut secret, tg) = with_keys_file().await;
    let new_key = random_key();

    let old = login_cookie(&tg).await;
    assert_eq!(cookie_key_id(&old), key_id(KEY));
    assert_eq!(api_status(&tg, &old).await, 200);

    // The new key first, the old one kept.
    secret.write("keys", &format!("# rotated\n{new_key}\n{KEY}\n"));
    metric_line(
        &tg,
        &[
            "tollgate_secret_reloads_total{",
            "session.keys_file",
            "\"ok\"",
            "} 1",
        ],
    )
    .await;
    assert_eq!(
        api_status(&tg, &old).await,
        200,
        "a session under a key still listed"
    );
    let new = login_cookie(&tg).await;
    assert_eq!(
        cookie_key_id(&new),
        key_id(&new_key),
        "new cookies carry the new key"
    );

    // A broken file: the ring stays, the error is counted, the process serves on.
    secret.write("keys", "not a key\n");
    metric_line(&tg, &["tollgate_secret_stale{", "session.keys_file", "} 1"]).await;
    assert_eq!(api_status(&tg, &old).await, 200);
    assert_eq!(api_status(&tg, &new).await, 200);
    assert!(tg.log().contains("secrets not reloaded"), "{}", tg.log());
    assert!(!tg.log().contains(&new_key), "a key reached the log");

    // The old key leaves the ring: its cookies stop opening (the one opened above too).
    secret.write("keys", &format!("{new_key}\n"));
    metric_line(&tg, &["tollgate_secret_stale{", "session.keys_file", "} 0"]).await;
    assert_eq!(api_status(&tg, &old).await, 401);
    assert_eq!(api_status(&tg, &new).await, 200);
}

/// A reload that failed for a reason outside the secret's file (here the config file itself,
/// which is not watched) is tried again, so the new key ring arrives once the config is
/// fixed, although the key file did not change again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_is_retried_until_it_passes() {
    let (_echo, _idp, mut secret, tg) = with_keys_file().await;
    let new_key = random_key();
    let config_path = tg.log_path.parent().unwrap().join("tollgate.toml");
    let good = tg.config_text.clone();

    // The config file breaks, then the key file changes: the reload fails.
    std::fs::write(&config_path, format!("{good}\n[no_such_section]\n")).unwrap();
    secret.write("keys", &format!("{new_key}\n{KEY}\n"));
    metric_line(&tg, &["tollgate_secret_stale{", "session.keys_file", "} 1"]).await;

    // The config is fixed; the key file stays as it is. The retry (every 10 s) applies it.
    std::fs::write(&config_path, &good).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = reqwest::get(tg.metrics_url())
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| {
            l.starts_with("tollgate_secret_stale{")
                && l.contains("session.keys_file")
                && l.ends_with(" 0")
        }) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retried: {}",
            tg.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tg.log().contains("retrying a secret that did not reload"));
    let cookie = login_cookie(&tg).await;
    assert_eq!(cookie_key_id(&cookie), key_id(&new_key));
}

/// A replaced client secret file is used by the next call to the provider: a login that the
/// provider refused with the wrong secret works once the right one is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_secret_file_is_used_by_the_next_login() {
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let client = &CLIENTS[0];
    let right = client.secret.expect("a client with a secret");
    let mut secret = SecretDir::new("client_secret", "wrong-secret-0123456789abcdef\n");
    let secret_path = secret.path("client_secret");
    let config = tollgate_config(&idp, client, &echo.url(), "");
    let mut tg = Tollgate::start_on(port, |p, m| {
        with_file(
            config.render(p, m),
            "client_secret = ",
            file_line("client_secret_file", &secret_path),
        )
    })
    .await;
    tg.wait_for("/readyz").await.unwrap();

    let r = browser()
        .get(tg.url("/login?return_to=/"))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200, "the wrong secret logged in");

    secret.write("client_secret", &format!("{right}\n"));
    metric_line(
        &tg,
        &[
            "tollgate_secret_reloads_total{",
            "oidc.client_secret_file",
            "\"ok\"",
            "} 1",
        ],
    )
    .await;
    login_cookie(&tg).await;
    assert!(!tg.log().contains(right), "the secret reached the log");
}

/// A new `store.url_file` moves the store to another server without a restart: once the old
/// server is gone, revocations still reach the store (the new one) and the subscription is
/// up there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_url_file_moves_to_the_new_server() {
    let mut first = common::redis::Redis::start().await;
    let second = common::redis::Redis::start().await;
    let echo = Echo::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let mut secret = SecretDir::new("store_url", &format!("{}\n", first.url()));
    let url_path = secret.path("store_url");
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "").section(&format!(
        "[store]\n{}\nkey_prefix = \"test:\"\ntimeout = \"300ms\"\n",
        file_line("url_file", &url_path)
    ));
    let mut tg = Tollgate::start_on(port, |p, m| config.render(p, m)).await;
    tg.wait_for("/readyz").await.unwrap();
    tg.wait_metrics(&["tollgate_store_up 1"]).await;

    secret.write("store_url", &format!("{}\n", second.url()));
    metric_line(
        &tg,
        &[
            "tollgate_secret_reloads_total{",
            "store.url_file",
            "\"ok\"",
            "} 1",
        ],
    )
    .await;
    first.stop();

    // A logout publishes its revocation: to the second server.
    let cookie = login_cookie(&tg).await;
    let r = plain()
        .post(tg.url("/logout"))
        .header("cookie", &cookie)
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let client = ::redis::Client::open(second.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let revoked: u64 = ::redis::cmd("ZCARD")
        .arg("test:revoked")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        revoked,
        1,
        "the revocation is in the new store: {}",
        tg.log()
    );
    tg.wait_metrics(&["tollgate_store_up 1"]).await;
    assert!(
        !tg.log().contains("did not record the revocation"),
        "{}",
        tg.log()
    );
}
