//! Writes the seeds of the fuzz targets in `fuzz/`: real sealed sessions
//! (`fuzz/seeds/sessions.txt`, made by the session codec from the test fixture and from the
//! captured provider's tokens) and one seed file per case under `fuzz/corpus/<target>/`, built
//! from the artefacts `fuzz/seeds/capture.sh` captured from the test provider (its discovery
//! document, JWKS, a token response, signed tokens).
//!
//! ```sh
//! cargo run --features fuzzing --example fuzz_seeds
//! ```
//!
//! `fuzz/seeds/sessions.txt` is kept when it exists (delete it for new seals, and the
//! `session_open` corpus with it: its inputs hold those seals). Re-run this after `capture.sh`;
//! then let the targets run and `cargo fuzz cmin` the corpora.

use std::fs;
use std::path::{Path, PathBuf};

use tollgate::fuzzing::{Harness, COOKIE, NOW};
use tollgate::session::{fixture, Claims, Session};

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn write(target: &str, name: &str, mode: Option<u8>, body: &[u8]) {
    let dir = PathBuf::from("fuzz/corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    let mut bytes = mode.map(|m| vec![m]).unwrap_or_default();
    bytes.extend_from_slice(body);
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
}

fn main() {
    let idp = Path::new("fuzz/seeds/idp");
    let h = Harness::new(
        read(idp, "discovery.json").as_bytes(),
        read(idp, "jwks.json").as_bytes(),
    );
    let tokens: serde_json::Value =
        serde_json::from_str(&read(idp, "token_response.json")).expect("token response");
    let id_token = read(idp, "id_token.jwt");
    let logout_token = read(idp, "logout_token.jwt");

    // Real sealed sessions: the fixture (three 1.2 KB tokens: chunked), the provider's tokens
    // (one cookie), and one whose access token is due for a refresh.
    let text = |k: &str| tokens[k].as_str().map(|s| s.to_string().into());
    let from_provider = Session {
        access_token: text("access_token").expect("access_token"),
        access_expires_at: NOW + 3000,
        access_lifetime: 3600,
        refresh_token: text("refresh_token"),
        refresh_expires_at: None,
        id_token: text("id_token"),
        claims: Claims {
            sub: "test-user".into(),
            sid: None,
            name: Some("Test User".into()),
            email: Some("test.user@example.com".into()),
        },
        created_at: NOW - 10,
        last_seen: NOW - 10,
        id: 7,
        kept_claims: Default::default(),
        dpop_key: None,
        resources: vec![tollgate::config::resource_tag("https://orders.example")].into(),
        device_key: None,
        provider: None,
    };
    let mut due = from_provider.clone();
    due.access_expires_at = NOW + 5;
    // Kept once made: a seal has a random nonce, and the `session_open` corpus holds these.
    let sessions_file = Path::new("fuzz/seeds/sessions.txt");
    let sessions: Vec<String> = match fs::read_to_string(sessions_file) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => {
            let sessions: Vec<String> = [
                fixture::session(NOW - 10, &fixture::jwt(1200, 1)),
                from_provider,
                due,
            ]
            .iter()
            .map(|s| h.sealed_session(s).expect("a session seals"))
            .collect();
            fs::write(sessions_file, sessions.join("\n") + "\n").expect("sessions.txt");
            sessions
        }
    };

    // target_path: request targets, plain and in the spellings the check is about.
    for (i, t) in [
        "/",
        "/api/items?id=3",
        "/api/admin/users",
        "/static/app.js",
        "/a/b/c",
        "/login?return_to=/app",
        "/callback?code=x&state=y",
        "/logout/continue",
        "http://app.example.com/api/x?y=1",
        "/%61pi/admin",
        "/api;jsessionid=1/admin",
        "/api%2Fadmin",
        "/api/%2e%2e/admin",
        "//api/admin",
        "/static/..%2fapi",
        "/a%2Fb",
        "/api\\admin",
    ]
    .iter()
    .enumerate()
    {
        write("target_path", &i.to_string(), None, t.as_bytes());
    }

    // cookie_header: real session cookies next to an app's own, and chunk values.
    let app = "theme=dark; __Host-tg-theme=1";
    for (i, s) in sessions.iter().enumerate() {
        write(
            "cookie_header",
            &format!("session-{i}"),
            Some(0),
            format!("{app}; {s}").as_bytes(),
        );
    }
    write(
        "cookie_header",
        "helpers",
        Some(0),
        format!("{COOKIE}-login-abcdefghijklmnop=x; {COOKIE}-logout=y; {COOKIE}.3=z\na=b")
            .as_bytes(),
    );
    write("cookie_header", "chunks", Some(15), &[7u8; 600]);

    // session_open: the real sessions, a mutation of each, and a sealed payload.
    for (i, s) in sessions.iter().enumerate() {
        write(
            "session_open",
            &format!("session-{i}"),
            Some(0),
            s.as_bytes(),
        );
        write(
            "session_open",
            &format!("flip-{i}"),
            Some(1),
            &[i as u8, 10, 0, 1],
        );
    }
    write("session_open", "payload", Some(2), &[2, 1, b'a', 0]);

    // query_params: the captured callback query (its state as `STATE`), logins, logouts.
    let callback = read(idp, "callback_query.txt");
    let callback = callback.trim().trim_start_matches('?');
    let callback: String = callback
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("state", _)) => "state=STATE".to_string(),
            _ => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&");
    write(
        "query_params",
        "login",
        Some(0),
        b"return_to=%2Fapp%2Fitems%3Fid%3D3&prompt=login\n\ntext/html",
    );
    write(
        "query_params",
        "login-cookies",
        Some(0),
        format!("return_to=/x\n{COOKIE}-login-abcdefghijklmnop=x").as_bytes(),
    );
    write(
        "query_params",
        "callback",
        Some(1),
        format!("{callback}\n\ntext/html").as_bytes(),
    );
    write(
        "query_params",
        "callback-error",
        Some(2),
        b"error=access_denied&state=abcdefghijklmnopq\n\napplication/json",
    );
    write(
        "query_params",
        "logout-get",
        Some(3),
        format!("\n{}", sessions[1]).as_bytes(),
    );
    write(
        "query_params",
        "logout-post",
        Some(4),
        format!("\n{}\napplication/json", sessions[0]).as_bytes(),
    );
    write(
        "query_params",
        "return-to",
        Some(5),
        b"/app/%2F%2Fevil.example",
    );

    // provider_json: the provider's own documents.
    write(
        "provider_json",
        "token-response",
        Some(0),
        read(idp, "token_response.json").as_bytes(),
    );
    write(
        "provider_json",
        "token-error",
        Some(1),
        br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
    );
    write(
        "provider_json",
        "discovery",
        Some(2),
        read(idp, "discovery.json").as_bytes(),
    );
    write(
        "provider_json",
        "jwks",
        Some(3),
        format!("idp-rs256 RS256\n{}", read(idp, "jwks.json")).as_bytes(),
    );

    // jwt: tokens the provider signed.
    write("jwt", "id-token", Some(0), id_token.as_bytes());
    write("jwt", "id-token-refresh", Some(1), id_token.as_bytes());
    write(
        "jwt",
        "logout-token",
        Some(2),
        format!("logout_token={logout_token}").as_bytes(),
    );
    write(
        "jwt",
        "backchannel",
        Some(3),
        format!("logout_token={logout_token}").as_bytes(),
    );

    // config: the shipped config without its comments, and with overrides.
    let shipped: String = fs::read_to_string("conf/tollgate.toml")
        .expect("conf/tollgate.toml")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    write("config", "shipped", None, shipped.as_bytes());
    write(
        "config",
        "overrides",
        None,
        format!(
            "{shipped}\0OIDC__CLIENT_ID=other\nROUTES__2__PREFIX=/v2\nROUTES__2__UPSTREAM=http://127.0.0.1:9\nSERVER__LISTEN=[\"127.0.0.1:1\"]\nSESSION__SAME_SITE=strict"
        )
        .as_bytes(),
    );
    println!("seeds written to fuzz/corpus/ and fuzz/seeds/sessions.txt");
}
