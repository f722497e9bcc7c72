//! tollgate's own endpoints: `/login`, `/callback`, `/logout` (and `/logout/continue`),
//! `/session`, `/healthz` and `/readyz`.
//!
//! Which path is which endpoint, which methods each takes, and how a failure is shown (a page
//! for a person in the login flow, JSON otherwise) are decided here; the work is done where it
//! belongs ([`crate::oidc`] for the login flow, [`crate::ops::health`] for health). Each
//! endpoint takes the request's [`Facts`] and returns a [`Reply`], so the proxy adapter only
//! writes what comes back.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde::Serialize;

use crate::binding::Binding;
use crate::oidc::logout::CONTINUE_PATH;
use crate::oidc::providers::LoginAt;
use crate::oidc::Providers;
use crate::ops::health::{self, Readiness};
use crate::reply::{Fault, Format, Reply};
use crate::request::Facts;
use crate::session::SessionError;
use crate::sessions::Sessions;

/// One of tollgate's own paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Login,
    /// The callback of the provider at this index (the default's at `callback_path`, each
    /// other one's below it).
    Callback(usize),
    Logout,
    LogoutContinue,
    BackchannelLogout,
    Session,
    Healthz,
    Readyz,
    /// `POST /dbsc/register` (with `device_binding = "dbsc"`).
    DeviceRegister,
    /// `POST /dbsc/refresh` (with `device_binding = "dbsc"`).
    DeviceRefresh,
}

/// The endpoints, built once from the config.
#[derive(Debug)]
pub(crate) struct Endpoints {
    providers: Arc<Providers>,
    readiness: Arc<Readiness>,
    callback_path: String,
    backchannel_logout_path: String,
    /// The DBSC endpoints, with `device_binding = "dbsc"`.
    binding: Option<Binding>,
}

#[derive(Serialize)]
struct SessionInfo<'a> {
    sub: &'a str,
    name: Option<&'a str>,
    email: Option<&'a str>,
    sid: Option<&'a str>,
    provider: &'a str,
    expires_at: u64,
    logout_url: &'a str,
}

impl Endpoints {
    pub(crate) fn new(
        providers: Arc<Providers>,
        readiness: Arc<Readiness>,
        callback_path: String,
        backchannel_logout_path: String,
    ) -> Self {
        Endpoints {
            providers,
            readiness,
            callback_path,
            backchannel_logout_path,
            binding: None,
        }
    }

    /// Serves the DBSC endpoints with `binding` (`device_binding = "dbsc"`).
    pub(crate) fn with_binding(mut self, binding: Option<Binding>) -> Self {
        self.binding = binding;
        self
    }

    /// Whether the endpoint at `path` reads the request body (up to `[server] max_body_bytes`).
    pub(crate) fn takes_body(&self, path: &str) -> bool {
        path == self.backchannel_logout_path
    }

    /// The endpoint at `path`, if it is one (checked before routing; never proxied).
    pub(crate) fn find(&self, path: &str) -> Option<Endpoint> {
        if let Some(i) = path
            .strip_prefix(self.callback_path.as_str())
            .and_then(|rest| self.providers.at_callback(rest))
        {
            return Some(Endpoint::Callback(i));
        }
        Some(match path {
            "/login" => Endpoint::Login,
            "/logout" => Endpoint::Logout,
            CONTINUE_PATH => Endpoint::LogoutContinue,
            "/session" => Endpoint::Session,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            p if p == self.backchannel_logout_path => Endpoint::BackchannelLogout,
            crate::sessions::device::REGISTER_PATH if self.binding.is_some() => {
                Endpoint::DeviceRegister
            }
            crate::sessions::device::REFRESH_PATH if self.binding.is_some() => {
                Endpoint::DeviceRefresh
            }
            _ => return None,
        })
    }

    /// Answers a request for `endpoint`.
    pub(crate) async fn answer(
        &self,
        endpoint: Endpoint,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Reply {
        let read_only = facts.method == Method::GET || facts.method == Method::HEAD;
        let person = Format::for_person(facts.accept());
        match endpoint {
            Endpoint::BackchannelLogout => self
                .providers
                .backchannel_logout(facts, sessions)
                .await
                .unwrap_or_else(Reply::from),
            Endpoint::Logout => self
                .providers
                .logout(facts, sessions)
                .await
                .unwrap_or_else(Reply::from),
            Endpoint::DeviceRegister | Endpoint::DeviceRefresh => {
                let Some(binding) = &self.binding else {
                    return Reply::from(Fault::NotFound);
                };
                let answer = if endpoint == Endpoint::DeviceRegister {
                    binding.register(facts, sessions).await
                } else {
                    binding.refresh(facts, sessions).await
                };
                answer.unwrap_or_else(Reply::from)
            }
            _ if !read_only => Reply::from(Fault::MethodNotAllowed),
            Endpoint::Login => match self.providers.for_login(facts) {
                Ok(LoginAt::Provider(oidc)) => oidc.login(facts).await,
                Ok(LoginAt::Chooser) => Ok(crate::oidc::chooser::page(&self.providers, facts)),
                Err(f) => Err(f),
            }
            .unwrap_or_else(|f| Reply::fault(f, person)),
            Endpoint::Callback(i) => self.providers.callback(i, facts, sessions).await,
            Endpoint::LogoutContinue => self
                .providers
                .default_provider()
                .logout_continue(facts)
                .unwrap_or_else(|f| Reply::fault(f, person)),
            Endpoint::Session => session_info(facts, sessions)
                .await
                .unwrap_or_else(Reply::from),
            Endpoint::Healthz => {
                let (status, body) = health::healthz();
                Reply::body(status, "application/json", Bytes::from(body))
            }
            Endpoint::Readyz => {
                let (status, body) = self.readiness.readyz();
                Reply::body(status, "application/json", Bytes::from(body))
            }
        }
    }
}

/// `/session`: what the SPA may know about the user; never a token.
async fn session_info(facts: &Facts<'_>, sessions: &Sessions) -> Result<Reply, Fault> {
    sessions
        .csrf()
        .check(facts.headers, facts.method)
        .map_err(Fault::Csrf)?;
    let opened = sessions.open(facts).await;
    let session = sessions
        .session(&opened.payload, facts)
        .map_err(|e| match e {
            SessionError::StoreUnavailable => Fault::StoreUnavailable,
            _ => Fault::Unauthenticated,
        })?;
    let c = &session.claims;
    Ok(Reply::json(
        200,
        &SessionInfo {
            sub: &c.sub,
            name: c.name.as_deref(),
            email: c.email.as_deref(),
            sid: c.sid.as_deref(),
            provider: session.provider_name(),
            expires_at: sessions.codec().expires_at(&session),
            logout_url: "/logout",
        },
    )
    .with_outcome("session"))
}
