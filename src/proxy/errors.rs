//! The one place where a refusal or failure becomes an HTTP response.
//!
//! Every early answer tollgate gives (401, 403, 404, 502, 504, …) is a [`Reject`]; its status
//! code, its stable `error` code for the SPA, and its short JSON body are defined here and
//! nowhere else. Bodies carry the request id, so a user's bug report leads to our log line,
//! and never anything from the session.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorSource, ErrorType};
use serde::Serialize;

use super::csrf::CsrfError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// No route matches the path.
    NotFound,
    /// The path has dot segments or is otherwise unusable for routing.
    BadPath,
    /// `auth = required` and no session (missing, invalid, expired).
    Unauthenticated,
    /// The provider refused to refresh the session (revoked, expired, reused refresh token).
    SessionExpired,
    /// The access token needs a refresh and the provider cannot be reached.
    ProviderUnavailable,
    Csrf(CsrfError),
    MethodNotAllowed,
    UpstreamUnavailable,
    UpstreamTimeout,
    BadRequest,
    Internal,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login: Option<&'a str>,
    request_id: &'a str,
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::NotFound => 404,
            Reject::BadPath | Reject::BadRequest => 400,
            Reject::Unauthenticated | Reject::SessionExpired => 401,
            Reject::ProviderUnavailable => 503,
            Reject::Csrf(_) => 403,
            Reject::MethodNotAllowed => 405,
            Reject::UpstreamUnavailable => 502,
            Reject::UpstreamTimeout => 504,
            Reject::Internal => 500,
        }
    }

    /// The stable machine-readable code in the body's `error` field.
    pub fn code(self) -> &'static str {
        match self {
            Reject::NotFound => "not_found",
            Reject::BadPath => "bad_path",
            Reject::BadRequest => "bad_request",
            Reject::Unauthenticated => "unauthenticated",
            Reject::SessionExpired => "session_expired",
            Reject::ProviderUnavailable => "provider_unavailable",
            Reject::Csrf(CsrfError::MissingHeader) => "csrf_header_missing",
            Reject::Csrf(CsrfError::ForeignOrigin) => "origin_not_allowed",
            Reject::MethodNotAllowed => "method_not_allowed",
            Reject::UpstreamUnavailable => "upstream_unavailable",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::Internal => "internal_error",
        }
    }

    fn message(self) -> Option<&'static str> {
        Some(match self {
            Reject::Csrf(CsrfError::MissingHeader) => {
                "authenticated requests must carry the CSRF header (x-csrf: 1 by default)"
            }
            Reject::Csrf(CsrfError::ForeignOrigin) => "requests from this Origin are not allowed",
            Reject::UpstreamUnavailable => "the upstream could not be reached",
            Reject::UpstreamTimeout => "the upstream did not answer in time",
            Reject::ProviderUnavailable => {
                "the identity provider cannot be reached to refresh the session; retry shortly"
            }
            _ => return None,
        })
    }

    /// The JSON body for this refusal.
    pub fn body(self, request_id: &str) -> Bytes {
        let body = Body {
            error: self.code(),
            message: self.message(),
            login: matches!(self, Reject::Unauthenticated | Reject::SessionExpired)
                .then_some("/login"),
            request_id,
        };
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .unwrap_or_else(|_| Bytes::from_static(b"{\"error\":\"internal_error\"}"))
    }

    /// The complete response header for this refusal (the body goes separately).
    pub fn response(self, request_id: &str, body_len: usize) -> pingora::Result<ResponseHeader> {
        json_response_header(self.status(), request_id, body_len)
    }

    /// Classifies a proxying failure reported by Pingora.
    pub fn from_proxy_error(e: &Error) -> Option<Reject> {
        use ErrorType::*;
        match e.etype() {
            HTTPStatus(code) if *code >= 500 => Some(Reject::UpstreamUnavailable),
            HTTPStatus(_) => Some(Reject::BadRequest),
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
                Some(match e.esource() {
                    ErrorSource::Downstream => return None,
                    _ => Reject::UpstreamTimeout,
                })
            }
            _ => match e.esource() {
                ErrorSource::Upstream => Some(Reject::UpstreamUnavailable),
                ErrorSource::Downstream => match e.etype() {
                    // The client is gone: nobody to answer.
                    WriteError | ReadError | ConnectionClosed => None,
                    _ => Some(Reject::BadRequest),
                },
                ErrorSource::Internal | ErrorSource::Unset => Some(Reject::Internal),
            },
        }
    }
}

/// A JSON response header with the headers every tollgate-made response carries.
pub fn json_response_header(
    status: u16,
    request_id: &str,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(5))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body_len.to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header(super::request_id::HEADER, request_id)?;
    if status == 503 {
        // Every 503 tollgate makes is transient (provider metadata loading or unreachable).
        resp.insert_header("retry-after", "5")?;
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_body_has_login_hint() {
        let body = Reject::Unauthenticated.body("rid");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "unauthenticated");
        assert_eq!(v["login"], "/login");
        assert_eq!(v["request_id"], "rid");
        assert_eq!(Reject::Unauthenticated.status(), 401);
    }

    #[test]
    fn proxy_errors_map_to_gateway_codes() {
        let e = Error::new_up(ErrorType::ConnectRefused);
        assert_eq!(
            Reject::from_proxy_error(&e),
            Some(Reject::UpstreamUnavailable)
        );
        let e = Error::new_up(ErrorType::ReadTimedout);
        assert_eq!(Reject::from_proxy_error(&e), Some(Reject::UpstreamTimeout));
        let e = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(Reject::from_proxy_error(&e), None);
    }
}
