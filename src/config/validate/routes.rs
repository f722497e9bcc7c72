//! `[[routes]]`: path prefixes and the upstream each one goes to.
//!
//! Prefixes are normalised here (leading `/`, no trailing `/`) so that matching on the hot path
//! is a plain comparison, and two routes with the same prefix are refused rather than one
//! silently shadowing the other. The upstream `Host` is computed here as well, so the proxy
//! never has to build (or guess) it. Prefixes that collide with tollgate's own endpoints are a
//! cross-section check, in the parent module.

use std::collections::BTreeSet;

use super::{host_header, is_reachable_path, UNREACHABLE_PATH};
use crate::config::file::RouteSection;
use crate::config::{
    Audience, ConfigError, HealthCheckConfig, RouteAuth, RouteConfig, TokenBinding, UpstreamUrl,
};

pub(super) fn routes(raw: Vec<RouteSection>) -> Result<Vec<RouteConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::invalid(
            "routes",
            "at least one [[routes]] entry is required",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("routes[{i}].{k}");
        if !r.prefix.starts_with('/') || r.prefix.contains(['?', '#', '*']) {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!(
                    "{:?} must be a path starting with / (no query, fragment or wildcard)",
                    r.prefix
                ),
            ));
        }
        let prefix = match r.prefix.trim_end_matches('/') {
            "" => "/".to_string(),
            trimmed => trimmed.to_string(),
        };
        if !is_reachable_path(&prefix) {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!("{prefix:?} {UNREACHABLE_PATH}"),
            ));
        }
        if !seen.insert(prefix.clone()) {
            return Err(ConfigError::invalid(
                key("prefix"),
                format!("{prefix:?} overlaps an earlier route with the same prefix"),
            ));
        }
        let upstreams = upstreams(r.upstream, &key)?;
        let upstream = upstreams[0].url.clone();
        let health_check = match r.health_check_path {
            None => None,
            Some(path) if path.starts_with('/') && !path.contains(['#', ' ']) => {
                if r.health_check_interval.is_zero() {
                    return Err(ConfigError::invalid(
                        key("health_check_interval"),
                        "must be more than zero",
                    ));
                }
                Some(HealthCheckConfig {
                    path,
                    interval: r.health_check_interval,
                })
            }
            Some(path) => {
                return Err(ConfigError::invalid(
                    key("health_check_path"),
                    format!("{path:?} must be a path starting with / (no spaces or fragment)"),
                ))
            }
        };
        if r.resolve_interval < std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                key("resolve_interval"),
                "must be at least 1s",
            ));
        }
        if r.keep_authorization && r.auth != RouteAuth::None {
            return Err(ConfigError::invalid(
                key("keep_authorization"),
                "only applies to auth = \"none\" routes (on the others the session's token is sent)",
            ));
        }
        if r.require.is_some() && r.auth != RouteAuth::Required {
            return Err(ConfigError::invalid(
                key("require"),
                "only applies to auth = \"required\" routes (a rule needs a session)",
            ));
        }
        if r.token_binding == TokenBinding::Dpop && r.auth == RouteAuth::None {
            return Err(ConfigError::invalid(
                key("token_binding"),
                "needs a route with a session (auth = \"required\" or \"optional\")",
            ));
        }
        if r.identity_headers && r.auth == RouteAuth::None {
            return Err(ConfigError::invalid(
                key("identity_headers"),
                "needs a route with a session (auth = \"required\" or \"optional\")",
            ));
        }
        let audience = audience(&r.resource, &r.scopes, &key)?;
        if audience.is_some() && r.auth == RouteAuth::None {
            let k = if r.resource.is_some() {
                "resource"
            } else {
                "scopes"
            };
            return Err(ConfigError::invalid(
                key(k),
                "needs a route with a session (auth = \"required\" or \"optional\")",
            ));
        }
        let (host, host_header) = (upstreams[0].host.clone(), upstreams[0].host_header.clone());
        routes.push(RouteConfig {
            prefix,
            upstream,
            upstreams,
            balance: r.balance,
            resolve_interval: r.resolve_interval,
            health_check,
            host,
            host_header,
            auth: r.auth,
            strip_prefix: r.strip_prefix,
            keep_authorization: r.keep_authorization,
            cache_public: r.cache_public,
            require: r.require.unwrap_or_default(),
            identity_headers: r.identity_headers,
            token_binding: r.token_binding,
            audience,
            connect_timeout: r.connect_timeout,
            read_timeout: r.read_timeout,
        });
    }
    Ok(routes)
}

/// `upstream`: one URL or a list. A pool's URLs may name different hosts, but share the
/// scheme and the path (a request must mean the same on every member).
fn upstreams(
    raw: Vec<crate::config::de::HttpUrl>,
    key: &dyn Fn(&str) -> String,
) -> Result<Vec<UpstreamUrl>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::invalid(key("upstream"), "names no URL"));
    }
    let mut out: Vec<UpstreamUrl> = Vec::with_capacity(raw.len());
    for (j, u) in raw.into_iter().enumerate() {
        let k = if j == 0 {
            key("upstream")
        } else {
            format!("{}[{j}]", key("upstream"))
        };
        let url = u.0;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::invalid(k, "must not have a query or fragment"));
        }
        if let Some(first) = out.first() {
            if first.url.scheme() != url.scheme() || first.url.path() != url.path() {
                return Err(ConfigError::invalid(
                    k,
                    "must have the same scheme and path as the first upstream URL",
                ));
            }
            if out.iter().any(|o| o.url == url) {
                return Err(ConfigError::invalid(k, "is listed twice"));
            }
        }
        let (host, host_header) = host_header(&url).map_err(|p| ConfigError::invalid(k, p))?;
        out.push(UpstreamUrl {
            url,
            host,
            host_header,
        });
    }
    Ok(out)
}

/// `resource` and `scopes`: a resource indicator is an absolute URI without a fragment (RFC
/// 8707 §2); a scope is a non-empty run of the characters RFC 6749 §3.3 allows.
fn audience(
    resource: &Option<String>,
    scopes: &[String],
    key: &dyn Fn(&str) -> String,
) -> Result<Option<std::sync::Arc<Audience>>, ConfigError> {
    if let Some(r) = resource {
        match url::Url::parse(r) {
            Ok(u) if u.fragment().is_none() && !r.contains('#') => {}
            _ => {
                return Err(ConfigError::invalid(
                    key("resource"),
                    format!("{r:?} must be an absolute URI without a fragment (RFC 8707 §2)"),
                ))
            }
        }
    }
    for (j, s) in scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(ConfigError::invalid(
                format!("{}[{j}]", key("scopes")),
                format!("{s:?} is not a scope (RFC 6749 §3.3: no spaces, quotes or backslashes)"),
            ));
        }
    }
    if resource.is_none() && scopes.is_empty() {
        return Ok(None);
    }
    Ok(Some(std::sync::Arc::new(Audience::new(
        resource.clone(),
        scopes,
    ))))
}
