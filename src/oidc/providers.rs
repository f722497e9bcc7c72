//! Several identity providers behind one tollgate: `[oidc]` (named `default`) and each
//! `[providers.NAME]`, one [`Oidc`] client each.
//!
//! A login picks its provider (`/login?provider=NAME`, else the request's host when a provider
//! lists it in `hosts`, else the default); from then on the session names it, and its refresh,
//! logout, revocation and route tokens go to that provider only. A back-channel logout is
//! dispatched by its token's issuer. Each provider loads its metadata on its own, so one that
//! is down stops only its own logins and refreshes.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::Oidc;
use crate::reply::{Fault, Reply};
use crate::request::Facts;
use crate::session::record::Record;
use crate::session::Session;
use crate::sessions::Sessions;

/// The configured providers, the default first.
#[derive(Debug)]
pub(crate) struct Providers {
    list: Vec<Arc<Oidc>>,
    /// Host (lowercase, no port) → index in `list`.
    hosts: HashMap<String, usize>,
    /// `/login` without a provider (and no host that picks one) lists them.
    chooser: bool,
}

/// Where a `/login` goes.
#[derive(Debug)]
pub(crate) enum LoginAt<'p> {
    Provider(&'p Arc<Oidc>),
    /// The chooser page (`[server] provider_chooser`).
    Chooser,
}

impl Providers {
    /// `list` with the default provider first; `hosts` from each one's `hosts`.
    pub(crate) fn new(list: Vec<(Arc<Oidc>, Vec<String>)>, chooser: bool) -> Providers {
        let mut hosts = HashMap::new();
        for (i, (_, names)) in list.iter().enumerate() {
            for h in names {
                hosts.entry(h.clone()).or_insert(i);
            }
        }
        Providers {
            list: list.into_iter().map(|(o, _)| o).collect(),
            hosts,
            chooser,
        }
    }

    /// One provider, the default (tests and single-provider tools).
    #[cfg(test)]
    pub(crate) fn one(oidc: Arc<Oidc>) -> Providers {
        Providers::new(vec![(oidc, Vec::new())], false)
    }

    /// `[oidc]`.
    pub(crate) fn default_provider(&self) -> &Arc<Oidc> {
        &self.list[0]
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Oidc>> {
        self.list.iter().find(|o| o.name == name)
    }

    /// The provider that issued `session`'s tokens. A session naming a provider that is no
    /// longer configured has none.
    pub(crate) fn of(&self, session: &Session<'_>) -> Option<&Arc<Oidc>> {
        self.get(session.provider_name())
    }

    /// The provider whose configured issuer is `iss`.
    pub(crate) fn by_issuer(&self, iss: &str) -> Option<&Arc<Oidc>> {
        self.list.iter().find(|o| o.issuer_id == iss)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<Oidc>> {
        self.list.iter()
    }

    /// The names, comma-separated (for messages).
    pub(crate) fn names(&self) -> String {
        self.list
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where `/login` goes: the query's `provider` (unknown: `400 unknown_provider`), else the
    /// provider listing the request's host, else the chooser when on and there are several,
    /// else the default.
    pub(crate) fn for_login<'p>(&'p self, facts: &Facts<'_>) -> Result<LoginAt<'p>, Fault> {
        if let Some(name) = query_provider(facts.query) {
            return self
                .get(&name)
                .map(LoginAt::Provider)
                .ok_or_else(|| Fault::UnknownProvider(self.names()));
        }
        let host = facts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(crate::request::host_without_port);
        if let Some(i) = host.and_then(|h| self.hosts.get(&h)) {
            return Ok(LoginAt::Provider(&self.list[*i]));
        }
        if self.chooser && self.list.len() > 1 {
            return Ok(LoginAt::Chooser);
        }
        Ok(LoginAt::Provider(self.default_provider()))
    }
}

impl Providers {
    /// The provider whose callback is at `{callback_path}{rest}`: the default at the path
    /// itself, each other one at `/{name}` below it.
    pub(crate) fn at_callback(&self, rest: &str) -> Option<usize> {
        if rest.is_empty() {
            return Some(0);
        }
        let name = rest.strip_prefix('/')?;
        self.list
            .iter()
            .skip(1)
            .position(|o| o.name == name)
            .map(|i| i + 1)
    }

    /// `GET {callback_path}[/{name}]`, at the provider whose path it is (`index`, from
    /// [`Providers::at_callback`]). The login state must name the same provider: an answer
    /// that comes back on another provider's path is refused (mix-up).
    pub(crate) async fn callback(
        &self,
        index: usize,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Reply {
        let oidc = self
            .list
            .get(index)
            .unwrap_or_else(|| self.default_provider());
        oidc.callback(facts, sessions).await
    }

    /// `/logout`, at the provider of the request's session (revocation and end-session go
    /// there); the default one without a session.
    pub(crate) async fn logout(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Result<Reply, Fault> {
        let oidc = if self.list.len() == 1 {
            self.default_provider()
        } else {
            let opened = sessions.open(facts).await;
            opened
                .payload
                .as_ref()
                .ok()
                .and_then(|p| self.get(p.session().provider_name()))
                .unwrap_or_else(|| self.default_provider())
        };
        oidc.logout(facts, sessions).await
    }

    /// `POST {backchannel_logout_path}`, checked by the provider its token names as issuer
    /// (then against that provider's keys, issuer and client id).
    pub(crate) async fn backchannel_logout(
        &self,
        facts: &Facts<'_>,
        sessions: &Sessions,
    ) -> Result<Reply, Fault> {
        let oidc = if self.list.len() == 1 {
            self.default_provider()
        } else {
            match facts
                .body
                .and_then(super::backchannel::claimed_issuer)
                .and_then(|iss| self.by_issuer(&iss))
            {
                Some(o) => o,
                None => {
                    tracing::warn!(
                        request_id = facts.request_id,
                        "back-channel logout refused: its issuer is none of the providers"
                    );
                    return Err(Fault::InvalidLogoutToken);
                }
            }
        };
        oidc.backchannel_logout(facts, sessions).await
    }

    /// Revokes what `session` holds at its provider.
    pub(crate) async fn end_tokens(&self, session: &Session<'_>, rid: &str) {
        match self.of(session) {
            Some(oidc) => oidc.end_tokens(session, rid).await,
            None => tracing::warn!(
                request_id = rid,
                provider = session.provider_name(),
                "the session's provider is no longer configured: its tokens were not revoked"
            ),
        }
    }

    /// [`Self::end_tokens`] for each of `ended`, a few at a time.
    pub(crate) async fn end_all_tokens(&self, ended: &[Record], rid: &str) {
        for batch in ended.chunks(8) {
            futures_util::future::join_all(batch.iter().map(|r| self.end_tokens(&r.session, rid)))
                .await;
        }
    }
}

/// `provider` in a `/login` query string.
fn query_provider(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query?)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == "provider")
        .map(|(_, v)| v)
}

/// `Host` lowercased, without its port (`[::1]:8080` → `[::1]`).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::host_without_port;

    #[test]
    fn hosts_lose_their_port_and_case() {
        assert_eq!(
            host_without_port("Partner.Example.com:8443"),
            "partner.example.com"
        );
        assert_eq!(
            host_without_port("partner.example.com"),
            "partner.example.com"
        );
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
    }

    #[test]
    fn the_query_names_the_provider() {
        assert_eq!(
            query_provider(Some("return_to=/a&provider=b")).as_deref(),
            Some("b")
        );
        assert_eq!(query_provider(Some("return_to=/a")), None);
        assert_eq!(query_provider(None), None);
    }
}
