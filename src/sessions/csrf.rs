//! CSRF defence for authenticated requests.
//!
//! tollgate's session rides on a cookie the browser attaches by itself, so a page on another
//! site could make the browser send it. The IETF browser-based-apps BFF pattern answers that
//! with two checks, both done here: the request must carry a custom header (`x-csrf` by
//! default), which a cross-site form or simple request cannot set without a CORS preflight that
//! tollgate never approves; and a present `Origin` must be tollgate's own public origin or one
//! explicitly allowed.
//!
//! A WebSocket handshake is the exception: browsers cannot set custom headers on it, so an
//! authenticated upgrade needs an `Origin` (which browsers always send on one) that is allowed,
//! the defence against Cross-Site WebSocket Hijacking.

use http::header::ORIGIN;
use http::{HeaderMap, HeaderName, Method};

use crate::request::is_websocket;

use crate::config::CsrfConfig;
use crate::reply::CsrfError;

#[derive(Debug)]
pub(crate) struct CsrfPolicy {
    header: HeaderName,
    origins: Vec<String>,
}

impl CsrfPolicy {
    pub(crate) fn new(config: &CsrfConfig, public_origin: &str) -> Self {
        let mut origins = vec![public_origin.to_string()];
        origins.extend(config.allowed_origins.iter().cloned());
        CsrfPolicy {
            header: config.header.clone(),
            origins,
        }
    }

    /// Accepts `origins` too: the origins of the providers' `hosts`, where the SPA is served
    /// as well and its sessions live.
    pub(crate) fn with_origins(mut self, origins: impl IntoIterator<Item = String>) -> Self {
        self.origins.extend(origins);
        self
    }

    /// Checks an authenticated request. Without the header, only a WebSocket handshake
    /// (asked only then, off the common path) may pass, and only with an `Origin`.
    pub(crate) fn check(&self, headers: &HeaderMap, method: &Method) -> Result<(), CsrfError> {
        let has_header = headers
            .get(&self.header)
            .is_some_and(|v| !v.as_bytes().iter().all(u8::is_ascii_whitespace));
        if !has_header {
            if !is_websocket(method, headers) {
                return Err(CsrfError::MissingHeader);
            }
            if headers.get(ORIGIN).is_none() {
                return Err(CsrfError::MissingOrigin);
            }
        }
        for origin in headers.get_all(ORIGIN) {
            let ok = origin.to_str().is_ok_and(|o| {
                self.origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(o))
            });
            if !ok {
                return Err(CsrfError::ForeignOrigin);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CsrfPolicy {
        CsrfPolicy::new(
            &CsrfConfig {
                header: HeaderName::from_static("x-csrf"),
                allowed_origins: vec!["https://admin.example.com".into()],
            },
            "https://app.example.com",
        )
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn header_and_origin_rules() {
        let p = policy();
        assert_eq!(
            p.check(&headers(&[]), &Method::POST),
            Err(CsrfError::MissingHeader)
        );
        assert_eq!(
            p.check(&headers(&[("x-csrf", " ")]), &Method::POST),
            Err(CsrfError::MissingHeader)
        );
        assert_eq!(p.check(&headers(&[("x-csrf", "1")]), &Method::POST), Ok(()));
        assert_eq!(
            p.check(
                &headers(&[("x-csrf", "1"), ("origin", "https://app.example.com")]),
                &Method::POST
            ),
            Ok(())
        );
        assert_eq!(
            p.check(
                &headers(&[("x-csrf", "1"), ("origin", "https://admin.example.com")]),
                &Method::POST
            ),
            Ok(())
        );
        for bad in [
            "https://evil.example",
            "null",
            "http://app.example.com",
            "https://app.example.com.evil.example",
        ] {
            let mut h = headers(&[("x-csrf", "1")]);
            h.insert(ORIGIN, bad.parse().unwrap());
            assert_eq!(
                p.check(&h, &Method::POST),
                Err(CsrfError::ForeignOrigin),
                "{bad}"
            );
            h.insert("upgrade", "websocket".parse().unwrap());
            assert_eq!(
                p.check(&h, &Method::GET),
                Err(CsrfError::ForeignOrigin),
                "{bad}"
            );
        }
    }

    #[test]
    fn websocket_handshakes_need_an_allowed_origin_not_the_header() {
        let p = policy();
        let ws = |extra: &[(&'static str, &'static str)]| {
            let mut h = headers(extra);
            h.insert("upgrade", "websocket".parse().unwrap());
            h
        };
        assert_eq!(
            p.check(&ws(&[]), &Method::GET),
            Err(CsrfError::MissingOrigin)
        );
        assert_eq!(
            p.check(&ws(&[("origin", "https://app.example.com")]), &Method::GET),
            Ok(())
        );
        assert_eq!(
            p.check(&ws(&[("origin", "https://evil.example")]), &Method::GET),
            Err(CsrfError::ForeignOrigin)
        );
        // Not a handshake: the header is still needed, whatever the Origin.
        assert_eq!(
            p.check(
                &headers(&[("origin", "https://app.example.com")]),
                &Method::GET
            ),
            Err(CsrfError::MissingHeader)
        );
        assert_eq!(
            p.check(&ws(&[("origin", "https://app.example.com")]), &Method::POST),
            Err(CsrfError::MissingHeader)
        );
    }
}
