//! The session: what tollgate keeps for a logged-in browser, and how it travels in cookies.
//!
//! tollgate is stateless: the whole session lives in the browser, sealed (see [`seal`]) so the
//! browser can neither read nor change it, and split over several cookies when large (see
//! [`cookie`]). Any replica with the keys can serve any user. [`SessionCodec`] ties the pieces
//! together: it serializes a [`Session`] compactly (postcard), seals it bound to the cookie
//! name, and on the way back enforces the absolute (`max_lifetime`) and sliding
//! (`idle_timeout`) limits, so an expired session opens to an error exactly like a forged one.

pub mod cookie;
pub(crate) mod dbsc;
mod opened;
pub(crate) mod record;
pub mod revocations;
pub mod seal;

use std::borrow::Cow;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use cookie::{ChunkError, CookieAttrs, SessionCookies};
use seal::{OpenError, Sealer};

/// The claims from the ID token that the SPA may see (via the session endpoint).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims<'a> {
    #[serde(borrow)]
    pub sub: Cow<'a, str>,
    #[serde(borrow, deserialize_with = "borrowed")]
    pub sid: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrowed")]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, deserialize_with = "borrowed")]
    pub email: Option<Cow<'a, str>>,
}

/// A logged-in user's session. Times are seconds since the Unix epoch.
///
/// One type for every use: opened from a request ([`SessionCodec::decode`]) its strings borrow
/// from the decrypted payload, so the hot path copies no token; a session that changes
/// (login, refresh) owns them (`Session<'static>`, [`Session::into_owned`]).
///
/// Field order is the wire order (postcard); add new fields at the end and bump
/// [`PAYLOAD_VERSION`] when the layout changes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session<'a> {
    #[serde(borrow)]
    pub access_token: Cow<'a, str>,
    /// When the access token expires (from `expires_in` at issue).
    pub access_expires_at: u64,
    #[serde(borrow, deserialize_with = "borrowed")]
    pub refresh_token: Option<Cow<'a, str>>,
    /// When the refresh token expires, if the provider said so: past it, the session ends
    /// without asking the provider.
    pub refresh_expires_at: Option<u64>,
    /// The ID token, kept as the logout hint.
    #[serde(borrow, deserialize_with = "borrowed")]
    pub id_token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub claims: Claims<'a>,
    /// When the user logged in; the session ends at `created_at + max_lifetime`.
    pub created_at: u64,
    /// Last time the idle window was moved; the session ends at `last_seen + idle_timeout`.
    pub last_seen: u64,
    /// Random, chosen at login: what a logout revokes ([`revocations`]).
    pub id: u128,
    /// The ID token's claims that route rules and identity headers read ([`crate::claims`]), and
    /// no others: each one is in every request's cookie.
    pub kept_claims: Cow<'a, [(String, crate::claims::ClaimValue)]>,
    /// The session's DPoP private key (PKCS#8), with `[oidc] dpop`: its tokens are bound to
    /// it ([`crate::oidc::dpop`]).
    #[serde(borrow, deserialize_with = "borrowed_bytes")]
    pub dpop_key: Option<Cow<'a, [u8]>>,
    /// The resources (RFC 8707) its login asked for, as [`crate::config::resource_tag`]s: a
    /// route's own token is asked for only with a resource the grant covers.
    pub resources: Cow<'a, [u64]>,
    /// The access token's lifetime in seconds (the provider's `expires_in` when it was issued
    /// or refreshed): it is refreshed no earlier than half-way through. 0: not known (a session
    /// sealed as payload version 5).
    pub access_lifetime: u64,
    /// The public key (an uncompressed P-256 point) the session is bound to, once its browser
    /// registered one (DBSC, [`dbsc`]): from then on, every request must carry a fresh bound
    /// cookie, which only that device can renew. Appended compatibly, as `access_lifetime`.
    #[serde(borrow, deserialize_with = "borrowed_bytes")]
    pub device_key: Option<Cow<'a, [u8]>>,
    /// The provider that issued the tokens, when it is not `[oidc]` (`None`: the default
    /// provider, so a one-provider session is no longer for it). Appended compatibly.
    #[serde(borrow, deserialize_with = "borrowed")]
    pub provider: Option<Cow<'a, str>>,
}

/// As [`borrowed`], for bytes.
fn borrowed_bytes<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, [u8]>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<&'de [u8]>::deserialize(d)?.map(Cow::Borrowed))
}

/// Deserializes an optional string borrowed from the input (serde's `borrow` attribute alone
/// borrows a `Cow<str>` field, but copies one inside an `Option`).
fn borrowed<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<&'de str>::deserialize(d)?.map(Cow::Borrowed))
}

fn own(s: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
    s.map(|s| Cow::Owned(s.into_owned()))
}

fn lend<'a>(s: &'a Option<Cow<'_, str>>) -> Option<Cow<'a, str>> {
    s.as_deref().map(Cow::Borrowed)
}

impl Session<'_> {
    /// The name of the provider that issued the session's tokens (`default` for `[oidc]`).
    pub fn provider_name(&self) -> &str {
        self.provider.as_deref().unwrap_or("default")
    }

    /// The same session borrowing its strings from this one (no copy).
    pub fn lend(&self) -> Session<'_> {
        Session {
            access_token: Cow::Borrowed(&self.access_token),
            access_expires_at: self.access_expires_at,
            refresh_token: lend(&self.refresh_token),
            refresh_expires_at: self.refresh_expires_at,
            id_token: lend(&self.id_token),
            claims: Claims {
                sub: Cow::Borrowed(&self.claims.sub),
                sid: lend(&self.claims.sid),
                name: lend(&self.claims.name),
                email: lend(&self.claims.email),
            },
            created_at: self.created_at,
            last_seen: self.last_seen,
            id: self.id,
            kept_claims: Cow::Borrowed(&self.kept_claims),
            dpop_key: self.dpop_key.as_deref().map(Cow::Borrowed),
            resources: Cow::Borrowed(&self.resources),
            access_lifetime: self.access_lifetime,
            device_key: self.device_key.as_deref().map(Cow::Borrowed),
            provider: lend(&self.provider),
        }
    }

    /// The same session owning its strings, for the paths that change it (refresh, re-seal).
    pub fn into_owned(self) -> Session<'static> {
        Session {
            access_token: Cow::Owned(self.access_token.into_owned()),
            access_expires_at: self.access_expires_at,
            refresh_token: own(self.refresh_token),
            refresh_expires_at: self.refresh_expires_at,
            id_token: own(self.id_token),
            claims: Claims {
                sub: Cow::Owned(self.claims.sub.into_owned()),
                sid: own(self.claims.sid),
                name: own(self.claims.name),
                email: own(self.claims.email),
            },
            created_at: self.created_at,
            last_seen: self.last_seen,
            id: self.id,
            kept_claims: Cow::Owned(self.kept_claims.into_owned()),
            dpop_key: self.dpop_key.map(|k| Cow::Owned(k.into_owned())),
            resources: Cow::Owned(self.resources.into_owned()),
            access_lifetime: self.access_lifetime,
            device_key: self.device_key.map(|k| Cow::Owned(k.into_owned())),
            provider: own(self.provider),
        }
    }
}

impl std::fmt::Debug for Session<'_> {
    /// Tokens never reach a log line, even through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sub", &self.claims.sub)
            .field("access_expires_at", &self.access_expires_at)
            .field("access_lifetime", &self.access_lifetime)
            .field("device_bound", &self.device_key.is_some())
            .field("provider", &self.provider_name())
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("created_at", &self.created_at)
            .field("last_seen", &self.last_seen)
            .finish_non_exhaustive()
    }
}

/// A decrypted and decoded session whose lifetimes are not yet checked:
/// [`SessionCodec::decode`] checks them and lends the session out. Shared with the cache of
/// recently opened cookies ([`opened`]), so a cookie seen again is neither decrypted nor decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(std::sync::Arc<Session<'static>>);

impl Payload {
    /// The session, lifetimes unchecked.
    pub(crate) fn session(&self) -> &Session<'static> {
        &self.0
    }
}

impl From<std::sync::Arc<Session<'static>>> for Payload {
    fn from(session: std::sync::Arc<Session<'static>>) -> Self {
        Payload(session)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Session`'s own Debug leaves the tokens out.
        write!(f, "Payload({:?})", self.0)
    }
}

/// The first byte of every serialized payload, checked before deserializing.
///
/// 2: the ID token's expiry, never read, is no longer kept; the session has an id.
/// 3: claims kept for route rules and identity headers (`kept_claims`).
/// 4: the DPoP key (`dpop_key`).
/// 5: the resources asked for at login (`resources`). The access token's lifetime
///    (`access_lifetime`) was appended to version 5 compatibly, so that replicas and an
///    upgrade's old process, running a build from before it, still open the cookies a newer
///    build seals (postcard ignores bytes after the last field it knows): a payload without
///    it opens with the lifetime unknown (0). The device key (`device_key`, DBSC) was appended
///    after it the same way: a payload without it opens unbound.
pub(crate) const PAYLOAD_VERSION: u8 = 5;

/// 6: the same layout as 5, for a session of a provider other than `[oidc]` (`provider`
/// set). A build from before several providers reads only the fields it knows and would take
/// such a session for the default provider's (and send its refresh token there), so it must
/// not open it at all: it knows no version 6.
pub(crate) const PROVIDER_PAYLOAD_VERSION: u8 = 6;

/// The payload version `session` is sealed with.
pub(crate) fn payload_version(session: &Session<'_>) -> u8 {
    if session.provider.is_some() {
        PROVIDER_PAYLOAD_VERSION
    } else {
        PAYLOAD_VERSION
    }
}

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
    #[error("session was logged out")]
    Revoked,
    /// A handle cookie under `storage = "cookie"`: the session lives in a store this
    /// configuration does not use.
    #[error("session cookie is a store handle, and sessions are in cookies")]
    Handle,
    /// A handle whose record is not in the store (ended, expired, or another store).
    #[error("session is not in the store")]
    NotStored,
    /// The store could not be asked for the session (not a logout: try again).
    #[error("the store holding the session cannot be reached")]
    StoreUnavailable,
}

impl SessionError {
    /// A short, fixed label (for metrics and logs).
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Cookie(ChunkError::Missing) => "missing",
            SessionError::Cookie(ChunkError::MissingChunk(_)) => "missing_chunk",
            SessionError::Cookie(ChunkError::Malformed) => "malformed",
            SessionError::Cookie(ChunkError::TooLarge) => "too_large",
            SessionError::Cookie(ChunkError::TooManyChunks) => "too_many_chunks",
            SessionError::Open(OpenError::Encoding | OpenError::Truncated) => "malformed",
            SessionError::Open(OpenError::Version(_)) => "version",
            SessionError::Open(OpenError::UnknownKey) => "unknown_key",
            SessionError::Open(OpenError::Tampered) => "tampered",
            SessionError::Payload => "payload",
            SessionError::Expired => "expired",
            SessionError::Idle => "idle",
            SessionError::Seal => "seal",
            SessionError::Revoked => "revoked",
            SessionError::Handle => "store_handle",
            SessionError::NotStored => "not_stored",
            SessionError::StoreUnavailable => "store_unavailable",
        }
    }
}

/// A session from its serialized bytes (after the version byte).
/// A payload of `version`: 5 without a provider, 6 with one (anything else is refused).
pub(crate) fn decode_versioned(
    version: u8,
    bytes: &[u8],
) -> Result<Session<'static>, SessionError> {
    let session = match version {
        PAYLOAD_VERSION | PROVIDER_PAYLOAD_VERSION => decode_payload(bytes)?,
        _ => return Err(SessionError::Payload),
    };
    if payload_version(&session) != version {
        return Err(SessionError::Payload);
    }
    Ok(session)
}

fn decode_payload(bytes: &[u8]) -> Result<Session<'static>, SessionError> {
    if let Ok(session) = postcard::from_bytes::<Session<'_>>(bytes) {
        return Ok(session.into_owned());
    }
    // Sealed before the last fields were appended (`access_lifetime`, `device_key`, then
    // `provider`): postcard writes fields in order with nothing between them, so a trailing 0
    // reads as "unknown" or "none" for each field missing.
    for missing in 1..=3 {
        let padded = [bytes, &[0u8; 3][..missing]].concat();
        if let Ok(session) = postcard::from_bytes::<Session<'_>>(&padded) {
            return Ok(session.into_owned());
        }
    }
    Err(SessionError::Payload)
}

/// Seals sessions into cookies and opens them again, under one configuration.
#[derive(Debug)]
pub struct SessionCodec {
    sealer: Sealer,
    name: String,
    attrs: CookieAttrs,
    max_lifetime: u64,
    idle_timeout: u64,
    /// The most bytes the session's cookies may take in a `Cookie` header.
    cookie_budget: usize,
    /// Cookies opened recently ([`opened`]): the same cookie on the next call is not
    /// decrypted again.
    opened: opened::OpenedCache<Session<'static>>,
    /// Handles opened recently ([`record`]), likewise.
    handles: opened::OpenedCache<u128>,
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
            cookie_budget: usize::MAX,
            opened: opened::OpenedCache::default(),
            handles: opened::OpenedCache::default(),
        }
    }

    /// Limits the session's cookies to `bytes` of a `Cookie` header (`name=value; …`), so that
    /// a session is refused when it is written rather than answered `431` on every request
    /// after (`[server] max_cookie_bytes` less room for other cookies).
    /// Seals with `sealer`'s key ring (shared with the login state and the store's values,
    /// so one reload of `keys_file` changes them all).
    pub(crate) fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = sealer;
        self
    }

    pub fn with_cookie_budget(mut self, bytes: usize) -> Self {
        self.cookie_budget = bytes;
        self
    }

    /// A `Set-Cookie` line for another of tollgate's cookies, with the session cookie's
    /// attributes (the DBSC bound cookie).
    pub(crate) fn cookie_line(&self, name: &str, value: &str, max_age: Duration) -> String {
        cookie::cookie_line(
            name,
            value,
            max_age,
            self.attrs.secure,
            self.attrs.same_site,
        )
    }

    /// The key ring sessions are sealed with (shared with the other sealed values).
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// When `session` ends if unused: the earlier of its absolute and idle limits.
    pub fn expires_at(&self, session: &Session<'_>) -> u64 {
        session
            .created_at
            .saturating_add(self.max_lifetime)
            .min(session.last_seen.saturating_add(self.idle_timeout))
    }

    /// The latest a session created at `created_at` can still open (renewals included).
    pub(crate) fn lives_until(&self, created_at: u64) -> u64 {
        created_at.saturating_add(self.max_lifetime)
    }

    /// The session cookie's name (chunks are `NAME.0`, `NAME.1`, …).
    pub fn cookie_name(&self) -> &str {
        &self.name
    }

    /// Serializes and seals `session` into the cookie value (before chunking).
    pub fn seal(&self, session: &Session<'_>) -> Result<String, SessionError> {
        let mut payload = vec![payload_version(session)];
        payload = postcard::to_extend(session, payload).map_err(|_| SessionError::Seal)?;
        self.sealer
            .seal(&payload, self.name.as_bytes())
            .map_err(|_| SessionError::Seal)
    }

    /// Finds the session cookies in a request's `Cookie` header values, reassembles and
    /// decrypts them (one of the two ways to open a session; [`Self::decode`] is the other).
    /// The cookies found are returned whatever the outcome: a reply that clears or replaces
    /// the session needs their names.
    pub fn open<'r, I>(
        &self,
        cookie_headers: I,
    ) -> (SessionCookies<'r>, Result<Payload, SessionError>)
    where
        I: IntoIterator<Item = &'r str>,
    {
        let found = SessionCookies::scan(&self.name, cookie_headers);
        let payload = found
            .value()
            .map_err(SessionError::from)
            .and_then(|sealed| self.open_sealed(&sealed));
        (found, payload)
    }

    /// Decrypts and decodes a sealed value, or finds it opened recently. Only a value that
    /// decodes is kept.
    pub(crate) fn open_sealed(&self, sealed: &str) -> Result<Payload, SessionError> {
        let generation = self.sealer.generation();
        if let Some(session) = self.opened.get(sealed, generation) {
            return Ok(Payload(session));
        }
        let plain = self.sealer.open(sealed, self.name.as_bytes())?;
        let Some((&version, bytes)) = plain.split_first() else {
            return Err(SessionError::Payload);
        };
        let session = std::sync::Arc::new(decode_versioned(version, bytes)?);
        self.opened.put(sealed, session.clone(), generation);
        Ok(Payload(session))
    }

    /// Checks an opened session's lifetimes against `now` and lends it out.
    pub fn decode<'p>(&self, payload: &'p Payload, now: u64) -> Result<Session<'p>, SessionError> {
        let session = &*payload.0;
        if now >= session.created_at.saturating_add(self.max_lifetime) {
            return Err(SessionError::Expired);
        }
        if now >= session.last_seen.saturating_add(self.idle_timeout) {
            return Err(SessionError::Idle);
        }
        Ok(session.lend())
    }

    /// The `Set-Cookie` lines that store `session`, expiring stale chunks in `previous`.
    pub fn set_cookie_lines(
        &self,
        session: &Session<'_>,
        previous: &SessionCookies<'_>,
        now: u64,
    ) -> Result<Vec<String>, SessionError> {
        let sealed = self.seal(session)?;
        let ends_at = session.created_at.saturating_add(self.max_lifetime);
        let max_age = Duration::from_secs(ends_at.saturating_sub(now));
        let lines = self.attrs.store(&self.name, &sealed, max_age, previous)?;
        // What the browser sends back: `name=value` of each kept cookie, joined by `; `.
        let sent: usize = lines
            .iter()
            .filter(|l| !l.contains("Max-Age=0"))
            .map(|l| l.split(';').next().map_or(0, str::len) + 2)
            .sum();
        if sent > self.cookie_budget {
            return Err(SessionError::Cookie(ChunkError::TooLarge));
        }
        Ok(lines)
    }

    /// The `Set-Cookie` lines that remove every session cookie in `previous`.
    pub(crate) fn clear_cookie_lines(&self, previous: &SessionCookies<'_>) -> Vec<String> {
        self.attrs.clear(&self.name, previous)
    }
}

/// A realistic session for tests, benchmarks and the fuzz targets ([`fixture`]).
#[cfg(any(test, feature = "fuzzing", feature = "fixtures"))]
#[doc(hidden)]
pub mod fixture;

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
            storage: Default::default(),
            device_binding: Default::default(),
            bound_cookie_lifetime: Duration::from_secs(300),
        }
    }

    fn session(now: u64) -> Session<'static> {
        fixture::session(now, &fixture::jwt(1200, 1))
    }

    /// The `Cookie` header a browser sends back for `lines`.
    fn header(lines: &[String]) -> String {
        let parts: Vec<&str> = lines.iter().map(|l| l.split(';').next().unwrap()).collect();
        parts.join("; ")
    }

    fn reopen(
        codec: &SessionCodec,
        s: &Session<'_>,
        now: u64,
    ) -> Result<Session<'static>, SessionError> {
        let lines = codec.set_cookie_lines(s, &SessionCookies::default(), s.created_at)?;
        let header = header(&lines);
        let (_, payload) = codec.open([header.as_str()]);
        Ok(codec.decode(&payload?, now)?.into_owned())
    }

    #[test]
    fn a_session_over_the_cookie_budget_is_refused_when_written() {
        let s = session(1_700_000_000);
        let roomy = SessionCodec::new(&config(), true);
        let lines = roomy
            .set_cookie_lines(&s, &SessionCookies::default(), s.created_at)
            .unwrap();
        let sent = header(&lines).len();
        let exact = SessionCodec::new(&config(), true).with_cookie_budget(sent + 2);
        assert!(exact
            .set_cookie_lines(&s, &SessionCookies::default(), s.created_at)
            .is_ok());
        let tight = SessionCodec::new(&config(), true).with_cookie_budget(sent - 1);
        assert_eq!(
            tight
                .set_cookie_lines(&s, &SessionCookies::default(), s.created_at)
                .unwrap_err(),
            SessionError::Cookie(ChunkError::TooLarge)
        );
    }

    #[test]
    fn round_trip_through_chunked_cookies_borrowing_every_string() {
        let codec = SessionCodec::new(&config(), true);
        let now = 1_700_000_000;
        let s = session(now);
        let lines = codec
            .set_cookie_lines(&s, &SessionCookies::default(), now)
            .unwrap();
        assert!(lines.len() >= 2, "three 1.2 KB tokens need chunks");
        assert!(lines.iter().all(|l| l.contains("Max-Age=3600")));
        let header = header(&lines);
        let (_, payload) = codec.open([header.as_str()]);
        let payload = payload.unwrap();
        let opened = codec.decode(&payload, now + 1).unwrap();
        assert_eq!(opened, s);
        for text in [
            Some(&opened.access_token),
            opened.refresh_token.as_ref(),
            opened.id_token.as_ref(),
            Some(&opened.claims.sub),
            opened.claims.email.as_ref(),
        ] {
            assert!(matches!(text, Some(Cow::Borrowed(_))), "a copied string");
        }
        let mut bare = session(now);
        bare.refresh_token = None;
        bare.id_token = None;
        bare.claims = Claims {
            sub: "u".into(),
            ..Claims::default()
        };
        assert_eq!(reopen(&codec, &bare, now + 1).unwrap(), bare);
    }

    #[test]
    fn lifetimes_are_enforced() {
        let codec = SessionCodec::new(&config(), true);
        let now = 1_700_000_000;
        assert!(reopen(&codec, &session(now), now + 599).is_ok());
        assert_eq!(
            reopen(&codec, &session(now), now + 600),
            Err(SessionError::Idle)
        );
        let mut long = session(now);
        long.last_seen = now + 3500;
        assert_eq!(
            reopen(&codec, &long, now + 3600),
            Err(SessionError::Expired)
        );
    }

    /// Once a cookie opened (and is kept opened), a copy changed anywhere but its last
    /// characters (the cache's key) still fails as tampered, as does a cookie opened under
    /// another name: the cache answers only for the identical value.
    #[test]
    fn an_opened_cookie_does_not_open_a_tampered_copy() {
        let codec = SessionCodec::new(&config(), true);
        let sealed = codec.seal(&session(1)).unwrap();
        let header = format!("{}={sealed}", codec.cookie_name());
        assert!(codec.open([header.as_str()]).1.is_ok());
        assert!(codec.open([header.as_str()]).1.is_ok(), "from the cache");
        for at in [0, sealed.len() / 2, sealed.len() - 9] {
            let mut bytes = sealed.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            let header = format!("{}={tampered}", codec.cookie_name());
            assert!(
                matches!(codec.open([header.as_str()]).1, Err(SessionError::Open(_))),
                "changed at {at}"
            );
        }
    }

    #[test]
    fn name_binding_and_debug_redaction() {
        let codec = SessionCodec::new(&config(), true);
        let mut other = config();
        other.cookie_name = "other".into();
        let other = SessionCodec::new(&other, true);
        let sealed = codec.seal(&session(1)).unwrap();
        let header = format!("other={sealed}");
        assert_eq!(
            other.open([header.as_str()]).1,
            Err(SessionError::Open(OpenError::Tampered))
        );
        let s = session(1);
        let debug = format!("{s:?}");
        for secret in [
            &s.access_token,
            s.refresh_token.as_ref().unwrap(),
            s.id_token.as_ref().unwrap(),
        ] {
            assert!(!debug.contains(&secret[..40]), "{debug}");
        }
    }

    /// A session of another provider than `[oidc]` is sealed as version 6, which a build from
    /// before several providers does not open (it would take it for the default provider's);
    /// each version opens only with its kind of session.
    #[test]
    fn another_providers_session_has_its_own_version() {
        let mut s = session(1);
        let plain = postcard::to_allocvec(&s).unwrap();
        assert_eq!(payload_version(&s), PAYLOAD_VERSION);
        assert_eq!(decode_versioned(5, &plain).unwrap(), s);
        assert!(decode_versioned(6, &plain).is_err());
        s.provider = Some("b".into());
        let plain = postcard::to_allocvec(&s).unwrap();
        assert_eq!(payload_version(&s), PROVIDER_PAYLOAD_VERSION);
        assert_eq!(decode_versioned(6, &plain).unwrap(), s);
        assert!(
            decode_versioned(5, &plain).is_err(),
            "never as the default's"
        );
        assert!(decode_versioned(4, &plain).is_err());
        // Through the codec: sealed as 6, opened again.
        let codec = SessionCodec::new(&config(), true);
        let sealed = codec.seal(&s).unwrap();
        let raw = codec.sealer.open(&sealed, codec.name.as_bytes()).unwrap();
        assert_eq!(raw[0], PROVIDER_PAYLOAD_VERSION);
        let payload = codec.open_sealed(&sealed).unwrap();
        assert_eq!(payload.session().provider.as_deref(), Some("b"));
    }

    /// A cookie sealed before `access_lifetime` existed still opens, with the lifetime unknown
    /// (0), and what this build seals opens in a build from before it (which reads the fields
    /// it knows and ignores the rest): replicas of both versions share cookies.
    #[test]
    fn the_lifetime_is_appended_compatibly() {
        let codec = SessionCodec::new(&config(), true);
        let mut s = session(1);
        s.access_lifetime = 0;
        let now = postcard::to_allocvec(&s).unwrap();
        // Before: the same bytes without the last field, `provider` (None is one byte) ...
        let no_provider = &now[..now.len() - 1];
        // ... without `device_key` (None is one byte) either ...
        let before = &now[..now.len() - 2];
        // ... and, earlier still, without `access_lifetime` (0 is one byte) either.
        let first = &now[..now.len() - 3];
        let open = |version: u8, body: &[u8]| {
            let payload = [&[version], body].concat();
            let sealed = codec.sealer.seal(&payload, codec.name.as_bytes()).unwrap();
            let header = format!("{}={sealed}", codec.name);
            let (_, payload) = codec.open([header.as_str()]);
            payload.and_then(|p| codec.decode(&p, 2).map(Session::into_owned))
        };
        assert_eq!(open(5, first).unwrap(), s);
        assert_eq!(open(5, before).unwrap(), s);
        assert_eq!(open(5, no_provider).unwrap(), s);
        assert_eq!(open(5, &now).unwrap(), s);
        assert_eq!(open(4, before), Err(SessionError::Payload));
        assert_eq!(open(5, &now[..now.len() - 4]), Err(SessionError::Payload));
        // An older build decodes a payload sealed now: its fields are a prefix.
        s.access_lifetime = 3_600;
        let sealed = postcard::to_allocvec(&s).unwrap();
        let old: Session<'_> = postcard::from_bytes(&sealed[..]).unwrap();
        assert_eq!(old.access_token, s.access_token);
        assert!(sealed.starts_with(
            &postcard::to_allocvec(&Session {
                access_lifetime: 0,
                ..s.clone()
            })
            .unwrap()[..now.len() - 3]
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::config::SameSite;
    use proptest::prelude::*;

    fn codec(keys: Vec<[u8; 32]>) -> SessionCodec {
        SessionCodec::new(
            &SessionConfig {
                cookie_name: "__Host-tg".into(),
                dropped_host_prefix: false,
                keys,
                same_site: SameSite::Lax,
                max_lifetime: Duration::from_secs(3600),
                idle_timeout: Duration::from_secs(600),
                refresh_skew: Duration::from_secs(30),
                storage: Default::default(),
                device_binding: Default::default(),
                bound_cookie_lifetime: Duration::from_secs(300),
            },
            true,
        )
    }

    fn text() -> impl Strategy<Value = String> {
        // Tokens are ASCII in practice; claims may be any Unicode.
        prop_oneof!["[ -~]{0,1500}", any::<String>()]
    }

    fn opt_text() -> impl Strategy<Value = Option<Cow<'static, str>>> {
        proptest::option::of(text().prop_map(Cow::Owned))
    }

    prop_compose! {
        fn any_session()(
            access in text(), refresh in opt_text(), id_token in opt_text(),
            sub in text(), sid in opt_text(), name in opt_text(), email in opt_text(),
            access_expires_at in any::<u64>(), refresh_expires_at in any::<Option<u64>>(),
            age in 0u64..3600, idle in 0u64..600, id in any::<u128>(),
            dpop_key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            kept in proptest::collection::vec(
                (text(), proptest::collection::vec(text(), 0..4)), 0..3),
            resources in proptest::collection::vec(any::<u64>(), 0..4),
            access_lifetime in any::<u64>(),
            device_key in proptest::option::of(proptest::collection::vec(any::<u8>(), 65..=65)),
            provider in proptest::option::of("[a-z0-9_-]{1,32}".prop_map(Cow::Owned)),
        ) -> (Session<'static>, u64) {
            let kept: Vec<(String, crate::claims::ClaimValue)> = kept
                .into_iter()
                .map(|(n, vs)| (n, crate::claims::ClaimValue::Many(
                    vs.into_iter().map(crate::claims::Scalar::Str).collect())))
                .collect();
            let now = 1_700_000_000;
            (Session {
                access_token: Cow::Owned(access),
                access_expires_at,
                refresh_token: refresh,
                refresh_expires_at,
                id_token,
                claims: Claims { sub: Cow::Owned(sub), sid, name, email },
                created_at: now - age,
                last_seen: now - idle,
                id,
                kept_claims: Cow::Owned(kept),
                dpop_key: dpop_key.map(Cow::Owned),
                resources: Cow::Owned(resources),
                access_lifetime,
                device_key: device_key.map(Cow::Owned),
                provider,
            }, now)
        }
    }

    /// A key ring of distinct keys.
    fn ring(min: usize, max: usize) -> impl Strategy<Value = Vec<[u8; 32]>> {
        proptest::collection::btree_set(any::<[u8; 32]>(), min..=max)
            .prop_map(|keys| keys.into_iter().collect::<Vec<_>>())
            .prop_shuffle()
    }

    /// The `Cookie` header a browser sends back for `Set-Cookie` lines.
    fn header(lines: &[String]) -> String {
        let parts: Vec<&str> = lines.iter().map(|l| l.split(';').next().unwrap()).collect();
        parts.join("; ")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any session sealed under any key ring opens, whole, under any ring that still holds
        /// the sealing key, in any order (a rotation puts the new key first, keeps the old).
        #[test]
        fn any_session_round_trips_under_any_rotation(
            (session, now) in any_session(),
            keys in ring(1, 4),
            newer in ring(1, 2),
            order in any::<u64>(),
        ) {
            let sealing = codec(keys.clone());
            let Ok(lines) = sealing.set_cookie_lines(&session, &SessionCookies::default(), now) else {
                // Only a session beyond the cookie cap may be refused.
                prop_assert!(sealing.seal(&session).unwrap().len() > cookie::MAX_CHUNKS * cookie::CHUNK_SIZE - 3);
                return Ok(());
            };
            let mut opening: Vec<[u8; 32]> = newer.into_iter().chain(keys).collect();
            let n = opening.len();
            opening.rotate_left((order % n as u64) as usize);
            opening.dedup();
            let header = header(&lines);
            let opener = codec(opening);
            let (_, payload) = opener.open([header.as_str()]);
            let payload = payload.unwrap();
            let opened = opener.decode(&payload, now).unwrap();
            prop_assert!(opened == session);
        }

        /// A session sealed under a key that left the ring never opens.
        #[test]
        fn a_retired_key_never_opens((session, _now) in any_session(), keys in ring(2, 4)) {
            let sealed = codec(keys.clone()).seal(&session).unwrap();
            let (_, payload) = codec(keys[1..].to_vec()).open([format!("__Host-tg={sealed}").as_str()]);
            prop_assert!(matches!(payload, Err(SessionError::Open(_)) | Err(SessionError::Cookie(_))), "{payload:?}");
        }

        /// Changing any one character of a seal (to another base64url one) never opens.
        #[test]
        fn a_mutated_seal_never_opens(
            (session, _now) in any_session(),
            at in any::<prop::sample::Index>(),
            to in "[A-Za-z0-9_-]",
        ) {
            let codec = codec(vec![[5u8; 32]]);
            let sealed = codec.seal(&session).unwrap();
            let i = at.index(sealed.len());
            let mut mutated = sealed.clone();
            mutated.replace_range(i..=i, &to);
            prop_assume!(mutated != sealed);
            let (_, payload) = codec.open([format!("__Host-tg={mutated}").as_str()]);
            prop_assert!(payload.is_err());
        }
    }
}
