//! Liveness (`/healthz`) and readiness (`/readyz`).
//!
//! Liveness only says the process serves HTTP. Readiness says tollgate can do its job: the
//! config is loaded (always true once serving) and every provider's metadata and keys have
//! been fetched once, without which nobody can log in there. Conditions are named so that
//! `/readyz` can say what it is waiting for.
//!
//! A provider that fails later keeps its last metadata and does not make the replica
//! unready: the other providers' logins and every session go on. With several providers,
//! `/readyz` says which are `up` and which `down` (their last load failed).

use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

/// Readiness conditions, all of which must hold for `/readyz` to answer 200.
#[derive(Debug)]
pub(crate) struct Readiness {
    config_loaded: AtomicBool,
    /// Each provider by name: loaded at least once, and whether its last load worked.
    providers: Vec<ProviderState>,
    /// Set at shutdown: the load balancer should stop sending new clients.
    draining: AtomicBool,
    /// Set when the listening sockets went to a new process (graceful upgrade): responses
    /// close their connections, so keep-alive clients move over while this process answers.
    handed_over: AtomicBool,
}

#[derive(Debug)]
struct ProviderState {
    name: String,
    loaded: AtomicBool,
    up: AtomicBool,
}

impl Default for Readiness {
    /// One provider, `default`.
    fn default() -> Self {
        Readiness::new(["default".to_string()])
    }
}

#[derive(Serialize)]
struct Report<'a> {
    status: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    waiting_for: Vec<&'a str>,
    /// With several providers: each one's state (`up`, `down`, `loading`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    providers: std::collections::BTreeMap<&'a str, &'a str>,
}

impl Readiness {
    /// Readiness for the providers named `names`.
    pub(crate) fn new(names: impl IntoIterator<Item = String>) -> Readiness {
        Readiness {
            config_loaded: AtomicBool::new(true),
            providers: names
                .into_iter()
                .map(|name| ProviderState {
                    name,
                    loaded: AtomicBool::new(false),
                    up: AtomicBool::new(false),
                })
                .collect(),
            draining: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
        }
    }

    fn provider(&self, name: &str) -> Option<&ProviderState> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Provider `name`'s metadata and keys loaded.
    pub(crate) fn set_provider_loaded(&self, name: &str) {
        if let Some(p) = self.provider(name) {
            p.loaded.store(true, Ordering::Release);
            p.up.store(true, Ordering::Release);
        }
    }

    /// Provider `name`'s last load failed (its previous metadata stays in use).
    pub(crate) fn set_provider_down(&self, name: &str) {
        if let Some(p) = self.provider(name) {
            p.up.store(false, Ordering::Release);
        }
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

    /// Whether provider `name` has loaded its metadata at least once.
    pub(crate) fn provider_loaded(&self, name: &str) -> bool {
        self.provider(name)
            .is_some_and(|p| p.loaded.load(Ordering::Acquire))
    }

    /// Whether every provider has loaded its metadata at least once.
    pub(crate) fn all_providers_loaded(&self) -> bool {
        self.providers
            .iter()
            .all(|p| p.loaded.load(Ordering::Acquire))
    }

    fn waiting_for(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if !self.config_loaded.load(Ordering::Acquire) {
            w.push("config");
        }
        if self
            .providers
            .iter()
            .any(|p| !p.loaded.load(Ordering::Acquire))
        {
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
        let providers = if self.providers.len() > 1 {
            self.providers
                .iter()
                .map(|p| {
                    let state = if p.up.load(Ordering::Acquire) {
                        "up"
                    } else if p.loaded.load(Ordering::Acquire) {
                        "down"
                    } else {
                        "loading"
                    };
                    (p.name.as_str(), state)
                })
                .collect()
        } else {
            Default::default()
        };
        let body = serde_json::to_vec(&Report {
            status: text,
            waiting_for,
            providers,
        })
        .unwrap_or_default();
        (status, body)
    }
}

/// `(status, JSON body)` for `/healthz`.
pub(crate) fn healthz() -> (u16, Vec<u8>) {
    (200, br#"{"status":"ok"}"#.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(r: &Readiness) -> (u16, serde_json::Value) {
        let (status, body) = r.readyz();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn ready_once_every_provider_loaded_and_says_which_is_down() {
        let r = Readiness::new(["default".to_string(), "b".to_string()]);
        r.set_provider_loaded("default");
        let (status, b) = body(&r);
        assert_eq!(status, 503);
        assert_eq!(b["waiting_for"][0], "provider_metadata");
        assert_eq!(b["providers"]["b"], "loading");
        r.set_provider_loaded("b");
        assert_eq!(body(&r).0, 200);
        // A provider down later: still ready (the others work), and said so.
        r.set_provider_down("default");
        let (status, b) = body(&r);
        assert_eq!(status, 200);
        assert_eq!(b["providers"]["default"], "down");
        assert_eq!(b["providers"]["b"], "up");
        // One provider: the body as before.
        let one = Readiness::default();
        one.set_provider_loaded("default");
        assert_eq!(body(&one).1, serde_json::json!({"status": "ready"}));
    }
}
