//! `[session]`: the session cookie's name, sealing keys, SameSite and lifetimes.
//!
//! The keys are secrets, so they are decoded here rather than by serde: an error names the key
//! by position (`session.keys[0]`, or its line in `keys_file`) and never quotes it. Whether a
//! key is one of the repository's published examples depends on `server.public_url`, so that
//! check is with the other cross-section checks in the parent module.

use base64::Engine;

use crate::config::file::{SameSiteSetting, SessionSection};
use crate::config::{ConfigError, SameSite, SessionConfig};

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
    Ok(Session {
        config: SessionConfig {
            cookie_name,
            dropped_host_prefix,
            keys,
            same_site,
            max_lifetime: s.max_lifetime,
            idle_timeout: s.idle_timeout,
            refresh_skew: s.refresh_skew,
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
