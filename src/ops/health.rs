//! Liveness (`/healthz`) and readiness (`/readyz`).
//!
//! Liveness only says the process serves HTTP. Readiness says tollgate can do its job: the
//! config is loaded (always true once serving) and the provider metadata and keys have been
//! fetched, without which nobody can log in. Conditions are named so that `/readyz` can say
//! what it is waiting for.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Readiness conditions, all of which must hold for `/readyz` to answer 200.
#[derive(Debug)]
pub(crate) struct Readiness {
    config_loaded: AtomicBool,
    provider_loaded: AtomicBool,
    /// Set at shutdown: the load balancer should stop sending new clients.
    draining: AtomicBool,
    /// Set when the listening sockets went to a new process (graceful upgrade): responses
    /// close their connections, so keep-alive clients move over while this process answers.
    handed_over: AtomicBool,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            config_loaded: AtomicBool::new(true),
            provider_loaded: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    waiting_for: Vec<&'a str>,
}

impl Readiness {
    pub(crate) fn set_provider_loaded(&self) {
        self.provider_loaded.store(true, Ordering::Release);
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub(crate) fn set_handed_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// Whether responses should close their connection ([`Readiness::set_handed_over`]).
    pub(crate) fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }

    pub(crate) fn provider_loaded(&self) -> bool {
        self.provider_loaded.load(Ordering::Acquire)
    }

    fn waiting_for(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if !self.config_loaded.load(Ordering::Acquire) {
            w.push("config");
        }
        if !self.provider_loaded() {
            w.push("provider_metadata");
        }
        w
    }

    /// `(status, JSON body)` for `/readyz`.
    pub(crate) fn readyz(&self) -> (u16, Vec<u8>) {
        let waiting_for = self.waiting_for();
        let (status, text) = if self.draining.load(Ordering::Acquire) {
            (503, "draining")
        } else if waiting_for.is_empty() {
            (200, "ready")
        } else {
            (503, "not_ready")
        };
        let body = serde_json::to_vec(&Report {
            status: text,
            waiting_for,
        })
        .unwrap_or_default();
        (status, body)
    }
}

/// `(status, JSON body)` for `/healthz`.
pub(crate) fn healthz() -> (u16, Vec<u8>) {
    (200, br#"{"status":"ok"}"#.to_vec())
}
