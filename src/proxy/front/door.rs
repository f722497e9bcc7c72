//! The proxy service Pingora runs: it takes the listening sockets ([`super::handover`]),
//! starts an accept loop per listener ([`super::listen`]) and drains each at shutdown
//! ([`super::drain`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerApp;
use pingora::server::ShutdownWatch;
use pingora::server::{ExecutionPhase, ListenFds};

use super::drain::drain;
use super::handover::{close_unclaimed, follow_upgrade, listening_socket, Listener};
use super::listen::accept_loop;
use super::shared::{Door, Shared};
use crate::config::Limits;
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;

/// The most connections the metrics listener holds open: scrapers are few, and a flood of
/// unfinished requests there must not take descriptors from the front door.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long a process that took the sockets over waits for the provider metadata before it
/// accepts (the old process accepts for 5 s more after handing them over).
const UPGRADE_READY_WAIT: Duration = Duration::from_secs(4);

/// The proxy service: listeners, the connection limit, head reading, then Pingora.
pub(crate) struct FrontDoor<A> {
    app: Option<A>,
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    /// Pingora's execution phases: a graceful upgrade hands the listening sockets over.
    phases: Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>,
    /// This process took its sockets over from another (`--upgrade`).
    upgraded: bool,
    /// Where a new process waits for the sockets (`[server] upgrade_sock`).
    upgrade_sock: std::path::PathBuf,
    /// Every address this process listens on (front door, TLS, metrics): inherited sockets
    /// for other addresses are closed.
    claimed: Vec<String>,
    /// The service's name (Pingora's log lines).
    name: &'static str,
}

impl<A> FrontDoor<A> {
    pub(crate) fn new(
        app: A,
        listeners: Vec<Listener>,
        limits: Limits,
        metrics: Metrics,
        readiness: Arc<Readiness>,
    ) -> Self {
        FrontDoor {
            app: Some(app),
            listeners,
            shared: Arc::new(Shared::new(limits, metrics, readiness)),
            phases: None,
            upgraded: false,
            upgrade_sock: std::path::PathBuf::new(),
            claimed: Vec::new(),
            name: "tollgate",
        }
    }

    /// The same limits for an administrative listener (metrics): at most
    /// [`ADMIN_MAX_CONNECTIONS`] connections, not counted with the clients'.
    pub(crate) fn admin(
        app: A,
        listener: Listener,
        limits: &Limits,
        metrics: Metrics,
        readiness: Arc<Readiness>,
        name: &'static str,
    ) -> Self {
        let limits = Limits {
            max_connections: limits.max_connections.min(ADMIN_MAX_CONNECTIONS),
            ..limits.clone()
        };
        let mut door = FrontDoor::new(app, vec![listener], limits, metrics, readiness);
        if let Some(shared) = Arc::get_mut(&mut door.shared) {
            shared.counted = false;
        }
        door.name = name;
        door
    }

    /// Follows Pingora's `phases` (a graceful upgrade hands the sockets over); `upgraded`:
    /// this process takes them over.
    pub(crate) fn with_upgrades(
        mut self,
        phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
        upgraded: bool,
        upgrade_sock: std::path::PathBuf,
        claimed: Vec<String>,
    ) -> Self {
        self.phases = Some(phases);
        self.upgraded = upgraded;
        self.upgrade_sock = upgrade_sock;
        self.claimed = claimed;
        self
    }
}

#[async_trait]
impl<A> pingora::services::Service for FrontDoor<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let Some(app) = self.app.take() else {
            return;
        };
        if let (true, Some(fds)) = (self.upgraded, fds.as_ref()) {
            close_unclaimed(fds, &self.claimed);
        }
        if let Some(phases) = self.phases.take() {
            tokio::spawn(follow_upgrade(
                phases,
                self.shared.clone(),
                self.upgrade_sock.clone(),
            ));
        }
        let sockets: Vec<_> = std::mem::take(&mut self.listeners)
            .into_iter()
            .filter_map(|l| listening_socket(l, fds.as_ref()))
            .collect();
        if self.upgraded {
            // The old process still accepts for a few seconds: answer once the provider
            // metadata is in, so no request meets a provider that is not loaded yet.
            let started = tokio::time::Instant::now();
            while !self.shared.readiness.all_providers_loaded()
                && started.elapsed() < UPGRADE_READY_WAIT
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let app = Arc::new(app);
        let mut loops = Vec::new();
        for (listener, tls) in sockets {
            let door = Door {
                tls,
                app: app.clone(),
                shared: self.shared.clone(),
                shutdown: shutdown.clone(),
            };
            loops.push(tokio::spawn(async move {
                accept_loop(&listener, &door).await;
                drain(listener, &door).await;
            }));
        }
        for l in loops {
            let _ = l.await;
        }
        app.http_cleanup().await;
    }

    fn name(&self) -> &str {
        self.name
    }
}
