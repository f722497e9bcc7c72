//! `[session]`: the session cookie's name, sealing keys, SameSite and lifetimes.
//!
//! The keys are secrets, so they are decoded here rather than by serde: an error names the key
//! by position (`session.keys[0]`, or its line in `keys_file`) and never quotes it. Whether a
//! key is one of the repository's published examples depends on `server.public_url`, so that
//! check is with the other cross-section checks in the parent module.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::de::{self, secs};
use super::error::ConfigError;
use base64::Engine;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SessionSection {
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// Base64 text: decoded in validation, which names each key without quoting it.
    #[serde(default, deserialize_with = "de::opt_list")]
    pub keys: Option<Vec<String>>,
    pub keys_file: Option<String>,
    #[serde(default = "default_same_site")]
    pub same_site: SameSiteSetting,
    #[serde(default = "secs::<86400>", deserialize_with = "de::duration")]
    pub max_lifetime: Duration,
    #[serde(default = "secs::<28800>", deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    #[serde(default = "secs::<30>", deserialize_with = "de::duration")]
    pub refresh_skew: Duration,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub device_binding: DeviceBinding,
    #[serde(default = "secs::<300>", deserialize_with = "de::duration")]
    pub bound_cookie_lifetime: Duration,
}

/// `device_binding`: whether sessions are bound to a key on the browser's device (DBSC,
/// [`crate::session::dbsc`]). `"off"` (the default) or `"dbsc"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceBinding {
    #[default]
    Off,
    Dbsc,
}

/// The shortest `bound_cookie_lifetime`: a browser refreshes its bound cookie before each
/// expiry, so a shorter one costs a signed round trip every few seconds.
pub(crate) const MIN_BOUND_COOKIE_SECS: u64 = 10;

/// `storage`: where a session lives. `"cookie"` (the default): sealed whole in the browser's
/// cookies. `"store"`: sealed in the store (`[store]`, or this process's memory without one),
/// the cookie holding only a sealed handle ([`crate::sessions`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    #[default]
    Cookie,
    Store,
}

/// `same_site` as written. `"none"` is a real SameSite value, so it parses, and validation
/// refuses it with the reason (it would defeat the CSRF defence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SameSiteSetting {
    #[serde(alias = "Lax")]
    Lax,
    #[serde(alias = "Strict")]
    Strict,
    #[serde(alias = "None")]
    None,
}

fn default_cookie_name() -> String {
    "__Host-tollgate".into()
}

fn default_same_site() -> SameSiteSetting {
    SameSiteSetting::Lax
}

// The session cookie's wire limits ([`crate::session::cookie`]), here so that validation
// (`[server] max_cookie_bytes` against what a session may need) reads no runtime code.
/// The longest value put in one cookie; with the name and attributes it stays under 4096 bytes.
pub const CHUNK_SIZE: usize = 3800;

/// Chunks beyond this are ignored on read and never written (≈ 38 KB of session).
pub const MAX_CHUNKS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
}

#[derive(Clone)]
pub struct SessionConfig {
    /// The cookie name actually used (without `__Host-` when cookies are not `Secure`).
    pub cookie_name: String,
    /// Set when the configured name had to lose its `__Host-` prefix (http `public_url`).
    pub dropped_host_prefix: bool,
    /// Sealing keys: the first seals, all open.
    pub keys: Vec<[u8; 32]>,
    pub same_site: SameSite,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    /// Refresh the access token when it expires within this long.
    pub refresh_skew: Duration,
    /// Where sessions live: in cookies, or in the store behind a handle cookie.
    pub storage: Storage,
    /// Whether sessions are bound to the browser's device (DBSC).
    pub device_binding: DeviceBinding,
    /// How long a bound cookie proves the device (then the browser refreshes it).
    pub bound_cookie_lifetime: Duration,
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("cookie_name", &self.cookie_name)
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("same_site", &self.same_site)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("refresh_skew", &self.refresh_skew)
            .field("storage", &self.storage)
            .field("device_binding", &self.device_binding)
            .field("bound_cookie_lifetime", &self.bound_cookie_lifetime)
            .finish()
    }
}

/// Every session key published in this repository as an example: `conf/tollgate.toml`,
/// `benches/load/run.py` and the test suites (`tests/common/mod.rs`), the Kubernetes example
/// overlay (`deploy/kubernetes/overlays/example/secrets/cookie_keys.example`), and the all-zero
/// key of the unit tests. Anyone can read them, so anyone could forge sessions sealed with
/// them: they are accepted only where nobody else can reach tollgate, on a loopback `http`
/// `public_url`. A new example key elsewhere in the repository belongs in this list.
pub(crate) const EXAMPLE_SESSION_KEYS: [&str; 3] = [
    "bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=",
    "cX/YoznuBp7+yL48hHfkYSHiNy865Fe3gut4ykzT2+E=",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
];

/// The session config and, for each key, the name errors about it use.
pub(super) struct Session {
    pub config: SessionConfig,
    pub key_names: Vec<String>,
}

pub(super) fn session(s: SessionSection, secure: bool) -> Result<Session, ConfigError> {
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
    let mut key_names = Vec::with_capacity(encoded.len());
    for (key_name, k) in encoded {
        match decode_key(&k) {
            Ok(key) => keys.push(key),
            Err(problem) => return Err(ConfigError::invalid(key_name, problem)),
        }
        key_names.push(key_name);
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
    if s.bound_cookie_lifetime.as_secs() < MIN_BOUND_COOKIE_SECS {
        return Err(ConfigError::invalid(
            "session.bound_cookie_lifetime",
            format!("must be at least {MIN_BOUND_COOKIE_SECS}s"),
        ));
    }
    if s.device_binding == DeviceBinding::Dbsc && !secure {
        return Err(ConfigError::invalid(
            "session.device_binding",
            "\"dbsc\" needs an https server.public_url (browsers bind sessions over HTTPS only)",
        ));
    }
    Ok(Session {
        config: SessionConfig {
            cookie_name,
            dropped_host_prefix,
            keys,
            same_site,
            max_lifetime: s.max_lifetime,
            idle_timeout: s.idle_timeout,
            refresh_skew: s.refresh_skew,
            storage: s.storage,
            device_binding: s.device_binding,
            bound_cookie_lifetime: s.bound_cookie_lifetime,
        },
        key_names,
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
