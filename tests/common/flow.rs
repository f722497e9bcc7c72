//! Shared pieces of the login-flow tests: configs, browser-like clients, startup.

use std::time::Duration;

use reqwest::redirect::Policy;

use super::idp::{Idp, TestClient};
use super::{Echo, TestConfig, Tollgate};

pub const HANG: Duration = Duration::from_secs(30);

/// A tollgate config for `client` of `idp`: `/api` (required) and `/` (none) on `api`;
/// `extra_oidc` lines go into `[oidc]`.
pub fn tollgate_config(idp: &Idp, client: &TestClient, api: &str, extra_oidc: &str) -> TestConfig {
    TestConfig::for_client(idp, client)
        .oidc(extra_oidc)
        .route("/api", api, "")
        .route("/", api, "auth = \"none\"")
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

/// A client that keeps cookies in a jar the test can read, and follows redirects.
pub fn browser_with_jar() -> (std::sync::Arc<reqwest::cookie::Jar>, reqwest::Client) {
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let client = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .timeout(HANG)
        .build()
        .unwrap();
    (jar, client)
}

/// Every `Set-Cookie` line of `r`, whole.
pub fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
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
    let config = tollgate_config(idp, client, &echo.url(), extra_oidc);
    let mut tg = Tollgate::start_on(port, |p, m| config.render(p, m)).await;
    tg.wait_for("/readyz")
        .await
        .expect("ready once the provider metadata is loaded");
    tg
}

/// The value of attribute `attr` in the first tag after `after` in `html` (the provider's
/// forms, as a browser would read them).
pub fn html_attr(html: &str, after: &str, attr: &str) -> String {
    let from = html
        .find(after)
        .unwrap_or_else(|| panic!("{after} in {html}"));
    let rest = &html[from..];
    let start = rest.find(&format!("{attr}=\"")).unwrap() + attr.len() + 2;
    rest[start..start + rest[start..].find('"').unwrap()].to_string()
}

/// Logs the user out at the provider's end-session endpoint, as its confirmation form does,
/// with `browser` (which holds the provider's session cookie).
pub async fn end_session_at_provider(
    browser: &reqwest::Client,
    idp: &Idp,
    client_id: &str,
    id_token: &str,
) {
    let mut end_session = reqwest::Url::parse(&format!("{}/logout", idp.issuer)).unwrap();
    end_session
        .query_pairs_mut()
        .append_pair("id_token_hint", id_token)
        .append_pair("client_id", client_id);
    let page = browser
        .get(end_session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = html_attr(&page, "<form", "action");
    let xsrf = html_attr(&page, "name=\"xsrf\"", "value");
    let r = browser
        .post(action)
        .form(&[("xsrf", xsrf.as_str()), ("logout", "yes")])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status().is_redirection(),
        "{}",
        r.status()
    );
}

/// Waits (bounded) until the provider has delivered `n` back-channel logouts.
pub async fn backchannel_delivered(idp: &Idp, n: u64) -> serde_json::Value {
    let mut stats = idp.stats().await;
    for _ in 0..100 {
        if stats["backchannel"]["success"] == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = idp.stats().await;
    }
    stats
}

/// Starts tollgate on `port` (the port the provider knows) with `config`, ready once the
/// provider metadata is loaded.
pub async fn start_ready(port: u16, config: &TestConfig) -> Tollgate {
    let mut tg = Tollgate::start_on(port, |p, m| config.render(p, m)).await;
    tg.wait_for("/readyz")
        .await
        .expect("ready once the provider metadata is loaded");
    tg
}

/// A browser that went through `/login` at `tg` (the provider logs the test user in).
pub async fn logged_in(tg: &Tollgate) -> reqwest::Client {
    let b = browser();
    let r = b.get(tg.url("/login?return_to=/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "login did not complete: {}", tg.log());
    b
}

/// Logs a fresh browser in through `tg`: the `Cookie` header it then sends to `tg`.
pub async fn login_cookie(tg: &Tollgate) -> String {
    use reqwest::cookie::CookieStore;
    let (jar, b) = browser_with_jar();
    let r = b.get(tg.url("/login?return_to=/")).send().await.unwrap();
    assert_eq!(r.status(), 200, "login failed: {}", tg.log());
    jar.cookies(&tg.url("/").parse().unwrap())
        .expect("session cookies")
        .to_str()
        .unwrap()
        .to_string()
}

/// `GET path` at `tg` with the CSRF header, as the SPA calls an API: the JSON body.
pub async fn api_json(b: &reqwest::Client, tg: &Tollgate, path: &str) -> serde_json::Value {
    b.get(tg.url(path))
        .header("x-csrf", "1")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
