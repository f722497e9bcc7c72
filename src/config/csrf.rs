//! `[csrf]`: the header authenticated requests must carry and the extra origins accepted.
//!
//! serde already checked that `header` is a header name; what is left is refusing the standard
//! headers a browser or tollgate sets (requiring one of those would defend nothing) and
//! reducing each allowed origin to the `scheme://host[:port]` form browsers send.

use http::HeaderName;
use serde::Deserialize;

use super::de::{self, HttpUrl};
use super::error::ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CsrfSection {
    #[serde(default = "default_csrf_header", deserialize_with = "de::header_name")]
    pub header: HeaderName,
    #[serde(default, deserialize_with = "de::list")]
    pub allowed_origins: Vec<HttpUrl>,
}

impl Default for CsrfSection {
    fn default() -> Self {
        CsrfSection {
            header: default_csrf_header(),
            allowed_origins: Vec::new(),
        }
    }
}

fn default_csrf_header() -> HeaderName {
    HeaderName::from_static("x-csrf")
}

#[derive(Debug, Clone)]
pub struct CsrfConfig {
    /// The header that authenticated requests must carry.
    pub header: HeaderName,
    /// Origins accepted in `Origin` besides `public_url`'s.
    pub allowed_origins: Vec<String>,
}

/// Headers that browsers or tollgate set themselves: as the CSRF header they would prove nothing.
const STANDARD_HEADERS: [&str; 5] = ["cookie", "origin", "host", "authorization", "content-type"];

pub(super) fn csrf(c: CsrfSection) -> Result<CsrfConfig, ConfigError> {
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
