//! `Cookie` headers: session cookie scanning with chunk reassembly (`SessionCookies::scan`,
//! `value`), the upstream `Cookie` rewrite (tollgate's cookies removed), and the `Set-Cookie`
//! lines that clear or replace the session cookies a request carried.
//!
//! Input: a mode byte. Mode 0: up to four `Cookie` header values, one per line. Invariants:
//! every `Set-Cookie` line is a valid header value; the upstream gets none of tollgate's
//! cookies (by tollgate's own definition and by name) and every other cookie unchanged, in
//! order, ASCII text or not. Mode 1: the rest, reduced to base64url characters, is stored as a sealed value
//! (chunked when long) and read back from the `Cookie` header a browser sends: it must come
//! back unchanged whenever it fits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::{assert_header_value, cookie_pairs, fuzzing::COOKIE, harness, parts};

/// tollgate's names, spelled out independently: the session cookie, its chunks `NAME.0`..`NAME.9`.
fn is_session_name(name: &str) -> bool {
    name.strip_prefix(COOKIE).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix('.')
                .is_some_and(|d| d.len() == 1 && d.as_bytes()[0].is_ascii_digit())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    if mode % 2 == 1 {
        let sealed: String = rest
            .iter()
            .map(|&b| {
                const A: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                A[usize::from(b) % 64] as char
            })
            .collect();
        let sealed = sealed.repeat(usize::from(mode / 2 % 8) + 1);
        let Ok(lines) = h.store_lines(&sealed) else {
            return; // too large for the cookies a browser keeps
        };
        for l in &lines {
            assert_header_value("Set-Cookie", l);
        }
        let header = h.browser_header(&lines);
        let out = h.cookie_header(&[header.as_str()]);
        assert_eq!(
            out.session.as_deref(),
            Ok(sealed.as_str()),
            "chunks did not reassemble"
        );
        return;
    }

    let headers: Vec<String> = parts(rest, 4)
        .into_iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let out = h.cookie_header(&headers);
    for l in out.clear_lines.iter().chain(&out.store_lines) {
        assert_header_value("Set-Cookie", l);
    }
    let upstream = out.upstream_cookies.expect("the upstream rewrite failed");
    for value in &upstream {
        assert_header_value("upstream Cookie", value);
        for (name, _) in cookie_pairs(value) {
            assert!(
                !h.is_own_cookie(name),
                "{name:?} reached the upstream in {value:?}"
            );
            assert!(
                !is_session_name(name),
                "{name:?} reached the upstream in {value:?}"
            );
        }
        assert!(
            h.cookie_header(&[value.as_str()]).session.is_err(),
            "a session cookie reached the upstream in {value:?}"
        );
    }
    // Every other cookie passes as it was: the headers that are valid `Cookie` values, split.
    // Cookie whitespace is SP and HTAB (RFC 6265), trimmed as ASCII; cookies that are not
    // ASCII text pass too (since the rewrite works on bytes).
    let kept: Vec<String> = headers
        .iter()
        .filter(|v| http::HeaderValue::from_str(v).is_ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim_ascii)
        .filter(|p| !p.is_empty())
        .filter(|p| !h.is_own_cookie(p.split_once('=').map_or(*p, |(n, _)| n.trim_ascii_end())))
        .map(str::to_string)
        .collect();
    let passed: Vec<String> = upstream
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim_ascii)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(passed, kept, "the upstream Cookie lost or changed a cookie");
});
