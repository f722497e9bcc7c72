//! Revocations between replicas: [`Store::publish`] adds one to the sorted set and announces it
//! on the channel; [`StoreSync`], a background service, subscribes, reloads the whole set on
//! every (re)connection and applies each message to this replica's [`Revocations`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::AsyncCommands;

use super::conn::{Store, StoreError};
use crate::session::revocations::{Revocation, Revocations};

impl Store {
    fn channel(&self) -> String {
        format!("{}revocations", self.prefix)
    }

    /// The sorted set of revocations, scored by when each lapses.
    fn revocations_key(&self) -> String {
        format!("{}revoked", self.prefix)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixture;
    use crate::store::testing::{free_port, store_at, Redis, BOUND, TIMEOUT};

    fn revoke(id: u128, until: u64) -> Revocation {
        Revocation::Session { id, until }
    }

    /// Runs `sync` until the returned sender says stop (or is dropped).
    fn run(
        sync: &Arc<StoreSync>,
    ) -> (
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (stop, watch) = tokio::sync::watch::channel(false);
        let sync = sync.clone();
        let task = tokio::spawn(async move { sync.start(watch).await });
        (stop, task)
    }

    /// Waits until `check` holds (polling; the test's bound ends a wait that never does).
    async fn until(check: impl Fn() -> bool) {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn the_set_and_the_channel_are_named_under_the_prefix() {
        let store = store_at("redis://127.0.0.1:1/0", "tg:", TIMEOUT);
        assert_eq!(store.revocations_key(), "tg:revoked");
        assert_eq!(store.channel(), "tg:revocations");
    }

    #[tokio::test]
    async fn a_published_revocation_is_in_the_set_on_the_channel_and_reloaded() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            let client = redis::Client::open(redis.url()).unwrap();
            let mut pubsub = client.get_async_pubsub().await.unwrap();
            pubsub.subscribe("tg:revocations").await.unwrap();

            let now = 1_000;
            let r = revoke(7, now + 100);
            store.publish(&r, now).await.unwrap();
            let body = serde_json::to_string(&r).unwrap();
            let msg = pubsub.on_message().next().await.unwrap();
            assert_eq!(msg.get_payload::<String>().unwrap(), body);
            let score: Option<f64> = raw.zscore("tg:revoked", &body).await.unwrap();
            assert_eq!(score, Some((now + 100) as f64), "scored by when it lapses");

            let user = Revocation::UserBefore {
                sub: "u".into(),
                before: now,
                until: now + 50,
            };
            store.publish(&user, now).await.unwrap();
            let mut all = store.load_all(now).await.unwrap();
            all.sort_by_key(|r| r.until());
            assert_eq!(all, vec![user.clone(), r.clone()]);

            // Lapsed ones: left out of a reload, trimmed on the next write.
            assert_eq!(store.load_all(now + 60).await.unwrap(), vec![r.clone()]);
            let _: i64 = raw.zadd("tg:revoked", "not json", now + 100).await.unwrap();
            assert_eq!(
                store.load_all(now).await.unwrap().len(),
                2,
                "an unreadable member is skipped"
            );
            let later = revoke(8, now + 200);
            store.publish(&later, now + 60).await.unwrap();
            let members: usize = raw.zcard("tg:revoked").await.unwrap();
            assert_eq!(members, 3, "r, later and the unreadable one");
            let metrics = String::from_utf8(store.metrics.render()).unwrap();
            for op in ["set", "publish", "trim", "scan"] {
                assert!(metrics.contains(&format!(r#"op="{op}""#)), "{op}");
            }
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn a_set_larger_than_a_page_is_reloaded_whole() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let store = redis.store("tg:");
            let mut raw = redis.raw().await;
            let mut pipe = redis::pipe();
            for id in 0..2_500u128 {
                let body = serde_json::to_string(&revoke(id, 5_000)).unwrap();
                pipe.zadd("tg:revoked", body, 5_000).ignore();
            }
            let () = pipe.query_async(&mut raw).await.unwrap();
            assert_eq!(store.load_all(1_000).await.unwrap().len(), 2_500);
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn store_sync_loads_the_set_then_follows_the_channel() {
        tokio::time::timeout(BOUND, async {
            let redis = Redis::start().await;
            let now = crate::unix_now();
            let (before, after, last) = (
                fixture::session(now, "a"),
                fixture::session(now, "b"),
                fixture::session(now, "c"),
            );
            // Another replica revoked one before this one connected.
            let other = redis.store("tg:");
            other
                .publish(&revoke(before.id, now + 300), now)
                .await
                .unwrap();

            let sync = Arc::new(StoreSync {
                store: Arc::new(redis.store("tg:")),
                revocations: Arc::new(Revocations::default()),
            });
            let (stop, task) = run(&sync);
            until(|| sync.revocations.is_revoked(&before, now)).await;
            let metrics = String::from_utf8(sync.store.metrics.render()).unwrap();
            assert!(metrics.contains("tollgate_store_up 1"), "{metrics}");

            // Then each message as it comes; an unreadable one is skipped.
            assert!(!sync.revocations.is_revoked(&after, now));
            other
                .publish(&revoke(after.id, now + 300), now)
                .await
                .unwrap();
            until(|| sync.revocations.is_revoked(&after, now)).await;
            let mut raw = redis.raw().await;
            let _: i64 = raw.publish("tg:revocations", "not json").await.unwrap();
            other
                .publish(&revoke(last.id, now + 300), now)
                .await
                .unwrap();
            until(|| sync.revocations.is_revoked(&last, now)).await;

            stop.send(true).unwrap();
            task.await.unwrap();
        })
        .await
        .expect("bounded");
    }

    #[tokio::test]
    async fn store_sync_waits_out_an_outage_and_reloads() {
        tokio::time::timeout(BOUND, async {
            let port = free_port();
            let url = format!("redis://127.0.0.1:{port}/0");
            let now = crate::unix_now();
            let session = fixture::session(now, "a");
            let sync = Arc::new(StoreSync {
                store: Arc::new(store_at(&url, "tg:", Duration::from_millis(500))),
                revocations: Arc::new(Revocations::default()),
            });
            // Nothing listens yet: the first attempt fails, the service keeps trying.
            let (stop, task) = run(&sync);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!task.is_finished());
            assert!(!sync.revocations.is_revoked(&session, now));

            let redis = Redis::start_on(port).await;
            redis
                .store("tg:")
                .publish(&revoke(session.id, now + 300), now)
                .await
                .unwrap();
            // Within a retry or two: connected, and the set loaded.
            until(|| sync.revocations.is_revoked(&session, now)).await;
            let metrics = String::from_utf8(sync.store.metrics.render()).unwrap();
            assert!(metrics.contains("tollgate_store_up 1"), "{metrics}");
            stop.send(true).unwrap();
            task.await.unwrap();
        })
        .await
        .expect("bounded");
    }
}
