//! The DBSC endpoints (`[session] device_binding = "dbsc"`): `POST /dbsc/register` binds a
//! logged-in session to the key its browser registers, and `POST /dbsc/refresh` gives a bound
//! session a fresh bound cookie once the browser proves it still holds that key.
//!
//! Both answer with the session configuration JSON Chromium keeps ([`Registration`]) and set
//! the bound cookie, valid `bound_cookie_lifetime`. A refresh without a proof is answered
//! `403` with `Secure-Session-Challenge: "<nonce>";id="<session identifier>"`, and the browser
//! repeats it signed. A refused proof is `400 invalid_device_proof`, counted and logged with its
//! reason (never the proof).

use std::time::Duration;

use http::Method;

use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::dbsc::{seal_bound, BoundKey, Purpose};
use crate::session::{Session, SessionError};
use crate::sessions::device::{DeviceError, Registration};
use crate::sessions::{CookieWork, Sessions};

/// The header a browser's proof comes in.
const RESPONSE_HEADER: &str = "secure-session-response";

/// Where the browser is and what its bound cookie looks like.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    /// `scheme://host[:port]` of `public_url`.
    pub(crate) origin: String,
    /// The host of `public_url`.
    pub(crate) host: String,
    pub(crate) bound_cookie_lifetime: Duration,
    /// The bound cookie's attributes as the registration JSON states them.
    pub(crate) attributes: String,
}

impl Binding {
    /// The endpoints' settings from `config`, with `device_binding = "dbsc"`.
    pub(crate) fn from_config(config: &crate::config::Config) -> Option<Binding> {
        if config.session.device_binding != crate::config::DeviceBinding::Dbsc {
            return None;
        }
        let same_site = match config.session.same_site {
            crate::config::SameSite::Lax => "Lax",
            crate::config::SameSite::Strict => "Strict",
        };
        let secure = if config.server.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        Some(Binding {
            origin: config.server.public_origin.clone(),
            host: config
                .server
                .public_url
                .host_str()
                .unwrap_or_default()
                .to_string(),
            bound_cookie_lifetime: config.session.bound_cookie_lifetime,
            attributes: format!("Path=/{secure}; HttpOnly; SameSite={same_site}"),
        })
    }
}

fn proof<'f>(facts: &Facts<'f>) -> Option<&'f str> {
    facts
        .headers
        .get(RESPONSE_HEADER)
        .and_then(|v| v.to_str().ok())
}

fn refused(sessions: &Sessions, e: &DeviceError, facts: &Facts<'_>) -> Fault {
    sessions.metrics().dbsc("refused");
    let reason = match e {
        DeviceError::Missing => "missing",
        DeviceError::Proof(p) => p.reason(),
        DeviceError::Challenge => "challenge",
        DeviceError::Replayed => "replayed",
        DeviceError::AlreadyBound => "already_bound",
        DeviceError::Store(_) => "store_unavailable",
    };
    tracing::info!(
        request_id = facts.request_id,
        reason,
        "a device proof was refused"
    );
    match e {
        DeviceError::Store(_) => Fault::StoreUnavailable,
        _ => Fault::InvalidDeviceProof,
    }
}

impl Binding {
    /// The answer that (re)sets the bound cookie for `session`.
    fn bound(&self, sessions: &Sessions, session: &Session<'_>, now: u64) -> Result<Reply, Fault> {
        let codec = sessions.codec();
        let name = crate::session::cookie::bound_cookie_name(codec.cookie_name());
        let until = now.saturating_add(self.bound_cookie_lifetime.as_secs());
        let value = seal_bound(codec.sealer(), &name, session.id, until).ok_or(Fault::Internal)?;
        let registration: Registration = sessions.device_registration(
            session,
            &self.origin,
            &self.host,
            self.attributes.clone(),
        );
        Ok(
            Reply::json(200, &registration).with_cookies([codec.cookie_line(
                &name,
                &value,
                self.bound_cookie_lifetime,
            )]),
        )
    }

    /// `POST /dbsc/register`.
    pub(crate) async fn register(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Result<Reply, Fault> {
        if facts.method != Method::POST {
            return Err(Fault::MethodNotAllowed);
        }
        let opened = sessions.open(facts).await;
        let session = sessions
            .session(&opened.payload, facts)
            .map_err(no_session)?;
        // Bound once, for the session's life: a new key would be a thief's.
        if session.device_key.is_some() {
            return Err(refused(sessions, &DeviceError::AlreadyBound, facts));
        }
        let key = sessions
            .check_device_proof(&session, proof(facts), None, facts)
            .await
            .map_err(|e| refused(sessions, &e, facts))?;
        let mut bound = session.into_owned();
        bound.device_key = Some(key.0.to_vec().into());
        let reply = self.bound(sessions, &bound, facts.now)?;
        let lines = sessions
            .cookie_lines(CookieWork::Reseal(Box::new(bound)), &opened, facts)
            .await;
        sessions.metrics().dbsc("registered");
        tracing::info!(
            request_id = facts.request_id,
            "a session was bound to its device"
        );
        Ok(reply.with_cookies(lines).with_outcome("dbsc_register"))
    }

    /// `POST /dbsc/refresh`.
    pub(crate) async fn refresh(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Result<Reply, Fault> {
        if facts.method != Method::POST {
            return Err(Fault::MethodNotAllowed);
        }
        let opened = sessions.open(facts).await;
        let session = sessions
            .session(&opened.payload, facts)
            .map_err(no_session)?;
        let Some(key) = session
            .device_key
            .as_deref()
            .and_then(|k| <[u8; 65]>::try_from(k).ok())
            .map(BoundKey)
        else {
            return Err(Fault::DeviceBindingRequired);
        };
        let Some(given) = proof(facts) else {
            let nonce = sessions
                .device_challenge(&session, Purpose::Refresh, facts.now)
                .ok_or(Fault::Internal)?;
            let id = sessions.device_session_identifier(&session);
            return Ok(Reply::from(Fault::DeviceProofRequired)
                .with_status(403)
                .with_header(
                    "secure-session-challenge",
                    format!("\"{nonce}\";id=\"{id}\""),
                )
                .with_outcome("dbsc_challenge"));
        };
        sessions
            .check_device_proof(&session, Some(given), Some(&key), facts)
            .await
            .map_err(|e| refused(sessions, &e, facts))?;
        sessions.metrics().dbsc("refreshed");
        Ok(self
            .bound(sessions, &session, facts.now)?
            .with_outcome("dbsc_refresh"))
    }
}

fn no_session(e: SessionError) -> Fault {
    match e {
        SessionError::StoreUnavailable => Fault::StoreUnavailable,
        _ => Fault::Unauthenticated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsrfConfig, SameSite, SessionConfig};
    use crate::ops::metrics::Metrics;
    use crate::session::cookie::SessionCookies;
    use crate::session::fixture;
    use crate::session::SessionCodec;
    use crate::sessions::csrf::CsrfPolicy;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use http::HeaderMap;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use std::sync::Arc;

    const NOW: u64 = 1_700_000_000;

    fn sessions() -> Sessions {
        let config = SessionConfig {
            cookie_name: "__Host-tg".into(),
            dropped_host_prefix: false,
            keys: vec![[6u8; 32]],
            same_site: SameSite::Lax,
            max_lifetime: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            refresh_skew: Duration::from_secs(30),
            storage: Default::default(),
            device_binding: crate::config::DeviceBinding::Dbsc,
            bound_cookie_lifetime: Duration::from_secs(10),
        };
        Sessions::new(
            SessionCodec::new(&config, true),
            Arc::default(),
            None,
            CsrfPolicy::new(
                &CsrfConfig {
                    header: http::HeaderName::from_static("x-csrf"),
                    allowed_origins: vec![],
                },
                "https://app.example.com",
            ),
            Metrics::new(),
            config.storage,
        )
    }

    fn binding() -> Binding {
        Binding {
            origin: "https://app.example.com".into(),
            host: "app.example.com".into(),
            bound_cookie_lifetime: Duration::from_secs(10),
            attributes: "Path=/; Secure; HttpOnly; SameSite=Lax".into(),
        }
    }

    fn proof(signer: &EcdsaKeyPair, jti: &str) -> String {
        let point = signer.public_key().as_ref();
        let header = serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": {
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }});
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", b64(&header), b64(&serde_json::json!({"jti": jti})));
        let sig = signer
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// The `Cookie` header of `lines` (name=value of each kept cookie).
    fn cookie(lines: &[String]) -> String {
        lines
            .iter()
            .filter(|l| !l.contains("Max-Age=0"))
            .map(|l| l.split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn facts<'h>(headers: &'h HeaderMap, now: u64) -> Facts<'h> {
        Facts {
            method: &Method::POST,
            query: None,
            headers,
            body: None,
            request_id: "rid",
            now,
            client: None,
        }
    }

    /// Register a device, then refresh: challenge (403), then a signed nonce (200 and a fresh
    /// bound cookie); a proof from another device is refused.
    #[tokio::test]
    async fn register_then_refresh() {
        let s = sessions();
        let b = binding();
        let session = fixture::session(NOW, "at");
        let session_cookie = cookie(
            &s.codec()
                .set_cookie_lines(&session, &SessionCookies::default(), NOW)
                .unwrap(),
        );
        let device = {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap()
        };
        let challenge = s
            .device_challenge(&session, Purpose::Register, NOW)
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("cookie", session_cookie.parse().unwrap());
        h.insert(RESPONSE_HEADER, proof(&device, &challenge).parse().unwrap());
        let reply = b.register(&facts(&h, NOW + 1), &s).await.unwrap();
        assert_eq!(reply.status(), 200);
        let set = reply.set_cookies().to_vec();
        assert!(set
            .iter()
            .any(|l| l.starts_with("__Host-tg-bound=") && l.contains("Max-Age=10")));
        // The re-sealed session carries the key: without a bound cookie it is refused.
        let bound_session = cookie(&set);
        // Bound once: another registration, even for a fresh registration challenge, is a
        // thief's attempt to move the session to their own key.
        let thief = {
            let rng = SystemRandom::new();
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap()
        };
        let again = s
            .device_challenge(&session, Purpose::Register, NOW + 2)
            .unwrap();
        let mut h = HeaderMap::new();
        h.insert("cookie", bound_session.parse().unwrap());
        h.insert(RESPONSE_HEADER, proof(&thief, &again).parse().unwrap());
        assert!(matches!(
            b.register(&facts(&h, NOW + 2), &s).await,
            Err(Fault::InvalidDeviceProof)
        ));
        // A refresh nonce (which anyone with the session cookie can get) registers nothing.
        let nonce = s.device_challenge(&session, Purpose::Refresh, NOW).unwrap();
        let mut h = HeaderMap::new();
        h.insert("cookie", session_cookie.parse().unwrap());
        h.insert(RESPONSE_HEADER, proof(&thief, &nonce).parse().unwrap());
        assert!(matches!(
            b.register(&facts(&h, NOW + 2), &s).await,
            Err(Fault::InvalidDeviceProof)
        ));

        // Refresh: first a challenge.
        let mut h = HeaderMap::new();
        h.insert("cookie", bound_session.parse().unwrap());
        let reply = b.refresh(&facts(&h, NOW + 20), &s).await.unwrap();
        assert_eq!(reply.status(), 403);
        let challenge_header = reply
            .header("secure-session-challenge")
            .unwrap()
            .to_string();
        let nonce = challenge_header.split('"').nth(1).unwrap().to_string();
        assert!(challenge_header.contains(";id=\""));
        // Another device's proof of that nonce: refused.
        h.insert(RESPONSE_HEADER, proof(&thief, &nonce).parse().unwrap());
        assert!(matches!(
            b.refresh(&facts(&h, NOW + 21), &s).await,
            Err(Fault::InvalidDeviceProof)
        ));
        // The device's: a fresh bound cookie.
        h.insert(RESPONSE_HEADER, proof(&device, &nonce).parse().unwrap());
        let reply = b.refresh(&facts(&h, NOW + 21), &s).await.unwrap();
        assert_eq!(reply.status(), 200);
        assert!(reply
            .set_cookies()
            .iter()
            .any(|l| l.starts_with("__Host-tg-bound=")));
        let text = String::from_utf8(s.metrics().render()).unwrap();
        assert!(
            text.contains(r#"tollgate_dbsc_total{event="registered"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_dbsc_total{event="refreshed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_dbsc_total{event="refused"} 3"#),
            "{text}"
        );
    }
}
