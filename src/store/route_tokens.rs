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

#[cfg(test)]
mod tests {
    use crate::store::testing::{get, ttl, Redis, BOUND};

    #[tokio::test]
    async fn a_route_token_is_kept_for_its_lifetime_and_removed() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            assert_eq!(store.route_token("s1/api").await.unwrap(), None);
            store
                .put_route_token("s1/api", "sealed", 120)
                .await
                .unwrap();
            assert_eq!(
                store.route_token("s1/api").await.unwrap().as_deref(),
                Some("sealed")
            );
            assert_eq!(
                get(&mut raw, "tg:refresh-token:s1/api").await.as_deref(),
                Some("sealed")
            );
            assert!((1..=120).contains(&ttl(&mut raw, "tg:refresh-token:s1/api").await));
            assert_eq!(
                redis.store("other:").route_token("s1/api").await.unwrap(),
                None
            );
            store.delete_route_token("s1/api").await.unwrap();
            assert_eq!(store.route_token("s1/api").await.unwrap(), None);
            // Removing what is not there is no error.
            store.delete_route_token("s1/api").await.unwrap();
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            for op in ["get_route_token", "put_route_token", "delete_route_token"] {
                assert!(metrics.contains(&format!(r#"op="{op}""#)), "{op}");
            }
        })
        .await
        .expect("bounded");
    }
}
