//! Calls to a provider over HTTP: its client (timeouts, no redirects) and reading a
//! response body within `[oidc] max_response_bytes`, for discovery, JWKS and the token client.

use std::time::Duration;

#[cfg(any(test, feature = "fuzzing"))]
use crate::config::Config;
use crate::config::OidcConfig;

/// The default provider's client (tests and the fuzz harness).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn http_client(config: &Config) -> Result<reqwest::Client, reqwest::Error> {
    http_client_for(&config.oidc)
}

/// The HTTP client for every request to provider `p` (shared by its calls: connection reuse;
/// each provider has its own, with its `http_timeout`). Failing to build it (no TLS roots,
/// say) is a startup error: a default client would have no timeouts.
pub(crate) fn http_client_for(p: &OidcConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(p.http_timeout)
        .connect_timeout(p.http_timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A provider response body larger than `[oidc] max_response_bytes`, or one that broke off.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the response is larger than oidc.max_response_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("the response broke off: {0}")]
    Http(#[source] reqwest::Error),
}

impl BodyError {
    pub(crate) fn is_too_large(&self) -> bool {
        matches!(self, BodyError::TooLarge(_))
    }
}

/// Reads a provider's response body, at most `max` bytes: a provider (or whatever answers
/// at its address) cannot make tollgate allocate without bound. The client's `http_timeout`
/// bounds a slow body.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    max: usize,
) -> Result<bytes::Bytes, BodyError> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let expected = resp.content_length().map_or(0, |n| n as usize);
    let mut body = bytes::BytesMut::with_capacity(expected.min(max));
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Http)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod body_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one response per connection: `head` then `body`, on a loopback port.
    async fn serve(head: String, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (head, body) = (head.clone(), body.clone());
                tokio::spawn(async move {
                    let mut req = [0u8; 1024];
                    let _ = s.read(&mut req).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        format!("http://{addr}/")
    }

    async fn get(url: &str, max: usize) -> Result<bytes::Bytes, BodyError> {
        let resp = reqwest::get(url).await.unwrap();
        read_body(resp, max).await
    }

    #[tokio::test]
    async fn provider_bodies_are_read_up_to_the_cap() {
        let big = vec![b'x'; 100_000];
        let with_length = serve(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()),
            big.clone(),
        )
        .await;
        assert!(get(&with_length, 10_000).await.unwrap_err().is_too_large());
        assert_eq!(get(&with_length, 100_000).await.unwrap().len(), 100_000);

        // Chunked, so the size is known only while reading.
        let mut chunked = Vec::new();
        for part in big.chunks(8192) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let without_length = serve(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
            chunked,
        )
        .await;
        assert!(get(&without_length, 10_000)
            .await
            .unwrap_err()
            .is_too_large());
        assert_eq!(get(&without_length, 200_000).await.unwrap().len(), 100_000);
    }
}
