//! Forward-auth (`[forward_auth]`): tollgate as the authentication service of an ingress that
//! already runs. nginx (`auth_request`), Traefik (`ForwardAuth`) and Envoy (external
//! authorization) ask `GET {path}` about each request they are about to proxy; tollgate decides
//! it exactly as if it had arrived itself (same route, auth mode, CSRF and `Origin` rules on
//! the original method, claim rules, step-up, refresh) and answers `200` with the
//! `Authorization` (and identity headers) for the ingress to copy into the request it proxies,
//! or the usual `401`/`403` JSON. The browser still never sees a token.
//!
//! This file reads the description of the original request and writes the `200`; the
//! decision itself is the decision core's ([`super::gate::Gate::decide`]), called from
//! [`super::dispatch`].
//!
//! The description is trusted only from `trusted_proxies`. From any other address the
//! `X-Original-*` / `X-Forwarded-*` headers are ignored and the request is decided as a plain
//! request to `{path}` itself, which hands out no token: otherwise a client could name a
//! lenient route while the ingress proxies it to a strict one (oauth2-proxy's GHSA-7x63). For
//! the same reason a description is refused (`400`) when it is ambiguous: a header given twice,
//! or both nginx's `X-Original-*` and Traefik's/Envoy's `X-Forwarded-Uri`/`-Method`, since an
//! ingress sets only its own family and passes the client's others through.

use std::net::IpAddr;

use http::{HeaderMap, Method};

use super::gate::Grant;
use crate::config::ForwardAuthConfig;
use crate::reply::{Fault, Reply};

/// The longest original URI taken (an ingress's own limit is usually lower).
const MAX_URI: usize = 8192;

/// The request an ingress asks about.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Original {
    pub(crate) method: Method,
    /// Origin-form: `/path?query`.
    pub(crate) target: String,
    /// `scheme://host` the browser used, for a DPoP proof's `htu`.
    pub(crate) origin: String,
    /// Described by a trusted proxy: only then does a `200` carry a token.
    pub(crate) trusted: bool,
}

impl Original {
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("/")
    }

    pub(crate) fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// `[forward_auth]` at run time.
#[derive(Debug)]
pub(crate) struct ForwardAuth {
    config: ForwardAuthConfig,
    public_origin: String,
}

impl ForwardAuth {
    pub(crate) fn new(config: ForwardAuthConfig, public_origin: &str) -> Self {
        ForwardAuth {
            config,
            public_origin: public_origin.trim_end_matches('/').to_string(),
        }
    }

    /// Whether a connection accepted at `local` came in on `[forward_auth] listen`, the only
    /// listener that serves this endpoint.
    pub(crate) fn listens_on(&self, local: std::net::SocketAddr) -> bool {
        self.config.listens_on(local)
    }

    /// Whether a request to `path` is for this endpoint: `{path}` itself (nginx, Traefik) or
    /// below it (Envoy's `path_prefix` form, `{path}{original path}`).
    pub(crate) fn serves(&self, path: &str) -> bool {
        path.strip_prefix(self.config.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The request to decide: the one a trusted proxy describes, else a plain request to the
    /// endpoint itself. `method`, `path` and `query` are this request's own: Envoy describes
    /// the original request by its method and by the path after `{path}`
    /// (`/auth/api/x?y` for `/api/x?y`), nginx and Traefik in headers on a `GET {path}`.
    pub(crate) fn describe(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        request_id: &str,
    ) -> Result<Original, Fault> {
        let suffix = path.strip_prefix(self.config.path.as_str()).unwrap_or("");
        if !peer.is_some_and(|ip| self.config.trusts(ip)) {
            if described(headers) || !suffix.is_empty() {
                tracing::warn!(
                    request_id,
                    peer = ?peer,
                    "forward-auth: a description of another request from an address outside forward_auth.trusted_proxies, ignored"
                );
            }
            return Ok(Original {
                method: method.clone(),
                target: path.to_string(),
                origin: self.public_origin.clone(),
                trusted: false,
            });
        }
        let read = if suffix.is_empty() {
            if method != Method::GET && method != Method::HEAD {
                return Err(Fault::MethodNotAllowed);
            }
            read(headers, &self.public_origin)
        } else {
            envoy(method, suffix, query, headers, &self.public_origin)
        };
        read.map_err(|problem| {
            tracing::info!(
                request_id,
                problem,
                "forward-auth: the description of the original request is refused"
            );
            Fault::BadRequest
        })
    }

    /// The `200` for an allowed request: the credential and identity for the ingress to copy
    /// (only when a trusted proxy described the request), and the session's new cookie lines.
    ///
    /// Every header the ingress copies is sent, empty when there is nothing to say: an
    /// ingress that copies only the headers an answer has (Envoy) would otherwise pass the
    /// client's own `X-Auth-Request-Groups` or `Authorization` through. The client's
    /// `Authorization` and `DPoP` are kept (not answered) only on a route with
    /// `keep_authorization` and no token of tollgate's, as when tollgate proxies.
    pub(crate) fn allowed(
        &self,
        original: &Original,
        grant: Grant,
        keep_authorization: bool,
        request_id: &str,
    ) -> Result<Reply, Fault> {
        let mut reply = Reply::empty(200).with_outcome("forward_auth");
        if !original.trusted {
            return Ok(reply.with_cookies(grant.set_cookies));
        }
        let bearer = match grant.bearer.as_ref() {
            Some(v) => Some(v.to_str().map_err(|_| Fault::Internal)?.to_string()),
            None if keep_authorization => None,
            None => Some(String::new()),
        };
        let proof = match grant.dpop.as_deref() {
            Some(dpop) => {
                let htu = format!("{}{}", original.origin, original.path());
                let proof = dpop
                    .key
                    .proof_with_ath(
                        original.method.as_str(),
                        &htu,
                        Some(&dpop.ath),
                        None,
                        crate::unix_now(),
                    )
                    .map_err(|e| {
                        tracing::error!(request_id, error = %e, "forward-auth: no DPoP proof");
                        Fault::Internal
                    })?;
                Some(proof)
            }
            None if bearer.is_some() => Some(String::new()),
            None => None,
        };
        if let Some(value) = bearer {
            reply = reply.with_header("authorization", value);
        }
        if let Some(proof) = proof {
            reply = reply.with_header("dpop", proof);
        }
        let who = grant.identity.as_deref();
        for (name, value) in [
            ("x-auth-request-user", who.map(|w| &w.user)),
            ("x-auth-request-email", who.and_then(|w| w.email.as_ref())),
            ("x-auth-request-groups", who.and_then(|w| w.groups.as_ref())),
        ] {
            let text = value.and_then(|v| v.to_str().ok()).unwrap_or("");
            reply = reply.with_header(name, text.to_string());
        }
        Ok(reply.with_cookies(grant.set_cookies))
    }
}

/// nginx's and Traefik's/Envoy's names for the original request's parts. ingress-nginx sends
/// `X-Original-URL` (`scheme://host/path?query`), and `X-Original-URI` only with
/// `auth-method`.
const ORIGINAL_URI: &str = "x-original-uri";
const ORIGINAL_URL: &str = "x-original-url";
const ORIGINAL_METHOD: &str = "x-original-method";
const FORWARDED_URI: &str = "x-forwarded-uri";
const FORWARDED_METHOD: &str = "x-forwarded-method";
const FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Whether `headers` describe another request at all.
fn described(headers: &HeaderMap) -> bool {
    [
        ORIGINAL_URI,
        ORIGINAL_METHOD,
        FORWARDED_URI,
        FORWARDED_METHOD,
    ]
    .iter()
    .any(|n| headers.contains_key(*n))
}

/// The header `name` as text, when given once; twice or more is ambiguous.
fn once<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, &'static str> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("a header of the description is given twice");
    }
    first
        .to_str()
        .map(|v| Some(v.trim()))
        .map_err(|_| "a header of the description is not text")
}

/// The original request in Envoy's form: its own method, the path after `{path}`, the query;
/// the browser's origin from `X-Forwarded-Proto` and `Host` (Envoy keeps the original
/// `:authority`).
fn envoy(
    method: &Method,
    suffix: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    public_origin: &str,
) -> Result<Original, &'static str> {
    if described(headers) {
        return Err("both the path and X-Original-*/X-Forwarded-Uri describe the request");
    }
    let target = match query {
        Some(q) => format!("{suffix}?{q}"),
        None => suffix.to_string(),
    };
    if target.len() > MAX_URI {
        return Err("the original URI is longer than 8 KiB");
    }
    let origin = match (once(headers, FORWARDED_PROTO)?, once(headers, "host")?) {
        (Some(proto @ ("http" | "https")), Some(host))
            if host.parse::<http::uri::Authority>().is_ok() =>
        {
            format!("{proto}://{host}")
        }
        _ => public_origin.to_string(),
    };
    Ok(Original {
        method: method.clone(),
        target,
        origin,
        trusted: true,
    })
}

/// `X-Original-URL` (ingress-nginx's `$scheme://$http_host$request_uri`) split as sent,
/// nothing resolved or decoded: its origin, and its target for [`crate::target::check`] to
/// judge as it judges a request line. (A URL parser would resolve `..` and `\\` first, and
/// would read a `?` or `@` in a client's `Host` as the end of the host.)
fn split_url(url: &str) -> Result<(String, &str), &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("X-Original-URL is not an absolute URL")?;
    if scheme != "http" && scheme != "https" {
        return Err("X-Original-URL is not http or https");
    }
    let slash = rest.find('/').ok_or("X-Original-URL has no path")?;
    let (host, target) = rest.split_at(slash);
    let host_like = |b: u8| b.is_ascii_alphanumeric() || b".:[]-".contains(&b);
    if host.is_empty() || !host.bytes().all(host_like) {
        return Err("X-Original-URL's host is not a host and port");
    }
    Ok((format!("{scheme}://{host}"), target))
}

/// The original request from a trusted proxy's headers.
fn read(headers: &HeaderMap, public_origin: &str) -> Result<Original, &'static str> {
    let (o_uri, o_method) = (
        once(headers, ORIGINAL_URI)?,
        once(headers, ORIGINAL_METHOD)?,
    );
    let o_url = once(headers, ORIGINAL_URL)?.map(split_url).transpose()?;
    let (f_uri, f_method) = (
        once(headers, FORWARDED_URI)?,
        once(headers, FORWARDED_METHOD)?,
    );
    let url_target = o_url.as_ref().map(|(_, target)| *target);
    if let (Some(uri), Some(from_url)) = (o_uri, url_target) {
        // ingress-nginx sends both only when they agree; a client's own X-Original-URI
        // passed through beside the ingress's X-Original-URL would not.
        if uri != from_url {
            return Err("X-Original-URI and X-Original-URL name different requests");
        }
    }
    let o_uri = o_uri.or(url_target);
    let nginx = o_uri.is_some() || o_method.is_some();
    if nginx && (f_uri.is_some() || f_method.is_some()) {
        return Err("both X-Original-* and X-Forwarded-Uri/-Method describe the request");
    }
    let (uri, method) = if nginx {
        (o_uri, o_method)
    } else {
        (f_uri, f_method)
    };
    let uri = uri.ok_or("no X-Original-URI, X-Original-URL or X-Forwarded-Uri")?;
    if !uri.starts_with('/') || uri.len() > MAX_URI || uri.contains('#') {
        return Err("the original URI is not a path (origin-form, at most 8 KiB)");
    }
    // A path and query as a request line would carry them.
    let parsed: http::uri::PathAndQuery =
        uri.parse().map_err(|_| "the original URI does not parse")?;
    let method = match method {
        // nginx sends no method unless told to (`proxy_set_header X-Original-Method
        // $request_method`): a description without one is a GET.
        None => Method::GET,
        Some(m) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| "the original method is not a method")?
        }
    };
    if method == Method::TRACE || method == Method::CONNECT {
        return Err("the original method is TRACE or CONNECT");
    }
    let origin = match (
        once(headers, FORWARDED_PROTO)?,
        once(headers, FORWARDED_HOST)?,
        o_url.as_ref().map(|(origin, _)| origin),
    ) {
        (_, _, Some(origin)) => origin.clone(),
        (Some(proto @ ("http" | "https")), Some(host), None)
            if !host.is_empty() && host.parse::<http::uri::Authority>().is_ok() =>
        {
            format!("{proto}://{host}")
        }
        _ => public_origin.to_string(),
    };
    Ok(Original {
        method,
        target: parsed.as_str().to_string(),
        origin,
        trusted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fa() -> ForwardAuth {
        ForwardAuth::new(
            ForwardAuthConfig {
                listen: "127.0.0.1:9093".parse().unwrap(),
                path: "/auth".into(),
                trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            },
            "https://app.example",
        )
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn describe(pairs: &[(&str, &str)], peer: &str) -> Result<Original, Fault> {
        fa().describe(
            &Method::GET,
            "/auth",
            None,
            &headers(pairs),
            peer.parse().ok(),
            "rid",
        )
    }

    const TRUSTED: &str = "10.1.1.1";

    #[test]
    fn nginx_and_traefik_descriptions_are_read() {
        let o = describe(
            &[
                ("X-Original-URI", "/api/x?a=1"),
                ("X-Original-Method", "POST"),
            ],
            TRUSTED,
        )
        .unwrap();
        assert_eq!(
            (o.method.as_str(), o.path(), o.query()),
            ("POST", "/api/x", Some("a=1"))
        );
        assert_eq!(o.origin, "https://app.example");
        assert!(o.trusted);
        // ingress-nginx: X-Original-URL (and X-Original-URI with auth-method, the same).
        let o = describe(
            &[
                ("X-Original-URL", "https://shop.example/api/u?b=2"),
                ("X-Original-Method", "PUT"),
            ],
            TRUSTED,
        )
        .unwrap();
        assert_eq!(
            (o.method.as_str(), o.target.as_str()),
            ("PUT", "/api/u?b=2")
        );
        assert_eq!(o.origin, "https://shop.example");
        let o = describe(
            &[
                ("X-Original-URL", "https://shop.example/api/u"),
                ("X-Original-URI", "/api/u"),
            ],
            TRUSTED,
        )
        .unwrap();
        assert_eq!(o.target, "/api/u");
        // Dot segments stay for the target check to refuse, as in a request line.
        let o = describe(
            &[("X-Original-URL", "https://shop.example/api/%2e%2e/admin")],
            TRUSTED,
        )
        .unwrap();
        assert_eq!(o.target, "/api/%2e%2e/admin");
        let o = describe(&[("x-original-uri", "/api/y")], TRUSTED).unwrap();
        assert_eq!((o.method, o.target.as_str()), (Method::GET, "/api/y"));
        let o = describe(
            &[
                ("X-Forwarded-Method", "DELETE"),
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-Host", "shop.example:8443"),
                ("X-Forwarded-Uri", "/api/z"),
            ],
            TRUSTED,
        )
        .unwrap();
        assert_eq!(o.method, Method::DELETE);
        assert_eq!(o.origin, "https://shop.example:8443");
        assert_eq!(o.target, "/api/z");
    }

    #[test]
    fn envoy_describes_by_method_and_path_below_the_endpoint() {
        let f = fa();
        assert!(f.serves("/auth") && f.serves("/auth/api/x"));
        assert!(!f.serves("/authx") && !f.serves("/api"));
        let h = headers(&[("host", "shop.example"), ("x-forwarded-proto", "https")]);
        let o = f
            .describe(
                &Method::POST,
                "/auth/api/x",
                Some("a=1"),
                &h,
                "10.0.0.9".parse().ok(),
                "rid",
            )
            .unwrap();
        assert_eq!((o.method, o.target.as_str()), (Method::POST, "/api/x?a=1"));
        assert_eq!(o.origin, "https://shop.example");
        assert!(o.trusted);
        // Both forms at once is ambiguous; a plain form takes GET only.
        let both = headers(&[("x-forwarded-uri", "/public")]);
        assert_eq!(
            f.describe(
                &Method::GET,
                "/auth/api/x",
                None,
                &both,
                "10.0.0.9".parse().ok(),
                "rid"
            ),
            Err(Fault::BadRequest)
        );
        assert_eq!(
            f.describe(
                &Method::POST,
                "/auth",
                None,
                &headers(&[("x-original-uri", "/api")]),
                "10.0.0.9".parse().ok(),
                "rid"
            ),
            Err(Fault::MethodNotAllowed)
        );
        // From elsewhere the path below the endpoint is just a path: no description.
        let o = f
            .describe(
                &Method::GET,
                "/auth/api/x",
                None,
                &h,
                "11.0.0.1".parse().ok(),
                "rid",
            )
            .unwrap();
        assert_eq!((o.target.as_str(), o.trusted), ("/auth/api/x", false));
    }

    /// GHSA-7x63's class: from outside `trusted_proxies` no spelling of the headers counts.
    #[test]
    fn an_untrusted_peer_describes_nothing_whatever_it_sends() {
        for pairs in [
            &[("X-Original-URI", "/public")][..],
            &[("x-original-uri", "/public"), ("x-original-method", "GET")][..],
            &[
                ("X-Forwarded-Uri", "/public"),
                ("X-Forwarded-Method", "GET"),
            ][..],
            &[("X_Original_URI", "/public")][..],
            &[("X-Original-Url", "/public"), ("X-Rewrite-Url", "/public")][..],
        ] {
            for peer in ["127.0.0.1", "11.0.0.1", "::1", "not an address"] {
                let o = describe(pairs, peer).unwrap();
                assert_eq!(o.target, "/auth", "{pairs:?} from {peer}");
                assert!(!o.trusted);
            }
        }
    }

    #[test]
    fn ambiguous_or_bad_descriptions_are_refused() {
        for pairs in [
            // Given twice, in any case.
            &[("X-Original-URI", "/api"), ("x-original-uri", "/public")][..],
            &[("X-Forwarded-Uri", "/api"), ("X-Forwarded-Uri", "/public")][..],
            &[
                ("X-Original-URI", "/api"),
                ("X-Original-Method", "GET"),
                ("X-Original-Method", "POST"),
            ][..],
            // Two families: the ingress sets one, the client the other.
            &[("X-Original-URI", "/api"), ("X-Forwarded-Uri", "/public")][..],
            &[("X-Forwarded-Uri", "/api"), ("X-Original-Method", "GET")][..],
            // A client's X-Original-URI passed through beside ingress-nginx's X-Original-URL.
            &[
                ("X-Original-URL", "https://shop.example/api/admin"),
                ("X-Original-URI", "/public"),
            ][..],
            &[
                ("X-Original-URL", "https://shop.example/api"),
                ("X-Forwarded-Uri", "/public"),
            ][..],
            &[("X-Original-URL", "not a url")][..],
            // A client's Host that a URL parser would cut short (`?`, `@`), or no path.
            &[("X-Original-URL", "https://app.example:?/api/admin")][..],
            &[("X-Original-URL", "https://evil@app.example/api")][..],
            &[("X-Original-URL", "https://app.example")][..],
            &[("X-Original-URL", "ftp://app.example/api")][..],
            // Nothing, or not a path.
            &[][..],
            &[("X-Forwarded-Method", "GET")][..],
            &[("X-Original-URI", "https://evil.example/api")][..],
            &[("X-Original-URI", "api")][..],
            &[("X-Original-URI", "/api"), ("X-Original-Method", "TRACE")][..],
            &[("X-Original-URI", "/api"), ("X-Original-Method", "G ET")][..],
        ] {
            assert_eq!(
                describe(pairs, TRUSTED),
                Err(Fault::BadRequest),
                "{pairs:?}"
            );
        }
        // Forwarded proto/host only shape the DPoP origin; bad ones fall back to public_url.
        let o = describe(
            &[
                ("X-Original-URI", "/api"),
                ("X-Forwarded-Proto", "gopher"),
                ("X-Forwarded-Host", "h"),
            ],
            TRUSTED,
        )
        .unwrap();
        assert_eq!(o.origin, "https://app.example");
    }

    #[test]
    fn a_token_goes_only_to_a_trusted_description() {
        let grant = || Grant {
            bearer: Some("Bearer t0k3n".parse().unwrap()),
            identity: Some(Box::new(crate::proxy::headers::Identity {
                user: "alice".parse().unwrap(),
                email: Some("a@example.com".parse().unwrap()),
                groups: None,
            })),
            set_cookies: vec!["tollgate=new; Path=/".into()],
            ..Grant::default()
        };
        let trusted = describe(&[("X-Original-URI", "/api")], TRUSTED).unwrap();
        let r = fa().allowed(&trusted, grant(), false, "rid").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("authorization"), Some("Bearer t0k3n"));
        assert_eq!(r.header("x-auth-request-user"), Some("alice"));
        assert_eq!(r.header("x-auth-request-email"), Some("a@example.com"));
        // Sent empty, so that an ingress copying what is there overwrites a client's own.
        assert_eq!(r.header("x-auth-request-groups"), Some(""));
        assert_eq!(r.header("dpop"), Some(""));
        assert_eq!(r.set_cookies(), ["tollgate=new; Path=/"]);
        // No session on an `auth = "none"` route: everything empty; the client's own
        // Authorization stays only with keep_authorization.
        let r = fa()
            .allowed(&trusted, Grant::default(), false, "rid")
            .unwrap();
        assert_eq!(r.header("authorization"), Some(""));
        assert_eq!(r.header("x-auth-request-user"), Some(""));
        let r = fa()
            .allowed(&trusted, Grant::default(), true, "rid")
            .unwrap();
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("dpop"), None);
        let untrusted = describe(&[("X-Original-URI", "/api")], "11.0.0.1").unwrap();
        let r = fa().allowed(&untrusted, grant(), false, "rid").unwrap();
        assert_eq!(r.header("authorization"), None);
        assert_eq!(r.header("x-auth-request-user"), None);
        assert_eq!(r.set_cookies(), ["tollgate=new; Path=/"]);
    }
}
