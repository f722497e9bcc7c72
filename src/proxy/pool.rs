//! Upstream pools: a route whose `upstream` is a list of URLs, or names a host, sends each
//! request to one address of a pool that follows DNS.
//!
//! Pingora's `pingora-load-balancing` does the selection (weighted round robin, or Ketama
//! consistent hashing for `balance = "sticky"`), keeps each member's active health, and
//! swaps the membership atomically when discovery changes it. What tollgate adds:
//!
//! - **Discovery** ([`Resolver`]): every URL's host is resolved again every
//!   `resolve_interval`, through `[server] hosts_file` (re-read each time) and then the system
//!   resolver; every address joins the pool. A lookup that fails keeps that name's previous
//!   addresses (a DNS outage must not empty a healthy pool).
//! - **Members** ([`Member`]): each address carries its prepared [`HttpPeer`] (SNI and
//!   timeouts), `Host` header and origin, so the hot path clones what was built here. A member
//!   keeps its state (ejection) across resolutions that still list it.
//! - **Active checks** (`health_check_path`): `GET` with the member's own `Host`, every
//!   `health_check_interval`; one failure takes a member out, one success brings it back.
//! - **Passive ejection**: a connect failure takes the member out for [`EJECT_FOR`], and the
//!   request is retried on another member, so a member that stops costs no failed request
//!   even before a check notices.
//! - **No member left**: only ejected members → the least recently ejected one is tried
//!   anyway (ejection is a guess; active checks are not); none healthy → `503
//!   upstream_unavailable` with `Retry-After`.
//!
//! A route with one URL whose host is an IP address and no health check keeps a fixed peer
//! ([`super::routes`]), with no per-request cost from any of this.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck};
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, Extensions, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;

use crate::config::{Balance, RouteConfig};
use crate::ops::metrics::Metrics;

/// How long a member that refused a connection stays out of the rotation.
pub(crate) const EJECT_FOR: Duration = Duration::from_secs(10);

/// Bound on the selection's walk over a pool (members are visited once each; Ketama's ring
/// repeats members, hence the margin).
const MAX_SELECT_STEPS: usize = 256;

/// Bound on one resolution or one round of health checks.
const PASS_LIMIT: Duration = Duration::from_secs(10);

/// How long an idle pooled upstream connection is kept.
pub(crate) const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One address of a pool, with what a request to it needs.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) peer: HttpPeer,
    /// The URL's authority, for `Host`.
    pub(crate) host_header: HeaderValue,
    /// `scheme://authority` of the URL (a DPoP proof's `htu`).
    pub(crate) origin: String,
    pub(crate) addr: SocketAddr,
    /// Which URL of the route's list it came from.
    url: usize,
    /// Milliseconds since the pool's epoch until which it is ejected (0: never was).
    ejected_until: AtomicU64,
}

impl Member {
    /// A fresh peer for one request.
    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

/// The prepared peer for `addr` of `url` (the route's timeouts, certificate checks, SNI).
pub(crate) fn prepare_peer(addr: SocketAddr, route: &RouteConfig, url: &url::Url) -> HttpPeer {
    let tls = url.scheme() == "https";
    let sni = if tls {
        url.host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(route.connect_timeout);
    o.total_connection_timeout = Some(route.connect_timeout);
    o.read_timeout = Some(route.read_timeout);
    o.write_timeout = Some(route.read_timeout);
    o.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
    o.verify_cert = true;
    o.verify_hostname = true;
    peer
}

/// Why [`Pool::select`] found no member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoHealthyMember;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Sticky(LoadBalancer<KetamaHashing>),
}

impl Balancer {
    fn select_with(&self, key: &[u8], accept: impl Fn(&Backend, bool) -> bool) -> Option<Backend> {
        match self {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::Sticky(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
        }
    }

    fn backends(&self) -> &Backends {
        match self {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Sticky(lb) => lb.backends(),
        }
    }

    async fn update(&self) -> pingora::Result<()> {
        match self {
            Balancer::RoundRobin(lb) => lb.update().await,
            Balancer::Sticky(lb) => lb.update().await,
        }
    }
}

/// A route's upstream pool.
pub(crate) struct Pool {
    route: String,
    balancer: Balancer,
    epoch: Instant,
    resolve_interval: Duration,
    health_interval: Option<Duration>,
    metrics: Metrics,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("route", &self.route).finish()
    }
}

fn member(b: &Backend) -> Option<&Arc<Member>> {
    b.ext.get::<Arc<Member>>()
}

impl Pool {
    /// The pool of `route`, resolved once now (blocking, at startup): names that do not
    /// resolve yet leave the pool empty until they do (requests get `503` meanwhile).
    pub(crate) fn new(route: &RouteConfig, hosts_file: Option<PathBuf>, metrics: Metrics) -> Self {
        let epoch = Instant::now();
        let resolver = Resolver {
            route: route.prefix.clone(),
            urls: route.upstreams.iter().map(|u| u.url.clone()).collect(),
            config: route.clone(),
            hosts_file,
            state: Mutex::new(ResolverState::default()),
        };
        let mut backends = Backends::new(Box::new(resolver));
        if let Some(h) = &route.health_check {
            backends.set_health_check(Box::new(Probe::new(route, &h.path)));
        }
        let balancer = match route.balance {
            Balance::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            Balance::Sticky => Balancer::Sticky(LoadBalancer::from_backends(backends)),
        };
        let pool = Pool {
            route: route.prefix.clone(),
            balancer,
            epoch,
            resolve_interval: route.resolve_interval,
            health_interval: route.health_check.as_ref().map(|h| h.interval),
            metrics,
        };
        // Outside a runtime the resolver looks up synchronously, so this completes at once.
        match pool.balancer.update().now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(route = %pool.route, error = %e, "upstream pool: first resolution failed")
            }
            None => tracing::warn!(route = %pool.route, "upstream pool: first resolution pending"),
        }
        pool.report();
        pool
    }

    /// `balance = "sticky"`: the selection hashes its key.
    pub(crate) fn sticky(&self) -> bool {
        matches!(self.balancer, Balancer::Sticky(_))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A member for one request: the balancer's pick among healthy members not ejected and
    /// not in `exclude` (this request's failed attempts). `key` is what sticky pools hash.
    /// With only ejected members left, the one whose ejection ends first.
    pub(crate) fn select(
        &self,
        key: u64,
        exclude: &[SocketAddr],
    ) -> Result<Arc<Member>, NoHealthyMember> {
        let now = self.now_ms();
        let fallback: std::cell::RefCell<Option<Arc<Member>>> = Default::default();
        let picked = self
            .balancer
            .select_with(&key.to_le_bytes(), |b, healthy| {
                let Some(m) = member(b).filter(|_| healthy) else {
                    return false;
                };
                if exclude.contains(&m.addr) {
                    return false;
                }
                let until = m.ejected_until.load(Ordering::Relaxed);
                if until > now {
                    let mut f = fallback.borrow_mut();
                    if f.as_ref()
                        .is_none_or(|f| f.ejected_until.load(Ordering::Relaxed) > until)
                    {
                        *f = Some(m.clone());
                    }
                    return false;
                }
                true
            })
            .and_then(|b| member(&b).cloned());
        picked
            .or_else(|| fallback.into_inner())
            .ok_or(NoHealthyMember)
    }

    /// Takes `m` out of the rotation for [`EJECT_FOR`] after a connect failure.
    pub(crate) fn eject(&self, m: &Member) {
        let until = self.now_ms() + u64::try_from(EJECT_FOR.as_millis()).unwrap_or(10_000);
        if m.ejected_until.swap(until, Ordering::Relaxed) <= self.now_ms() {
            self.metrics.upstream_ejection(&self.route);
            tracing::warn!(route = %self.route, upstream = %m.addr, "upstream pool: member ejected after a connect failure");
        }
        self.report();
    }

    /// Whether another healthy member than those in `exclude` could take a retry (else the
    /// connect failure itself is the answer, a 502).
    pub(crate) fn has_other(&self, exclude: &[SocketAddr]) -> bool {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .any(|b| backends.ready(b) && member(b).is_some_and(|m| !exclude.contains(&m.addr)))
    }

    /// Sets `tollgate_upstream_members` for this pool.
    fn report(&self) {
        let now = self.now_ms();
        let backends = self.balancer.backends();
        let (mut healthy, mut unhealthy, mut ejected) = (0, 0, 0);
        for b in backends.get_backend().iter() {
            if !backends.ready(b) {
                unhealthy += 1;
            } else if member(b).is_some_and(|m| m.ejected_until.load(Ordering::Relaxed) > now) {
                ejected += 1;
            } else {
                healthy += 1;
            }
        }
        self.metrics
            .upstream_members(&self.route, healthy, unhealthy, ejected);
    }

    /// Resolves again and runs the health checks, each at its interval, until shutdown.
    async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut next_resolve = tokio::time::Instant::now() + self.resolve_interval;
        let mut next_check = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            // Each pass is bounded (a resolver or a health endpoint that never finishes must
            // not stop the other): both are cancel-safe.
            if now >= next_resolve {
                match tokio::time::timeout(PASS_LIMIT, self.balancer.update()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(route = %self.route, error = %e, "upstream pool: resolution failed")
                    }
                    Err(_) => {
                        tracing::warn!(route = %self.route, "upstream pool: resolution did not finish in time")
                    }
                }
                next_resolve = now + self.resolve_interval;
            }
            if let Some(interval) = self.health_interval {
                if now >= next_check {
                    let pass = self.balancer.backends().run_health_check(true);
                    if tokio::time::timeout(PASS_LIMIT, pass).await.is_err() {
                        tracing::warn!(route = %self.route, "upstream pool: health checks did not finish in time");
                    }
                    next_check = tokio::time::Instant::now() + interval;
                }
            }
            self.report();
            let wake = match self.health_interval {
                Some(_) => next_resolve.min(next_check),
                None => next_resolve,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The background service that keeps every pool resolved and checked.
pub(crate) struct PoolService {
    pub(crate) pools: Vec<Arc<Pool>>,
}

#[async_trait]
impl BackgroundService for PoolService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let runs = self.pools.iter().map(|p| p.run(shutdown.clone()));
        futures_util::future::join_all(runs).await;
    }
}

#[derive(Default)]
struct ResolverState {
    /// Each URL's last good addresses.
    last: HashMap<usize, Vec<SocketAddr>>,
    /// Members by (URL, address), so that one keeps its state across resolutions.
    members: HashMap<(usize, SocketAddr), Arc<Member>>,
}

/// Discovery for a pool: every address of every URL's host.
struct Resolver {
    route: String,
    urls: Vec<url::Url>,
    config: RouteConfig,
    hosts_file: Option<PathBuf>,
    state: Mutex<ResolverState>,
}

/// The addresses `hosts` (hosts-file text) gives `name`, in file order (a name may be on
/// several lines, one per address); empty when the file does not name it.
pub(crate) fn hosts_lookup(hosts: &str, name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_ascii_whitespace();
        let Some(ip) = fields.next().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|n| n.eq_ignore_ascii_case(name)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

impl Resolver {
    /// The addresses of URL `index`: an IP host as is, else the hosts file, else the system
    /// resolver (synchronously outside a runtime, at startup).
    async fn lookup(&self, index: usize) -> Result<Vec<SocketAddr>, String> {
        let url = &self.urls[index];
        let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']);
        let port = url.port_or_known_default().unwrap_or(80);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(path) = &self.hosts_file {
            // A small local file, read in place (as the system resolver reads /etc/hosts).
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read hosts_file {}: {e}", path.display()))?;
            let ips = hosts_lookup(&text, host);
            if !ips.is_empty() {
                return Ok(ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect());
            }
        }
        let found: Vec<SocketAddr> = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| e.to_string())?
                .collect(),
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                .map_err(|e| e.to_string())?
                .collect(),
        };
        if found.is_empty() {
            return Err("no address found".into());
        }
        Ok(found)
    }
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let mut resolved = Vec::with_capacity(self.urls.len());
        for i in 0..self.urls.len() {
            resolved.push(self.lookup(i).await);
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut backends = BTreeSet::new();
        let mut live: HashMap<(usize, SocketAddr), Arc<Member>> = HashMap::new();
        for (i, r) in resolved.into_iter().enumerate() {
            let addrs = match r {
                Ok(mut addrs) => {
                    addrs.sort();
                    addrs.dedup();
                    if state.last.get(&i) != Some(&addrs) {
                        tracing::info!(route = %self.route, upstream = %self.config.upstreams[i].host, addresses = ?addrs, "upstream pool: resolved");
                    }
                    state.last.insert(i, addrs.clone());
                    addrs
                }
                Err(problem) => {
                    let kept = state.last.get(&i).cloned().unwrap_or_default();
                    tracing::warn!(route = %self.route, upstream = %self.config.upstreams[i].host, %problem, kept = kept.len(), "upstream pool: cannot resolve; keeping the previous addresses");
                    kept
                }
            };
            for addr in addrs {
                if let Some(other) = live
                    .keys()
                    .find(|(j, a)| *a == addr && *j != i)
                    .map(|(j, _)| *j)
                {
                    // One address, one member (Pingora's backends are keyed by address): the
                    // earlier URL's Host and SNI are used for it.
                    tracing::warn!(route = %self.route, upstream = %self.config.upstreams[i].host, shared_with = %self.config.upstreams[other].host, %addr, "upstream pool: two upstream URLs resolve to the same address; requests to it use the first URL's Host");
                    continue;
                }
                let m = state.members.get(&(i, addr)).cloned().unwrap_or_else(|| {
                    let u = &self.config.upstreams[i];
                    Arc::new(Member {
                        peer: prepare_peer(addr, &self.config, &u.url),
                        host_header: u.host_header.clone(),
                        origin: u.url.origin().ascii_serialization(),
                        addr,
                        url: i,
                        ejected_until: AtomicU64::new(0),
                    })
                });
                live.insert((i, addr), m.clone());
                let mut ext = Extensions::new();
                ext.insert(m);
                backends.insert(Backend {
                    addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                    weight: 1,
                    ext,
                });
            }
        }
        state.members = live;
        Ok((backends, HashMap::new()))
    }
}

/// The active check: `GET health_check_path` with the member's own `Host` and SNI; a `2xx`
/// passes.
struct Probe {
    route: String,
    /// One prepared check per URL of the route.
    checks: Vec<HttpHealthCheck>,
}

impl Probe {
    fn new(route: &RouteConfig, path: &str) -> Self {
        let checks = route
            .upstreams
            .iter()
            .map(|u| {
                let tls = u.url.scheme() == "https";
                let sni = u
                    .url
                    .host_str()
                    .unwrap_or_default()
                    .trim_matches(['[', ']']);
                let mut check = HttpHealthCheck::new(sni, tls);
                if let Ok(mut req) = RequestHeader::build("GET", path.as_bytes(), None) {
                    let _ = req.insert_header(http::header::HOST, u.host_header.clone());
                    let _ = req.insert_header(http::header::USER_AGENT, "tollgate-health-check");
                    check.req = req;
                }
                let o = &mut check.peer_template.options;
                o.connection_timeout = Some(route.connect_timeout.min(Duration::from_secs(2)));
                o.total_connection_timeout = o.connection_timeout;
                o.read_timeout = Some(route.read_timeout.min(Duration::from_secs(5)));
                o.write_timeout = o.read_timeout;
                o.verify_cert = true;
                o.verify_hostname = true;
                check.validator = Some(Box::new(|resp| {
                    if resp.status.is_success() {
                        Ok(())
                    } else {
                        pingora::Error::e_explain(
                            pingora::ErrorType::CustomCode(
                                "health check status",
                                resp.status.as_u16(),
                            ),
                            "not 2xx",
                        )
                    }
                }));
                check
            })
            .collect();
        Probe {
            route: route.prefix.clone(),
            checks,
        }
    }
}

#[async_trait]
impl HealthCheck for Probe {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        let check = member(target).and_then(|m| self.checks.get(m.url));
        match check {
            Some(c) => c.check(target).await,
            None => pingora::Error::e_explain(pingora::ErrorType::InternalError, "unknown member"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        let addr = member(target).map(|m| m.addr);
        if healthy {
            tracing::info!(route = %self.route, upstream = ?addr, "upstream pool: member passes its health check again");
        } else {
            tracing::warn!(route = %self.route, upstream = ?addr, "upstream pool: member failed its health check");
        }
    }

    fn health_threshold(&self, _success: bool) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lookup() {
        let text = "# comment\n127.0.0.1 localhost\n127.0.0.2   api.test  other # trailing\n\
                    ::1 api.test\nnot-an-ip api.test\n127.0.0.2 API.TEST\n";
        assert_eq!(
            hosts_lookup(text, "api.test"),
            vec![
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(hosts_lookup(text, "missing.test").is_empty());
        assert!(hosts_lookup(text, "comment").is_empty());
    }
}
