//! Requests written byte for byte on a TCP connection: HTTP clients normalise request targets
//! and headers before sending, and tests of what tollgate refuses need exactly what was sent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::process::Tollgate;

/// Generous bound so a hang fails the test instead of blocking CI; not a speed assertion.
const HANG: Duration = Duration::from_secs(20);

/// Sends `request` as written on a new connection and reads the response. (Raw TCP, because
/// HTTP clients normalise request targets before sending.)
pub async fn raw_request(tg: &Tollgate, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(tg.addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`.
pub async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await.unwrap();
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&tmp[..n]);
            }
            return (head, buf[end + 4..end + 4 + len].to_vec());
        }
        let n = tokio::time::timeout(HANG, s.read(&mut tmp))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before a response");
        buf.extend_from_slice(&tmp[..n]);
    }
}
