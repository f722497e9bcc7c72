//! The request target: Pingora's parse, `target::check` (via `screen::screen`), the endpoint or
//! route decision (`Tollgate::destination`) and the upstream request target
//! (`Tollgate::rewrite_upstream`), for any request-target bytes.
//!
//! Invariants: a checked path and its fully decoded form have no empty or dot segment, no
//! backslash and no control character; the path routes exactly where its fully decoded form
//! routes (or the request is refused); the upstream request target is as normal, and a checked
//! target can always be rewritten.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::{assert_normal_path, fully_decoded, harness};

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let Some(out) = h.target_path(data) else {
        return;
    };
    let Ok((path, canonical)) = &out.checked else {
        assert!(
            out.destination.is_err(),
            "refused target {data:?} was routed"
        );
        return;
    };
    assert_normal_path("checked path", path);
    let decoded = fully_decoded(path);
    assert_normal_path("fully decoded path", &decoded);
    if let Some(c) = canonical {
        assert_normal_path("canonical path", c);
        assert_eq!(c, &decoded, "canonical form of {path:?}");
    }
    if let Ok(Some(index)) = out.destination {
        assert_eq!(
            h.route_of(&decoded),
            Some(index),
            "{path:?} routes to {:?} but its decoded form {decoded:?} to {:?}",
            h.prefix_of(index),
            h.route_of(&decoded).and_then(|i| h.prefix_of(i)),
        );
        match &out.upstream_target {
            Some(Ok(up)) => {
                let up_path = up.split('?').next().unwrap_or_default();
                assert_normal_path("upstream path", up_path);
                assert_normal_path("decoded upstream path", &fully_decoded(up_path));
            }
            other => panic!("checked target {path:?} was not rewritten: {other:?}"),
        }
    }
});
