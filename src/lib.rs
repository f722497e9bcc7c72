//! tollgate: a backend-for-frontend (BFF) token broker on Pingora.
//!
//! The browser never holds an OAuth token. tollgate keeps the tokens in AES-256-GCM sealed,
//! HttpOnly cookies and, on API calls, swaps the cookie for `Authorization: Bearer …` before
//! proxying to the upstream.
//!
//! The modules form layers, lowest first; a module uses its own layer and those below, never
//! one above, and no two files import each other (the table is in `ARCHITECTURE.md`, and
//! `.ci/check_layers.py` checks it in CI):
//!
//! 0. leaf types and counters: `request` (the facts a decision reads, no Pingora types),
//!    `reply` (everything tollgate answers itself: one reply type, one error table), `target`
//!    (the request-target check), [`claims`] (ID token claims and route rules on them),
//!    `certs` (loading a PEM chain and key), and [`ops`]'s health, metrics and logging;
//! 1. [`config`]: the TOML file and `TOLLGATE__*` overrides, turned into a validated, typed
//!    model, one file per section;
//! 2. `ops::telemetry`: OpenTelemetry traces;
//! 3. [`session`]: the sealed session payload, its cookies (chunking) and the revocation list;
//! 4. `store`: the shared store (Redis) that makes replicas act as one;
//! 5. `sessions`: the session service — opening, checking, starting, ending and revoking
//!    sessions wherever they live (cookies, or the store behind a handle), CSRF, the cookie
//!    lines a response carries;
//! 6. [`oidc`]: provider metadata, `/login` and `/callback`, the token client, ID token checks,
//!    refresh (single flight, across replicas), route tokens, logout;
//! 7. `endpoints` (tollgate's own paths), [`proxy`] (the Pingora `ProxyHttp` adapter around the
//!    decision core `proxy::gate`, and the front door), [`tls`] (certificates for it) and
//!    `admin` (the admin API: list and end server-side sessions);
//! 8. [`server`]: assembles the Pingora server, and watches files (secrets, certificates).

pub(crate) mod admin;
pub(crate) mod binding;
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
