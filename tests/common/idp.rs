//! The test OpenID Provider (`tests/idp/`, the npm package `oidc-provider`) as a child process.
//!
//! It logs in a fixed test user without a human, so a plain HTTP client that follows redirects
//! and keeps cookies can drive a whole login. `.ci/run` installs it with `npm ci`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_http};

/// One registered client per token endpoint authentication method.
pub struct TestClient {
    pub id: &'static str,
    pub auth_method: &'static str,
    pub secret: Option<&'static str>,
    /// `(file under tests/idp/keys, alg)` for private_key_jwt.
    pub key: Option<(&'static str, &'static str, &'static str)>,
}

pub const CLIENTS: [TestClient; 7] = [
    TestClient {
        id: "tollgate-basic",
        auth_method: "client_secret_basic",
        secret: Some("basic-secret-0123456789abcdef0123456789"),
        key: None,
    },
    TestClient {
        id: "tollgate-post",
        auth_method: "client_secret_post",
        secret: Some("post-secret-0123456789abcdef0123456789"),
        key: None,
    },
    TestClient {
        id: "tollgate-jwt",
        auth_method: "client_secret_jwt",
        secret: Some("jwt-secret-0123456789abcdef0123456789abcdef"),
        key: None,
    },
    TestClient {
        id: "tollgate-pkjwt-rs256",
        auth_method: "private_key_jwt",
        secret: None,
        key: Some(("client_rsa.pem", "RS256", "rsa-1")),
    },
    TestClient {
        id: "tollgate-pkjwt-rs256",
        auth_method: "private_key_jwt",
        secret: None,
        key: Some(("client_rsa.pem", "PS256", "rsa-1")),
    },
    TestClient {
        id: "tollgate-pkjwt-es256",
        auth_method: "private_key_jwt",
        secret: None,
        key: Some(("client_ec.pem", "ES256", "ec-1")),
    },
    TestClient {
        id: "tollgate-pkjwt-eddsa",
        auth_method: "private_key_jwt",
        secret: None,
        key: Some(("client_ed25519.pem", "EdDSA", "ed-1")),
    },
];

/// A FAPI 2.0 client: the provider requires PAR and DPoP of it and signs its ID tokens ES256.
pub const FAPI2_CLIENT: TestClient = TestClient {
    id: "tollgate-fapi2",
    auth_method: "private_key_jwt",
    secret: None,
    key: Some(("client_ec.pem", "ES256", "ec-1")),
};

pub const PUBLIC_CLIENT: TestClient = TestClient {
    id: "tollgate-public",
    auth_method: "none",
    secret: None,
    key: None,
};

impl TestClient {
    /// The `[oidc]` lines for this client.
    pub fn oidc_toml(&self) -> String {
        let mut s = format!(
            "client_id = \"{}\"\nauth_method = \"{}\"\n",
            self.id, self.auth_method
        );
        if let Some(secret) = self.secret {
            s.push_str(&format!("client_secret = \"{secret}\"\n"));
        }
        if let Some((file, alg, kid)) = self.key {
            let path = idp_dir().join("keys").join(file);
            s.push_str(&format!(
                "private_key_file = {:?}\nprivate_key_alg = \"{alg}\"\nprivate_key_id = \"{kid}\"\n",
                path.display().to_string()
            ));
        }
        s
    }
}

pub fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("idp")
}

pub struct Idp {
    child: Option<Child>,
    pub port: u16,
    pub issuer: String,
    env: Vec<(&'static str, String)>,
    _state_dir: tempfile::TempDir,
}

impl Idp {
    /// Starts the provider accepting `redirect_uri`; `access_token_ttl` in seconds. Its state
    /// is kept in a file, so [`Idp::restart`] brings back the same grants and tokens.
    pub async fn start(
        redirect_uri: &str,
        post_logout_redirect_uri: &str,
        access_token_ttl: Option<u64>,
    ) -> Idp {
        Self::start_with(
            redirect_uri,
            post_logout_redirect_uri,
            access_token_ttl,
            false,
        )
        .await
    }

    /// As [`Idp::start`]; with `interactive`, the provider shows a login form (for a browser)
    /// instead of logging the test user in automatically.
    pub async fn start_with(
        redirect_uri: &str,
        post_logout_redirect_uri: &str,
        access_token_ttl: Option<u64>,
        interactive: bool,
    ) -> Idp {
        Self::launch(
            redirect_uri,
            post_logout_redirect_uri,
            access_token_ttl,
            interactive,
            &[],
        )
        .await
    }

    /// As [`Idp::start`] for tollgate on `port` (`/callback`, `/`), with `key=value` pairs in the
    /// provider's environment (e.g. `IDP_DISCOVERY_NO_REVOCATION`).
    pub async fn start_env(
        port: u16,
        access_token_ttl: Option<u64>,
        extra: &[(&'static str, &str)],
    ) -> Idp {
        Self::launch(
            &format!("http://127.0.0.1:{port}/callback"),
            &format!("http://127.0.0.1:{port}/"),
            access_token_ttl,
            false,
            extra,
        )
        .await
    }

    /// A provider whose client registers `redirect_uris` (comma-separated), for tollgate on
    /// `port` (post-logout `/`).
    pub async fn start_for_uris(
        port: u16,
        redirect_uris: &str,
        access_token_ttl: Option<u64>,
    ) -> Idp {
        Self::launch(
            redirect_uris,
            &format!("http://127.0.0.1:{port}/"),
            access_token_ttl,
            false,
            &[],
        )
        .await
    }

    async fn launch(
        redirect_uri: &str,
        post_logout_redirect_uri: &str,
        access_token_ttl: Option<u64>,
        interactive: bool,
        extra: &[(&'static str, &str)],
    ) -> Idp {
        let dir = idp_dir();
        assert!(
            dir.join("node_modules").join("oidc-provider").exists(),
            "the test provider is not installed: run `npm ci` in tests/idp (.ci/run does)"
        );
        let port = free_port();
        let state_dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("IDP_PORT", port.to_string()),
            ("REDIRECT_URIS", redirect_uri.to_string()),
            (
                "POST_LOGOUT_REDIRECT_URIS",
                post_logout_redirect_uri.to_string(),
            ),
            (
                "IDP_STATE_FILE",
                state_dir.path().join("state.json").display().to_string(),
            ),
        ];
        // Back-channel logouts go to tollgate beside the first redirect URI.
        if let Some(origin) = redirect_uri
            .split(',')
            .next()
            .and_then(|u| u.rsplit_once("/callback").map(|(origin, _)| origin))
        {
            env.push((
                "BACKCHANNEL_LOGOUT_URI",
                format!("{origin}/backchannel-logout"),
            ));
        }
        if let Some(ttl) = access_token_ttl {
            env.push(("ACCESS_TOKEN_TTL", ttl.to_string()));
        }
        if interactive {
            env.push(("IDP_INTERACTIVE", "1".to_string()));
        }
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let mut idp = Idp {
            child: None,
            port,
            issuer: format!("http://127.0.0.1:{port}/test/as"),
            env,
            _state_dir: state_dir,
        };
        idp.restart().await;
        idp
    }

    /// Restarts the provider with `key=value` in its environment (e.g. `IDP_PAR`).
    pub async fn restart_with(&mut self, key: &'static str, value: &str) {
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.to_string()));
        self.restart().await;
    }

    /// Starts the provider process (again) and waits for its discovery document.
    ///
    /// Twice in CI (never locally) a provider that was still running did not answer within
    /// 20-30 s. The cause is unknown, so a provider that does not answer within 30 s is
    /// reported with its own output and kernel state, and started once more.
    pub async fn restart(&mut self) {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        for attempt in 1..=2 {
            self.stop();
            let log_path = self._state_dir.path().join(format!("idp-{attempt}.log"));
            let log = std::fs::File::create(&log_path).expect("create the provider's log file");
            let child = Command::new("node")
                .arg(idp_dir().join("server.js"))
                .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdout(log.try_clone().expect("clone the log file handle"))
                .stderr(log)
                .spawn()
                .expect("start node (is Node.js installed?)");
            let child = self.child.insert(child);
            let pid = child.id();
            match wait_http(child, &url, Duration::from_secs(30)).await {
                Ok(()) => return,
                Err(e) => {
                    let proc_state = |f: &str| {
                        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
                            .unwrap_or_else(|e| format!("({e})"))
                    };
                    let report = format!(
                        "the test provider (attempt {attempt}) did not serve its discovery \
                         document: {e}\n  wchan: {}\n  stat: {}\n  loadavg: {}\n  output:\n{}",
                        proc_state("wchan"),
                        proc_state("stat").trim(),
                        std::fs::read_to_string("/proc/loadavg")
                            .unwrap_or_default()
                            .trim(),
                        std::fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    if attempt == 2 {
                        panic!("{report}");
                    }
                    eprintln!("{report}\n  starting it once more");
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A logout token with `claims` (over the provider's defaults: `iss`, a fresh `iat` and
    /// `jti`), signed with the provider's key, or with another key under its kid (`forged`).
    pub async fn logout_token(&self, claims: serde_json::Value, forged: bool) -> String {
        let url = self.url(if forged {
            "/__test/logout-token?forged=1"
        } else {
            "/__test/logout-token"
        });
        let r: serde_json::Value = reqwest::Client::new()
            .post(url)
            .json(&claims)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    }

    /// Token endpoint grants counted by the provider.
    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(self.url("/__test/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Calls the provider's userinfo endpoint with `access_token`.
    pub async fn userinfo(&self, access_token: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .get(format!("{}/userinfo", self.issuer))
            .bearer_auth(access_token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Makes the provider answer its next token request with `status` and `error`.
    pub async fn refuse_next_token(&self, status: u16, error: &str) {
        let r = reqwest::Client::new()
            .post(self.url(&format!(
                "/__test/refuse-next-token?status={status}&error={error}"
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Makes the provider leave its next token request unanswered and unprocessed.
    pub async fn stall_next_token(&self) {
        let r = reqwest::Client::new()
            .post(self.url("/__test/stall-next-token"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Resets the provider's grant counters.
    pub async fn reset_stats(&self) {
        reqwest::Client::new()
            .post(self.url("/__test/reset"))
            .send()
            .await
            .unwrap();
    }

    /// Calls the token endpoint directly: a refresh with `refresh_token` as client `client`.
    pub async fn try_refresh(
        &self,
        client_id: &str,
        secret: &str,
        refresh_token: &str,
    ) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Revokes `refresh_token` at the provider as client `client`.
    pub async fn revoke(&self, client_id: &str, secret: &str, refresh_token: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/revoke", self.issuer))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("token", refresh_token),
                ("token_type_hint", "refresh_token"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}
