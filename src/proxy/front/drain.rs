//! Shutdown of one listener: new handshakes are refused first (on Linux a socket filter drops
//! SYNs on the listening socket), then everything the kernel had already accepted is taken
//! from the queue and served with `Connection: close`, then the listener closes. After a
//! graceful upgrade's handover the socket is the new process's: it is left as it is.

use std::sync::atomic::Ordering;
use std::time::Duration;

use pingora::apps::HttpServerApp;
use tokio::net::TcpListener;

use super::listen::{accept_failed, spawn_connection};
use super::shared::Door;

/// How long the drain waits for handshakes already under way to reach the accept queue
/// after new ones are refused (a few round trips on any network tollgate sits in).
const DRAIN_QUIET: Duration = Duration::from_millis(200);
/// The longest the accept queue is drained at shutdown.
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// Shutdown: no new handshakes, serve what the kernel already accepted, then close.
pub(super) async fn drain<A>(listener: TcpListener, door: &Door<A>)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::ops::metrics::MetricsApp;
    use crate::proxy::front::shared::testing;

    const BOUND: Duration = Duration::from_secs(10);

    /// A shutting-down listener's door on loopback, serving `/metrics`.
    async fn door() -> (TcpListener, Door<MetricsApp>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared = testing::shared(testing::limits());
        let (down, shutdown) = tokio::sync::watch::channel(true);
        // The server is going away: the sender may go with it.
        drop(down);
        let door = Door {
            tls: None,
            app: Arc::new(MetricsApp {
                metrics: shared.metrics.clone(),
            }),
            shared,
            shutdown,
        };
        (listener, door)
    }

    /// Runs on the current-thread runtime: `drain` does everything up to its first accept
    /// before another task runs, so once draining is seen the SYN filter is on (Linux only).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn drain_says_so_refuses_new_handshakes_serves_the_queue_then_closes() {
        let (listener, door) = door().await;
        let addr = listener.local_addr().unwrap();
        // In the kernel's accept queue before the drain, its request sent.
        let mut queued = TcpStream::connect(addr).await.unwrap();
        queued
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let shared = door.shared.clone();
        let mut started = shared.drain_started.subscribe();
        let draining = {
            let door = door.clone();
            tokio::spawn(async move { drain(listener, &door).await })
        };
        tokio::time::timeout(BOUND, started.wait_for(|d| *d))
            .await
            .expect("bounded")
            .unwrap();
        // First: connections close after their request, and /readyz says so.
        assert!(shared.draining.load(Ordering::Acquire));
        let (status, body) = shared.readiness.readyz();
        assert_eq!(status, 503);
        assert!(String::from_utf8_lossy(&body).contains("draining"));
        // Then no new handshake completes (the SYN is dropped, the client would retry).
        let late = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
        assert!(
            !matches!(late, Ok(Ok(_))),
            "a new connection got through: {late:?}"
        );
        // The queued one is served, and closed after its answer.
        let mut answer = Vec::new();
        tokio::time::timeout(BOUND, queued.read_to_end(&mut answer))
            .await
            .expect("bounded")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        // Then the listener closes, within DRAIN_MAX, and new clients are refused.
        tokio::time::timeout(DRAIN_MAX + BOUND, draining)
            .await
            .expect("bounded")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn after_a_handover_the_socket_and_its_queue_are_left_to_the_new_process() {
        let (listener, door) = door().await;
        let addr = listener.local_addr().unwrap();
        // The new process holds the same socket.
        let std = listener.into_std().unwrap();
        let theirs = std.try_clone().unwrap();
        let listener = TcpListener::from_std(std).unwrap();
        door.shared.handed_over.store(true, Ordering::Release);
        let queued = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(BOUND, drain(listener, &door))
            .await
            .expect("bounded");
        assert!(door.shared.draining.load(Ordering::Acquire));
        // Not draining for the load balancer: the new process is ready on the same address.
        let (_, body) = door.shared.readiness.readyz();
        assert!(!String::from_utf8_lossy(&body).contains("draining"));
        // No filter, nothing taken from the queue: the new process accepts both.
        let theirs = TcpListener::from_std(theirs).unwrap();
        let (first, _) = tokio::time::timeout(BOUND, theirs.accept())
            .await
            .expect("bounded")
            .unwrap();
        assert_eq!(first.peer_addr().unwrap(), queued.local_addr().unwrap());
        let later = tokio::time::timeout(BOUND, TcpStream::connect(addr))
            .await
            .expect("bounded");
        assert!(later.is_ok(), "{later:?}");
    }
}
