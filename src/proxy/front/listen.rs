//! Accepting: a connection is taken from the listening socket only with a free slot
//! (`max_connections`), then served on a task of its own — TLS handshake within
//! `header_read_timeout`, then HTTP/1 ([`super::serve`]) or HTTP/2 ([`super::h2`]) by ALPN,
//! every byte written through [`Paced`] (slow readers) — and its slot given back when it ends.

use std::net::SocketAddr;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::listeners::ALPN;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest, Ssl};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use super::coalesce::Coalesced;
use super::h2::serve_h2;
use super::pace::Paced;
use super::serve::serve;
use super::shared::Door;
use crate::ops::metrics::Metrics;

/// Accepts until shutdown (then the listener is drained, [`super::drain`]).
pub(super) async fn accept_loop<A>(listener: &TcpListener, door: &Door<A>)
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
}

pub(super) async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
        // Out of descriptors: accept would fail again at once; let connections close first.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn spawn_connection<A>(
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
