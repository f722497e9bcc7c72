//! ID tokens and back-channel logout tokens, checked as `/callback` (and a refresh) and the
//! back-channel logout endpoint check them, against a fixed provider key set: the JWKS
//! captured from the test provider, whose key signed the seed tokens.
//!
//! Input: a mode byte, then the token (or request body). Modes: 0 an ID token with the login's
//! nonce; 1 an ID token from a refresh (no nonce); 2 a back-channel logout request body
//! (`logout_token=…`), without the replay check; 3 the whole back-channel logout endpoint.
//!
//! Invariants: an accepted token is one the provider signed (its signing input is a seed's: the
//! fuzzer cannot sign), and its claims are what tollgate requires: `iss` the issuer, `aud`
//! containing the client id, the login's nonce for an ID token; for a logout token the logout
//! event, `sid` or `sub`, and no nonce. The endpoint answers 200 only to a token that passes.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing::{CLIENT_ID, ISSUER};
use tollgate_fuzz::{harness, idp};

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn signing_input(token: &str) -> &str {
    token.trim().rsplit_once('.').map_or("", |(input, _)| input)
}

fn payload(token: &str) -> serde_json::Value {
    let part = token.trim().split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("an accepted token's payload decodes");
    serde_json::from_slice(&bytes).expect("an accepted token's payload is JSON")
}

fn audience_ok(claims: &serde_json::Value) -> bool {
    match &claims["aud"] {
        serde_json::Value::String(a) => a == CLIENT_ID,
        serde_json::Value::Array(a) => a.iter().any(|v| v == CLIENT_ID),
        _ => false,
    }
}

fn logout_token_of(body: &[u8]) -> String {
    let form = String::from_utf8_lossy(body);
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    form.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| decode(k) == "logout_token")
        .map(|(_, v)| decode(v))
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    match mode % 4 {
        m @ (0 | 1) => {
            let token = String::from_utf8_lossy(rest);
            let nonce = (m == 0).then_some(idp::NONCE);
            let Ok(sub) = h.id_token(&token, nonce, idp::ACCESS_TOKEN) else {
                return;
            };
            assert_eq!(
                signing_input(&token),
                signing_input(idp::ID_TOKEN),
                "an ID token the provider did not sign was accepted: {token:?}"
            );
            let c = payload(&token);
            assert_eq!(c["iss"], ISSUER);
            assert!(audience_ok(&c), "aud {:?}", c["aud"]);
            assert_eq!(c["sub"], sub.as_str());
            if let Some(n) = nonce {
                assert_eq!(c["nonce"], n);
            }
        }
        2 => {
            if h.logout_token(rest).is_err() {
                return;
            }
            let token = logout_token_of(rest);
            assert_eq!(
                signing_input(&token),
                signing_input(idp::LOGOUT_TOKEN),
                "a logout token the provider did not sign was accepted: {token:?}"
            );
            let c = payload(&token);
            assert_eq!(c["iss"], ISSUER);
            assert!(audience_ok(&c), "aud {:?}", c["aud"]);
            assert!(c["events"][EVENT].is_object(), "events {:?}", c["events"]);
            assert!(c["sid"].is_string() || c["sub"].is_string());
            assert!(c.get("nonce").is_none());
        }
        _ => {
            let reply = h.backchannel_logout(rest);
            assert!(reply.set_cookies.is_empty());
            if reply.status == 200 {
                assert!(
                    h.logout_token(rest).is_ok(),
                    "200 for a refused logout token"
                );
            }
        }
    }
});
