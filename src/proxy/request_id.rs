//! Request ids: kept from the client when well-formed, otherwise generated.
//!
//! An id from a load balancer in front of tollgate ties their logs to ours, so a valid incoming
//! `X-Request-Id` is kept. "Valid" is strict (1–128 characters of `[A-Za-z0-9._:-]`) because the
//! id is echoed into logs and headers, where anything else could forge log lines.

use rand::RngCore;

pub(crate) const HEADER: &str = "x-request-id";
/// [`HEADER`] as a name, so a lookup or insert need not parse it first.
pub(crate) const NAME: http::HeaderName = http::HeaderName::from_static(HEADER);

/// Whether a client-supplied id may be kept.
pub(crate) fn is_valid(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// A new random id: 128 bits as 32 lower-case hex digits.
pub(crate) fn generate() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut out = String::with_capacity(32);
    for b in bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

/// The client's id when valid, else a new one.
pub(crate) fn from_headers(headers: &http::HeaderMap) -> String {
    match headers.get(&NAME) {
        Some(v) if is_valid(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_generation() {
        assert!(is_valid(b"abc-123_x.y:z"));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"a b"));
        assert!(!is_valid(b"a\nb"));
        assert!(!is_valid(&[b'a'; 129]));
        let a = generate();
        assert_eq!(a.len(), 32);
        assert!(is_valid(a.as_bytes()));
        assert_ne!(a, generate());
    }
}
