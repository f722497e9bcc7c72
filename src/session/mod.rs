//! The session: what tollgate keeps for a logged-in browser, and how it travels in cookies.
//!
//! tollgate is stateless: the whole session lives in the browser, sealed (see [`seal`]) so the
//! browser can neither read nor change it, and split over several cookies when large (see
//! [`cookie`]). Any replica with the keys can serve any user. [`SessionCodec`] ties the pieces
//! together: it serializes a [`Session`] compactly (postcard), seals it bound to the cookie
//! name, and on the way back enforces the absolute (`max_lifetime`) and sliding
//! (`idle_timeout`) limits, so an expired session opens to an error exactly like a forged one.

pub mod cookie;
pub mod seal;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use cookie::{ChunkError, CookieAttrs, SessionCookies};
use seal::{OpenError, Sealer};

/// The claims from the ID token that the SPA may see (via the session endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub sid: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A logged-in user's session. Times are seconds since the Unix epoch.
///
/// Field order is the wire order (postcard); add new fields at the end and bump
/// [`PAYLOAD_VERSION`] when the layout changes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    /// When the access token expires (from `expires_in` at issue).
    pub access_expires_at: u64,
    pub refresh_token: Option<String>,
    /// When the refresh token expires, if the provider said so.
    pub refresh_expires_at: Option<u64>,
    pub id_token: Option<String>,
    /// The ID token's `exp`.
    pub id_expires_at: Option<u64>,
    pub claims: Claims,
    /// When the user logged in; the session ends at `created_at + max_lifetime`.
    pub created_at: u64,
    /// Last time the idle window was moved; the session ends at `last_seen + idle_timeout`.
    pub last_seen: u64,
}

/// The `Debug` text of a session, owned or borrowed: tokens never reach a log line, even
/// through a stray `{:?}`.
fn debug_session(
    f: &mut std::fmt::Formatter<'_>,
    name: &str,
    sub: &str,
    access_expires_at: u64,
    has_refresh_token: bool,
    created_at: u64,
    last_seen: u64,
) -> std::fmt::Result {
    f.debug_struct(name)
        .field("sub", &sub)
        .field("access_expires_at", &access_expires_at)
        .field("has_refresh_token", &has_refresh_token)
        .field("created_at", &created_at)
        .field("last_seen", &last_seen)
        .finish_non_exhaustive()
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_session(
            f,
            "Session",
            &self.claims.sub,
            self.access_expires_at,
            self.refresh_token.is_some(),
            self.created_at,
            self.last_seen,
        )
    }
}

/// A [`Session`] read on the hot path, borrowing its strings from the opened payload: a
/// request that needs neither a refresh nor a re-seal copies no token out of it. Same wire
/// layout as [`Session`] (a unit test keeps the two in step).
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SessionView<'a> {
    #[serde(borrow)]
    pub access_token: &'a str,
    pub access_expires_at: u64,
    #[serde(borrow)]
    pub refresh_token: Option<&'a str>,
    pub refresh_expires_at: Option<u64>,
    #[serde(borrow)]
    pub id_token: Option<&'a str>,
    pub id_expires_at: Option<u64>,
    #[serde(borrow)]
    pub claims: ClaimsView<'a>,
    pub created_at: u64,
    pub last_seen: u64,
}

impl std::fmt::Debug for SessionView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_session(
            f,
            "SessionView",
            self.claims.sub,
            self.access_expires_at,
            self.refresh_token.is_some(),
            self.created_at,
            self.last_seen,
        )
    }
}

/// [`Claims`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct ClaimsView<'a> {
    #[serde(borrow)]
    pub sub: &'a str,
    #[serde(borrow)]
    pub sid: Option<&'a str>,
    #[serde(borrow)]
    pub name: Option<&'a str>,
    #[serde(borrow)]
    pub email: Option<&'a str>,
}

impl SessionView<'_> {
    /// An owned copy, for the paths that change the session (refresh, re-seal).
    pub fn to_session(&self) -> Session {
        let own = |s: Option<&str>| s.map(str::to_owned);
        Session {
            access_token: self.access_token.to_owned(),
            access_expires_at: self.access_expires_at,
            refresh_token: own(self.refresh_token),
            refresh_expires_at: self.refresh_expires_at,
            id_token: own(self.id_token),
            id_expires_at: self.id_expires_at,
            claims: Claims {
                sub: self.claims.sub.to_owned(),
                sid: own(self.claims.sid),
                name: own(self.claims.name),
                email: own(self.claims.email),
            },
            created_at: self.created_at,
            last_seen: self.last_seen,
        }
    }
}

/// A decrypted session payload, not yet decoded; [`SessionCodec::view`] reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Vec<u8>);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // It holds tokens in the clear.
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// The first byte of every serialized payload, checked before deserializing.
pub const PAYLOAD_VERSION: u8 = 1;

/// Why a request's session could not be used. `reason()` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session cookie: {0}")]
    Cookie(#[from] ChunkError),
    #[error("session seal: {0}")]
    Open(#[from] OpenError),
    #[error("session payload is not readable")]
    Payload,
    #[error("session passed its max_lifetime")]
    Expired,
    #[error("session passed its idle_timeout")]
    Idle,
    #[error("session could not be sealed")]
    Seal,
}

impl SessionError {
    /// A short, fixed label (for metrics and logs).
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Cookie(ChunkError::Missing) => "missing",
            SessionError::Cookie(ChunkError::MissingChunk(_)) => "missing_chunk",
            SessionError::Cookie(ChunkError::Malformed) => "malformed",
            SessionError::Cookie(ChunkError::TooLarge) => "too_large",
            SessionError::Open(OpenError::Encoding | OpenError::Truncated) => "malformed",
            SessionError::Open(OpenError::Version(_)) => "version",
            SessionError::Open(OpenError::UnknownKey) => "unknown_key",
            SessionError::Open(OpenError::Tampered) => "tampered",
            SessionError::Payload => "payload",
            SessionError::Expired => "expired",
            SessionError::Idle => "idle",
            SessionError::Seal => "seal",
        }
    }
}

/// Seals sessions into cookies and opens them again, under one configuration.
#[derive(Debug)]
pub struct SessionCodec {
    sealer: Sealer,
    name: String,
    attrs: CookieAttrs,
    max_lifetime: u64,
    idle_timeout: u64,
}

impl SessionCodec {
    pub fn new(config: &SessionConfig, secure_cookies: bool) -> Self {
        SessionCodec {
            sealer: Sealer::new(&config.keys),
            name: config.cookie_name.clone(),
            attrs: CookieAttrs {
                secure: secure_cookies,
                same_site: config.same_site,
            },
            max_lifetime: config.max_lifetime.as_secs(),
            idle_timeout: config.idle_timeout.as_secs(),
        }
    }

    /// When `session` ends if unused: the earlier of its absolute and idle limits.
    pub fn expires_at(&self, session: &Session) -> u64 {
        session
            .created_at
            .saturating_add(self.max_lifetime)
            .min(session.last_seen.saturating_add(self.idle_timeout))
    }

    /// The session cookie's name (chunks are `NAME.0`, `NAME.1`, …).
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// Serializes and seals `session` into the cookie value (before chunking).
    pub fn seal(&self, session: &Session) -> Result<String, SessionError> {
        let mut payload = vec![PAYLOAD_VERSION];
        payload = postcard::to_extend(session, payload).map_err(|_| SessionError::Seal)?;
        self.sealer
            .seal(&payload, self.name.as_bytes())
            .map_err(|_| SessionError::Seal)
    }

    /// Decrypts one sealed value (authenticity only; [`Self::view`] decodes and checks the
    /// lifetimes).
    pub fn open_payload(&self, sealed: &str) -> Result<Payload, SessionError> {
        Ok(Payload(self.sealer.open(sealed, self.name.as_bytes())?))
    }

    /// Decodes `payload` without copying its strings and checks the session's lifetimes
    /// against `now`.
    pub fn view<'p>(
        &self,
        payload: &'p Payload,
        now: u64,
    ) -> Result<SessionView<'p>, SessionError> {
        let view: SessionView<'p> = match payload.0.split_first() {
            Some((&PAYLOAD_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|_| SessionError::Payload)?
            }
            _ => return Err(SessionError::Payload),
        };
        if now >= view.created_at.saturating_add(self.max_lifetime) {
            return Err(SessionError::Expired);
        }
        if now >= view.last_seen.saturating_add(self.idle_timeout) {
            return Err(SessionError::Idle);
        }
        Ok(view)
    }

    /// Opens one sealed value and checks the session's lifetimes against `now`.
    pub fn open_value(&self, sealed: &str, now: u64) -> Result<Session, SessionError> {
        let payload = self.open_payload(sealed)?;
        Ok(self.view(&payload, now)?.to_session())
    }

    /// Finds, reassembles and opens the session in a request's `Cookie` header values.
    pub fn open_request<'a, I>(&self, cookie_headers: I, now: u64) -> Result<Session, SessionError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let found = SessionCookies::scan(&self.name, cookie_headers);
        let value = found.value()?;
        self.open_value(&value, now)
    }

    /// The `Set-Cookie` lines that store `session`, expiring stale chunks in `previous`.
    pub fn set_cookie_lines(
        &self,
        session: &Session,
        previous: &SessionCookies<'_>,
        now: u64,
    ) -> Result<Vec<String>, SessionError> {
        let sealed = self.seal(session)?;
        let ends_at = session.created_at.saturating_add(self.max_lifetime);
        let max_age = Duration::from_secs(ends_at.saturating_sub(now));
        Ok(self.attrs.store(&self.name, &sealed, max_age, previous)?)
    }

    /// The `Set-Cookie` lines that remove every session cookie in `previous`.
    pub fn clear_cookie_lines(&self, previous: &SessionCookies<'_>) -> Vec<String> {
        self.attrs.clear(&self.name, previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SameSite;

    fn config() -> SessionConfig {
        SessionConfig {
            cookie_name: "__Host-tg".into(),
            dropped_host_prefix: false,
            keys: vec![[3u8; 32]],
            same_site: SameSite::Lax,
            max_lifetime: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            refresh_skew: Duration::from_secs(30),
        }
    }

    fn session(now: u64) -> Session {
        let jwt = |c: char| c.to_string().repeat(1200);
        Session {
            access_token: jwt('a'),
            access_expires_at: now + 300,
            refresh_token: Some(jwt('r')),
            refresh_expires_at: None,
            id_token: Some(jwt('i')),
            id_expires_at: Some(now + 300),
            claims: Claims {
                sub: "user-1".into(),
                sid: Some("sid-1".into()),
                name: Some("Ada".into()),
                email: Some("ada@example.com".into()),
            },
            created_at: now,
            last_seen: now,
        }
    }

    #[test]
    fn round_trip_through_chunked_cookies() {
        let codec = SessionCodec::new(&config(), true);
        let now = 1_700_000_000;
        let s = session(now);
        let lines = codec
            .set_cookie_lines(&s, &SessionCookies::default(), now)
            .unwrap();
        assert!(lines.len() >= 2, "three 1.2 KB tokens need chunks");
        assert!(lines.iter().all(|l| l.contains("Max-Age=3600")));
        let header: Vec<String> = lines
            .iter()
            .map(|l| l.split(';').next().unwrap().to_string())
            .collect();
        let header = header.join("; ");
        let opened = codec.open_request([header.as_str()], now + 1).unwrap();
        assert_eq!(opened, s);
    }

    #[test]
    fn lifetimes_are_enforced() {
        let codec = SessionCodec::new(&config(), true);
        let now = 1_700_000_000;
        let sealed = codec.seal(&session(now)).unwrap();
        assert!(codec.open_value(&sealed, now + 599).is_ok());
        assert_eq!(
            codec.open_value(&sealed, now + 600),
            Err(SessionError::Idle)
        );
        let mut long = session(now);
        long.last_seen = now + 3500;
        let sealed = codec.seal(&long).unwrap();
        assert_eq!(
            codec.open_value(&sealed, now + 3600),
            Err(SessionError::Expired)
        );
    }

    #[test]
    fn view_reads_the_session_wire_layout() {
        let codec = SessionCodec::new(&config(), true);
        let now = 1_700_000_000;
        for s in [session(now), {
            let mut bare = session(now);
            bare.refresh_token = None;
            bare.id_token = None;
            bare.claims = Claims {
                sub: "u".into(),
                ..Claims::default()
            };
            bare
        }] {
            let payload = codec.open_payload(&codec.seal(&s).unwrap()).unwrap();
            let view = codec.view(&payload, now + 1).unwrap();
            assert_eq!(view.access_token, s.access_token);
            assert_eq!(view.to_session(), s);
        }
    }

    #[test]
    fn name_binding_and_debug_redaction() {
        let codec = SessionCodec::new(&config(), true);
        let mut other = config();
        other.cookie_name = "other".into();
        let other = SessionCodec::new(&other, true);
        let sealed = codec.seal(&session(1)).unwrap();
        assert_eq!(
            other.open_value(&sealed, 2),
            Err(SessionError::Open(OpenError::Tampered))
        );
        let debug = format!("{:?}", session(1));
        assert!(!debug.contains("aaaa") && !debug.contains("rrrr") && !debug.contains("iiii"));
    }
}
