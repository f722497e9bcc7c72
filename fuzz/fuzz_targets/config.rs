//! The config file and `TOLLGATE__*` overrides, loaded as `Config::load` loads them but with
//! the overrides given (never the process environment).
//!
//! Input: TOML text, then optionally a NUL byte and override lines `NAME=VALUE` (`TOLLGATE__`
//! is prepended to each NAME). Inputs that name a `*_file` key (or could, through a TOML
//! `\u` escape) are skipped: those are read from disk, and a fuzzer that finds `/dev/zero`
//! would only stall itself.
//!
//! Invariants for a config that loads: every header value tollgate builds from it is valid
//! (session, chunk, login and logout `Set-Cookie` lines, the token requests' `Authorization`,
//! each route's `Host`); and every route prefix and endpoint path can be reached, i.e. is a
//! path the request-target check passes unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing;
use tollgate_fuzz::assert_header_value;

fuzz_target!(|data: &[u8]| {
    let lower = data.to_ascii_lowercase();
    if lower.windows(5).any(|w| w == b"_file") || lower.windows(2).any(|w| w == b"\\u") {
        return;
    }
    let (text, overrides) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let vars: Vec<(String, String)> = String::from_utf8_lossy(overrides)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(n, v)| (format!("TOLLGATE__{n}"), v.to_string()))
        .collect();
    let Ok(config) = fuzzing::config(text, vars) else {
        return;
    };
    let values = fuzzing::config_header_values(&config).expect("a valid config starts");
    for v in &values {
        assert_header_value("a header value built from the config", v);
    }
    for r in &config.routes {
        assert!(
            fuzzing::is_routable_as_written(&r.prefix),
            "route prefix {:?} can never match a request",
            r.prefix
        );
    }
    for p in [
        &config.oidc.callback_path,
        &config.oidc.backchannel_logout_path,
    ] {
        assert!(
            fuzzing::is_routable_as_written(p),
            "endpoint path {p:?} can never match a request"
        );
    }
});
