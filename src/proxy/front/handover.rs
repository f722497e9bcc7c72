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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pingora::server::Fds;
    use tokio::net::TcpStream;

    use super::*;

    const BOUND: Duration = Duration::from_secs(10);

    fn table() -> ListenFds {
        ListenFds::new(Fds::new().into())
    }

    fn loopback() -> (SocketAddr, std::net::TcpListener) {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (socket.local_addr().unwrap(), socket)
    }

    /// Accepts one client on `listener` from a fresh connection to `addr`.
    async fn serves(listener: &TcpListener, addr: SocketAddr) {
        let (client, accepted) = tokio::time::timeout(BOUND, async {
            tokio::join!(TcpStream::connect(addr), listener.accept())
        })
        .await
        .expect("bounded");
        let (client, (accepted, _)) = (client.unwrap(), accepted.unwrap());
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
    }

    #[test]
    fn a_process_waits_only_behind_a_unix_socket_of_this_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        assert!(!upgrade_waiting(&path), "nothing there");
        std::fs::write(&path, b"").unwrap();
        assert!(!upgrade_waiting(&path), "a plain file");
        std::fs::remove_file(&path).unwrap();
        let _waiting = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(upgrade_waiting(&path));
    }

    #[tokio::test]
    async fn a_socket_bound_here_enters_the_table_once_in_use() {
        let (addr, socket) = loopback();
        let fds = table();
        let l = Listener {
            addr,
            socket: Some(socket),
            tls: None,
        };
        let (listener, tls) = listening_socket(l, Some(&fds)).unwrap();
        assert!(tls.is_none());
        assert!(fds.lock().get(&addr.to_string()).is_some());
        serves(&listener, addr).await;
    }

    /// The old process sends its table over a Unix socket in a temporary directory (Pingora's
    /// own transfer, as at `SIGQUIT`); the new one takes the socket over and accepts on it,
    /// after the old one has closed its own descriptor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sockets_handed_over_a_unix_socket_are_taken_over_and_serve() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upgrade.sock");
        let path_str = path.to_str().unwrap().to_string();
        let (addr, socket) = loopback();
        let old_fds = table();
        let (old_listener, _) = listening_socket(
            Listener {
                addr,
                socket: Some(socket),
                tls: None,
            },
            Some(&old_fds),
        )
        .unwrap();
        // The new process waits for the sockets (Pingora retries its accept once a second).
        let (got, received) = std::sync::mpsc::channel();
        let receiver_path = path_str.clone();
        std::thread::spawn(move || {
            let mut fds = Fds::new();
            let _ = got.send(fds.get_from_sock(receiver_path.as_str()).map(|()| fds));
        });
        let waited = std::time::Instant::now();
        while !upgrade_waiting(&path) {
            assert!(waited.elapsed() < BOUND, "the new process never listened");
            std::thread::sleep(Duration::from_millis(5));
        }
        old_fds.lock().send_to_sock(path_str.as_str()).unwrap();
        let new_fds = received.recv_timeout(BOUND).unwrap().unwrap();
        let new_fds: ListenFds = ListenFds::new(new_fds.into());
        drop(old_listener);

        let (listener, _) = listening_socket(
            Listener {
                addr,
                socket: None,
                tls: None,
            },
            Some(&new_fds),
        )
        .expect("taken over");
        // The table keeps the number for the next upgrade.
        assert!(new_fds.lock().get(&addr.to_string()).is_some());
        serves(&listener, addr).await;
    }

    #[tokio::test]
    async fn an_address_the_old_process_did_not_hand_over_is_bound_anew() {
        let (addr, socket) = loopback();
        // Free the port for the new bind (nothing else on loopback takes it meanwhile).
        drop(socket);
        let fds = table();
        let l = Listener {
            addr,
            socket: None,
            tls: None,
        };
        let (listener, _) = listening_socket(l, Some(&fds)).expect("bound anew");
        assert!(fds.lock().get(&addr.to_string()).is_some());
        serves(&listener, addr).await;
    }

    #[test]
    fn sockets_for_addresses_no_longer_configured_are_closed() {
        let (kept, kept_socket) = loopback();
        let (gone, gone_socket) = loopback();
        let fds = table();
        use std::os::fd::IntoRawFd;
        fds.lock().add(kept.to_string(), kept_socket.into_raw_fd());
        fds.lock().add(gone.to_string(), gone_socket.into_raw_fd());
        close_unclaimed(&fds, &[kept.to_string()]);
        assert!(fds.lock().get(&kept.to_string()).is_some());
        assert!(fds.lock().get(&gone.to_string()).is_none());
        // Closed: nothing listens there any more.
        assert!(std::net::TcpStream::connect(gone).is_err());
    }
}
