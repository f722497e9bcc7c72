//! Who the user is, for a route with `identity_headers`: `X-Auth-Request-User`, `-Email` and
//! `-Groups`, as oauth2-proxy names them, read from the claims the session kept at login.

use http::HeaderValue;

use super::headers::Identity;
use crate::claims;
use crate::session::Session;

/// The identity of `session` for its headers; a value that cannot be a header (a control
/// character in a claim) is left out and logged, never sent half-way.
pub(crate) fn identity(
    session: &Session<'_>,
    groups_claim: &str,
    request_id: &str,
) -> Option<Box<Identity>> {
    let value = |what: &'static str, text: &str| {
        HeaderValue::from_str(text)
            .inspect_err(|_| {
                tracing::warn!(
                    request_id,
                    claim = what,
                    "identity header left out: the claim is not a valid header value"
                )
            })
            .ok()
    };
    // Comma-separated: a group whose name has a comma (an LDAP DN) would be split upstream,
    // so then the header is left out rather than sent ambiguous.
    let groups = claims::claim(&session.kept_claims, groups_claim)
        .map(|g| g.values().iter().map(|v| v.text()).collect::<Vec<_>>())
        .filter(|g| !g.is_empty())
        .filter(|g| {
            let plain = g.iter().all(|v| !v.contains(','));
            if !plain {
                tracing::warn!(
                    request_id,
                    "X-Auth-Request-Groups left out: a group name has a comma"
                );
            }
            plain
        })
        .map(|g| g.join(","));
    Some(Box::new(Identity {
        user: value("sub", &session.claims.sub)?,
        // Only a verified address: upstreams written for oauth2-proxy trust this header, and
        // oauth2-proxy refuses unverified ones (a self-registered `admin@corp.example`).
        email: session
            .claims
            .email
            .as_deref()
            .filter(|_| {
                claims::claim(&session.kept_claims, "email_verified")
                    == Some(&claims::ClaimValue::One(claims::Scalar::Bool(true)))
            })
            .and_then(|e| value("email", e)),
        groups: groups.as_deref().and_then(|g| value("groups", g)),
    }))
}
