//! Turns the deserialized file into the typed [`Config`], section by section.
//!
//! serde has already given every value its type ([`super::file`]); what is left are the rules a
//! type cannot express. Each section's rules are in a module of their own, as oauth2-proxy's
//! `pkg/validation` does, so that the rules for one key are found in one place: [`server`],
//! [`oidc`], [`session`], [`csrf`], [`routes`]. Rules that tie two sections together are here,
//! in [`cross_section`], so none hides in a section module that only sees half of it.
//!
//! Startup must fail fast and say exactly what is wrong, so each check names the key
//! (`routes[1].upstream`, `session.keys[0]`) and the problem.

use url::Url;

use super::common::{is_loopback_http, static_key, RESERVED_PATHS};
use super::error::ConfigError;
use super::file::FileConfig;
use super::model::Config;
use super::routes::RouteAuth;
pub use super::session::decode_key;
use super::session::EXAMPLE_SESSION_KEYS;
use super::telemetry::MetricsConfig;
use super::{admin, csrf, oidc, routes, server, session, store, telemetry, tls};

pub(crate) fn validate(raw: FileConfig) -> Result<Config, ConfigError> {
    let secret_files: Vec<(&'static str, std::path::PathBuf)> = [
        ("session.keys_file", raw.session.keys_file.clone()),
        (
            "oidc.client_secret_file",
            raw.oidc.client_secret_file.clone(),
        ),
        ("oidc.private_key_file", raw.oidc.private_key_file.clone()),
        (
            "store.url_file",
            raw.store.as_ref().and_then(|s| s.url_file.clone()),
        ),
        (
            "admin.token_file",
            raw.admin.as_ref().map(|a| a.token_file.clone()),
        ),
    ]
    .into_iter()
    .chain(raw.providers.iter().flat_map(|(name, p)| {
        [
            ("client_secret_file", p.client_secret_file.clone()),
            ("private_key_file", p.private_key_file.clone()),
        ]
        .map(|(k, f)| (static_key(format!("providers.{name}.{k}")), f))
    }))
    .filter_map(|(k, f)| Some((k, std::path::PathBuf::from(f?))))
    .collect();
    let server = server::server(raw.server)?;
    let oidc = oidc::oidc(raw.oidc, &server.public_url)?;
    let providers = raw
        .providers
        .into_iter()
        .map(|(name, p)| oidc::provider(&name, p, &server.public_url))
        .collect::<Result<Vec<_>, _>>()?;
    let session = session::session(raw.session, server.secure_cookies)?;
    let csrf = csrf::csrf(raw.csrf)?;
    let mut routes = routes::routes(raw.routes)?;
    if !providers.is_empty() {
        // Claim values and acr names are each provider's own: with several providers, a route
        // whose rule names none takes only the default provider's sessions, so that another
        // provider (a tenant's) cannot pass it by minting the same claim.
        for r in routes.iter_mut() {
            if !r.require.is_empty() && r.providers.is_empty() {
                r.providers = vec![super::oidc::DEFAULT_PROVIDER.to_string()];
            }
        }
    }
    let metrics = MetricsConfig {
        listen: raw.metrics.listen.map(|a| a.0),
    };
    let store = raw.store.map(store::store).transpose()?;
    let tls = raw.tls.map(tls::tls).transpose()?;
    let tracing = telemetry::tracing(raw.tracing)?;
    let admin = raw.admin.map(admin::admin).transpose()?;
    let forward_auth = raw
        .forward_auth
        .map(super::forward_auth::forward_auth)
        .transpose()?;
    let config = Config {
        server,
        oidc,
        providers,
        session: session.config,
        csrf,
        routes,
        metrics,
        store,
        tls,
        tracing,
        admin,
        forward_auth,
        secret_files,
    };
    cross_section(&config, &session.key_names)?;
    Ok(config)
}

/// The checks that need more than one section. `key_names` names each of `session.keys`.
fn cross_section(c: &Config, key_names: &[String]) -> Result<(), ConfigError> {
    if let Some(f) = &c.forward_auth {
        let callback = c.oidc.callback_path.as_str();
        if other_endpoint(c, &f.path)
            || f.path == callback
            || f.path.starts_with(&format!("{callback}/"))
        {
            return Err(ConfigError::invalid(
                "forward_auth.path",
                format!("{} is one of tollgate's own endpoints", f.path),
            ));
        }
    }
    if c.server.redirect_to_https && c.server.public_url.scheme() != "https" {
        return Err(ConfigError::invalid(
            "server.redirect_to_https",
            "needs an https server.public_url to redirect to",
        ));
    }
    // One socket per address: a graceful upgrade hands sockets over by address.
    let mut seen = std::collections::HashSet::new();
    for (key, addr) in c
        .server
        .listen
        .iter()
        .map(|a| ("server.listen", a))
        .chain(
            c.tls
                .iter()
                .flat_map(|t| t.listen.iter().map(|a| ("tls.listen", a))),
        )
        .chain(c.metrics.listen.iter().map(|a| ("metrics.listen", a)))
        .chain(c.admin.iter().map(|a| ("admin.listen", &a.listen)))
        .chain(
            c.forward_auth
                .iter()
                .map(|f| ("forward_auth.listen", &f.listen)),
        )
    {
        if !seen.insert(*addr) {
            return Err(ConfigError::invalid(
                key,
                format!("{addr} is listed twice (server.listen, tls.listen, metrics.listen, admin.listen and forward_auth.listen must not share an address)"),
            ));
        }
    }
    if let Some(tls) = &c.tls {
        if let Some(a) = tls.listen.iter().find(|a| c.server.listen.contains(a)) {
            return Err(ConfigError::invalid(
                "tls.listen",
                format!("{a} is also in server.listen (plain HTTP)"),
            ));
        }
    }
    if c.admin.is_some() && c.session.storage != crate::config::Storage::Store {
        return Err(ConfigError::invalid(
            "admin",
            "the admin API lists and ends server-side sessions: it needs [session] storage = \"store\"",
        ));
    }
    providers_cross_section(c)?;
    for p in c.all_providers().filter(|p| p.fapi2) {
        fapi2_cross_section(c, p)?;
    }
    for (i, r) in c.routes.iter().enumerate() {
        if r.require_device_binding
            && c.session.device_binding != crate::config::DeviceBinding::Dbsc
        {
            return Err(ConfigError::invalid(
                format!("routes[{i}].require_device_binding"),
                "needs [session] device_binding = \"dbsc\" (no session is bound without it)",
            ));
        }
        if r.token_binding == crate::config::TokenBinding::Dpop {
            if let Some(p) = c
                .all_providers()
                .filter(|p| r.providers.is_empty() || r.providers.contains(&p.name))
                .find(|p| !p.dpop)
            {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].token_binding"),
                    format!(
                        "\"dpop\" needs [{}] dpop = true (sessions without a DPoP key cannot \
                         sign proofs)",
                        if p.name == super::oidc::DEFAULT_PROVIDER {
                            "oidc".to_string()
                        } else {
                            format!("providers.{}", p.name)
                        }
                    ),
                ));
            }
        }
        if RESERVED_PATHS.contains(&r.prefix.as_str())
            || r.prefix == c.oidc.callback_path
            || r.prefix == c.oidc.backchannel_logout_path
        {
            return Err(ConfigError::invalid(
                format!("routes[{i}].prefix"),
                format!("{:?} is an endpoint tollgate answers itself", r.prefix),
            ));
        }
    }
    if let Some(m) = c.metrics.listen {
        if c.server.listen.contains(&m) {
            return Err(ConfigError::invalid(
                "metrics.listen",
                format!("{m} is also in server.listen; metrics need their own port"),
            ));
        }
    }
    if !is_loopback_http(&c.server.public_url) {
        for (key, name) in c.session.keys.iter().zip(key_names) {
            if EXAMPLE_SESSION_KEYS
                .iter()
                .any(|example| decode_key(example).is_ok_and(|e| e == *key))
            {
                return Err(ConfigError::invalid(
                    name.clone(),
                    format!(
                        "is an example key published in the tollgate repository, so anyone could \
                         forge sessions with it; it is accepted only with a loopback http \
                         server.public_url (local development), and server.public_url is {}. \
                         Generate a key of your own with `tollgate genkey`",
                        c.server.public_origin
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Several providers: hosts choose one provider each, and routes name providers that exist.
/// Whether `path` is one of tollgate's own endpoints other than the callbacks: the fixed ones,
/// the back-channel logout, the DBSC ones.
fn other_endpoint(c: &Config, path: &str) -> bool {
    RESERVED_PATHS.contains(&path)
        || path == c.oidc.backchannel_logout_path
        || path.starts_with("/dbsc/")
}

fn providers_cross_section(c: &Config) -> Result<(), ConfigError> {
    let section = |p: &crate::config::OidcConfig| {
        if p.name == super::oidc::DEFAULT_PROVIDER {
            "oidc".to_string()
        } else {
            format!("providers.{}", p.name)
        }
    };
    let mut issuers = std::collections::HashMap::new();
    for p in c.all_providers() {
        if let Some(other) = issuers.insert(p.issuer_id.as_str(), &p.name) {
            return Err(ConfigError::invalid(
                format!("{}.issuer", section(p)),
                format!("is also provider {other:?}'s issuer; a back-channel logout could not tell them apart"),
            ));
        }
    }
    // The callbacks: [oidc]'s at callback_path, each other provider's below it. None may be
    // another endpoint or a route's prefix: the callback is looked for first and would hide it.
    let callback = c.oidc.callback_path.as_str();
    if other_endpoint(c, callback) || (!c.providers.is_empty() && callback.ends_with('/')) {
        return Err(ConfigError::invalid(
            "oidc.callback_path",
            format!(
                "{callback:?} is another of tollgate's endpoints, or ends in / while other                  providers answer below it"
            ),
        ));
    }
    for p in &c.providers {
        let path = format!("{callback}/{}", p.name);
        if other_endpoint(c, &path) || c.routes.iter().any(|r| r.prefix == path) {
            return Err(ConfigError::invalid(
                format!("{}.name", section(p)),
                format!("its callback {path:?} is another endpoint or a route's prefix"),
            ));
        }
    }
    let mut hosts = std::collections::HashMap::new();
    for p in c.all_providers() {
        for h in &p.hosts {
            if let Some(other) = hosts.insert(h.as_str(), &p.name) {
                return Err(ConfigError::invalid(
                    format!("{}.hosts", section(p)),
                    format!(
                        "{h:?} is also a host of provider {other:?}; a host picks one provider"
                    ),
                ));
            }
        }
    }
    for (i, r) in c.routes.iter().enumerate() {
        if let Some(unknown) = r.providers.iter().find(|n| c.provider(n).is_none()) {
            let names: Vec<&str> = c.all_providers().map(|p| p.name.as_str()).collect();
            return Err(ConfigError::invalid(
                format!("routes[{i}].providers"),
                format!(
                    "{unknown:?} is not a provider (the providers are {})",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// FAPI 2.0 across sections for provider `p`: every route with a session sends its token
/// sender-constrained, and nothing tokens or assertions travel to is plain http (but on
/// loopback).
fn fapi2_cross_section(c: &Config, p: &crate::config::OidcConfig) -> Result<(), ConfigError> {
    const WHY: &str = "with oidc.profile = \"fapi2\"";
    let tls_only = |key: String, url: &Url| {
        if url.scheme() == "https" || is_loopback_http(url) {
            Ok(())
        } else {
            Err(ConfigError::invalid(
                key,
                format!("is not https; {WHY} only TLS (plain http only on a loopback address)"),
            ))
        }
    };
    let e = &p.endpoints;
    let section = if p.name == super::oidc::DEFAULT_PROVIDER {
        "oidc".to_string()
    } else {
        format!("providers.{}", p.name)
    };
    for (name, url) in [
        ("authorization_endpoint", &e.authorization_endpoint),
        ("token_endpoint", &e.token_endpoint),
        ("jwks_uri", &e.jwks_uri),
        ("end_session_endpoint", &e.end_session_endpoint),
        ("revocation_endpoint", &e.revocation_endpoint),
        (
            "pushed_authorization_request_endpoint",
            &e.pushed_authorization_request_endpoint,
        ),
    ] {
        if let Some(url) = url {
            tls_only(format!("{section}.{name}"), url)?;
        }
    }
    for (i, r) in c
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.providers.is_empty() || r.providers.contains(&p.name))
    {
        for u in &r.upstreams {
            tls_only(format!("routes[{i}].upstream"), &u.url)?;
        }
        if r.auth != RouteAuth::None && r.token_binding != crate::config::TokenBinding::Dpop {
            return Err(ConfigError::invalid(
                format!("routes[{i}].token_binding"),
                format!("is \"bearer\"; {WHY} tokens go upstream sender-constrained: set \"dpop\""),
            ));
        }
    }
    Ok(())
}
