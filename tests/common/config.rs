//! The config text of the tollgate processes tests start.
//!
//! Every test needs the same frame (`[server]` on the chosen port, `[session]` with the test
//! key, `[metrics]` on the chosen metrics port); what differs is the provider, the routes and a
//! few keys. One builder keeps that frame in one place, so a new required key or a renamed one
//! is a one-line change for every test.

use super::idp::{Idp, TestClient};
use super::{CLIENT_SECRET, KEY};

/// A tollgate config under construction; [`TestConfig::render`] fills in the ports.
#[derive(Clone, Debug)]
pub struct TestConfig {
    threads: u8,
    server: String,
    oidc: String,
    scopes: &'static [&'static str],
    sections: String,
    session: String,
    routes: String,
    public_url: Option<String>,
    key: Option<String>,
}

impl TestConfig {
    /// No provider behind it: the issuer is a closed port. For tests that mint their sessions
    /// through the library and never log in.
    pub fn without_provider() -> Self {
        Self::with_oidc(format!(
            "issuer = \"http://127.0.0.1:1/as\"\nclient_id = \"tollgate-test\"\n\
             client_secret = \"{CLIENT_SECRET}\"\n"
        ))
    }

    /// Logs in through `idp` as `client`.
    pub fn for_client(idp: &Idp, client: &TestClient) -> Self {
        Self::with_oidc(format!(
            "issuer = \"{}\"\n{}",
            idp.issuer,
            client.oidc_toml()
        ))
    }

    /// An `[oidc]` section written out by the test.
    pub fn with_oidc_text(oidc: String) -> Self {
        Self::with_oidc(oidc)
    }

    fn with_oidc(oidc: String) -> Self {
        TestConfig {
            threads: 1,
            server: String::new(),
            oidc,
            scopes: &["openid", "profile", "email"],
            sections: String::new(),
            session: String::new(),
            routes: String::new(),
            public_url: None,
            key: None,
        }
    }

    pub fn threads(mut self, threads: u8) -> Self {
        self.threads = threads;
        self
    }

    /// `server.public_url` (default `http://127.0.0.1:{port}`).
    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.to_string());
        self
    }

    /// A fresh random session key instead of the published test key, which tollgate accepts
    /// only with a loopback http `public_url`.
    pub fn random_key(mut self) -> Self {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        self.key = Some(base64::engine::general_purpose::STANDARD.encode(key));
        self
    }

    /// Extra `[server]` lines.
    pub fn server(mut self, lines: &str) -> Self {
        self.server.push_str(lines);
        self.server.push('\n');
        self
    }

    /// Extra `[session]` lines.
    pub fn session(mut self, lines: &str) -> Self {
        self.session.push_str(lines);
        self.session.push('\n');
        self
    }

    /// Extra `[oidc]` lines.
    pub fn oidc(mut self, lines: &str) -> Self {
        self.oidc.push_str(lines);
        self.oidc.push('\n');
        self
    }

    pub fn scopes(mut self, scopes: &'static [&'static str]) -> Self {
        self.scopes = scopes;
        self
    }

    /// A whole extra section, e.g. `[csrf]` with its keys.
    pub fn section(mut self, text: &str) -> Self {
        self.sections.push_str(text);
        self.sections.push('\n');
        self
    }

    /// A `[[routes]]` entry; `lines` are its keys beyond `prefix` and `upstream`.
    pub fn route(mut self, prefix: &str, upstream: &str, lines: &str) -> Self {
        self.routes.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"{upstream}\"\n{lines}\n"
        ));
        self
    }

    /// The config text for tollgate on `port` with metrics on `metrics_port`.
    pub fn render(&self, port: u16, metrics_port: u16) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(|s| format!("\"{s}\"")).collect();
        let public_url = self
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}"));
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\npublic_url = \"{public_url}\"\n\
             threads = {threads}\n{server}\n\
             [oidc]\n{oidc}scopes = [{scopes}]\n\n\
             [session]\nkeys = [\"{key}\"]\n{session}\n\
             {sections}\
             {routes}\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            threads = self.threads,
            key = self.key.as_deref().unwrap_or(KEY),
            server = self.server,
            oidc = self.oidc,
            scopes = scopes.join(", "),
            sections = self.sections,
            session = self.session,
            routes = self.routes,
        )
    }
}
