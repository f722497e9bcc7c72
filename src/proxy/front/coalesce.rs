//! A write buffer between Pingora's HTTP/1 session and the client connection.
//!
//! Pingora's own listener gives every accepted stream a small write buffer (1,460 bytes), so a
//! response's head and a small body leave in one `sendto`. The front door accepts connections
//! itself, and Pingora 0.9 offers no public way to give a stream that buffer
//! (`Stream::set_buffer` is crate-private): without this wrapper each response cost a system
//! call more than bare Pingora's (3 `sendto` a request against 2; strace, RESULTS.md). Pingora
//! flushes where its buffered streams need it (after a head without `Content-Length`, at the
//! end of a body, before an upgrade), and [`Shutdown`] flushes before closing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};

/// Pingora's `DEFAULT_L4_WRITE_BUFFER_SIZE`: one Ethernet segment's payload.
const WRITE_BUFFER: usize = 1460;

#[derive(Debug)]
pub(super) struct Coalesced<S> {
    inner: BufWriter<S>,
}

impl<S: AsyncRead + AsyncWrite> Coalesced<S> {
    pub(super) fn new(stream: S) -> Self {
        Coalesced {
            inner: BufWriter::with_capacity(WRITE_BUFFER, stream),
        }
    }

    fn get(&self) -> &S {
        self.inner.get_ref()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // BufWriter flushes before it shuts the stream down.
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl<S> Shutdown for Coalesced<S>
where
    S: Shutdown + AsyncRead + AsyncWrite + Unpin + Send,
{
    async fn shutdown(&mut self) {
        let _ = self.inner.flush().await;
        self.inner.get_mut().shutdown().await;
    }
}

impl<S: UniqueID + AsyncRead + AsyncWrite> UniqueID for Coalesced<S> {
    fn id(&self) -> UniqueIDType {
        self.get().id()
    }
}

impl<S: Ssl + AsyncRead + AsyncWrite> Ssl for Coalesced<S> {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.get().get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.get().get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.get().selected_alpn_proto()
    }
}

impl<S: GetTimingDigest + AsyncRead + AsyncWrite> GetTimingDigest for Coalesced<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.get().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.get().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.get().get_write_pending_time()
    }
}

impl<S: GetProxyDigest + AsyncRead + AsyncWrite> GetProxyDigest for Coalesced<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.get().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().set_proxy_digest(digest);
    }
}

impl<S: GetSocketDigest + AsyncRead + AsyncWrite> GetSocketDigest for Coalesced<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.get().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest);
    }
}

#[async_trait]
impl<S> Peek for Coalesced<S>
where
    S: Peek + AsyncRead + AsyncWrite + Send,
{
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.get_mut().try_peek(buf).await
    }
}
