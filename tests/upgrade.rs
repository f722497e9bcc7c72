//! Zero-downtime restart: a `tollgate --upgrade` process takes the listening sockets over from
//! the running one (which gets `SIGQUIT`) while clients keep connecting; not one connection or
//! request fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::flow::*;
use common::idp::CLIENTS;
use common::*;

fn spawn(config: &std::path::Path, log: &std::path::Path, upgrade: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("--config")
        .arg(config)
        .arg("--log-format")
        .arg("json")
        .env("TOLLGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.spawn().expect("start tollgate")
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < within, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request() {
    let echo = Echo::start().await;
    let port = free_port();
    let metrics_port = free_port();
    let idp = idp_for(&[port]).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "").server(&format!(
        "upgrade_sock = {:?}\ngrace_period = \"2s\"",
        sock.display().to_string()
    ));
    let config_path = dir.path().join("tollgate.toml");
    std::fs::write(&config_path, config.render(port, metrics_port)).unwrap();
    let (old_log, new_log) = (dir.path().join("old.log"), dir.path().join("new.log"));
    let mut old = spawn(&config_path, &old_log, false);
    let url = format!("http://127.0.0.1:{port}");
    let probe = plain();
    let started = Instant::now();
    loop {
        if let Ok(r) = probe.get(format!("{url}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "old process not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The load: clients that open a new connection per request, and keep-alive clients.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (stop, ok, failures, url) = (stop.clone(), ok.clone(), failures.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
            if i % 2 == 0 {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match client.get(format!("{url}/page/{i}/{n}")).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status())),
                    Err(e) => failures.lock().unwrap().push(format!("{e:?}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut new = spawn(&config_path, &new_log, true);
    wait_until(
        "the new process listens on the upgrade socket",
        Duration::from_secs(20),
        || sock.exists(),
    )
    .await;
    // SAFETY: signals a child process of this test.
    assert_eq!(unsafe { libc::kill(old.id() as i32, libc::SIGQUIT) }, 0);
    wait_until("the old process exits", Duration::from_secs(30), || {
        matches!(old.try_wait(), Ok(Some(_)))
    })
    .await;
    let served_before = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let new_text = std::fs::read_to_string(&new_log).unwrap_or_default();
    let old_text = std::fs::read_to_string(&old_log).unwrap_or_default();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nold:\n{old_text}\nnew:\n{new_text}",
        failures.len(),
        failures.len() + ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "the new process served after the old one left"
    );
    assert!(
        new_text.contains("listening socket taken over"),
        "{new_text}"
    );
    assert_eq!(old.wait().unwrap().code(), Some(0), "{old_text}");
    let r = probe.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = new.kill();
    let _ = new.wait();
}

/// A `SIGQUIT` with no new process waiting at the upgrade socket: the sockets are not handed
/// to anybody, so the process stops as at `SIGTERM` (it says so) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_without_a_new_process_stops_as_sigterm() {
    let echo = Echo::start().await;
    let port = free_port();
    let metrics_port = free_port();
    let idp = idp_for(&[port]).await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "").server(&format!(
        "upgrade_sock = {:?}\ngrace_period = \"1s\"",
        sock.display().to_string()
    ));
    let config_path = dir.path().join("tollgate.toml");
    std::fs::write(&config_path, config.render(port, metrics_port)).unwrap();
    let log = dir.path().join("tollgate.log");
    let mut tg = spawn(&config_path, &log, false);
    let probe = plain();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    while !matches!(probe.get(&url).send().await, Ok(r) if r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(20), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SAFETY: signals a child process of this test.
    assert_eq!(unsafe { libc::kill(tg.id() as i32, libc::SIGQUIT) }, 0);
    wait_until("the process exits", Duration::from_secs(60), || {
        matches!(tg.try_wait(), Ok(Some(_)))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(tg.wait().unwrap().code(), Some(0), "{text}");
    assert!(text.contains("no new process waiting"), "{text}");
    assert!(!text.contains("listener handed over"), "{text}");
}
