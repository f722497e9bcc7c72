//! The shared store (`[store]`, Redis or Valkey): what makes several replicas act as one.
//!
//! It carries refresh results (one refresh per refresh token across replicas: a short lock,
//! the result sealed with the session keys) and revocations (logout, back-channel logout) and
//! logout token ids between replicas. The hot path never waits for the store: each replica keeps the revocation set in
//! memory ([`Revocations`]), and [`StoreSync`] keeps it current — every revocation is written as
//! a key that expires with it (so a replica that (re)connects reloads the whole set) and
//! published on a channel (so the others learn of it within a moment). A replica that records a
//! revocation applies it locally first, then writes it to the store within `[store] timeout`.
//!
//! Store faults: while the store is down, sessions keep being served, revocations are still
//! enforced by the replica that received them and by every replica for what it had already
//! learned, and the set is reloaded in full once the store is back; refreshes fall back to each
//! replica's own single flight. Redis Cluster is not supported yet.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::config::StoreConfig;
use crate::ops::metrics::Metrics;
use crate::session::revocations::{Revocation, Revocations};

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("the store is not connected")]
    Down,
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store refused: {0}")]
    Redis(String),
}

/// A connection to the shared store, made and remade in the background.
pub(crate) struct Store {
    client: redis::Client,
    metrics: Metrics,
    conn: RwLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    pub(crate) fn new(config: &StoreConfig, metrics: Metrics) -> Result<Store, StoreError> {
        let client = redis::Client::open(config.url.expose())
            .map_err(|e| StoreError::Redis(format!("{:?}", e.kind())))?;
        Ok(Store {
            client,
            metrics,
            conn: RwLock::new(None),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
        })
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    fn revocation_key(&self, r: &Revocation) -> String {
        let digest = Sha256::digest(serde_json::to_vec(r).unwrap_or_default());
        format!("{}revoked:{}", self.prefix, hex(&digest))
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.conn.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StoreError::Timeout(self.timeout))?
        .map_err(|_| StoreError::Down)?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs one store operation named `name` within `[store] timeout`, timed in the metrics.
    async fn bounded<T>(
        &self,
        name: &'static str,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, op).await;
        self.metrics
            .store_operation(name, started.elapsed().as_secs_f64());
        result
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(|e| StoreError::Redis(format!("{:?}", e.kind())))
    }

    /// Records `r` for every replica: a key that expires with it, and a message.
    pub(crate) async fn publish(&self, r: &Revocation, now: u64) -> Result<(), StoreError> {
        let ttl = r.until().saturating_sub(now).max(1);
        let body = serde_json::to_string(r).map_err(|e| StoreError::Redis(e.to_string()))?;
        let mut conn = self.connection().await?;
        let key = self.revocation_key(r);
        self.bounded("set", conn.set_ex::<_, _, ()>(&key, &body, ttl))
            .await?;
        self.bounded("publish", conn.publish::<_, _, i64>(self.channel(), &body))
            .await?;
        Ok(())
    }

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

    fn refresh_key(&self, what: &str, flight: &str) -> String {
        format!("{}refresh-{what}:{flight}", self.prefix)
    }

    /// Takes the cluster-wide refresh lock of `flight` for `ttl`; `false` when another replica
    /// holds it.
    pub(crate) async fn try_lock(&self, flight: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.connection().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = self
            .bounded(
                "lock",
                redis::cmd("SET")
                    .arg(self.refresh_key("lock", flight))
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Releases the refresh lock of `flight` (after a refresh that did not succeed, so the next
    /// replica need not wait for it to expire).
    pub(crate) async fn unlock(&self, flight: &str) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(
            "unlock",
            conn.del::<_, i64>(self.refresh_key("lock", flight)),
        )
        .await?;
        Ok(())
    }

    /// The sealed refresh result published for `flight`, if any.
    pub(crate) async fn result(&self, flight: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.connection().await?;
        self.bounded("get_result", conn.get(self.refresh_key("result", flight)))
            .await
    }

    /// Publishes the sealed refresh result of `flight` for `ttl` seconds.
    pub(crate) async fn put_result(
        &self,
        flight: &str,
        sealed: &str,
        ttl: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        self.bounded(
            "put_result",
            conn.set_ex::<_, _, ()>(self.refresh_key("result", flight), sealed, ttl.max(1)),
        )
        .await
    }

    /// Every revocation still in the store.
    async fn load_all(&self) -> Result<Vec<Revocation>, StoreError> {
        let mut conn = self.connection().await?;
        let pattern = format!("{}revoked:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = self
                .bounded(
                    "scan",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = self.bounded("mget", conn.mget(chunk)).await?;
            out.extend(
                values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str(&v).ok()),
            );
        }
        Ok(out)
    }
}

/// Keeps this replica's revocation set in step with the store: subscribe, reload everything,
/// then apply each message; on any failure, wait and start over.
pub(crate) struct StoreSync {
    pub(crate) store: Arc<Store>,
    pub(crate) revocations: Arc<Revocations>,
}

const RETRY: Duration = Duration::from_secs(1);

impl StoreSync {
    /// One connected stretch: returns when the subscription ends or fails.
    async fn follow(&self, up: &mut bool) -> Result<(), StoreError> {
        let mut pubsub =
            tokio::time::timeout(self.store.timeout, self.store.client.get_async_pubsub())
                .await
                .map_err(|_| StoreError::Timeout(self.store.timeout))?
                .map_err(|_| StoreError::Down)?;
        self.store
            .bounded("subscribe", pubsub.subscribe(self.store.channel()))
            .await?;
        // Subscribed first, then loaded: nothing published in between is missed.
        let all = self.store.load_all().await?;
        let now = crate::unix_now();
        for r in &all {
            self.revocations.apply(r, now);
        }
        if !*up {
            tracing::info!(
                revocations = all.len(),
                "store connected; revocations loaded"
            );
            *up = true;
        }
        self.store.metrics.store_up(true);
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let Ok(body) = msg.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Revocation>(&body) {
                Ok(r) => self.revocations.apply(&r, crate::unix_now()),
                Err(_) => tracing::warn!("store: an unreadable revocation message was ignored"),
            }
        }
        Err(StoreError::Down)
    }
}

#[async_trait]
impl BackgroundService for StoreSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut up = false;
        let mut first = true;
        loop {
            let result = tokio::select! {
                r = self.follow(&mut up) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = result {
                self.store.metrics.store_up(false);
                if up || first {
                    // Logged once per outage, not per retry.
                    tracing::warn!(error = %e, "store unreachable; serving with the revocations known so far");
                }
                up = false;
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
