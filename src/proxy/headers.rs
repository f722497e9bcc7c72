//! The upstream request rewrite: what the API sees instead of what the browser sent.
//!
//! - `Authorization` is always the session's bearer token, or absent: whatever the client sent
//!   is dropped (a browser never holds a token worth forwarding), on `auth = "none"` routes
//!   too unless the route says `keep_authorization`.
//! - tollgate's own cookies (the session, its chunks, login and logout helpers; exactly the
//!   names it writes) are removed from `Cookie`; all other cookies pass, joined into one header
//!   as HTTP/1.1 requires.
//! - Forwarding headers are tollgate's to write: a client's `Forwarded`, `X-Real-IP`,
//!   `X-Original-URL`, `X-Rewrite-URL`, `X-Forwarded-Port`/`-Prefix` and any of them spelled
//!   with underscores (which some servers read as dashes) are dropped. `X-Forwarded-For` keeps
//!   every line the client sent, joined, and gains the client address; `X-Forwarded-Proto`/
//!   `-Host` say how the browser reached tollgate (from `public_url`, never from the client's
//!   `Host`), `X-Request-Id` carries the id in our logs.
//! - `Host` becomes the upstream's authority (what an https upstream's certificate and virtual
//!   hosting expect), and the path is rewritten for `strip_prefix` and the upstream's base path.
//!
//! Hop-by-hop fields (`Connection`, `Keep-Alive`, `TE`, `Upgrade` except a valid WebSocket
//! handshake, …) are removed by Pingora's standard upstream request policy before this runs.
//! On the way back, [`rewrite_response`] drops an upstream `Set-Cookie` under one of
//! tollgate's names (an upstream must not end or replace a session) and marks a response that
//! carries tollgate's own `Set-Cookie` `Cache-Control: private, no-store`, so that no shared
//! cache hands one user's session to another.
//!
//! Everything here is synchronous and allocation-light: it runs on every proxied request.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{AUTHORIZATION, COOKIE, HOST, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use super::request_id::NAME as X_REQUEST_ID;
use crate::session::cookie::{is_own_cookie, pair_ranges};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    #[error("the rewritten request line is not a valid URI")]
    Uri,
    #[error("a rewritten header value is not valid")]
    Header,
}

/// Who the user is, for a route with `identity_headers`, in oauth2-proxy's header names (so
/// upstreams written for it work unchanged): `X-Auth-Request-User` (the `sub`), `-Email` and
/// `-Groups` (comma-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: HeaderValue,
    pub email: Option<HeaderValue>,
    pub groups: Option<HeaderValue>,
}

/// Everything the rewrite needs for one request.
#[derive(Debug)]
pub struct UpstreamRewrite<'a> {
    /// `Bearer <access token>` to inject, if the request has a session ([`bearer_value`]).
    pub bearer: Option<&'a HeaderValue>,
    /// `X-Auth-Request-*` to send (a route with `identity_headers` and a session).
    pub identity: Option<&'a Identity>,
    /// The `DPoP` proof for this request (a route with `token_binding = "dpop"`; `bearer`
    /// then says `DPoP <token>`).
    pub dpop_proof: Option<&'a HeaderValue>,
    /// Drop a client-sent `Authorization` (every route unless it says `keep_authorization`).
    pub drop_client_authorization: bool,
    pub cookie_name: &'a str,
    pub client_ip: Option<IpAddr>,
    /// `http` or `https`, from `public_url`.
    pub proto: &'static str,
    /// `X-Forwarded-Host`: `public_url`'s authority, not the client's `Host` (tollgate answers
    /// any `Host`, so a client could otherwise steer links and redirects the upstream builds).
    pub forwarded_host: &'a HeaderValue,
    pub request_id: &'a str,
    /// The upstream authority for `Host`.
    pub upstream_host: &'a HeaderValue,
    /// The new path, when it differs from the downstream one.
    pub path: Option<&'a str>,
}

/// The `Authorization` value for `token`: built in one buffer, no further copy, and marked
/// sensitive (HTTP/2 encoders never index it; `Debug` hides it).
pub fn bearer_value(token: &str) -> Result<HeaderValue, RewriteError> {
    authorization_value("Bearer ", token)
}

/// `Authorization: DPoP <token>` (RFC 9449 §7.1), built as [`bearer_value`] is.
pub fn dpop_value(token: &str) -> Result<HeaderValue, RewriteError> {
    authorization_value("DPoP ", token)
}

fn authorization_value(scheme: &str, token: &str) -> Result<HeaderValue, RewriteError> {
    let mut v = BytesMut::with_capacity(scheme.len() + token.len());
    v.extend_from_slice(scheme.as_bytes());
    v.extend_from_slice(token.as_bytes());
    let mut value = HeaderValue::from_maybe_shared(v.freeze()).map_err(|_| RewriteError::Header)?;
    value.set_sensitive(true);
    Ok(value)
}

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const DPOP: HeaderName = HeaderName::from_static("dpop");
const X_AUTH_REQUEST_USER: HeaderName = HeaderName::from_static("x-auth-request-user");
const X_AUTH_REQUEST_EMAIL: HeaderName = HeaderName::from_static("x-auth-request-email");
const X_AUTH_REQUEST_GROUPS: HeaderName = HeaderName::from_static("x-auth-request-groups");

/// Rewrites the upstream request in place.
///
/// The work is done on the request's `http` parts with prebuilt `HeaderName`s, then the parts
/// become the request again: Pingora's `insert_header` parses the name from bytes, allocates
/// a lower-cased copy for every non-standard name and keeps a second, case-preserving map —
/// about 1,300 instructions per header, seven times a request (RESULTS.md, "The header
/// rewrite"). The price is that the upstream sees header names in lower case (as HTTP/2
/// sends them everywhere; HTTP/1.1 names are case-insensitive), with Pingora's title case
/// for `Host`, `Content-Type` and the other standard names it knows.
pub fn rewrite(req: &mut RequestHeader, rw: &UpstreamRewrite<'_>) -> Result<(), RewriteError> {
    let (empty, ()) = http::Request::new(()).into_parts();
    let mut parts: http::request::Parts = std::mem::replace(req, empty.into()).into();
    let result = rewrite_parts(&mut parts, rw);
    // The target now comes from the URI: origin-form, whatever form the client used (the
    // only other one tollgate accepts is absolute-form, routed on its path).
    *req = RequestHeader::from(parts);
    result
}

fn rewrite_parts(
    parts: &mut http::request::Parts,
    rw: &UpstreamRewrite<'_>,
) -> Result<(), RewriteError> {
    let headers = &mut parts.headers;
    headers.reserve(5);
    match rw.bearer {
        Some(value) => {
            headers.insert(AUTHORIZATION, value.clone());
        }
        None if rw.drop_client_authorization => {
            headers.remove(AUTHORIZATION);
        }
        None => {}
    }
    if let Some(proof) = rw.dpop_proof {
        headers.insert(DPOP, proof.clone());
    }
    strip_own_cookies(headers, rw.cookie_name)?;
    // A client's `DPoP` proof goes only with its own `Authorization` (and never beside
    // tollgate's proof, inserted after this).
    let strip_dpop = rw.bearer.is_some() || rw.drop_client_authorization;
    strip_forwarding(headers, strip_dpop && rw.dpop_proof.is_none());

    headers.insert(X_FORWARDED_HOST, rw.forwarded_host.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(rw.proto));
    if let Some(ip) = rw.client_ip {
        let xff = forwarded_for(headers, ip)?;
        headers.insert(X_FORWARDED_FOR, xff);
    }
    let id = HeaderValue::from_str(rw.request_id).map_err(|_| RewriteError::Header)?;
    headers.insert(X_REQUEST_ID, id);
    headers.insert(HOST, rw.upstream_host.clone());
    // The client's own `X-Auth-Request-*` are gone ([`strip_forwarding`]): only these arrive.
    if let Some(who) = rw.identity {
        headers.insert(X_AUTH_REQUEST_USER, who.user.clone());
        if let Some(email) = &who.email {
            headers.insert(X_AUTH_REQUEST_EMAIL, email.clone());
        }
        if let Some(groups) = &who.groups {
            headers.insert(X_AUTH_REQUEST_GROUPS, groups.clone());
        }
    }

    if let Some(path) = rw.path {
        let uri = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        parts.uri = uri.parse().map_err(|_| RewriteError::Uri)?;
    } else if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = pq.parse().map_err(|_| RewriteError::Uri)?;
    }
    Ok(())
}

/// Headers that tell an upstream where a request came from or what it was before a proxy
/// rewrote it: only tollgate may write them. (Besides these, every `X-Forwarded-*` but `-For`,
/// which keeps the client's lines.)
const FORWARDING: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-url-scheme",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "front-end-https",
    "x-request-id",
];

/// Whether a client-sent header named `name` (lower case) must not reach the upstream, spelled
/// with dashes or underscores (some servers read `_` as `-`).
fn is_spoofable(name: &str) -> bool {
    // Every one of them starts with `x`, `f` or `t`; most of a browser's headers do not.
    if !matches!(name.as_bytes().first(), Some(b'x' | b'f' | b't')) {
        return false;
    }
    if name.contains('_') {
        return forwarding(&name.replace('_', "-"), true);
    }
    forwarding(name, false)
}

/// `name` (dashed) is a forwarding header; `x-forwarded-for` only when spelled otherwise.
/// `X-Auth-Request-*` is the identity tollgate vouches for: never the client's, on any route.
fn forwarding(name: &str, respelled: bool) -> bool {
    if name.starts_with("x-auth-request-") {
        return true;
    }
    match name.strip_prefix("x-forwarded-") {
        Some("for") => respelled,
        Some(_) => true,
        None => FORWARDING.contains(&name) && (respelled || name != "x-request-id"),
    }
}

/// Drops the client's [`is_spoofable`] headers. Allocates only when there is one.
/// With `dpop`, a client's `DPoP` header too (found in the same pass over the names).
fn strip_forwarding(headers: &mut HeaderMap, dpop: bool) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_spoofable(n.as_str()) || (dpop && *n == DPOP))
        .cloned()
        .collect();
    for name in found {
        headers.remove(&name);
    }
}

/// `X-Forwarded-For`: every line the client sent, joined, then `ip`.
fn forwarded_for(headers: &HeaderMap, ip: IpAddr) -> Result<HeaderValue, RewriteError> {
    let mut prev = String::new();
    for v in headers.get_all(X_FORWARDED_FOR) {
        let Ok(v) = v.to_str() else { continue };
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if !prev.is_empty() {
            prev.push_str(", ");
        }
        prev.push_str(v);
    }
    if prev.is_empty() {
        return Ok(ip_header_value(ip));
    }
    HeaderValue::try_from(format!("{prev}, {ip}")).map_err(|_| RewriteError::Header)
}

/// What the response rewrite adds besides the upstream's headers.
#[derive(Debug)]
pub(crate) struct ResponseRewrite<'a> {
    pub request_id: &'a str,
    /// `Strict-Transport-Security`, on responses over TLS when configured.
    pub hsts: Option<&'a HeaderValue>,
    pub cookie_name: &'a str,
    /// tollgate's own `Set-Cookie` lines (a renewed or refreshed session).
    pub set_cookies: Vec<String>,
    /// The answer is for a request with a session on a route without `cache_public`: no
    /// shared cache may keep it ([`make_private`]).
    pub private: bool,
}

const STRICT_TRANSPORT_SECURITY: HeaderName = http::header::STRICT_TRANSPORT_SECURITY;

/// The response side: adds `X-Request-Id` (and HSTS over TLS), drops an upstream `Set-Cookie`
/// that uses one of tollgate's cookie names, adds tollgate's own `set_cookies`, and when there
/// are any, makes the response `Cache-Control: private, no-store`. Done on the `http` parts as
/// [`rewrite`] is, for the same reason; the browser sees lower-case header names, as over
/// HTTP/2.
pub(crate) fn rewrite_response(
    resp: &mut ResponseHeader,
    rw: ResponseRewrite<'_>,
) -> Result<(), RewriteError> {
    let (empty, ()) = http::Response::new(()).into_parts();
    let mut parts: http::response::Parts = std::mem::replace(resp, empty.into()).into();
    let result = rewrite_response_parts(&mut parts.headers, rw);
    *resp = ResponseHeader::from(parts);
    result
}

fn rewrite_response_parts(
    headers: &mut HeaderMap,
    rw: ResponseRewrite<'_>,
) -> Result<(), RewriteError> {
    let id = HeaderValue::from_str(rw.request_id).map_err(|_| RewriteError::Header)?;
    headers.insert(X_REQUEST_ID, id);
    if let Some(hsts) = rw.hsts {
        headers.insert(STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let own = |v: &HeaderValue| set_cookie_is_own(v.as_bytes(), rw.cookie_name);
    if headers.get_all(SET_COOKIE).iter().any(own) {
        let kept: Vec<HeaderValue> = headers
            .get_all(SET_COOKIE)
            .iter()
            .filter(|v| !own(v))
            .cloned()
            .collect();
        headers.remove(SET_COOKIE);
        for v in kept {
            headers.append(SET_COOKIE, v);
        }
    }
    if rw.set_cookies.is_empty() {
        if rw.private {
            make_private(headers);
        }
        return Ok(());
    }
    for line in rw.set_cookies {
        let v = HeaderValue::try_from(line).map_err(|_| RewriteError::Header)?;
        headers.append(SET_COOKIE, v);
    }
    drop_cdn_cache_headers(headers);
    headers.remove(http::header::EXPIRES);
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    Ok(())
}

/// Cache headers that CDNs and reverse-proxy caches obey over `Cache-Control` (RFC 9213's
/// `CDN-Cache-Control`, Cloudflare's, Fastly's and Akamai's `Surrogate-Control` and
/// `Edge-Control`, nginx's `X-Accel-Expires`).
const CDN_CACHE_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("cdn-cache-control"),
    HeaderName::from_static("cloudflare-cdn-cache-control"),
    HeaderName::from_static("surrogate-control"),
    HeaderName::from_static("edge-control"),
    HeaderName::from_static("x-accel-expires"),
];

fn drop_cdn_cache_headers(headers: &mut HeaderMap) {
    // One pass over the names present (a handful, rarely one of these) costs a tenth of a
    // lookup for each of the five.
    let cdn = |name: &HeaderName| CDN_CACHE_HEADERS.iter().any(|c| c == name);
    if headers.keys().any(cdn) {
        for name in &CDN_CACHE_HEADERS {
            headers.remove(name);
        }
    }
}

/// An answer made for one user: a CDN or shared cache in front of tollgate sees only the
/// session cookie, never the bearer the upstream saw, so it could serve the answer to others.
/// `Cache-Control` becomes `private` (keeping `max-age` and the rest for the browser; `public`,
/// `s-maxage` and `proxy-revalidate`, which speak to shared caches, go), and CDN-only headers
/// are dropped. An answer without `Cache-Control` gets `private` (a shared cache could
/// otherwise store it heuristically, RFC 9111 §4.2.2).
fn make_private(headers: &mut HeaderMap) {
    use http::header::Entry;
    drop_cdn_cache_headers(headers);
    // One lookup: most answers have no `Cache-Control` and get the static value.
    let mut upstream = match headers.entry(http::header::CACHE_CONTROL) {
        Entry::Vacant(v) => {
            v.insert(HeaderValue::from_static("private"));
            return;
        }
        Entry::Occupied(o) => o,
    };
    let mut value = String::with_capacity(64);
    value.push_str("private");
    for directive in upstream
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let name = directive.split('=').next().unwrap_or_default().trim();
        // `private="set-cookie"` (only some fields private) becomes wholly private.
        let dropped = ["public", "s-maxage", "proxy-revalidate", "private"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n));
        if !dropped {
            value.push_str(", ");
            value.push_str(directive);
        }
    }
    // Replaces every `Cache-Control` line the upstream sent.
    upstream.insert(HeaderValue::try_from(value).unwrap_or(HeaderValue::from_static("private")));
}

/// Whether a `Set-Cookie` line sets one of tollgate's cookies, including a nameless cookie
/// (`=NAME=value`), which browsers send back as `NAME=value`.
fn set_cookie_is_own(line: &[u8], cookie_name: &str) -> bool {
    let start = line
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'='))
        .unwrap_or(line.len());
    let line = &line[start..];
    if !line.starts_with(cookie_name.as_bytes()) {
        return false;
    }
    let line = String::from_utf8_lossy(line);
    let pair = line.split(';').next().unwrap_or_default();
    let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
    is_own_cookie(name, cookie_name)
}

/// An IP address as a header value. IPv4, the common case, is written by hand: `Display` for
/// `IpAddr` goes through the formatting machinery and cost more than the rest of the header.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    if let IpAddr::V4(v4) = ip {
        let mut buf = [0u8; 15];
        let mut len = 0;
        for (i, octet) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                buf[len] = b'.';
                len += 1;
            }
            if octet >= 100 {
                buf[len] = b'0' + octet / 100;
                len += 1;
            }
            if octet >= 10 {
                buf[len] = b'0' + octet / 10 % 10;
                len += 1;
            }
            buf[len] = b'0' + octet % 10;
            len += 1;
        }
        if let Ok(v) = HeaderValue::from_bytes(&buf[..len]) {
            return v;
        }
    }
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Removes tollgate's cookies from `Cookie`, leaving every other cookie as it was. One pass
/// over the header(s), on bytes (the session cookie makes this header several KB: `memchr`
/// finds the separators, and nothing is validated or copied but the cookies kept); the header
/// is replaced only if something was removed or several `Cookie` fields had to be joined.
fn strip_own_cookies(headers: &mut HeaderMap, name: &str) -> Result<(), RewriteError> {
    let mut kept: Vec<u8> = Vec::new();
    let mut changed = false;
    for (i, v) in headers.get_all(COOKIE).iter().enumerate() {
        changed |= i > 0;
        let field = v.as_bytes();
        for part in pair_ranges(field).map(|r| &field[r]) {
            let part = part.trim_ascii();
            if part.is_empty() {
                continue;
            }
            let cookie_name =
                memchr::memchr(b'=', part).map_or(part, |i| part[..i].trim_ascii_end());
            let own = std::str::from_utf8(cookie_name).is_ok_and(|n| is_own_cookie(n, name));
            if own {
                changed = true;
            } else {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(part);
            }
        }
    }
    if !changed {
        return Ok(());
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        let joined = HeaderValue::from_maybe_shared(bytes::Bytes::from(kept))
            .map_err(|_| RewriteError::Header)?;
        headers.insert(COOKIE, joined);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/api/items?x=1", None).unwrap();
        r.insert_header("host", "evil.example").unwrap();
        r.insert_header("authorization", "Bearer client-supplied")
            .unwrap();
        r.append_header("cookie", "theme=dark; tg=sealed; tg.0=2.a")
            .unwrap();
        r.append_header(
            "cookie",
            "tg.1=b; lang=en; tg-login-Zm9vYmFyYmF6cXV4cXV1eA=x; tg-theme=light",
        )
        .unwrap();
        r.insert_header("x-forwarded-for", "203.0.113.9").unwrap();
        r.append_header("x-forwarded-for", "198.51.100.2").unwrap();
        for spoof in SPOOFED {
            r.insert_header(spoof.to_string(), "evil").unwrap();
        }
        r
    }

    /// Forwarding headers a client may send and the upstream must not see.
    const SPOOFED: [&str; 12] = [
        "forwarded",
        "x-real-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-forwarded-port",
        "true-client-ip",
        "x_forwarded_for",
        "x-forwarded_host",
        "x_real_ip",
        "x_request_id",
    ];

    static HOST_VALUE: HeaderValue = HeaderValue::from_static("api.internal:8080");
    static PUBLIC_HOST: HeaderValue = HeaderValue::from_static("app.example.com");

    #[test]
    fn ipv4_is_written_like_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.10.99",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_header_value(ip).to_str().unwrap(), ip.to_string());
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_header_value(v6).to_str().unwrap(), "2001:db8::1");
    }

    fn rw<'a>(bearer: Option<&'a HeaderValue>, path: Option<&'a str>) -> UpstreamRewrite<'a> {
        UpstreamRewrite {
            bearer,
            identity: None,
            dpop_proof: None,
            drop_client_authorization: true,
            cookie_name: "tg",
            client_ip: Some("127.0.0.7".parse().unwrap()),
            proto: "https",
            forwarded_host: &PUBLIC_HOST,
            request_id: "rid-1",
            upstream_host: &HOST_VALUE,
            path,
        }
    }

    /// The identity headers are tollgate's only: a client's own, in any spelling, never
    /// arrive, whether the route sends identity headers or not.
    #[test]
    fn identity_headers_replace_whatever_the_client_sent() {
        let spoofed = |r: &mut RequestHeader| {
            for name in [
                "X-Auth-Request-User",
                "x-auth-request-email",
                "X_Auth_Request_Groups",
                "x-auth-request-preferred-username",
            ] {
                r.insert_header(name, "admin").unwrap();
            }
        };
        let mut r = request();
        spoofed(&mut r);
        rewrite(&mut r, &rw(None, None)).unwrap();
        let left: Vec<&str> = r
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.replace('_', "-").starts_with("x-auth-request"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        let who = Identity {
            user: HeaderValue::from_static("test-user"),
            email: None,
            groups: Some(HeaderValue::from_static("staff,ops")),
        };
        let mut r = request();
        spoofed(&mut r);
        rewrite(
            &mut r,
            &UpstreamRewrite {
                identity: Some(&who),
                ..rw(None, None)
            },
        )
        .unwrap();
        let all = |n: &str| -> Vec<String> {
            r.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(all("x-auth-request-user"), ["test-user"]);
        assert_eq!(all("x-auth-request-groups"), ["staff,ops"]);
        assert!(
            all("x-auth-request-email").is_empty(),
            "no email claim, no header"
        );
        assert!(all("x_auth_request_groups").is_empty());
    }

    #[test]
    fn injects_bearer_and_strips_own_cookies() {
        let mut r = request();
        let tok = bearer_value("tok").unwrap();
        assert!(tok.is_sensitive());
        rewrite(&mut r, &rw(Some(&tok), None)).unwrap();
        let h = |n: &str| r.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("authorization").as_deref(), Some("Bearer tok"));
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert_eq!(
            h("cookie").as_deref(),
            Some("theme=dark; lang=en; tg-theme=light")
        );
        assert_eq!(r.headers.get_all("cookie").iter().count(), 1);
        assert_eq!(
            h("x-forwarded-for").as_deref(),
            Some("203.0.113.9, 198.51.100.2, 127.0.0.7")
        );
        assert_eq!(r.headers.get_all("x-forwarded-for").iter().count(), 1);
        for spoof in SPOOFED {
            assert!(
                r.headers.get(spoof).is_none(),
                "{spoof} reached the upstream"
            );
        }
        assert_eq!(h("x-forwarded-proto").as_deref(), Some("https"));
        assert_eq!(h("x-forwarded-host").as_deref(), Some("app.example.com"));
        assert_eq!(h("x-request-id").as_deref(), Some("rid-1"));
        assert_eq!(h("host").as_deref(), Some("api.internal:8080"));
        assert_eq!(r.uri.to_string(), "/api/items?x=1");
    }

    #[test]
    fn anonymous_drops_client_authorization_and_rewrites_path() {
        let mut r = request();
        rewrite(&mut r, &rw(None, Some("/v1/items"))).unwrap();
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(r.uri.to_string(), "/v1/items?x=1");
    }

    #[test]
    fn absolute_form_goes_upstream_as_origin_form_and_serialises() {
        let mut r = request();
        r.set_raw_path(b"http://app.example/api/items?x=1").unwrap();
        rewrite(&mut r, &rw(None, None)).unwrap();
        assert_eq!(r.raw_path(), b"/api/items?x=1");
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("Host: api.internal:8080\r\n"), "{wire}");
        assert!(wire.contains("x-request-id: rid-1\r\n"), "{wire}");
        assert!(!wire.contains("evil"), "{wire}");
    }

    #[test]
    fn a_cookie_header_that_is_not_text_is_filtered_too() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header(
            "cookie",
            HeaderValue::from_bytes(b"caf\xe9=1; tg=x; tg.0=1.y").unwrap(),
        )
        .unwrap();
        rewrite(&mut r, &rw(None, None)).unwrap();
        assert_eq!(r.headers.get("cookie").unwrap().as_bytes(), b"caf\xe9=1");
    }

    #[test]
    fn only_own_cookies_means_no_cookie_header() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("cookie", "tg=x; tg.0=1.y").unwrap();
        rewrite(&mut r, &rw(None, None)).unwrap();
        assert!(r.headers.get("cookie").is_none());
    }

    #[test]
    fn untouched_cookie_header_is_kept_as_is() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("cookie", "a=1;b=2").unwrap();
        rewrite(&mut r, &rw(None, None)).unwrap();
        assert_eq!(r.headers.get("cookie").unwrap(), "a=1;b=2");
    }

    #[test]
    fn upstream_cannot_set_own_cookies_and_session_cookies_are_private() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.append_header("set-cookie", "tg=evil; Path=/").unwrap();
        resp.append_header("set-cookie", "tg.1=evil").unwrap();
        resp.append_header("set-cookie", "tg-theme=dark").unwrap();
        resp.append_header("set-cookie", "=tg=planted; Path=/api")
            .unwrap();
        resp.append_header("set-cookie", " tg.0=1.x").unwrap();
        resp.insert_header("cache-control", "public, max-age=600")
            .unwrap();
        resp.insert_header("cdn-cache-control", "max-age=600")
            .unwrap();
        resp.insert_header("surrogate-control", "max-age=600")
            .unwrap();
        let rw = |set_cookies| ResponseRewrite {
            request_id: "rid-1",
            hsts: None,
            cookie_name: "tg",
            set_cookies,
            private: false,
        };
        rewrite_response(&mut resp, rw(Vec::new())).unwrap();
        let lines: Vec<&str> = resp
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(lines, ["tg-theme=dark"]);
        assert_eq!(resp.headers["cache-control"], "public, max-age=600");
        rewrite_response(&mut resp, rw(vec!["tg=sealed; HttpOnly".into()])).unwrap();
        assert_eq!(resp.headers["x-request-id"], "rid-1");
        assert_eq!(resp.headers["cache-control"], "private, no-store");
        assert!(resp.headers.get("cdn-cache-control").is_none());
        assert!(resp.headers.get("surrogate-control").is_none());
        assert_eq!(resp.headers.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn answers_with_a_session_are_made_private() {
        let cases = [
            (None, "private"),
            (Some("public, max-age=600"), "private, max-age=600"),
            (
                Some("max-age=60, s-maxage=3600, PUBLIC, proxy-revalidate"),
                "private, max-age=60",
            ),
            (Some("private, max-age=5"), "private, max-age=5"),
            (Some("no-store"), "private, no-store"),
            (
                Some("private=\"set-cookie\", max-age=5"),
                "private, max-age=5",
            ),
        ];
        for (upstream, want) in cases {
            let mut resp = ResponseHeader::build(200, None).unwrap();
            if let Some(cc) = upstream {
                resp.insert_header("cache-control", cc).unwrap();
            }
            resp.insert_header("cdn-cache-control", "max-age=600")
                .unwrap();
            resp.insert_header("surrogate-control", "max-age=600")
                .unwrap();
            resp.insert_header("expires", "Wed, 21 Oct 2099 07:28:00 GMT")
                .unwrap();
            let rw = ResponseRewrite {
                request_id: "rid-1",
                hsts: None,
                cookie_name: "tg",
                set_cookies: Vec::new(),
                private: true,
            };
            rewrite_response(&mut resp, rw).unwrap();
            let h = &resp.headers;
            assert_eq!(h.get_all("cache-control").iter().count(), 1);
            assert_eq!(h["cache-control"], want, "{upstream:?}");
            assert!(h.get("cdn-cache-control").is_none());
            assert!(h.get("surrogate-control").is_none());
            assert!(h.get("x-accel-expires").is_none());
            assert!(h.get("edge-control").is_none());
            // The browser's own cache keeps its instructions.
            assert!(h.get("expires").is_some());
        }
        // Without a session (or with `cache_public`), nothing changes.
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("cache-control", "public, max-age=600")
            .unwrap();
        resp.insert_header("cdn-cache-control", "max-age=600")
            .unwrap();
        let rw = ResponseRewrite {
            request_id: "rid-1",
            hsts: None,
            cookie_name: "tg",
            set_cookies: Vec::new(),
            private: false,
        };
        rewrite_response(&mut resp, rw).unwrap();
        assert_eq!(resp.headers["cache-control"], "public, max-age=600");
        assert!(resp.headers.get("cdn-cache-control").is_some());
    }
}
