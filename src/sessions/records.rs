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
//! **Writes.** A refresh writes the new tokens (one refresh at the provider per refresh token
//! across replicas: the refresh ledger) and the idle renewal moves `last_seen`; a write of what
//! this replica already wrote is skipped. A renewal reads the store first and keeps the tokens
//! another replica wrote since this copy was read, so a stale copy never undoes a refresh. (A
//! refresh on another replica between that read and the write can still be overwritten; the
//! older refresh token then finds the newer result in the refresh ledger while it is kept
//! there, as an old cookie does.) A write can bring back the record of a session ended
//! meanwhile on another replica; it stays refused, since ending a session also revokes it.
//!
//! **The in-process store** (no `[store]`) is the same map with no expiry but the session's
//! own: it holds every session of this one replica, and a restart loses them all.
//!
//! Memory is swept every [`SWEEP_SECS`] of sessions that expired or, in front of the shared
//! store, were not read from it for [`STALE_SECS`]; `tollgate_sessions_active` counts the rest.
//!
//! Bounded: the shared store's cache keeps [`CACHE_CAPACITY`] sessions, the in-process store
//! [`LOCAL_CAPACITY`]; past that, expired entries go first, then the least recently used one
//! (for the in-process store that ends a live session, and is logged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ops::metrics::Metrics;
use crate::session::record::{Meta, Record};
use crate::session::{Session, SessionCodec};
use crate::store::{Put, Store, StoreError};

/// How long a session read from the store is used without reading it again.
pub(crate) const FRESH_SECS: u64 = 30;
/// How long a session read from the store keeps being served while the store is down.
pub(crate) const STALE_SECS: u64 = 300;
/// Sessions kept in front of the shared store.
pub(crate) const CACHE_CAPACITY: usize = 16_384;
/// Sessions the in-process store holds.
pub(crate) const LOCAL_CAPACITY: usize = 200_000;
const SHARDS: usize = 16;
/// How often memory is swept of sessions that ended or were not used lately.
const SWEEP_SECS: u64 = 10;

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

/// Why a session is written ([`Records::put`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// A login: a new session, listed under its user.
    Start,
    /// A cookie session moved into the store.
    MoveIn,
    /// A refresh or an idle renewal of a stored session.
    Update,
}

/// The most sessions of one user listed or ended at once (the rest on the next call).
pub(crate) const MAX_PER_CALL: usize = 1000;

/// The default provider's name (`[oidc]`), in the tests.
#[cfg(test)]
const PROVIDER: &str = crate::config::DEFAULT_PROVIDER;

/// The sessions of `storage = "store"`.
pub(crate) struct Records {
    shared: Option<Arc<Store>>,
    shards: Vec<Mutex<HashMap<u128, Entry>>>,
    per_shard: usize,
    metrics: Metrics,
    /// When memory was last swept ([`Records::sweep`]).
    swept_at: AtomicU64,
    /// Set once the in-process store was found full since the last sweep (warned once).
    full: std::sync::atomic::AtomicBool,
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
            swept_at: AtomicU64::new(0),
            full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Every [`SWEEP_SECS`], drops from memory the sessions that have expired and, in front of
    /// the shared store, those not read from it for [`STALE_SECS`] (they would be read again),
    /// so `tollgate_sessions_active` counts the sessions this replica serves.
    fn sweep(&self, now: u64) {
        let last = self.swept_at.load(Ordering::Relaxed);
        if now < last.saturating_add(SWEEP_SECS)
            || self
                .swept_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let shared = self.shared.is_some();
        self.full.store(false, Ordering::Relaxed);
        for shard in &self.shards {
            if let Ok(mut shard) = shard.lock() {
                shard.retain(|_, e| {
                    e.expires_at > now
                        && !(shared && now.saturating_sub(e.fetched_at) >= STALE_SECS)
                });
            }
        }
        self.count();
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
        self.sweep(now);
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
                    if self.in_process() && !self.full.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            capacity = self.per_shard * SHARDS,
                            "the in-process session store is full: the least recently used sessions are ended (configure [store]; logged at most every 10 s)"
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

    /// Session `id`: from memory if read from the store less than `fresh_for` seconds ago
    /// (normally [`FRESH_SECS`]; 0 when the caller found the copy idle-expired, since another
    /// replica may have renewed it), else from the store.
    pub(crate) async fn get(
        &self,
        id: u128,
        codec: &SessionCodec,
        now: u64,
        fresh_for: u64,
    ) -> Result<Found, StoreError> {
        let cached = self.cached(id, now);
        let Some(store) = &self.shared else {
            return Ok(match cached {
                Some(e) if e.expires_at > now => Found::Record(e.record),
                _ => Found::Gone,
            });
        };
        if let Some(e) = &cached {
            if now.saturating_sub(e.fetched_at) < fresh_for {
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

    /// Writes `session` (with `meta`) to the store and memory, as `write` says. A session
    /// moved in from a cookie that is already in the store is not replaced: the stored copy
    /// (which may hold newer tokens) is kept and used.
    pub(crate) async fn put(
        &self,
        session: Arc<Session<'static>>,
        meta: Arc<Meta>,
        codec: &SessionCodec,
        now: u64,
        write: Write,
    ) -> Result<(), StoreError> {
        let id = session.id;
        let mut session = session;
        let mut meta = meta;
        if let Some(store) = &self.shared {
            if write == Write::Update {
                if let Some(e) = self.cached(id, now) {
                    // Already written here, as is (two requests applied the same refresh)?
                    if *e.record.session == *session {
                        return Ok(());
                    }
                    // Only the idle window moved: another replica may have refreshed the
                    // tokens since this copy was read, and its write must not be undone.
                    if same_tokens(&e.record.session, &session) {
                        session = self.renewed(store, session, codec).await?;
                    }
                }
            }
            let expires_at = codec.expires_at(&session);
            let sealed = codec
                .seal_record(&session, &meta)
                .map_err(|_| StoreError::Seal)?;
            let hex = id_hex(id);
            let when = match write {
                Write::Start => Put::Always,
                Write::MoveIn => Put::IfAbsent,
                Write::Update => Put::IfPresent,
            };
            let ttl = expires_at.saturating_sub(now);
            let written = store.put_session(&hex, &sealed, ttl, when).await?;
            match write {
                Write::Start => {
                    let lives = codec.lives_until(session.created_at).saturating_sub(now);
                    for key in index_keys(&session) {
                        store.index_session(&key, &hex, lives).await?;
                    }
                }
                // Another request moved it in first: use what it stored.
                Write::MoveIn if !written => {
                    if let Found::Record(r) = self.get(id, codec, now, 0).await? {
                        (session, meta) = (r.session, r.meta);
                    }
                }
                Write::MoveIn => {
                    let lives = codec.lives_until(session.created_at).saturating_sub(now);
                    for key in index_keys(&session) {
                        store.index_session(&key, &hex, lives).await?;
                    }
                }
                // Ended meanwhile (logout, admin): not brought back, nor kept here.
                Write::Update if !written => {
                    self.forget(id);
                    return Ok(());
                }
                Write::Update => {}
            }
        }
        let expires_at = codec.expires_at(&session);
        self.keep(id, Record { session, meta }, now, expires_at);
        Ok(())
    }

    /// `session` with only its idle window moved, on top of what the store holds now: the
    /// stored tokens when another replica refreshed them since, else `session` as it is.
    async fn renewed(
        &self,
        store: &Store,
        session: Arc<Session<'static>>,
        codec: &SessionCodec,
    ) -> Result<Arc<Session<'static>>, StoreError> {
        let Some(text) = store.session(&id_hex(session.id)).await? else {
            return Ok(session);
        };
        let Ok(current) = codec.open_record(&text, session.id) else {
            return Ok(session);
        };
        if same_tokens(&current.session, &session) {
            return Ok(session);
        }
        let mut merged = (*current.session).clone();
        merged.last_seen = merged.last_seen.max(session.last_seen);
        Ok(Arc::new(merged))
    }

    /// Ends session `id` here and in the store (its record and index entries).
    pub(crate) async fn delete(&self, record: &Record) -> Result<(), StoreError> {
        let id = record.session.id;
        self.forget(id);
        if let Some(store) = &self.shared {
            let hex = id_hex(id);
            store.delete_session(&hex).await?;
            for key in index_keys(&record.session) {
                store.unindex_session(&key, &hex).await?;
            }
        }
        Ok(())
    }

    /// The live sessions of the user `sub` (or, `by_sid`, of the provider session `sub`),
    /// read from the store, not memory.
    pub(crate) async fn of_user(
        &self,
        provider: &str,
        value: &str,
        by_sid: bool,
        codec: &SessionCodec,
        now: u64,
    ) -> Result<Vec<Record>, StoreError> {
        let matches = |s: &Session<'_>| {
            s.provider_name() == provider
                && if by_sid {
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
                            .map(|e| e.record.clone())
                            .take(MAX_PER_CALL),
                    );
                }
            }
            out.sort_by_key(|r| r.session.created_at);
            return Ok(out);
        };
        let key = user_key(if by_sid { "sid" } else { "sub" }, provider, value);
        let mut out = Vec::new();
        for hex in store
            .sessions_of(&key)
            .await?
            .into_iter()
            .take(MAX_PER_CALL)
        {
            let Ok(id) = u128::from_str_radix(&hex, 16) else {
                continue;
            };
            match self.get(id, codec, now, 0).await? {
                Found::Record(r) if matches(&r.session) => out.push(r),
                // Expired since it was listed: tidy the index.
                _ => store.unindex_session(&key, &hex).await?,
            }
        }
        out.sort_by_key(|r| r.session.created_at);
        Ok(out)
    }
}

/// Whether two copies of a session hold the same tokens (they differ at most in `last_seen`).
fn same_tokens(a: &Session<'_>, b: &Session<'_>) -> bool {
    a.access_token == b.access_token && a.refresh_token == b.refresh_token
}

/// The index keys a session is listed under: its user, and its provider session when known.
fn index_keys(session: &Session<'_>) -> Vec<String> {
    let provider = session.provider_name();
    let mut keys = vec![user_key("sub", provider, &session.claims.sub)];
    if let Some(sid) = session.claims.sid.as_deref() {
        keys.push(user_key("sid", provider, sid));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SameSite, SessionConfig, Storage};
    use crate::session::fixture;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    fn codec() -> SessionCodec {
        SessionCodec::new(
            &SessionConfig {
                cookie_name: "tg".into(),
                dropped_host_prefix: false,
                keys: vec![[9u8; 32]],
                same_site: SameSite::Lax,
                max_lifetime: Duration::from_secs(3600),
                idle_timeout: Duration::from_secs(600),
                refresh_skew: Duration::from_secs(30),
                storage: Storage::Store,
                device_binding: Default::default(),
                bound_cookie_lifetime: Duration::from_secs(300),
            },
            false,
        )
    }

    fn session(sub: &str, sid: Option<&str>) -> Arc<Session<'static>> {
        let mut s = fixture::session(NOW, "at");
        s.id = rand::random();
        s.claims.sub = sub.to_string().into();
        s.claims.sid = sid.map(|v| v.to_string().into());
        Arc::new(s)
    }

    /// The in-process store keeps a session until it would expire, finds a user's sessions by
    /// `sub` or `sid`, ends them, and counts what it holds.
    #[tokio::test]
    async fn the_in_process_store_keeps_finds_and_ends_sessions() {
        let metrics = Metrics::new();
        let records = Records::new(None, metrics.clone());
        let codec = codec();
        let (a, b, c) = (
            session("alice", Some("p1")),
            session("alice", None),
            session("bob", None),
        );
        for s in [&a, &b, &c] {
            records
                .put(
                    s.clone(),
                    Arc::new(Meta::default()),
                    &codec,
                    NOW,
                    Write::Start,
                )
                .await
                .unwrap();
        }
        assert!(
            matches!(records.get(a.id, &codec, NOW + 1, FRESH_SECS).await.unwrap(), Found::Record(r) if r.session == a)
        );
        assert_eq!(
            records
                .of_user(PROVIDER, "alice", false, &codec, NOW + 1)
                .await
                .unwrap()
                .len(),
            2
        );
        let by_sid = records
            .of_user(PROVIDER, "p1", true, &codec, NOW + 1)
            .await
            .unwrap();
        assert_eq!(by_sid.len(), 1);
        assert_eq!(by_sid[0].session.id, a.id);
        records.delete(&by_sid[0]).await.unwrap();
        assert!(matches!(
            records
                .get(a.id, &codec, NOW + 1, FRESH_SECS)
                .await
                .unwrap(),
            Found::Gone
        ));
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("tollgate_sessions_active 2"), "{text}");
        // Past the idle timeout: gone, and swept from memory.
        assert!(matches!(
            records
                .get(b.id, &codec, NOW + 600, FRESH_SECS)
                .await
                .unwrap(),
            Found::Gone
        ));
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains("tollgate_sessions_active 0"), "{text}");
    }

    /// Two replicas on one Redis: the second holds a copy from before the first refreshed the
    /// session; its idle renewal moves `last_seen` and keeps the newer tokens.
    #[tokio::test]
    async fn a_renewal_from_a_stale_copy_keeps_a_newer_refresh() {
        use crate::store::testing::{Redis, BOUND};
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let codec = codec();
            let a = Records::new(Some(Arc::new(redis.store("t:"))), Metrics::new());
            let b = Records::new(Some(Arc::new(redis.store("t:"))), Metrics::new());
            let first = session("alice", None);
            let meta = Arc::new(Meta::default());
            a.put(first.clone(), meta.clone(), &codec, NOW, Write::Start)
                .await
                .unwrap();
            // B reads it (a copy in its memory), then A refreshes.
            assert!(matches!(
                b.get(first.id, &codec, NOW, FRESH_SECS).await.unwrap(),
                Found::Record(_)
            ));
            let mut refreshed = (*first).clone();
            refreshed.access_token = "at-2".into();
            refreshed.refresh_token = Some("rt-2".into());
            a.put(
                Arc::new(refreshed),
                meta.clone(),
                &codec,
                NOW + 5,
                Write::Update,
            )
            .await
            .unwrap();
            // B renews its copy, read before A's refresh and still fresh in its memory.
            let mut renewed = (*first).clone();
            renewed.last_seen = NOW + 20;
            b.put(
                Arc::new(renewed),
                meta.clone(),
                &codec,
                NOW + 20,
                Write::Update,
            )
            .await
            .unwrap();
            let c = Records::new(Some(Arc::new(redis.store("t:"))), Metrics::new());
            let Found::Record(stored) =
                c.get(first.id, &codec, NOW + 21, FRESH_SECS).await.unwrap()
            else {
                panic!("the session is gone");
            };
            assert_eq!(stored.session.access_token, "at-2");
            assert_eq!(stored.session.refresh_token.as_deref(), Some("rt-2"));
            assert_eq!(stored.session.last_seen, NOW + 20);
        })
        .await
        .unwrap();
    }

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
