//! Sessions for tests: minted with the library (the shared fixture in
//! `tollgate::session::fixture`), and requests sent with one as the SPA sends them.

use std::path::Path;

use tollgate::config::Config;
use tollgate::session::cookie::SessionCookies;
use tollgate::session::{Session, SessionCodec};

use super::process::Tollgate;

impl Tollgate {
    /// The codec tollgate uses, built from the same config text through the library.
    pub fn codec(&self) -> SessionCodec {
        let config = Config::from_toml_str(
            &self.config_text,
            Path::new("test.toml"),
            std::iter::empty(),
        )
        .unwrap();
        SessionCodec::new(&config.session, config.server.secure_cookies)
    }

    /// A `Cookie` header value carrying a freshly minted session with `access_token`.
    pub fn mint_cookie(&self, access_token: &str) -> String {
        self.mint_cookie_for(session_with(access_token))
    }

    pub fn mint_cookie_for(&self, session: Session<'_>) -> String {
        let lines = self
            .codec()
            .set_cookie_lines(&session, &SessionCookies::default(), tollgate::unix_now())
            .unwrap();
        cookie_header(&lines)
    }

    /// A request as the SPA sends it with a session: the cookie and the CSRF header.
    pub fn with_session(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        cookie: &str,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, self.url(path))
            .header("cookie", cookie)
            .header("x-csrf", "1")
    }

    /// Polls (bounded, 100 × 20 ms) `GET path` with `cookie` until it answers `want`; the
    /// last status.
    pub async fn status_until(&self, path: &str, cookie: &str, want: u16) -> u16 {
        let mut last = 0;
        for _ in 0..100 {
            last = self
                .with_session(&super::flow::plain(), reqwest::Method::GET, path, cookie)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            if last == want {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        last
    }
}

/// `name=value; …` from `Set-Cookie` lines, skipping deletions.
pub fn cookie_header(set_cookie_lines: &[String]) -> String {
    set_cookie_lines
        .iter()
        .filter(|l| !l.contains("Max-Age=0"))
        .map(|l| l.split(';').next().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The shared session fixture (`tollgate::session::fixture`) with `access_token`, valid for
/// five minutes from now.
pub fn session_with(access_token: &str) -> Session<'static> {
    tollgate::session::fixture::session(tollgate::unix_now(), access_token)
}

/// The session in a request's `Cookie` header, opened with `codec` as tollgate opens it.
pub fn open_session(codec: &SessionCodec, cookie_header: &str) -> Option<Session<'static>> {
    let (_, payload) = codec.open([cookie_header]);
    codec
        .decode(&payload.ok()?, tollgate::unix_now())
        .ok()
        .map(Session::into_owned)
}

/// A JWT-shaped access token of about `len` bytes that is easy to search for in logs.
pub fn access_token(len: usize) -> String {
    let mut t = String::from("eyJhbGciOiJSUzI1NiJ9.ACCESS");
    while t.len() < len {
        t.push_str("xYz0");
    }
    t
}
