//! The configuration file format, deserialized into typed values.
//!
//! These structs mirror `conf/tollgate.toml` one to one and reject unknown keys, so a typo is an
//! error rather than a silently ignored setting. serde gives every value its type here
//! (enums, durations, URLs, addresses, header names; see [`super::de`]) and fills in the
//! documented defaults, so a wrong value is refused with its key while parsing. What a type
//! cannot express (a path without a query, a secret read from a file, two keys that exclude
//! each other) is checked in [`super::validate`], which builds the [`super::Config`] the rest of
//! tollgate uses.

use serde::Deserialize;

use super::admin::AdminSection;
use super::csrf::CsrfSection;
use super::forward_auth::ForwardAuthSection;
use super::oidc::OidcSection;
use super::routes::RouteSection;
use super::server::ServerSection;
use super::session::SessionSection;
use super::store::StoreSection;
use super::telemetry::{MetricsSection, TracingSection};
use super::tls::TlsSection;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub server: ServerSection,
    pub oidc: OidcSection,
    pub session: SessionSection,
    #[serde(default)]
    pub csrf: CsrfSection,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub metrics: MetricsSection,
    pub store: Option<StoreSection>,
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub tracing: TracingSection,
    pub admin: Option<AdminSection>,
    pub forward_auth: Option<ForwardAuthSection>,
    /// `[providers.NAME]`: providers besides `[oidc]` (the default one).
    #[serde(default)]
    pub providers: std::collections::BTreeMap<String, OidcSection>,
}
