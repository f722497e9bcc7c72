//! The front door: tollgate's own accept loop and request-head reading, in front of Pingora's
//! HTTP handling ([`HttpServerApp::process_new_http`]).
//!
//! Why not Pingora's listening service: in 0.9 it has no connection limit; no deadline for a
//! whole request head (a head dribbled a byte every 20 s is kept forever); no idle timeout on
//! a reused keep-alive connection (its keep-alive `Some(0)` means "forever"); it answers too
//! many header fields with `400` and accepts any head up to 1 MB; and on SIGTERM it closes the
//! listening socket at once, which resets every connection still in the kernel's accept queue
//! and drops connections whose request had not fully arrived. Here, per listener:
//!
//! - **`max_connections`**: a connection is accepted only with a free slot, so clients beyond
//!   the limit wait in the kernel's listen backlog (not refused, not reset) and the open ones
//!   are unaffected; a slot is given back when its connection closes.
//! - **Request heads** are read here first ([`head`]): the whole head within
//!   `header_read_timeout` of its first byte (of the accept, for the first request), at most
//!   `max_header_bytes` and `max_headers` fields, else `431` (or the connection is closed, on
//!   a timeout). The complete head is then put back in front of the stream, so Pingora's
//!   parse reads it at once and never waits on the network.
//! - **Between requests** an idle keep-alive connection is closed after `keepalive_timeout`,
//!   or at shutdown.
//! - **Shutdown** (SIGTERM): new handshakes are refused first (on Linux a socket filter drops
//!   SYNs on the listening socket), then everything the kernel had already accepted is taken
//!   from the queue and served with `Connection: close`, then the listener closes and new
//!   clients are refused. `/readyz` answers `503` from the signal on.
//! - **Slow clients**: a client that does not read its answers is cut off ([`pace`]); HTTP/2
//!   connections have at most `h2_max_concurrent_streams` streams, each under
//!   `write_timeout`.
//!
//! One job per file: this one assembles the service (listeners, the socket handover of a
//! graceful upgrade); [`listen`] accepts and starts each connection; [`serve`] reads HTTP/1
//! request heads and hands them to Pingora; [`h2`] serves HTTP/2 streams; [`drain`] closes a
//! listener at shutdown; [`head`] scans heads against the limits; [`pace`] watches writes;
//! [`coalesce`] buffers HTTP/1 writes; [`stream`] passes Pingora's stream traits through the
//! wrappers.

mod coalesce;
mod drain;
mod h2;
pub(crate) mod head;
mod listen;
mod pace;
mod serve;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::server::ShutdownWatch;
use pingora::server::{ExecutionPhase, ListenFds};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;
use listen::accept_loop;
use pace::PaceLimits;

/// Binds the listening sockets (before the server runs, so a port in use is a start error).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    // The backlog is where clients wait while `max_connections` are open.
    socket.listen(65535)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A listening socket, plain or with the TLS acceptor of `[tls]`; `socket` is `None` when it
/// is to be taken over from the running process (`tollgate --upgrade`).
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    pub(crate) socket: Option<std::net::TcpListener>,
    pub(crate) tls: Option<Arc<Acceptor>>,
}

/// The proxy service: listeners, the connection limit, head reading, then Pingora.
pub(crate) struct FrontDoor<A> {
    app: Option<A>,
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    /// Pingora's execution phases: a graceful upgrade hands the listening sockets over.
    phases: Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>,
    /// This process took its sockets over from another (`--upgrade`).
    upgraded: bool,
    /// Where a new process waits for the sockets (`[server] upgrade_sock`).
    upgrade_sock: std::path::PathBuf,
    /// Every address this process listens on (front door, TLS, metrics): inherited sockets
    /// for other addresses are closed.
    claimed: Vec<String>,
    /// The service's name (Pingora's log lines).
    name: &'static str,
}

/// The most connections the metrics listener holds open: scrapers are few, and a flood of
/// unfinished requests there must not take descriptors from the front door.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long a process that took the sockets over waits for the provider metadata before it
/// accepts (the old process accepts for 5 s more after handing them over).
const UPGRADE_READY_WAIT: Duration = Duration::from_secs(4);

struct Shared {
    limits: Limits,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    slots: Arc<Semaphore>,
    draining: AtomicBool,
    /// Becomes `true` with `draining`: HTTP/2 connections wait on it to say GOAWAY (HTTP/1.1
    /// connections read `draining` between requests).
    drain_started: tokio::sync::watch::Sender<bool>,
    /// The listening sockets went to a new process (graceful upgrade): at shutdown they are
    /// left as they are, the new process accepts from them.
    handed_over: AtomicBool,
    /// HTTP/2 settings for TLS connections that negotiate `h2`.
    h2: H2Options,
    /// What a client that does not read its responses is allowed ([`pace`]).
    pace: PaceLimits,
    /// Connections are counted in `tollgate_open_connections` (not on the metrics listener).
    counted: bool,
}

impl Shared {
    /// From now on connections close after their current request (HTTP/1.1: `Connection:
    /// close`; HTTP/2: GOAWAY, streams under way finish).
    fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_started.send_replace(true);
    }
}

impl<A> FrontDoor<A> {
    pub(crate) fn new(
        app: A,
        listeners: Vec<Listener>,
        limits: Limits,
        metrics: Metrics,
        readiness: Arc<Readiness>,
    ) -> Self {
        let mut h2 = default_h2_options();
        // Over this, h2 itself answers 431 for the stream (decoded names and values, plus 32
        // bytes per field, RFC 9113 §6.5.2).
        h2.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        // Each stream can hold an upstream connection: this bounds what one client holds.
        h2.max_concurrent_streams(u32::try_from(limits.h2_max_concurrent_streams).unwrap_or(32));
        let pace = PaceLimits {
            write_timeout: limits.write_timeout,
            min_send_rate: limits.min_send_rate as u64,
            window: limits.send_rate_window,
        };
        FrontDoor {
            app: Some(app),
            listeners,
            shared: Arc::new(Shared {
                slots: Arc::new(Semaphore::new(limits.max_connections)),
                limits,
                metrics,
                readiness,
                draining: AtomicBool::new(false),
                drain_started: tokio::sync::watch::Sender::new(false),
                handed_over: AtomicBool::new(false),
                h2,
                pace,
                counted: true,
            }),
            phases: None,
            upgraded: false,
            upgrade_sock: std::path::PathBuf::new(),
            claimed: Vec::new(),
            name: "tollgate",
        }
    }

    /// The same limits for an administrative listener (metrics): at most
    /// [`ADMIN_MAX_CONNECTIONS`] connections, not counted with the clients'.
    pub(crate) fn admin(
        app: A,
        listener: Listener,
        limits: &Limits,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        name: &'static str,
    ) -> Self {
        let limits = Limits {
            max_connections: limits.max_connections.min(ADMIN_MAX_CONNECTIONS),
            ..limits.clone()
        };
        let mut door = FrontDoor::new(app, vec![listener], limits, metrics, readiness);
        if let Some(shared) = Arc::get_mut(&mut door.shared) {
            shared.counted = false;
        }
        door.name = name;
        door
    }

    /// Follows Pingora's `phases` (a graceful upgrade hands the sockets over); `upgraded`:
    /// this process takes them over.
    pub(crate) fn with_upgrades(
        mut self,
        phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
        upgraded: bool,
        upgrade_sock: std::path::PathBuf,
        claimed: Vec<String>,
    ) -> Self {
        self.phases = Some(phases);
        self.upgraded = upgraded;
        self.upgrade_sock = upgrade_sock;
        self.claimed = claimed;
        self
    }

    /// The listening socket of `l`: bound at build time (then registered among the sockets a
    /// graceful upgrade hands over), or taken from those the old process handed over, or, for
    /// an address the old process did not have, bound now. A socket enters the table only
    /// once it is in use here, and an inherited one that cannot be used is left open (the
    /// table keeps its number, which must not come to name another file).
    fn socket(
        l: Listener,
        fds: Option<&ListenFds>,
    ) -> Option<(TcpListener, Option<Arc<Acceptor>>)> {
        use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
        let key = l.addr.to_string();
        let inherited = match (&l.socket, fds) {
            (None, Some(fds)) => fds.lock().get(&key).copied(),
            _ => None,
        };
        let socket = match (l.socket, inherited) {
            (Some(s), _) => s,
            (None, Some(fd)) => {
                // SAFETY: the fd came from the old process over the upgrade socket and is
                // used by this listener only (the table keeps the number for the next upgrade).
                let s = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                let used = s
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(s.try_clone()?));
                return match used {
                    Ok(listener) => {
                        // The clone serves; the original number stays open for the table.
                        let _ = s.into_raw_fd();
                        tracing::info!(addr = %l.addr, "listening socket taken over from the old process");
                        Some((listener, l.tls))
                    }
                    Err(e) => {
                        let _ = s.into_raw_fd();
                        tracing::error!(addr = %l.addr, error = %e, "cannot use a socket taken over");
                        None
                    }
                };
            }
            (None, None) => match bind(l.addr) {
                Ok(s) => {
                    tracing::warn!(addr = %l.addr, "the old process did not hand this address over; bound anew");
                    s
                }
                Err(e) => {
                    tracing::error!(addr = %l.addr, error = %e, "cannot listen");
                    return None;
                }
            },
        };
        let fd = socket.as_raw_fd();
        match TcpListener::from_std(socket) {
            Ok(listener) => {
                if let Some(fds) = fds {
                    fds.lock().add(key, fd);
                }
                Some((listener, l.tls))
            }
            Err(e) => {
                tracing::error!(addr = %l.addr, error = %e, "cannot use a listening socket");
                None
            }
        }
    }
}

/// Whether a process waits for the listening sockets at `path`: a Unix socket owned by this
/// user. Pingora announces the handover before it tries to send them, and sends them even to
/// nobody; only then are the sockets truly the new process's.
fn upgrade_waiting(path: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path).is_ok_and(|m| {
        // SAFETY: geteuid cannot fail.
        m.file_type().is_socket() && m.uid() == unsafe { libc::geteuid() }
    })
}

#[async_trait]
impl<A> pingora::services::Service for FrontDoor<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(app) = self.app.take() else {
            return;
        };
        if let (true, Some(fds)) = (self.upgraded, fds.as_ref()) {
            // Sockets the old process had for addresses this config no longer names: nobody
            // would accept on them, and the kernel would keep completing handshakes there.
            let keep: std::collections::HashSet<String> = self.claimed.iter().cloned().collect();
            for addr in fds.lock().close_unclaimed(&keep) {
                tracing::info!(
                    addr,
                    "closed a socket taken over for an address no longer configured"
                );
            }
        }
        if let Some(mut phases) = self.phases.take() {
            let shared = self.shared.clone();
            let upgrade_sock = self.upgrade_sock.clone();
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match phases.recv().await {
                        Ok(ExecutionPhase::GracefulUpgradeTransferringFds)
                            if !upgrade_waiting(&upgrade_sock) =>
                        {
                            tracing::warn!(upgrade_sock = %upgrade_sock.display(), "SIGQUIT with no new process waiting for the sockets: stopping as at SIGTERM");
                            return;
                        }
                        Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => {
                            shared.handed_over.store(true, Ordering::Release);
                            // Responses from now on close their connection, so keep-alive
                            // clients reconnect (to either process) while this one still
                            // answers, instead of meeting the close of an idle connection at
                            // shutdown with a request under way. (Pingora sets keep-alive from
                            // the request once it reads it: the proxy's request filter applies
                            // this, see `Readiness::handed_over`.)
                            shared.start_draining();
                            shared.readiness.set_handed_over();
                            tracing::info!("graceful upgrade: the listening sockets go to the new process; requests in flight finish here");
                            return;
                        }
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    }
                }
            });
        }
        let sockets: Vec<_> = std::mem::take(&mut self.listeners)
            .into_iter()
            .filter_map(|l| Self::socket(l, fds.as_ref()))
            .collect();
        if self.upgraded {
            // The old process still accepts for a few seconds: answer once the provider
            // metadata is in, so no request meets a provider that is not loaded yet.
            let started = tokio::time::Instant::now();
            while !self.shared.readiness.provider_loaded() && started.elapsed() < UPGRADE_READY_WAIT
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let app = Arc::new(app);
        let mut loops = Vec::new();
        for (listener, tls) in sockets {
            let door = Door {
                tls,
                app: app.clone(),
                shared: self.shared.clone(),
                shutdown: shutdown.clone(),
            };
            loops.push(tokio::spawn(accept_loop(listener, door)));
        }
        for l in loops {
            let _ = l.await;
        }
        app.http_cleanup().await;
    }

    fn name(&self) -> &str {
        self.name
    }
}

/// What every connection of one listener is served with.
struct Door<A> {
    tls: Option<Arc<Acceptor>>,
    app: Arc<A>,
    shared: Arc<Shared>,
    shutdown: ShutdownWatch,
}

impl<A> Clone for Door<A> {
    fn clone(&self) -> Self {
        Door {
            tls: self.tls.clone(),
            app: self.app.clone(),
            shared: self.shared.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}
