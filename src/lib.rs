//! tollgate: a backend-for-frontend (BFF) token broker on Pingora.
//!
//! The browser never holds an OAuth token. tollgate keeps the tokens in AES-256-GCM sealed,
//! HttpOnly cookies and, on API calls, swaps the cookie for `Authorization: Bearer …` before
//! proxying to the upstream.
//!
//! The modules follow the flow of a request:
//! - [`config`]: the TOML file and `TOLLGATE__*` overrides, turned into a validated, typed model;
//! - [`oidc`]: provider metadata, `/login` and `/callback`, the token client and ID token checks;
//! - [`session`]: the sealed session cookie (wire format, chunking, the session payload);
//! - `request` and `reply`: what a decision reads (facts, no Pingora types) and what tollgate
//!   answers itself (one reply type, one error table);
//! - `endpoints`: tollgate's own paths (`/login`, `/callback`, `/logout`, `/session`, health);
//! - [`proxy`]: the Pingora `ProxyHttp` adapter around the decision core (`proxy::gate`);
//! - [`ops`]: health, metrics and logging;
//! - [`server`]: assembles the Pingora server from a validated config.

pub(crate) mod certs;
pub mod claims;
pub mod config;
pub(crate) mod endpoints;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod oidc;
pub mod ops;
pub mod proxy;
pub(crate) mod reply;
pub(crate) mod request;
pub mod server;
pub mod session;
pub(crate) mod sessions;
pub(crate) mod store;
pub(crate) mod target;
pub mod tls;

/// Seconds since the Unix epoch, the clock every expiry in tollgate is measured against.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
