//! Device Bound Session Credentials (DBSC, W3C/WICG): the proofs a browser signs with a key that
//! cannot leave its device.
//!
//! At registration the browser sends a `dbsc+jwt` whose header carries the public key (`jwk`,
//! P-256) and whose payload's `jti` is the challenge tollgate gave; at each refresh it signs the
//! nonce tollgate answered with, using the same key. Chromium signs ES256 with the raw `r‖s`
//! form (64 bytes), which `ring` verifies as `ECDSA_P256_SHA256_FIXED`. Only ES256 is accepted:
//! the registration header offers it first, and one algorithm is one less downgrade to test.
//!
//! This file only checks proofs: what the challenge and nonce are, and where the key is kept,
//! belong to the session service. Nothing here logs: a proof, a challenge or a key must never
//! reach a log line.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};

use super::seal::Sealer;

/// The longest proof accepted: a P-256 `jwk` header, a short payload and a signature take
/// about 500 bytes.
pub(crate) const MAX_PROOF_BYTES: usize = 4096;

/// The public key a session is bound to: an uncompressed P-256 point (`0x04 ‖ x ‖ y`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BoundKey(pub(crate) [u8; 65]);

impl std::fmt::Debug for BoundKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundKey(<P-256>)")
    }
}

/// Why a proof was refused (a metric label and a log reason; never the proof).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProofError {
    #[error("the proof is not a compact JWT")]
    Malformed,
    #[error("the proof is over {MAX_PROOF_BYTES} bytes")]
    TooLarge,
    #[error("the proof's typ is not dbsc+jwt")]
    Type,
    #[error("the proof's alg is not ES256")]
    Algorithm,
    #[error("the proof's jwk is not a P-256 public key")]
    Key,
    #[error("the proof's signature does not verify")]
    Signature,
    #[error("the proof's jti is not the challenge")]
    Challenge,
}

impl ProofError {
    /// A short, fixed label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ProofError::Malformed => "malformed",
            ProofError::TooLarge => "too_large",
            ProofError::Type => "typ",
            ProofError::Algorithm => "alg",
            ProofError::Key => "key",
            ProofError::Signature => "signature",
            ProofError::Challenge => "challenge",
        }
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: &'a str,
    #[serde(borrow)]
    typ: Option<&'a str>,
    jwk: Option<Jwk<'a>>,
}

#[derive(Deserialize)]
struct Jwk<'a> {
    #[serde(borrow)]
    kty: &'a str,
    #[serde(borrow)]
    crv: &'a str,
    #[serde(borrow)]
    x: &'a str,
    #[serde(borrow)]
    y: &'a str,
}

#[derive(Deserialize)]
struct Payload {
    jti: Option<String>,
}

/// A proof split and decoded, its signature not yet checked.
struct Parsed<'p> {
    header: Vec<u8>,
    payload: Vec<u8>,
    signed: &'p str,
    signature: Vec<u8>,
}

fn parse(proof: &str) -> Result<Parsed<'_>, ProofError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(ProofError::TooLarge);
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| ProofError::Malformed)
    };
    Ok(Parsed {
        header: decode(h)?,
        payload: decode(p)?,
        signed: &proof[..h.len() + 1 + p.len()],
        signature: decode(s)?,
    })
}

impl Parsed<'_> {
    fn header(&self) -> Result<Header<'_>, ProofError> {
        let header: Header<'_> =
            serde_json::from_slice(&self.header).map_err(|_| ProofError::Malformed)?;
        if header.typ != Some("dbsc+jwt") {
            return Err(ProofError::Type);
        }
        if header.alg != "ES256" {
            return Err(ProofError::Algorithm);
        }
        Ok(header)
    }

    /// Checks the signature with `key`, then that the payload's `jti` is `expected`.
    fn verify(&self, key: &BoundKey, expected: &str) -> Result<(), ProofError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.0[..])
            .verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| ProofError::Signature)?;
        let payload: Payload =
            serde_json::from_slice(&self.payload).map_err(|_| ProofError::Malformed)?;
        if payload.jti.as_deref() != Some(expected) {
            return Err(ProofError::Challenge);
        }
        Ok(())
    }
}

impl Jwk<'_> {
    fn key(&self) -> Result<BoundKey, ProofError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(ProofError::Key);
        }
        let coordinate = |c: &str| -> Result<[u8; 32], ProofError> {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or(ProofError::Key)
        };
        let mut point = [0u8; 65];
        point[0] = 4;
        point[1..33].copy_from_slice(&coordinate(self.x)?);
        point[33..].copy_from_slice(&coordinate(self.y)?);
        Ok(BoundKey(point))
    }
}

/// A registration proof: signed by the key in its own header, for `challenge`. The key the
/// session is to be bound to.
pub(crate) fn verify_registration(proof: &str, challenge: &str) -> Result<BoundKey, ProofError> {
    let parsed = parse(proof)?;
    let key = parsed.header()?.jwk.ok_or(ProofError::Key)?.key()?;
    // A point not on the curve fails here, as a signature that does not verify.
    parsed.verify(&key, challenge)?;
    Ok(key)
}

/// A refresh proof: signed by the session's `key`, for `nonce`. A `jwk` in its header, if any,
/// is ignored: only the key kept at registration counts.
pub(crate) fn verify_refresh(proof: &str, key: &BoundKey, nonce: &str) -> Result<(), ProofError> {
    let parsed = parse(proof)?;
    parsed.header()?;
    parsed.verify(key, nonce)
}

/// How long a refresh nonce may be answered.
pub(crate) const CHALLENGE_TTL_SECS: u64 = 300;

/// How long a login's registration challenge is valid. Chromium registers as soon as it reads
/// the login's answer, so a minute is plenty; and once it has passed, an unbound session stays
/// unbound, which lets replicas trust their memory of it again (see [`Purpose::ttl`]).
pub(crate) const REGISTRATION_TTL_SECS: u64 = 60;

const BOUND_VERSION: u8 = 1;
const CHALLENGE_VERSION: u8 = 1;

/// The bound cookie's content: which session it proves, until when.
#[derive(Serialize, Deserialize)]
struct Bound {
    id: u128,
    expires_at: u64,
}

/// A challenge or nonce: for which session, when, and random (so each is new).
#[derive(Serialize, Deserialize)]
struct Challenge {
    id: u128,
    issued_at: u64,
    random: [u8; 16],
}

/// Why a request's bound cookie does not prove its session's device (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BoundError {
    /// No bound cookie came.
    Missing,
    /// It does not open (forged, another key ring, not a bound cookie).
    Invalid,
    /// It proves another session.
    Foreign,
    /// Its lifetime has passed: the browser should have refreshed it.
    Expired,
}

impl BoundError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            BoundError::Missing => "missing",
            BoundError::Invalid => "invalid",
            BoundError::Foreign => "foreign",
            BoundError::Expired => "expired",
        }
    }
}

/// The value of the bound cookie `name` for session `id`, valid until `expires_at`.
pub(crate) fn seal_bound(sealer: &Sealer, name: &str, id: u128, expires_at: u64) -> Option<String> {
    sealer.seal_value(BOUND_VERSION, &Bound { id, expires_at }, name)
}

/// Whether `value` (the request's bound cookie `name`) proves session `id` at `now`.
pub(crate) fn check_bound(
    sealer: &Sealer,
    name: &str,
    value: Option<&str>,
    id: u128,
    now: u64,
) -> Result<(), BoundError> {
    let value = value.ok_or(BoundError::Missing)?;
    let bound: Bound = sealer
        .open_value(BOUND_VERSION, value, name)
        .ok_or(BoundError::Invalid)?;
    if bound.id != id {
        return Err(BoundError::Foreign);
    }
    if now >= bound.expires_at {
        return Err(BoundError::Expired);
    }
    Ok(())
}

/// What a challenge is for. A registration challenge comes only in a login's answer; a refresh
/// nonce comes to anyone holding the session cookie, so it must never register a key (that
/// would let a cookie thief bind the session to a device of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Register,
    Refresh,
}

impl Purpose {
    /// How long a challenge for this purpose is valid.
    pub(crate) fn ttl(self) -> u64 {
        match self {
            Purpose::Register => REGISTRATION_TTL_SECS,
            Purpose::Refresh => CHALLENGE_TTL_SECS,
        }
    }
}

/// The context challenges are sealed under: one per purpose, never a cookie's name, so none
/// opens as another.
fn challenge_context(session_cookie: &str, purpose: Purpose) -> String {
    match purpose {
        Purpose::Register => format!("{session_cookie}#dbsc-register"),
        Purpose::Refresh => format!("{session_cookie}#dbsc-refresh"),
    }
}

/// A new challenge (registration) or nonce (refresh) for session `id`: sealed, so any replica
/// can check it, and random, so none repeats.
pub(crate) fn seal_challenge(
    sealer: &Sealer,
    session_cookie: &str,
    purpose: Purpose,
    id: u128,
    now: u64,
) -> Option<String> {
    let challenge = Challenge {
        id,
        issued_at: now,
        random: rand::random(),
    };
    sealer.seal_value(
        CHALLENGE_VERSION,
        &challenge,
        &challenge_context(session_cookie, purpose),
    )
}

/// Whether `challenge` is one tollgate issued for session `id` less than
/// [`Purpose::ttl`] ago. (That it is used once is for the caller to check, in the
/// store across replicas.)
pub(crate) fn check_challenge(
    sealer: &Sealer,
    session_cookie: &str,
    purpose: Purpose,
    challenge: &str,
    id: u128,
    now: u64,
) -> bool {
    sealer
        .open_value::<Challenge>(
            CHALLENGE_VERSION,
            challenge,
            &challenge_context(session_cookie, purpose),
        )
        .is_some_and(|c| {
            c.id == id && c.issued_at <= now && now < c.issued_at.saturating_add(purpose.ttl())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn pair() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap()
    }

    fn jwk(pair: &EcdsaKeyPair) -> serde_json::Value {
        let point = pair.public_key().as_ref();
        serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        })
    }

    /// A proof as Chromium makes one: `header.payload` signed with `signer`.
    fn proof(
        signer: &EcdsaKeyPair,
        header: serde_json::Value,
        payload: serde_json::Value,
    ) -> String {
        let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let signed = format!("{}.{}", b64(&header), b64(&payload));
        let sig = signer
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn registration(signer: &EcdsaKeyPair, key_of: &EcdsaKeyPair, jti: &str) -> String {
        proof(
            signer,
            serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": jwk(key_of)}),
            serde_json::json!({"jti": jti}),
        )
    }

    #[test]
    fn a_registration_binds_the_key_that_signed_it() {
        let device = pair();
        let key = verify_registration(&registration(&device, &device, "c1"), "c1").unwrap();
        assert_eq!(&key.0[..], device.public_key().as_ref());
        assert_eq!(format!("{key:?}"), "BoundKey(<P-256>)");
        // For another challenge, or signed by a key other than the one it names: refused.
        assert_eq!(
            verify_registration(&registration(&device, &device, "c1"), "c2"),
            Err(ProofError::Challenge)
        );
        assert_eq!(
            verify_registration(&registration(&pair(), &device, "c1"), "c1"),
            Err(ProofError::Signature)
        );
    }

    #[test]
    fn a_refresh_needs_the_bound_key_and_the_nonce() {
        let device = pair();
        let key = verify_registration(&registration(&device, &device, "c"), "c").unwrap();
        let refresh = |signer: &EcdsaKeyPair, jti: &str| {
            proof(
                signer,
                serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt"}),
                serde_json::json!({"jti": jti}),
            )
        };
        assert_eq!(verify_refresh(&refresh(&device, "n1"), &key, "n1"), Ok(()));
        assert_eq!(
            verify_refresh(&refresh(&device, "n1"), &key, "n2"),
            Err(ProofError::Challenge)
        );
        // Another device, even naming itself in the header, is not the bound key.
        let thief = pair();
        let named = proof(
            &thief,
            serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": jwk(&thief)}),
            serde_json::json!({"jti": "n1"}),
        );
        assert_eq!(
            verify_refresh(&named, &key, "n1"),
            Err(ProofError::Signature)
        );
    }

    #[test]
    fn malformed_proofs_are_refused_with_their_reason() {
        let device = pair();
        let good = registration(&device, &device, "c");
        let (signed, _) = good.rsplit_once('.').unwrap();
        let cases: Vec<(String, ProofError)> = vec![
            ("a.b".into(), ProofError::Malformed),
            ("a.b.c.d".into(), ProofError::Malformed),
            ("!.b.c".into(), ProofError::Malformed),
            ("x".repeat(MAX_PROOF_BYTES + 1), ProofError::TooLarge),
            (format!("{signed}.AAAA"), ProofError::Signature),
            (
                proof(
                    &device,
                    serde_json::json!({"alg": "ES256", "typ": "JWT", "jwk": jwk(&device)}),
                    serde_json::json!({"jti": "c"}),
                ),
                ProofError::Type,
            ),
            (
                proof(
                    &device,
                    serde_json::json!({"alg": "RS256", "typ": "dbsc+jwt", "jwk": jwk(&device)}),
                    serde_json::json!({"jti": "c"}),
                ),
                ProofError::Algorithm,
            ),
            (
                proof(
                    &device,
                    serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt"}),
                    serde_json::json!({"jti": "c"}),
                ),
                ProofError::Key,
            ),
            (
                proof(
                    &device,
                    serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}}),
                    serde_json::json!({"jti": "c"}),
                ),
                ProofError::Key,
            ),
            (
                proof(
                    &device,
                    serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": jwk(&device)}),
                    serde_json::json!({"sub": "c"}),
                ),
                ProofError::Challenge,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(verify_registration(&p, "c"), Err(want), "{want:?}");
        }
        // A point off the curve never verifies.
        let mut bad = jwk(&device);
        bad["y"] = serde_json::json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
        let off = proof(
            &device,
            serde_json::json!({"alg": "ES256", "typ": "dbsc+jwt", "jwk": bad}),
            serde_json::json!({"jti": "c"}),
        );
        assert_eq!(verify_registration(&off, "c"), Err(ProofError::Signature));
    }

    #[test]
    fn a_bound_cookie_proves_one_session_until_it_expires() {
        let sealer = Sealer::new(&[[4u8; 32]]);
        let name = "tg-bound";
        let v = seal_bound(&sealer, name, 7, 100).unwrap();
        assert_eq!(check_bound(&sealer, name, Some(&v), 7, 99), Ok(()));
        assert_eq!(
            check_bound(&sealer, name, Some(&v), 7, 100),
            Err(BoundError::Expired)
        );
        assert_eq!(
            check_bound(&sealer, name, Some(&v), 8, 99),
            Err(BoundError::Foreign)
        );
        assert_eq!(
            check_bound(&sealer, name, None, 7, 99),
            Err(BoundError::Missing)
        );
        assert_eq!(
            check_bound(&sealer, "other", Some(&v), 7, 99),
            Err(BoundError::Invalid)
        );
        let other_keys = Sealer::new(&[[5u8; 32]]);
        assert_eq!(
            check_bound(&other_keys, name, Some(&v), 7, 99),
            Err(BoundError::Invalid)
        );
        // A challenge is not a bound cookie, nor the other way round.
        let c = seal_challenge(&sealer, "tg", Purpose::Register, 7, 50).unwrap();
        assert_eq!(
            check_bound(&sealer, name, Some(&c), 7, 99),
            Err(BoundError::Invalid)
        );
        assert!(!check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            &v,
            7,
            50
        ));
    }

    #[test]
    fn a_challenge_is_for_one_session_for_a_while() {
        let sealer = Sealer::new(&[[4u8; 32]]);
        let c = seal_challenge(&sealer, "tg", Purpose::Register, 7, 1_000).unwrap();
        assert_ne!(
            c,
            seal_challenge(&sealer, "tg", Purpose::Register, 7, 1_000).unwrap(),
            "random"
        );
        assert!(check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            &c,
            7,
            1_000
        ));
        assert!(check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            &c,
            7,
            1_000 + REGISTRATION_TTL_SECS - 1
        ));
        assert!(!check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            &c,
            7,
            1_000 + REGISTRATION_TTL_SECS
        ));
        assert!(!check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            &c,
            8,
            1_000
        ));
        assert!(!check_challenge(
            &sealer,
            "other",
            Purpose::Register,
            &c,
            7,
            1_000
        ));
        assert!(!check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            "not-a-challenge",
            7,
            1_000
        ));
        // A refresh nonce never registers a key, nor a registration challenge refreshes.
        assert!(!check_challenge(
            &sealer,
            "tg",
            Purpose::Refresh,
            &c,
            7,
            1_000
        ));
        let n = seal_challenge(&sealer, "tg", Purpose::Refresh, 7, 1_000).unwrap();
        assert!(check_challenge(
            &sealer,
            "tg",
            Purpose::Refresh,
            &n,
            7,
            1_000
        ));
        assert!(!check_challenge(
            &sealer,
            "tg",
            Purpose::Register,
            &n,
            7,
            1_000
        ));
    }
}
