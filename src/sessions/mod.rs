//! The session service: everything that reads, checks or changes a user's session, in one place.
//!
//! The gate (the hot path), tollgate's own endpoints, `/logout` and back-channel logout all go
//! through it; none of them reaches into another's module for a session.

pub(crate) mod csrf;
