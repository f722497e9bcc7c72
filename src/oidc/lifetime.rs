//! How long a token from the provider lives: its `expires_in`, defaulted and capped, counted
//! from when it was issued. Shared by the callback, refreshes and route tokens.

/// Default access-token lifetime when the provider omits `expires_in`.
const DEFAULT_EXPIRES_IN: u64 = 3600;
/// Longer lifetimes from the provider are taken as this (a year): no overflow, no absurd dates.
const MAX_EXPIRES_IN: u64 = 366 * 24 * 3600;

/// When a token issued at `issued_at` with the provider's `expires_in` expires.
pub(crate) fn expires_at(issued_at: u64, expires_in: Option<u64>) -> u64 {
    issued_at.saturating_add(lifetime(expires_in))
}

/// How long a token the provider gave `expires_in` for is used as valid, in seconds.
pub(crate) fn lifetime(expires_in: Option<u64>) -> u64 {
    expires_in.unwrap_or(DEFAULT_EXPIRES_IN).min(MAX_EXPIRES_IN)
}
