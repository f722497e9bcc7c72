//! One refresh per refresh token across replicas: the short lock a replica takes before it asks
//! the provider, the sealed result it publishes for the others, and the rotation it records
//! (what the refresh token rotated to).

use std::time::Duration;

use super::conn::{Store, StoreError};

/// Proof of holding a refresh lock ([`Store::try_lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockToken(u64);

impl Store {
    /// Takes the cluster-wide refresh lock of `flight` for `ttl`; `None` when another replica
    /// holds it. The lock holds a random token, so only its holder releases it.
    pub(crate) async fn try_lock(
        &self,
        flight: &str,
        ttl: Duration,
    ) -> Result<Option<LockToken>, StoreError> {
        let mut conn = self.connection().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let token = LockToken(rand::random::<u64>().max(1));
        let set: Option<String> = self
            .bounded(
                "lock",
                redis::cmd("SET")
                    .arg(self.refresh_key("lock", flight))
                    .arg(token.0)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.map(|_| token))
    }

    /// Releases the refresh lock of `flight` if it is still `token`'s: a holder whose lock
    /// lapsed must not release the next holder's (compare and delete, in one script).
    pub(crate) async fn unlock(&self, flight: &str, token: LockToken) -> Result<(), StoreError> {
        const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                               return redis.call('DEL', KEYS[1]) else return 0 end";
        let mut conn = self.connection().await?;
        self.bounded(
            "unlock",
            redis::cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(self.refresh_key("lock", flight))
                .arg(token.0)
                .query_async::<i64>(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// The sealed refresh result published for `flight`, if any.
    pub(crate) async fn result(&self, flight: &str) -> Result<Option<String>, StoreError> {
        self.get_sealed("get_result", "result", flight).await
    }

    /// Publishes the sealed refresh result of `flight` for `ttl` seconds.
    pub(crate) async fn put_result(
        &self,
        flight: &str,
        sealed: &str,
        ttl: u64,
    ) -> Result<(), StoreError> {
        self.put_sealed("put_result", "result", flight, sealed, ttl)
            .await
    }

    /// The sealed rotation recorded for `flight` (what its refresh token rotated to), if any.
    pub(crate) async fn rotation(&self, flight: &str) -> Result<Option<String>, StoreError> {
        self.get_sealed("get_rotation", "next", flight).await
    }

    /// Records the sealed rotation of `flight` for `ttl` seconds.
    pub(crate) async fn put_rotation(
        &self,
        flight: &str,
        sealed: &str,
        ttl: u64,
    ) -> Result<(), StoreError> {
        self.put_sealed("put_rotation", "next", flight, sealed, ttl)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{get, ttl, Redis, BOUND};

    /// Another token than `t`, as a replica whose lock lapsed would hold.
    fn other(t: LockToken) -> LockToken {
        LockToken(if t.0 == 1 { 2 } else { t.0 - 1 })
    }

    #[tokio::test]
    async fn a_lock_is_held_once_and_released_only_by_its_token() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            let ttl_10s = Duration::from_secs(10);
            let token = store.try_lock("f", ttl_10s).await.unwrap().unwrap();
            assert_ne!(token.0, 0);
            assert_eq!(
                get(&mut raw, "tg:refresh-lock:f").await,
                Some(token.0.to_string())
            );
            let pttl: i64 = redis::cmd("PTTL")
                .arg("tg:refresh-lock:f")
                .query_async(&mut raw)
                .await
                .unwrap();
            assert!((1..=10_000).contains(&pttl), "{pttl}");
            assert_eq!(store.try_lock("f", ttl_10s).await.unwrap(), None, "held");
            assert!(
                redis
                    .store("tg:")
                    .try_lock("g", ttl_10s)
                    .await
                    .unwrap()
                    .is_some(),
                "another flight has its own lock"
            );

            store.unlock("f", other(token)).await.unwrap();
            assert_eq!(
                store.try_lock("f", ttl_10s).await.unwrap(),
                None,
                "still held"
            );
            store.unlock("f", token).await.unwrap();
            let again = store.try_lock("f", ttl_10s).await.unwrap();
            assert!(again.is_some(), "released");
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            assert!(metrics.contains(r#"op="lock""#) && metrics.contains(r#"op="unlock""#));
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn a_lapsed_holder_does_not_release_the_next_holders_lock() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let first = store
                .try_lock("f", Duration::from_millis(100))
                .await
                .unwrap()
                .unwrap();
            // Wait for the lock to lapse (polling the store, not guessing).
            let second = loop {
                if let Some(t) = store.try_lock("f", Duration::from_secs(10)).await.unwrap() {
                    break t;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_ne!(first, second);
            store.unlock("f", first).await.unwrap();
            assert_eq!(
                store.try_lock("f", Duration::from_secs(10)).await.unwrap(),
                None,
                "the second holder still holds it"
            );
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn a_lock_shorter_than_a_millisecond_is_still_a_lock() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            // `PX 0` is an error in redis: the lock lasts at least a millisecond.
            assert!(store.try_lock("f", Duration::ZERO).await.unwrap().is_some());
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn results_and_rotations_round_trip_with_their_ttl() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            assert_eq!(store.result("f").await.unwrap(), None);
            store.put_result("f", "sealed result", 30).await.unwrap();
            assert_eq!(
                store.result("f").await.unwrap().as_deref(),
                Some("sealed result")
            );
            assert!((1..=30).contains(&ttl(&mut raw, "tg:refresh-result:f").await));

            assert_eq!(store.rotation("f").await.unwrap(), None, "another key");
            store.put_rotation("f", "sealed next", 0).await.unwrap();
            assert_eq!(
                store.rotation("f").await.unwrap().as_deref(),
                Some("sealed next")
            );
            assert_eq!(ttl(&mut raw, "tg:refresh-next:f").await, 1, "at least 1 s");
            assert_eq!(
                store.result("f").await.unwrap().as_deref(),
                Some("sealed result")
            );
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            for op in ["get_result", "put_result", "get_rotation", "put_rotation"] {
                assert!(metrics.contains(&format!(r#"op="{op}""#)), "{op}");
            }
        })
        .await
        .expect("bounded");
    }
}
