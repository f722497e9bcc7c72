//! Route table: which upstream serves a path, and under which auth rule.
//!
//! Routes match by path prefix on segment boundaries (`/api` matches `/api` and `/api/x`, not
//! `/apix`), longest prefix first, so a catch-all `/` for the SPA can sit beside `/api`. The
//! upstream address is resolved once at startup and the [`HttpPeer`] built then; the hot path
//! only clones it.

use std::net::{SocketAddr, ToSocketAddrs};

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

use super::target::Target;
use crate::config::{RouteAuth, RouteConfig};
use crate::reply::Fault;

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

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
    pub strip_prefix: bool,
    /// The upstream URL's path without a trailing `/` (empty for `/`), prepended to the path.
    pub base_path: String,
    /// `Host` for the upstream request: the upstream URL's authority, as a header value built
    /// once (cloning it shares the bytes).
    pub host_header: HeaderValue,
    peer: HttpPeer,
}

impl Route {
    /// A fresh peer for one request (cheap clone of the prepared template).
    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
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
    pub(crate) fn new(configs: &[RouteConfig]) -> Result<Self, ResolveError> {
        let mut routes = Vec::with_capacity(configs.len());
        for (index, c) in configs.iter().enumerate() {
            let tls = c.upstream.scheme() == "https";
            let host = c.upstream.host_str().unwrap_or_default().to_string();
            let port = c.upstream.port_or_known_default().unwrap_or(80);
            let addr: SocketAddr = (host.trim_matches(['[', ']']), port)
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut a| a.next().ok_or_else(|| "no address found".to_string()))
                .map_err(|problem| ResolveError {
                    index,
                    authority: c.host.clone(),
                    problem,
                })?;
            let sni = if tls {
                host.trim_matches(['[', ']']).to_string()
            } else {
                String::new()
            };
            let mut peer = HttpPeer::new(addr, tls, sni);
            let o = &mut peer.options;
            o.connection_timeout = Some(c.connect_timeout);
            o.total_connection_timeout = Some(c.connect_timeout);
            o.read_timeout = Some(c.read_timeout);
            o.write_timeout = Some(c.read_timeout);
            o.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
            o.verify_cert = true;
            o.verify_hostname = true;
            routes.push(Route {
                host_header: c.host_header.clone(),
                prefix: c.prefix.clone(),
                auth: c.auth,
                keep_authorization: c.keep_authorization,
                strip_prefix: c.strip_prefix,
                base_path: c.upstream.path().trim_end_matches('/').to_string(),
                peer,
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

    fn route(prefix: &str, upstream: &str, strip: bool) -> RouteConfig {
        let upstream: url::Url = upstream.parse().unwrap();
        let (host, host_header) = crate::config::validate::host_header(&upstream).unwrap();
        RouteConfig {
            prefix: prefix.into(),
            upstream,
            host,
            host_header,
            auth: RouteAuth::Required,
            strip_prefix: strip,
            keep_authorization: false,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = RouteTable::new(&[
            route("/", "http://127.0.0.1:1", false),
            route("/api", "http://127.0.0.1:2", false),
            route("/api/admin", "http://127.0.0.1:3", false),
        ])
        .unwrap();
        let p = |path| t.find(path).map(|(_, r)| r.prefix.as_str());
        assert_eq!(p("/api"), Some("/api"));
        assert_eq!(p("/api/x"), Some("/api"));
        assert_eq!(p("/apix"), Some("/"));
        assert_eq!(p("/api/admin/users"), Some("/api/admin"));
        assert_eq!(p("/api/administrator"), Some("/api"));
        assert_eq!(p("/index.html"), Some("/"));
        let t = RouteTable::new(&[route("/api", "http://127.0.0.1:2", false)]).unwrap();
        assert!(t.find("/other").is_none());
    }

    #[test]
    fn upstream_paths() {
        let t = RouteTable::new(&[
            route("/api", "http://127.0.0.1:2/v1/", true),
            route("/raw", "http://127.0.0.1:2", false),
            route("/strip", "http://localhost:2", true),
        ])
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
