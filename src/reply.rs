//! What tollgate answers itself: one reply type and one error table.
//!
//! Every response tollgate makes without an upstream — a refusal on the hot path, a login page,
//! a redirect, `/session`, `/healthz` — is a [`Reply`]; `proxy::respond` is the one writer that
//! puts it on the wire with the headers every such response carries. Every error is a [`Fault`]
//! and gets its status, its stable `error` code for the SPA and its sentence for people here,
//! and nowhere else (axum's `AppError: IntoResponse` is the model). There is one JSON error
//! shape, `{"error", "message"?, "login"?, "request_id"}`; a person in the login flow gets
//! the same facts as a small HTML page. Bodies carry the request id, so a user's bug report
//! leads to our log line, and never anything from the session.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Serialize;

/// Why a request failed the CSRF checks ([`crate::sessions::csrf`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CsrfError {
    #[error("the CSRF header is missing")]
    MissingHeader,
    #[error("the Origin is not allowed")]
    ForeignOrigin,
    #[error("a WebSocket handshake without Origin")]
    MissingOrigin,
}

/// Which limit a request head is over (`431`, answered by the front door before Pingora
/// parses the head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadLimit {
    /// `server.max_header_bytes` (HTTP/1).
    Bytes,
    /// `server.max_headers` (HTTP/1).
    Fields,
    /// `server.max_headers` over HTTP/2 (each cookie field counted as part of one).
    H2Fields,
}

/// Every error tollgate answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// No route matches the path.
    NotFound,
    /// The request target is unusable or ambiguous for routing ([`crate::target`]).
    BadPath,
    /// A malformed request (an HTTP/1.1 request without `Host`, an unreadable upload).
    BadRequest,
    /// `auth = required` and no session (missing, invalid, expired).
    Unauthenticated,
    /// The provider refused to refresh the session (revoked, expired, reused refresh token).
    SessionExpired,
    /// The provider is needed (refresh, login) and cannot be reached or is not loaded yet.
    ProviderUnavailable,
    /// The provider is not loaded because its discovery document names another issuer than
    /// the configured one (both named: a trailing `/` is the usual difference).
    ProviderIssuerMismatch {
        configured: String,
        discovered: String,
    },
    Csrf(CsrfError),
    MethodNotAllowed,
    UpstreamUnavailable,
    /// The route's upstream pool has no healthy member (`503`, same code as above).
    NoHealthyUpstream,
    UpstreamTimeout,
    Internal,
    /// The provider answered the authorization request with an error (its code, sanitized).
    ProviderError(String),
    /// The callback's query string could not be read.
    CallbackUnreadable,
    /// The callback has no usable `state`.
    InvalidState,
    /// No login cookie opens for the callback's `state` (another browser, or replayed).
    UnknownState,
    /// The login took longer than its cookie lives.
    LoginExpired,
    /// RFC 9207: the callback's `iss` names another issuer.
    IssuerMismatch,
    /// RFC 9207: the provider promises `iss` and the callback lacks it.
    IssuerMissing,
    /// The callback has no `code`.
    MissingCode,
    /// The code was refused as used or expired (`invalid_grant`).
    CodeRejected,
    /// The token endpoint refused the exchange with this (sanitized) error code.
    TokenRefused(String),
    /// The pushed authorization request endpoint refused the login with this (sanitized)
    /// error code.
    ParRefused(String),
    /// The token endpoint could not be reached.
    ProviderUnreachable,
    /// The token response could not be used.
    InvalidTokenResponse,
    /// The token response has no ID token.
    MissingIdToken,
    /// The ID token failed validation; `nonce` says it was the nonce (the browser's fault).
    InvalidIdToken {
        nonce: bool,
    },
    /// The session sealed to more cookies than a browser keeps.
    SessionTooLarge,
    /// A back-channel logout token failed a check.
    InvalidLogoutToken,
    /// A request body over what tollgate reads for its own endpoints.
    PayloadTooLarge,
    /// A request body that did not arrive in time (`body_read_timeout`, or a route's
    /// `read_timeout` for a proxied upload).
    RequestTimeout,
    /// The `Cookie` header, or the session's chunks, over what tollgate accepts.
    CookieTooLarge,
    /// A request head over `max_header_bytes` or `max_headers`.
    HeaderFieldsTooLarge(HeadLimit),
    /// The shared store is needed and cannot be reached.
    StoreUnavailable,
    /// The session's claims do not satisfy the route's `require` rule.
    Forbidden,
    /// The provider will not issue a token for the route's audience (`resource`, `scopes`).
    InsufficientScope,
    /// A DBSC registration or refresh whose proof was refused.
    InvalidDeviceProof,
    /// The session is bound to a device (DBSC) and the request brought no valid proof of it.
    DeviceProofRequired,
    /// The route takes only sessions bound to their device, and this one is not.
    DeviceBindingRequired,
    /// `/login?provider=` names no configured provider (the names, comma-separated).
    UnknownProvider(String),
    /// The route does not take sessions from the session's provider (`providers`).
    WrongProvider,
    /// The route's step-up rule (or the upstream, RFC 9470) asks for a stronger or more
    /// recent login: where to log in, and what to ask for.
    StepUpRequired(Box<StepUpAsk>),
    /// A step-up login came back without the strength or recency it asked for.
    StepUpNotMet,
}

/// What a `step_up_required` answer carries (RFC 9470's parameters, and the login link that
/// asks the provider for them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct StepUpAsk {
    pub(crate) login: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) acr_values: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) max_age: Option<u64>,
}

impl Fault {
    pub(crate) fn status(&self) -> u16 {
        use Fault::*;
        match self {
            NotFound => 404,
            BadPath | BadRequest | InvalidDeviceProof | UnknownProvider(_) => 400,
            Unauthenticated | SessionExpired | DeviceProofRequired | StepUpRequired(_) => 401,
            // The provider cannot be used, as for ProviderUnavailable (until the config or
            // the provider is fixed).
            ProviderUnavailable
            | ProviderIssuerMismatch { .. }
            | StoreUnavailable
            | NoHealthyUpstream => 503,
            Csrf(_)
            | Forbidden
            | InsufficientScope
            | DeviceBindingRequired
            | WrongProvider
            | StepUpNotMet => 403,
            MethodNotAllowed => 405,
            UpstreamUnavailable => 502,
            UpstreamTimeout => 504,
            Internal | SessionTooLarge => 500,
            PayloadTooLarge => 413,
            RequestTimeout => 408,
            CookieTooLarge | HeaderFieldsTooLarge(_) => 431,
            ProviderError(_) | CallbackUnreadable | InvalidState | UnknownState | LoginExpired
            | IssuerMismatch | IssuerMissing | MissingCode | CodeRejected | InvalidLogoutToken => {
                400
            }
            InvalidIdToken { nonce: true } => 400,
            TokenRefused(_)
            | ParRefused(_)
            | ProviderUnreachable
            | InvalidTokenResponse
            | MissingIdToken
            | InvalidIdToken { nonce: false } => 502,
        }
    }

    /// The stable machine-readable code in the body's `error` field: the provider's own
    /// (sanitized) code where it gave one.
    pub(crate) fn code(&self) -> &str {
        match self {
            Fault::ProviderError(code) | Fault::TokenRefused(code) | Fault::ParRefused(code) => {
                code
            }
            other => other.label(),
        }
    }

    /// A sentence for people.
    pub(crate) fn message(&self) -> Option<Cow<'_, str>> {
        use Fault::*;
        Some(Cow::Borrowed(match self {
            Csrf(CsrfError::MissingHeader) => {
                "authenticated requests must carry the CSRF header (x-csrf: 1 by default)"
            }
            Csrf(CsrfError::ForeignOrigin) => "requests from this Origin are not allowed",
            Csrf(CsrfError::MissingOrigin) => "a WebSocket handshake must carry an allowed Origin",
            UpstreamUnavailable => "the upstream could not be reached",
            NoHealthyUpstream => "no upstream of this route is healthy; retry shortly",
            UpstreamTimeout => "the upstream did not answer in time",
            ProviderUnavailable => {
                "the identity provider cannot be reached or is not loaded yet; retry shortly"
            }
            ProviderError(_) => "The identity provider did not complete the sign-in.",
            CallbackUnreadable => "The sign-in response could not be read.",
            InvalidState => "The sign-in response has no valid state.",
            UnknownState => "This sign-in was not started in this browser, or it has expired.",
            LoginExpired => "The sign-in took too long.",
            IssuerMismatch => "The sign-in response came from another issuer.",
            IssuerMissing => "The sign-in response lacks its issuer.",
            MissingCode => "The sign-in response has no code.",
            CodeRejected => {
                "The sign-in could not be completed: the code was already used or has expired."
            }
            TokenRefused(_) => "The identity provider refused to issue tokens.",
            ParRefused(_) => "The identity provider refused the sign-in request.",
            ProviderUnreachable => "The identity provider could not be reached.",
            InvalidTokenResponse => "The identity provider's answer could not be used.",
            MissingIdToken => "The identity provider sent no ID token.",
            InvalidIdToken { .. } => {
                "The identity provider's ID token is not valid for this sign-in."
            }
            SessionTooLarge => "The sign-in could not be completed: the provider's tokens are too large to keep in cookies. (Administrators: set [session] storage = \"store\".)",
            InvalidLogoutToken => "the logout token is not valid",
            PayloadTooLarge => "the request body is too large",
            RequestTimeout => "the request body did not arrive in time",
            CookieTooLarge => {
                "the cookies sent to this site are larger than it accepts; clear them and sign in again"
            }
            HeaderFieldsTooLarge(HeadLimit::Bytes) => {
                "the request head is over the server.max_header_bytes limit"
            }
            HeaderFieldsTooLarge(HeadLimit::Fields) => {
                "the request head is over the server.max_headers limit"
            }
            HeaderFieldsTooLarge(HeadLimit::H2Fields) => {
                "the request has more header fields than server.max_headers"
            }
            StoreUnavailable => "the shared store cannot be reached; retry shortly",
            Forbidden => "this account is not allowed here",
            InsufficientScope => "the identity provider does not grant this session a token for this API",
            DeviceProofRequired => {
                "this session is bound to a device, and the request did not prove it"
            }
            InvalidDeviceProof => "the device's proof was refused",
            DeviceBindingRequired => {
                "this API needs a session bound to its device (a browser with Device Bound Session Credentials)"
            }
            WrongProvider => "this API does not take sessions from this identity provider",
            StepUpRequired(_) => {
                "this API needs a stronger or more recent sign-in; follow the login link"
            }
            StepUpNotMet => {
                "The sign-in did not reach the strength or recency this page asked for."
            }
            UnknownProvider(names) => {
                return Some(Cow::Owned(format!(
                    "unknown provider; the providers are: {names}"
                )))
            }
            ProviderIssuerMismatch {
                configured,
                discovered,
            } => {
                return Some(Cow::Owned(format!(
                    "The identity provider's discovery document names the issuer {discovered:?}, \
                     which does not match the configured issuer {configured:?} (they must be \
                     identical, trailing slash included)."
                )))
            }
            _ => return None,
        }))
    }

    /// Whether the body points the client at `/login`.
    fn login_hint(&self) -> bool {
        !matches!(
            self,
            Fault::NotFound
                | Fault::BadPath
                | Fault::BadRequest
                | Fault::Csrf(_)
                | Fault::MethodNotAllowed
                | Fault::UpstreamUnavailable
                | Fault::NoHealthyUpstream
                | Fault::UpstreamTimeout
                | Fault::Internal
                | Fault::ProviderUnavailable
                | Fault::ProviderIssuerMismatch { .. }
                | Fault::InvalidLogoutToken
                | Fault::PayloadTooLarge
                | Fault::RequestTimeout
                | Fault::HeaderFieldsTooLarge(_)
                | Fault::StoreUnavailable
                | Fault::Forbidden
                | Fault::InsufficientScope
                | Fault::DeviceBindingRequired
                | Fault::InvalidDeviceProof
                | Fault::WrongProvider
                | Fault::UnknownProvider(_)
        )
    }
}

/// How a fault is shown: JSON for programs (the default), HTML for a person in the login flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Html,
}

impl Format {
    /// HTML unless the request prefers JSON (`Accept: application/json` without `text/html`).
    pub(crate) fn for_person(accept: Option<&str>) -> Format {
        if wants_json(accept) {
            Format::Json
        } else {
            Format::Html
        }
    }
}

/// Whether the request prefers JSON (`Accept: application/json`).
pub(crate) fn wants_json(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/json") && !a.contains("text/html"))
}

#[derive(Debug)]
enum Content {
    Empty,
    /// A body with its content type.
    Body(&'static str, Bytes),
    /// A fault, rendered with the request id when written.
    Fault(Fault, Format),
}

/// A response tollgate makes itself.
#[derive(Debug)]
pub(crate) struct Reply {
    status: u16,
    content: Content,
    /// Extra headers (`location`, a page's `content-security-policy`).
    headers: Vec<(&'static str, String)>,
    set_cookies: Vec<String>,
    /// Why tollgate answered itself, for the access log.
    outcome: &'static str,
}

impl From<Fault> for Reply {
    fn from(fault: Fault) -> Reply {
        Reply::fault(fault, Format::Json)
    }
}

impl Reply {
    pub(crate) fn fault(fault: Fault, format: Format) -> Reply {
        Reply {
            status: fault.status(),
            content: Content::Fault(fault, format),
            headers: Vec::new(),
            set_cookies: Vec::new(),
            outcome: "refused",
        }
    }

    /// A JSON body.
    pub(crate) fn json(status: u16, value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::body(status, "application/json", Bytes::from(body)),
            Err(_) => Reply::from(Fault::Internal),
        }
    }

    pub(crate) fn body(status: u16, content_type: &'static str, body: Bytes) -> Reply {
        Reply {
            status,
            content: Content::Body(content_type, body),
            headers: Vec::new(),
            set_cookies: Vec::new(),
            outcome: "builtin",
        }
    }

    /// No body: what a forward-auth answer carries is in its headers.
    pub(crate) fn empty(status: u16) -> Reply {
        Reply {
            status,
            content: Content::Empty,
            headers: Vec::new(),
            set_cookies: Vec::new(),
            outcome: "builtin",
        }
    }

    /// A redirect (`302`, or `303` after a POST).
    pub(crate) fn redirect(status: u16, location: impl Into<String>) -> Reply {
        Reply {
            status,
            content: Content::Empty,
            headers: vec![("location", location.into())],
            set_cookies: Vec::new(),
            outcome: "redirect",
        }
    }

    pub(crate) fn with_cookies(mut self, lines: impl IntoIterator<Item = String>) -> Reply {
        self.set_cookies.extend(lines);
        self
    }

    /// The same reply with another status (a fault's body under the status a protocol asks).
    pub(crate) fn with_status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    /// One more header (`Secure-Session-Challenge`, …).
    pub(crate) fn with_header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// The value of the extra header `name`, if set.
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn with_outcome(mut self, outcome: &'static str) -> Reply {
        self.outcome = outcome;
        self
    }

    pub(crate) fn status(&self) -> u16 {
        self.status
    }

    pub(crate) fn outcome(&self) -> &'static str {
        match &self.content {
            Content::Fault(f, _) if self.outcome == "refused" => f.label(),
            _ => self.outcome,
        }
    }

    /// The fault this reply carries, if it is one.
    #[cfg(test)]
    pub(crate) fn as_fault(&self) -> Option<&Fault> {
        match &self.content {
            Content::Fault(f, _) => Some(f),
            _ => None,
        }
    }

    pub(crate) fn headers(&self) -> &[(&'static str, String)] {
        &self.headers
    }

    pub(crate) fn set_cookies(&self) -> &[String] {
        &self.set_cookies
    }

    /// The content type and body, rendered for `request_id`.
    pub(crate) fn render(&self, request_id: &str) -> (Option<&'static str>, Bytes) {
        match &self.content {
            Content::Empty => (None, Bytes::new()),
            Content::Body(ct, body) => (Some(*ct), body.clone()),
            Content::Fault(fault, Format::Json) => {
                (Some("application/json"), fault_json(fault, request_id))
            }
            Content::Fault(fault, Format::Html) => (
                Some("text/html; charset=utf-8"),
                Bytes::from(fault_html(fault, request_id)),
            ),
        }
    }

    /// Whether the rendered body is an HTML page (it gets a strict content security policy).
    pub(crate) fn is_page(&self) -> bool {
        match &self.content {
            Content::Fault(_, Format::Html) => true,
            Content::Body(ct, _) => ct.starts_with("text/html"),
            _ => false,
        }
    }

    /// An HTML page of tollgate's own (strict content security policy, like fault pages):
    /// `title`, then `body_html` (already escaped).
    pub(crate) fn page(status: u16, title: &str, body_html: &str) -> Reply {
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{title}</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem\">\
<h1>{title}</h1>{body_html}</body></html>\n",
            title = escape(title)
        );
        Reply::body(status, "text/html; charset=utf-8", Bytes::from(html))
    }
}

impl Fault {
    /// A fixed label: the code, or for the provider's codes what kind of error it was (for
    /// the access log, which does not repeat the provider's words).
    fn label(&self) -> &'static str {
        use Fault::*;
        match self {
            NotFound => "not_found",
            BadPath => "bad_path",
            BadRequest => "bad_request",
            Unauthenticated => "unauthenticated",
            SessionExpired => "session_expired",
            ProviderUnavailable => "provider_unavailable",
            ProviderIssuerMismatch { .. } => "provider_issuer_mismatch",
            Csrf(CsrfError::MissingHeader) => "csrf_header_missing",
            Csrf(CsrfError::ForeignOrigin) => "origin_not_allowed",
            Csrf(CsrfError::MissingOrigin) => "origin_missing",
            MethodNotAllowed => "method_not_allowed",
            UpstreamUnavailable | NoHealthyUpstream => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            Internal => "internal_error",
            ProviderError(_) => "provider_error",
            TokenRefused(_) => "token_refused",
            ParRefused(_) => "par_refused",
            CallbackUnreadable | MissingCode => "invalid_request",
            InvalidState => "invalid_state",
            UnknownState => "unknown_state",
            LoginExpired => "login_expired",
            IssuerMismatch => "issuer_mismatch",
            IssuerMissing => "issuer_missing",
            CodeRejected => "invalid_grant",
            ProviderUnreachable => "provider_unreachable",
            InvalidTokenResponse => "invalid_token_response",
            MissingIdToken => "missing_id_token",
            InvalidIdToken { .. } => "invalid_id_token",
            SessionTooLarge => "session_too_large",
            InvalidLogoutToken => "invalid_request",
            PayloadTooLarge => "payload_too_large",
            RequestTimeout => "request_timeout",
            CookieTooLarge | HeaderFieldsTooLarge(_) => "request_header_fields_too_large",
            StoreUnavailable => "store_unavailable",
            Forbidden => "forbidden",
            InsufficientScope => "insufficient_scope",
            DeviceProofRequired => "device_proof_required",
            InvalidDeviceProof => "invalid_device_proof",
            DeviceBindingRequired => "device_binding_required",
            UnknownProvider(_) => "unknown_provider",
            WrongProvider => "wrong_provider",
            StepUpRequired(_) => "step_up_required",
            StepUpNotMet => "insufficient_user_authentication",
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acr_values: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age: Option<u64>,
    request_id: &'a str,
}

fn fault_json(fault: &Fault, request_id: &str) -> Bytes {
    let message = fault.message();
    let step_up = match fault {
        Fault::StepUpRequired(ask) => Some(ask.as_ref()),
        _ => None,
    };
    let body = ErrorBody {
        error: fault.code(),
        message: message.as_deref(),
        login: match step_up {
            Some(ask) => Some(ask.login.as_str()),
            None => fault.login_hint().then_some("/login"),
        },
        acr_values: step_up.and_then(|a| a.acr_values.as_deref()),
        max_age: step_up.and_then(|a| a.max_age),
        request_id,
    };
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(b"{\"error\":\"internal_error\"}"))
}

fn fault_html(fault: &Fault, request_id: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>Sign-in failed</title></head>\
<body style=\"font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem\">\
<h1>Sign-in failed</h1><p>{}</p><p>Error: <code>{}</code></p>\
<p><a href=\"/login\">Start again</a></p>\
<p style=\"color:#666;font-size:.85rem\">Request id: <code>{}</code></p></body></html>\n",
        escape(
            &fault
                .message()
                .unwrap_or(Cow::Borrowed("Something went wrong."))
        ),
        escape(fault.code()),
        escape(request_id)
    )
}

/// `s` safe in HTML text and attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An error code from the provider, as shown to people and logged: RFC 6749 codes are short
/// `snake_case` words, so anything else (text meant to mislead the user on tollgate's own
/// page, or to forge a log line) becomes `provider_error`; at most 40 characters.
pub(crate) fn provider_code(code: &str) -> String {
    let ok = (1..=40).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        code.to_string()
    } else {
        "provider_error".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(reply: &Reply) -> serde_json::Value {
        let (ct, body) = reply.render("rid");
        assert_eq!(ct, Some("application/json"));
        serde_json::from_slice(&body).unwrap()
    }

    #[test]
    fn one_json_shape_with_login_hint_where_it_helps() {
        let v = json_of(&Reply::from(Fault::Unauthenticated));
        assert_eq!(v["error"], "unauthenticated");
        assert_eq!(v["login"], "/login");
        assert_eq!(v["request_id"], "rid");
        let v = json_of(&Reply::from(Fault::Csrf(CsrfError::MissingHeader)));
        assert_eq!(v["error"], "csrf_header_missing");
        assert!(v.get("login").is_none());
        let v = json_of(&Reply::fault(Fault::UnknownState, Format::Json));
        assert_eq!(v["error"], "unknown_state");
        assert_eq!(v["login"], "/login");
        assert!(v["message"].as_str().is_some());
    }

    #[test]
    fn every_fault_has_its_status_and_a_static_log_label() {
        for (fault, status) in [
            (Fault::NotFound, 404),
            (Fault::BadPath, 400),
            (Fault::SessionExpired, 401),
            (Fault::ProviderUnavailable, 503),
            (
                Fault::ProviderIssuerMismatch {
                    configured: "a".into(),
                    discovered: "b".into(),
                },
                503,
            ),
            (Fault::NoHealthyUpstream, 503),
            (Fault::MethodNotAllowed, 405),
            (Fault::UpstreamTimeout, 504),
            (Fault::InvalidIdToken { nonce: true }, 400),
            (Fault::InvalidIdToken { nonce: false }, 502),
            (Fault::TokenRefused("x".into()), 502),
            (Fault::HeaderFieldsTooLarge(HeadLimit::H2Fields), 431),
        ] {
            assert_eq!(fault.status(), status, "{fault:?}");
            assert!(!fault.label().is_empty());
        }
        assert_eq!(
            Reply::from(Fault::ProviderError("evil".into())).outcome(),
            "provider_error"
        );
    }

    /// The issuer mismatch names both issuers, in JSON and on the page.
    #[test]
    fn an_issuer_mismatch_names_both_issuers() {
        let fault = Fault::ProviderIssuerMismatch {
            configured: "https://idp.example/".into(),
            discovered: "https://idp.example".into(),
        };
        let v = json_of(&Reply::from(fault.clone()));
        assert_eq!(v["error"], "provider_issuer_mismatch");
        let m = v["message"].as_str().unwrap();
        assert!(
            m.contains("\"https://idp.example/\"") && m.contains("\"https://idp.example\""),
            "{m}"
        );
        let (_, body) = Reply::fault(fault, Format::Html).render("rid");
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("&quot;https://idp.example/&quot;"), "{html}");
    }

    #[test]
    fn html_is_escaped() {
        let r = Reply::fault(Fault::ProviderError("<script>".into()), Format::Html);
        let (ct, body) = r.render("r<id>");
        assert_eq!(ct, Some("text/html; charset=utf-8"));
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.contains("&lt;script&gt;") && html.contains("r&lt;id&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("href=\"/login\""));
        assert!(wants_json(Some("application/json")));
        assert!(!wants_json(Some("text/html,application/json;q=0.9")));
        assert!(!wants_json(None));
    }

    #[test]
    fn provider_codes_are_capped_to_plain_words() {
        assert_eq!(provider_code("access_denied"), "access_denied");
        for bad in [
            "",
            "Your account is locked: call +1 555 0100",
            "a\nb",
            &"x".repeat(41),
            "<b>",
        ] {
            assert_eq!(provider_code(bad), "provider_error", "{bad:?}");
        }
    }
}
