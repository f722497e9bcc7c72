//! `/login`, `/callback` and `/logout` (with `/logout/continue`): their query parsing, the
//! cookies they read, and `return_to`, through the real handlers.
//!
//! Input: a mode byte, then the query, the `Cookie` header and the `Accept` header, one per
//! line. Modes: 0 `/login`; 1 `/callback` with the cookie of a login the harness started (a
//! literal `STATE` in the query becomes its state); 2 `/callback` as given; 3 `GET /logout`;
//! 4 `POST /logout`; 5 `safe_return_to` of the query as a raw value.
//!
//! Invariants: every `Location` and `Set-Cookie` tollgate builds is a valid header value;
//! `/login` redirects to the provider's authorization endpoint only, with a login cookie whose
//! `return_to` stays on this origin; `/callback` redirects only to such a `return_to`;
//! `/logout` sends the browser to the provider's end-session endpoint or
//! `post_logout_redirect_uri` only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing::{Harness, ReplyParts, COOKIE};
use tollgate_fuzz::{assert_header_value, assert_same_origin, harness, parts};

const AUTHORIZE: &str = "http://127.0.0.1:39123/test/as/authorize?";
const END_SESSION: &str = "http://127.0.0.1:39123/test/as/logout?";
const POST_LOGOUT: &str = "https://app.example.com/";

fn check(reply: &ReplyParts) {
    for (name, value) in &reply.headers {
        assert_header_value(name, value);
    }
    for line in &reply.set_cookies {
        assert_header_value("Set-Cookie", line);
    }
}

fn text(p: Option<&&[u8]>) -> Option<String> {
    p.map(|p| String::from_utf8_lossy(p).into_owned())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h = harness();
    let p = parts(rest, 3);
    let query = text(p.first());
    let cookie = text(p.get(1));
    let accept = text(p.get(2));
    match mode % 6 {
        0 => {
            let reply = h.login(query.as_deref(), cookie.as_deref(), accept.as_deref());
            check(&reply);
            if reply.status != 302 {
                return;
            }
            let location = reply.location().expect("a redirect has a location");
            assert!(
                location.starts_with(AUTHORIZE),
                "login went to {location:?}"
            );
            let login = reply.set_cookies.last().expect("a login cookie");
            let pair = login.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            assert!(name.starts_with(&format!("{COOKIE}-login-")), "{login:?}");
            let return_to = h
                .login_return_to(name, value)
                .expect("the login cookie opens");
            assert_same_origin("return_to", &return_to);
        }
        1 | 2 => {
            let (state, login_cookie) = h.pending_login();
            let (query, cookie) = if mode % 6 == 1 {
                let query = query.map(|q| q.replace("STATE", state));
                let cookie = match cookie {
                    Some(c) => format!("{c}; {login_cookie}"),
                    None => login_cookie.to_string(),
                };
                (query, Some(cookie))
            } else {
                (query, cookie)
            };
            let reply = h.callback(query.as_deref(), cookie.as_deref(), accept.as_deref());
            check(&reply);
            if let Some(location) = reply.location() {
                assert_same_origin("callback redirect", location);
            }
        }
        3 | 4 => {
            let (first, second) = h.logout(
                mode % 6 == 4,
                query.as_deref(),
                cookie.as_deref(),
                accept.as_deref(),
            );
            for reply in [&first, &second] {
                check(reply);
                if let Some(location) = reply.location() {
                    assert!(
                        location.starts_with(END_SESSION) || location == POST_LOGOUT,
                        "logout went to {location:?}"
                    );
                }
            }
        }
        _ => {
            let raw = query.unwrap_or_default();
            assert_same_origin("return_to", &Harness::safe_return_to(Some(&raw)));
        }
    }
});
