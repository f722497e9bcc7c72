//! Route tokens (a route's own access token, [`crate::oidc::audience`]), sealed and shared so
//! that every replica uses the one token a session got for a route.

use redis::AsyncCommands;

use super::conn::{Store, StoreError};

impl Store {
    /// The sealed route token kept under `key` ([`crate::oidc::audience`]), if any.
    pub(crate) async fn route_token(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.get_sealed("get_route_token", "token", key).await
    }

    /// Removes the route token kept under `key`.
    pub(crate) async fn delete_route_token(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(
            "delete_route_token",
            conn.del::<_, i64>(self.refresh_key("token", key)),
        )
        .await?;
        Ok(())
    }

    /// Keeps a sealed route token under `key` for `ttl` seconds (its lifetime).
    pub(crate) async fn put_route_token(
        &self,
        key: &str,
        sealed: &str,
        ttl: u64,
    ) -> Result<(), StoreError> {
        self.put_sealed("put_route_token", "token", key, sealed, ttl)
            .await
    }
}
