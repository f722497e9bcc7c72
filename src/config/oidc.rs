//! `[oidc]`: the provider, the client registered there and how it authenticates.
//!
//! Most rules here tie keys of this section together: an `auth_method` needs exactly the
//! credentials it uses (a secret, or a private key whose kind fits `private_key_alg`), and no
//! unused one is accepted, so a leftover secret is not mistaken for one in use. Secrets named
//! by `*_file` keys are read here, once, so a missing Kubernetes Secret mount stops the process
//! at startup instead of failing the first login.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::de::{self, bytes, secs, HttpUrl, Issuer, UrlAsWritten};
use super::error::{ConfigError, Secret};
use jsonwebtoken::{Algorithm, EncodingKey};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcSection {
    pub issuer: Issuer,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default = "default_auth_method")]
    pub auth_method: AuthMethod,
    pub private_key_file: Option<String>,
    #[serde(default = "default_scopes", deserialize_with = "de::list")]
    pub scopes: Vec<String>,
    /// tollgate's own paths: the same for every provider, so only in `[oidc]`.
    pub callback_path: Option<String>,
    pub backchannel_logout_path: Option<String>,
    /// Hosts whose `/login` goes to this provider (the request's `Host`, without its port).
    #[serde(default, deserialize_with = "de::list")]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub extra_auth_params: BTreeMap<String, String>,
    pub private_key_alg: Option<jsonwebtoken::Algorithm>,
    pub private_key_id: Option<String>,
    pub authorization_endpoint: Option<HttpUrl>,
    pub token_endpoint: Option<HttpUrl>,
    pub jwks_uri: Option<HttpUrl>,
    pub end_session_endpoint: Option<HttpUrl>,
    pub revocation_endpoint: Option<HttpUrl>,
    pub pushed_authorization_request_endpoint: Option<HttpUrl>,
    #[serde(default = "secs::<10>", deserialize_with = "de::duration")]
    pub http_timeout: Duration,
    #[serde(default = "bytes::<1048576>", deserialize_with = "de::lenient")]
    pub max_response_bytes: usize,
    #[serde(default = "secs::<3600>", deserialize_with = "de::duration")]
    pub metadata_refresh: Duration,
    /// Default: `server.public_url` with its `/` (`https://app.example.com/`). Sent as written.
    pub post_logout_redirect_uri: Option<UrlAsWritten>,
    #[serde(default, deserialize_with = "de::lenient")]
    pub allow_get_logout: bool,
    #[serde(default = "default_par")]
    pub par: ParMode,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default, deserialize_with = "de::lenient")]
    pub dpop: bool,
    pub profile: Option<Profile>,
}

fn default_auth_method() -> AuthMethod {
    AuthMethod::ClientSecretBasic
}

fn default_par() -> ParMode {
    ParMode::Auto
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .map(String::from)
        .to_vec()
}

fn default_backchannel_logout_path() -> String {
    "/backchannel-logout".to_string()
}

fn default_callback_path() -> String {
    "/callback".into()
}

/// `[oidc] profile`: a security profile the configuration must conform to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// FAPI 2.0 Security Profile (final, 2025).
    Fapi2,
}

/// `[oidc] par`: whether `/login` uses pushed authorization requests (RFC 9126).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParMode {
    /// When the provider advertises `pushed_authorization_request_endpoint`.
    Auto,
    /// Always: a provider without the endpoint is refused at startup.
    Always,
    /// Never: a provider that requires PAR is refused at startup.
    Never,
}

impl ParMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ParMode::Auto => "auto",
            ParMode::Always => "always",
            ParMode::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
    ClientSecretJwt,
    PrivateKeyJwt,
    None,
}

impl AuthMethod {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::ClientSecretJwt => "client_secret_jwt",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::None => "none",
        }
    }

    pub fn needs_client_secret(self) -> bool {
        matches!(
            self,
            AuthMethod::ClientSecretBasic
                | AuthMethod::ClientSecretPost
                | AuthMethod::ClientSecretJwt
        )
    }
}

/// The kind of key found in `private_key_file`, which decides the JWT algorithms it can sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateKeyKind {
    Rsa,
    Ec,
    Ed25519,
}

#[derive(Debug, Clone)]
pub struct PrivateKey {
    pub kind: PrivateKeyKind,
    pub pem: Secret,
    /// The JWS algorithm for client assertions (RS256, PS256, ES256 or EdDSA).
    pub alg: jsonwebtoken::Algorithm,
    /// `kid` for the assertion header, when the provider needs it to pick the key.
    pub kid: Option<String>,
}

/// Provider endpoints set in the config; each replaces the discovered one.
#[derive(Debug, Clone, Default)]
pub struct EndpointOverrides {
    pub authorization_endpoint: Option<Url>,
    pub token_endpoint: Option<Url>,
    pub jwks_uri: Option<Url>,
    pub end_session_endpoint: Option<Url>,
    pub revocation_endpoint: Option<Url>,
    pub pushed_authorization_request_endpoint: Option<Url>,
}

impl EndpointOverrides {
    /// With these three set, tollgate needs no discovery document.
    pub fn skip_discovery(&self) -> bool {
        self.authorization_endpoint.is_some()
            && self.token_endpoint.is_some()
            && self.jwks_uri.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// `default` for `[oidc]`, `NAME` for `[providers.NAME]`.
    pub name: String,
    /// The hosts whose logins go to this provider (lowercase, no port).
    pub hosts: Vec<String>,
    pub issuer: Url,
    /// The issuer exactly as configured (trailing slash and all): discovery documents and ID
    /// tokens must carry this string, compared as written (OpenID Connect Discovery §4.3).
    pub issuer_id: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub auth_method: AuthMethod,
    pub private_key: Option<PrivateKey>,
    pub scopes: Vec<String>,
    pub callback_path: String,
    /// Where the provider posts back-channel logout tokens (`{public_url}{path}` is registered
    /// as `backchannel_logout_uri`).
    pub backchannel_logout_path: String,
    pub extra_auth_params: BTreeMap<String, String>,
    pub endpoints: EndpointOverrides,
    /// Timeout of every request to the provider (discovery, JWKS, token).
    pub http_timeout: Duration,
    /// The largest response body read from the provider.
    pub max_response_bytes: usize,
    /// How often provider metadata and keys are fetched again.
    pub metadata_refresh: Duration,
    /// Where the provider sends the browser after logout (and tollgate, without one), exactly
    /// as sent: as configured, or `public_url` with its `/`.
    pub post_logout_redirect_uri: String,
    /// Whether `GET /logout` works (besides `POST /logout` with the CSRF header).
    pub allow_get_logout: bool,
    /// Pushed authorization requests: `auto`, `always` or `never`.
    pub par: ParMode,
    /// The claim that lists the user's groups (`X-Auth-Request-Groups`).
    pub groups_claim: String,
    /// DPoP-bound tokens (RFC 9449): a key pair per session, proofs on every token request.
    pub dpop: bool,
    /// `profile = "fapi2"`: the FAPI 2.0 Security Profile, checked at load
    /// ([`super::validate`]'s `fapi2`) and in force at run time (algorithms, `iss`, RSA sizes).
    pub fapi2: bool,
}

/// Authorization request parameters tollgate sets itself.
const PROTOCOL_PARAMS: [&str; 15] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "prompt",
    "dpop_jkt",
    "request_uri",
    "request",
];

/// The name of the provider `[oidc]` configures.
pub const DEFAULT_PROVIDER: &str = "default";

/// The longest provider name: it is in each of its sessions' cookies.
const MAX_PROVIDER_NAME: usize = 32;

/// `[providers.NAME]`: a provider besides `[oidc]`, with every key of `[oidc]` that concerns a
/// provider. Errors name `providers.NAME.key`.
pub(super) fn provider(
    name: &str,
    o: OidcSection,
    public_url: &Url,
) -> Result<OidcConfig, ConfigError> {
    let section = format!("providers.{name}");
    if name == DEFAULT_PROVIDER {
        return Err(ConfigError::invalid(
            section,
            "\"default\" is the name of [oidc]; choose another",
        ));
    }
    if name.is_empty()
        || name.len() > MAX_PROVIDER_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(ConfigError::invalid(
            section,
            format!("a provider name is 1 to {MAX_PROVIDER_NAME} characters of a-z, 0-9, - and _"),
        ));
    }
    for (key, set) in [
        ("callback_path", o.callback_path.is_some()),
        (
            "backchannel_logout_path",
            o.backchannel_logout_path.is_some(),
        ),
    ] {
        if set {
            return Err(ConfigError::invalid(
                format!("{section}.{key}"),
                "is tollgate's own path, the same for every provider: set it in [oidc]",
            ));
        }
    }
    let mut config = oidc(o, public_url).map_err(|e| match e {
        ConfigError::Invalid { key, problem } => ConfigError::Invalid {
            key: match key.strip_prefix("oidc.") {
                Some(rest) => format!("{section}.{rest}"),
                None => key,
            },
            problem,
        },
        other => other,
    })?;
    config.name = name.to_string();
    Ok(config)
}

pub(super) fn oidc(o: OidcSection, public_url: &Url) -> Result<OidcConfig, ConfigError> {
    let hosts = o
        .hosts
        .iter()
        .map(|h| {
            let host = h.trim().to_ascii_lowercase();
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if valid {
                Ok(host)
            } else {
                Err(ConfigError::invalid(
                    "oidc.hosts",
                    format!("{h:?} is not a host name (no scheme, port or path)"),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let callback_path = o.callback_path.unwrap_or_else(default_callback_path);
    let backchannel_logout_path = o
        .backchannel_logout_path
        .unwrap_or_else(default_backchannel_logout_path);
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
    for (key, path) in [
        ("oidc.callback_path", &callback_path),
        ("oidc.backchannel_logout_path", &backchannel_logout_path),
    ] {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err(ConfigError::invalid(
                key,
                "must be a path starting with / (no query or fragment)",
            ));
        }
        if !super::common::is_reachable_path(path) {
            return Err(ConfigError::invalid(
                key,
                format!("{path:?} {}", super::common::UNREACHABLE_PATH),
            ));
        }
    }
    if backchannel_logout_path == callback_path {
        return Err(ConfigError::invalid(
            "oidc.backchannel_logout_path",
            "must differ from oidc.callback_path",
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
        pushed_authorization_request_endpoint: o.pushed_authorization_request_endpoint.map(|u| u.0),
    };
    if (o.par == ParMode::Always || o.profile == Some(Profile::Fapi2))
        && endpoints.skip_discovery()
        && endpoints.pushed_authorization_request_endpoint.is_none()
    {
        return Err(ConfigError::invalid(
            "oidc.par",
            "is \"always\" but no pushed_authorization_request_endpoint is configured \
             (discovery is skipped: authorization, token and JWKS endpoints are all set)",
        ));
    }
    if o.par == ParMode::Never && endpoints.pushed_authorization_request_endpoint.is_some() {
        return Err(ConfigError::invalid(
            "oidc.pushed_authorization_request_endpoint",
            "is set but oidc.par is \"never\"; remove one of them",
        ));
    }
    if o.max_response_bytes < 4096 {
        return Err(ConfigError::invalid(
            "oidc.max_response_bytes",
            "must be at least 4096 (a discovery document or a key set is a few KB)",
        ));
    }
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
    if o.profile == Some(Profile::Fapi2) && endpoints.skip_discovery() {
        return Err(ConfigError::invalid(
            "oidc.profile",
            "\"fapi2\" needs the provider's discovery document (its ID token and DPoP algorithms); \
             do not set authorization_endpoint, token_endpoint and jwks_uri all three",
        ));
    }
    if o.profile == Some(Profile::Fapi2) {
        fapi2(
            o.par,
            o.dpop,
            auth_method,
            private_key.as_ref(),
            &issuer,
            public_url,
        )?;
    }
    if o.groups_claim.trim().is_empty() {
        return Err(ConfigError::invalid(
            "oidc.groups_claim",
            "must name a claim",
        ));
    }
    Ok(OidcConfig {
        name: DEFAULT_PROVIDER.to_string(),
        hosts,
        post_logout_redirect_uri: o
            .post_logout_redirect_uri
            .map_or_else(|| public_url.to_string(), |u| u.0),
        allow_get_logout: o.allow_get_logout,
        // FAPI 2.0: every authorization request is pushed.
        par: if o.profile == Some(Profile::Fapi2) {
            ParMode::Always
        } else {
            o.par
        },
        groups_claim: o.groups_claim,
        dpop: o.dpop,
        fapi2: o.profile == Some(Profile::Fapi2),
        issuer_id: o.issuer.id,
        issuer,
        client_id: o.client_id,
        client_secret,
        auth_method,
        private_key,
        scopes,
        callback_path,
        backchannel_logout_path,
        extra_auth_params: o.extra_auth_params,
        endpoints,
        http_timeout: o.http_timeout,
        max_response_bytes: o.max_response_bytes,
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

/// The FAPI 2.0 Security Profile's client-side rules (what tollgate can decide; the provider's
/// part is README's): each refusal names the key to change.
fn fapi2(
    par: ParMode,
    dpop: bool,
    auth_method: AuthMethod,
    key: Option<&PrivateKey>,
    issuer: &Url,
    public_url: &Url,
) -> Result<(), ConfigError> {
    const WHY: &str = "with oidc.profile = \"fapi2\"";
    if par == ParMode::Never {
        return Err(ConfigError::invalid(
            "oidc.par",
            format!("is \"never\"; {WHY} every authorization request is pushed (remove it or set \"always\")"),
        ));
    }
    if auth_method != AuthMethod::PrivateKeyJwt {
        return Err(ConfigError::invalid(
            "oidc.auth_method",
            format!(
                "is {:?}; {WHY} the client authenticates with private_key_jwt (client secrets and public clients are not allowed; mTLS is not supported by tollgate)",
                auth_method.as_str()
            ),
        ));
    }
    if let Some(k) = key {
        if !matches!(
            k.alg,
            Algorithm::PS256 | Algorithm::ES256 | Algorithm::EdDSA
        ) {
            return Err(ConfigError::invalid(
                "oidc.private_key_alg",
                format!("is {:?}; {WHY} only PS256, ES256 or EdDSA", k.alg),
            ));
        }
        if k.kind == PrivateKeyKind::Rsa {
            let bits = rsa_bits(k).unwrap_or(0);
            if bits < 2048 {
                return Err(ConfigError::invalid(
                    "oidc.private_key_file",
                    format!("holds a {bits}-bit RSA key; {WHY} RSA keys have at least 2048 bits"),
                ));
            }
        }
    }
    if !dpop {
        return Err(ConfigError::invalid(
            "oidc.dpop",
            format!("is off; {WHY} tokens are sender-constrained: set dpop = true"),
        ));
    }
    for (key, url) in [("oidc.issuer", issuer), ("server.public_url", public_url)] {
        if url.scheme() != "https" && !super::common::is_loopback_http(url) {
            return Err(ConfigError::invalid(
                key,
                format!("is not https; {WHY} only TLS (plain http only on a loopback address, for development)"),
            ));
        }
    }
    Ok(())
}

/// The modulus size of an RSA private key, from the length of a signature made with it.
fn rsa_bits(key: &PrivateKey) -> Option<usize> {
    let encoding = EncodingKey::from_rsa_pem(key.pem.expose().as_bytes()).ok()?;
    let sig = jsonwebtoken::crypto::sign(b"size", &encoding, Algorithm::RS256).ok()?;
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .ok()?;
    Some(raw.len() * 8)
}

/// Reads a secret given either inline or as a file; both at once is an error.
pub(super) fn secret_value(
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

#[cfg(test)]
mod fapi2_tests {
    use super::*;

    #[test]
    fn rsa_key_size_and_fapi2_algorithms() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/idp/keys/client_rsa.pem");
        let rs = private_key(path, None, None).unwrap();
        assert_eq!(rsa_bits(&rs).unwrap(), 2048);
        let url = Url::parse("https://idp.example").unwrap();
        let local = Url::parse("http://127.0.0.1:8080/").unwrap();
        let key = |alg| private_key(path, Some(alg), None).unwrap();
        let run = |k: &PrivateKey, dpop: bool, par: ParMode, issuer: &Url| {
            fapi2(
                par,
                dpop,
                AuthMethod::PrivateKeyJwt,
                Some(k),
                issuer,
                &local,
            )
            .map_err(|e| e.to_string())
        };
        assert!(run(&key(Algorithm::PS256), true, ParMode::Auto, &url).is_ok());
        let e = run(&key(Algorithm::RS256), true, ParMode::Auto, &url).unwrap_err();
        assert!(e.contains("oidc.private_key_alg"), "{e}");
        let e = run(&key(Algorithm::PS256), false, ParMode::Auto, &url).unwrap_err();
        assert!(e.contains("oidc.dpop"), "{e}");
        let e = run(&key(Algorithm::PS256), true, ParMode::Never, &url).unwrap_err();
        assert!(e.contains("oidc.par"), "{e}");
        let plain = Url::parse("http://idp.example").unwrap();
        let e = run(&key(Algorithm::PS256), true, ParMode::Always, &plain).unwrap_err();
        assert!(e.contains("oidc.issuer") && e.contains("https"), "{e}");
        let e = fapi2(ParMode::Auto, true, AuthMethod::None, None, &url, &local).unwrap_err();
        assert!(e.to_string().contains("oidc.auth_method"), "{e}");
    }
}
