//! `[csrf]`: the header authenticated requests must carry and the extra origins accepted.
//!
//! serde already checked that `header` is a header name; what is left is refusing the standard
//! headers a browser or tollgate sets (requiring one of those would defend nothing) and
//! reducing each allowed origin to the `scheme://host[:port]` form browsers send.

use crate::config::file::CsrfSection;
use crate::config::{ConfigError, CsrfConfig};

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
