//! Server-side sessions (issue 25, `[session] storage = "store"`): each session's sealed record
//! under `{prefix}session:{id}`, and each user's sessions under `{prefix}sessions-of:{user}`
//! (a set of session ids), so that a user's sessions can be listed and ended together.
//!
//! The record is sealed by its owner with the session keys, as a cookie would be: the store
//! keeps text it cannot read. `id` is the hex of the session's random handle (never the cookie
//! value, which is the handle sealed); `user` is a hash of the provider and `sub` made by the
//! caller, so the store learns no subject either. Every operation names one key, so a Redis
//! Cluster routes each to the node that owns it; the index and the records it names may live on
//! different nodes, and an index entry whose record has expired is skipped by its reader.

use redis::AsyncCommands;

use super::conn::{Store, StoreError};

/// When a session record is written ([`Store::put_session`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// A new session (a login): whatever is there.
    Always,
    /// A cookie session moved in: only if no copy of it got there first.
    IfAbsent,
    /// A change (refresh, renewal): only while the record exists, so that a session ended
    /// meanwhile is not brought back.
    IfPresent,
}

impl Store {
    fn session_key(&self, id: &str) -> String {
        format!("{}session:{id}", self.prefix)
    }

    fn user_key(&self, user: &str) -> String {
        format!("{}sessions-of:{user}", self.prefix)
    }

    /// The sealed record of session `id`, if it has not expired.
    pub(crate) async fn session(&self, id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.connection().await?;
        self.bounded("get_session", conn.get(self.session_key(id)))
            .await
    }

    /// Keeps the sealed record of session `id` for `ttl` seconds (at least one): the earlier of
    /// its absolute and idle limits, so a session's record expires when the session would.
    /// `when` says whether an existing record may be replaced or must be; `Ok(false)`: not
    /// written, because of `when`.
    pub(crate) async fn put_session(
        &self,
        id: &str,
        sealed: &str,
        ttl: u64,
        when: Put,
    ) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.session_key(id))
            .arg(sealed)
            .arg("EX")
            .arg(ttl.max(1));
        match when {
            Put::Always => {}
            Put::IfAbsent => {
                cmd.arg("NX");
            }
            Put::IfPresent => {
                cmd.arg("XX");
            }
        }
        // `SET` answers OK, or nil when NX/XX stopped it.
        let reply: Option<String> = self
            .bounded("put_session", cmd.query_async(&mut conn))
            .await?;
        Ok(reply.is_some())
    }

    /// Removes the record of session `id` (its end); removing one that is gone is no error.
    pub(crate) async fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded("delete_session", conn.del::<_, i64>(self.session_key(id)))
            .await?;
        Ok(())
    }

    /// Adds session `id` to `user`'s sessions, and keeps the set for at least `ttl` seconds
    /// (the session's absolute limit: no session in it outlives that).
    pub(crate) async fn index_session(
        &self,
        user: &str,
        id: &str,
        ttl: u64,
    ) -> Result<(), StoreError> {
        let key = self.user_key(user);
        let mut conn = self.connection().await?;
        self.bounded("index_session", conn.sadd::<_, _, i64>(&key, id))
            .await?;
        let ttl = i64::try_from(ttl.max(1)).unwrap_or(i64::MAX);
        // Only ever lengthened: a session added later may live longer than the set so far.
        let left: i64 = self.bounded("index_session", conn.ttl(&key)).await?;
        if left < ttl {
            self.bounded("index_session", conn.expire::<_, i64>(&key, ttl))
                .await?;
        }
        Ok(())
    }

    /// The ids of `user`'s sessions (some may have expired since: their records are gone).
    pub(crate) async fn sessions_of(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.connection().await?;
        self.bounded("sessions_of", conn.smembers(self.user_key(user)))
            .await
    }

    /// Removes session `id` from `user`'s sessions.
    pub(crate) async fn unindex_session(&self, user: &str, id: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(
            "unindex_session",
            conn.srem::<_, _, i64>(self.user_key(user), id),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Put;
    use crate::store::testing::{get, store_at, ttl, Redis, BOUND, TIMEOUT};

    #[test]
    fn keys_are_under_the_prefix() {
        let store = store_at("redis://127.0.0.1:1/0", "tg:", TIMEOUT);
        assert_eq!(store.session_key("ab12"), "tg:session:ab12");
        assert_eq!(store.user_key("u1"), "tg:sessions-of:u1");
    }

    /// A record is kept for its TTL, read back, and removed; another prefix does not see it.
    #[tokio::test]
    async fn a_session_record_is_kept_read_and_removed() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            assert_eq!(store.session("s1").await.unwrap(), None);
            assert!(store
                .put_session("s1", "sealed-1", 600, Put::Always)
                .await
                .unwrap());
            assert_eq!(
                store.session("s1").await.unwrap().as_deref(),
                Some("sealed-1")
            );
            assert_eq!(
                get(&mut raw, "tg:session:s1").await.as_deref(),
                Some("sealed-1")
            );
            assert!((1..=600).contains(&ttl(&mut raw, "tg:session:s1").await));
            // A second copy does not replace the first when moving in.
            assert!(!store
                .put_session("s1", "other", 600, Put::IfAbsent)
                .await
                .unwrap());
            // A renewal writes it again with a new TTL; a TTL of 0 is still a second.
            assert!(store
                .put_session("s1", "sealed-2", 0, Put::IfPresent)
                .await
                .unwrap());
            assert_eq!(ttl(&mut raw, "tg:session:s1").await, 1);
            assert_eq!(
                store.session("s1").await.unwrap().as_deref(),
                Some("sealed-2")
            );
            assert_eq!(redis.store("other:").session("s1").await.unwrap(), None);
            store.delete_session("s1").await.unwrap();
            assert_eq!(store.session("s1").await.unwrap(), None);
            store.delete_session("s1").await.unwrap();
            // An ended session is not brought back by a late change.
            assert!(!store
                .put_session("s1", "late", 600, Put::IfPresent)
                .await
                .unwrap());
            assert_eq!(store.session("s1").await.unwrap(), None);
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            for op in ["get_session", "put_session", "delete_session"] {
                assert!(metrics.contains(&format!(r#"op="{op}""#)), "{op}");
            }
        })
        .await
        .expect("bounded");
    }

    /// A user's sessions are listed together; the set's TTL only grows; removal is per id.
    #[tokio::test]
    async fn a_users_sessions_are_indexed() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            assert!(store.sessions_of("u1").await.unwrap().is_empty());
            store.index_session("u1", "s1", 1_000).await.unwrap();
            store.index_session("u1", "s2", 100).await.unwrap();
            store.index_session("u2", "s3", 100).await.unwrap();
            let mut listed = store.sessions_of("u1").await.unwrap();
            listed.sort();
            assert_eq!(listed, ["s1", "s2"]);
            let left = ttl(&mut raw, "tg:sessions-of:u1").await;
            assert!(
                (900..=1_000).contains(&left),
                "kept for the longest: {left}"
            );
            store.unindex_session("u1", "s1").await.unwrap();
            assert_eq!(store.sessions_of("u1").await.unwrap(), ["s2"]);
            assert_eq!(store.sessions_of("u2").await.unwrap(), ["s3"]);
        })
        .await
        .expect("bounded");
    }

    /// With the store down, each operation fails within its timeout.
    #[tokio::test]
    async fn a_store_that_is_down_fails_fast() {
        tokio::time::timeout(BOUND, async {
            let port = crate::store::testing::free_port();
            let store = store_at(&format!("redis://127.0.0.1:{port}/0"), "tg:", TIMEOUT);
            assert!(store.session("s1").await.is_err());
            assert!(store.put_session("s1", "x", 10, Put::Always).await.is_err());
            assert!(store.sessions_of("u1").await.is_err());
        })
        .await
        .expect("bounded");
    }
}
