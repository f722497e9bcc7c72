//! `return_to`: where the browser goes after login, limited to this origin.
//!
//! An open redirect on the login endpoint would let a phishing link bounce users through our
//! trusted domain to anywhere. Only a same-origin relative path is accepted: it starts with a
//! single `/`, has no backslash, no control or whitespace character, and still does when
//! percent-decoded once more (so `%2F%2Fevil.example` cannot become `//evil.example` in a
//! lenient browser). Anything else falls back to `/`.

/// The longest `return_to` kept; longer ones fall back to `/`. It travels sealed in the login
/// cookie, and a few pending logins must fit in a browser's `Cookie` header beside the session.
pub(crate) const MAX_LEN: usize = 512;

/// `raw` is the already query-decoded parameter value.
pub(crate) fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(p) if is_safe(p) => p.to_string(),
        _ => "/".to_string(),
    }
}

fn is_safe(p: &str) -> bool {
    if p.len() > MAX_LEN || !looks_local(p) {
        return false;
    }
    // Decoded once more, the path must still not name another host, nor hide a line break.
    let decoded = percent_encoding::percent_decode_str(p).decode_utf8_lossy();
    decoded.starts_with('/')
        && !decoded.starts_with("//")
        && !decoded.starts_with("/\\")
        && !decoded.chars().any(char::is_control)
}

fn looks_local(p: &str) -> bool {
    p.starts_with('/')
        && !p.starts_with("//")
        && !p.contains('\\')
        && !p.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_local_paths() {
        for p in [
            "/",
            "/app",
            "/app/items?id=3&x=%20y",
            "/a#frag",
            "/%E2%9C%93",
        ] {
            assert_eq!(safe_return_to(Some(p)), p, "{p}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for p in [
            "//evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "https://evil.example",
            "http:evil.example",
            "evil.example",
            "%2F%2Fevil.example",
            "/%2F/evil.example",
            "/%5Cevil.example",
            "/a\nb",
            "/a\tb",
            "/a\u{0}b",
            "/a%0Ab",
            " /a",
            "",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_return_to(Some(p)), "/", "{p:?}");
        }
        assert_eq!(safe_return_to(None), "/");
        assert_eq!(
            safe_return_to(Some(&format!("/{}", "a".repeat(MAX_LEN)))),
            "/"
        );
    }
}
