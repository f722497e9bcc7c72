//! `[admin]`: the admin API's own listener and the bearer token that guards it.
//!
//! The API lists and ends server-side sessions ([`crate::admin`]), so it is off unless
//! configured, listens apart from browser traffic (like `[metrics]`), and needs a token read
//! from a file (never written inline: the file is what a Kubernetes Secret mounts).

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use super::de::Addr;
use super::error::{ConfigError, Secret};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminSection {
    pub listen: Addr,
    pub token_file: String,
}

/// The shortest token accepted: a guessable token would hand out every user's sessions.
const MIN_TOKEN_LEN: usize = 32;

/// `[admin]`, validated: the address and the token, read from `token_file`.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Secret,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token)
            .finish()
    }
}

pub(super) fn admin(a: AdminSection) -> Result<AdminConfig, ConfigError> {
    let text = std::fs::read_to_string(&a.token_file).map_err(|e| {
        ConfigError::invalid(
            "admin.token_file",
            format!("cannot read {}: {e}", a.token_file),
        )
    })?;
    let token = text.trim();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::invalid(
            "admin.token_file",
            format!(
                "the token must be at least {MIN_TOKEN_LEN} printable characters without spaces \
                 (generate one with `tollgate genkey`)"
            ),
        ));
    }
    Ok(AdminConfig {
        listen: a.listen.0,
        token: Secret::new(token.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(token: &str) -> (AdminSection, tempfile::TempPath) {
        let path = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        std::fs::write(&path, token).unwrap();
        (
            AdminSection {
                listen: Addr("127.0.0.1:9102".parse().unwrap()),
                token_file: path.display().to_string(),
            },
            path,
        )
    }

    #[test]
    fn the_token_is_read_trimmed_and_never_shown() {
        let (s, _p) = section("  0123456789abcdef0123456789abcdef-x \n");
        let a = admin(s).unwrap();
        assert_eq!(a.token.expose(), "0123456789abcdef0123456789abcdef-x");
        assert!(!format!("{a:?}").contains("0123456789"));
    }

    #[test]
    fn a_short_or_missing_token_is_refused() {
        let (s, _p) = section("short");
        let e = admin(s).unwrap_err().to_string();
        assert!(e.contains("admin.token_file") && e.contains("32"), "{e}");
        let missing = AdminSection {
            listen: Addr("127.0.0.1:9102".parse().unwrap()),
            token_file: "/nonexistent/token".into(),
        };
        assert!(admin(missing)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
