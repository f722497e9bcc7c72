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
use std::task::{Context, Poll};

use async_trait::async_trait;
use pingora::protocols::Shutdown;
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

    fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    fn get_mut(&mut self) -> &mut S {
        self.inner.get_mut()
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

super::stream::delegate_stream_traits!(Coalesced);
