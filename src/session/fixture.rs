//! A realistic session for tests, benchmarks and the fuzz targets: three JWT-shaped tokens of
//! about 1.2 KB, claims as a real provider sends them. Compiled for unit tests and with the
//! `fuzzing` or `fixtures` feature (the crate's own integration tests turn the latter on), never
//! in a release build.

use super::{Claims, Session};

/// A JWT-shaped string of `len` bytes (base64url alphabet, three dot-separated parts).
pub fn jwt(len: usize, seed: u8) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut s: String = (0..len)
        .map(|i| ALPHABET[(i * 7 + seed as usize) % 64] as char)
        .collect();
    if len > 400 {
        s.replace_range(36..37, ".");
        s.replace_range(len - 344..len - 343, ".");
    }
    s
}

/// A session created at `now` whose access token is `access_token`, valid five minutes.
pub fn session(now: u64, access_token: &str) -> Session<'static> {
    Session {
        access_token: access_token.to_string().into(),
        access_expires_at: now + 300,
        refresh_token: Some(jwt(1200, 2).into()),
        refresh_expires_at: None,
        id_token: Some(jwt(1200, 3).into()),
        claims: Claims {
            sub: "248289761001".into(),
            sid: Some("08a5019c-17e1-4977-8f42-65a12843ea02".into()),
            name: Some("Jane Doe".into()),
            email: Some("janedoe@example.com".into()),
        },
        created_at: now,
        last_seen: now,
        id: rand::random(),
        kept_claims: Default::default(),
        dpop_key: None,
        resources: Default::default(),
        access_lifetime: 300,
        device_key: None,
        provider: None,
    }
}
