//! `[[routes]]`: path prefixes and the upstream each one goes to.
//!
//! Prefixes are normalised here (leading `/`, no trailing `/`) so that matching on the hot path
//! is a plain comparison, and two routes with the same prefix are refused rather than one
//! silently shadowing the other. The upstream `Host` is computed here as well, so the proxy
//! never has to build (or guess) it. Prefixes that collide with tollgate's own endpoints are a
//! cross-section check, in the parent module.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use url::Url;

use super::common::{host_header, is_reachable_path, UNREACHABLE_PATH};
use super::de::{self, secs, HttpUrl};
use super::error::ConfigError;
use crate::claims::ClaimRule;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSection {
    pub prefix: String,
    /// One upstream URL, or a pool of them (every address of every name joins it).
    #[serde(deserialize_with = "de::list")]
    pub upstream: Vec<HttpUrl>,
    /// How a pool picks a member: `round_robin`, or `sticky` (consistent hashing on the
    /// session).
    #[serde(default)]
    pub balance: Balance,
    /// How often upstream names are resolved again.
    #[serde(default = "secs::<30>", deserialize_with = "de::duration")]
    pub resolve_interval: Duration,
    /// Active health checks: `GET` this path on every member (none: passive ejection only).
    pub health_check_path: Option<String>,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub health_check_interval: Duration,
    #[serde(default = "default_route_auth")]
    pub auth: RouteAuth,
    #[serde(default, deserialize_with = "de::lenient")]
    pub strip_prefix: bool,
    #[serde(default, deserialize_with = "de::lenient")]
    pub keep_authorization: bool,
    /// Leave the upstream's caching headers as they are on a route with sessions.
    #[serde(default, deserialize_with = "de::lenient")]
    pub cache_public: bool,
    pub require: Option<ClaimRule>,
    #[serde(default, deserialize_with = "de::lenient")]
    pub identity_headers: bool,
    #[serde(default)]
    pub token_binding: TokenBinding,
    /// Only sessions bound to their device (DBSC) may use the route.
    #[serde(default, deserialize_with = "de::lenient")]
    pub require_device_binding: bool,
    /// RFC 8707 resource indicator of the route's own access token.
    pub resource: Option<String>,
    /// Scopes of the route's own access token.
    #[serde(default, deserialize_with = "de::list")]
    pub scopes: Vec<String>,
    /// The providers whose sessions may use the route (empty: any).
    #[serde(default, deserialize_with = "de::list")]
    pub providers: Vec<String>,
    #[serde(default = "secs::<5>", deserialize_with = "de::duration")]
    pub connect_timeout: Duration,
    #[serde(default = "secs::<60>", deserialize_with = "de::duration")]
    pub read_timeout: Duration,
}

fn default_route_auth() -> RouteAuth {
    RouteAuth::Required
}

/// `[[routes]] token_binding`: how the access token is presented to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenBinding {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// `Authorization: DPoP <token>` and a `DPoP` proof for the upstream request.
    Dpop,
}

/// `[[routes]] balance`: how a pool of upstream addresses is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each request to the next healthy member.
    #[default]
    RoundRobin,
    /// Consistent hashing on the session (the client address without one): a user stays on
    /// one member while it is healthy, and only the users of a member that leaves move.
    Sticky,
}

/// One URL of a route's `upstream` list.
#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub url: Url,
    /// The URL's authority (`host[:port]`).
    pub host: String,
    /// The same, as the upstream request's `Host` header value.
    pub host_header: HeaderValue,
}

/// `[[routes]] health_check_path` and `health_check_interval`.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
}

/// `[[routes]] resource` and `scopes`: the audience of a route's own access token (RFC 8707),
/// obtained with the session's refresh token. Two routes with the same resource and scopes
/// share one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience {
    /// `resource=` for the token request: an absolute URI without fragment.
    pub resource: Option<String>,
    /// `scope=` for the token request (space-separated), if the route names scopes.
    pub scope: Option<String>,
    /// What caches, single flights and the store know it by: a hash of both, the same on
    /// every replica with the same config.
    pub id: [u8; 16],
}

impl Audience {
    pub fn new(resource: Option<String>, scopes: &[String]) -> Audience {
        let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
        let mut h = <sha2::Sha256 as sha2::Digest>::new();
        sha2::Digest::update(&mut h, b"tollgate audience\0");
        sha2::Digest::update(&mut h, resource.as_deref().unwrap_or("").as_bytes());
        sha2::Digest::update(&mut h, b"\0");
        sha2::Digest::update(&mut h, scope.as_deref().unwrap_or("").as_bytes());
        let digest = sha2::Digest::finalize(h);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Audience {
            resource,
            scope,
            id,
        }
    }

    /// The resource's tag in a session ([`resource_tag`]).
    pub fn resource_tag(&self) -> Option<u64> {
        self.resource.as_deref().map(resource_tag)
    }
}

/// What a session records of a resource asked for at its login: 8 bytes of its SHA-256.
pub fn resource_tag(resource: &str) -> u64 {
    let d = <sha2::Sha256 as sha2::Digest>::digest(resource.as_bytes());
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAuth {
    Required,
    Optional,
    None,
}

impl RouteAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteAuth::Required => "required",
            RouteAuth::Optional => "optional",
            RouteAuth::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Normalised prefix: starts with `/`, no trailing `/` except for the catch-all `/`.
    pub prefix: String,
    /// The first upstream URL (all of a pool's share its scheme and path).
    pub upstream: Url,
    /// Every upstream URL, the first included.
    pub upstreams: Vec<UpstreamUrl>,
    pub balance: Balance,
    pub resolve_interval: Duration,
    pub health_check: Option<HealthCheckConfig>,
    /// `Host` for the upstream request: the upstream URL's authority (`host[:port]`).
    pub host: String,
    /// The same, as a header value built once.
    pub host_header: HeaderValue,
    pub auth: RouteAuth,
    pub strip_prefix: bool,
    /// Pass a client-sent `Authorization` to the upstream (`auth = "none"` routes only).
    pub keep_authorization: bool,
    /// Answers to requests with a session keep the upstream's caching headers (else they
    /// are made `private`, CDN-only headers dropped).
    pub cache_public: bool,
    /// Claims the session must have (`require`; empty: none).
    pub require: ClaimRule,
    /// Send `X-Auth-Request-User`, `-Email` and `-Groups` to the upstream.
    pub identity_headers: bool,
    /// How the access token goes upstream: `Bearer`, or `DPoP` with a proof.
    pub token_binding: TokenBinding,
    /// Only sessions bound to their device (DBSC) may use the route (`403
    /// device_binding_required` for the others).
    pub require_device_binding: bool,
    /// The route's own access token (`resource`, `scopes`), instead of the session's.
    pub audience: Option<Arc<Audience>>,
    /// The providers whose sessions may use the route (`403 wrong_provider` for others);
    /// empty: any.
    pub providers: Vec<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

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
        if r.require_device_binding && r.auth != RouteAuth::Required {
            return Err(ConfigError::invalid(
                key("require_device_binding"),
                "only applies to auth = \"required\" routes (a binding needs a session)",
            ));
        }
        if !r.providers.is_empty() && r.auth != RouteAuth::Required {
            return Err(ConfigError::invalid(
                key("providers"),
                "only applies to auth = \"required\" routes (it judges the session's provider)",
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
            require_device_binding: r.require_device_binding,
            audience,
            providers: r.providers,
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
