//! The `tollgate` command: run the proxy, check a config, or generate a cookie key.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::{Parser, Subcommand};
use tollgate::config::Config;
use tollgate::ops::logging::{self, LogFormat};

// The allocator: mimalloc by default (benches/RESULTS.md, "Allocator"); jemalloc when built
// with `--features jemalloc` for the comparison; the system allocator with neither.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Backend-for-frontend token broker on Pingora"
)]
struct Cli {
    /// Path to the configuration file.
    #[arg(long, global = true, default_value = "conf/tollgate.toml")]
    config: PathBuf,
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    /// Take the listening sockets over from the running tollgate (zero-downtime restart):
    /// start this, then send SIGQUIT to the old process.
    #[arg(long, global = true)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration (file and TOLLGATE__* overrides) and exit.
    Check,
    /// Print a new random base64 key for `[session] keys`.
    Genkey,
    /// List or end users' sessions through the admin API (`[admin]` of the config).
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
}

#[derive(Subcommand)]
enum SessionsAction {
    /// The user's live sessions, as JSON.
    List {
        /// The user (the provider's `sub`).
        #[arg(long)]
        sub: String,
    },
    /// End one session (`--id`) or all of a user's sessions (`--sub`).
    Revoke {
        #[arg(long, conflicts_with = "sub", required_unless_present = "sub")]
        id: Option<String>,
        #[arg(long)]
        sub: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Genkey) = cli.command {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
        return ExitCode::SUCCESS;
    }
    logging::init(cli.log_format);
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: configuration error: {e}");
            tracing::error!(error = %e, "configuration error");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Sessions { action }) = &cli.command {
        return sessions(&config, action);
    }
    if let Some(Command::Check) = cli.command {
        println!(
            "{}: configuration is valid ({} routes)",
            cli.config.display(),
            config.routes.len()
        );
        if config.session.storage == tollgate::config::Storage::Store && config.store.is_none() {
            println!(
                "note: [session] storage = \"store\" without [store]: sessions live in this \
                 process's memory; a restart logs everyone out, and only one replica may run"
            );
        }
        return ExitCode::SUCCESS;
    }
    announce(&config);
    let server = match tollgate::server::build(&config, &cli.config, cli.upgrade) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate: cannot start: {e}");
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(2);
        }
    };
    server.run_forever()
}

/// `tollgate sessions …`: one call to the admin API named by the config; prints its JSON answer.
fn sessions(config: &Config, action: &SessionsAction) -> ExitCode {
    let Some(admin) = &config.admin else {
        eprintln!("tollgate: the config has no [admin] section: the admin API is off");
        return ExitCode::from(2);
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let query = |sub: &str| serde_urlencoded::to_string([("sub", sub)]).unwrap_or_default();
    let (method, path) = match action {
        SessionsAction::List { sub } => (reqwest::Method::GET, format!("/sessions?{}", query(sub))),
        SessionsAction::Revoke { id: Some(id), .. } => {
            (reqwest::Method::DELETE, format!("/sessions/{id}"))
        }
        SessionsAction::Revoke { sub, .. } => (
            reqwest::Method::DELETE,
            format!("/sessions?{}", query(sub.as_deref().unwrap_or_default())),
        ),
    };
    let url = format!("http://{addr}{path}");
    let call = async {
        let r = reqwest::Client::new()
            .request(method, &url)
            .bearer_auth(admin.token.expose())
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?;
        Ok::<_, reqwest::Error>((r.status(), r.text().await?))
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(call) {
        Ok((status, body)) => {
            println!("{body}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("tollgate: the admin API answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("tollgate: cannot reach the admin API at {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs what this instance will do, so a misconfiguration is visible at a glance.
fn announce(config: &Config) {
    let listen: Vec<String> = config.server.listen.iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %listen.join(","),
        public_url = %config.server.public_url,
        threads = config.server.threads,
        metrics = ?config.metrics.listen.map(|a| a.to_string()),
        cookie = %config.session.cookie_name,
        keys = config.session.keys.len(),
        issuer = %config.oidc.issuer_id,
        client_id = %config.oidc.client_id,
        "tollgate starting"
    );
    // Providers compare these character for character with what the client has registered
    // (a `/` more or less is a mismatch): the exact strings tollgate sends.
    tracing::info!(
        redirect_uri = %config.redirect_uri(),
        post_logout_redirect_uri = %config.oidc.post_logout_redirect_uri,
        backchannel_logout_uri = %config.backchannel_logout_uri(),
        "register exactly these URIs at the provider"
    );
    let host_origins = config.host_origins();
    for p in config.all_providers() {
        // A login on one of the providers' hosts comes back to that host.
        let redirect_uris: Vec<String> =
            std::iter::once(config.redirect_uri_at(p, &config.server.public_origin))
                .chain(
                    host_origins
                        .iter()
                        .map(|(_, origin)| config.redirect_uri_at(p, origin)),
                )
                .collect();
        if p.name == tollgate::config::DEFAULT_PROVIDER && host_origins.is_empty() {
            continue;
        }
        tracing::info!(
            provider = %p.name,
            issuer = %p.issuer_id,
            client_id = %p.client_id,
            hosts = %p.hosts.join(","),
            redirect_uris = %redirect_uris.join(" "),
            post_logout_redirect_uri = %p.post_logout_redirect_uri,
            backchannel_logout_uri = %config.backchannel_logout_uri(),
            "provider: register exactly these URIs there"
        );
    }
    for r in &config.routes {
        tracing::info!(prefix = %r.prefix, upstream = %r.upstream, auth = r.auth.as_str(), strip_prefix = r.strip_prefix, "route");
    }
    if config.session.dropped_host_prefix {
        tracing::warn!(
            cookie = %config.session.cookie_name,
            "server.public_url is http: the session cookie is not Secure and is named without the __Host- prefix (local development only; use https in production)"
        );
    }
}
