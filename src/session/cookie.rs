//! Carrying a sealed value in cookies: reading, chunking and `Set-Cookie` lines.
//!
//! Browsers cap one cookie at about 4 KB, and a session with three real-world JWTs seals to more
//! than that. A sealed value up to [`CHUNK_SIZE`] bytes travels as one cookie `NAME`; a longer
//! one is split over `NAME.0`, `NAME.1`, …, and `NAME.0`'s value starts with the chunk count and
//! a dot (`3.xxxx`; the dot is outside the base64url alphabet) so that a missing chunk is
//! reported as such instead of as a decryption failure. Every write also expires the cookies
//! of the previous layout that the new one does not overwrite (stale chunks, or the single
//! cookie after a switch to chunks), so no leftovers confuse the next read.

use std::borrow::Cow;
use std::time::Duration;

use cookie::Cookie;

use crate::config::SameSite;
pub use crate::config::{CHUNK_SIZE, MAX_CHUNKS};

/// Why the session cookie(s) could not be reassembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("no session cookie")]
    Missing,
    #[error("session chunk {0} is missing")]
    MissingChunk(usize),
    #[error("session chunk header is malformed")]
    Malformed,
    #[error("sealed session is too large for {MAX_CHUNKS} cookies")]
    TooLarge,
    /// Chunk 0 announces more chunks than any tollgate writes.
    #[error("the session announces more than {MAX_CHUNKS} chunks")]
    TooManyChunks,
}

/// The session cookies found in a request, borrowed from its `Cookie` headers.
#[derive(Debug, Default)]
pub struct SessionCookies<'a> {
    single: Option<&'a str>,
    chunks: [Option<&'a str>; MAX_CHUNKS],
    /// The DBSC bound cookie `name-bound`, found in the same pass (a second scan of a
    /// several-KB `Cookie` field cost 2,700 instructions a request).
    bound: Option<&'a str>,
}

/// Whether `candidate` is one of the cookies tollgate writes for the session named `name`:
/// the name itself, a chunk `name.N` (N below [`MAX_CHUNKS`]), a login cookie
/// `name-login-STATE`, the pending-logout cookie `name-logout` or the DBSC bound cookie
/// `name-bound`. Nothing else: an app's own `name-theme` is the app's, passes to the upstream
/// and may be set by it.
pub(crate) fn is_own_cookie(candidate: &str, name: &str) -> bool {
    let Some(rest) = candidate.strip_prefix(name) else {
        return false;
    };
    if rest.is_empty() || rest == LOGOUT_SUFFIX || rest == BOUND_SUFFIX {
        return true;
    }
    if let Some(index) = rest.strip_prefix('.') {
        return chunk_index(index).is_some();
    }
    rest.strip_prefix(LOGIN_INFIX)
        .is_some_and(is_plausible_state)
}

/// `N` of a chunk name `NAME.N`: exactly as tollgate writes it, one decimal digit (there are
/// at most [`MAX_CHUNKS`] = 10).
fn chunk_index(index: &str) -> Option<usize> {
    match index.as_bytes() {
        [d @ b'0'..=b'9'] => Some(usize::from(d - b'0')).filter(|i| *i < MAX_CHUNKS),
        _ => None,
    }
}

const LOGIN_INFIX: &str = "-login-";
const LOGOUT_SUFFIX: &str = "-logout";
const BOUND_SUFFIX: &str = "-bound";

/// The DBSC bound cookie of the session cookie `session_cookie` (see [`super::dbsc`]).
pub(crate) fn bound_cookie_name(session_cookie: &str) -> String {
    format!("{session_cookie}{BOUND_SUFFIX}")
}

/// The login cookie of the login with `state` (see `oidc::login`).
pub fn login_cookie_name(session_cookie: &str, state: &str) -> String {
    format!("{session_cookie}{LOGIN_INFIX}{state}")
}

/// The `state` of a login cookie named `candidate`, if it is one.
pub(crate) fn login_cookie_state<'c>(candidate: &'c str, session_cookie: &str) -> Option<&'c str> {
    candidate
        .strip_prefix(session_cookie)?
        .strip_prefix(LOGIN_INFIX)
        .filter(|s| is_plausible_state(s))
}

/// The cookie that carries a pending provider logout (see `oidc::logout`).
pub(crate) fn logout_cookie_name(session_cookie: &str) -> String {
    format!("{session_cookie}{LOGOUT_SUFFIX}")
}

/// Whether `state` could have come from tollgate's random tokens (and so is safe in a cookie
/// name): 16 to 64 base64url characters.
pub(crate) fn is_plausible_state(state: &str) -> bool {
    (16..=64).contains(&state.len())
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Splits a `Cookie` header value into `(name, value)` pairs, trimmed of ASCII whitespace
/// only, without decoding. (The upstream rewrite trims the same way: a name that only
/// Unicode trimming would make tollgate's, `\u{a0}tollgate`, is nobody's session on either
/// side.)
pub(crate) fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    // `;` is ASCII, so every range starts and ends on a character boundary.
    pair_ranges(header.as_bytes()).filter_map(|r| {
        let part = header.get(r)?;
        let (n, v) = part.split_once('=')?;
        let v = v.trim_ascii();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        Some((n.trim_ascii(), v))
    })
}

/// Where the `;`-separated parts of a `Cookie` field are, found with `memchr` (SIMD): the
/// session makes this field several KB, and `str::split` cost 1,500 instructions a request
/// to scan it, twice (here and in the upstream rewrite).
pub(crate) fn pair_ranges(field: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    memchr::memchr_iter(b';', field)
        .chain(std::iter::once(field.len()))
        .map(move |end| {
            let range = start..end;
            start = end + 1;
            range
        })
}

/// The value of the first cookie named exactly `name` in the given `Cookie` header values.
pub(crate) fn find<'a, I>(name: &str, headers: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    headers
        .into_iter()
        .flat_map(pairs)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

impl<'a> SessionCookies<'a> {
    /// Finds the session cookie `name` and its chunks in the given `Cookie` header values.
    pub(crate) fn scan<I>(name: &str, headers: I) -> Self
    where
        I: IntoIterator<Item = &'a str>,
    {
        let mut found = SessionCookies::default();
        for header in headers {
            for (n, v) in pairs(header) {
                let Some(rest) = n.strip_prefix(name) else {
                    continue;
                };
                if rest.is_empty() {
                    found.single.get_or_insert(v);
                } else if let Some(idx) = rest.strip_prefix('.') {
                    if let Some(slot) = chunk_index(idx).and_then(|i| found.chunks.get_mut(i)) {
                        slot.get_or_insert(v);
                    }
                } else if rest == BOUND_SUFFIX {
                    found.bound.get_or_insert(v);
                }
            }
        }
        found
    }

    /// The bound cookie's value, if the request carried one.
    pub(crate) fn bound(&self) -> Option<&'a str> {
        self.bound
    }

    /// Reassembles the sealed value. Chunks win over a single cookie (a writer that switches to
    /// chunks expires the single cookie, but a browser may still send both once).
    pub(crate) fn value(&self) -> Result<Cow<'a, str>, ChunkError> {
        let Some(first) = self.chunks[0] else {
            if self.chunks.iter().any(Option::is_some) {
                return Err(ChunkError::MissingChunk(0));
            }
            return self.single.map(Cow::Borrowed).ok_or(ChunkError::Missing);
        };
        let (count, data) = first.split_once('.').ok_or(ChunkError::Malformed)?;
        let count: usize = count.parse().map_err(|_| ChunkError::Malformed)?;
        if count == 0 {
            return Err(ChunkError::Malformed);
        }
        if count > MAX_CHUNKS {
            return Err(ChunkError::TooManyChunks);
        }
        let mut out = String::with_capacity(count * CHUNK_SIZE);
        out.push_str(data);
        for (i, chunk) in self.chunks.iter().enumerate().take(count).skip(1) {
            out.push_str(chunk.ok_or(ChunkError::MissingChunk(i))?);
        }
        Ok(Cow::Owned(out))
    }

    /// The names of the session cookies present, as `Set-Cookie` deletions need them.
    fn present(&self, name: &str) -> Vec<String> {
        let mut names = Vec::new();
        if self.single.is_some() {
            names.push(name.to_string());
        }
        for (i, c) in self.chunks.iter().enumerate() {
            if c.is_some() {
                names.push(format!("{name}.{i}"));
            }
        }
        names
    }
}

/// The `Set-Cookie` line of every cookie tollgate writes: HttpOnly, `Path=/`, `Secure` with an
/// https `public_url`, the given `SameSite`, `Max-Age` (zero deletes).
pub(crate) fn cookie_line(
    name: &str,
    value: &str,
    max_age: Duration,
    secure: bool,
    same_site: SameSite,
) -> String {
    Cookie::build((name, value))
        .http_only(true)
        .path("/")
        .secure(secure)
        .same_site(match same_site {
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
        })
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX),
        ))
        .build()
        .to_string()
}

/// Cookie attributes shared by every session cookie tollgate writes.
#[derive(Debug, Clone)]
pub(crate) struct CookieAttrs {
    pub secure: bool,
    pub same_site: SameSite,
}

impl CookieAttrs {
    fn build(&self, name: String, value: String, max_age: Duration) -> String {
        cookie_line(&name, &value, max_age, self.secure, self.same_site)
    }

    /// `Set-Cookie` lines that store `sealed` under `name` for `max_age`, and expire whatever
    /// session cookies in `previous` the new layout does not overwrite.
    pub(crate) fn store(
        &self,
        name: &str,
        sealed: &str,
        max_age: Duration,
        previous: &SessionCookies<'_>,
    ) -> Result<Vec<String>, ChunkError> {
        let mut written: Vec<(String, String)> = Vec::new();
        if sealed.len() <= CHUNK_SIZE {
            written.push((name.to_string(), sealed.to_string()));
        } else {
            // Chunk 0 carries the count (`N.`), which may push one more chunk, whose count may
            // be one digit wider: settle on the count that holds value and prefix together.
            let mut count = sealed.len().div_ceil(CHUNK_SIZE);
            let mut prefix_len = count.to_string().len() + 1;
            while (sealed.len() + prefix_len).div_ceil(CHUNK_SIZE) != count {
                count = (sealed.len() + prefix_len).div_ceil(CHUNK_SIZE);
                prefix_len = count.to_string().len() + 1;
            }
            if count > MAX_CHUNKS {
                return Err(ChunkError::TooLarge);
            }
            let first_len = CHUNK_SIZE - prefix_len;
            written.push((
                format!("{name}.0"),
                format!("{count}.{}", &sealed[..first_len]),
            ));
            for (i, part) in sealed.as_bytes()[first_len..]
                .chunks(CHUNK_SIZE)
                .enumerate()
            {
                // base64url is ASCII, so any byte boundary is a char boundary.
                let part = String::from_utf8_lossy(part).into_owned();
                written.push((format!("{name}.{}", i + 1), part));
            }
        }
        let mut lines: Vec<String> = Vec::with_capacity(written.len() + 2);
        for stale in previous.present(name) {
            if !written.iter().any(|(n, _)| *n == stale) {
                lines.push(self.build(stale, String::new(), Duration::ZERO));
            }
        }
        for (n, v) in written {
            lines.push(self.build(n, v, max_age));
        }
        Ok(lines)
    }

    /// `Set-Cookie` lines that expire every session cookie in `previous` (logout, bad session).
    pub(crate) fn clear(&self, name: &str, previous: &SessionCookies<'_>) -> Vec<String> {
        previous
            .present(name)
            .into_iter()
            .map(|n| self.build(n, String::new(), Duration::ZERO))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ATTRS: CookieAttrs = CookieAttrs {
        secure: true,
        same_site: SameSite::Lax,
    };

    /// Turns `Set-Cookie` lines into the `Cookie` header a browser would send next.
    fn browser_cookie_header(lines: &[String]) -> String {
        lines
            .iter()
            .filter_map(|l| {
                let c = Cookie::parse(l.as_str()).unwrap();
                (c.max_age() != Some(cookie::time::Duration::ZERO))
                    .then(|| format!("{}={}", c.name(), c.value()))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn sealed_of_len(n: usize) -> String {
        (0..n).map(|i| (b'A' + (i % 26) as u8) as char).collect()
    }

    #[test]
    fn small_value_is_one_cookie_with_attributes() {
        let lines = ATTRS
            .store(
                "__Host-tg",
                "abc",
                Duration::from_secs(60),
                &SessionCookies::default(),
            )
            .unwrap();
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        for attr in [
            "__Host-tg=abc",
            "HttpOnly",
            "Path=/",
            "SameSite=Lax",
            "Secure",
            "Max-Age=60",
        ] {
            assert!(l.contains(attr), "{l} lacks {attr}");
        }
        let header = browser_cookie_header(&lines);
        let scan = SessionCookies::scan("__Host-tg", [header.as_str()]);
        assert_eq!(scan.value().unwrap(), "abc");
    }

    /// The `Set-Cookie` lines storing `sealed` as cookie `tg` for a browser that has none.
    fn store_tg(sealed: &str) -> Vec<String> {
        ATTRS
            .store(
                "tg",
                sealed,
                Duration::from_secs(60),
                &SessionCookies::default(),
            )
            .unwrap()
    }

    /// Found by the `cookie_header` fuzz target: the upstream rewrite trims cookie names of
    /// ASCII whitespace, so the session scan must not trim more (a no-break space) and find a
    /// session in a cookie the rewrite passes on.
    #[test]
    fn names_are_trimmed_of_ascii_whitespace_only() {
        let scan = SessionCookies::scan("tg", ["\u{a0}tg=abc; \ttg.9 =x"]);
        assert_eq!(scan.single, None);
        let scan = SessionCookies::scan("tg", [" \ttg=abc"]);
        assert_eq!(scan.value().unwrap(), "abc");
    }

    /// The bound cookie comes out of the same pass, and only under its exact name.
    #[test]
    fn the_scan_finds_the_bound_cookie() {
        let scan = SessionCookies::scan("tg", ["tg=abc; app=1", "tg-bound=xyz; tg-boundx=no"]);
        assert_eq!(scan.bound(), Some("xyz"));
        assert_eq!(scan.value().unwrap(), "abc");
        let scan = SessionCookies::scan("tg", ["tg-boundx=no; tg=abc"]);
        assert_eq!(scan.bound(), None);
    }

    #[test]
    fn large_value_is_chunked_and_reassembled() {
        for len in [CHUNK_SIZE + 1, 3 * CHUNK_SIZE - 2, 3 * CHUNK_SIZE, 9000] {
            let sealed = sealed_of_len(len);
            let lines = store_tg(&sealed);
            assert!(lines.len() >= 2);
            for l in &lines {
                assert!(l.len() < 4096, "cookie line too long: {}", l.len());
            }
            let header = format!("other=1; {}; last=2", browser_cookie_header(&lines));
            let scan = SessionCookies::scan("tg", [header.as_str()]);
            assert_eq!(scan.value().unwrap(), sealed, "len {len}");
        }
    }

    #[test]
    fn missing_chunk_is_reported() {
        let sealed = sealed_of_len(3 * CHUNK_SIZE);
        let lines = store_tg(&sealed);
        let header = browser_cookie_header(&lines);
        let without_1: String = pairs(&header)
            .filter(|(n, _)| *n != "tg.1")
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let scan = SessionCookies::scan("tg", [without_1.as_str()]);
        assert_eq!(scan.value(), Err(ChunkError::MissingChunk(1)));
        let without_0: String = pairs(&header)
            .filter(|(n, _)| *n != "tg.0")
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let scan = SessionCookies::scan("tg", [without_0.as_str()]);
        assert_eq!(scan.value(), Err(ChunkError::MissingChunk(0)));
        assert_eq!(
            SessionCookies::scan("tg", ["tg.0=x"]).value(),
            Err(ChunkError::Malformed)
        );
        assert_eq!(
            SessionCookies::scan("tg", ["other=1"]).value(),
            Err(ChunkError::Missing)
        );
    }

    #[test]
    fn stale_chunks_are_cleared() {
        // Previously three chunks; now a small value: the single cookie is written and all
        // three chunks expire.
        let old = "tg.0=3.a; tg.1=b; tg.2=c";
        let prev = SessionCookies::scan("tg", [old]);
        let lines = ATTRS
            .store("tg", "small", Duration::from_secs(60), &prev)
            .unwrap();
        for stale in ["tg.0=;", "tg.1=;", "tg.2=;"] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with(stale) && l.contains("Max-Age=0")),
                "{stale} not expired in {lines:?}"
            );
        }
        // Previously a single cookie and four chunks; now two chunks: the single cookie and
        // chunks 2 and 3 expire.
        let prev = SessionCookies::scan("tg", ["tg=x; tg.0=4.a; tg.1=b; tg.2=c; tg.3=d"]);
        let lines = ATTRS
            .store(
                "tg",
                &sealed_of_len(CHUNK_SIZE + 10),
                Duration::from_secs(60),
                &prev,
            )
            .unwrap();
        let expired: Vec<&str> = lines
            .iter()
            .filter(|l| l.contains("Max-Age=0"))
            .map(|l| l.split('=').next().unwrap())
            .collect();
        assert_eq!(expired, ["tg", "tg.2", "tg.3"]);
        let header = browser_cookie_header(&lines);
        assert_eq!(
            SessionCookies::scan("tg", [header.as_str()])
                .value()
                .unwrap(),
            sealed_of_len(CHUNK_SIZE + 10)
        );
    }

    #[test]
    fn clear_expires_everything_present() {
        let prev = SessionCookies::scan("tg", ["tg=x; a=1", "tg.0=2.a; tg.1=b"]);
        let lines = ATTRS.clear("tg", &prev);
        assert_eq!(lines.len(), 3);
        assert!(lines
            .iter()
            .all(|l| l.contains("Max-Age=0") && l.contains("Secure")));
    }

    #[test]
    fn too_large_is_an_error() {
        let sealed = sealed_of_len(CHUNK_SIZE * MAX_CHUNKS + 1);
        assert_eq!(
            ATTRS.store(
                "tg",
                &sealed,
                Duration::from_secs(1),
                &SessionCookies::default()
            ),
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn own_cookie_names_are_exactly_those_tollgate_writes() {
        let state = "Zm9vYmFyYmF6cXV4cXV1eA";
        for n in [
            "tg".to_string(),
            "tg.0".into(),
            "tg.9".into(),
            login_cookie_name("tg", state),
            logout_cookie_name("tg"),
            bound_cookie_name("tg"),
        ] {
            assert!(is_own_cookie(&n, "tg"), "{n}");
        }
        // An app's cookies that merely start with the session cookie's name are the app's.
        for n in [
            "tgx",
            "other",
            "t",
            "xtg",
            "tg-theme",
            "tg.12",
            "tg.01",
            "tg.x",
            "tg.+1",
            "tg-login-short",
            "tg-login.abc",
            "tg-logout-x",
            "tg-bound-x",
        ] {
            assert!(!is_own_cookie(n, "tg"), "{n}");
        }
        assert_eq!(
            login_cookie_state(&login_cookie_name("tg", state), "tg"),
            Some(state)
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const ATTRS: CookieAttrs = CookieAttrs {
        secure: true,
        same_site: SameSite::Lax,
    };

    /// The largest sealed value that fits the chunk cap.
    fn cap() -> usize {
        let digits = MAX_CHUNKS.to_string().len() + 1;
        MAX_CHUNKS * CHUNK_SIZE - digits
    }

    /// The `Cookie` header a browser sends back for the `Set-Cookie` lines.
    fn sent_back(lines: &[String]) -> (String, Vec<usize>) {
        let mut pairs = Vec::new();
        let mut sizes = Vec::new();
        for l in lines {
            let c = ::cookie::Cookie::parse(l.as_str()).unwrap();
            if c.max_age() != Some(::cookie::time::Duration::ZERO) {
                sizes.push(c.value().len());
                pairs.push(format!("{}={}", c.name(), c.value()));
            }
        }
        (pairs.join("; "), sizes)
    }

    fn base64url(len: usize, seed: u64) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|i| A[((i as u64).wrapping_mul(31).wrapping_add(seed) % 64) as usize] as char)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any sealed value up to the cap is written as cookies no larger than a chunk and
        /// reads back whole; one byte more is refused.
        #[test]
        fn chunks_round_trip_up_to_the_cap(len in 1..=cap(), seed in any::<u64>()) {
            let sealed = base64url(len, seed);
            let lines = ATTRS
                .store("__Host-tg", &sealed, Duration::from_secs(60), &SessionCookies::default())
                .unwrap();
            let (header, sizes) = sent_back(&lines);
            prop_assert!(sizes.iter().all(|s| *s <= CHUNK_SIZE), "{sizes:?}");
            let found = SessionCookies::scan("__Host-tg", [header.as_str()]);
            prop_assert_eq!(found.value().unwrap(), sealed.as_str());
        }

        /// Any value longer than the cap is refused, never silently cut.
        #[test]
        fn beyond_the_cap_is_refused(extra in 1usize..5000) {
            let sealed = base64url(cap() + extra, 0);
            let stored = ATTRS.store("__Host-tg", &sealed, Duration::from_secs(60), &SessionCookies::default());
            prop_assert!(matches!(stored, Err(ChunkError::TooLarge)));
        }
    }

    /// The sizes where the chunk count (and the width of its prefix) changes, exactly.
    #[test]
    fn every_chunk_boundary_round_trips() {
        for count in 1..=MAX_CHUNKS {
            let edge = count * CHUNK_SIZE;
            for len in edge.saturating_sub(4)..=edge + 4 {
                if len == 0 || len > cap() {
                    continue;
                }
                let sealed = base64url(len, 7);
                let lines = ATTRS
                    .store(
                        "__Host-tg",
                        &sealed,
                        Duration::from_secs(60),
                        &SessionCookies::default(),
                    )
                    .unwrap();
                let (header, sizes) = sent_back(&lines);
                assert!(sizes.iter().all(|s| *s <= CHUNK_SIZE), "{len}: {sizes:?}");
                let found = SessionCookies::scan("__Host-tg", [header.as_str()]);
                assert_eq!(found.value().unwrap(), sealed, "{len}");
            }
        }
    }
}
