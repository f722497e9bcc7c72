//! Where server-side sessions live (`[session] storage = "store"`): the shared store when
//! `[store]` is configured, else this process's memory; and, in front of the shared store, the
//! sessions this replica used recently, so that a warm request makes no store round trip.
//!
//! **The memory cache and its staleness.** An entry read from the store is used without asking
//! again for [`FRESH_SECS`]. That is safe because nothing a stale copy could let through
//! depends on it: an ended session (logout, back-channel logout, the admin API) is also
//! *revoked*, and revocations reach every replica's memory through the store's pub/sub within a
//! moment and are checked on every request; a refresh on another replica leaves this copy with
//! tokens that are still valid, and a due refresh finds the other replica's result in the
//! refresh ledger. An idle-timeout failure is never taken from a copy: the entry is read again,
//! since another replica may have seen the session since. While the store is down, an entry
//! read within [`STALE_SECS`] keeps being served (each re-read waits at most `[store]
//! timeout`); a session this replica has not seen gets `503 store_unavailable`, never a logout.
//!
//! **The in-process store** (no `[store]`) is the same map with no expiry but the session's
//! own: it holds every session of this one replica, and a restart loses them all.
//!
//! Bounded: the shared store's cache keeps [`CACHE_CAPACITY`] sessions, the in-process store
//! [`LOCAL_CAPACITY`]; past that, expired entries go first, then the least recently used one
//! (for the in-process store that ends a live session, and is logged).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::ops::metrics::Metrics;
use crate::session::record::{Meta, Record};
use crate::session::{Session, SessionCodec};
use crate::store::{Store, StoreError};

/// How long a session read from the store is used without reading it again.
pub(crate) const FRESH_SECS: u64 = 30;
/// How long a session read from the store keeps being served while the store is down.
pub(crate) const STALE_SECS: u64 = 300;
/// Sessions kept in front of the shared store.
pub(crate) const CACHE_CAPACITY: usize = 16_384;
/// Sessions the in-process store holds.
pub(crate) const LOCAL_CAPACITY: usize = 200_000;
const SHARDS: usize = 16;

#[derive(Clone)]
struct Entry {
    record: Record,
    /// When it was read from (or written to) the store.
    fetched_at: u64,
    /// When it was last used here (least recently used goes first).
    used_at: u64,
    /// When the session ends if unused (the in-process store drops it then).
    expires_at: u64,
}

/// The store's text for a session id.
pub(crate) fn id_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// The index key of a user (`kind` `sub` or `sid`): a hash of the provider and the value, so
/// the store learns no subject.
fn user_key(kind: &str, provider: &str, value: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{provider}\n{kind}\n{value}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{kind}:{hex}")
}

/// The provider every session has until several are configured.
pub(crate) const PROVIDER: &str = "default";

/// The sessions of `storage = "store"`.
pub(crate) struct Records {
    shared: Option<Arc<Store>>,
    shards: Vec<Mutex<HashMap<u128, Entry>>>,
    per_shard: usize,
    metrics: Metrics,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("shared", &self.shared.is_some())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

/// A session found: from memory or the store.
pub(crate) enum Found {
    Record(Record),
    /// Not in the store: ended or expired.
    Gone,
}

impl Records {
    pub(crate) fn new(shared: Option<Arc<Store>>, metrics: Metrics) -> Records {
        let capacity = if shared.is_some() {
            CACHE_CAPACITY
        } else {
            LOCAL_CAPACITY
        };
        Records {
            shared,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            metrics,
        }
    }

    /// Whether sessions live only in this process.
    pub(crate) fn in_process(&self) -> bool {
        self.shared.is_none()
    }

    fn shard(&self, id: u128) -> &Mutex<HashMap<u128, Entry>> {
        // The id is random: its low bits spread evenly.
        &self.shards[(id as usize) % SHARDS]
    }

    fn cached(&self, id: u128, now: u64) -> Option<Entry> {
        let mut shard = self.shard(id).lock().ok()?;
        let entry = shard.get_mut(&id)?;
        entry.used_at = now;
        Some(entry.clone())
    }

    fn keep(&self, id: u128, record: Record, now: u64, expires_at: u64) {
        let Ok(mut shard) = self.shard(id).lock() else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&id) {
            shard.retain(|_, e| e.expires_at > now);
            if shard.len() >= self.per_shard {
                let oldest = shard.iter().min_by_key(|(_, e)| e.used_at).map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    shard.remove(&oldest);
                    if self.in_process() {
                        tracing::warn!(
                            capacity = self.per_shard * SHARDS,
                            "the in-process session store is full: the least recently used session was ended (configure [store])"
                        );
                    }
                }
            }
        }
        shard.insert(
            id,
            Entry {
                record,
                fetched_at: now,
                used_at: now,
                expires_at,
            },
        );
        drop(shard);
        self.count();
    }

    fn forget(&self, id: u128) {
        if let Ok(mut shard) = self.shard(id).lock() {
            shard.remove(&id);
        }
        self.count();
    }

    fn count(&self) {
        let n = self
            .shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum();
        self.metrics.sessions_active(n);
    }

    /// Session `id`: from memory while fresh, else from the store. `idle_retry`: the caller
    /// found the copy idle-expired, so memory is skipped (another replica may have renewed it).
    pub(crate) async fn get(
        &self,
        id: u128,
        codec: &SessionCodec,
        now: u64,
        idle_retry: bool,
    ) -> Result<Found, StoreError> {
        let cached = self.cached(id, now);
        let Some(store) = &self.shared else {
            return Ok(match cached {
                Some(e) if e.expires_at > now => Found::Record(e.record),
                _ => Found::Gone,
            });
        };
        if let Some(e) = &cached {
            if !idle_retry && now.saturating_sub(e.fetched_at) < FRESH_SECS {
                return Ok(Found::Record(e.record.clone()));
            }
        }
        match store.session(&id_hex(id)).await {
            Ok(Some(text)) => match codec.open_record(&text, id) {
                Ok(record) => {
                    let expires_at = codec.expires_at(&record.session);
                    self.keep(id, record.clone(), now, expires_at);
                    Ok(Found::Record(record))
                }
                Err(e) => {
                    // Sealed under a key no longer in the ring, or not ours: as good as gone.
                    tracing::info!(reason = e.reason(), "a stored session did not open");
                    self.forget(id);
                    Ok(Found::Gone)
                }
            },
            Ok(None) => {
                self.forget(id);
                Ok(Found::Gone)
            }
            Err(e) => match cached {
                Some(c) if now.saturating_sub(c.fetched_at) < STALE_SECS => {
                    tracing::warn!(error = %e, "the store is unreachable: serving the session from memory");
                    Ok(Found::Record(c.record))
                }
                _ => Err(e),
            },
        }
    }

    /// Writes `session` (with `meta`) to the store and memory, for as long as it can live
    /// unused; `index`: also list it under its user (a new session, or one moved in).
    pub(crate) async fn put(
        &self,
        session: Arc<Session<'static>>,
        meta: Arc<Meta>,
        codec: &SessionCodec,
        now: u64,
        index: bool,
    ) -> Result<(), StoreError> {
        let id = session.id;
        let expires_at = codec.expires_at(&session);
        if let Some(store) = &self.shared {
            // Already written here, as is (two requests applied the same refresh)?
            if !index {
                if let Some(e) = self.cached(id, now) {
                    if *e.record.session == *session {
                        return Ok(());
                    }
                }
            }
            let sealed = codec
                .seal_record(&session, &meta)
                .map_err(|_| StoreError::Seal)?;
            let hex = id_hex(id);
            store
                .put_session(&hex, &sealed, expires_at.saturating_sub(now))
                .await?;
            if index {
                let lives = codec.lives_until(session.created_at).saturating_sub(now);
                for key in index_keys(&session, &meta) {
                    store.index_session(&key, &hex, lives).await?;
                }
            }
        }
        self.keep(id, Record { session, meta }, now, expires_at);
        Ok(())
    }

    /// Ends session `id` here and in the store (its record and index entries).
    pub(crate) async fn delete(&self, record: &Record) -> Result<(), StoreError> {
        let id = record.session.id;
        self.forget(id);
        if let Some(store) = &self.shared {
            let hex = id_hex(id);
            store.delete_session(&hex).await?;
            for key in index_keys(&record.session, &record.meta) {
                store.unindex_session(&key, &hex).await?;
            }
        }
        Ok(())
    }

    /// The live sessions of the user `sub` (or, `by_sid`, of the provider session `sub`),
    /// read from the store, not memory.
    pub(crate) async fn of_user(
        &self,
        value: &str,
        by_sid: bool,
        codec: &SessionCodec,
        now: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let matches = |s: &Session<'_>| {
            if by_sid {
                s.claims.sid.as_deref() == Some(value)
            } else {
                s.claims.sub == value
            }
        };
        let Some(store) = &self.shared else {
            let mut out = Vec::new();
            for shard in &self.shards {
                if let Ok(shard) = shard.lock() {
                    out.extend(
                        shard
                            .values()
                            .filter(|e| e.expires_at > now && matches(&e.record.session))
                            .map(|e| e.record.clone()),
                    );
                }
            }
            out.sort_by_key(|r| r.session.created_at);
            return Ok(out);
        };
        let key = user_key(if by_sid { "sid" } else { "sub" }, PROVIDER, value);
        let mut out = Vec::new();
        for hex in store.sessions_of(&key).await? {
            let Ok(id) = u128::from_str_radix(&hex, 16) else {
                continue;
            };
            match self.get(id, codec, now, true).await? {
                Found::Record(r) if matches(&r.session) => out.push(r),
                // Expired since it was listed: tidy the index.
                _ => store.unindex_session(&key, &hex).await?,
            }
        }
        out.sort_by_key(|r| r.session.created_at);
        Ok(out)
    }
}

/// The index keys a session is listed under: its user, and its provider session when known.
fn index_keys(session: &Session<'_>, meta: &Meta) -> Vec<String> {
    let provider = if meta.provider.is_empty() {
        PROVIDER
    } else {
        &meta.provider
    };
    let mut keys = vec![user_key("sub", provider, &session.claims.sub)];
    if let Some(sid) = session.claims.sid.as_deref() {
        keys.push(user_key("sid", provider, sid));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_hide_the_subject_and_differ_by_kind_and_provider() {
        let a = user_key("sub", "default", "alice@example.com");
        assert!(a.starts_with("sub:") && !a.contains("alice"));
        assert_eq!(a.len(), 4 + 32);
        assert_ne!(a, user_key("sub", "other", "alice@example.com"));
        assert_ne!(
            user_key("sid", "default", "x"),
            user_key("sub", "default", "x")
        );
    }
}
