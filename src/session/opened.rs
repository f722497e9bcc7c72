//! Session cookies opened recently, so that the next request with the same cookie skips the
//! base64 decode, the AES-GCM open and the payload's decoding (it keeps the decoded session).
//!
//! A browser sends the same session cookie on every API call until the session is renewed, and
//! opening it is the largest piece of tollgate's own work per request (about 5,300 of 7,200
//! instructions of `SessionCodec::open` for a 4 KB cookie; RESULTS.md, "Performance round two").
//! An entry is used only when the whole sealed value is identical to one that opened under this
//! codec (the same key ring and cookie name), compared without an early exit, so the cache
//! answers exactly what opening would: nothing a client can send opens here that would not open
//! anyway. Lifetimes, idle time and revocation are checked after it, on every request, as before.
//!
//! Bounded: [`CAPACITY`] entries in [`SHARDS`] independently locked shards (a few KB each: the
//! sealed value and the decoded session), the oldest entry of a shard replaced first. The
//! cache belongs to the codec, so a codec built with another key ring starts empty.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Sessions kept opened, over all shards.
pub(crate) const CAPACITY: usize = 1024;
const SHARDS: usize = 16;

struct Shard<V> {
    entries: HashMap<u64, Entry<V>>,
    /// Keys in insertion order, oldest first.
    order: VecDeque<u64>,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

struct Entry<V> {
    sealed: Box<str>,
    opened: Arc<V>,
    /// The key ring it was opened under ([`crate::session::seal::Sealer::generation`]).
    generation: u64,
}

/// Keeps what a sealed value opened to (`V`: the decoded session).
pub(crate) struct OpenedCache<V> {
    shards: Vec<Mutex<Shard<V>>>,
    per_shard: usize,
}

impl<V> std::fmt::Debug for OpenedCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenedCache({} per shard)", self.per_shard)
    }
}

impl<V> Default for OpenedCache<V> {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

/// Where a sealed value is looked for: its last 8 characters, which encode part of the
/// AES-GCM tag (random-looking for every value; a collision only costs a miss).
fn key(sealed: &str) -> u64 {
    let b = sealed.as_bytes();
    let mut k = [0u8; 8];
    let tail = &b[b.len().saturating_sub(8)..];
    k[..tail.len()].copy_from_slice(tail);
    u64::from_le_bytes(k)
}

/// Equality without an early exit: how long a prefix of a kept value a guess matches is not
/// told by the time taken.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes at a time, then the rest: the same constant-time fold, fewer steps.
    let (wa, wb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = wa
        .remainder()
        .iter()
        .zip(wb.remainder())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    let words = wa.zip(wb).fold(0u64, |acc, (x, y)| {
        let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
        acc | (word(x) ^ word(y))
    });
    words == 0 && tail == 0
}

impl<V> OpenedCache<V> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        OpenedCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, key: u64) -> Option<&Mutex<Shard<V>>> {
        if self.per_shard == 0 {
            return None;
        }
        // The key is base64 text: mix it before taking a shard.
        let mixed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        self.shards.get(mixed as usize % SHARDS)
    }

    /// What `sealed` opened to, if it was opened recently under key ring `generation` (a
    /// value opened under another ring is opened again: its key may be gone).
    pub(crate) fn get(&self, sealed: &str, generation: u64) -> Option<Arc<V>> {
        let k = key(sealed);
        let shard = self.shard(k)?.lock().ok()?;
        let entry = shard.entries.get(&k)?;
        (entry.generation == generation && same(&entry.sealed, sealed))
            .then(|| entry.opened.clone())
    }

    /// Keeps what `sealed` opened to under key ring `generation`.
    pub(crate) fn put(&self, sealed: &str, opened: Arc<V>, generation: u64) {
        let k = key(sealed);
        let Some(Ok(mut shard)) = self.shard(k).map(Mutex::lock) else {
            return;
        };
        let entry = Entry {
            sealed: sealed.into(),
            opened,
            generation,
        };
        if shard.entries.insert(k, entry).is_some() {
            return;
        }
        shard.order.push_back(k);
        while shard.order.len() > self.per_shard {
            if let Some(old) = shard.order.pop_front() {
                shard.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(i: usize) -> String {
        format!("{}{i:016}", "x".repeat(4000))
    }

    #[test]
    fn answers_only_for_the_identical_value() {
        let cache = OpenedCache::<Vec<u8>>::default();
        let s = sealed(1);
        cache.put(&s, Arc::new(b"payload".to_vec()), 0);
        assert_eq!(cache.get(&s, 0).as_deref(), Some(&b"payload".to_vec()));
        assert_eq!(cache.get(&s, 1), None, "opened under another key ring");
        // Same tail (same key), one byte changed anywhere before it: a miss.
        let mut other = s.clone().into_bytes();
        other[10] = b'y';
        let other = String::from_utf8(other).unwrap();
        assert_eq!(key(&other), key(&s));
        assert_eq!(cache.get(&other, 0), None);
        assert_eq!(cache.get(&s[1..], 0), None);
        assert_eq!(cache.get("", 0), None);
    }

    #[test]
    fn same_sees_a_difference_anywhere() {
        let a = "abcdefghijklmnopqrstu"; // two words and a tail of five
        assert!(same(a, a));
        for i in 0..a.len() {
            let mut b = a.as_bytes().to_vec();
            b[i] ^= 1;
            assert!(!same(a, std::str::from_utf8(&b).unwrap()), "byte {i}");
        }
        assert!(!same(a, &a[..20]));
        assert!(same("", ""));
    }

    #[test]
    fn stays_within_its_capacity() {
        let cache = OpenedCache::<Vec<u8>>::with_capacity(64);
        for i in 0..10_000 {
            cache.put(&sealed(i), Arc::new(b"p".to_vec()), 0);
        }
        let kept: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries.len())
            .sum();
        assert!(kept <= 64, "{kept} entries kept");
        assert!(cache.get(&sealed(9_999), 0).is_some(), "the newest is kept");
        assert!(cache.get(&sealed(0), 0).is_none(), "the oldest is gone");
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let cache = OpenedCache::<Vec<u8>>::with_capacity(0);
        cache.put(&sealed(1), Arc::new(b"p".to_vec()), 0);
        assert_eq!(cache.get(&sealed(1), 0), None);
    }
}
