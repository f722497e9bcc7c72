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
use crate::config::{Audience, ConfigError, RouteAuth, RouteConfig, TokenBinding};

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
        let upstream = r.upstream.0;
        if upstream.query().is_some() || upstream.fragment().is_some() {
            return Err(ConfigError::invalid(
                key("upstream"),
                "must not have a query or fragment",
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
        let (host, host_header) =
            host_header(&upstream).map_err(|p| ConfigError::invalid(key("upstream"), p))?;
        routes.push(RouteConfig {
            prefix,
            upstream,
            host,
            host_header,
            auth: r.auth,
            strip_prefix: r.strip_prefix,
            keep_authorization: r.keep_authorization,
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
