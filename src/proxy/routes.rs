//! Route table: which upstream serves a path, and under which auth rule.
//!
//! Routes match by path prefix on segment boundaries (`/api` matches `/api` and `/api/x`, not
//! `/apix`), longest prefix first, so a catch-all `/` for the SPA can sit beside `/api`. A route
//! with one IP-address upstream gets its [`HttpPeer`] built at startup and the hot path only
//! clones it; any other route has a [`Pool`] that follows DNS and health.

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

use super::pool::{prepare_peer, Pool};
use crate::ops::metrics::Metrics;

use crate::claims::ClaimRule;
use crate::config::{RouteAuth, RouteConfig};
use crate::reply::Fault;
use crate::target::Target;

#[derive(Debug, thiserror::Error)]
#[error("`routes[{index}].upstream`: cannot resolve {authority}: {problem}")]
pub struct ResolveError {
    index: usize,
    authority: String,
    problem: String,
}

/// A route ready for the hot path.
#[derive(Debug)]
pub(crate) struct Route {
    pub prefix: String,
    pub auth: RouteAuth,
    /// Pass a client-sent `Authorization` on (only on `auth = "none"` routes).
    pub keep_authorization: bool,
    /// `cache_public`: answers to requests with a session keep their caching headers.
    pub cache_public: bool,
    /// `read_timeout`, which also bounds the whole upload of a request body.
    pub read_timeout: std::time::Duration,
    /// Claims the session must have (`require`).
    pub require: Option<ClaimRule>,
    /// Send the user's identity upstream (`identity_headers`).
    pub identity_headers: bool,
    /// `token_binding = "dpop"`.
    pub dpop: bool,
    /// `resource`/`scopes`: the route's own token.
    pub audience: Option<std::sync::Arc<crate::config::Audience>>,
    /// `require_device_binding`: only sessions bound to their device.
    pub require_device_binding: bool,
    /// `providers`: only sessions of these providers (empty: any).
    pub providers: Vec<String>,
    /// `scheme://authority` of the upstream as it sees itself (a DPoP proof's `htu` is this
    /// and the upstream path).
    pub origin: String,
    pub strip_prefix: bool,
    /// The upstream URL's path without a trailing `/` (empty for `/`), prepended to the path.
    pub base_path: String,
    /// `Host` for the upstream request: the upstream URL's authority, as a header value built
    /// once (cloning it shares the bytes).
    pub host_header: HeaderValue,
    /// The prepared peer of a route with one fixed address, or else its pool.
    peer: Option<HttpPeer>,
    pub(crate) pool: Option<Arc<Pool>>,
}

impl Route {
    /// A fresh peer for one request (cheap clone of the prepared template) on a route with
    /// a fixed address; `None` on a pool's route.
    pub(crate) fn peer(&self) -> Option<Box<HttpPeer>> {
        self.peer.as_ref().map(|p| Box::new(p.clone()))
    }

    /// The path to request upstream for a downstream `path` (which matched this route).
    pub(crate) fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        let rest = if self.strip_prefix && self.prefix != "/" {
            &path[self.prefix.len()..]
        } else {
            path
        };
        if self.base_path.is_empty() && !rest.is_empty() {
            return std::borrow::Cow::Borrowed(rest);
        }
        let mut out = String::with_capacity(self.base_path.len() + rest.len() + 1);
        out.push_str(&self.base_path);
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        std::borrow::Cow::Owned(out)
    }
}

#[derive(Debug)]
pub(crate) struct RouteTable {
    /// Sorted longest prefix first.
    routes: Vec<Route>,
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl RouteTable {
    pub(crate) fn new(
        configs: &[RouteConfig],
        hosts_file: Option<&std::path::Path>,
        metrics: &Metrics,
    ) -> Result<Self, ResolveError> {
        let hosts_file = hosts_file.map(std::path::Path::to_path_buf);
        let mut routes = Vec::with_capacity(configs.len());
        for (index, c) in configs.iter().enumerate() {
            // One IP-address URL and no health check: a fixed peer, nothing to re-resolve.
            let ip = c
                .upstream
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']']);
            let fixed = c.upstreams.len() == 1
                && c.health_check.is_none()
                && ip.parse::<std::net::IpAddr>().is_ok();
            let (peer, pool) = if fixed {
                let addr = ip
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, c.upstream.port_or_known_default().unwrap_or(80)))
                    .map_err(|e| ResolveError {
                        index,
                        authority: c.host.clone(),
                        problem: e.to_string(),
                    })?;
                (Some(prepare_peer(addr, c, &c.upstream)), None)
            } else {
                let pool = Arc::new(Pool::new(c, hosts_file.clone(), metrics.clone()));
                (None, Some(pool))
            };
            routes.push(Route {
                host_header: c.host_header.clone(),
                prefix: c.prefix.clone(),
                auth: c.auth,
                keep_authorization: c.keep_authorization,
                cache_public: c.cache_public,
                read_timeout: c.read_timeout,
                require: (!c.require.is_empty()).then(|| c.require.clone()),
                identity_headers: c.identity_headers,
                dpop: c.token_binding == crate::config::TokenBinding::Dpop,
                audience: c.audience.clone(),
                require_device_binding: c.require_device_binding,
                providers: c.providers.clone(),
                origin: c.upstream.origin().ascii_serialization(),
                strip_prefix: c.strip_prefix,
                base_path: c.upstream.path().trim_end_matches('/').to_string(),
                peer,
                pool,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// The route for `path` (longest prefix first) and its index for [`Self::get`].
    pub(crate) fn find(&self, path: &str) -> Option<(usize, &Route)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| prefix_matches(&r.prefix, path))
    }

    /// The routes' upstream pools, for the background service that keeps them up to date.
    pub(crate) fn pools(&self) -> Vec<Arc<Pool>> {
        self.routes.iter().filter_map(|r| r.pool.clone()).collect()
    }

    /// Every route, in the order of their indices.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub(crate) fn get(&self, index: usize) -> Option<&Route> {
        self.routes.get(index)
    }

    /// The route index for a checked request target: `404` when no route matches, `400` when
    /// its fully decoded form (`/api%2Fadmin`, `/api;x/admin`) would route elsewhere, since
    /// tollgate cannot know which of the two the upstream will serve.
    pub(crate) fn resolve(&self, target: &Target<'_>) -> Result<usize, Fault> {
        let (index, _) = self.find(&target.path).ok_or(Fault::NotFound)?;
        if let Some(c) = &target.canonical {
            if self.find(c).map(|(i, _)| i) != Some(index) {
                return Err(Fault::BadPath);
            }
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(super) fn route(prefix: &str, upstream: &str, strip: bool) -> RouteConfig {
        let upstream: url::Url = upstream.parse().unwrap();
        let (host, host_header) = crate::config::common::host_header(&upstream).unwrap();
        RouteConfig {
            prefix: prefix.into(),
            upstreams: vec![crate::config::UpstreamUrl {
                url: upstream.clone(),
                host: host.clone(),
                host_header: host_header.clone(),
            }],
            upstream,
            balance: Default::default(),
            resolve_interval: Duration::from_secs(30),
            health_check: None,
            host,
            host_header,
            auth: RouteAuth::Required,
            strip_prefix: strip,
            keep_authorization: false,
            cache_public: false,
            require: Default::default(),
            identity_headers: false,
            token_binding: Default::default(),
            require_device_binding: false,
            providers: Vec::new(),
            audience: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = RouteTable::new(
            &[
                route("/", "http://127.0.0.1:1", false),
                route("/api", "http://127.0.0.1:2", false),
                route("/api/admin", "http://127.0.0.1:3", false),
            ],
            None,
            &Metrics::new(),
        )
        .unwrap();
        let p = |path| t.find(path).map(|(_, r)| r.prefix.as_str());
        assert_eq!(p("/api"), Some("/api"));
        assert_eq!(p("/api/x"), Some("/api"));
        assert_eq!(p("/apix"), Some("/"));
        assert_eq!(p("/api/admin/users"), Some("/api/admin"));
        assert_eq!(p("/api/administrator"), Some("/api"));
        assert_eq!(p("/index.html"), Some("/"));
        let t = RouteTable::new(
            &[route("/api", "http://127.0.0.1:2", false)],
            None,
            &Metrics::new(),
        )
        .unwrap();
        assert!(t.find("/other").is_none());
    }

    #[test]
    fn upstream_paths() {
        let t = RouteTable::new(
            &[
                route("/api", "http://127.0.0.1:2/v1/", true),
                route("/raw", "http://127.0.0.1:2", false),
                route("/strip", "http://localhost:2", true),
            ],
            None,
            &Metrics::new(),
        )
        .unwrap();
        let up = |p: &str| t.find(p).unwrap().1.upstream_path(p).into_owned();
        assert_eq!(up("/api/users"), "/v1/users");
        assert_eq!(up("/api"), "/v1/");
        assert_eq!(up("/raw/x"), "/raw/x");
        assert_eq!(up("/strip/x"), "/x");
        assert_eq!(up("/strip"), "/");
        assert_eq!(t.find("/strip").unwrap().1.host_header, "localhost:2");
    }
}

#[cfg(test)]
mod properties {
    use super::tests::route;
    use super::*;
    use crate::target;
    use proptest::prelude::*;

    /// Segments from a tiny alphabet, so that prefixes and paths overlap often.
    fn segments(max: usize) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[ab]{1,2}", 0..=max)
    }

    fn path(segments: &[String]) -> String {
        format!("/{}", segments.join("/"))
    }

    fn table(prefixes: &std::collections::BTreeSet<String>) -> RouteTable {
        let configs: Vec<RouteConfig> = prefixes
            .iter()
            .map(|p| route(p, "http://127.0.0.1:1", false))
            .collect();
        RouteTable::new(&configs, None, &Metrics::new()).unwrap()
    }

    fn prefixes() -> impl Strategy<Value = std::collections::BTreeSet<String>> {
        proptest::collection::btree_set(segments(3).prop_map(|s| path(&s)), 1..6)
    }

    /// The reference: the longest prefix whose segments begin the path's segments.
    fn longest_whole_segment_match<'p>(
        prefixes: &'p std::collections::BTreeSet<String>,
        path: &str,
    ) -> Option<&'p str> {
        let path_segments: Vec<&str> = path.split('/').skip(1).collect();
        prefixes
            .iter()
            .filter(|p| {
                let ps: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
                path_segments.len() >= ps.len() && path_segments[..ps.len()] == ps[..]
            })
            .max_by_key(|p| p.len())
            .map(String::as_str)
    }

    /// One way a client could write the same path differently.
    #[derive(Debug, Clone)]
    enum Variant {
        /// `%XX` (upper or lower case hex) for the byte at this position.
        Encode(prop::sample::Index, bool),
        /// `//` for the slash at this position.
        DoubleSlash(prop::sample::Index),
        /// `;x` appended to the segment ending at this position.
        Param(prop::sample::Index),
        /// A `.`, `..`, `%2e` or `%2E%2E` segment inserted at this slash.
        Dot(prop::sample::Index, u8),
        /// A backslash for the slash at this position.
        Backslash(prop::sample::Index),
    }

    fn variant() -> impl Strategy<Value = Variant> {
        prop_oneof![
            (any::<prop::sample::Index>(), any::<bool>()).prop_map(|(i, u)| Variant::Encode(i, u)),
            any::<prop::sample::Index>().prop_map(Variant::DoubleSlash),
            any::<prop::sample::Index>().prop_map(Variant::Param),
            (any::<prop::sample::Index>(), 0u8..4).prop_map(|(i, k)| Variant::Dot(i, k)),
            any::<prop::sample::Index>().prop_map(Variant::Backslash),
        ]
    }

    fn apply(path: &str, variants: &[Variant]) -> String {
        let mut p = path.to_string();
        for v in variants {
            let slashes: Vec<usize> = p.match_indices('/').map(|(i, _)| i).collect();
            if slashes.is_empty() && !matches!(v, Variant::Encode(..)) {
                continue;
            }
            match v {
                Variant::Encode(at, upper) => {
                    let i = at.index(p.len());
                    let b = p.as_bytes()[i];
                    if b == b'%' {
                        // `%25XX` is another path (`%XX` literally), not the same one written
                        // differently: upstreams decode once.
                        continue;
                    }
                    let e = if *upper {
                        format!("%{b:02X}")
                    } else {
                        format!("%{b:02x}")
                    };
                    p.replace_range(i..=i, &e);
                }
                Variant::DoubleSlash(at) => {
                    let i = slashes[at.index(slashes.len())];
                    p.insert(i, '/');
                }
                Variant::Param(at) => {
                    let i = slashes[at.index(slashes.len())];
                    if i > 0 {
                        p.insert_str(i, ";x");
                    } else {
                        p.push_str(";x");
                    }
                }
                Variant::Dot(at, kind) => {
                    let i = slashes[at.index(slashes.len())];
                    let dot = ["/.", "/..", "/%2e", "/%2E%2E"][*kind as usize];
                    p.insert_str(i, dot);
                }
                Variant::Backslash(at) => {
                    let i = slashes[at.index(slashes.len())];
                    p.replace_range(i..=i, "\\");
                }
            }
        }
        p
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// For any prefix table and path, the route is the longest whole-segment match.
        #[test]
        fn the_longest_whole_segment_prefix_wins(
            prefixes in prefixes(),
            segs in segments(4),
            trailing_slash in any::<bool>(),
        ) {
            let table = table(&prefixes);
            let mut p = path(&segs);
            if trailing_slash && p != "/" {
                p.push('/');
            }
            let got = table.find(&p).map(|(_, r)| r.prefix.as_str());
            prop_assert_eq!(got, longest_whole_segment_match(&prefixes, &p));
        }

        /// A path written any other way (escapes, doubled slashes, `;params`, dot segments,
        /// backslashes) is refused or reaches the same route as the plain path, never another.
        #[test]
        fn no_variant_of_a_path_reaches_another_route(
            prefixes in prefixes(),
            segs in segments(4),
            variants in proptest::collection::vec(variant(), 1..4),
        ) {
            let table = table(&prefixes);
            let plain = path(&segs);
            let expected = table.find(&plain).map(|(i, _)| i);
            let written = apply(&plain, &variants);
            if let Ok(t) = target::check(written.as_bytes(), &written) {
                if let Ok(i) = table.resolve(&t) {
                    prop_assert_eq!(Some(i), expected, "{} routed as {}", written, t.path);
                }
            }
        }

        /// Whatever the target, a path that passes the check has no empty or dot segment,
        /// backslash or control character, in its routed form or its fully decoded one.
        #[test]
        fn a_checked_path_is_normal(raw in "/[ -~\\x00-\\x1f]{0,40}") {
            if let Ok(t) = target::check(raw.as_bytes(), &raw) {
                for p in std::iter::once(t.path.as_ref()).chain(t.canonical.as_deref()) {
                    prop_assert!(p.starts_with('/'));
                    prop_assert!(!p.contains("//"), "{p}");
                    prop_assert!(!p.split('/').any(|s| s == "." || s == ".."), "{p}");
                    prop_assert!(!p.contains('\\'), "{p}");
                    prop_assert!(!p.chars().any(|c| c.is_control()), "{p}");
                }
            }
        }
    }
}
