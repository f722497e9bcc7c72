//! The facts of a request that tollgate's decisions read, without Pingora types.
//!
//! The decision core ([`crate::proxy::gate`]) and the endpoints (`/login`, `/callback`,
//! `/logout`, `/session`) take a [`Facts`] instead of a Pingora `Session`, so a unit test can
//! build one from a method, a header map and a clock, and the same code runs on the hot path
//! with everything borrowed from the request Pingora parsed.

use http::header::{ACCEPT, COOKIE, UPGRADE};
use http::{HeaderMap, Method};

/// One request, as tollgate's decisions see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'r> {
    pub(crate) method: &'r Method,
    pub(crate) query: Option<&'r str>,
    pub(crate) headers: &'r HeaderMap,
    /// The request body, read only for the endpoints that take one.
    pub(crate) body: Option<&'r [u8]>,
    pub(crate) request_id: &'r str,
    /// Seconds since the Unix epoch.
    pub(crate) now: u64,
    /// The client's address, when known (a stored session lists its login's).
    pub(crate) client: Option<std::net::IpAddr>,
}

impl<'r> Facts<'r> {
    /// The `Cookie` header values, as text (HTTP/2 may send several).
    pub(crate) fn cookie_headers(&self) -> impl Iterator<Item = &'r str> {
        self.headers
            .get_all(COOKIE)
            .into_iter()
            // UTF-8, not `to_str`'s visible ASCII: checked a word at a time (the session makes
            // this field a few KB), and another cookie's non-ASCII value does not hide the
            // session in the same field.
            .filter_map(|v| std::str::from_utf8(v.as_bytes()).ok())
    }

    pub(crate) fn accept(&self) -> Option<&'r str> {
        self.headers.get(ACCEPT).and_then(|v| v.to_str().ok())
    }
}

/// Whether `method` and `headers` make a WebSocket handshake.
pub(crate) fn is_websocket(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::GET
        && headers
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A `Host` value as a bare host name: lowercase, without its port (IPv6 literals keep their
/// brackets).
pub(crate) fn host_without_port(host: &str) -> String {
    let host = host.trim();
    let bare = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    bare.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_fields_are_read_as_utf8_and_skipped_when_not() {
        let mut headers = HeaderMap::new();
        let utf8 = http::HeaderValue::from_bytes("app=caf\u{e9}; tg=sealed".as_bytes()).unwrap();
        headers.append(COOKIE, utf8);
        // Latin-1: not UTF-8, so not text.
        headers.append(COOKIE, http::HeaderValue::from_bytes(b"x=caf\xe9").unwrap());
        headers.append(COOKIE, http::HeaderValue::from_static("other=1"));
        let facts = Facts {
            method: &Method::GET,
            query: None,
            headers: &headers,
            body: None,
            request_id: "r",
            now: 0,
            client: None,
        };
        let fields: Vec<&str> = facts.cookie_headers().collect();
        assert_eq!(fields, ["app=caf\u{e9}; tg=sealed", "other=1"]);
        let found = crate::session::cookie::SessionCookies::scan("tg", facts.cookie_headers());
        assert_eq!(found.value().unwrap(), "sealed");
    }
}
