//! The validated configuration every other module works from ([`Config`]), and what is derived
//! from more than one section (the redirect URI, the login's scope and resources, the claims a
//! session keeps).

use std::path::PathBuf;

use super::admin::AdminConfig;
use super::csrf::CsrfConfig;
use super::oidc::{OidcConfig, DEFAULT_PROVIDER};
use super::routes::RouteConfig;
use super::server::ServerConfig;
use super::session::SessionConfig;
use super::store::StoreConfig;
use super::telemetry::{MetricsConfig, TracingConfig};
use super::tls::TlsConfig;

/// The validated configuration every other module works from.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// `[oidc]`: the default provider, named `default`.
    pub oidc: OidcConfig,
    /// `[providers.NAME]`: the other providers, by name.
    pub providers: Vec<OidcConfig>,
    pub session: SessionConfig,
    pub csrf: CsrfConfig,
    pub routes: Vec<RouteConfig>,
    pub metrics: MetricsConfig,
    /// `[store]`: the shared store replicas use (Redis or Valkey); `None` for one process.
    pub store: Option<StoreConfig>,
    /// `[tls]`: HTTPS listeners; `None` for plain HTTP only.
    pub tls: Option<TlsConfig>,
    /// `[tracing]`: what the config file says of OpenTelemetry export ([`crate::ops::telemetry`]
    /// adds the `OTEL_*` environment).
    pub tracing: TracingConfig,
    /// `[admin]`: the admin API's listener and token; `None` when off.
    pub admin: Option<AdminConfig>,
    /// `[forward_auth]`: the endpoint an ingress asks about its requests; `None` when off.
    pub forward_auth: Option<super::forward_auth::ForwardAuthConfig>,
    /// The secrets read from files (`session.keys_file`, `oidc.client_secret_file`,
    /// `oidc.private_key_file`, `store.url_file`): each key and its file, for the reload
    /// ([`crate::server::secrets`]).
    pub secret_files: Vec<(&'static str, PathBuf)>,
}

impl Config {
    /// Every provider: `[oidc]` (the default) first, then `[providers.NAME]` by name.
    pub fn all_providers(&self) -> impl Iterator<Item = &OidcConfig> {
        std::iter::once(&self.oidc).chain(self.providers.iter())
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&OidcConfig> {
        self.all_providers().find(|p| p.name == name)
    }

    /// The ID token claims a session keeps: those the routes' `require` rules read, and the
    /// groups claim when a route sends identity headers (`sub` and `email` are kept anyway).
    pub fn kept_claim_names(&self) -> Vec<String> {
        let mut names: std::collections::BTreeSet<&str> = self
            .routes
            .iter()
            .flat_map(|r| r.require.claim_names())
            .collect();
        if self.routes.iter().any(|r| r.identity_headers) {
            for p in self.all_providers() {
                names.insert(&p.groups_claim);
            }
            // X-Auth-Request-Email goes only with a verified address.
            names.insert("email_verified");
        }
        names.into_iter().map(str::to_string).collect()
    }

    /// The resources the routes name, each once, in config order: `/login` asks for all of
    /// them (RFC 8707 §2.1).
    pub fn resources(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self
            .routes
            .iter()
            .filter_map(|r| r.audience.as_ref()?.resource.as_ref())
        {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    }

    /// The default provider's `redirect_uri` at `public_url` (`{public_url}{callback_path}`):
    /// what the provider must have registered, character for character.
    pub fn redirect_uri(&self) -> String {
        self.redirect_uri_at(&self.oidc, &self.server.public_origin)
    }

    /// `provider`'s `redirect_uri` for a login on `origin`: `{origin}{callback_path}`, and
    /// `/{name}` after it for a provider other than the default. Each provider answers at its
    /// own path so that an answer can be checked against the provider the login went to (the
    /// mix-up defence of RFC 9700 §4.4.2, which needs no `iss` from the provider).
    pub fn redirect_uri_at(&self, provider: &OidcConfig, origin: &str) -> String {
        let base = format!(
            "{}{}",
            origin.trim_end_matches('/'),
            self.oidc.callback_path
        );
        if provider.name == DEFAULT_PROVIDER {
            base
        } else {
            format!("{base}/{}", provider.name)
        }
    }

    /// Every host a provider lists in `hosts`, with the origin a login there uses
    /// (`public_url`'s scheme and port, that host), `public_url`'s own host left out. A login
    /// started on such a host comes back to it, where its login cookie is.
    pub fn host_origins(&self) -> Vec<(String, String)> {
        let public_host = self.server.public_url.host_str().unwrap_or_default();
        let mut out: Vec<(String, String)> = Vec::new();
        for host in self.all_providers().flat_map(|p| p.hosts.iter()) {
            if host.eq_ignore_ascii_case(public_host) || out.iter().any(|(h, _)| h == host) {
                continue;
            }
            let mut url = self.server.public_url.clone();
            if url.set_host(Some(host)).is_ok() {
                out.push((host.clone(), url.origin().ascii_serialization()));
            }
        }
        out
    }

    /// The `backchannel_logout_uri` to register at the provider.
    pub fn backchannel_logout_uri(&self) -> String {
        format!(
            "{}{}",
            self.server.public_origin.trim_end_matches('/'),
            self.oidc.backchannel_logout_path
        )
    }

    /// The login's `scope`: `[oidc] scopes`, then every scope a route names, each once (the
    /// grant must cover what a route's token asks for).
    pub fn login_scope(&self) -> String {
        self.login_scope_at(&self.oidc)
    }

    /// [`Config::login_scope`] at `provider`: its `scopes`, then every scope a route that
    /// takes its sessions names (a route limited to other providers asks nothing of it).
    pub fn login_scope_at(&self, provider: &OidcConfig) -> String {
        let mut scopes: Vec<&str> = provider.scopes.iter().map(String::as_str).collect();
        for s in self
            .routes
            .iter()
            .filter(|r| r.providers.is_empty() || r.providers.contains(&provider.name))
            .filter_map(|r| r.audience.as_ref()?.scope.as_deref())
            .flat_map(|s| s.split(' '))
        {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        scopes.join(" ")
    }
}
