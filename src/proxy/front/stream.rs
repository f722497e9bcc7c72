//! What a wrapper around a client stream must pass through for Pingora to take it as a
//! `Stream` (its `IO` trait): the connection's id, TLS, timing, proxy and socket digests, and
//! peeking. The front door's wrappers ([`super::coalesce`], [`super::pace`]) change only how
//! bytes are written, so each passes all of these to the stream it wraps (`get_ref`/`get_mut`)
//! through this one macro, rather than a copy of the same eight impls each.

macro_rules! delegate_stream_traits {
    ($wrapper:ident) => {
        impl<S> pingora::protocols::UniqueID for $wrapper<S>
        where
            S: pingora::protocols::UniqueID + tokio::io::AsyncRead + tokio::io::AsyncWrite,
        {
            fn id(&self) -> pingora::protocols::UniqueIDType {
                self.get_ref().id()
            }
        }

        impl<S> pingora::protocols::Ssl for $wrapper<S>
        where
            S: pingora::protocols::Ssl + tokio::io::AsyncRead + tokio::io::AsyncWrite,
        {
            fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
                self.get_ref().get_ssl()
            }

            fn get_ssl_digest(&self) -> Option<std::sync::Arc<pingora::protocols::tls::SslDigest>> {
                self.get_ref().get_ssl_digest()
            }

            fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
                self.get_ref().selected_alpn_proto()
            }
        }

        impl<S> pingora::protocols::GetTimingDigest for $wrapper<S>
        where
            S: pingora::protocols::GetTimingDigest + tokio::io::AsyncRead + tokio::io::AsyncWrite,
        {
            fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
                self.get_ref().get_timing_digest()
            }

            fn get_read_pending_time(&self) -> std::time::Duration {
                self.get_ref().get_read_pending_time()
            }

            fn get_write_pending_time(&self) -> std::time::Duration {
                self.get_ref().get_write_pending_time()
            }
        }

        impl<S> pingora::protocols::GetProxyDigest for $wrapper<S>
        where
            S: pingora::protocols::GetProxyDigest + tokio::io::AsyncRead + tokio::io::AsyncWrite,
        {
            fn get_proxy_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::raw_connect::ProxyDigest>> {
                self.get_ref().get_proxy_digest()
            }

            fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
                self.get_mut().set_proxy_digest(digest);
            }
        }

        impl<S> pingora::protocols::GetSocketDigest for $wrapper<S>
        where
            S: pingora::protocols::GetSocketDigest + tokio::io::AsyncRead + tokio::io::AsyncWrite,
        {
            fn get_socket_digest(
                &self,
            ) -> Option<std::sync::Arc<pingora::protocols::SocketDigest>> {
                self.get_ref().get_socket_digest()
            }

            fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
                self.get_mut().set_socket_digest(digest);
            }
        }

        #[async_trait::async_trait]
        impl<S> pingora::protocols::Peek for $wrapper<S>
        where
            S: pingora::protocols::Peek + tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
        {
            async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
                self.get_mut().try_peek(buf).await
            }
        }
    };
}

pub(super) use delegate_stream_traits;
