//! The request target: the one path tollgate routes on, checks, and sends upstream.
//!
//! A route's auth rule protects only what the upstream serves under that path, so the path
//! tollgate matches must be the path the upstream resolves. Upstreams normalise in ways a
//! plain prefix match does not see: they decode `%61` to `a`, resolve `.` and `..` (Tomcat also
//! `..;`), drop `;params` from segments, and some read `\` as `/`. And a request target that is
//! not origin-form (`x:/api/admin`, `api/admin`) gives Pingora a URI path of `/` while its raw
//! bytes would be forwarded unchanged. So, before anything is routed:
//! - the target must be origin-form (`/…`) or absolute-form (`http(s)://host/…`), else 400;
//! - percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2: the same URI), and
//!   that normalised path is what is routed, answered or proxied;
//! - a dot segment (also percent-encoded or with `;params`), an empty segment (`//api`, also
//!   as `/%2F/api` or `/;/api`: nginx, Tomcat and Spring merge slashes, so `//api/admin` is
//!   served by the `/api` handler while a prefix match sends it to the catch-all route), a
//!   backslash, a control character (C0, DEL or C1; also encoded), a malformed `%` escape or
//!   bytes that are not UTF-8 (raw or encoded) is refused with 400;
//! - [`Target::canonical`] is the path fully decoded with `;params` dropped, kept only when it
//!   differs: a path that routes differently in that form (`/api%2Fadmin`, `/api;x/admin`)
//!   is refused by the caller, since tollgate cannot know which one the upstream will serve.
//!
//! The common path (no `%`, `;` or dot segments) is one scan without allocation.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    #[error("the request target is neither origin-form nor absolute-form")]
    Form,
    #[error("the path has a dot segment")]
    DotSegment,
    #[error("the path has an empty segment")]
    EmptySegment,
    #[error("the path has a backslash, a control character or a malformed escape")]
    Malformed,
}

/// A checked request target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'r> {
    /// The path to route on and send upstream: the request's own when nothing was decoded.
    pub path: Cow<'r, str>,
    /// The path fully decoded and without `;params`, when that differs from `path`.
    pub canonical: Option<String>,
}

/// Checks `raw_target` (the request line's target as received) whose URI path Pingora parsed
/// as `uri_path`.
pub(crate) fn check<'r>(raw_target: &[u8], uri_path: &'r str) -> Result<Target<'r>, TargetError> {
    let origin_form = raw_target.first() == Some(&b'/');
    if !origin_form && !is_http_absolute_form(raw_target) {
        return Err(TargetError::Form);
    }
    if !uri_path.starts_with('/') {
        return Err(TargetError::Form);
    }
    let bytes = uri_path.as_bytes();
    let (mut escaped, mut params, mut slash, mut non_ascii) = (false, false, false, false);
    for &b in bytes {
        match b {
            b'/' if slash => return Err(TargetError::EmptySegment),
            b'%' => escaped = true,
            b';' => params = true,
            b'\\' => return Err(TargetError::Malformed),
            b if b < 0x20 || b == 0x7f => return Err(TargetError::Malformed),
            b if b >= 0x80 => non_ascii = true,
            _ => {}
        }
        slash = b == b'/';
    }
    // A C1 control character (U+0080 to U+009F) sent as raw UTF-8, or raw bytes that are not
    // UTF-8 at all (Pingora's URI path has U+FFFD for them, so the path routed and sent would
    // not be the one the client wrote).
    if non_ascii
        && (uri_path.chars().any(char::is_control) || std::str::from_utf8(raw_target).is_err())
    {
        return Err(TargetError::Malformed);
    }
    if !escaped && !params {
        if has_dot_segment(uri_path) {
            return Err(TargetError::DotSegment);
        }
        return Ok(Target {
            path: Cow::Borrowed(uri_path),
            canonical: None,
        });
    }

    let path = if escaped {
        Cow::Owned(decode(bytes, true)?)
    } else {
        Cow::Borrowed(uri_path)
    };
    let decoded = if escaped {
        decode(bytes, false)?
    } else {
        uri_path.to_string()
    };
    if decoded.contains('\\') {
        return Err(TargetError::Malformed);
    }
    let canonical: String = decoded
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/");
    if has_dot_segment(&canonical) {
        return Err(TargetError::DotSegment);
    }
    if canonical.contains("//") {
        return Err(TargetError::EmptySegment);
    }
    let canonical = (canonical != path).then_some(canonical);
    Ok(Target { path, canonical })
}

fn is_http_absolute_form(raw: &[u8]) -> bool {
    let starts = |p: &[u8]| raw.len() >= p.len() && raw[..p.len()].eq_ignore_ascii_case(p);
    starts(b"http://") || starts(b"https://")
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` escapes: only those of unreserved characters when `unreserved_only` (the
/// others are kept as written), else all of them. Refuses a malformed escape, an escaped
/// control character and escapes that do not decode to UTF-8 (`%C0%AF`, an overlong `/` that
/// a lenient upstream decoder reads as a separator; `%E9`, Latin-1).
fn decode(bytes: &[u8], unreserved_only: bool) -> Result<String, TargetError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(TargetError::Malformed);
        };
        let b = h << 4 | l;
        if b < 0x20 || b == 0x7f {
            return Err(TargetError::Malformed);
        }
        if !unreserved_only || is_unreserved(b) {
            out.push(b);
        } else {
            out.extend_from_slice(&bytes[i..i + 3]);
        }
        i += 3;
    }
    let decoded = String::from_utf8(out).map_err(|_| TargetError::Malformed)?;
    // A C1 control character (U+0080 to U+009F), escaped as its UTF-8 bytes (`%C2%85`).
    if decoded.chars().any(char::is_control) {
        return Err(TargetError::Malformed);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Target<'_> {
        check(raw.as_bytes(), raw).unwrap()
    }

    #[test]
    fn plain_paths_pass_borrowed() {
        for p in ["/", "/api/items", "/a.b/c..d/.e", "/~user/x-y_z"] {
            let t = ok(p);
            assert!(matches!(t.path, Cow::Borrowed(_)), "{p}");
            assert_eq!(t.path, p);
            assert_eq!(t.canonical, None);
        }
    }

    #[test]
    fn only_origin_and_http_absolute_form() {
        for raw in ["x:/api/admin", "api/admin", "*", "foo:bar://evil/admin", ""] {
            assert_eq!(check(raw.as_bytes(), "/"), Err(TargetError::Form), "{raw}");
        }
        let t = check(b"http://app.example/api/x", "/api/x").unwrap();
        assert_eq!(t.path, "/api/x");
        assert!(check(b"HTTPS://app.example/", "/").is_ok());
    }

    #[test]
    fn dot_segments_in_every_spelling_are_refused() {
        for p in [
            "/..",
            "/api/../admin",
            "/api/./x",
            "/api/%2e%2e/admin",
            "/api/%2E./admin",
            "/api/..;/admin",
            "/api/.;x/admin",
            "/api/%2e%2e%3b/admin",
            "/api/x%2f..%2fadmin",
        ] {
            assert_eq!(check(p.as_bytes(), p), Err(TargetError::DotSegment), "{p}");
        }
    }

    #[test]
    fn backslashes_controls_and_bad_escapes_are_refused() {
        for p in [
            "/api\\..\\admin",
            "/api/%5c..%5cadmin",
            "/a%00b",
            "/a%0Ab",
            "/a%7f",
            "/a%",
            "/a%2",
            "/a%zz",
            "/a\u{85}b",
            "/a%C2%85b",
            "/a%c2%9fb",
        ] {
            assert_eq!(check(p.as_bytes(), p), Err(TargetError::Malformed), "{p}");
        }
        // Found by the `target_path` fuzz target: raw bytes that are not UTF-8 (Pingora's URI
        // path has U+FFFD for them) followed by a raw C1 control character, U+0086.
        assert_eq!(
            check(
                b"/ca=x&sta\x89\x9a\xc2\x86",
                "/ca=x&sta\u{FFFD}\u{FFFD}\u{86}"
            ),
            Err(TargetError::Malformed)
        );
        // Bytes that are not UTF-8, raw or escaped (an overlong `/`, Latin-1).
        assert_eq!(
            check(b"/api/caf\xe9", "/api/caf\u{FFFD}"),
            Err(TargetError::Malformed)
        );
        for p in ["/api%C0%AFadmin", "/api/caf%E9", "/api/%FF"] {
            assert_eq!(check(p.as_bytes(), p), Err(TargetError::Malformed), "{p}");
        }
        // Other characters beyond ASCII pass, raw or escaped.
        assert!(check("/caf\u{e9}".as_bytes(), "/caf\u{e9}").is_ok());
        assert!(check(b"/caf%C3%A9", "/caf%C3%A9").is_ok());
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept() {
        let t = ok("/api/%61dmin/%7Euser/a%2Fb/%20x");
        assert_eq!(t.path, "/api/admin/~user/a%2Fb/%20x");
        assert_eq!(t.canonical.as_deref(), Some("/api/admin/~user/a/b/ x"));
        let t = ok("/%61pi/items");
        assert_eq!(t.path, "/api/items");
        assert_eq!(t.canonical, None);
    }

    #[test]
    fn params_are_dropped_from_the_canonical_path() {
        let t = ok("/api;x/admin;jsessionid=1");
        assert_eq!(t.path, "/api;x/admin;jsessionid=1");
        assert_eq!(t.canonical.as_deref(), Some("/api/admin"));
    }

    #[test]
    fn empty_segments_in_every_spelling_are_refused() {
        for p in [
            "//api/admin",
            "///api/admin",
            "/api//admin",
            "/%2F/api/admin",
            "/%2f%2fapi/admin",
            "/;/api/admin",
            "/api/;x/admin",
            "/api/x%2F/admin",
        ] {
            assert_eq!(
                check(p.as_bytes(), p),
                Err(TargetError::EmptySegment),
                "{p}"
            );
        }
        assert_eq!(
            check(b"http://app.example//api/admin", "//api/admin"),
            Err(TargetError::EmptySegment)
        );
        for p in ["/", "/api/", "/api/x/"] {
            assert!(check(p.as_bytes(), p).is_ok(), "{p}");
        }
    }
}
