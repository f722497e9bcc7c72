//! The admin API (`[admin]`): list and end server-side sessions, on a listener of its own.
//!
//! - `GET /sessions?sub=…`: the user's live sessions — id (the handle's id, never the cookie
//!   value), provider, created, last seen (moved at most every half idle window), expires,
//!   browser family and client address of the login;
//! - `DELETE /sessions/{id}`: ends one session; `404` when there is no such live session;
//! - `DELETE /sessions?sub=…`: ends all of the user's sessions.
//!
//! `sub` is a user of the default provider; `&provider=NAME` names another's.
//!
//! Ending a session revokes it on every replica (the store's pub/sub: within a moment),
//! removes its record, and revokes its refresh token at the provider, as `/logout` does.
//! Every call needs `Authorization: Bearer <token>` (`[admin] token_file`, re-read when it
//! changes like the other secret files; compared in constant time: `401` otherwise) and is logged with the caller's address and a request id; each is
//! counted in `tollgate_admin_actions_total{action, outcome}`. The decision ([`Admin::handle`])
//! takes plain values, so unit tests drive it without a listener.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::config::Secret;
use crate::oidc::Providers;
use crate::ops::metrics::Metrics;
use crate::proxy::request_id;
use crate::session::record::Record;
use crate::sessions::Sessions;

/// The admin API, built once from the config.
pub(crate) struct Admin {
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) providers: Arc<Providers>,
    /// The bearer token (`[admin] token_file`, replaced when the file changes).
    pub(crate) token: std::sync::RwLock<Secret>,
    pub(crate) metrics: Metrics,
}

/// One admin request, as plain values.
#[derive(Debug)]
pub(crate) struct AdminRequest<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) authorization: Option<&'a [u8]>,
    pub(crate) request_id: &'a str,
    pub(crate) client: Option<IpAddr>,
    pub(crate) now: u64,
}

/// The answer: a status and a JSON body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AdminReply {
    pub(crate) status: u16,
    pub(crate) body: String,
}

#[derive(Serialize)]
struct Listed<'a> {
    id: String,
    provider: &'a str,
    sub: &'a str,
    created_at: u64,
    last_seen: u64,
    expires_at: u64,
    user_agent: &'a str,
    client: &'a str,
}

fn reply(status: u16, body: serde_json::Value) -> AdminReply {
    AdminReply {
        status,
        body: body.to_string(),
    }
}

fn error(status: u16, code: &str, message: &str) -> AdminReply {
    reply(
        status,
        serde_json::json!({ "error": code, "message": message }),
    )
}

/// Whether `given` is the token, in time that tells nothing about either (not even the
/// length): their SHA-256 digests are compared in constant time.
fn same(given: &[u8], token: &[u8]) -> bool {
    let digest = |v: &[u8]| ring::digest::digest(&ring::digest::SHA256, v);
    let (a, b) = (digest(given), digest(token));
    a.as_ref()
        .iter()
        .zip(b.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The `provider` of a query (the default provider without one).
fn provider_of(query: Option<&str>) -> String {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
        .ok()
        .and_then(|q| {
            q.into_iter()
                .find(|(k, v)| k == "provider" && !v.is_empty())
        })
        .map_or_else(|| crate::config::DEFAULT_PROVIDER.to_string(), |(_, v)| v)
}

/// `400` for a `provider` that is none of the configured ones.
fn unknown_provider(providers: &Providers) -> AdminReply {
    error(
        400,
        "unknown_provider",
        &format!("unknown provider; the providers are: {}", providers.names()),
    )
}

/// The `sub` of a query, if it has a non-empty one.
fn sub_of(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
        .ok()?
        .into_iter()
        .find(|(k, v)| k == "sub" && !v.is_empty())
        .map(|(_, v)| v)
}

impl Admin {
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let Some(given) = authorization
            .filter(|a| a.len() > 7 && a[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|a| &a[7..])
        else {
            return false;
        };
        match self.token.read() {
            Ok(token) => same(given.trim_ascii(), token.expose().as_bytes()),
            Err(_) => false,
        }
    }

    /// Uses `token` from the next call on (`[admin] token_file` changed); `false` when it is
    /// the token in use already.
    pub(crate) fn replace_token(&self, token: &Secret) -> bool {
        let Ok(mut current) = self.token.write() else {
            return false;
        };
        if current.expose() == token.expose() {
            return false;
        }
        *current = token.clone();
        true
    }

    /// Decides one admin request.
    pub(crate) async fn handle(&self, r: &AdminRequest<'_>) -> AdminReply {
        let rid = r.request_id;
        let client = r.client.map(|c| c.to_string()).unwrap_or_default();
        let action = match (r.method, r.path) {
            (&Method::GET, "/sessions") => "list",
            (&Method::DELETE, "/sessions") => "revoke_user",
            (&Method::DELETE, p) if p.starts_with("/sessions/") => "revoke",
            (_, "/sessions") => {
                return error(405, "method_not_allowed", "use GET or DELETE");
            }
            _ => return error(404, "not_found", "the admin API serves /sessions"),
        };
        if !self.authorized(r.authorization) {
            tracing::warn!(
                request_id = rid,
                client,
                action,
                "admin: refused (no valid token)"
            );
            self.metrics.admin_action(action, "unauthorized");
            return error(401, "unauthorized", "a valid bearer token is required");
        }
        let (outcome, answer) = match action {
            "list" => self.list(r).await,
            "revoke_user" => self.revoke_user(r).await,
            _ => self.revoke(r).await,
        };
        tracing::info!(request_id = rid, client, action, outcome, "admin");
        self.metrics.admin_action(action, outcome);
        answer
    }

    async fn list(&self, r: &AdminRequest<'_>) -> (&'static str, AdminReply) {
        let Some(sub) = sub_of(r.query) else {
            return (
                "bad_request",
                error(400, "invalid_request", "sub is required"),
            );
        };
        let provider = provider_of(r.query);
        if self.providers.get(&provider).is_none() {
            return ("bad_request", unknown_provider(&self.providers));
        }
        match self.sessions.of_user(&provider, &sub, false, r.now).await {
            Ok(records) => {
                let listed: Vec<Listed<'_>> = records.iter().map(|rec| self.listed(rec)).collect();
                ("ok", reply(200, serde_json::json!({ "sessions": listed })))
            }
            Err(e) => self.unavailable(r, &e),
        }
    }

    fn listed<'r>(&self, rec: &'r Record) -> Listed<'r> {
        let s = &rec.session;
        Listed {
            id: crate::sessions::records::id_hex(s.id),
            provider: s.provider_name(),
            sub: &s.claims.sub,
            created_at: s.created_at,
            last_seen: s.last_seen,
            expires_at: self.sessions.codec().expires_at(s),
            user_agent: &rec.meta.user_agent,
            client: &rec.meta.client,
        }
    }

    async fn revoke(&self, r: &AdminRequest<'_>) -> (&'static str, AdminReply) {
        let hex = r.path.trim_start_matches("/sessions/");
        let id = match u128::from_str_radix(hex, 16) {
            Ok(id) if hex.len() == 32 => id,
            _ => return ("not_found", error(404, "not_found", "no such session")),
        };
        let found = match self.sessions.find(id, r.now).await {
            Ok(Some(found)) => found,
            Ok(None) => return ("not_found", error(404, "not_found", "no such session")),
            Err(e) => return self.unavailable(r, &e),
        };
        let ended = std::slice::from_ref(&found);
        if let Err(e) = self.sessions.end_records(ended, "admin", r.now).await {
            return self.unavailable(r, &e);
        }
        self.providers
            .end_tokens(&found.session, r.request_id)
            .await;
        ("ok", reply(200, serde_json::json!({ "ended": 1 })))
    }

    async fn revoke_user(&self, r: &AdminRequest<'_>) -> (&'static str, AdminReply) {
        let Some(sub) = sub_of(r.query) else {
            return (
                "bad_request",
                error(400, "invalid_request", "sub is required"),
            );
        };
        let provider = provider_of(r.query);
        if self.providers.get(&provider).is_none() {
            return ("bad_request", unknown_provider(&self.providers));
        }
        match self
            .sessions
            .end_user(&provider, &sub, r.now + 1, "admin", r.now)
            .await
        {
            Ok(ended) => {
                self.providers.end_all_tokens(&ended, r.request_id).await;
                (
                    "ok",
                    reply(200, serde_json::json!({ "ended": ended.len() })),
                )
            }
            Err(e) => self.unavailable(r, &e),
        }
    }

    fn unavailable(
        &self,
        r: &AdminRequest<'_>,
        e: &crate::store::StoreError,
    ) -> (&'static str, AdminReply) {
        tracing::error!(request_id = r.request_id, error = %e, "admin: the session store cannot be reached");
        (
            "store_unavailable",
            error(
                503,
                "store_unavailable",
                "the session store cannot be reached; retry shortly",
            ),
        )
    }
}

/// The admin listener's HTTP side.
pub(crate) struct AdminApp(pub(crate) Arc<Admin>);

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if !session.is_body_empty() {
            // The API takes no body: one that comes is not read, and the connection closes.
            session.set_keepalive(None);
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header();
        let request_id = request_id::from_headers(&req.headers);
        let answer = self
            .0
            .handle(&AdminRequest {
                method: &req.method,
                path: req.uri.path(),
                query: req.uri.query(),
                authorization: req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
                request_id: &request_id,
                client,
                now: crate::unix_now(),
            })
            .await;
        let mut builder = Response::builder()
            .status(answer.status)
            .header("content-type", "application/json")
            .header("cache-control", "no-store")
            .header(request_id::HEADER, &request_id)
            .header("content-length", answer.body.len());
        if answer.status == 401 {
            builder = builder.header("www-authenticate", "Bearer");
        }
        if answer.status == 503 {
            builder = builder.header("retry-after", "1");
        }
        builder.body(answer.body.into_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::oidc::discovery::ProviderStore;
    use crate::oidc::Oidc;
    use crate::request::Facts;
    use crate::session::fixture;
    use crate::session::revocations::Revocations;
    use crate::session::SessionCodec;
    use crate::sessions::csrf::CsrfPolicy;
    use http::HeaderMap;

    const TOKEN: &str = "admin-token-for-the-unit-tests-0123456789";
    const NOW: u64 = 1_700_000_000;

    /// The admin API over an in-process store (`storage = "store"` without `[store]`).
    fn admin() -> Admin {
        let config = Config::from_toml_str(
            "[server]\nlisten = [\"127.0.0.1:1\"]\npublic_url = \"http://127.0.0.1:1\"\n\
             [oidc]\nissuer = \"http://127.0.0.1:1/as\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
             [session]\nkeys = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\nstorage = \"store\"\n\
             [[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:2\"\n",
            std::path::Path::new("admin.toml"),
            [],
        )
        .unwrap();
        let metrics = Metrics::new();
        let http = crate::oidc::http::http_client(&config).unwrap();
        let oidc = Oidc::new(
            &config,
            http,
            Arc::new(ProviderStore::default()),
            None,
            metrics.clone(),
        )
        .unwrap();
        let sessions = Sessions::new(
            SessionCodec::new(&config.session, false),
            Arc::new(Revocations::default()),
            None,
            CsrfPolicy::new(&config.csrf, &config.server.public_origin),
            metrics.clone(),
            config.session.storage,
        );
        Admin {
            sessions: Arc::new(sessions),
            providers: Arc::new(Providers::one(Arc::new(oidc))),
            token: std::sync::RwLock::new(Secret::new(TOKEN.into())),
            metrics,
        }
    }

    async fn call(a: &Admin, method: Method, path: &str, token: Option<&str>) -> AdminReply {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let auth = token.map(|t| format!("Bearer {t}"));
        a.handle(&AdminRequest {
            method: &method,
            path,
            query,
            authorization: auth.as_deref().map(str::as_bytes),
            request_id: "rid",
            client: Some(IpAddr::from([127, 0, 0, 1])),
            now: NOW + 1,
        })
        .await
    }

    /// Starts a session of `sub` in the in-process store; its id.
    async fn start(a: &Admin, sub: &str) -> u128 {
        start_with(a, sub, &HeaderMap::new()).await.0
    }

    /// As [`start`], in a browser that sends `headers`; also the `Set-Cookie` lines.
    async fn start_with(a: &Admin, sub: &str, headers: &HeaderMap) -> (u128, Vec<String>) {
        let mut s = fixture::session(NOW, "at");
        s.claims.sub = sub.to_string().into();
        s.id = rand::random();
        let id = s.id;
        let facts = Facts {
            method: &Method::GET,
            query: None,
            headers,
            body: None,
            request_id: "rid",
            now: NOW,
            client: Some(IpAddr::from([10, 0, 0, 7])),
        };
        let lines = a.sessions.start(s, &facts).await.unwrap();
        (id, lines)
    }

    /// A new login in a browser that had a stored session ends that session.
    #[tokio::test]
    async fn a_new_login_ends_the_session_it_replaces() {
        let a = admin();
        let (first, lines) = start_with(&a, "alice", &HeaderMap::new()).await;
        let pair = lines[0].split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::COOKIE, pair.parse().unwrap());
        let (second, _) = start_with(&a, "alice", &headers).await;
        let left = a
            .sessions
            .of_user("default", "alice", false, NOW + 1)
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].session.id, second);
        assert!(a.sessions.find(first, NOW + 1).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn lists_and_ends_sessions_with_the_token_only() {
        let a = admin();
        let first = start(&a, "alice").await;
        let second = start(&a, "alice").await;
        start(&a, "bob").await;

        for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let r = call(&a, Method::GET, "/sessions?sub=alice", token).await;
            assert_eq!(r.status, 401, "{token:?}");
        }
        let r = call(&a, Method::GET, "/sessions?sub=alice", Some(TOKEN)).await;
        assert_eq!(r.status, 200);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let listed = body["sessions"].as_array().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0]["client"], "10.0.0.7");
        assert_eq!(listed[0]["provider"], "default");
        assert!(!r.body.contains("\"at\""), "no token: {}", r.body);
        // Another provider's users by name; an unknown provider is refused.
        let r = call(
            &a,
            Method::GET,
            "/sessions?sub=alice&provider=default",
            Some(TOKEN),
        )
        .await;
        assert_eq!(r.status, 200);
        for method in [Method::GET, Method::DELETE] {
            let r = call(&a, method, "/sessions?sub=alice&provider=nope", Some(TOKEN)).await;
            assert_eq!(r.status, 400);
            assert!(r.body.contains("unknown_provider"), "{}", r.body);
        }

        assert_eq!(
            call(&a, Method::GET, "/sessions", Some(TOKEN)).await.status,
            400
        );
        assert_eq!(
            call(&a, Method::PUT, "/sessions", Some(TOKEN)).await.status,
            405
        );
        assert_eq!(
            call(&a, Method::GET, "/other", Some(TOKEN)).await.status,
            404
        );
        let missing = format!("/sessions/{}", "0".repeat(32));
        assert_eq!(
            call(&a, Method::DELETE, &missing, Some(TOKEN)).await.status,
            404
        );
        assert_eq!(
            call(&a, Method::DELETE, "/sessions/xyz", Some(TOKEN))
                .await
                .status,
            404
        );

        let one = format!("/sessions/{first:032x}");
        assert_eq!(
            call(&a, Method::DELETE, &one, Some(TOKEN)).await.status,
            200
        );
        assert_eq!(
            call(&a, Method::DELETE, &one, Some(TOKEN)).await.status,
            404
        );
        let left = a
            .sessions
            .of_user("default", "alice", false, NOW + 1)
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].session.id, second);

        let r = call(&a, Method::DELETE, "/sessions?sub=alice", Some(TOKEN)).await;
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"ended":1}"#));
        assert!(a
            .sessions
            .of_user("default", "alice", false, NOW + 1)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            a.sessions
                .of_user("default", "bob", false, NOW + 1)
                .await
                .unwrap()
                .len(),
            1
        );
        let text = String::from_utf8(a.metrics.render()).unwrap();
        assert!(
            text.contains(
                r#"tollgate_admin_actions_total{action="list",outcome="unauthorized"} 3"#
            ),
            "{text}"
        );
        assert!(text.contains("tollgate_sessions_active 1"), "{text}");
    }
}
