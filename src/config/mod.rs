//! Configuration: from `conf/tollgate.toml` plus `TOLLGATE__*` overrides to a validated model.
//!
//! Loading happens in three steps: [`mod@env`] applies environment overrides to the parsed TOML
//! document, serde deserializes it into the file's types ([`mod@file`], with the deserializers of
//! [`de`]), and [`validate`] checks what types cannot express and builds the [`Config`]
//! ([`model`]). Nothing outside this module sees raw strings: URLs are parsed, keys decoded,
//! secrets read from their files, header values built. Every error names the key it is about.
//!
//! Each section lives in one file with everything about it, as oauth2-proxy keeps its
//! per-section options and validation together: the section as written (serde types and
//! defaults), its validated model, its rules, and their tests — [`server`], [`oidc`],
//! [`session`], [`csrf`], [`routes`], [`store`], [`tls`], [`telemetry`], [`admin`]. Adding a key touches
//! one file. Rules that tie sections together are in [`validate`]; rules several sections
//! apply in [`common`].

pub(crate) mod admin;
pub(crate) mod common;
pub(crate) mod csrf;
mod de;
pub(crate) mod env;
pub(crate) mod error;
pub(crate) mod file;
pub(crate) mod forward_auth;
pub(crate) mod model;
pub(crate) mod oidc;
pub(crate) mod routes;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod store;
pub(crate) mod telemetry;
#[cfg(test)]
mod tests;
pub(crate) mod tls;
pub mod validate;

use std::path::Path;

pub use admin::AdminConfig;
pub use csrf::CsrfConfig;
pub use error::{ConfigError, Secret};
pub use forward_auth::ForwardAuthConfig;
pub use model::Config;
pub use oidc::{
    AuthMethod, EndpointOverrides, OidcConfig, ParMode, PrivateKey, PrivateKeyKind, Profile,
    DEFAULT_PROVIDER,
};
pub use routes::{
    resource_tag, Audience, Balance, HealthCheckConfig, RouteAuth, RouteConfig, TokenBinding,
    UpstreamUrl,
};
pub use server::{Limits, ServerConfig};
pub use session::{DeviceBinding, SameSite, SessionConfig, Storage, CHUNK_SIZE, MAX_CHUNKS};
pub use store::{StoreConfig, StoreTarget};
pub use telemetry::{MetricsConfig, OtlpProtocol, TracingConfig};
pub use tls::TlsConfig;

/// The process's `TOLLGATE__*` variables. (`std::env::vars` would panic on any variable that
/// is not UTF-8, ours or not; others are skipped, and one of ours that is not is an error.)
fn process_overrides() -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with(env::PREFIX)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::Env {
            var: name.to_string(),
            problem: "the value is not valid UTF-8".into(),
        })?;
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

impl Config {
    /// Reads `path`, applies the process environment's `TOLLGATE__*` overrides and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path, process_overrides()?)
    }

    /// Parses and validates config text with the given environment (tests pass their own).
    /// Relative `*_file` paths are resolved against the working directory.
    pub fn from_toml_str<I>(text: &str, origin: &Path, vars: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut doc: toml::Value = toml::from_str::<toml::Table>(text)
            .map(toml::Value::Table)
            .map_err(|e| ConfigError::Syntax {
                path: origin.to_path_buf(),
                message: e.message().to_string(),
            })?;
        env::apply_overrides(&mut doc, vars)?;
        let raw: file::FileConfig = serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::invalid(
                if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                e.into_inner().message().to_string(),
            )
        })?;
        validate::validate(raw)
    }
}
