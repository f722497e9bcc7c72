//! The front door: tollgate's own accept loop and request-head reading, in front of Pingora's
//! HTTP handling (`HttpServerApp::process_new_http`).
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
//! One job per file, and imports between them run one way (this file only declares them):
//! [`door`] is the service Pingora runs; [`handover`] binds the listening sockets and takes
//! them over at a graceful upgrade; [`shared`] holds what a listener's connections share;
//! [`listen`] accepts and starts each connection; [`serve`] reads HTTP/1 request heads and
//! hands them to Pingora; [`h2`] serves HTTP/2 streams; [`drain`] closes a listener at
//! shutdown; [`head`] scans heads against the limits; [`pace`] watches writes; [`coalesce`]
//! buffers HTTP/1 writes; [`stream`] passes Pingora's stream traits through the wrappers;
//! [`refuse`] writes the `431`s, rendered from the one [`crate::reply::Fault`] table.

mod coalesce;
mod door;
mod drain;
mod h2;
mod handover;
pub(crate) mod head;
mod listen;
mod pace;
mod refuse;
mod serve;
mod shared;
mod stream;

pub(crate) use door::FrontDoor;
pub(crate) use handover::{bind, Listener};
