//! The provider's signing keys (JWKS), as verification keys ready for use.
//!
//! Keys are parsed once per fetch. A key is found by `kid` and must fit the token's algorithm
//! family (an RSA key never verifies an ES256 signature); encryption keys are ignored. Fetching
//! again on an unknown `kid` (key rotation) is rate-limited by the caller
//! ([`super::client::Oidc`]), never done per request.

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("fetching JWKS {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("reading JWKS {url}: {source}")]
    Body {
        url: String,
        #[source]
        source: super::http::BodyError,
    },
    #[error("JWKS {url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("JWKS {url} is not a JWK set: {problem}")]
    Document { url: String, problem: String },
    #[error("JWKS {url} holds no usable signing key")]
    Empty { url: String },
}

impl JwksError {
    pub(crate) fn is_too_large(&self) -> bool {
        matches!(self, JwksError::Body { source, .. } if source.is_too_large())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
}

fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Some(Family::Rsa),
        ES256 | ES384 => Some(Family::Ec),
        EdDSA => Some(Family::Okp),
        HS256 | HS384 | HS512 => None,
    }
}

struct Key {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// A parsed JWK set.
pub(crate) struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_struct("Jwks").field("kids", &kids).finish()
    }
}

/// The bit length of an RSA modulus given as base64url (0 when it does not decode).
fn rsa_bits(n: &str) -> usize {
    use base64::Engine;
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(n.trim_end_matches('='))
    else {
        return 0;
    };
    match bytes.iter().position(|&b| b != 0) {
        Some(i) => (bytes.len() - i) * 8 - bytes[i].leading_zeros() as usize,
        None => 0,
    }
}

impl Jwks {
    /// Parses a JWK set document, keeping the signing keys tollgate can use.
    pub(crate) fn parse(json: &[u8], url: &str) -> Result<Jwks, JwksError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| JwksError::Document {
            url: url.to_string(),
            problem: e.to_string(),
        })?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|jwk| {
                let family = match &jwk.algorithm {
                    // Under 2048 bits an RSA key is breakable (NIST SP 800-131A has disallowed
                    // them for signatures since 2013; FAPI 2.0 requires 2048): not used.
                    AlgorithmParameters::RSA(rsa) if rsa_bits(&rsa.n) < 2048 => {
                        tracing::warn!(url, kid = ?jwk.common.key_id, "provider RSA key under 2048 bits ignored");
                        return None;
                    }
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
                    AlgorithmParameters::OctetKey(_) => return None,
                };
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    family,
                    key: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(JwksError::Empty {
                url: url.to_string(),
            });
        }
        Ok(Jwks { keys })
    }

    pub(crate) async fn fetch(
        http: &reqwest::Client,
        url: &Url,
        max_bytes: usize,
    ) -> Result<Jwks, JwksError> {
        let u = url.as_str().to_string();
        let resp = http
            .get(url.clone())
            .header("accept", "application/json, application/jwk-set+json")
            .send()
            .await
            .map_err(|source| JwksError::Http {
                url: u.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(JwksError::Status {
                url: u,
                status: resp.status().as_u16(),
            });
        }
        let body = super::http::read_body(resp, max_bytes)
            .await
            .map_err(|source| JwksError::Body {
                url: u.clone(),
                source,
            })?;
        Jwks::parse(&body, &u)
    }

    /// The key for a token signed with `alg` under `kid`. Without a `kid`, the only key of
    /// the right family is used; with several candidates and no `kid`, nothing is chosen.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&DecodingKey> {
        let family = family_of(alg)?;
        let mut candidates = self.keys.iter().filter(|k| k.family == family);
        match kid {
            Some(kid) => candidates
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key),
            None => {
                let first = candidates.next()?;
                candidates.next().is_none().then_some(&first.key)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"{"keys":[
      {"kty":"RSA","kid":"r1","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
      {"kty":"RSA","kid":"enc1","use":"enc","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
      {"kty":"oct","kid":"s1","k":"c2VjcmV0"}
    ]}"#;

    #[test]
    fn finds_signing_keys_by_kid_and_family() {
        let j = Jwks::parse(SET.as_bytes(), "test").unwrap();
        assert!(j.find(Some("r1"), Algorithm::RS256).is_some());
        assert!(j.find(Some("r1"), Algorithm::PS256).is_some());
        assert!(
            j.find(Some("r1"), Algorithm::ES256).is_none(),
            "wrong family"
        );
        assert!(
            j.find(Some("enc1"), Algorithm::RS256).is_none(),
            "encryption key"
        );
        assert!(
            j.find(Some("s1"), Algorithm::HS256).is_none(),
            "symmetric keys never"
        );
        assert!(j.find(Some("nope"), Algorithm::RS256).is_none());
        assert!(
            j.find(None, Algorithm::RS256).is_some(),
            "the only RSA signing key"
        );
        assert!(Jwks::parse(br#"{"keys":[]}"#, "t").is_err());
        assert!(Jwks::parse(b"not json", "t").is_err());
    }

    /// RSA keys under 2048 bits are not used (the set above is 2048-bit).
    #[test]
    fn short_rsa_keys_are_ignored() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let mut n2048 = vec![0x80u8];
        n2048.extend([1u8; 255]);
        assert_eq!(rsa_bits(&b64(&n2048)), 2048);
        let mut n1024 = vec![0u8, 0xff];
        n1024.extend([1u8; 127]);
        assert_eq!(rsa_bits(&b64(&n1024)), 1024);
        assert_eq!(rsa_bits(&b64(&[0x01])), 1);
        assert_eq!(rsa_bits("***"), 0);
        let short = format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"weak","n":"{}","e":"AQAB"}}]}}"#,
            b64(&n1024)
        );
        assert!(
            Jwks::parse(short.as_bytes(), "t").is_err(),
            "no usable key left"
        );
    }
}
