//! What the fuzz targets share: the harness (built once per process) and the invariants.

use std::sync::OnceLock;

use http::HeaderValue;
pub use tollgate::fuzzing::{self, Harness};

/// The captured provider artefacts (`fuzz/seeds/capture.sh`).
pub mod idp {
    pub const DISCOVERY: &[u8] = include_bytes!("../seeds/idp/discovery.json");
    pub const JWKS: &[u8] = include_bytes!("../seeds/idp/jwks.json");
    pub const ID_TOKEN: &str = include_str!("../seeds/idp/id_token.jwt");
    pub const LOGOUT_TOKEN: &str = include_str!("../seeds/idp/logout_token.jwt");
    pub const NONCE: &str = include_str!("../seeds/idp/nonce.txt");
    pub const ACCESS_TOKEN: &str = include_str!("../seeds/idp/access_token.txt");
}

/// Real sealed sessions, one `Cookie` header per line (`fuzz/seeds/sessions.txt`, written by
/// `cargo run --example fuzz_seeds`): the only seals a fuzzer can know.
pub const SESSIONS: &str = include_str!("../seeds/sessions.txt");

pub fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| Harness::new(idp::DISCOVERY, idp::JWKS))
}

/// Splits fuzz input into up to `n` parts at `\n` (the last part keeps the rest).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == b'\n').collect()
}

/// Every `Set-Cookie` line and `Location` tollgate builds must be a valid header value.
pub fn assert_header_value(what: &str, value: &str) {
    assert!(
        HeaderValue::from_str(value).is_ok(),
        "{what} is not a valid header value: {value:?}"
    );
}

/// A path tollgate routes on or sends upstream: starts with `/`, and has no empty segment, no
/// `.` or `..` segment, no backslash and no control character.
pub fn assert_normal_path(what: &str, path: &str) {
    assert!(
        path.starts_with('/'),
        "{what} {path:?} does not start with /"
    );
    assert!(!path.contains("//"), "{what} {path:?} has an empty segment");
    assert!(
        !path.split('/').any(|s| s == "." || s == ".."),
        "{what} {path:?} has a dot segment"
    );
    assert!(!path.contains('\\'), "{what} {path:?} has a backslash");
    assert!(
        !path.chars().any(char::is_control),
        "{what} {path:?} has a control character"
    );
}

/// `path` as an upstream that decodes every escape once and drops `;params` reads it.
pub fn fully_decoded(path: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// A `return_to` (or the `Location` after login) stays on this origin: a path that starts with
/// a single `/`, no backslash or control character, and still so when percent-decoded once more
/// (what a lenient browser might do).
pub fn assert_same_origin(what: &str, location: &str) {
    for p in [
        location.to_string(),
        percent_encoding::percent_decode_str(location)
            .decode_utf8_lossy()
            .into_owned(),
    ] {
        assert!(
            p.starts_with('/') && !p.starts_with("//") && !p.starts_with("/\\"),
            "{what} {location:?} leaves the origin"
        );
        assert!(
            !p.chars().any(|c| c.is_control()),
            "{what} {location:?} has a control character"
        );
    }
    assert!(
        !location.contains('\\'),
        "{what} {location:?} has a backslash"
    );
    assert!(
        !location.chars().any(char::is_whitespace),
        "{what} {location:?} has whitespace"
    );
}

/// The `(name, value)` pairs of `Cookie` header values, as a server reads them.
pub fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|part| {
        let part = part.trim_ascii();
        if part.is_empty() {
            return None;
        }
        Some(match part.split_once('=') {
            Some((n, v)) => (n.trim_ascii(), v.trim_ascii()),
            None => (part, ""),
        })
    })
}
