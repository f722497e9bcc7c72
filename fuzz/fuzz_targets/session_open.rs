//! Opening a sealed session: the session cookies of a request on an `auth = "required"` route,
//! reassembled, decrypted, decoded and checked as the hot path does (`Gate::decide`).
//!
//! Input: a mode byte. Mode 0: up to four `Cookie` header values (one per line); a session
//! opens only if its reassembled seal is one of the real seals in `seeds/sessions.txt` (the
//! fuzzer cannot know another). Mode 1: bytes of a real seal flipped (pairs of position and
//! XOR mask): a mutated seal never opens. Mode 2: any payload sealed with the session key
//! (what only a key holder could make): decoding it never panics. Always: the bearer value
//! and every `Set-Cookie` line tollgate builds are valid header values.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::{assert_header_value, fuzzing::COOKIE, harness, parts, SESSIONS};

/// The reassembled seals of the real sessions.
fn known() -> &'static Vec<String> {
    static KNOWN: OnceLock<Vec<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        SESSIONS
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                harness()
                    .cookie_header(&[l])
                    .session
                    .expect("a real sealed session")
            })
            .collect()
    })
}

fn check(out: &tollgate::fuzzing::SessionOutcome) {
    if let Some(b) = &out.bearer {
        assert!(b.as_bytes().starts_with(b"Bearer "), "bearer {b:?}");
    }
    let refused = out.refused.iter().flat_map(|r| &r.set_cookies);
    for line in out.set_cookies.iter().chain(refused) {
        assert_header_value("Set-Cookie", line);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    match mode % 3 {
        0 => {
            let headers: Vec<String> = parts(rest, 4)
                .into_iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            let out = h.session_open(&headers);
            check(&out);
            if out.opened.is_ok() {
                let sealed = out.sealed.as_deref().unwrap_or_default();
                assert!(
                    known().iter().any(|k| k == sealed),
                    "a seal that tollgate never made opened: {headers:?}"
                );
            }
        }
        1 => {
            let Some((&which, flips)) = rest.split_first() else {
                return;
            };
            let original = &known()[usize::from(which) % known().len()];
            let mut sealed = original.clone().into_bytes();
            for f in flips.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([f[0], f[1]])) % sealed.len();
                sealed[at] ^= f[2];
            }
            let Ok(sealed) = String::from_utf8(sealed) else {
                return;
            };
            if sealed == *original {
                return;
            }
            let header = format!("{COOKIE}={sealed}");
            let out = h.session_open(&[header.as_str()]);
            check(&out);
            assert!(
                out.opened.is_err() || out.sealed.as_deref() == Ok(original.as_str()),
                "a mutated seal opened: {sealed:?} (from {original:?})"
            );
        }
        _ => {
            let Some(header) = h.seal_payload(rest) else {
                return;
            };
            check(&h.session_open(&[header.as_str()]));
        }
    }
});
