//! Zero-downtime restart: a `tollgate --upgrade` process takes the listening sockets over from
//! the running one (which gets `SIGQUIT`) while clients keep connecting, over HTTP/1.1 and over
//! HTTP/2 (TLS); not one connection or request fails, and HTTP/2 connections are told GOAWAY
//! as soon as the sockets go over.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ca::Ca;
use common::flow::*;
use common::idp::{Idp, CLIENTS};
use common::*;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls;

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

/// A running tollgate (the old process) with a plain and a TLS listener, and what its
/// successor needs: the same config file and upgrade socket.
struct Running {
    _echo: Echo,
    _idp: Idp,
    ca: Ca,
    dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    sock: std::path::PathBuf,
    old: Child,
    old_log: std::path::PathBuf,
    url: String,
    tls_url: String,
}

impl Running {
    async fn start(grace: &str) -> Running {
        let ca = Ca::new();
        ca.issue(1);
        let echo = Echo::start().await;
        let (port, tls_port, metrics_port) = (free_port(), free_port(), free_port());
        let idp = idp_for(&[port]).await;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("upgrade.sock");
        let config = tollgate_config(&idp, &CLIENTS[0], &echo.url(), "")
            .server(&format!(
                "upgrade_sock = {:?}\ngrace_period = \"{grace}\"",
                sock.display().to_string()
            ))
            .section(&format!(
                "[tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                ca.cert_file().display(),
                ca.key_file().display()
            ));
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, config.render(port, metrics_port)).unwrap();
        let old_log = dir.path().join("old.log");
        let old = spawn(&config_path, &old_log, false);
        let url = format!("http://127.0.0.1:{port}");
        let probe = plain();
        let started = Instant::now();
        while !matches!(probe.get(format!("{url}/readyz")).send().await, Ok(r) if r.status() == 200)
        {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "old process not ready:\n{}",
                std::fs::read_to_string(&old_log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Running {
            _echo: echo,
            _idp: idp,
            ca,
            dir,
            config_path,
            sock,
            old,
            old_log,
            url,
            tls_url: format!("https://127.0.0.1:{tls_port}"),
        }
    }

    /// A client for the TLS listener: HTTP/2 (ALPN), trusting the test CA.
    fn h2_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// Starts the new process with `--upgrade`, waits until it listens on the upgrade socket
    /// and sends the old one `SIGQUIT`; returns the new process and its log.
    async fn upgrade(&self) -> (Child, std::path::PathBuf) {
        let new_log = self.dir.path().join("new.log");
        let new = spawn(&self.config_path, &new_log, true);
        let sock = self.sock.clone();
        wait_until(
            "the new process listens on the upgrade socket",
            Duration::from_secs(20),
            || sock.exists(),
        )
        .await;
        // SAFETY: signals a child process of this test.
        let sent = unsafe { libc::kill(self.old.id() as i32, libc::SIGQUIT) };
        assert_eq!(sent, 0);
        (new, new_log)
    }

    fn old_log(&self) -> String {
        std::fs::read_to_string(&self.old_log).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request() {
    let mut run = Running::start("2s").await;
    let url = run.url.clone();
    let probe = plain();

    // The load: clients that open a new connection per request, and keep-alive clients.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let h2_served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let h2_served = h2_served.clone();
        // Six HTTP/1.1 clients (every other one a new connection per request), two HTTP/2.
        let (client, url) = if i < 6 {
            let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
            if i % 2 == 0 {
                builder = builder.pool_max_idle_per_host(0);
            }
            (builder.build().unwrap(), url.clone())
        } else {
            (run.h2_client(), run.tls_url.clone())
        };
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match client.get(format!("{url}/page/{i}/{n}")).send().await {
                    Ok(r) if r.status() == 200 => {
                        if r.version() == reqwest::Version::HTTP_2 {
                            h2_served.fetch_add(1, Ordering::Relaxed);
                        }
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
    let counted = ok.clone();
    wait_until("the load runs", Duration::from_secs(20), || {
        counted.load(Ordering::Relaxed) >= 200
    })
    .await;

    let (mut new, new_log) = run.upgrade().await;
    let old = &mut run.old;
    wait_until("the old process exits", Duration::from_secs(30), || {
        matches!(old.try_wait(), Ok(Some(_)))
    })
    .await;
    let served_before = ok.load(Ordering::Relaxed);
    let counted = ok.clone();
    wait_until(
        "the new process serves after the old one left",
        Duration::from_secs(20),
        || counted.load(Ordering::Relaxed) >= served_before + 200,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let new_text = std::fs::read_to_string(&new_log).unwrap_or_default();
    let old_text = run.old_log();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\nold:\n{old_text}\nnew:\n{new_text}",
        failures.len(),
        failures.len() + ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(
        new_text.contains("listening socket taken over"),
        "{new_text}"
    );
    assert!(
        h2_served.load(Ordering::Relaxed) > 0,
        "HTTP/2 was negotiated"
    );
    assert_eq!(run.old.wait().unwrap().code(), Some(0), "{old_text}");
    let r = probe.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let _ = new.kill();
    let _ = new.wait();
}

/// One HTTP/2 connection to `run`'s TLS listener, held by hand (hyper's client connection over
/// rustls, ALPN h2), so a test sees when tollgate ends it: the sender, and the connection's task
/// (done when the connection closes).
async fn h2_connection(
    run: &Running,
) -> (
    hyper::client::conn::http2::SendRequest<String>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(run.ca.pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls_config.alpn_protocols = vec![b"h2".to_vec()];
    let authority = run.tls_url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    (send, tokio::spawn(conn))
}

async fn h2_get(
    send: &mut hyper::client::conn::http2::SendRequest<String>,
    url: String,
) -> hyper::Result<hyper::StatusCode> {
    let request = hyper::Request::get(url).body(String::new()).unwrap();
    send.send_request(request).await.map(|r| r.status())
}

/// Waits until the old process has handed its sockets over (it logs this once draining began).
async fn handed_over(run: &Running) {
    wait_until("the old process hands the sockets over", HANG, || {
        run.old_log()
            .contains("the listening sockets go to the new process")
    })
    .await;
}

/// HTTP/2 connections to the old process are told GOAWAY when the sockets go to the new
/// process, as HTTP/1.1 connections get `Connection: close`, not five seconds later when the old
/// process stops accepting: an idle connection that has answered a request closes cleanly
/// while the old one still accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_are_told_goaway_when_the_sockets_go_over() {
    let mut run = Running::start("2s").await;
    let (mut send, conn) = h2_connection(&run).await;
    let status = h2_get(&mut send, format!("{}/healthz", run.tls_url)).await;
    assert_eq!(status.unwrap(), 200);

    let (mut new, _new_log) = run.upgrade().await;
    let closed = tokio::time::timeout(HANG, conn)
        .await
        .expect("the HTTP/2 connection is closed after the handover");
    assert!(
        matches!(closed, Ok(Ok(()))),
        "closed cleanly (GOAWAY, no error): {closed:?}"
    );
    handed_over(&run).await;
    // Pingora logs this before it signals shutdown, which is when GOAWAY came before.
    let old_text = run.old_log();
    assert!(
        !old_text.contains("Broadcasting graceful shutdown"),
        "GOAWAY came only at shutdown, five seconds after the handover:\n{old_text}"
    );
    let old = &mut run.old;
    wait_until("the old process exits", Duration::from_secs(30), || {
        matches!(old.try_wait(), Ok(Some(_)))
    })
    .await;
    assert_eq!(run.old.wait().unwrap().code(), Some(0), "{}", run.old_log());
    let _ = new.kill();
    let _ = new.wait();
}

/// A connection that has not answered anything yet is not told GOAWAY at the handover (a
/// client does not retry the first request of a new connection, and after the handover new
/// connections still land on the old process for a while): its request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_http2_connection_is_served_after_the_handover() {
    let mut run = Running::start("2s").await;
    let (mut send, _conn) = h2_connection(&run).await;
    let (mut new, _new_log) = run.upgrade().await;
    handed_over(&run).await;
    let status = h2_get(&mut send, format!("{}/healthz", run.tls_url)).await;
    assert_eq!(status.unwrap(), 200, "{}", run.old_log());
    let old = &mut run.old;
    wait_until("the old process exits", Duration::from_secs(30), || {
        matches!(old.try_wait(), Ok(Some(_)))
    })
    .await;
    let _ = new.kill();
    let _ = new.wait();
}

/// A `SIGQUIT` with no new process waiting at the upgrade socket: the sockets are not handed
/// to anybody, so the process stops as at `SIGTERM` (it says so) and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_without_a_new_process_stops_as_sigterm() {
    let mut run = Running::start("1s").await;
    // SAFETY: signals a child process of this test.
    assert_eq!(unsafe { libc::kill(run.old.id() as i32, libc::SIGQUIT) }, 0);
    let tg = &mut run.old;
    wait_until("the process exits", Duration::from_secs(60), || {
        matches!(tg.try_wait(), Ok(Some(_)))
    })
    .await;
    let text = run.old_log();
    assert_eq!(run.old.wait().unwrap().code(), Some(0), "{text}");
    assert!(text.contains("no new process waiting"), "{text}");
    assert!(!text.contains("listener handed over"), "{text}");
}
