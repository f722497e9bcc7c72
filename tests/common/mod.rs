//! Test harness, split by role as Pingora's `tests/utils/` is:
//! - [`echo`]: a real HTTP/1.1 upstream that records what reached it;
//! - [`process`]: the real `tollgate` binary as a child process, readiness and metrics waits;
//! - [`session`]: minting sessions with the library and sending requests with one;
//! - [`raw`]: requests written byte for byte (HTTP clients normalise request targets);
//! - [`redis`]: a real `redis-server` for the shared-store tests;
//! - [`nginx`]: Debian's nginx in front (default buffers, `auth_request` for forward-auth);
//! - [`ca`]: a test CA issuing server certificates for the TLS tests;
//! - [`config`]: one builder for every test's config text;
//! - [`idp`] and [`flow`]: the real OpenID Provider (npm `oidc-provider`) and login flows.
//!
//! Everything listens on 127.0.0.1; tests wait on readiness, never on a fixed time.

// A test binary is its own crate: `pub` here means "for the test files", not a public API.
#![allow(dead_code, unused_imports, unreachable_pub)]

pub mod ca;
pub mod config;
pub mod dpop_rs;
pub mod echo;
pub mod flow;
pub mod idp;
pub mod nginx;
pub mod process;
pub mod raw;
pub mod redis;
pub mod session;

pub use config::TestConfig;
pub use echo::*;
pub use process::*;
pub use raw::*;
pub use session::*;
