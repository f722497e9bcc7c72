//! DPoP (RFC 9449): a key pair per session, and the proofs that bind its tokens to it.
//!
//! With `[oidc] dpop = true` every login gets a fresh P-256 key pair (ES256). Its private key
//! is sealed in the session cookie like the tokens, so any replica can use it and the browser
//! never can. The code exchange and every refresh carry a proof signed with it, so the
//! provider binds the tokens to the key (`cnf.jkt`); a route with `token_binding = "dpop"`
//! sends `Authorization: DPoP <token>` and a fresh proof for the upstream request, which the
//! resource server checks against that binding. An access token taken from an upstream's logs
//! is then useless without the session's key.
//!
//! A proof is a compact JWS: header `{"typ":"dpop+jwt","alg":"ES256","jwk":{…public key…}}`,
//! claims `jti` (128 random bits), `htm`, `htu` (without query and fragment), `iat`, and `ath`
//! (the access token's SHA-256) or `nonce` (the provider's `DPoP-Nonce`) when they apply.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("the DPoP key could not be generated")]
    Generate,
    #[error("the session's DPoP key does not load")]
    Load,
    #[error("a DPoP proof could not be signed")]
    Sign,
}

/// A session's DPoP key pair.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    /// The PKCS#8 document the pair loads from: what the session keeps.
    pkcs8: Vec<u8>,
    /// The proof header, base64url, ready to sign behind (the public key never changes).
    header_b64: String,
    /// RFC 7638 thumbprint of the public key (what the provider puts in `cnf.jkt`).
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        write!(f, "DpopKey(jkt {})", self.thumbprint)
    }
}

#[derive(Serialize)]
struct Jwk<'a> {
    crv: &'a str,
    kty: &'a str,
    x: &'a str,
    y: &'a str,
}

#[derive(Serialize)]
struct Header<'a> {
    typ: &'a str,
    alg: &'a str,
    jwk: Jwk<'a>,
}

#[derive(Serialize)]
struct Claims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl DpopKey {
    /// A fresh key pair from the OS RNG.
    pub fn generate() -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| DpopError::Generate)?;
        DpopKey::from_pkcs8(doc.as_ref()).map_err(|_| DpopError::Generate)
    }

    /// The key a session keeps ([`Self::pkcs8`]).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| DpopError::Load)?;
        // Uncompressed point: 0x04 || x (32) || y (32).
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(DpopError::Load);
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        let jwk = Jwk {
            crv: "P-256",
            kty: "EC",
            x: &x,
            y: &y,
        };
        // RFC 7638: the required members, lexicographic order, no whitespace (serde_json
        // writes struct fields in declaration order, which is that order).
        let canonical = serde_json::to_vec(&jwk).map_err(|_| DpopError::Load)?;
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(&canonical));
        let header = serde_json::to_vec(&Header {
            typ: "dpop+jwt",
            alg: "ES256",
            jwk,
        })
        .map_err(|_| DpopError::Load)?;
        Ok(DpopKey {
            header_b64: URL_SAFE_NO_PAD.encode(header),
            pair,
            pkcs8: pkcs8.to_vec(),
            thumbprint,
        })
    }

    /// The private key as the session keeps it (PKCS#8 DER).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The key's RFC 7638 thumbprint (`cnf.jkt` of the tokens bound to it).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for a `htm` request to `htu` (query and fragment are removed here), at `now`;
    /// with `access_token` for a resource server (`ath`), with the provider's `nonce`.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, DpopError> {
        let ath = access_token.map(ath);
        self.proof_with_ath(htm, htu, ath.as_deref(), nonce, now)
    }

    /// As [`Self::proof`], with the access token's hash ([`ath`]) computed beforehand.
    pub fn proof_with_ath(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
        now: u64,
    ) -> Result<String, DpopError> {
        let htu = htu.split(['?', '#']).next().unwrap_or(htu);
        let mut jti = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut jti);
        let jti = URL_SAFE_NO_PAD.encode(jti);
        let claims = serde_json::to_vec(&Claims {
            jti: &jti,
            htm,
            htu,
            iat: now,
            ath,
            nonce,
        })
        .map_err(|_| DpopError::Sign)?;
        let mut out = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 90);
        out.push_str(&self.header_b64);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut out);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), out.as_bytes())
            .map_err(|_| DpopError::Sign)?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }
}

/// `ath`: the base64url SHA-256 of an access token.
pub fn ath(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    /// A proof verifies as ES256 under the public key in its own header, carries what a
    /// resource server checks, and each one is unique.
    #[test]
    fn proofs_verify_under_their_embedded_key() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof(
                "GET",
                "https://api.example/orders?x=1#f",
                Some("at-1"),
                Some("n-1"),
                1_700_000_000,
            )
            .unwrap();
        let header = jsonwebtoken::decode_header(&proof).unwrap();
        assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = header.jwk.unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            &proof,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example/orders");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["ath"], ath("at-1"));
        assert_eq!(claims["nonce"], "n-1");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 22);
        let again = key
            .proof("GET", "https://api.example/orders", None, None, 1)
            .unwrap();
        assert_ne!(proof, again);
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(again.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert!(claims.get("ath").is_none() && claims.get("nonce").is_none());
    }

    /// The session keeps the key as PKCS#8 and gets the same key back; the thumbprint is
    /// RFC 7638's (checked against the RFC's own example key's computation, on our JSON).
    #[test]
    fn the_key_survives_the_session_and_its_thumbprint_is_canonical() {
        let key = DpopKey::generate().unwrap();
        let again = DpopKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        assert_eq!(key.thumbprint().len(), 43);
        assert!(DpopKey::from_pkcs8(b"not a key").is_err());
        // The canonical JSON of a P-256 JWK: crv, kty, x, y, no spaces.
        let jwk = Jwk {
            crv: "P-256",
            kty: "EC",
            x: "X",
            y: "Y",
        };
        assert_eq!(
            serde_json::to_string(&jwk).unwrap(),
            r#"{"crv":"P-256","kty":"EC","x":"X","y":"Y"}"#
        );
        assert!(!format!("{key:?}").contains(&URL_SAFE_NO_PAD.encode(key.pkcs8())));
    }
}
