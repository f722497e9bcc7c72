//! ID token validation (OpenID Connect Core §3.1.3.7), before anything is stored.
//!
//! Checked, in order: the algorithm is one the provider advertises (never `none`, never a
//! symmetric one), the signature against the provider's JWKS, `iss`, `aud` contains our
//! client_id, `azp` when there are several audiences (or whenever present), `exp` and `iat`
//! with a small leeway, `nonce` equals the one this login sent, and `at_hash` matches the
//! access token when present.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::claims::ClaimValue;

/// Clock skew tolerated between tollgate and the provider.
pub(crate) const LEEWAY_SECS: u64 = 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdTokenError {
    #[error("the ID token is malformed")]
    Malformed,
    #[error("the ID token is signed with {0:?}, which the provider does not advertise")]
    Algorithm(Algorithm),
    #[error("no provider key matches the ID token's kid")]
    UnknownKey,
    #[error("the ID token failed validation: {0}")]
    Invalid(String),
    #[error("the ID token's azp is not our client_id")]
    Azp,
    #[error("the ID token's iat is in the future")]
    IssuedInFuture,
    #[error("the ID token's nonce does not match this login")]
    Nonce,
    #[error("the ID token's at_hash does not match the access token")]
    AtHash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Audience {
    // The value itself was checked by jsonwebtoken's audience validation.
    One(#[allow(dead_code)] String),
    Many(Vec<String>),
}

/// The validated claims tollgate keeps.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct IdClaims {
    pub sub: String,
    pub iat: u64,
    pub sid: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    pub preferred_username: Option<String>,
    nonce: Option<String>,
    azp: Option<String>,
    aud: Audience,
    at_hash: Option<String>,
    /// Every other claim, for the ones the configuration keeps ([`Self::keep`]).
    #[serde(flatten)]
    others: serde_json::Map<String, serde_json::Value>,
}

impl IdClaims {
    /// Every claim named in `names`, as the session keeps it: a claim the token lacks, or of
    /// a type no rule can compare, is kept as an empty list (it matches nothing), so that a
    /// session records which names it looked for ([`crate::claims::ClaimRule::asks_unknown`]).
    pub(crate) fn keep(&self, names: &[String]) -> Vec<(String, ClaimValue)> {
        names
            .iter()
            .map(|n| {
                let v = self.claim(n).and_then(|v| ClaimValue::from_json(&v));
                (n.clone(), v.unwrap_or(ClaimValue::Many(Vec::new())))
            })
            .collect()
    }

    /// The authentication context class the login reached (`acr`), if the token says.
    pub(crate) fn acr(&self) -> Option<&str> {
        self.others.get("acr").and_then(|v| v.as_str())
    }

    /// When the user authenticated (`auth_time`), if the token says.
    pub(crate) fn auth_time(&self) -> Option<u64> {
        self.others.get("auth_time").and_then(|v| v.as_u64())
    }

    fn claim(&self, name: &str) -> Option<serde_json::Value> {
        let text = |v: &Option<String>| v.clone().map(serde_json::Value::String);
        match name {
            "sub" => Some(serde_json::Value::String(self.sub.clone())),
            "email" => text(&self.email),
            "name" => text(&self.name),
            "sid" => text(&self.sid),
            "preferred_username" => text(&self.preferred_username),
            other => self.others.get(other).cloned(),
        }
    }
}

/// What the ID token must match.
pub(crate) struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The login's nonce, which the token must carry; `None` for an ID token from a refresh,
    /// which has none to match (OpenID Connect Core §12.2).
    pub nonce: Option<&'a str>,
    pub algorithms: &'a [Algorithm],
    pub access_token: &'a str,
    pub now: u64,
}

/// The header fields needed to pick a key.
pub(crate) fn header(token: &str) -> Result<(Algorithm, Option<String>), IdTokenError> {
    // `alg: none` and unknown algorithms fail to parse here.
    let h = jsonwebtoken::decode_header(token).map_err(|_| IdTokenError::Malformed)?;
    Ok((h.alg, h.kid))
}

/// Validates `token` signed with `alg` against `key`.
pub(crate) fn validate(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    expected: &Expected<'_>,
) -> Result<IdClaims, IdTokenError> {
    if !expected.algorithms.contains(&alg) {
        return Err(IdTokenError::Algorithm(alg));
    }
    let mut v = Validation::new(alg);
    v.set_issuer(&[expected.issuer]);
    v.set_audience(&[expected.client_id]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    let claims = jsonwebtoken::decode::<IdClaims>(token, key, &v)
        .map_err(|e| IdTokenError::Invalid(e.kind_description()))?
        .claims;
    let several_audiences = matches!(&claims.aud, Audience::Many(a) if a.len() > 1);
    match claims.azp.as_deref() {
        Some(azp) if azp != expected.client_id => return Err(IdTokenError::Azp),
        None if several_audiences => return Err(IdTokenError::Azp),
        _ => {}
    }
    if claims.iat > expected.now + LEEWAY_SECS {
        return Err(IdTokenError::IssuedInFuture);
    }
    if let Some(nonce) = expected.nonce {
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(IdTokenError::Nonce);
        }
    }
    if let Some(at_hash) = &claims.at_hash {
        if *at_hash != token_hash(alg, expected.access_token) {
            return Err(IdTokenError::AtHash);
        }
    }
    Ok(claims)
}

/// `at_hash`: base64url of the left half of the hash of the token, with the hash that matches
/// the signing algorithm's size (OpenID Connect Core §3.1.3.6).
pub(crate) fn token_hash(alg: Algorithm, token: &str) -> String {
    use Algorithm::*;
    let digest: Vec<u8> = match alg {
        HS384 | RS384 | PS384 | ES384 => Sha384::digest(token).to_vec(),
        HS512 | RS512 | PS512 => Sha512::digest(token).to_vec(),
        // EdDSA with Ed25519 uses SHA-512 per the OpenID Foundation's guidance.
        EdDSA => Sha512::digest(token).to_vec(),
        _ => Sha256::digest(token).to_vec(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

pub(crate) trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for jsonwebtoken::errors::Error {
    fn kind_description(&self) -> String {
        use jsonwebtoken::errors::ErrorKind::*;
        match self.kind() {
            InvalidSignature => "bad signature".into(),
            ExpiredSignature => "expired".into(),
            InvalidIssuer => "wrong issuer".into(),
            InvalidAudience => "wrong audience".into(),
            MissingRequiredClaim(c) => format!("missing claim {c}"),
            ImmatureSignature => "not yet valid".into(),
            InvalidAlgorithm => "algorithm mismatch".into(),
            _ => "malformed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"test-only-hmac-key-test-only-hmac-key";

    fn sign(claims: serde_json::Value, alg: Algorithm) -> String {
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn claims(now: u64) -> serde_json::Value {
        json!({
            "iss": "https://idp.example", "sub": "u1", "aud": "app", "exp": now + 300,
            "iat": now, "nonce": "n-1", "name": "Ada", "email": "ada@example.com", "sid": "s1",
            "at_hash": token_hash(Algorithm::HS256, "the-access-token"),
        })
    }

    /// HS256 stands in for the provider's algorithms here: the checks after the signature
    /// are the same for every algorithm, and the integration tests use RS256 from a real
    /// provider.
    fn check(token: &str, now: u64) -> Result<IdClaims, IdTokenError> {
        validate(
            token,
            header(token)?.0,
            &DecodingKey::from_secret(SECRET),
            &Expected {
                issuer: "https://idp.example",
                client_id: "app",
                nonce: Some("n-1"),
                algorithms: &[Algorithm::HS256],
                access_token: "the-access-token",
                now,
            },
        )
    }

    #[test]
    fn a_refresh_id_token_needs_no_nonce_but_every_other_check() {
        let now = crate::unix_now();
        let mut c = claims(now);
        c.as_object_mut().unwrap().remove("nonce");
        let expected = |issuer| Expected {
            issuer,
            client_id: "app",
            nonce: None,
            algorithms: &[Algorithm::HS256],
            access_token: "the-access-token",
            now,
        };
        let token = sign(c, Algorithm::HS256);
        let key = DecodingKey::from_secret(SECRET);
        assert!(validate(
            &token,
            Algorithm::HS256,
            &key,
            &expected("https://idp.example")
        )
        .is_ok());
        assert!(validate(
            &token,
            Algorithm::HS256,
            &key,
            &expected("https://other.example")
        )
        .is_err());
    }

    #[test]
    fn valid_token_yields_claims() {
        let now = crate::unix_now();
        let c = check(&sign(claims(now), Algorithm::HS256), now).unwrap();
        assert_eq!(c.sub, "u1");
        assert_eq!(c.name.as_deref(), Some("Ada"));
        assert_eq!(c.sid.as_deref(), Some("s1"));
    }

    #[test]
    fn each_check_refuses() {
        let now = crate::unix_now();
        let with = |k: &str, v: serde_json::Value| {
            let mut c = claims(now);
            c[k] = v;
            sign(c, Algorithm::HS256)
        };
        assert_eq!(
            check(&with("nonce", json!("other")), now).unwrap_err(),
            IdTokenError::Nonce
        );
        assert!(matches!(
            check(&with("iss", json!("https://evil")), now),
            Err(IdTokenError::Invalid(_))
        ));
        assert!(matches!(
            check(&with("aud", json!("other-app")), now),
            Err(IdTokenError::Invalid(_))
        ));
        assert!(matches!(
            check(&with("exp", json!(now - 3600)), now),
            Err(IdTokenError::Invalid(_))
        ));
        assert_eq!(
            check(&with("iat", json!(now + 3600)), now).unwrap_err(),
            IdTokenError::IssuedInFuture
        );
        assert_eq!(
            check(&with("aud", json!(["app", "api"])), now).unwrap_err(),
            IdTokenError::Azp
        );
        assert!(check(
            &{
                let mut c = claims(now);
                c["aud"] = json!(["app", "api"]);
                c["azp"] = json!("app");
                sign(c, Algorithm::HS256)
            },
            now
        )
        .is_ok());
        assert_eq!(
            check(&with("azp", json!("other")), now).unwrap_err(),
            IdTokenError::Azp
        );
        assert_eq!(
            check(&with("at_hash", json!("AAAA")), now).unwrap_err(),
            IdTokenError::AtHash
        );
        let mut no_nonce = claims(now);
        no_nonce.as_object_mut().unwrap().remove("nonce");
        assert_eq!(
            check(&sign(no_nonce, Algorithm::HS256), now).unwrap_err(),
            IdTokenError::Nonce
        );
        // A token signed with an algorithm the provider does not advertise.
        assert_eq!(
            check(&sign(claims(now), Algorithm::HS384), now).unwrap_err(),
            IdTokenError::Algorithm(Algorithm::HS384)
        );
        // Tampered payload: bad signature.
        let t = sign(claims(now), Algorithm::HS256);
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&with_sub(claims(now), "admin")).unwrap());
        parts[1] = &forged;
        assert!(matches!(
            check(&parts.join("."), now),
            Err(IdTokenError::Invalid(_))
        ));
    }

    fn with_sub(mut c: serde_json::Value, sub: &str) -> serde_json::Value {
        c["sub"] = json!(sub);
        c
    }

    #[test]
    fn alg_none_is_refused() {
        let now = crate::unix_now();
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims(now)).unwrap());
        assert_eq!(
            check(&format!("{h}.{p}."), now).unwrap_err(),
            IdTokenError::Malformed
        );
    }

    #[test]
    fn at_hash_known_vector() {
        // OpenID Connect Core, Appendix A.3 example: RS256 access token and its at_hash.
        assert_eq!(
            token_hash(
                Algorithm::RS256,
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }
}
