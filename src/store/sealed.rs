//! Sealed values kept for a while under `{prefix}refresh-{what}:{key}`: the key scheme and the
//! get and put that refresh results, rotations and route tokens share. The values are sealed
//! with the session keys by their owners; the store only keeps the text.

use redis::AsyncCommands;

use super::conn::{Store, StoreError};

impl Store {
    pub(super) fn refresh_key(&self, what: &str, flight: &str) -> String {
        format!("{}refresh-{what}:{flight}", self.prefix)
    }

    /// The sealed value of kind `what` under `key`, if any (operation `op` in the metrics).
    pub(super) async fn get_sealed(
        &self,
        op: &'static str,
        what: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(op, conn.get(self.refresh_key(what, key)))
            .await
    }

    /// Keeps a sealed value of kind `what` under `key` for `ttl` seconds.
    pub(super) async fn put_sealed(
        &self,
        op: &'static str,
        what: &str,
        key: &str,
        sealed: &str,
        ttl: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(
            op,
            conn.set_ex::<_, _, ()>(self.refresh_key(what, key), sealed, ttl.max(1)),
        )
        .await
    }
}
