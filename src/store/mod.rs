//! The shared store (`[store]`, Redis or Valkey): what makes several replicas act as one.
//!
//! It carries refresh results (one refresh per refresh token across replicas: a short lock,
//! the result sealed with the session keys) and revocations (logout, back-channel logout) and
//! logout token ids between replicas. The hot path never waits for the store: each replica keeps
//! the revocation set in memory ([`crate::session::revocations::Revocations`]), and [`StoreSync`] keeps it current — every
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
//!
//! One file per job: `conn` reaches the store (clients, connecting, timeouts, [`StoreError`]);
//! the others say what is kept there and under which keys — `revocations` (the set, the channel
//! and [`StoreSync`]), `jtis` (logout token ids), `refresh` (locks, results, rotations),
//! `route_tokens`, and `sealed` (the key scheme and TTLs the last two share). Each builds on
//! `conn` (the last two on `sealed` too), never the other way round; this file only declares
//! and re-exports.

mod conn;
mod jtis;
mod refresh;
mod revocations;
mod route_tokens;
mod sealed;
mod sessions;
#[cfg(test)]
pub(crate) mod testing;

pub(crate) use conn::{Store, StoreError};
pub(crate) use refresh::LockToken;
pub(crate) use revocations::StoreSync;
pub(crate) use sessions::Put;
