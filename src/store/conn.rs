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
    #[error("a value could not be sealed for the store")]
    Seal,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{free_port, store_at, Redis, BOUND, TIMEOUT};
    use redis::AsyncCommands;

    fn secret(url: &str) -> crate::config::Secret {
        crate::config::Secret::new(url.to_string())
    }

    #[test]
    fn errors_say_what_failed() {
        assert_eq!(StoreError::Down.to_string(), "the store is not connected");
        assert_eq!(
            StoreError::Timeout(Duration::from_millis(250)).to_string(),
            "the store did not answer within 250ms"
        );
        assert_eq!(
            StoreError::Redis("ResponseError".into()).to_string(),
            "the store refused: ResponseError"
        );
        assert_eq!(
            StoreError::Connect("x".into()).to_string(),
            "cannot connect to the store: x"
        );
        assert!(StoreError::Unreadable.to_string().contains("session keys"));
    }

    #[test]
    fn a_url_that_is_not_redis_is_refused_at_start() {
        let err = Store::new(
            &StoreConfig {
                target: StoreTarget::Single(secret("http://127.0.0.1:6379")),
                key_prefix: "p:".into(),
                timeout: TIMEOUT,
            },
            Metrics::new(),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Redis(_)), "{err:?}");
    }

    #[test]
    fn debug_shows_the_prefix_not_the_url() {
        let store = store_at("redis://user:hunter2@127.0.0.1:1/0", "tg:", TIMEOUT);
        let text = format!("{store:?}");
        assert!(text.contains("tg:"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }

    #[test]
    fn url_hash_tells_urls_apart() {
        let a = url_hash(&secret("redis://a:1@h/0"));
        assert_eq!(a, url_hash(&secret("redis://a:1@h/0")));
        assert_ne!(a, url_hash(&secret("redis://a:2@h/0")));
        assert_ne!(a, [0; 32]);
    }

    #[tokio::test]
    async fn replace_url_changes_only_for_a_new_url() {
        let store = store_at("redis://127.0.0.1:1/0", "p:", TIMEOUT);
        assert!(!store
            .replace_url(&secret("redis://127.0.0.1:1/0"))
            .await
            .unwrap());
        assert!(store
            .replace_url(&secret("redis://127.0.0.1:2/0"))
            .await
            .unwrap());
        assert!(!store
            .replace_url(&secret("redis://127.0.0.1:2/0"))
            .await
            .unwrap());
        // A URL the client refuses leaves the one in use as it was.
        let err = store.replace_url(&secret("http://x")).await.unwrap_err();
        assert!(matches!(err, StoreError::Redis(_)), "{err:?}");
        assert!(!store
            .replace_url(&secret("redis://127.0.0.1:2/0"))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn a_cluster_store_takes_any_replacement_url() {
        // A cluster has no single URL to compare with (its hash is all zeros).
        let store = Store::new(
            &StoreConfig {
                target: StoreTarget::Cluster(vec![
                    secret("redis://127.0.0.1:1"),
                    secret("redis://127.0.0.1:2"),
                ]),
                key_prefix: "p:".into(),
                timeout: TIMEOUT,
            },
            Metrics::new(),
        )
        .unwrap();
        assert!(
            matches!(store.clients().as_ref(), Clients::Cluster { nodes, .. } if nodes.len() == 2)
        );
        assert!(store
            .replace_url(&secret("redis://127.0.0.1:1/0"))
            .await
            .unwrap());
        assert!(matches!(store.clients().as_ref(), Clients::Single(_)));
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error_within_the_timeout() {
        tokio::time::timeout(BOUND, async {
            let port = free_port();
            let timeout = Duration::from_millis(500);
            let store = store_at(
                &format!("redis://user:hunter2@127.0.0.1:{port}/0"),
                "p:",
                timeout,
            );
            for _ in 0..2 {
                let started = std::time::Instant::now();
                let err = store.connection().await.err().unwrap();
                assert!(started.elapsed() < timeout + Duration::from_millis(500));
                let StoreError::Connect(why) = &err else {
                    panic!("{err:?}");
                };
                assert!(!why.contains("hunter2"), "{why}");
                assert!(err.to_string().starts_with("cannot connect to the store"));
            }
            // Nothing half-made is kept: the next operation tries again (and fails again).
            assert!(store.conn.read().await.is_none());
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn a_store_that_never_answers_times_out() {
        tokio::time::timeout(BOUND, async {
            // Accepts connections and never says a word.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let held = tokio::spawn(async move {
                let mut open = Vec::new();
                while let Ok((s, _)) = listener.accept().await {
                    open.push(s);
                }
            });
            let timeout = Duration::from_millis(300);
            let store = store_at(&format!("redis://127.0.0.1:{port}/0"), "p:", timeout);
            let started = std::time::Instant::now();
            let err = match store.connection().await {
                Err(e) => e,
                Ok(mut conn) => store
                    .bounded("get", conn.get::<_, Option<String>>("k"))
                    .await
                    .unwrap_err(),
            };
            assert!(
                matches!(err, StoreError::Timeout(t) if t == timeout),
                "{err:?}"
            );
            assert!(started.elapsed() < 3 * timeout + Duration::from_millis(500));
            held.abort();
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn operations_run_on_the_url_in_use_and_come_back_after_an_outage() {
        tokio::time::timeout(BOUND, async {
            let mut a = Redis::start().await;
            let b = Redis::start().await;
            let store = a.store("p:");
            let mut conn = store.connection().await.unwrap();
            store
                .bounded("set", conn.set::<_, _, ()>("k", "on a"))
                .await
                .unwrap();
            let got: Option<String> = store.bounded("get", conn.get("k")).await.unwrap();
            assert_eq!(got.as_deref(), Some("on a"));
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            assert!(metrics.contains(r#"op="set""#), "{metrics}");

            // Down: an operation fails within the timeout; back: the connection comes back.
            a.stop();
            let started = std::time::Instant::now();
            let down = store
                .bounded("get", conn.get::<_, Option<String>>("k"))
                .await;
            assert!(down.is_err());
            assert!(started.elapsed() < TIMEOUT + Duration::from_secs(1));
            let a = Redis::start_on(a.port).await;
            let mut back = false;
            while !back {
                let mut conn = store.connection().await.unwrap();
                back = store
                    .bounded("set", conn.set::<_, _, ()>("k", "again"))
                    .await
                    .is_ok();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(a);

            // A new URL: the next operation connects there.
            assert!(store.replace_url(&secret(&b.url())).await.unwrap());
            let mut conn = store.connection().await.unwrap();
            let got: Option<String> = store.bounded("get", conn.get("k")).await.unwrap();
            assert_eq!(got, None, "b never had k");
        })
        .await
        .expect("bounded");
    }
}
