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

mod csrf;
mod oidc;
mod routes;
mod server;
mod session;
mod store;
#[cfg(test)]
mod tests;
mod tls;

use http::HeaderValue;
use url::{Host, Url};

use super::file::FileConfig;
use super::*;

pub use session::decode_key;

/// Paths tollgate answers itself; a route may not claim them exactly.
pub const RESERVED_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/login",
    "/logout",
    "/logout/continue",
    "/session",
];

/// Every session key published in this repository as an example: `conf/tollgate.toml`,
/// `benches/load/run.py` and the test suites (`tests/common/mod.rs`), the Kubernetes example
/// overlay (`deploy/kubernetes/overlays/example/secrets/cookie_keys.example`), and the all-zero
/// key of the unit tests. Anyone can read them, so anyone could forge sessions sealed with
/// them: they are accepted only where nobody else can reach tollgate, on a loopback `http`
/// `public_url`. A new example key elsewhere in the repository belongs in this list.
pub(crate) const EXAMPLE_SESSION_KEYS: [&str; 3] = [
    "bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=",
    "cX/YoznuBp7+yL48hHfkYSHiNy865Fe3gut4ykzT2+E=",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
];

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
    ]
    .into_iter()
    .filter_map(|(k, f)| Some((k, std::path::PathBuf::from(f?))))
    .collect();
    let server = server::server(raw.server)?;
    let oidc = oidc::oidc(raw.oidc, &server.public_url)?;
    let session = session::session(raw.session, server.secure_cookies)?;
    let csrf = csrf::csrf(raw.csrf)?;
    let routes = routes::routes(raw.routes)?;
    let metrics = MetricsConfig {
        listen: raw.metrics.listen.map(|a| a.0),
    };
    let store = raw.store.map(store::store).transpose()?;
    let tls = raw.tls.map(tls::tls).transpose()?;
    let tracing = tracing(raw.tracing)?;
    let config = Config {
        server,
        oidc,
        session: session.config,
        csrf,
        routes,
        metrics,
        store,
        tls,
        tracing,
        secret_files,
    };
    cross_section(&config, &session.key_names)?;
    Ok(config)
}

/// The checks that need more than one section. `key_names` names each of `session.keys`.
fn cross_section(c: &Config, key_names: &[String]) -> Result<(), ConfigError> {
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
    {
        if !seen.insert(*addr) {
            return Err(ConfigError::invalid(
                key,
                format!("{addr} is listed twice (server.listen, tls.listen and metrics.listen must not share an address)"),
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
    if c.oidc.fapi2 {
        fapi2_cross_section(c)?;
    }
    for (i, r) in c.routes.iter().enumerate() {
        if r.token_binding == crate::config::TokenBinding::Dpop && !c.oidc.dpop {
            return Err(ConfigError::invalid(
                format!("routes[{i}].token_binding"),
                "\"dpop\" needs [oidc] dpop = true (sessions without a DPoP key cannot sign proofs)",
            ));
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

/// `http://localhost`, `http://127.x.x.x` or `http://[::1]`, any port: reachable from this
/// machine only.
/// FAPI 2.0 across sections: every route with a session sends its token sender-constrained,
/// and nothing tokens or assertions travel to is plain http (but on loopback).
fn fapi2_cross_section(c: &Config) -> Result<(), ConfigError> {
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
    let e = &c.oidc.endpoints;
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
            tls_only(format!("oidc.{name}"), url)?;
        }
    }
    for (i, r) in c.routes.iter().enumerate() {
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

pub(super) fn is_loopback_http(url: &Url) -> bool {
    url.scheme() == "http"
        && match url.host() {
            Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(Host::Ipv4(ip)) => ip.is_loopback(),
            Some(Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

/// Whether requests can reach `path` as written: it is a path the request-target check
/// passes unchanged (no empty or dot segment, `%` escape, `;params`, backslash or control
/// character), so a normalised request path can equal it or start with it. A route prefix or
/// endpoint path that is not would never match a request.
pub(crate) fn is_reachable_path(path: &str) -> bool {
    crate::target::check(path.as_bytes(), path)
        .is_ok_and(|t| t.path == path && t.canonical.is_none())
}

/// What a path that fails [`is_reachable_path`] is told.
pub(crate) const UNREACHABLE_PATH: &str = "can never match a request: tollgate routes on the \
     normalised path (escapes decoded, no empty or dot segments, no `;params`, backslashes or \
     control characters), so write it that way";

/// `host[:port]` of `url`, the port only when it is not the scheme's default: what `Host` (or
/// `X-Forwarded-Host`) carries for it; as text and as a header value.
pub(crate) fn host_header(url: &Url) -> Result<(String, HeaderValue), &'static str> {
    let host = url.host_str().ok_or("has no host")?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let value = HeaderValue::from_str(&authority).map_err(|_| "is not a valid Host header")?;
    Ok((authority, value))
}

/// `[tracing]`: a known protocol, a ratio between 0 and 1, a non-empty service name.
fn tracing(
    t: crate::config::file::TracingSection,
) -> Result<crate::config::TracingConfig, ConfigError> {
    let otlp_protocol = match t.otlp_protocol.as_deref() {
        None => None,
        Some(p) => Some(crate::config::OtlpProtocol::parse(p).ok_or_else(|| {
            ConfigError::invalid(
                "tracing.otlp_protocol",
                format!("{p:?} must be \"http/protobuf\" or \"grpc\""),
            )
        })?),
    };
    if let Some(r) = t.sample_ratio {
        if !(0.0..=1.0).contains(&r) {
            return Err(ConfigError::invalid(
                "tracing.sample_ratio",
                format!("{r} must be between 0 and 1"),
            ));
        }
    }
    if t.service_name
        .as_deref()
        .is_some_and(|n| n.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            "tracing.service_name",
            "must not be empty",
        ));
    }
    Ok(crate::config::TracingConfig {
        otlp_endpoint: t.otlp_endpoint.map(|u| u.0),
        otlp_protocol,
        service_name: t.service_name,
        sample_ratio: t.sample_ratio,
    })
}
