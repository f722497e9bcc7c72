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
