//! OpenID Connect: logging the user in with the authorization code flow (PKCE S256).
//!
//! The flow, module by module:
//! [`discovery`] (provider metadata, kept fresh in the background) and [`jwks`] (signing keys)
//! → `/login` builds the authorization request and seals the per-login state ([`login`],
//! [`return_to`]) → `/callback` checks it, exchanges the code server-side ([`token_client`],
//! authenticating per [`client_auth`]), validates the ID token ([`id_token`]) and stores the
//! session ([`callback`]); [`refresh`] and [`logout`] run the rest of its life. Failures are
//! [`crate::reply::Fault`]s.

pub(crate) mod audience;
pub(crate) mod audience_tokens;
pub(crate) mod backchannel;
pub(crate) mod callback;
pub(crate) mod chooser;
pub(crate) mod client;
pub(crate) mod client_auth;
pub(crate) mod discovery;
pub mod dpop;
pub(crate) mod http;
pub(crate) mod id_token;
pub(crate) mod jwks;
pub(crate) mod lifetime;
pub mod login;
pub(crate) mod logout;
pub(crate) mod providers;
pub mod refresh;
pub(crate) mod return_to;
pub mod token_client;

pub(crate) use client::Oidc;
pub(crate) use providers::Providers;
