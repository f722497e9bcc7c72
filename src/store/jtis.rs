//! Logout token ids (`jti`) seen by any replica: a back-channel logout token is accepted once
//! across the deployment, not once per replica.

use sha2::{Digest, Sha256};

use super::conn::{Store, StoreError};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Records a logout token id; `false` when some replica saw it first.
    pub(crate) async fn first_use(&self, jti: &str, ttl: u64) -> Result<bool, StoreError> {
        let key = format!(
            "{}jti:{}",
            self.prefix,
            hex(&Sha256::digest(jti.as_bytes()))
        );
        let mut conn = self.connection().await?;
        let set: Option<String> = self
            .bounded(
                "first_use",
                redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.max(1))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{get, store_at, ttl, Redis, BOUND, TIMEOUT};

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }

    #[tokio::test]
    async fn a_jti_is_used_once_under_its_hash_for_its_ttl() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            assert!(store.first_use("abc", 60).await.unwrap());
            assert!(!store.first_use("abc", 60).await.unwrap(), "seen");
            assert!(store.first_use("abd", 60).await.unwrap(), "another jti");
            assert!(
                redis.store("other:").first_use("abc", 60).await.unwrap(),
                "another key prefix is another deployment"
            );
            // The key names the SHA-256 of the jti, not the jti.
            let key = "tg:jti:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
            assert_eq!(get(&mut raw, key).await.as_deref(), Some("1"));
            assert!((1..=60).contains(&ttl(&mut raw, key).await));
            // A TTL of 0 still expires (at least one second).
            assert!(store.first_use("zero", 0).await.unwrap());
            let zero = format!("tg:jti:{}", hex(&Sha256::digest(b"zero")));
            assert_eq!(ttl(&mut raw, &zero).await, 1);
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            assert!(metrics.contains(r#"op="first_use""#), "{metrics}");
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn a_store_that_is_down_says_so() {
        tokio::time::timeout(BOUND, async {
            let port = crate::store::testing::free_port();
            let store = store_at(&format!("redis://127.0.0.1:{port}/0"), "tg:", TIMEOUT);
            let err = store.first_use("abc", 60).await.unwrap_err();
            assert!(matches!(err, StoreError::Connect(_)), "{err:?}");
        })
        .await
        .expect("bounded");
    }
}
