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
