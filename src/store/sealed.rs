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

#[cfg(test)]
mod tests {
    use crate::store::testing::{store_at, ttl, Redis, BOUND, TIMEOUT};

    #[test]
    fn keys_name_the_kind_and_the_key_under_the_prefix() {
        let store = store_at("redis://127.0.0.1:1/0", "tg:", TIMEOUT);
        assert_eq!(store.refresh_key("lock", "f1"), "tg:refresh-lock:f1");
        assert_eq!(store.refresh_key("result", "f1"), "tg:refresh-result:f1");
        assert_eq!(store.refresh_key("next", "f1"), "tg:refresh-next:f1");
        assert_eq!(store.refresh_key("token", "k"), "tg:refresh-token:k");
    }

    #[tokio::test]
    async fn a_sealed_value_is_kept_for_its_ttl_and_at_least_a_second() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            assert_eq!(store.get_sealed("get", "result", "f").await.unwrap(), None);
            store
                .put_sealed("put", "result", "f", "sealed text", 30)
                .await
                .unwrap();
            assert_eq!(
                store
                    .get_sealed("get", "result", "f")
                    .await
                    .unwrap()
                    .as_deref(),
                Some("sealed text")
            );
            assert_eq!(
                store.get_sealed("get", "next", "f").await.unwrap(),
                None,
                "another kind is another key"
            );
            assert!((1..=30).contains(&ttl(&mut raw, "tg:refresh-result:f").await));
            store.put_sealed("put", "next", "f", "x", 0).await.unwrap();
            assert_eq!(ttl(&mut raw, "tg:refresh-next:f").await, 1);
        })
        .await
        .expect("bounded");
    }
}
