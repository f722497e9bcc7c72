//! Entry points for the `cargo fuzz` targets in `fuzz/` (feature `fuzzing`; not an API).
//!
//! Each function here calls the code the server runs on that input — no copy of it — and
//! returns what the target's invariants need. [`Harness`] assembles the pieces the way
//! `server::build` does, from a fixed config (below) and a provider's discovery document and
//! JWKS (the captured ones in `fuzz/seeds/idp/`), without a Pingora server, a network listener
//! or the process environment. Its clock is [`NOW`]. Every endpoint it could reach over the
//! network (token, JWKS, revocation) points at a closed loopback port, so a request that gets
//! that far fails at once, as with a provider that is down.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::http::RequestHeader;

use crate::config::{Config, EndpointOverrides, RouteAuth};
use crate::oidc::discovery::{self, ProviderStore};
use crate::oidc::jwks::Jwks;
use crate::oidc::login::{self, LoginState};
use crate::oidc::{client_auth::ClientAuth, refresh, return_to, token_client, Oidc};
use crate::ops::health::Readiness;
use crate::ops::metrics::Metrics;
use crate::proxy::dispatch::Destination;
use crate::proxy::upstream::Upstream;
use crate::proxy::Tollgate;
use crate::reply::Reply;
use crate::request::Facts;
use crate::session::cookie::{self, SessionCookies};
use crate::session::revocations::Revocations;
use crate::session::seal::Sealer;
use crate::session::{fixture, Session, SessionCodec};

/// The harness's clock (Unix seconds, 2027-01-15): sessions, logins and tokens in the seeds are
/// from just before it.
pub const NOW: u64 = 1_800_000_000;
/// The session cookie's name.
pub const COOKIE: &str = "__Host-tg";
/// The session key of the harness config (base64 of 32 bytes 0x42; not a published example).
pub const KEY: [u8; 32] = [0x42; 32];
/// The issuer of the captured provider artefacts (`fuzz/seeds/capture.sh`).
pub const ISSUER: &str = "http://127.0.0.1:39123/test/as";
/// The client the captured tokens were issued to.
pub const CLIENT_ID: &str = "tollgate-basic";
/// The route prefixes of the harness config, in config order (indexes are the route table's,
/// longest prefix first: see [`Harness::route_of`]).
pub const PREFIXES: [&str; 6] = ["/", "/api", "/api/admin", "/static", "/a", "/a/b"];

fn config_text() -> String {
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, KEY);
    format!(
        r#"
[server]
listen = ["127.0.0.1:1"]
public_url = "https://app.example.com"
threads = 1
[oidc]
issuer = "{ISSUER}"
client_id = "{CLIENT_ID}"
client_secret = "basic-secret-0123456789abcdef0123456789"
scopes = ["openid", "profile", "email", "offline_access"]
token_endpoint = "http://127.0.0.1:1/token"
jwks_uri = "http://127.0.0.1:1/jwks"
revocation_endpoint = "http://127.0.0.1:1/revoke"
allow_get_logout = true
# The captured discovery document offers PAR; the harness never leaves the process.
par = "never"
[session]
cookie_name = "{COOKIE}"
keys = ["{key}"]
[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:2"
auth = "none"
[[routes]]
prefix = "/api"
upstream = "http://127.0.0.1:3"
[[routes]]
prefix = "/api/admin"
upstream = "http://127.0.0.1:4"
[[routes]]
prefix = "/static"
upstream = "http://127.0.0.1:5/v1/"
strip_prefix = true
auth = "optional"
[[routes]]
prefix = "/a"
upstream = "http://127.0.0.1:6"
strip_prefix = true
[[routes]]
prefix = "/a/b"
upstream = "http://127.0.0.1:7/b"
"#
    )
}

/// A reply tollgate would write, as the writer sees it.
#[derive(Debug, Clone)]
pub struct ReplyParts {
    pub status: u16,
    /// Extra headers (`location`).
    pub headers: Vec<(&'static str, String)>,
    pub set_cookies: Vec<String>,
}

impl ReplyParts {
    fn of(reply: &Reply) -> ReplyParts {
        ReplyParts {
            status: reply.status(),
            headers: reply.headers().to_vec(),
            set_cookies: reply.set_cookies().to_vec(),
        }
    }

    /// The `location` header, if any.
    pub fn location(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == "location")
            .map(|(_, v)| v.as_str())
    }
}

/// What tollgate decides for a request target ([`Harness::target_path`]).
#[derive(Debug)]
pub struct TargetOutcome {
    /// The checked target: the path routed on and its fully decoded form when it differs, or
    /// the status of the refusal.
    pub checked: Result<(String, Option<String>), u16>,
    /// Where it goes: `Ok(Some(route index))`, `Ok(None)` for one of tollgate's endpoints, or
    /// the status of the refusal.
    pub destination: Result<Option<usize>, u16>,
    /// For a route, the request target sent upstream (or why the rewrite failed).
    pub upstream_target: Option<Result<String, String>>,
}

/// What the request's session cookies decide on an `auth = "required"` route
/// ([`Harness::session_open`]).
#[derive(Debug)]
pub struct SessionOutcome {
    /// The reassembled sealed value, or why there is none.
    pub sealed: Result<String, String>,
    /// Whether the seal opened (and the payload decoded, within the session's lifetimes).
    pub opened: Result<(), String>,
    /// The bearer header value of an allowed request.
    pub bearer: Option<HeaderValue>,
    /// The refusal of a refused one.
    pub refused: Option<ReplyParts>,
    /// `Set-Cookie` lines of an allowed request (a re-sealed session).
    pub set_cookies: Vec<String>,
}

/// What tollgate makes of a request's `Cookie` header(s) ([`Harness::cookie_header`]).
#[derive(Debug)]
pub struct CookieOutcome {
    /// The reassembled session value (chunks or single cookie), or why there is none.
    pub session: Result<String, String>,
    /// The `Cookie` header values the upstream receives.
    pub upstream_cookies: Result<Vec<String>, String>,
    /// `Set-Cookie` lines that clear the session cookies found.
    pub clear_lines: Vec<String>,
    /// `Set-Cookie` lines that store a new session over the cookies found.
    pub store_lines: Vec<String>,
}

/// Provider metadata from a discovery document, as tollgate uses it.
#[derive(Debug)]
pub struct MetadataOutcome {
    pub issuer: String,
    /// Every endpoint URL, as tollgate serializes it (redirects are built from them).
    pub urls: Vec<String>,
    pub id_token_algs: Vec<String>,
}

/// tollgate's parts, assembled once for every run of a target.
pub struct Harness {
    config: Config,
    app: Tollgate,
    oidc: Arc<Oidc>,
    providers: Arc<crate::oidc::Providers>,
    codec: SessionCodec,
    sealer: Sealer,
    runtime: tokio::runtime::Runtime,
    login_state: String,
    login_cookie: String,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

impl Harness {
    /// Assembles tollgate with the provider whose discovery document and JWKS are given (they
    /// must be for [`ISSUER`]). Panics if they do not load: a broken harness, not a finding.
    pub fn new(discovery_document: &[u8], jwks: &[u8]) -> Harness {
        let config = Config::from_toml_str(&config_text(), Path::new("fuzz.toml"), [])
            .expect("the harness config is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let metrics = Metrics::new();
        let readiness = Arc::new(Readiness::default());
        let provider = Arc::new(ProviderStore::default());
        let metadata = discovery::metadata_from_document(discovery_document, &config.oidc)
            .expect("the discovery document loads");
        let keys = Jwks::parse(jwks, "fuzz").expect("the JWKS loads");
        provider.set(metadata, keys, Instant::now());
        readiness.set_provider_loaded("default");
        let http = crate::oidc::http::http_client(&config).expect("an HTTP client");
        let oidc = Arc::new(
            Oidc::new(&config, http, provider, None, metrics.clone()).expect("client auth"),
        );
        let providers = Arc::new(crate::oidc::Providers::new(
            vec![(oidc.clone(), Vec::new())],
            false,
        ));
        let app = Tollgate::new(
            &config,
            metrics,
            readiness,
            providers.clone(),
            Arc::new(Revocations::default()),
            None,
        )
        .expect("routes resolve");
        let codec = SessionCodec::new(&config.session, config.server.secure_cookies);
        let sealer = Sealer::new(&config.session.keys);
        let mut harness = Harness {
            config,
            app,
            oidc,
            providers,
            codec,
            sealer,
            runtime,
            login_state: String::new(),
            login_cookie: String::new(),
        };
        // A login in progress, for `/callback`.
        let started = harness.login(None, None, None);
        let line = started
            .set_cookies
            .last()
            .expect("a login cookie")
            .split(';')
            .next()
            .unwrap_or_default()
            .to_string();
        let state = line
            .split_once('=')
            .and_then(|(name, _)| cookie::login_cookie_state(name, COOKIE))
            .expect("a login cookie name")
            .to_string();
        harness.login_state = state;
        harness.login_cookie = line;
        harness
    }

    /// The `state` of a login the harness started, and its cookie (`name=value`): a
    /// `/callback` with both gets past the state check.
    pub fn pending_login(&self) -> (&str, &str) {
        (&self.login_state, &self.login_cookie)
    }

    fn facts<'r>(
        method: &'r Method,
        query: Option<&'r str>,
        headers: &'r HeaderMap,
        body: Option<&'r [u8]>,
    ) -> Facts<'r> {
        Facts {
            method,
            query,
            headers,
            body,
            request_id: "fuzz",
            now: NOW,
            client: None,
        }
    }

    /// Request headers from `(name, value)` pairs; pairs that are not valid header fields are
    /// left out (Pingora's parser would refuse them).
    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                h.append(n, v);
            }
        }
        h
    }

    // --- the request target and the route decision -------------------------------------

    /// A request with target `raw` (the request line's bytes), as Pingora parses it
    /// (`None` when it refuses), screened and routed as `request_filter` does, and for a route
    /// the upstream request target after `upstream_request_filter`'s rewrite.
    pub fn target_path(&self, raw: &[u8]) -> Option<TargetOutcome> {
        let mut req = RequestHeader::build("GET", raw, None).ok()?;
        req.insert_header("host", "app.example.com").ok()?;
        let checked = crate::proxy::screen::screen(
            &req.method,
            req.version,
            &req.headers,
            req.raw_path(),
            req.uri.path(),
            usize::MAX,
            "fuzz",
        )
        .map(|t| (t.path.into_owned(), t.canonical))
        .map_err(|f| f.status());
        let (target, destination) = match self.app.dispatch().destination(&req, "fuzz", false) {
            Ok(d) => d,
            Err(fault) => {
                return Some(TargetOutcome {
                    checked,
                    destination: Err(fault.status()),
                    upstream_target: None,
                })
            }
        };
        let index = match destination {
            Destination::Endpoint(_) | Destination::ForwardAuth => {
                return Some(TargetOutcome {
                    checked,
                    destination: Ok(None),
                    upstream_target: None,
                })
            }
            Destination::Route(index) => index,
        };
        let route = self.app.dispatch().routes().get(index)?;
        // As `Ctx::path`: the normalised path when it was decoded, else the URI's.
        let path = match &target.path {
            Cow::Owned(p) => p.as_str(),
            Cow::Borrowed(_) => req.uri.path(),
        };
        let mut upstream_request = req.clone();
        let rewritten = self
            .app
            .rewrite_upstream(
                &req,
                &mut upstream_request,
                &Upstream {
                    route,
                    path,
                    bearer: None,
                    identity: None,
                    dpop: None,
                    client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    request_id: "fuzz",
                    member: None,
                },
            )
            .map(|()| String::from_utf8_lossy(upstream_request.raw_path()).into_owned())
            .map_err(|e| e.to_string());
        Some(TargetOutcome {
            checked,
            destination: Ok(Some(index)),
            upstream_target: Some(rewritten),
        })
    }

    /// The route for an already normal `path` (longest prefix), as the route table finds it.
    pub fn route_of(&self, path: &str) -> Option<usize> {
        self.app.dispatch().routes().find(path).map(|(i, _)| i)
    }

    /// The prefix of route `index`.
    pub fn prefix_of(&self, index: usize) -> Option<&str> {
        self.app
            .dispatch()
            .routes()
            .get(index)
            .map(|r| r.prefix.as_str())
    }

    // --- Cookie headers and chunks --------------------------------------------------------

    /// What tollgate reads from these `Cookie` header values: the session cookie (chunks
    /// reassembled), what the upstream gets after tollgate's cookies are removed, and the
    /// `Set-Cookie` lines that clear or replace the session cookies found.
    pub fn cookie_header(&self, cookie_headers: &[&str]) -> CookieOutcome {
        let pairs: Vec<(&str, &str)> = cookie_headers.iter().map(|c| ("cookie", *c)).collect();
        let headers = Self::headers(&pairs);
        let method = Method::GET;
        let facts = Self::facts(&method, None, &headers, None);
        let found = SessionCookies::scan(COOKIE, facts.cookie_headers());
        let session = found
            .value()
            .map(Cow::into_owned)
            .map_err(|e| e.to_string());
        let clear_lines = self.codec.clear_cookie_lines(&found);
        let store_lines = self
            .codec
            .set_cookie_lines(&fixture::session(NOW - 10, "at"), &found, NOW)
            .unwrap_or_default();

        let upstream_cookies = (|| {
            let mut req =
                RequestHeader::build("GET", b"/api/x", None).map_err(|e| e.to_string())?;
            for value in headers.get_all(http::header::COOKIE) {
                req.append_header("cookie", value.clone())
                    .map_err(|e| e.to_string())?;
            }
            let index = self.route_of("/api/x").ok_or("no route")?;
            let route = self.app.dispatch().routes().get(index).ok_or("no route")?;
            let mut up = req.clone();
            self.app
                .rewrite_upstream(
                    &req,
                    &mut up,
                    &Upstream {
                        route,
                        path: "/api/x",
                        bearer: None,
                        identity: None,
                        dpop: None,
                        client_ip: None,
                        request_id: "fuzz",
                        member: None,
                    },
                )
                .map_err(|e| e.to_string())?;
            Ok(up
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect())
        })();
        CookieOutcome {
            session,
            upstream_cookies,
            clear_lines,
            store_lines,
        }
    }

    /// The `Set-Cookie` lines that carry the sealed value `sealed` (chunked when long), as a
    /// session is stored.
    pub fn store_lines(&self, sealed: &str) -> Result<Vec<String>, String> {
        crate::session::cookie::CookieAttrs {
            secure: true,
            same_site: crate::config::SameSite::Lax,
        }
        .store(
            COOKIE,
            sealed,
            Duration::from_secs(600),
            &SessionCookies::default(),
        )
        .map_err(|e| e.to_string())
    }

    /// Whether tollgate counts `name` as one of its own cookies (never passed upstream).
    pub fn is_own_cookie(&self, name: &str) -> bool {
        cookie::is_own_cookie(name, COOKIE)
    }

    // --- sealed sessions ------------------------------------------------------------------

    /// A request with these `Cookie` header values (and the CSRF header) on an
    /// `auth = "required"` route, decided as the hot path does.
    pub fn session_open(&self, cookie_headers: &[&str]) -> SessionOutcome {
        let mut pairs: Vec<(&str, &str)> = cookie_headers.iter().map(|c| ("cookie", *c)).collect();
        pairs.push(("x-csrf", "1"));
        let headers = Self::headers(&pairs);
        let method = Method::GET;
        let facts = Self::facts(&method, None, &headers, None);
        let gate = self.app.dispatch().gate();
        let found = self.runtime.block_on(gate.sessions().open(&facts));
        let sealed = found
            .present
            .value()
            .map(Cow::into_owned)
            .map_err(|e| e.to_string());
        let opened = gate
            .sessions()
            .session(&found.payload, &facts)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let decided = self.runtime.block_on(gate.decide(
            crate::proxy::gate::Policy::auth(RouteAuth::Required),
            &facts,
            &self.providers,
        ));
        match decided {
            Ok(grant) => SessionOutcome {
                sealed,
                opened,
                bearer: grant.bearer,
                refused: None,
                set_cookies: grant.set_cookies,
            },
            Err(reply) => SessionOutcome {
                sealed,
                opened,
                bearer: None,
                refused: Some(ReplyParts::of(&reply)),
                set_cookies: Vec::new(),
            },
        }
    }

    /// `payload` sealed for the session cookie with the session key, as if it were a session
    /// (the `Cookie` header value: `NAME=sealed`, chunked when long).
    pub fn seal_payload(&self, payload: &[u8]) -> Option<String> {
        let sealed = self.sealer.seal(payload, COOKIE.as_bytes()).ok()?;
        Some(self.browser_header(&self.store_lines(&sealed).ok()?))
    }

    /// A real session sealed into its `Cookie` header value (for seeds).
    pub fn sealed_session(&self, session: &Session<'_>) -> Option<String> {
        let lines = self
            .codec
            .set_cookie_lines(session, &SessionCookies::default(), NOW)
            .ok()?;
        Some(self.browser_header(&lines))
    }

    /// The `Cookie` header a browser sends back for `Set-Cookie` lines.
    pub fn browser_header(&self, lines: &[String]) -> String {
        lines
            .iter()
            .filter(|l| !l.contains("Max-Age=0"))
            .filter_map(|l| l.split(';').next())
            .collect::<Vec<_>>()
            .join("; ")
    }

    // --- /login, /callback, /logout queries and return_to ---------------------------------

    /// `GET /login?{query}` with these `Cookie` and `Accept` headers.
    pub fn login(
        &self,
        query: Option<&str>,
        cookie: Option<&str>,
        accept: Option<&str>,
    ) -> ReplyParts {
        Self::get(query, cookie, accept, |facts| {
            // `par = "never"` in the harness config: nothing leaves the process.
            match self.runtime.block_on(self.oidc.login(facts)) {
                Ok(reply) => ReplyParts::of(&reply),
                Err(fault) => ReplyParts::of(&Reply::from(fault)),
            }
        })
    }

    /// Calls `f` with the facts of a `GET` with this query and these `Cookie` and `Accept`
    /// headers.
    fn get<R>(
        query: Option<&str>,
        cookie: Option<&str>,
        accept: Option<&str>,
        f: impl FnOnce(&Facts<'_>) -> R,
    ) -> R {
        let headers = Self::headers(&Self::pairs(cookie, accept));
        f(&Self::facts(&Method::GET, query, &headers, None))
    }

    /// The `return_to` a login cookie named `name` with value `value` carries, if it opens.
    pub fn login_return_to(&self, name: &str, value: &str) -> Option<String> {
        LoginState::open(&self.sealer, name, Some(value), NOW)
            .ok()
            .map(|s| s.return_to)
    }

    /// Where `/login?return_to={raw}` (already query-decoded) sends the browser after login.
    pub fn safe_return_to(raw: Option<&str>) -> String {
        return_to::safe_return_to(raw)
    }

    /// `GET {callback_path}?{query}` with these `Cookie` and `Accept` headers.
    pub fn callback(
        &self,
        query: Option<&str>,
        cookie: Option<&str>,
        accept: Option<&str>,
    ) -> ReplyParts {
        let reply = Self::get(query, cookie, accept, |facts| {
            self.runtime.block_on(
                self.oidc
                    .callback(facts, self.app.dispatch().gate().sessions()),
            )
        });
        ReplyParts::of(&reply)
    }

    /// `/logout` (`POST` with the CSRF header when `post`, else `GET`), then
    /// `GET /logout/continue` with the cookies the first answer set.
    pub fn logout(
        &self,
        post: bool,
        query: Option<&str>,
        cookie: Option<&str>,
        accept: Option<&str>,
    ) -> (ReplyParts, ReplyParts) {
        let mut pairs = Self::pairs(cookie, accept);
        if post {
            pairs.push(("x-csrf", "1"));
        }
        let headers = Self::headers(&pairs);
        let method = if post { Method::POST } else { Method::GET };
        let facts = Self::facts(&method, query, &headers, None);
        let first = match self.runtime.block_on(
            self.oidc
                .logout(&facts, self.app.dispatch().gate().sessions()),
        ) {
            Ok(reply) => ReplyParts::of(&reply),
            Err(fault) => ReplyParts::of(&Reply::from(fault)),
        };
        let jar = self.browser_header(&first.set_cookies);
        let headers = Self::headers(&[("cookie", jar.as_str())]);
        let method = Method::GET;
        let facts = Self::facts(&method, None, &headers, None);
        let second = match self.oidc.logout_continue(&facts) {
            Ok(reply) => ReplyParts::of(&reply),
            Err(fault) => ReplyParts::of(&Reply::from(fault)),
        };
        (first, second)
    }

    fn pairs<'a>(cookie: Option<&'a str>, accept: Option<&'a str>) -> Vec<(&'static str, &'a str)> {
        let mut pairs = Vec::new();
        if let Some(c) = cookie {
            pairs.push(("cookie", c));
        }
        if let Some(a) = accept {
            pairs.push(("accept", a));
        }
        pairs
    }

    // --- provider JSON --------------------------------------------------------------------

    /// A token endpoint's 2xx body, read as the code exchange and refresh read it; when it is
    /// accepted, the `Authorization` value for its access token and the `Set-Cookie` lines of
    /// a session refreshed with it.
    pub fn token_response(&self, body: &[u8]) -> Result<(HeaderValue, Vec<String>), String> {
        let tokens =
            token_client::parse_token_response(body, "Bearer").map_err(|e| e.to_string())?;
        let bearer = crate::proxy::headers::bearer_value(&tokens.access_token)
            .map_err(|e| format!("accepted tokens, but: {e}"))?;
        let mut session = fixture::session(NOW - 10, "old");
        refresh::apply(&mut session, &tokens, NOW);
        let lines = self
            .codec
            .set_cookie_lines(&session, &SessionCookies::default(), NOW)
            .unwrap_or_default();
        Ok((bearer, lines))
    }

    /// A token endpoint's error body, as the provider's error code tollgate keeps.
    pub fn token_error(body: &[u8]) -> String {
        token_client::provider_error(body)
    }

    /// A discovery document for [`ISSUER`] with no endpoint set in the config.
    pub fn discovery(&self, body: &[u8]) -> Result<MetadataOutcome, String> {
        let mut cfg = self.config.oidc.clone();
        cfg.endpoints = EndpointOverrides::default();
        let m = discovery::metadata_from_document(body, &cfg).map_err(|e| e.to_string())?;
        let mut urls = vec![
            m.authorization_endpoint.to_string(),
            m.token_endpoint.to_string(),
            m.jwks_uri.to_string(),
        ];
        urls.extend(m.end_session_endpoint.iter().map(|u| u.to_string()));
        urls.extend(m.revocation_endpoint.iter().map(|u| u.to_string()));
        Ok(MetadataOutcome {
            issuer: m.issuer,
            urls,
            id_token_algs: m.id_token_algs.iter().map(|a| format!("{a:?}")).collect(),
        })
    }

    /// A JWKS document, and whether it has a key for a token with this `kid` and `alg`.
    pub fn jwks(body: &[u8], kid: Option<&str>, alg: &str) -> Result<bool, String> {
        let set = Jwks::parse(body, "fuzz").map_err(|e| e.to_string())?;
        Ok(alg
            .parse::<jsonwebtoken::Algorithm>()
            .ok()
            .and_then(|alg| set.find(kid, alg))
            .is_some())
    }

    // --- ID tokens and logout tokens --------------------------------------------------------

    /// An ID token checked as `/callback` checks it (with the login's `nonce`) or a refresh
    /// does (`None`), against the harness provider's keys; `Ok` with its `sub`.
    pub fn id_token(
        &self,
        token: &str,
        nonce: Option<&str>,
        access_token: &str,
    ) -> Result<String, String> {
        let provider = self.oidc.provider().ok_or("no provider")?;
        self.runtime
            .block_on(
                self.oidc
                    .validate_id_token(token, &provider, nonce, access_token, NOW),
            )
            .map(|c| c.sub)
            .map_err(|e| e.to_string())
    }

    /// A back-channel logout request body (a form with `logout_token`), checked as the
    /// endpoint checks it, without the replay check (`Ok` for a token it would act on).
    pub fn logout_token(&self, body: &[u8]) -> Result<(), String> {
        let headers = HeaderMap::new();
        let method = Method::POST;
        let facts = Self::facts(&method, None, &headers, Some(body));
        let provider = self.oidc.provider().ok_or("no provider")?;
        self.runtime
            .block_on(self.oidc.logout_claims(&facts, &provider))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `POST {backchannel_logout_path}` with `body`: the whole endpoint, replay check and
    /// revocation included.
    pub fn backchannel_logout(&self, body: &[u8]) -> ReplyParts {
        let headers = HeaderMap::new();
        let method = Method::POST;
        let facts = Self::facts(&method, None, &headers, Some(body));
        match self.runtime.block_on(
            self.oidc
                .backchannel_logout(&facts, self.app.dispatch().gate().sessions()),
        ) {
            Ok(reply) => ReplyParts::of(&reply),
            Err(fault) => ReplyParts::of(&Reply::from(fault)),
        }
    }
}

// --- the config file and TOLLGATE__* overrides ----------------------------------------------

/// Config text with these overrides (never the process environment), loaded as `Config::load`
/// loads a file.
pub fn config(text: &str, overrides: Vec<(String, String)>) -> Result<Config, String> {
    Config::from_toml_str(text, Path::new("fuzz.toml"), overrides).map_err(|e| e.to_string())
}

/// The header values tollgate builds from a validated config: every `Set-Cookie` line (session
/// cookies and their chunks, deletions, login and pending-logout cookies), the `Authorization`
/// of the token requests, and each route's `Host`.
pub fn config_header_values(config: &Config) -> Result<Vec<String>, String> {
    let codec = SessionCodec::new(&config.session, config.server.secure_cookies);
    let session = fixture::session(NOW - 10, "at");
    let mut lines = codec
        .set_cookie_lines(&session, &SessionCookies::default(), NOW)
        .map_err(|e| e.to_string())?;
    let header = lines
        .iter()
        .filter_map(|l| l.split(';').next())
        .collect::<Vec<_>>()
        .join("; ");
    let found = SessionCookies::scan(codec.cookie_name(), [header.as_str()]);
    lines.extend(codec.clear_cookie_lines(&found));
    let name = cookie::login_cookie_name(codec.cookie_name(), &login::random_token());
    lines.push(login::login_cookie_line(
        &name,
        "v",
        login::LOGIN_TTL,
        config.server.secure_cookies,
    ));
    lines.push(login::login_cookie_line(
        &cookie::logout_cookie_name(codec.cookie_name()),
        "v",
        Duration::ZERO,
        config.server.secure_cookies,
    ));
    let auth = ClientAuth::new(&config.oidc).map_err(|e| e.to_string())?;
    let creds = auth
        .credentials(config.oidc.issuer.as_str(), NOW)
        .map_err(|e| e.to_string())?;
    lines.extend(creds.authorization);
    lines.extend(config.routes.iter().map(|r| r.host.clone()));
    Ok(lines)
}

/// Whether `path` is a request path tollgate can route as written: it passes the target check
/// unchanged (no empty or dot segment, escape, `;params`, backslash or control character).
pub fn is_routable_as_written(path: &str) -> bool {
    crate::target::check(path.as_bytes(), path)
        .is_ok_and(|t| t.path == path && t.canonical.is_none())
}
