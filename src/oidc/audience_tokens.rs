//! Route tokens kept in memory, by session and audience ([`super::audience`] decides when to
//! ask for one and keeps them in the store too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A route token and when it expires (Unix seconds).
pub(crate) struct AudienceToken {
    pub(crate) access_token: String,
    pub(crate) expires_at: u64,
    /// The lifetime it was issued for, in seconds (the provider's `expires_in`): it is asked
    /// for again no earlier than half-way through.
    pub(crate) lifetime: u64,
    /// Not a token: the provider refused this audience to the session; until `expires_at`
    /// the route answers `403` without asking again.
    pub(crate) refused: bool,
}

impl std::fmt::Debug for AudienceToken {
    /// The token never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudienceToken")
            .field("expires_at", &self.expires_at)
            .field("lifetime", &self.lifetime)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// The most route tokens kept in memory (a few KiB each at most); beyond it the expired ones
/// go, then any, down to three quarters. With a store, a token dropped here is read back from
/// it; without, the next request asks the provider again.
const CAPACITY: usize = 16_384;

/// A session id and an audience id.
type Key = (u128, [u8; 16]);

/// Route tokens by (session id, audience id).
#[derive(Debug, Default)]
pub(crate) struct AudienceTokens(Mutex<HashMap<Key, Arc<AudienceToken>>>);

impl AudienceTokens {
    pub(crate) fn get(&self, session: u128, audience: &[u8; 16]) -> Option<Arc<AudienceToken>> {
        self.0.lock().ok()?.get(&(session, *audience)).cloned()
    }

    pub(crate) fn put(
        &self,
        session: u128,
        audience: [u8; 16],
        token: Arc<AudienceToken>,
        now: u64,
    ) {
        let Ok(mut map) = self.0.lock() else {
            return;
        };
        if map.len() >= CAPACITY {
            map.retain(|_, t| t.expires_at > now);
            let excess = map.len().saturating_sub(CAPACITY * 3 / 4);
            let gone: Vec<_> = map.keys().take(excess).copied().collect();
            for k in gone {
                map.remove(&k);
            }
        }
        map.insert((session, audience), token);
    }

    /// Drops a session's tokens (its logout).
    pub(crate) fn forget_session(&self, session: u128) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|(s, _), _| *s != session);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: u64) -> Arc<AudienceToken> {
        Arc::new(AudienceToken {
            access_token: "at".into(),
            expires_at,
            lifetime: 300,
            refused: false,
        })
    }

    #[test]
    fn kept_per_session_and_audience_and_bounded() {
        let t = AudienceTokens::default();
        t.put(1, [1; 16], token(100), 0);
        assert!(t.get(1, &[1; 16]).is_some());
        assert!(t.get(2, &[1; 16]).is_none(), "another session");
        assert!(t.get(1, &[2; 16]).is_none(), "another audience");
        for i in 0..(CAPACITY as u128 + 10) {
            t.put(i + 10, [1; 16], token(50), 60);
        }
        assert!(t.len() <= CAPACITY, "{} kept", t.len());
        t.forget_session(CAPACITY as u128 + 19);
        assert!(t.get(CAPACITY as u128 + 19, &[1; 16]).is_none());
    }
}
