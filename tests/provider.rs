//! Providers that differ from the common case: what tollgate tells the operator at start-up
//! and how it copes with what the provider's metadata leaves out or gets wrong, against the
//! real test provider.

mod common;

use common::*;

/// The JSON log lines of `log` whose message is `message`.
fn log_lines(log: &str, message: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Providers compare redirect URIs character for character: the start-up log names the
/// exact strings tollgate sends, the default post-logout URI with the `/` after the host and
/// a configured one as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_log_names_the_exact_uris_to_register() {
    for configured in [None, Some("http://app.example.test")] {
        let mut config = TestConfig::without_provider().route("/", "http://127.0.0.1:1", "");
        if let Some(uri) = configured {
            config = config.oidc(&format!("post_logout_redirect_uri = \"{uri}\""));
        }
        let tg = Tollgate::start(|p, m| config.render(p, m)).await;
        let public = format!("http://127.0.0.1:{}", tg.port);
        let lines = log_lines(&tg.log(), "register exactly these URIs at the provider");
        assert_eq!(lines.len(), 1, "{}", tg.log());
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["redirect_uri"], format!("{public}/callback"));
        assert_eq!(
            line["post_logout_redirect_uri"],
            configured.map_or(format!("{public}/"), str::to_string)
        );
        assert_eq!(
            line["backchannel_logout_uri"],
            format!("{public}/backchannel-logout")
        );
    }
}
