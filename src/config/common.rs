//! Rules more than one section applies: paths tollgate answers itself, whether a path can be
//! routed on, loopback URLs, and the `Host` a URL is reached by.

use http::HeaderValue;
use url::{Host, Url};

/// Paths tollgate answers itself; a route may not claim them exactly.
pub(crate) const RESERVED_PATHS: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/login",
    "/logout",
    "/logout/continue",
    "/session",
];

/// `http://localhost`, `http://127.x.x.x` or `http://[::1]`, any port: reachable from this
/// machine only.
pub(crate) fn is_loopback_http(url: &Url) -> bool {
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

/// `key` as a `&'static str`, the type secret files are named by ([`super::Config::
/// secret_files`]): a provider's secret keys (`providers.NAME.client_secret_file`) are made at
/// load. Each distinct key is kept once for the process's life, so reloading a config leaks
/// nothing new; only a new provider name adds its few keys.
pub(crate) fn static_key(key: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static KEYS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut keys = KEYS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(k) = keys.get(key.as_str()) {
        return k;
    }
    let k: &'static str = Box::leak(key.into_boxed_str());
    keys.insert(k);
    k
}
