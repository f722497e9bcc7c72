//! The shared store (`[store]`, Redis or Valkey): what makes several replicas act as one.
//!
//! It carries refresh results (one refresh per refresh token across replicas: a short lock,
//! the result sealed with the session keys) and revocations (logout, back-channel logout) and
//! logout token ids between replicas. The hot path never waits for the store: each replica keeps
//! the revocation set in memory ([`Revocations`]), and [`StoreSync`] keeps it current — every
//! revocation is added to one sorted set scored by when it lapses (so a replica that
//! (re)connects reloads the whole set with `ZSCAN`, and lapsed ones are trimmed on each write)
//! and published on a channel (so the others learn of it within a moment). A replica that
//! records a revocation applies it locally first, then writes it to the store within
//! `[store] timeout`.
//!
//! One server (`url`) or a Redis Cluster (`cluster_urls`): every operation names one key (the
//! refresh lock and result of one refresh token, one logout token id, the revocation set), so
//! the cluster client routes each to the node that owns it, and nothing needs a multi-key
//! command or a scan across nodes. Classic pub/sub messages reach every node of a cluster, so
//! [`StoreSync`] subscribes on any one seed node, moving to the next when it fails.
//!
//! Store faults: while the store is down, sessions keep being served, revocations are still
//! enforced by the replica that received them and by every replica for what it had already
//! learned, and the set is reloaded in full once the store is back; refreshes fall back to each
//! replica's own single flight.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::config::{StoreConfig, StoreTarget};
use crate::ops::metrics::Metrics;
use crate::session::revocations::{Revocation, Revocations};

/// Why a store operation did not happen.
/// Proof of holding a refresh lock ([`Store::try_lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockToken(u64);

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("the store is not connected")]
    Down,
    #[error("cannot connect to the store: {0}")]
    Connect(String),
    #[error("the store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the store refused: {0}")]
    Redis(String),
    #[error("a value in the store does not open with this replica's session keys")]
    Unreadable,
}

/// How the store is reached: one server, or a Redis Cluster (its client and, for pub/sub, a
/// client per seed node).
// One per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Clients {
    Single(redis::Client),
    Cluster {
        client: ClusterClient,
        nodes: Vec<redis::Client>,
    },
}

/// A connection to either kind of store; both reconnect by themselves.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection to the shared store, made and remade in the background.
pub(crate) struct Store {
    /// Replaced whole when `url_file` changes ([`Store::replace_url`]).
    clients: std::sync::RwLock<Arc<Clients>>,
    /// Tells the subscription to start over (on the new URL).
    reconnect: tokio::sync::Notify,
    /// SHA-256 of the URL in use (`url_file` reloads compare; the URL holds a password).
    url_hash: std::sync::Mutex<[u8; 32]>,
    metrics: Metrics,
    conn: RwLock<Option<Conn>>,
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

/// Why a connection failed, for the log: the client's message (refused, TLS certificate,
/// `WRONGPASS`), which names neither the URL nor its password.
fn connect_error(e: redis::RedisError) -> StoreError {
    StoreError::Connect(format!("{:?}: {e}", e.kind()))
}

fn url_hash(url: &crate::config::Secret) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(url.expose().as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    pub(crate) fn new(config: &StoreConfig, metrics: Metrics) -> Result<Store, StoreError> {
        let refused = |e: redis::RedisError| StoreError::Redis(format!("{:?}", e.kind()));
        let clients = match &config.target {
            StoreTarget::Single(url) => {
                Clients::Single(redis::Client::open(url.expose()).map_err(refused)?)
            }
            StoreTarget::Cluster(urls) => {
                let client =
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(|u| u.expose()))
                        .connection_timeout(config.timeout)
                        .response_timeout(config.timeout)
                        .retries(1)
                        .build()
                        .map_err(refused)?;
                let nodes = urls
                    .iter()
                    .map(|u| redis::Client::open(u.expose()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(refused)?;
                Clients::Cluster { client, nodes }
            }
        };
        Ok(Store {
            clients: std::sync::RwLock::new(Arc::new(clients)),
            reconnect: tokio::sync::Notify::new(),
            url_hash: std::sync::Mutex::new(match &config.target {
                StoreTarget::Single(url) => url_hash(url),
                StoreTarget::Cluster(_) => [0; 32],
            }),
            metrics,
            conn: RwLock::new(None),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
        })
    }

    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    /// The sorted set of revocations, scored by when each lapses.
    fn revocations_key(&self) -> String {
        format!("{}revoked", self.prefix)
    }

    fn clients(&self) -> Arc<Clients> {
        match self.clients.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Connects to `url` from now on (a reloaded `url_file`): the next operation opens a new
    /// connection, the subscription starts over; operations in progress finish on the old one.
    /// `false` when `url` is the one in use (nothing changes).
    pub(crate) async fn replace_url(
        &self,
        url: &crate::config::Secret,
    ) -> Result<bool, StoreError> {
        let hash = url_hash(url);
        if self.url_hash.lock().is_ok_and(|h| *h == hash) {
            return Ok(false);
        }
        let client = redis::Client::open(url.expose())
            .map_err(|e| StoreError::Redis(format!("{:?}", e.kind())))?;
        if let Ok(mut h) = self.url_hash.lock() {
            *h = hash;
        }
        match self.clients.write() {
            Ok(mut c) => *c = Arc::new(Clients::Single(client)),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(Clients::Single(client)),
        }
        *self.conn.write().await = None;
        // Only a subscription running now: one between attempts connects anew anyway (a
        // stored permit would end the next healthy one).
        self.reconnect.notify_waiters();
        Ok(true)
    }

    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        let mut slot = self.conn.write().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let clients = self.clients();
        let conn = match clients.as_ref() {
            Clients::Single(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    self.timeout,
                    client.get_connection_manager_with_config(config),
                )
                .await
                .map_err(|_| StoreError::Timeout(self.timeout))?
                .map_err(connect_error)
                .map(Conn::Single)?
            }
            Clients::Cluster { client, .. } => {
                // Discovering the slots takes a round trip or two more than one operation.
                tokio::time::timeout(2 * self.timeout, client.get_async_connection())
                    .await
                    .map_err(|_| StoreError::Timeout(self.timeout))?
                    .map_err(connect_error)
                    .map(Conn::Cluster)?
            }
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// A fresh pub/sub connection; in a cluster, to the seed node `attempt` picks (any node
    /// relays every message).
    async fn pubsub(&self, attempt: usize) -> Result<redis::aio::PubSub, StoreError> {
        let clients = self.clients();
        let client = match clients.as_ref() {
            Clients::Single(client) => client,
            Clients::Cluster { nodes, .. } => &nodes[attempt % nodes.len()],
        };
        tokio::time::timeout(self.timeout, client.get_async_pubsub())
            .await
            .map_err(|_| StoreError::Timeout(self.timeout))?
            .map_err(connect_error)
    }

    /// Runs one store operation named `name` within `[store] timeout`, timed in the metrics.
    async fn bounded<T>(
        &self,
        name: &'static str,
        op: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let span = crate::ops::telemetry::ChildSpan::start(
            "store",
            vec![
                opentelemetry::KeyValue::new("db.system.name", "redis"),
                opentelemetry::KeyValue::new("db.operation.name", name),
            ],
        );
        let result = tokio::time::timeout(self.timeout, op).await;
        self.metrics
            .store_operation(name, started.elapsed().as_secs_f64());
        span.end(match &result {
            Err(_) => Some("timeout"),
            Ok(Err(_)) => Some("error"),
            Ok(Ok(_)) => None,
        });
        match result {
            Err(_) => Err(StoreError::Timeout(self.timeout)),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if matches!(self.clients().as_ref(), Clients::Cluster { .. })
                    && (e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
                {
                    // The cluster client retries within a topology it knows; after a fault
                    // of the whole cluster, start over from the seed nodes.
                    *self.conn.write().await = None;
                }
                Err(StoreError::Redis(format!("{:?}", e.kind())))
            }
        }
    }

    /// Records `r` for every replica: a member of the revocation set, and a message.
    pub(crate) async fn publish(&self, r: &Revocation, now: u64) -> Result<(), StoreError> {
        let body = serde_json::to_string(r).map_err(|e| StoreError::Redis(e.to_string()))?;
        let mut conn = self.connection().await?;
        let key = self.revocations_key();
        self.bounded("set", conn.zadd::<_, _, _, ()>(&key, &body, r.until()))
            .await?;
        self.bounded("publish", conn.publish::<_, _, i64>(self.channel(), &body))
            .await?;
        // Lapsed revocations leave the set here rather than by a key expiry.
        self.bounded(
            "trim",
            conn.zrembyscore::<_, _, _, i64>(&key, "-inf", format!("({now}")),
        )
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

    /// The sealed value of kind `what` under `key`, if any (operation `op` in the metrics).
    async fn get_sealed(
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
    async fn put_sealed(
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

    /// Every revocation still in the store. `ZSCAN` returns every member present for the
    /// whole scan, in pages, so a large set never arrives as one reply.
    async fn load_all(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let mut conn = self.connection().await?;
        let key = self.revocations_key();
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<(String, f64)>) = self
                .bounded(
                    "scan",
                    redis::cmd("ZSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn),
                )
                .await?;
            out.extend(
                page.into_iter()
                    .filter_map(|(member, _)| serde_json::from_str::<Revocation>(&member).ok())
                    .filter(|r| r.until() >= now),
            );
            if next == 0 {
                break;
            }
            cursor = next;
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
    async fn follow(&self, up: &mut bool, attempt: usize) -> Result<(), StoreError> {
        let mut pubsub = self.store.pubsub(attempt).await?;
        self.store
            .bounded("subscribe", pubsub.subscribe(self.store.channel()))
            .await?;
        // Subscribed first, then loaded: nothing published in between is missed.
        let now = crate::unix_now();
        let all = self.store.load_all(now).await?;
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
        loop {
            let msg = tokio::select! {
                msg = messages.next() => msg,
                // A new URL: subscribe again there.
                _ = self.store.reconnect.notified() => return Err(StoreError::Down),
            };
            let Some(msg) = msg else { break };
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
        // Replicas start on different seed nodes, so subscriptions spread over a cluster.
        let mut attempt = std::process::id() as usize;
        loop {
            let result = tokio::select! {
                r = self.follow(&mut up, attempt) => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = result {
                self.store.metrics.store_up(false);
                if up || first {
                    // Logged once per outage, not per retry.
                    tracing::warn!(error = %e, "store unreachable; serving with the revocations known so far");
                }
                up = false;
                attempt = attempt.wrapping_add(1);
            }
            first = false;
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
