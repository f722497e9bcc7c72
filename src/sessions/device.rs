//! Device binding (DBSC) for the session service: the challenge a login offers, the binding a
//! registration makes, and the bound cookies that prove the device afterwards.
//!
//! The proofs themselves are checked in [`crate::session::dbsc`]; here they meet the session:
//! a challenge is sealed for one session and answered once (across replicas through the store,
//! as logout token ids are), and a registration puts the device's public key into the session,
//! which is then re-sealed wherever sessions live (cookie or store).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;

use super::Sessions;
use crate::request::Facts;
use crate::session::dbsc::{self, BoundKey, ProofError, Purpose};
use crate::session::Session;
use crate::store::StoreError;

/// Where browsers register and refresh (tollgate's own paths).
pub(crate) const REGISTER_PATH: &str = "/dbsc/register";
pub(crate) const REFRESH_PATH: &str = "/dbsc/refresh";

/// Why a registration or refresh was refused (a log reason, never the proof).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("no proof came")]
    Missing,
    #[error("the proof: {0}")]
    Proof(#[from] ProofError),
    #[error("the challenge is not this session's, or too old")]
    Challenge,
    #[error("the challenge was answered before")]
    Replayed,
    #[error("the session is bound to a key already")]
    AlreadyBound,
    #[error("the store cannot say whether the challenge was answered before: {0}")]
    Store(#[from] StoreError),
}

/// The session configuration a browser keeps after registering (the DBSC JSON).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Registration {
    pub(crate) session_identifier: String,
    pub(crate) refresh_url: &'static str,
    pub(crate) scope: Scope,
    pub(crate) credentials: Vec<Credential>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(crate) origin: String,
    pub(crate) include_site: bool,
    pub(crate) scope_specification: Vec<ScopeRule>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct ScopeRule {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) domain: String,
    pub(crate) path: &'static str,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Credential {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) attributes: String,
}

/// The `jti` of a proof, read before its signature is checked (it names the challenge the
/// signature is then checked against).
fn claimed_jti(proof: &str) -> Option<String> {
    let payload = proof.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("jti")?.as_str().map(str::to_string)
}

impl Sessions {
    /// A new challenge for `session` (the registration header of a login's answer, or a
    /// refresh's `Secure-Session-Challenge`).
    pub(crate) fn device_challenge(
        &self,
        session: &Session<'_>,
        purpose: Purpose,
        now: u64,
    ) -> Option<String> {
        dbsc::seal_challenge(
            self.codec().sealer(),
            self.codec().cookie_name(),
            purpose,
            session.id,
            now,
        )
    }

    /// The `Secure-Session-Registration` header a login's answer carries with device binding
    /// on: ES256 keys, the registration path, and a challenge for the new session.
    pub(crate) fn registration_header(&self, session: &Session<'_>, now: u64) -> Option<String> {
        if !self.device_binding() {
            return None;
        }
        let challenge = self.device_challenge(session, Purpose::Register, now)?;
        Some(format!(
            "(ES256);path=\"{REGISTER_PATH}\";challenge=\"{challenge}\""
        ))
    }

    /// The identifier the browser names the bound session by: derived from the session id, so
    /// the id itself (what the admin API lists) is not handed out.
    pub(crate) fn device_session_identifier(&self, session: &Session<'_>) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &session.id.to_be_bytes());
        URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
    }

    /// Checks a proof answering a challenge for `session`, signed by `key` (a refresh) or by
    /// the key in its header (a registration, `key` none); the challenge is used up. The key
    /// that signed.
    pub(crate) async fn check_device_proof(
        &self,
        session: &Session<'_>,
        proof: Option<&str>,
        key: Option<&BoundKey>,
        facts: &Facts<'_>,
    ) -> Result<BoundKey, DeviceError> {
        let proof = proof.ok_or(DeviceError::Missing)?;
        if proof.len() > dbsc::MAX_PROOF_BYTES {
            return Err(ProofError::TooLarge.into());
        }
        let jti = claimed_jti(proof).ok_or(ProofError::Malformed)?;
        let sealer = self.codec().sealer();
        let purpose = match key {
            Some(_) => Purpose::Refresh,
            None => Purpose::Register,
        };
        if !dbsc::check_challenge(
            sealer,
            self.codec().cookie_name(),
            purpose,
            &jti,
            session.id,
            facts.now,
        ) {
            return Err(DeviceError::Challenge);
        }
        let bound = match key {
            Some(key) => {
                dbsc::verify_refresh(proof, key, &jti)?;
                key.clone()
            }
            None => dbsc::verify_registration(proof, &jti)?,
        };
        // Once: a copied proof is worth nothing. The id is a digest (the challenge is long).
        let digest = ring::digest::digest(&ring::digest::SHA256, jti.as_bytes());
        let id = format!("dbsc:{}", URL_SAFE_NO_PAD.encode(digest.as_ref()));
        if !self.first_use(&id, purpose.ttl(), facts.now).await? {
            return Err(DeviceError::Replayed);
        }
        Ok(bound)
    }

    /// The DBSC session configuration for `session` at `host`: the whole origin in scope but
    /// the refresh path, one bound cookie.
    pub(crate) fn device_registration(
        &self,
        session: &Session<'_>,
        origin: &str,
        host: &str,
        cookie_attributes: String,
    ) -> Registration {
        Registration {
            session_identifier: self.device_session_identifier(session),
            refresh_url: REFRESH_PATH,
            scope: Scope {
                origin: origin.to_string(),
                include_site: false,
                scope_specification: vec![ScopeRule {
                    kind: "exclude",
                    domain: host.to_string(),
                    path: REFRESH_PATH,
                }],
            },
            credentials: vec![Credential {
                kind: "cookie",
                name: crate::session::cookie::bound_cookie_name(self.codec().cookie_name()),
                attributes: cookie_attributes,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CsrfConfig, SameSite, SessionConfig};
    use crate::ops::metrics::Metrics;
    use crate::session::fixture;
    use crate::session::SessionCodec;
    use crate::sessions::csrf::CsrfPolicy;
    use http::{HeaderMap, Method};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use std::sync::Arc;
    use std::time::Duration;

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
            bound_cookie_lifetime: Duration::from_secs(300),
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

    fn device() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap()
    }

    fn proof(signer: &EcdsaKeyPair, jti: &str, with_jwk: bool) -> String {
        let point = signer.public_key().as_ref();
        let mut header = serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt"});
        if with_jwk {
            header["jwk"] = serde_json::json!({
                "kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            });
        }
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", b64(&header), b64(&serde_json::json!({"jti": jti})));
        let sig = signer
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[tokio::test]
    async fn a_challenge_registers_a_device_once_and_its_key_refreshes() {
        let s = sessions();
        let session = fixture::session(NOW, "at");
        let headers = HeaderMap::new();
        let facts = Facts {
            method: &Method::POST,
            query: None,
            headers: &headers,
            body: None,
            request_id: "rid",
            now: NOW + 1,
            client: None,
        };
        let dev = device();
        let challenge = s
            .device_challenge(&session, Purpose::Register, NOW)
            .unwrap();
        let registration = proof(&dev, &challenge, true);
        let key = s
            .check_device_proof(&session, Some(&registration), None, &facts)
            .await
            .unwrap();
        assert_eq!(&key.0[..], dev.public_key().as_ref());
        // The same proof again: used up.
        assert!(matches!(
            s.check_device_proof(&session, Some(&registration), None, &facts)
                .await,
            Err(DeviceError::Replayed)
        ));
        // Another session's challenge, or none at all.
        let mut other = fixture::session(NOW, "at");
        other.id ^= 1;
        let foreign = proof(
            &dev,
            &s.device_challenge(&other, Purpose::Register, NOW).unwrap(),
            true,
        );
        assert!(matches!(
            s.check_device_proof(&session, Some(&foreign), None, &facts)
                .await,
            Err(DeviceError::Challenge)
        ));
        assert!(matches!(
            s.check_device_proof(&session, None, None, &facts).await,
            Err(DeviceError::Missing)
        ));
        // A refresh: the bound key signs a new nonce; another device cannot.
        let nonce = s.device_challenge(&session, Purpose::Refresh, NOW).unwrap();
        assert!(matches!(
            s.check_device_proof(
                &session,
                Some(&proof(&device(), &nonce, true)),
                Some(&key),
                &facts
            )
            .await,
            Err(DeviceError::Proof(ProofError::Signature))
        ));
        let refreshed = s
            .check_device_proof(
                &session,
                Some(&proof(&dev, &nonce, false)),
                Some(&key),
                &facts,
            )
            .await
            .unwrap();
        assert_eq!(refreshed, key);
    }

    #[test]
    fn the_registration_json_excludes_the_refresh_path() {
        let s = sessions();
        let session = fixture::session(NOW, "at");
        let r = s.device_registration(
            &session,
            "https://app.example.com",
            "app.example.com",
            "Path=/; Secure; HttpOnly; SameSite=Lax".into(),
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["refresh_url"], "/dbsc/refresh");
        assert_eq!(v["scope"]["scope_specification"][0]["type"], "exclude");
        assert_eq!(
            v["scope"]["scope_specification"][0]["path"],
            "/dbsc/refresh"
        );
        assert_eq!(v["credentials"][0]["name"], "__Host-tg-bound");
        let id = v["session_identifier"].as_str().unwrap();
        assert!(!id.contains(&format!("{:x}", session.id)));
        assert_eq!(id, s.device_session_identifier(&session));
    }
}
