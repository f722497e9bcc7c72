//! The provider's JSON: token responses (code exchange and refresh), token error bodies,
//! discovery documents and JWK sets, read by the functions the fetches call.
//!
//! Input: a mode byte, then the body. Modes: 0 a token endpoint's 2xx body; 1 its error body;
//! 2 a discovery document for the configured issuer; 3 a JWKS (the first line is the `kid`
//! and algorithm of a token to find a key for, `kid alg`).
//!
//! Invariants: an accepted token response has a `Bearer` access token that is a valid header
//! value, and a session refreshed with it stores into valid `Set-Cookie` lines; the error code
//! kept is a plain word; accepted metadata is for the configured issuer, allows only asymmetric
//! ID token algorithms, and every endpoint URL (redirects are built from them) is a valid
//! header value with an http(s) scheme.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing::{Harness, ISSUER};
use tollgate_fuzz::{assert_header_value, harness, parts};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok((bearer, lines)) = harness().token_response(body) else {
                return;
            };
            let token = &bearer.as_bytes()[b"Bearer ".len()..];
            assert!(
                !token.is_empty() && token.iter().all(|b| (0x21..0x7f).contains(b)),
                "access token {token:?}"
            );
            for line in &lines {
                assert_header_value("Set-Cookie", line);
            }
        }
        1 => {
            let code = Harness::token_error(body);
            assert!(
                (1..=40).contains(&code.len())
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)),
                "provider error code {code:?}"
            );
        }
        2 => {
            let Ok(m) = harness().discovery(body) else {
                return;
            };
            assert_eq!(m.issuer, ISSUER);
            assert!(!m.id_token_algs.is_empty());
            for alg in &m.id_token_algs {
                assert!(!alg.starts_with("HS"), "symmetric ID token algorithm {alg}");
            }
            for url in &m.urls {
                assert_header_value("endpoint URL", url);
                // ISSUER is plain http (loopback), so http endpoints are allowed too.
                assert!(
                    url.starts_with("https://") || url.starts_with("http://"),
                    "endpoint scheme {url}"
                );
            }
        }
        _ => {
            let p = parts(body, 2);
            let head = String::from_utf8_lossy(p[0]);
            let (kid, alg) = head.split_once(' ').unwrap_or(("", &head));
            let kid = (!kid.is_empty()).then_some(kid);
            let Some(doc) = p.get(1) else {
                return;
            };
            if let Ok(found) = Harness::jwks(doc, kid, alg) {
                // Symmetric algorithms never find a key, whatever the set holds.
                assert!(!(found && alg.starts_with("HS")), "a key for {alg}");
            }
        }
    }
});
