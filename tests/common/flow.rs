//! Shared pieces of the login-flow tests: configs, browser-like clients, startup.

use std::time::Duration;

use reqwest::redirect::Policy;

use super::idp::{Idp, TestClient};
use super::{Echo, Tollgate, KEY};

pub const HANG: Duration = Duration::from_secs(30);

/// A tollgate config for `client` of `idp`; `extra_oidc` lines go into `[oidc]`.
pub fn tollgate_config(
    port: u16,
    metrics: u16,
    idp: &Idp,
    client: &TestClient,
    api: &str,
    extra_oidc: &str,
) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{port}"]
public_url = "http://127.0.0.1:{port}"
threads = 1
[oidc]
issuer = "{issuer}"
{client}
scopes = ["openid", "profile", "email"]
{extra_oidc}
[session]
keys = ["{KEY}"]
[[routes]]
prefix = "/api"
upstream = "{api}"
[[routes]]
prefix = "/"
upstream = "{api}"
auth = "none"
[metrics]
listen = "127.0.0.1:{metrics}"
"#,
        issuer = idp.issuer,
        client = client.oidc_toml(),
    )
}

/// A browser-like client: keeps cookies, follows redirects.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::limited(20))
        .timeout(HANG)
        .build()
        .unwrap()
}

/// A client that does not follow redirects and keeps no cookies.
pub fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(HANG)
        .build()
        .unwrap()
}

/// Starts a provider that accepts `/callback` on each of `ports`.
pub async fn idp_for(ports: &[u16]) -> Idp {
    let redirects: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/callback"))
        .collect();
    let post_logout: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/"))
        .collect();
    Idp::start(&redirects.join(","), &post_logout.join(","), None).await
}

pub async fn start_tollgate(port: u16, idp: &Idp, client: &TestClient, echo: &Echo) -> Tollgate {
    start_tollgate_with(port, idp, client, echo, "").await
}

pub async fn start_tollgate_with(
    port: u16,
    idp: &Idp,
    client: &TestClient,
    echo: &Echo,
    extra_oidc: &str,
) -> Tollgate {
    let api = echo.url();
    let mut tg = Tollgate::start_on(port, |p, m| {
        tollgate_config(p, m, idp, client, &api, extra_oidc)
    })
    .await;
    tg.wait_for("/readyz")
        .await
        .expect("ready once the provider metadata is loaded");
    tg
}
