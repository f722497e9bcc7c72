//! Assembles the Pingora server from a validated [`Config`].
//!
//! One proxy service ([`FrontDoor`]: tollgate's accept loop and limits in front of Pingora's
//! HTTP handling) listens on every `[server] listen` address; the metrics service gets its own
//! port so that scraping never shares a listener with browser traffic. Shutdown follows
//! Pingora's signals: SIGTERM stops accepting (after serving what the kernel had already
//! queued), lets in-flight requests finish for `grace_period`, then exits; SIGINT exits at
//! once.

mod cert_reload;
pub(crate) mod secrets;
pub(crate) mod watch;

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::admin::{Admin, AdminApp};
use crate::config::Config;
use crate::oidc::client_auth::ClientAuthError;
use crate::oidc::discovery::{MetadataRefresher, ProviderStore};
use crate::oidc::{Oidc, Providers};
use crate::ops::health::Readiness;
use crate::ops::metrics::{Metrics, MetricsApp};
use crate::proxy::front::{self, FrontDoor, Listener};
use crate::proxy::routes::ResolveError;
use crate::proxy::Tollgate;
use crate::session::revocations::Revocations;
use crate::store::{Store, StoreSync};
use pingora::listeners::tls::Acceptor;

use cert_reload::CertReload;
use secrets::SecretWatch;
use watch::{FileWatch, Reload};

/// How long runtimes get to wind down after the grace period.
const RUNTIME_SHUTDOWN_SECS: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("client authentication: {0}")]
    ClientAuth(#[from] ClientAuthError),
    #[error("store.url: {0}")]
    Store(String),
    #[error("cannot build the HTTP client for the provider: {0}")]
    HttpClient(reqwest::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::CertError),
    #[error("tracing: {0}")]
    Telemetry(#[from] crate::ops::telemetry::TelemetryError),
}

/// Builds the server from `config`, read from `config_path` (read again when a secret file
/// changes); with `upgrade`, it takes the listening sockets of the running process over
/// `[server] upgrade_sock` instead of binding them (README, "Zero-downtime restart"). Call
/// `run_forever()` on the result.
pub fn build(
    config: &Config,
    config_path: &std::path::Path,
    upgrade: bool,
) -> Result<Server, StartError> {
    let conf = ServerConf {
        threads: config.server.threads,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECS),
        upgrade_sock: config.server.upgrade_sock.display().to_string(),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);

    if let Some(settings) =
        crate::ops::telemetry::settings(&config.tracing, |k| std::env::var(k).ok())?
    {
        let telemetry = crate::ops::telemetry::start(&settings)?;
        tracing::info!(
            endpoint = settings.endpoint.as_deref().unwrap_or("(OTEL_EXPORTER_OTLP_* environment)"),
            protocol = ?settings.protocol,
            service_name = %settings.service_name,
            sample_ratio = settings.sample_ratio,
            "traces: exporting over OTLP"
        );
        server.add_service(pingora::services::background::background_service(
            "trace export",
            crate::ops::telemetry::FlushOnShutdown {
                telemetry,
                grace_period: config.server.grace_period,
            },
        ));
    }
    let metrics = Metrics::new();
    let readiness = Arc::new(Readiness::new(
        config.all_providers().map(|p| p.name.clone()),
    ));
    let revocations = Arc::new(Revocations::default());
    let store = match &config.store {
        Some(c) => {
            let store = Arc::new(
                Store::new(c, metrics.clone()).map_err(|e| StartError::Store(e.to_string()))?,
            );
            server.add_service(pingora::services::background::background_service(
                "shared store",
                StoreSync {
                    store: store.clone(),
                    revocations: revocations.clone(),
                },
            ));
            Some(store)
        }
        None => None,
    };
    // One client per provider, sharing one key ring; each loads its own metadata.
    let sealer = crate::session::seal::Sealer::new(&config.session.keys);
    let step_up_acr: Vec<String> = config
        .routes
        .iter()
        .filter_map(|r| r.require.step_up())
        .flat_map(|s| s.acr.iter().cloned())
        .collect();
    let mut clients = Vec::new();
    for p in config.all_providers() {
        let http = crate::oidc::http::http_client_for(p).map_err(StartError::HttpClient)?;
        let metadata = Arc::new(ProviderStore::default());
        let oidc = Arc::new(Oidc::at(
            config,
            p,
            sealer.clone(),
            http.clone(),
            metadata.clone(),
            store.clone(),
            metrics.clone(),
        )?);
        server.add_service(pingora::services::background::background_service(
            "provider metadata",
            MetadataRefresher {
                store: metadata,
                http: http.clone(),
                config: p.clone(),
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                step_up_acr: step_up_acr.clone(),
            },
        ));
        clients.push((oidc, p.hosts.clone()));
    }
    let providers = Arc::new(Providers::new(clients, config.server.provider_chooser));
    let app = Tollgate::new(
        config,
        metrics.clone(),
        readiness.clone(),
        providers.clone(),
        revocations,
        store.clone(),
    )?;
    let sessions = app.dispatch().gate().sessions().clone();
    let admin_api = config.admin.as_ref().map(|a| {
        Arc::new(Admin {
            sessions: sessions.clone(),
            providers: providers.clone(),
            token: std::sync::RwLock::new(a.token.clone()),
            metrics: metrics.clone(),
        })
    });
    // Files re-read when they change and on SIGHUP: one watch loop for all of them.
    let mut watched: Vec<Box<dyn Reload>> = Vec::new();
    if !config.secret_files.is_empty() {
        watched.push(Box::new(SecretWatch {
            config_path: config_path.to_path_buf(),
            files: config.secret_files.clone(),
            providers: providers.clone(),
            store: store.clone(),
            admin: admin_api.clone(),
            metrics: metrics.clone(),
        }));
    }
    if sessions.in_process() {
        tracing::warn!(
            "[session] storage = \"store\" without [store]: sessions live in this process only; \
             a restart logs everyone out, and a second replica would not know them"
        );
    }
    // Bound here, so a port in use is a start error; taken over from the old process when
    // upgrading (then the front door finds them among the inherited sockets).
    let bind = |addr: &std::net::SocketAddr| -> Result<Option<std::net::TcpListener>, StartError> {
        if upgrade {
            return Ok(None);
        }
        front::bind(*addr)
            .map(Some)
            .map_err(|e| StartError::Listen(*addr, e))
    };
    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        listeners.push(Listener {
            addr: *addr,
            socket: bind(addr)?,
            tls: None,
        });
    }
    // Forward-auth answers carry access tokens: they are served on this listener only, which
    // the ingress reaches and the browser does not ([`crate::config::ForwardAuthConfig`]).
    if let Some(fa) = &config.forward_auth {
        listeners.push(Listener {
            addr: fa.listen,
            socket: bind(&fa.listen)?,
            tls: None,
        });
    }
    if let Some(tls) = &config.tls {
        let first = crate::tls::load(&tls.cert_file, &tls.key_file)?;
        let (server_config, store) = crate::tls::server_config(tls, first)?;
        let acceptor = Arc::new(Acceptor::from_server_config(server_config));
        for addr in &tls.listen {
            listeners.push(Listener {
                addr: *addr,
                socket: bind(addr)?,
                tls: Some(acceptor.clone()),
            });
        }
        watched.push(Box::new(CertReload {
            files: [
                ("tls.cert_file", tls.cert_file.clone()),
                ("tls.key_file", tls.key_file.clone()),
            ],
            store,
            metrics: metrics.clone(),
        }));
    }
    if !watched.is_empty() {
        server.add_service(pingora::services::background::background_service(
            "watched files",
            FileWatch { watched },
        ));
    }
    let pools = app.pools();
    if !pools.is_empty() {
        server.add_service(pingora::services::background::background_service(
            "upstream pools",
            crate::proxy::pool::PoolService { pools },
        ));
    }
    let proxy = pingora::proxy::http_proxy(&server.configuration, app);
    let phases = server.watch_execution_phase();
    let mut claimed: Vec<String> = config
        .server
        .listen
        .iter()
        .chain(config.tls.iter().flat_map(|t| t.listen.iter()))
        .chain(config.metrics.listen.iter())
        .chain(config.admin.iter().map(|a| &a.listen))
        .chain(config.forward_auth.iter().map(|f| &f.listen))
        .map(|a| a.to_string())
        .collect();
    claimed.sort();
    // The metrics listener has the front door's limits too (a smaller connection limit).
    if let Some(addr) = config.metrics.listen {
        let listener = Listener {
            addr,
            socket: bind(&addr)?,
            tls: None,
        };
        let door = FrontDoor::admin(
            MetricsApp {
                metrics: metrics.clone(),
            },
            listener,
            &config.server.limits,
            metrics.clone(),
            readiness.clone(),
            "tollgate metrics",
        );
        let phases = server.watch_execution_phase();
        server.add_service(door.with_upgrades(
            phases,
            upgrade,
            config.server.upgrade_sock.clone(),
            claimed.clone(),
        ));
    }
    // The admin API has its own listener, with the metrics listener's limits.
    if let (Some(admin), Some(admin_api)) = (&config.admin, admin_api) {
        if !admin.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %admin.listen,
                "[admin] listen is not a loopback address: the admin API speaks plain HTTP, so its \
                 bearer token crosses the network in clear; keep it on a private network"
            );
        }
        let listener = Listener {
            addr: admin.listen,
            socket: bind(&admin.listen)?,
            tls: None,
        };
        let app = AdminApp(admin_api);
        let door = FrontDoor::admin(
            app,
            listener,
            &config.server.limits,
            metrics.clone(),
            readiness.clone(),
            "tollgate admin",
        );
        let phases = server.watch_execution_phase();
        server.add_service(door.with_upgrades(
            phases,
            upgrade,
            config.server.upgrade_sock.clone(),
            claimed.clone(),
        ));
    }
    server.add_service(
        FrontDoor::new(
            proxy,
            listeners,
            config.server.limits.clone(),
            metrics.clone(),
            readiness,
        )
        .with_upgrades(phases, upgrade, config.server.upgrade_sock.clone(), claimed),
    );
    // Last, once everything that can fail has: with `upgrade`, this waits for the running
    // process to send its sockets (it does when it gets SIGQUIT), and a process that then
    // failed to start would leave none listening.
    server.bootstrap();
    Ok(server)
}
