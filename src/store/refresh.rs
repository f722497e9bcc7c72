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
