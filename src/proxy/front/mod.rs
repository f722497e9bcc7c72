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

mod coalesce;
pub(crate) mod head;
mod pace;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::http::ResponseHeader;
use pingora::listeners::tls::Acceptor;
use pingora::listeners::ALPN;
use pingora::protocols::http::v2::server::{
    self as h2_server, default_h2_options, H2Accept, H2Options, HttpSession as H2Session,
};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{Digest, GetSocketDigest, SocketDigest, Ssl, Stream};
use pingora::server::ShutdownWatch;
use pingora::server::{ExecutionPhase, ListenFds};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;
use coalesce::Coalesced;
use head::{HeadScanner, Scan};
use pace::{PaceLimits, Paced};

/// How long the drain waits for handshakes already under way to reach the accept queue
/// after new ones are refused (a few round trips on any network tollgate sits in).
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// The longest the accept queue is drained at shutdown.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// How long a refused client's remaining request bytes are read (and discarded) after the
/// `431`, so that closing does not reset the connection before the client reads the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;
/// Room reserved for each read of a request head.
const READ_CHUNK: usize = 4096;

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

async fn accept_loop<A>(listener: TcpListener, door: Door<A>)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let shared = &door.shared;
    let mut shutdown = door.shutdown.clone();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = match shared.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.metrics.limit("max_connections");
                tokio::select! {
                    p = shared.slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    // A dropped sender means the server is going away: drain as at shutdown.
                    changed = shutdown.changed() => match changed {
                        Ok(()) => continue,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
        };
        match accepted {
            Ok((tcp, peer)) => spawn_connection(tcp, peer, Some(permit), door.clone()),
            Err(e) => accept_failed(e).await,
        }
    }
    drain(listener, &door).await;
}

/// Shutdown: no new handshakes, serve what the kernel already accepted, then close.
async fn drain<A>(listener: TcpListener, door: &Door<A>)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let shared = &door.shared;
    shared.start_draining();
    if shared.handed_over.load(Ordering::Acquire) {
        // The socket is the new process's now (it holds the same one): no filter on it, no
        // draining of its queue; closing this process's descriptor leaves it listening.
        tracing::info!(listener = ?listener.local_addr().ok(), "listener handed over; not accepting here any more");
        return;
    }
    shared.readiness.set_draining();
    if let Err(e) = refuse_new_handshakes(&listener) {
        tracing::warn!(error = %e, "cannot refuse new handshakes while draining; connections arriving now may be reset");
    }
    let started = tokio::time::Instant::now();
    let mut drained = 0usize;
    while started.elapsed() < DRAIN_MAX {
        match tokio::time::timeout(DRAIN_QUIET, listener.accept()).await {
            Ok(Ok((tcp, peer))) => {
                drained += 1;
                // Over the limit if need be: these clients were already accepted by the kernel.
                spawn_connection(tcp, peer, None, door.clone());
            }
            Ok(Err(e)) => accept_failed(e).await,
            Err(_) => break,
        }
    }
    tracing::info!(
        listener = ?listener.local_addr().ok(),
        drained,
        "listener closed; queued connections are being answered with Connection: close"
    );
}

async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
        // Out of descriptors: accept would fail again at once; let connections close first.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops SYN segments (without ACK) on the listening socket: new clients are not taken into
/// the queue any more, while handshakes already under way complete.
#[cfg(target_os = "linux")]
fn refuse_new_handshakes(listener: &TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Classic BPF over the TCP header (the socket filter sees the segment from its TCP header):
    // load the flags byte, keep SYN|ACK bits, drop when it is exactly SYN.
    const BPF_LD_B_ABS: u16 = 0x30;
    const BPF_ALU_AND_K: u16 = 0x54;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    let filter = [
        libc::sock_filter {
            code: BPF_LD_B_ABS,
            jt: 0,
            jf: 0,
            k: 13,
        },
        libc::sock_filter {
            code: BPF_ALU_AND_K,
            jt: 0,
            jf: 0,
            k: 0x12,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: 0x02,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `program` points at `filter`, both alive for the call; the kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&program as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn refuse_new_handshakes(_listener: &TcpListener) -> std::io::Result<()> {
    Err(std::io::Error::other("only on Linux"))
}

fn spawn_connection<A>(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    door: Door<A>,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let Door {
            tls,
            app,
            shared,
            shutdown,
        } = door;
        let _open = Open::new(shared.counted.then_some(&shared.metrics), permit);
        let _ = tcp.set_nodelay(true);
        let mut l4 = L4Stream::from(tcp);
        let digest = {
            use std::os::fd::AsRawFd;
            SocketDigest::from_raw_fd(l4.as_raw_fd())
        };
        let _ = digest.peer_addr.set(Some(peer.into()));
        // Before the handshake: a TLS stream cannot take it afterwards.
        l4.set_socket_digest(digest);
        let Some(acceptor) = tls else {
            let paced = Paced::new(l4, shared.pace, shared.metrics.clone());
            serve(Box::new(Coalesced::new(paced)), &app, &shared, &shutdown).await;
            return;
        };
        let handshake = tokio::time::timeout(
            shared.limits.header_read_timeout,
            acceptor.tls_handshake(l4),
        )
        .await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                shared.metrics.limit("tls_handshake");
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                shared.metrics.limit("tls_handshake");
                return;
            }
        };
        let paced = Paced::new(stream, shared.pace, shared.metrics.clone());
        if matches!(paced.selected_alpn_proto(), Some(ALPN::H2)) {
            serve_h2(Box::new(paced), &app, &shared, &shutdown).await;
        } else {
            serve(Box::new(Coalesced::new(paced)), &app, &shared, &shutdown).await;
        }
    });
}

/// One open client connection: counted while it lives, its slot given back when it ends.
struct Open {
    metrics: Option<Metrics>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Open {
    fn new(metrics: Option<&Metrics>, permit: Option<OwnedSemaphorePermit>) -> Self {
        if let Some(m) = metrics {
            m.connection_opened();
        }
        Open {
            metrics: metrics.cloned(),
            _permit: permit,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.connection_closed();
        }
    }
}

/// Why no request head was handed to Pingora.
#[derive(Debug)]
enum NoHead {
    /// The client closed, or the connection broke.
    Gone,
    /// Idle past `keepalive_timeout`, or shutting down between requests.
    Idle,
    /// The head did not arrive within `header_read_timeout`.
    Slow,
    /// Too large or too many fields: answer `431`.
    TooLarge(&'static str),
}

/// Requests on one HTTP/1 connection: read a head, hand it to Pingora, repeat while it keeps
/// alive.
async fn serve<A>(mut stream: Stream, app: &Arc<A>, shared: &Shared, shutdown: &ShutdownWatch)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let mut settings: Option<HttpPersistentSettings> = None;
    let mut first = true;
    loop {
        let mut buf = BytesMut::new();
        match read_head(&mut stream, &mut buf, first, shared, shutdown).await {
            Ok(()) => {}
            Err(NoHead::Gone) => return,
            Err(NoHead::Idle) => {
                if !first {
                    shared.metrics.limit("keepalive_timeout");
                }
                return;
            }
            Err(NoHead::Slow) => {
                shared.metrics.limit("header_read_timeout");
                tracing::info!(
                    "connection closed: the request head did not arrive within header_read_timeout"
                );
                return;
            }
            Err(NoHead::TooLarge(limit)) => {
                shared.metrics.limit(limit);
                too_large(&mut stream, limit, shared).await;
                return;
            }
        }
        let mut session = ServerSession::new_http1(stream);
        if let Some(s) = settings.take() {
            s.apply_to_session(&mut session);
        }
        // The head (and whatever came after it) is parsed from here before any network read.
        session.set_pipelined_prefix(buf);
        let closing = *shutdown.borrow() || shared.draining.load(Ordering::Acquire);
        // Only whether to keep the connection: the idle wait itself is `read_head`'s.
        session.set_keepalive(if closing { None } else { Some(60) });
        let Some(reused) = app.process_new_http(session, shutdown).await else {
            return;
        };
        let (next, persisted) = reused.consume();
        stream = next;
        settings = persisted;
        first = false;
    }
}

/// Streams on one HTTP/2 connection (TLS with ALPN `h2`): each request is a task; the
/// connection closes after `keepalive_timeout` without streams, and says GOAWAY at shutdown or
/// once draining has started and it has answered a request. At a graceful upgrade draining
/// starts when the sockets go to the new process, five seconds before shutdown: clients move
/// there at once, as HTTP/1.1 clients do on `Connection: close`. (h2 sends GOAWAY for the
/// highest stream id first, then the last one it took once a ping's round trip has passed, so
/// requests in flight are not refused.)
async fn serve_h2<A>(stream: Stream, app: &Arc<A>, shared: &Shared, shutdown: &ShutdownWatch)
where
    A: HttpServerApp + Send + Sync + 'static,
{
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    let limits = &shared.limits;
    let handshake = tokio::time::timeout(
        limits.header_read_timeout,
        h2_server::handshake(stream, Some(shared.h2.clone())),
    )
    .await;
    let Ok(Ok(mut conn)) = handshake else {
        shared.metrics.limit("header_read_timeout");
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut closing = shutdown.clone();
    let mut draining = shared.drain_started.subscribe();
    let mut goaway = false;
    // Whether a request on this connection has been answered: see the draining branch.
    let mut answered = false;
    let mut rejected = 0usize;
    loop {
        let idle = tasks.is_empty();
        let next = tokio::select! {
            biased;
            _ = closing.wait_for(|down| *down), if !goaway => {
                conn.graceful_shutdown();
                goaway = true;
                continue;
            }
            // Only once a request on the connection has been answered: a client's first
            // request on a new connection is not retried when GOAWAY comes before it is sent
            // (hyper's pool retries only on a reused connection), and after the handover this
            // process still accepts for a while, so a client moving away may well land here
            // again. Not at the first stream either: hyper may send requests that were waiting
            // for the connection before the one that opened it. By the first answer, all
            // requests queued at connect time are out.
            _ = draining.wait_for(|d| *d), if !goaway && answered => {
                conn.graceful_shutdown();
                goaway = true;
                continue;
            }
            Some(_) = tasks.join_next(), if !idle => {
                answered = true;
                continue;
            }
            accepted = H2Session::from_h2_conn(&mut conn, digest.clone()) => accepted,
            _ = tokio::time::sleep(limits.keepalive_timeout), if idle && !goaway => {
                shared.metrics.limit("keepalive_timeout");
                break;
            }
        };
        match next {
            Ok(Some(H2Accept::Session(h2))) => {
                if h2_field_count(&h2.req_header().headers) > limits.max_headers {
                    shared.metrics.limit("header_count");
                    let mut h2 = h2;
                    // Like every stream's: a client that gives no window cannot hold it.
                    h2.set_write_timeout(Some(limits.write_timeout));
                    tasks.spawn(too_many_h2_fields(h2, shared.metrics.clone()));
                    continue;
                }
                let (app, shutdown) = (app.clone(), shutdown.clone());
                let mut session = ServerSession::new_http2(h2);
                // A stream the client gives no flow-control window (or too little) waits
                // for it at most this long per write, then ends and frees its upstream
                // connection; the connection itself is watched by `Paced`.
                session.set_write_timeout(Some(limits.write_timeout));
                tasks.spawn(async move {
                    app.process_new_http(session, &shutdown).await;
                });
            }
            Ok(Some(H2Accept::Rejected)) => {
                rejected += 1;
                if rejected >= 32 {
                    break;
                }
            }
            _ => break,
        }
    }
    drop(conn);
    // Never abort a request: each ends by itself (and logs).
    while tasks.join_next().await.is_some() {}
}

/// The header fields of an HTTP/2 request as `max_headers` counts them: browsers send each
/// cookie as a field of its own over HTTP/2 (RFC 9113 §8.2.3), which count as the one `Cookie`
/// field they are over HTTP/1.1 (their bytes count against `max_header_bytes` and
/// `max_cookie_bytes` all the same).
fn h2_field_count(headers: &http::HeaderMap) -> usize {
    let cookies = headers.get_all(http::header::COOKIE).iter().count();
    headers.len() - cookies.saturating_sub(1)
}

/// `431` for an HTTP/2 request with more header fields than `max_headers`.
async fn too_many_h2_fields(mut h2: H2Session, metrics: Metrics) {
    let request_id = crate::proxy::request_id::generate();
    let body = format!(
        r#"{{"error":"request_header_fields_too_large","message":"the request has more header fields than server.max_headers","request_id":"{request_id}"}}"#
    );
    tracing::warn!(request_id = %request_id, limit = "header_count", "request head refused with 431");
    metrics.request("-", 431);
    let Ok(mut resp) = ResponseHeader::build(431, Some(6)) else {
        return;
    };
    let headers = [
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ];
    for (n, v) in headers {
        let _ = resp.insert_header(n, v);
    }
    let _ = resp.insert_header("content-length", body.len().to_string());
    let _ = resp.insert_header("x-request-id", request_id.as_str());
    if h2.write_response_header(Box::new(resp), false).is_ok() {
        let _ = h2.write_body(bytes::Bytes::from(body), true).await;
    }
}

/// Reads one whole request head (and whatever came with it), within the limits.
async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    first: bool,
    shared: &Shared,
    shutdown: &ShutdownWatch,
) -> Result<(), NoHead> {
    let limits = &shared.limits;
    let mut scanner = HeadScanner::new(limits.max_header_bytes, limits.max_headers);
    let deadline = if first {
        tokio::time::Instant::now() + limits.header_read_timeout
    } else {
        // Idle until the next request's first byte, at most keepalive_timeout; the head's
        // own deadline starts then.
        let mut closing = shutdown.clone();
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = tokio::time::timeout(limits.keepalive_timeout, stream.read_buf(buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Gone),
                Ok(Ok(n)) => n,
                Err(_) => return Err(NoHead::Idle),
            },
            _ = closing.wait_for(|down| *down) => return Err(NoHead::Idle),
        };
        debug_assert!(n > 0);
        tokio::time::Instant::now() + limits.header_read_timeout
    };
    loop {
        match scanner.scan(buf) {
            Scan::Complete(_) => return Ok(()),
            Scan::TooLarge => return Err(NoHead::TooLarge("header_bytes")),
            Scan::TooManyFields => return Err(NoHead::TooLarge("header_count")),
            Scan::Incomplete => {}
        }
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(NoHead::Gone),
            Ok(Ok(_)) => {}
            Err(_) => return Err(NoHead::Slow),
        }
    }
}

/// Answers `431` to a head over the limits, then closes without resetting the connection.
async fn too_large(stream: &mut Stream, limit: &'static str, shared: &Shared) {
    let request_id = crate::proxy::request_id::generate();
    let body = format!(
        r#"{{"error":"request_header_fields_too_large","message":"the request head is over the {} limit","request_id":"{request_id}"}}"#,
        match limit {
            "header_count" => "server.max_headers",
            _ => "server.max_header_bytes",
        }
    );
    let reply = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         content-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\
         x-request-id: {request_id}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tracing::warn!(request_id = %request_id, limit, "request head refused with 431");
    shared.metrics.request("-", 431);
    if stream.write_all(reply.as_bytes()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = pingora::protocols::Shutdown::shutdown(&mut **stream).await;
    // Read what the client still sends, so that closing with unread data does not reset the
    // connection before the client has read the 431.
    let mut sink = [0u8; 4096];
    let mut read = 0usize;
    let linger = tokio::time::Instant::now() + LINGER;
    while read < LINGER_BYTES {
        match tokio::time::timeout_at(linger, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => break,
        }
    }
}
