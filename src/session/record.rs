//! Server-side sessions' two sealed forms (`[session] storage = "store"`): the *handle* the
//! browser's cookie carries, and the *record* the store keeps under it.
//!
//! The handle is the session's random id (128 bits), sealed with the session keys and bound to
//! the cookie name and a purpose of its own, so it is about a hundred bytes in the cookie and
//! neither a cookie-mode session nor a record opens as one (nor the other way round). The
//! record is the session as a cookie would carry it, plus what the admin API lists about it
//! ([`Meta`]), sealed and bound to its id: the store keeps text it cannot read, and a record
//! copied under another id (or into a cookie) does not open.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cookie::SessionCookies;
use super::{Session, SessionCodec, SessionError};

/// The first byte of a record's plaintext.
const RECORD_VERSION: u8 = 1;

/// What the admin API shows about a stored session besides its times: no token, no claim
/// beyond the subject it is listed under.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// The provider that issued the session's tokens.
    pub(crate) provider: String,
    /// The browser family of the login (`Chrome`, `Firefox`, …; [`user_agent_family`]).
    pub(crate) user_agent: String,
    /// The client address of the login, as tollgate saw it.
    pub(crate) client: String,
}

/// A session and its [`Meta`], as opened from the store.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) session: Arc<Session<'static>>,
    pub(crate) meta: Arc<Meta>,
}

/// The family of a `User-Agent` header, for listing sessions: never the header itself (it is
/// client-chosen text and a fingerprint).
pub(crate) fn user_agent_family(ua: Option<&str>) -> &'static str {
    let Some(ua) = ua else {
        return "unknown";
    };
    // Order matters: Edge and Opera say "Chrome" too, Chrome says "Safari".
    for (needle, family) in [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chromium/", "Chromium"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("python", "Python"),
        ("Go-http-client", "Go"),
        ("node", "Node"),
    ] {
        if ua.contains(needle) {
            return family;
        }
    }
    "other"
}

impl SessionCodec {
    fn handle_context(&self) -> String {
        format!("{}#handle", self.name)
    }

    fn record_context(&self, id: u128) -> String {
        format!("{}#record:{id:032x}", self.name)
    }

    /// The cookie value of a stored session: its id, sealed.
    pub(crate) fn seal_handle(&self, id: u128) -> Result<String, SessionError> {
        self.sealer
            .seal(&id.to_be_bytes(), self.handle_context().as_bytes())
            .map_err(|_| SessionError::Seal)
    }

    /// The id in a handle cookie's value, or why it is not one. A handle seen recently is not
    /// decrypted again (the same cache rules as whole sessions: [`super::opened`]).
    pub(crate) fn open_handle(&self, sealed: &str) -> Result<u128, SessionError> {
        let generation = self.sealer.generation();
        if let Some(id) = self.handles.get(sealed, generation) {
            return Ok(*id);
        }
        let plain = self.sealer.open(sealed, self.handle_context().as_bytes())?;
        let bytes: [u8; 16] = plain.try_into().map_err(|_| SessionError::Payload)?;
        let id = u128::from_be_bytes(bytes);
        self.handles.put(sealed, Arc::new(id), generation);
        Ok(id)
    }

    /// The `Set-Cookie` lines that give the browser the handle of `session` (which ends at its
    /// `max_lifetime`), expiring whatever session cookies `previous` had (a cookie-mode
    /// session's chunks, when one moves to the store).
    pub(crate) fn handle_cookie_lines(
        &self,
        session: &Session<'_>,
        previous: &SessionCookies<'_>,
        now: u64,
    ) -> Result<Vec<String>, SessionError> {
        let sealed = self.seal_handle(session.id)?;
        let ends_at = session.created_at.saturating_add(self.max_lifetime);
        let max_age = std::time::Duration::from_secs(ends_at.saturating_sub(now));
        Ok(self.attrs.store(&self.name, &sealed, max_age, previous)?)
    }

    /// The store's text for `session` and `meta`, bound to the session's id.
    pub(crate) fn seal_record(
        &self,
        session: &Session<'_>,
        meta: &Meta,
    ) -> Result<String, SessionError> {
        let mut plain =
            postcard::to_extend(meta, vec![RECORD_VERSION]).map_err(|_| SessionError::Seal)?;
        plain.push(super::payload_version(session));
        let plain = postcard::to_extend(session, plain).map_err(|_| SessionError::Seal)?;
        self.sealer
            .seal(&plain, self.record_context(session.id).as_bytes())
            .map_err(|_| SessionError::Seal)
    }

    /// Opens the record of session `id` from the store's text (lifetimes not yet checked).
    pub(crate) fn open_record(&self, sealed: &str, id: u128) -> Result<Record, SessionError> {
        let plain = self
            .sealer
            .open(sealed, self.record_context(id).as_bytes())?;
        let Some((&RECORD_VERSION, rest)) = plain.split_first() else {
            return Err(SessionError::Payload);
        };
        let (meta, rest) =
            postcard::take_from_bytes::<Meta>(rest).map_err(|_| SessionError::Payload)?;
        let Some((&version, bytes)) = rest.split_first() else {
            return Err(SessionError::Payload);
        };
        let session = super::decode_versioned(version, bytes)?;
        if session.id != id {
            return Err(SessionError::Payload);
        }
        Ok(Record {
            session: Arc::new(session),
            meta: Arc::new(meta),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SameSite, SessionConfig};
    use crate::session::fixture;
    use std::time::Duration;

    fn codec_named(name: &str) -> SessionCodec {
        SessionCodec::new(
            &SessionConfig {
                cookie_name: name.into(),
                dropped_host_prefix: false,
                keys: vec![[7u8; 32]],
                same_site: SameSite::Lax,
                max_lifetime: Duration::from_secs(3600),
                idle_timeout: Duration::from_secs(600),
                refresh_skew: Duration::from_secs(30),
                storage: crate::config::Storage::Store,
                device_binding: Default::default(),
                bound_cookie_lifetime: Duration::from_secs(300),
            },
            true,
        )
    }

    #[test]
    fn a_handle_is_small_and_opens_only_as_a_handle() {
        let codec = codec_named("__Host-tollgate");
        let s = fixture::session(1_700_000_000, &fixture::jwt(1200, 1));
        let lines = codec
            .handle_cookie_lines(&s, &SessionCookies::default(), s.created_at)
            .unwrap();
        assert_eq!(lines.len(), 1);
        let pair = lines[0].split(';').next().unwrap();
        assert!(pair.len() <= 300, "{} bytes", pair.len());
        let value = pair.split_once('=').unwrap().1;
        assert_eq!(codec.open_handle(value).unwrap(), s.id);
        assert_eq!(codec.open_handle(value).unwrap(), s.id, "from the cache");
        // Not a session cookie, and a session cookie is not a handle.
        let (_, payload) = codec.open([pair]);
        assert!(matches!(payload, Err(SessionError::Open(_))));
        let whole = codec.seal(&s).unwrap();
        assert!(codec.open_handle(&whole).is_err());
        // Another cookie name's handle does not open here.
        let other = codec_named("other").seal_handle(s.id).unwrap();
        assert!(codec.open_handle(&other).is_err());
    }

    #[test]
    fn a_record_opens_only_under_its_own_id() {
        let codec = codec_named("__Host-tollgate");
        let s = fixture::session(1_700_000_000, &fixture::jwt(1200, 1));
        let meta = Meta {
            provider: "default".into(),
            user_agent: "Chrome".into(),
            client: "127.0.0.1".into(),
        };
        let sealed = codec.seal_record(&s, &meta).unwrap();
        for secret in [
            &*s.access_token,
            s.refresh_token.as_deref().unwrap(),
            &s.claims.sub,
        ] {
            assert!(!sealed.contains(secret));
        }
        let r = codec.open_record(&sealed, s.id).unwrap();
        assert_eq!(*r.session, s);
        assert_eq!(*r.meta, meta);
        assert!(codec.open_record(&sealed, s.id ^ 1).is_err());
        // Nor as a cookie.
        let header = format!("__Host-tollgate={sealed}");
        assert!(codec.open([header.as_str()]).1.is_err());
    }

    #[test]
    fn user_agent_families() {
        let chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/148.0.0.0 Safari/537.36";
        assert_eq!(user_agent_family(Some(chrome)), "Chrome");
        let edge = format!("{chrome} Edg/148.0");
        assert_eq!(user_agent_family(Some(&edge)), "Edge");
        assert_eq!(user_agent_family(Some("curl/8.5.0")), "curl");
        assert_eq!(user_agent_family(Some("x")), "other");
        assert_eq!(user_agent_family(None), "unknown");
    }
}
