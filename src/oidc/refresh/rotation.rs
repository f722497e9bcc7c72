//! The log of rotations: which refresh token a used one rotated to, kept for the session idle
//! window so that a cookie which missed a rotation goes on from where its token went instead of
//! spending it again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::outcome::flight_key;

/// A refresh token that was used and rotated: what it rotated to (and when that one
/// expires, if the provider said), kept until `until`.
pub(crate) struct Rotation {
    pub(crate) next: String,
    /// `next`'s flight key (logout walks the log by it).
    pub(crate) next_key: [u8; 32],
    pub(crate) next_expires_at: Option<u64>,
    pub(crate) until: Instant,
}

/// The most rotations kept ([`RotationLog::record`]): a few hundred bytes each.
pub(crate) const ROTATIONS: usize = 65_536;

/// Rotated refresh tokens by the old token's flight key.
#[derive(Default)]
pub(crate) struct RotationLog(Mutex<HashMap<[u8; 32], Rotation>>);

impl RotationLog {
    /// Records that the token with flight `key` rotated to `next` (for `keep`). `true` when
    /// rotations still in their window had to go for room.
    pub(crate) fn record(
        &self,
        key: [u8; 32],
        next: &str,
        next_expires_at: Option<u64>,
        keep: Duration,
    ) -> bool {
        let Ok(mut log) = self.0.lock() else {
            return false;
        };
        let now = Instant::now();
        let mut evicted = false;
        if log.len() >= ROTATIONS && !log.contains_key(&key) {
            log.retain(|_, r| r.until > now);
            if log.len() >= ROTATIONS {
                // The oldest quarter goes: a cookie that missed one of these rotations will
                // spend its token again (counted; a store keeps them all).
                let mut untils: Vec<Instant> = log.values().map(|r| r.until).collect();
                untils.sort_unstable();
                let cut = untils[ROTATIONS / 4];
                log.retain(|_, r| r.until > cut);
                evicted = true;
            }
        }
        log.insert(
            key,
            Rotation {
                next: next.to_owned(),
                next_key: flight_key(next),
                next_expires_at,
                until: now + keep,
            },
        );
        evicted
    }

    /// What the token with flight `key` rotated to, from the log.
    pub(crate) fn logged(&self, key: &[u8; 32]) -> Option<(String, Option<u64>)> {
        let log = self.0.lock().ok()?;
        log.get(key)
            .filter(|r| r.until > Instant::now())
            .map(|r| (r.next.clone(), r.next_expires_at))
    }

    /// The whole log, locked (a logout walks it with the flights).
    pub(crate) fn lock(&self) -> Option<MutexGuard<'_, HashMap<[u8; 32], Rotation>>> {
        self.0.lock().ok()
    }
}
