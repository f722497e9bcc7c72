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
