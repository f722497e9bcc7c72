//! Reaching the store: the [`Store`] handle, its clients (one server or a Redis Cluster), the
//! connection made on first use and remade after a new `url_file`, and [`Store::bounded`], which
//! runs every operation within `[store] timeout` and times it. What is kept there, under which
//! keys, lives in the sibling files.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::RwLock;

use crate::config::{StoreConfig, StoreTarget};
use crate::ops::metrics::Metrics;

/// Why a store operation did not happen.
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
pub(super) enum Conn {
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
    pub(super) reconnect: tokio::sync::Notify,
    /// SHA-256 of the URL in use (`url_file` reloads compare; the URL holds a password).
    url_hash: std::sync::Mutex<[u8; 32]>,
    pub(super) metrics: Metrics,
    conn: RwLock<Option<Conn>>,
    /// Prepended to every key and channel.
    pub(super) prefix: String,
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

    pub(super) async fn connection(&self) -> Result<Conn, StoreError> {
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
    pub(super) async fn pubsub(&self, attempt: usize) -> Result<redis::aio::PubSub, StoreError> {
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
    pub(super) async fn bounded<T>(
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
}
