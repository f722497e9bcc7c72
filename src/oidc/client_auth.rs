//! Client authentication at the token endpoint, one variant per `[oidc] auth_method`.
//!
//! - `client_secret_basic`: `Authorization: Basic base64(urlenc(client_id) ":" urlenc(secret))`
//!   (RFC 6749 §2.3.1: both parts form-urlencoded first);
//! - `client_secret_post`: `client_id` and `client_secret` in the form body;
//! - `client_secret_jwt`: an HS256 client assertion signed with the secret;
//! - `private_key_jwt`: the same assertion signed with the configured private key
//!   (RS256, PS256, ES256 or EdDSA, `kid` in the header when configured);
//! - `none`: a public client, `client_id` only (PKCE protects the code).
//!
//! Assertions carry `iss` = `sub` = client_id, `aud` = the token endpoint, `iat`, a 60-second
//! `exp` and a fresh 128-bit `jti` (RFC 7523 §3). Keys are parsed once, at startup.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::Serialize;
use url::form_urlencoded::byte_serialize;

use crate::config::{AuthMethod, OidcConfig, PrivateKeyKind};

pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ASSERTION_LIFETIME: u64 = 60;

#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    #[error("the private key cannot be used: {0}")]
    Key(String),
    #[error("this auth_method needs a client_secret")]
    MissingSecret,
    #[error("signing the client assertion failed: {0}")]
    Sign(String),
}

enum Method {
    Basic {
        header: String,
    },
    Post {
        secret: String,
    },
    Jwt {
        key: EncodingKey,
        alg: Algorithm,
        kid: Option<String>,
    },
    None,
}

/// How tollgate proves its identity to the token endpoint.
pub(crate) struct ClientAuth {
    client_id: String,
    method: Method,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = match self.method {
            Method::Basic { .. } => "client_secret_basic",
            Method::Post { .. } => "client_secret_post",
            Method::Jwt {
                alg: Algorithm::HS256,
                ..
            } => "client_secret_jwt",
            Method::Jwt { .. } => "private_key_jwt",
            Method::None => "none",
        };
        write!(f, "ClientAuth({}, {m})", self.client_id)
    }
}

/// What to add to a token request: an `Authorization` header and/or form fields.
#[derive(Default)]
pub(crate) struct Credentials {
    pub(crate) authorization: Option<String>,
    pub(crate) form: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header and the fields carry the secret or a signed assertion: names only.
        let fields: Vec<&str> = self.form.iter().map(|(k, _)| *k).collect();
        f.debug_struct("Credentials")
            .field("authorization", &self.authorization.as_ref().map(|_| "…"))
            .field("form", &fields)
            .finish()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: String,
}

impl ClientAuth {
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    pub(crate) fn new(cfg: &OidcConfig) -> Result<ClientAuth, ClientAuthError> {
        // Validation requires a secret for the secret-based methods; checked again here rather
        // than signing with an empty one.
        let secret = || {
            cfg.client_secret
                .as_ref()
                .map(|s| s.expose().to_string())
                .ok_or(ClientAuthError::MissingSecret)
        };
        let method = match cfg.auth_method {
            AuthMethod::ClientSecretBasic => {
                let secret = secret()?;
                let pair = format!(
                    "{}:{}",
                    byte_serialize(cfg.client_id.as_bytes()).collect::<String>(),
                    byte_serialize(secret.as_bytes()).collect::<String>()
                );
                Method::Basic {
                    header: format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    ),
                }
            }
            AuthMethod::ClientSecretPost => Method::Post { secret: secret()? },
            AuthMethod::ClientSecretJwt => Method::Jwt {
                key: EncodingKey::from_secret(secret()?.as_bytes()),
                alg: Algorithm::HS256,
                kid: None,
            },
            AuthMethod::PrivateKeyJwt => {
                let pk = cfg
                    .private_key
                    .as_ref()
                    .ok_or_else(|| ClientAuthError::Key("no private_key_file".into()))?;
                let pem = pk.pem.expose().as_bytes();
                let key = match pk.kind {
                    PrivateKeyKind::Rsa => EncodingKey::from_rsa_pem(pem),
                    PrivateKeyKind::Ec => EncodingKey::from_ec_pem(pem),
                    PrivateKeyKind::Ed25519 => EncodingKey::from_ed_pem(pem),
                }
                .map_err(|e| ClientAuthError::Key(e.to_string()))?;
                Method::Jwt {
                    key,
                    alg: pk.alg,
                    kid: pk.kid.clone(),
                }
            }
            AuthMethod::None => Method::None,
        };
        Ok(ClientAuth {
            client_id: cfg.client_id.clone(),
            method,
        })
    }

    /// Credentials for one request to `token_endpoint` at time `now` (Unix seconds).
    pub(crate) fn credentials(
        &self,
        token_endpoint: &str,
        now: u64,
    ) -> Result<Credentials, ClientAuthError> {
        let mut c = Credentials::default();
        match &self.method {
            Method::Basic { header } => c.authorization = Some(header.clone()),
            Method::Post { secret } => {
                c.form.push(("client_id", self.client_id.clone()));
                c.form.push(("client_secret", secret.clone()));
            }
            Method::Jwt { key, alg, kid } => {
                let mut jti = [0u8; 16];
                rand::rngs::OsRng.fill_bytes(&mut jti);
                let claims = AssertionClaims {
                    iss: &self.client_id,
                    sub: &self.client_id,
                    aud: token_endpoint,
                    iat: now,
                    exp: now + ASSERTION_LIFETIME,
                    jti: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
                };
                let mut header = Header::new(*alg);
                header.kid = kid.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| ClientAuthError::Sign(e.to_string()))?;
                c.form.push(("client_id", self.client_id.clone()));
                c.form
                    .push(("client_assertion_type", ASSERTION_TYPE.to_string()));
                c.form.push(("client_assertion", assertion));
            }
            Method::None => c.form.push(("client_id", self.client_id.clone())),
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Secret};
    use std::path::Path;

    fn cfg(method: AuthMethod, id: &str, secret: &str) -> OidcConfig {
        let text = include_str!("../../conf/tollgate.toml");
        let mut c = Config::from_toml_str(text, Path::new("t"), std::iter::empty())
            .unwrap()
            .oidc;
        c.auth_method = method;
        c.client_id = id.into();
        c.client_secret = Some(Secret::new(secret.into()));
        c
    }

    #[test]
    fn debug_shows_no_secret() {
        for method in [
            AuthMethod::ClientSecretBasic,
            AuthMethod::ClientSecretPost,
            AuthMethod::ClientSecretJwt,
        ] {
            let a = ClientAuth::new(&cfg(method, "app", "very-secret-value")).unwrap();
            let c = a.credentials("https://idp.example/token", 1_000).unwrap();
            let text = format!("{a:?} {c:?}");
            assert!(!text.contains("very-secret"), "{text}");
            assert!(!text.contains("eyJ"), "no assertion: {text}");
            assert!(!text.contains("Basic "), "{text}");
        }
    }

    #[test]
    fn basic_urlencodes_both_parts() {
        let a =
            ClientAuth::new(&cfg(AuthMethod::ClientSecretBasic, "my app", "p@ss:w/rd")).unwrap();
        let c = a.credentials("https://idp/token", 0).unwrap();
        let header = c.authorization.unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "my+app:p%40ss%3Aw%2Frd"
        );
        assert!(c.form.is_empty());
    }

    #[test]
    fn post_and_none_put_the_client_in_the_body() {
        let c = ClientAuth::new(&cfg(AuthMethod::ClientSecretPost, "app", "s"))
            .unwrap()
            .credentials("t", 0)
            .unwrap();
        assert_eq!(
            c.form,
            vec![("client_id", "app".into()), ("client_secret", "s".into())]
        );
        let c = ClientAuth::new(&cfg(AuthMethod::None, "app", ""))
            .unwrap()
            .credentials("t", 0)
            .unwrap();
        assert_eq!(c.form, vec![("client_id", "app".into())]);
        assert!(c.authorization.is_none());
    }

    #[test]
    fn client_secret_jwt_assertion_claims() {
        let secret = "a-long-enough-shared-secret-for-hs256!!";
        let a = ClientAuth::new(&cfg(AuthMethod::ClientSecretJwt, "app", secret)).unwrap();
        let now = crate::unix_now();
        let c = a.credentials("https://idp.example/as/token", now).unwrap();
        assert_eq!(
            c.form[1],
            ("client_assertion_type", ASSERTION_TYPE.to_string())
        );
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.set_audience(&["https://idp.example/as/token"]);
        v.set_issuer(&["app"]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &c.form[2].1,
            &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "app");
        assert_eq!(data.claims["iat"], now);
        assert!(data.claims["exp"].as_u64().unwrap() <= now + 300);
        let again = a.credentials("https://idp.example/as/token", now).unwrap();
        assert_ne!(again.form[2].1, c.form[2].1, "a fresh jti every time");
    }
}
