//! Turns the deserialized file into the typed [`Config`], checking what types cannot express.
//!
//! serde has already given every value its type ([`super::file`]); what is left are the rules a
//! type cannot express: a path without a query, keys that need or exclude each other, secrets
//! read from their files. Startup must fail fast and say exactly what is wrong, so each check
//! names the key (`routes[1].upstream`, `session.keys[0]`) and the problem. Secrets referenced
//! by `*_file` keys are read here, once, so a missing Kubernetes Secret mount stops the process
//! at startup instead of failing the first login.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey};
use url::Url;

use super::file::{
    CsrfSection, FileConfig, OidcSection, RouteSection, SameSiteSetting, ServerSection,
    SessionSection,
};
use super::*;

/// Paths tollgate answers itself; a route may not claim them exactly.
pub const RESERVED_PATHS: [&str; 5] = ["/healthz", "/readyz", "/login", "/logout", "/session"];

pub(crate) fn validate(raw: FileConfig) -> Result<Config, ConfigError> {
    let server = server(raw.server)?;
    let oidc = oidc(raw.oidc, &server.public_url)?;
    let session = session(raw.session, server.secure_cookies)?;
    let csrf = csrf(raw.csrf)?;
    let routes = routes(raw.routes)?;
    let metrics = MetricsConfig {
        listen: raw.metrics.listen.map(|a| a.0),
    };
    let config = Config {
        server,
        oidc,
        session,
        csrf,
        routes,
        metrics,
    };
    cross_section(&config)?;
    Ok(config)
}

/// The checks that need more than one section.
fn cross_section(c: &Config) -> Result<(), ConfigError> {
    for (i, r) in c.routes.iter().enumerate() {
        if RESERVED_PATHS.contains(&r.prefix.as_str()) || r.prefix == c.oidc.callback_path {
            return Err(ConfigError::invalid(
                format!("routes[{i}].prefix"),
                format!("{:?} is an endpoint tollgate answers itself", r.prefix),
            ));
        }
    }
    if let Some(m) = c.metrics.listen {
        if c.server.listen.contains(&m) {
            return Err(ConfigError::invalid(
                "metrics.listen",
                format!("{m} is also in server.listen; metrics need their own port"),
            ));
        }
    }
    Ok(())
}

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

fn server(s: ServerSection) -> Result<ServerConfig, ConfigError> {
    if s.listen.is_empty() {
        return Err(ConfigError::invalid(
            "server.listen",
            "at least one address is required",
        ));
    }
    let public_url = s.public_url.0;
    if public_url.path() != "/" || public_url.query().is_some() {
        return Err(ConfigError::invalid(
            "server.public_url",
            "must be an origin only (scheme, host, optional port), without a path or query",
        ));
    }
    let (_, forwarded_host) =
        host_header(&public_url).map_err(|p| ConfigError::invalid("server.public_url", p))?;
    let threads = match s.threads {
        Some(0) => return Err(ConfigError::invalid("server.threads", "must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    Ok(ServerConfig {
        listen: s.listen.into_iter().map(|a| a.0).collect(),
        public_origin: public_url.origin().ascii_serialization(),
        secure_cookies: public_url.scheme() == "https",
        forwarded_host,
        public_url,
        threads,
        grace_period: s.grace_period,
    })
}

/// Authorization request parameters tollgate sets itself.
const PROTOCOL_PARAMS: [&str; 9] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "client_secret",
];

fn oidc(o: OidcSection, public_url: &Url) -> Result<OidcConfig, ConfigError> {
    let issuer = o.issuer.url;
    if issuer.query().is_some() || issuer.fragment().is_some() {
        return Err(ConfigError::invalid(
            "oidc.issuer",
            "must not have a query or fragment",
        ));
    }
    if o.client_id.trim().is_empty() {
        return Err(ConfigError::invalid("oidc.client_id", "must not be empty"));
    }
    let auth_method = o.auth_method;
    let client_secret = secret_value(
        "oidc.client_secret",
        o.client_secret,
        "oidc.client_secret_file",
        o.client_secret_file.as_deref(),
    )?
    .map(|s| Secret::new(s.trim_end_matches(['\r', '\n']).to_string()));
    match (auth_method.needs_client_secret(), &client_secret) {
        (true, None) => {
            return Err(ConfigError::invalid(
                "oidc.client_secret",
                format!(
                    "auth_method {:?} needs a client secret (client_secret or client_secret_file)",
                    auth_method.as_str()
                ),
            ))
        }
        (true, Some(s)) if s.expose().is_empty() => {
            return Err(ConfigError::invalid("oidc.client_secret", "is empty"))
        }
        (false, Some(_)) => {
            return Err(ConfigError::invalid(
                "oidc.client_secret",
                format!(
                    "is set but auth_method {:?} does not use it; remove it",
                    auth_method.as_str()
                ),
            ))
        }
        _ => {}
    }
    let private_key = match (auth_method, o.private_key_file.as_deref()) {
        (AuthMethod::PrivateKeyJwt, None) => {
            return Err(ConfigError::invalid(
                "oidc.private_key_file",
                "auth_method \"private_key_jwt\" needs a private key file (PEM)",
            ))
        }
        (AuthMethod::PrivateKeyJwt, Some(path)) => {
            Some(private_key(path, o.private_key_alg, o.private_key_id)?)
        }
        (_, Some(_)) => {
            return Err(ConfigError::invalid(
                "oidc.private_key_file",
                "is set but only auth_method \"private_key_jwt\" uses it; remove it",
            ))
        }
        (_, None) => None,
    };
    let scopes = o.scopes;
    if !scopes.iter().any(|s| s == "openid") {
        return Err(ConfigError::invalid(
            "oidc.scopes",
            "must include \"openid\" (tollgate is an OpenID Connect client)",
        ));
    }
    if let Some(bad) = scopes
        .iter()
        .find(|s| s.is_empty() || s.chars().any(|c| c == ' ' || c == '"' || c == '\\'))
    {
        return Err(ConfigError::invalid(
            "oidc.scopes",
            format!("invalid scope {bad:?}"),
        ));
    }
    let callback_path = o.callback_path;
    if !callback_path.starts_with('/') || callback_path.contains(['?', '#']) {
        return Err(ConfigError::invalid(
            "oidc.callback_path",
            "must be a path starting with / (no query or fragment)",
        ));
    }
    if let Some(p) = o
        .extra_auth_params
        .keys()
        .find(|k| PROTOCOL_PARAMS.contains(&k.as_str()))
    {
        return Err(ConfigError::invalid(
            format!("oidc.extra_auth_params.{p}"),
            "is set by tollgate itself and cannot be overridden",
        ));
    }
    let endpoints = EndpointOverrides {
        authorization_endpoint: o.authorization_endpoint.map(|u| u.0),
        token_endpoint: o.token_endpoint.map(|u| u.0),
        jwks_uri: o.jwks_uri.map(|u| u.0),
        end_session_endpoint: o.end_session_endpoint.map(|u| u.0),
        revocation_endpoint: o.revocation_endpoint.map(|u| u.0),
    };
    if o.http_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "oidc.http_timeout",
            "must be greater than zero",
        ));
    }
    if o.metadata_refresh < Duration::from_secs(10) {
        return Err(ConfigError::invalid(
            "oidc.metadata_refresh",
            "must be at least 10s",
        ));
    }
    Ok(OidcConfig {
        post_logout_redirect_uri: o
            .post_logout_redirect_uri
            .map_or_else(|| public_url.clone(), |u| u.0),
        allow_get_logout: o.allow_get_logout,
        issuer_id: o.issuer.id,
        issuer,
        client_id: o.client_id,
        client_secret,
        auth_method,
        private_key,
        scopes,
        callback_path,
        extra_auth_params: o.extra_auth_params,
        endpoints,
        http_timeout: o.http_timeout,
        metadata_refresh: o.metadata_refresh,
    })
}

/// Reads the PEM key at `path` and checks that `alg` (default: the key kind's usual one) fits.
fn private_key(
    path: &str,
    alg: Option<Algorithm>,
    kid: Option<String>,
) -> Result<PrivateKey, ConfigError> {
    let key = "oidc.private_key_file";
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?;
    let kind = if EncodingKey::from_rsa_pem(&pem).is_ok() {
        PrivateKeyKind::Rsa
    } else if EncodingKey::from_ec_pem(&pem).is_ok() {
        PrivateKeyKind::Ec
    } else if EncodingKey::from_ed_pem(&pem).is_ok() {
        PrivateKeyKind::Ed25519
    } else {
        return Err(ConfigError::invalid(
            key,
            format!("{path} holds no RSA, EC (P-256) or Ed25519 private key in PEM form"),
        ));
    };
    let pem = String::from_utf8(pem)
        .map_err(|_| ConfigError::invalid(key, format!("{path} is not a text PEM file")))?;
    let alg = match (kind, alg) {
        (PrivateKeyKind::Rsa, None | Some(Algorithm::RS256)) => Algorithm::RS256,
        (PrivateKeyKind::Rsa, Some(Algorithm::PS256)) => Algorithm::PS256,
        (PrivateKeyKind::Ec, None | Some(Algorithm::ES256)) => Algorithm::ES256,
        (PrivateKeyKind::Ed25519, None | Some(Algorithm::EdDSA)) => Algorithm::EdDSA,
        (kind, Some(other)) => {
            return Err(ConfigError::invalid(
                "oidc.private_key_alg",
                format!("{other:?} does not fit the {kind:?} key in {path} (RSA: RS256 or PS256; EC: ES256; Ed25519: EdDSA)"),
            ))
        }
    };
    Ok(PrivateKey {
        kind,
        pem: Secret::new(pem),
        alg,
        kid,
    })
}

/// Reads a secret given either inline or as a file; both at once is an error.
fn secret_value(
    key: &str,
    inline: Option<String>,
    file_key: &str,
    file: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            key,
            format!("set either {key} or {file_key}, not both"),
        )),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| ConfigError::invalid(file_key, format!("cannot read {path}: {e}"))),
        (None, None) => Ok(None),
    }
}

fn session(s: SessionSection, secure: bool) -> Result<SessionConfig, ConfigError> {
    let configured = s.cookie_name;
    let bare = configured
        .strip_prefix("__Host-")
        .or_else(|| configured.strip_prefix("__Secure-"))
        .unwrap_or(&configured);
    if bare.is_empty()
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    {
        return Err(ConfigError::invalid(
            "session.cookie_name",
            "may only contain letters, digits, '-' and '_' (after an optional __Host- prefix)",
        ));
    }
    if configured.starts_with("__Secure-") && !secure {
        return Err(ConfigError::invalid(
            "session.cookie_name",
            "a __Secure- cookie needs an https server.public_url",
        ));
    }
    let (cookie_name, dropped_host_prefix) = match configured.strip_prefix("__Host-") {
        Some(rest) if !secure => (rest.to_string(), true),
        _ => (configured.clone(), false),
    };

    let encoded: Vec<(String, String)> = match (s.keys, s.keys_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "session.keys",
                "set either keys or keys_file, not both",
            ))
        }
        (None, None) => return Err(ConfigError::invalid(
            "session.keys",
            "at least one key is required (keys or keys_file); generate one with `tollgate genkey`",
        )),
        (Some(keys), None) => keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (format!("session.keys[{i}]"), k))
            .collect(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid("session.keys_file", format!("cannot read {path}: {e}"))
            })?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .enumerate()
                .map(|(i, k)| {
                    (
                        format!("session.keys_file ({path}) key {}", i + 1),
                        k.into(),
                    )
                })
                .collect()
        }
    };
    if encoded.is_empty() {
        return Err(ConfigError::invalid(
            "session.keys",
            "at least one key is required; generate one with `tollgate genkey`",
        ));
    }
    let mut keys = Vec::with_capacity(encoded.len());
    for (key_name, k) in encoded {
        keys.push(decode_key(&k).map_err(|p| ConfigError::invalid(key_name, p))?);
    }

    let same_site = match s.same_site {
        SameSiteSetting::Lax => SameSite::Lax,
        SameSiteSetting::Strict => SameSite::Strict,
        SameSiteSetting::None => {
            return Err(ConfigError::invalid(
                "session.same_site",
                "\"none\" would let every site send the session cookie and defeat the CSRF defence; use \"lax\" or \"strict\"",
            ))
        }
    };
    for (key, value) in [
        ("session.max_lifetime", s.max_lifetime),
        ("session.idle_timeout", s.idle_timeout),
    ] {
        if value.is_zero() {
            return Err(ConfigError::invalid(key, "must be greater than zero"));
        }
    }
    Ok(SessionConfig {
        cookie_name,
        dropped_host_prefix,
        keys,
        same_site,
        max_lifetime: s.max_lifetime,
        idle_timeout: s.idle_timeout,
        refresh_skew: s.refresh_skew,
    })
}

/// Decodes a base64 (standard or URL-safe, padding optional) 32-byte key.
pub fn decode_key(k: &str) -> Result<[u8; 32], String> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let k = k.trim();
    let bytes = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient)
        .decode(k)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient).decode(k))
        .map_err(|_| "is not valid base64".to_string())?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "key must be 32 bytes (AES-256) but decodes to {} bytes; generate one with `tollgate genkey`",
            bytes.len()
        )
    })
}

/// Headers that browsers or tollgate set themselves: as the CSRF header they would prove nothing.
const STANDARD_HEADERS: [&str; 5] = ["cookie", "origin", "host", "authorization", "content-type"];

fn csrf(c: CsrfSection) -> Result<CsrfConfig, ConfigError> {
    if STANDARD_HEADERS.contains(&c.header.as_str()) {
        return Err(ConfigError::invalid(
            "csrf.header",
            format!(
                "{:?} is a standard header that browsers or tollgate set; use a custom one such as x-csrf",
                c.header.as_str()
            ),
        ));
    }
    let allowed_origins = c
        .allowed_origins
        .into_iter()
        .enumerate()
        .map(|(i, url)| {
            let url = url.0;
            if url.path() != "/" || url.query().is_some() {
                return Err(ConfigError::invalid(
                    format!("csrf.allowed_origins[{i}]"),
                    "must be an origin (scheme://host[:port]) without a path",
                ));
            }
            Ok(url.origin().ascii_serialization())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CsrfConfig {
        header: c.header,
        allowed_origins,
    })
}

fn routes(raw: Vec<RouteSection>) -> Result<Vec<RouteConfig>, ConfigError> {
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
        let (host, host_header) =
            host_header(&upstream).map_err(|p| ConfigError::invalid(key("upstream"), p))?;
        routes.push(RouteConfig {
            prefix,
            upstream,
            host,
            host_header,
            auth: r.auth,
            strip_prefix: r.strip_prefix,
            connect_timeout: r.connect_timeout,
            read_timeout: r.read_timeout,
        });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const EXAMPLE: &str = include_str!("../../conf/tollgate.toml");

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            Path::new("test.toml"),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn err(text: &str, vars: &[(&str, &str)]) -> String {
        match load(text, vars) {
            Ok(_) => panic!("config should be refused:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// The example with the first line starting with `from` (a setting, not a comment) edited.
    fn edit(from: &str, to: &str) -> String {
        let from = format!("\n{from}");
        assert!(EXAMPLE.contains(&from), "example lacks {from}");
        EXAMPLE.replacen(&from, &format!("\n{to}"), 1)
    }

    #[test]
    fn issuer_is_kept_as_written() {
        for issuer in [
            "https://tenant.auth0.com/",
            "https://idp.example.com/realms/x",
        ] {
            let text = EXAMPLE.replace(
                "issuer = \"http://127.0.0.1:9090/as\"",
                &format!("issuer = \"{issuer}\""),
            );
            assert_eq!(load(&text, &[]).unwrap().oidc.issuer_id, issuer);
        }
    }

    #[test]
    fn example_config_is_valid() {
        let c = load(EXAMPLE, &[]).unwrap();
        assert_eq!(c.server.public_origin, "http://127.0.0.1:8080");
        assert!(!c.server.secure_cookies);
        assert_eq!(
            c.session.cookie_name, "tollgate",
            "http drops the __Host- prefix"
        );
        assert!(c.session.dropped_host_prefix);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.oidc.auth_method, AuthMethod::ClientSecretBasic);
        assert_eq!(c.session.idle_timeout, Duration::from_secs(8 * 3600));
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
    }

    #[test]
    fn https_keeps_host_prefix() {
        let c = load(
            &edit(
                "public_url = \"http://127.0.0.1:8080\"",
                "public_url = \"https://app.example.com\"",
            ),
            &[],
        )
        .unwrap();
        assert!(c.server.secure_cookies);
        assert_eq!(c.session.cookie_name, "__Host-tollgate");
        assert_eq!(c.server.forwarded_host, "app.example.com");
    }

    #[test]
    fn values_get_their_types() {
        let c = load(
            EXAMPLE,
            &[
                ("TOLLGATE__CSRF__HEADER", "X-Requested-By"),
                ("TOLLGATE__SESSION__SAME_SITE", "Strict"),
                ("TOLLGATE__ROUTES__1__READ_TIMEOUT", "90"),
                ("TOLLGATE__ROUTES__1__AUTH", "optional"),
            ],
        )
        .unwrap();
        assert_eq!(c.csrf.header, "x-requested-by");
        assert_eq!(c.session.same_site, SameSite::Strict);
        assert_eq!(c.routes[1].read_timeout, Duration::from_secs(90));
        assert_eq!(c.routes[1].auth, RouteAuth::Optional);
        assert_eq!(c.routes[0].host, "127.0.0.1:9000");
        assert_eq!(c.routes[0].host_header, "127.0.0.1:9000");
        assert_eq!(c.server.forwarded_host, "127.0.0.1:8080");

        let cases: Vec<(String, &str)> = vec![
            (
                edit(
                    "listen = [\"127.0.0.1:8080\"]",
                    "listen = [\"127.0.0.1:8080\", \"port 80\"]",
                ),
                "`server.listen[1]`: \"port 80\" is not an address",
            ),
            (
                edit("header = \"x-csrf\"", "header = \"x csrf\""),
                "`csrf.header`: \"x csrf\" is not a valid header name",
            ),
            (
                edit("header = \"x-csrf\"", "header = \"Cookie\""),
                "`csrf.header`: \"cookie\" is a standard header",
            ),
            (
                edit(
                    "allowed_origins = []",
                    "allowed_origins = [\"https://a.example\", \"https://b.example/app\"]",
                ),
                "`csrf.allowed_origins[1]`: must be an origin",
            ),
            (
                edit(
                    "allowed_origins = []",
                    "allowed_origins = [\"https://a.example\", \"b.example\"]",
                ),
                "`csrf.allowed_origins[1]`: \"b.example\" is not a valid URL",
            ),
            (
                edit("read_timeout = \"60s\"", "read_timeout = -1"),
                "`routes[0].read_timeout`: -1 is negative",
            ),
            (
                edit(
                    "# private_key_alg = \"RS256\"",
                    "private_key_alg = \"RS257\"",
                ),
                "`oidc.private_key_alg`: unknown variant `RS257`",
            ),
            (
                edit("same_site = \"lax\"", "same_site = \"none\""),
                "`session.same_site`: \"none\" would let every site send the session cookie",
            ),
            (
                edit(
                    "upstream = \"http://127.0.0.1:9000\"",
                    "upstream = \"http://user:pw@127.0.0.1:9000\"",
                ),
                "`routes[0].upstream`: must not carry credentials",
            ),
        ];
        for (text, expected) in cases {
            let e = err(&text, &[]);
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases: Vec<(String, &str)> = vec![
            (
                edit(
                    "issuer = \"http://127.0.0.1:9090/as\"",
                    "issuer = \"not a url\"",
                ),
                "`oidc.issuer`",
            ),
            (
                edit(
                    "auth_method = \"client_secret_basic\"",
                    "auth_method = \"client_secret_magic\"",
                ),
                "`oidc.auth_method`: unknown variant `client_secret_magic`, expected one of `client_secret_basic`",
            ),
            (
                edit(
                    "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]",
                    "keys = [\"c2hvcnQ=\"]",
                ),
                "`session.keys[0]`: key must be 32 bytes",
            ),
            (
                edit(
                    "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]",
                    "keys = [\"***\"]",
                ),
                "`session.keys[0]`: is not valid base64",
            ),
            (
                edit("prefix = \"/\"\n", "prefix = \"/api/\"\n"),
                "`routes[1].prefix`: \"/api\" overlaps",
            ),
            (
                edit(
                    "upstream = \"http://127.0.0.1:9000\"",
                    "upstream = \"ftp://127.0.0.1:9000\"",
                ),
                "`routes[0].upstream`",
            ),
            (
                edit("auth = \"required\"", "auth = \"sometimes\""),
                "`routes[0].auth`",
            ),
            (
                edit("threads = 2", "threads = 2\nthreeds = 4"),
                "`server.threeds`: unknown field `threeds`",
            ),
            (
                edit("idle_timeout = \"8h\"", "idle_timeout = \"eight hours\""),
                "`session.idle_timeout`",
            ),
            (
                edit("same_site = \"lax\"", "same_site = \"none\""),
                "`session.same_site`",
            ),
            (
                edit("client_secret = \"demo-secret-change-me\"", ""),
                "`oidc.client_secret`: auth_method",
            ),
            (
                edit("scopes = [\"openid\", ", "scopes = ["),
                "`oidc.scopes`",
            ),
            (
                edit("listen = \"127.0.0.1:9100\"", "listen = \"127.0.0.1:8080\""),
                "`metrics.listen`",
            ),
            (
                edit(
                    "public_url = \"http://127.0.0.1:8080\"",
                    "public_url = \"http://127.0.0.1:8080/app\"",
                ),
                "`server.public_url`",
            ),
            (
                edit("prefix = \"/api\"", "prefix = \"/healthz\""),
                "`routes[0].prefix`",
            ),
            (
                edit(
                    "[[routes]]\nprefix = \"/api\"",
                    "[[routes]]\nprefix = \"api\"",
                ),
                "`routes[0].prefix`",
            ),
            ("this is = not toml".to_string(), "not valid TOML"),
        ];
        for (text, expected) in cases {
            let e = err(&text, &[]);
            assert!(e.contains(expected), "expected {expected:?} in {e:?}");
        }
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let c = load(
            EXAMPLE,
            &[
                ("TOLLGATE__OIDC__CLIENT_ID", "12345"),
                ("TOLLGATE__SERVER__THREADS", "3"),
                ("TOLLGATE__ROUTES__0__STRIP_PREFIX", "true"),
                ("TOLLGATE__SERVER__LISTEN", "127.0.0.1:7001,127.0.0.1:7002"),
                ("TOLLGATE__OIDC__AUTH_METHOD", "none"),
                ("TOLLGATE__OIDC__CLIENT_SECRET", "[]"),
            ],
        );
        // An inline array is not a string: the override is refused with the key named.
        let e = c.unwrap_err().to_string();
        assert!(e.contains("oidc.client_secret"), "{e}");

        let text = edit("client_secret = \"demo-secret-change-me\"", "");
        let c = load(
            &text,
            &[
                ("TOLLGATE__OIDC__CLIENT_ID", "12345"),
                ("TOLLGATE__SERVER__THREADS", "3"),
                ("TOLLGATE__ROUTES__0__STRIP_PREFIX", "true"),
                ("TOLLGATE__SERVER__LISTEN", "127.0.0.1:7001,127.0.0.1:7002"),
                ("TOLLGATE__OIDC__AUTH_METHOD", "none"),
            ],
        )
        .unwrap();
        assert_eq!(c.oidc.client_id, "12345");
        assert_eq!(c.server.threads, 3);
        assert!(c.routes[0].strip_prefix);
        assert_eq!(c.server.listen.len(), 2);
        assert_eq!(c.oidc.auth_method, AuthMethod::None);

        let e = err(EXAMPLE, &[("TOLLGATE__SERVER__THREADS", "many")]);
        assert!(e.contains("server.threads"), "{e}");
        let e = err(EXAMPLE, &[("TOLLGATE__OIDC__AUTH_METHOD", "password")]);
        assert!(e.contains("oidc.auth_method"), "{e}");
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(
            &keys,
            "# newest first\nbdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\n\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
        )
        .unwrap();
        let text = edit(
            "client_secret = \"demo-secret-change-me\"",
            &format!("client_secret_file = {:?}", secret.display().to_string()),
        )
        .replace(
            "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]",
            &format!("keys_file = {:?}", keys.display().to_string()),
        );
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.oidc.client_secret.as_ref().unwrap().expose(), "s3cr3t");
        assert_eq!(c.session.keys.len(), 2);
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "secrets must not be printed"
        );

        let e = err(
            &text.replace(&secret.display().to_string(), "/nonexistent/secret"),
            &[],
        );
        assert!(
            e.contains("`oidc.client_secret_file`: cannot read /nonexistent/secret"),
            "{e}"
        );
        let both = edit(
            "client_secret = \"demo-secret-change-me\"",
            "client_secret = \"a\"\nclient_secret_file = \"/x\"",
        );
        assert!(err(&both, &[]).contains("not both"));
        let pk = edit(
            "auth_method = \"client_secret_basic\"",
            "auth_method = \"private_key_jwt\"",
        )
        .replace(
            "client_secret = \"demo-secret-change-me\"",
            &format!("private_key_file = {:?}", secret.display().to_string()),
        );
        let e = err(&pk, &[]);
        assert!(
            e.contains("`oidc.private_key_file`") && e.contains("no RSA, EC"),
            "{e}"
        );
    }
}
