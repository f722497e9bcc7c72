//! The listening sockets: bound at start, or taken over from the old process at a graceful
//! upgrade (and handed over to the new one), kept apart from the service that uses them so
//! that the handover can be tested on its own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pingora::listeners::tls::Acceptor;
use pingora::server::{ExecutionPhase, ListenFds};
use tokio::net::TcpListener;

use super::shared::Shared;

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

/// The listening socket of `l`: bound at build time (then registered among the sockets a
/// graceful upgrade hands over), or taken from those the old process handed over, or, for
/// an address the old process did not have, bound now. A socket enters the table only
/// once it is in use here, and an inherited one that cannot be used is left open (the
/// table keeps its number, which must not come to name another file).
pub(crate) fn listening_socket(
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

/// Closes the sockets the old process had for addresses this config no longer names
/// (`claimed`): nobody would accept on them, and the kernel would keep completing handshakes
/// there.
pub(crate) fn close_unclaimed(fds: &ListenFds, claimed: &[String]) {
    let keep: std::collections::HashSet<String> = claimed.iter().cloned().collect();
    for addr in fds.lock().close_unclaimed(&keep) {
        tracing::info!(
            addr,
            "closed a socket taken over for an address no longer configured"
        );
    }
}

/// Whether a process waits for the listening sockets at `path`: a Unix socket owned by this
/// user. Pingora announces the handover before it tries to send them, and sends them even to
/// nobody; only then are the sockets truly the new process's.
pub(crate) fn upgrade_waiting(path: &Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::symlink_metadata(path).is_ok_and(|m| {
        // SAFETY: geteuid cannot fail.
        m.file_type().is_socket() && m.uid() == unsafe { libc::geteuid() }
    })
}

/// Follows Pingora's execution `phases` until the listening sockets go to a new process
/// waiting at `upgrade_sock`: from then on this process drains (its connections close after
/// their current request) and leaves the sockets to the new one at shutdown.
pub(crate) async fn follow_upgrade(
    mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    shared: Arc<Shared>,
    upgrade_sock: std::path::PathBuf,
) {
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
}
