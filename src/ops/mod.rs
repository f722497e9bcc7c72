//! Operations: what tells a person or a platform how tollgate is doing.
//!
//! [`health`] answers liveness and readiness, [`metrics`] counts requests, upstream latency and
//! session failures for Prometheus on a separate port, [`logging`] sets up structured logs.

pub(crate) mod health;
pub mod logging;
pub(crate) mod metrics;
pub mod telemetry;
