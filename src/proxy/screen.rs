//! The first check of every request, before routing and before any session is read.

use http::{HeaderMap, Method, Version};

use crate::reply::Fault;
use crate::target::{self, Target};

/// Refuses what no route may see, before routing: `TRACE` (it would echo the request,
/// cookies included, back to a script), an HTTP/1.1 request without `Host` (RFC 9112 §3.2),
/// and a request target that is not safe to route on ([`target::check`]).
pub(crate) fn screen<'r>(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    raw_target: &[u8],
    uri_path: &'r str,
    max_cookie_bytes: usize,
    request_id: &str,
) -> Result<Target<'r>, Fault> {
    if method == Method::TRACE {
        return Err(Fault::MethodNotAllowed);
    }
    let cookie_bytes: usize = headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.len())
        .sum();
    if cookie_bytes > max_cookie_bytes {
        tracing::info!(
            request_id,
            cookie_bytes,
            "Cookie header over server.max_cookie_bytes"
        );
        return Err(Fault::CookieTooLarge);
    }
    if version == Version::HTTP_11 && !headers.contains_key(http::header::HOST) {
        tracing::info!(request_id, "HTTP/1.1 request without Host");
        return Err(Fault::BadRequest);
    }
    target::check(raw_target, uri_path).map_err(|e| {
        tracing::info!(request_id, reason = %e, "request target refused");
        Fault::BadPath
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_refuses_trace_hostless_http11_and_bad_targets() {
        let mut h = HeaderMap::new();
        let s = |m: &Method, v, h: &HeaderMap, t: &str| {
            screen(m, v, h, t.as_bytes(), t, 12288, "rid").map(|_| ())
        };
        assert_eq!(
            s(&Method::GET, Version::HTTP_11, &h, "/api"),
            Err(Fault::BadRequest)
        );
        assert_eq!(s(&Method::GET, Version::HTTP_10, &h, "/api"), Ok(()));
        h.insert("host", "app".parse().unwrap());
        assert_eq!(s(&Method::GET, Version::HTTP_11, &h, "/api"), Ok(()));
        assert_eq!(
            s(&Method::TRACE, Version::HTTP_11, &h, "/api"),
            Err(Fault::MethodNotAllowed)
        );
        assert_eq!(
            s(&Method::GET, Version::HTTP_11, &h, "//api/admin"),
            Err(Fault::BadPath)
        );
    }
}
