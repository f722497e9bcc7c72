//! Loading whole configurations: the shipped example, each section's errors naming their key,
//! environment overrides, secrets from files, the example session keys.

use std::time::Duration;

use super::session::{decode_key, EXAMPLE_SESSION_KEYS};
use super::*;
use std::path::Path;

const EXAMPLE: &str = include_str!("../../conf/tollgate.toml");

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_str(
        text,
        Path::new("test.toml"),
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn err(text: &str, vars: &[(&str, &str)]) -> String {
    match load(text, vars) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A session key made for this run, published nowhere: accepted with any public_url.
static OWN_KEY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use base64::Engine;
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
    base64::engine::general_purpose::STANDARD.encode(key)
});

/// The example's session key line.
const EXAMPLE_KEYS_LINE: &str = "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]";

/// The example with the first line starting with `from` (a setting, not a comment) edited.
fn edit(from: &str, to: &str) -> String {
    let from = format!("\n{from}");
    assert!(EXAMPLE.contains(&from), "example lacks {from}");
    EXAMPLE.replacen(&from, &format!("\n{to}"), 1)
}

#[test]
fn issuer_is_kept_as_written() {
    for issuer in [
        "https://tenant.auth0.com/",
        "https://idp.example.com/realms/x",
    ] {
        let text = EXAMPLE.replace(
            "issuer = \"http://127.0.0.1:9090/as\"",
            &format!("issuer = \"{issuer}\""),
        );
        assert_eq!(load(&text, &[]).unwrap().oidc.issuer_id, issuer);
    }
}

/// The URIs registered at the provider are sent exactly: the default post-logout URI is
/// `public_url` with its `/`, a configured one is kept as written (no `/` added).
#[test]
fn uris_to_register_are_exact() {
    let c = load(EXAMPLE, &[]).unwrap();
    assert_eq!(c.redirect_uri(), "http://127.0.0.1:8080/callback");
    assert_eq!(c.oidc.post_logout_redirect_uri, "http://127.0.0.1:8080/");
    assert_eq!(
        c.backchannel_logout_uri(),
        "http://127.0.0.1:8080/backchannel-logout"
    );
    for uri in ["http://127.0.0.1:8080", "http://127.0.0.1:8080/bye"] {
        let text = edit(
            "# post_logout_redirect_uri = ",
            &format!("post_logout_redirect_uri = \"{uri}\"\n#"),
        );
        assert_eq!(load(&text, &[]).unwrap().oidc.post_logout_redirect_uri, uri);
    }
    let text = edit(
        "# post_logout_redirect_uri = ",
        "post_logout_redirect_uri = \"javascript:alert(1)\"\n#",
    );
    assert!(
        err(&text, &[]).contains("oidc.post_logout_redirect_uri"),
        "{}",
        err(&text, &[])
    );
}

#[test]
fn example_config_is_valid() {
    let c = load(EXAMPLE, &[]).unwrap();
    assert_eq!(c.server.public_origin, "http://127.0.0.1:8080");
    assert!(!c.server.secure_cookies);
    assert_eq!(
        c.session.cookie_name, "tollgate",
        "http drops the __Host- prefix"
    );
    assert!(c.session.dropped_host_prefix);
    assert_eq!(c.routes.len(), 3);
    assert_eq!(c.oidc.auth_method, AuthMethod::ClientSecretBasic);
    assert_eq!(c.session.idle_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9100".parse().unwrap()));
}

#[test]
fn https_keeps_host_prefix() {
    let c = load(
        &edit(
            "public_url = \"http://127.0.0.1:8080\"",
            "public_url = \"https://app.example.com\"",
        )
        .replace(
            EXAMPLE_KEYS_LINE,
            &format!("keys = [\"{own}\"]", own = &*OWN_KEY),
        ),
        &[],
    )
    .unwrap();
    assert!(c.server.secure_cookies);
    assert_eq!(c.session.cookie_name, "__Host-tollgate");
    assert_eq!(c.server.forwarded_host, "app.example.com");
}

#[test]
fn example_keys_only_with_loopback_http() {
    for example in EXAMPLE_SESSION_KEYS {
        assert!(decode_key(example).is_ok(), "{example}");
        let with_key = |public_url: &str| {
            edit(
                "public_url = \"http://127.0.0.1:8080\"",
                &format!("public_url = \"{public_url}\""),
            )
            .replace(
                EXAMPLE_KEYS_LINE,
                &format!("keys = [\"{own}\", \"{example}\"]", own = &*OWN_KEY),
            )
        };
        for public_url in [
            "https://app.example.com",
            "http://app.example.com",
            "https://127.0.0.1:8443",
            "https://localhost",
            "http://10.0.0.1:8080",
        ] {
            let e = err(&with_key(public_url), &[]);
            assert!(
                e.starts_with("`session.keys[1]`: is an example key")
                    && e.contains("loopback http server.public_url"),
                "{public_url}: {e}"
            );
            assert!(!e.contains(example), "the key is not quoted: {e}");
        }
        for public_url in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://localhost:3000",
            "http://127.1.2.3",
            "http://[::1]:8080",
        ] {
            if let Err(e) = load(&with_key(public_url), &[]) {
                panic!("{public_url}: {e}");
            }
        }
    }

    // The same key spelled differently, from a keys file, or set by an override.
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "bdUQR9e39_klNsj8v-uB7pY3l4mG3G-InOMg6tpcX4Q\n").unwrap();
    let https = edit(
        "public_url = \"http://127.0.0.1:8080\"",
        "public_url = \"https://app.example.com\"",
    );
    let from_file = https.replace(
        EXAMPLE_KEYS_LINE,
        &format!("keys_file = {:?}", keys.display().to_string()),
    );
    let e = err(&from_file, &[]);
    assert!(e.starts_with("`session.keys_file ("), "{e}");
    assert!(e.contains("is an example key"), "{e}");
    let e = err(
        &https.replace(
            EXAMPLE_KEYS_LINE,
            &format!("keys = [\"{own}\"]", own = &*OWN_KEY),
        ),
        &[(
            "TOLLGATE__SESSION__KEYS",
            "cX/YoznuBp7+yL48hHfkYSHiNy865Fe3gut4ykzT2+E=",
        )],
    );
    assert!(e.starts_with("`session.keys[0]`: is an example key"), "{e}");
}

/// Every base64 32-byte key in the repository's example files is in [`EXAMPLE_SESSION_KEYS`].
#[test]
fn example_key_list_is_complete() {
    let files = [
        include_str!("../../conf/tollgate.toml"),
        include_str!("../../README.md"),
        include_str!("../../deploy/kubernetes/overlays/example/secrets/cookie_keys.example"),
        include_str!("../../tests/common/process.rs"),
        include_str!("../../benches/load/run.py"),
    ];
    let listed: Vec<[u8; 32]> = EXAMPLE_SESSION_KEYS
        .iter()
        .map(|k| decode_key(k).unwrap())
        .collect();
    let mut found = 0;
    for text in files {
        for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/_-=".contains(c))) {
            if !(43..=44).contains(&token.len()) {
                continue;
            }
            if let Ok(key) = decode_key(token) {
                assert!(
                    listed.contains(&key),
                    "{token} is not in EXAMPLE_SESSION_KEYS"
                );
                found += 1;
            }
        }
    }
    assert!(found >= 4, "found only {found} example keys");
}

#[test]
fn values_get_their_types() {
    let c = load(
        EXAMPLE,
        &[
            ("TOLLGATE__CSRF__HEADER", "X-Requested-By"),
            ("TOLLGATE__SESSION__SAME_SITE", "Strict"),
            ("TOLLGATE__ROUTES__1__READ_TIMEOUT", "90"),
            ("TOLLGATE__ROUTES__1__AUTH", "optional"),
        ],
    )
    .unwrap();
    assert_eq!(c.csrf.header, "x-requested-by");
    assert_eq!(c.session.same_site, SameSite::Strict);
    assert_eq!(c.routes[1].read_timeout, Duration::from_secs(90));
    assert_eq!(c.routes[1].auth, RouteAuth::Optional);
    assert_eq!(c.routes[0].host, "127.0.0.1:9000");
    assert_eq!(c.routes[0].host_header, "127.0.0.1:9000");
    assert_eq!(c.server.forwarded_host, "127.0.0.1:8080");

    let cases: Vec<(String, &str)> = vec![
        (
            edit(
                "[oidc.extra_auth_params]",
                "[oidc.extra_auth_params]\ndpop_jkt = \"x\"",
            ),
            "`oidc.extra_auth_params.dpop_jkt`: is set by tollgate itself",
        ),
        (
            edit("dpop = false", "dpop = true\nprofile = \"fapi2\""),
            "`oidc.auth_method`: is \"client_secret_basic\"; with oidc.profile = \"fapi2\" the client authenticates with private_key_jwt",
        ),
        (
            edit("dpop = false", "profile = \"fapi1\""),
            "`oidc.profile`: unknown variant `fapi1`, expected `fapi2`",
        ),
        (
            edit("token_binding = \"bearer\"", "token_binding = \"dpop\""),
            "`routes[0].token_binding`: \"dpop\" needs [oidc] dpop = true",
        ),
        (
            edit("token_binding = \"bearer\"", "token_binding = \"mtls\""),
            "`routes[0].token_binding`: unknown variant `mtls`, expected `bearer` or `dpop`",
        ),
        (
            edit(
                "listen = [\"127.0.0.1:8080\"]",
                "listen = [\"127.0.0.1:8080\", \"port 80\"]",
            ),
            "`server.listen[1]`: \"port 80\" is not an address",
        ),
        (
            edit("header = \"x-csrf\"", "header = \"x csrf\""),
            "`csrf.header`: \"x csrf\" is not a valid header name",
        ),
        (
            edit("header = \"x-csrf\"", "header = \"Cookie\""),
            "`csrf.header`: \"cookie\" is a standard header",
        ),
        (
            edit(
                "allowed_origins = []",
                "allowed_origins = [\"https://a.example\", \"https://b.example/app\"]",
            ),
            "`csrf.allowed_origins[1]`: must be an origin",
        ),
        (
            edit(
                "allowed_origins = []",
                "allowed_origins = [\"https://a.example\", \"b.example\"]",
            ),
            "`csrf.allowed_origins[1]`: \"b.example\" is not a valid URL",
        ),
        (
            edit("read_timeout = \"60s\"", "read_timeout = -1"),
            "`routes[0].read_timeout`: -1 is negative",
        ),
        (
            edit(
                "# private_key_alg = \"RS256\"",
                "private_key_alg = \"RS257\"",
            ),
            "`oidc.private_key_alg`: unknown variant `RS257`",
        ),
        (
            edit("same_site = \"lax\"", "same_site = \"none\""),
            "`session.same_site`: \"none\" would let every site send the session cookie",
        ),
        (
            edit(
                "upstream = \"http://127.0.0.1:9000\"",
                "upstream = \"http://user:pw@127.0.0.1:9000\"",
            ),
            "`routes[0].upstream`: must not carry credentials",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text, &[]);
        assert!(e.contains(expected), "expected {expected:?} in {e:?}");
    }
}

#[test]
fn errors_name_the_key() {
    let without_discovery = "authorization_endpoint = \"https://idp.example/a\"\n\
                             token_endpoint = \"https://idp.example/t\"\n\
                             jwks_uri = \"https://idp.example/k\"";
    let cases: Vec<(String, &str)> = vec![
        (
            edit(
                "identity_headers = false",
                "identity_headers = false\nrequire = { groups = [] }",
            ),
            "`routes[0].require.groups`: an empty list matches nothing",
        ),
        (
            edit(
                "identity_headers = false",
                "identity_headers = false\nrequire = { level = 1.5 }",
            ),
            "`routes[0].require.level`: invalid type: floating point `1.5`, expected a string, an integer, a boolean, or a list of them",
        ),
        (
            edit("auth = \"none\"", "auth = \"none\"\nrequire = { groups = \"a\" }"),
            "`routes[1].require`: only applies to auth = \"required\" routes",
        ),
        (
            edit("auth = \"none\"", "auth = \"none\"\nidentity_headers = true"),
            "`routes[1].identity_headers`: needs a route with a session",
        ),
        (
            edit("groups_claim = \"groups\"", "groups_claim = \" \""),
            "`oidc.groups_claim`: must name a claim",
        ),
        (
            edit("par = \"auto\"", "par = \"sometimes\""),
            "`oidc.par`: unknown variant `sometimes`, expected one of `auto`, `always`, `never`",
        ),
        (
            edit(
                "par = \"auto\"",
                &format!("par = \"always\"\n{without_discovery}"),
            ),
            "`oidc.par`: is \"always\" but no pushed_authorization_request_endpoint is configured",
        ),
        (
            edit(
                "par = \"auto\"",
                "par = \"never\"\npushed_authorization_request_endpoint = \"https://idp.example/par\"",
            ),
            "`oidc.pushed_authorization_request_endpoint`: is set but oidc.par is \"never\"",
        ),
        (
            edit(
                "issuer = \"http://127.0.0.1:9090/as\"",
                "issuer = \"not a url\"",
            ),
            "`oidc.issuer`",
        ),
        (
            edit(
                "auth_method = \"client_secret_basic\"",
                "auth_method = \"client_secret_magic\"",
            ),
            "`oidc.auth_method`: unknown variant `client_secret_magic`, expected one of `client_secret_basic`",
        ),
        (
            edit(
                "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]",
                "keys = [\"c2hvcnQ=\"]",
            ),
            "`session.keys[0]`: key must be 32 bytes",
        ),
        (
            edit(
                "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]",
                "keys = [\"***\"]",
            ),
            "`session.keys[0]`: is not valid base64",
        ),
        (
            edit("prefix = \"/\"\n", "prefix = \"/api/\"\n"),
            "`routes[1].prefix`: \"/api\" overlaps",
        ),
        (
            edit(
                "upstream = \"http://127.0.0.1:9000\"",
                "upstream = \"ftp://127.0.0.1:9000\"",
            ),
            "`routes[0].upstream`",
        ),
        (
            edit("auth = \"required\"", "auth = \"sometimes\""),
            "`routes[0].auth`",
        ),
        (
            edit("threads = 2", "threads = 2\nthreeds = 4"),
            "`server.threeds`: unknown field `threeds`",
        ),
        (
            edit("idle_timeout = \"8h\"", "idle_timeout = \"eight hours\""),
            "`session.idle_timeout`",
        ),
        (
            edit("same_site = \"lax\"", "same_site = \"none\""),
            "`session.same_site`",
        ),
        (
            edit("client_secret = \"demo-secret-change-me\"", ""),
            "`oidc.client_secret`: auth_method",
        ),
        (
            edit("scopes = [\"openid\", ", "scopes = ["),
            "`oidc.scopes`",
        ),
        (
            edit("listen = \"127.0.0.1:9100\"", "listen = \"127.0.0.1:8080\""),
            "`metrics.listen`",
        ),
        (
            edit(
                "public_url = \"http://127.0.0.1:8080\"",
                "public_url = \"http://127.0.0.1:8080/app\"",
            ),
            "`server.public_url`",
        ),
        (
            edit("prefix = \"/api\"", "prefix = \"/healthz\""),
            "`routes[0].prefix`",
        ),
        (
            edit(
                "[[routes]]\nprefix = \"/api\"",
                "[[routes]]\nprefix = \"api\"",
            ),
            "`routes[0].prefix`",
        ),
        ("this is = not toml".to_string(), "not valid TOML"),
        // Found by the `config` fuzz target: prefixes and endpoint paths that no normalised
        // request path can equal or start with.
        (
            edit("prefix = \"/api\"", "prefix = \"//pi\""),
            "`routes[0].prefix`: \"//pi\" can never match a request",
        ),
        (
            edit("prefix = \"/api\"", "prefix = \"/%61pi\""),
            "`routes[0].prefix`: \"/%61pi\" can never match",
        ),
        (
            edit("prefix = \"/api\"", "prefix = \"/api/../admin\""),
            "`routes[0].prefix`",
        ),
        (
            edit("prefix = \"/api\"", "prefix = \"/api;v=1\""),
            "`routes[0].prefix`",
        ),
        (
            edit("callback_path = \"/callback\"", "callback_path = \"/auth//callback\""),
            "`oidc.callback_path`: \"/auth//callback\" can never match",
        ),
        (
            edit(
                "backchannel_logout_path = \"/backchannel-logout\"",
                "backchannel_logout_path = \"/bc%2Dlogout\"",
            ),
            "`oidc.backchannel_logout_path`",
        ),
    ];
    for (text, expected) in cases {
        let e = err(&text, &[]);
        assert!(e.contains(expected), "expected {expected:?} in {e:?}");
    }
}

#[test]
fn env_overrides_apply_and_are_validated() {
    let c = load(
        EXAMPLE,
        &[
            ("TOLLGATE__OIDC__CLIENT_ID", "12345"),
            ("TOLLGATE__SERVER__THREADS", "3"),
            ("TOLLGATE__ROUTES__0__STRIP_PREFIX", "true"),
            ("TOLLGATE__SERVER__LISTEN", "127.0.0.1:7001,127.0.0.1:7002"),
            ("TOLLGATE__OIDC__AUTH_METHOD", "none"),
            ("TOLLGATE__OIDC__CLIENT_SECRET", "[]"),
        ],
    );
    // An inline array is not a string: the override is refused with the key named.
    let e = c.unwrap_err().to_string();
    assert!(e.contains("oidc.client_secret"), "{e}");

    let text = edit("client_secret = \"demo-secret-change-me\"", "");
    let c = load(
        &text,
        &[
            ("TOLLGATE__OIDC__CLIENT_ID", "12345"),
            ("TOLLGATE__SERVER__THREADS", "3"),
            ("TOLLGATE__ROUTES__0__STRIP_PREFIX", "true"),
            ("TOLLGATE__SERVER__LISTEN", "127.0.0.1:7001,127.0.0.1:7002"),
            ("TOLLGATE__OIDC__AUTH_METHOD", "none"),
        ],
    )
    .unwrap();
    assert_eq!(c.oidc.client_id, "12345");
    assert_eq!(c.server.threads, 3);
    assert!(c.routes[0].strip_prefix);
    assert_eq!(c.server.listen.len(), 2);
    assert_eq!(c.oidc.auth_method, AuthMethod::None);

    let e = err(EXAMPLE, &[("TOLLGATE__SERVER__THREADS", "many")]);
    assert!(e.contains("server.threads"), "{e}");
    let e = err(EXAMPLE, &[("TOLLGATE__OIDC__AUTH_METHOD", "password")]);
    assert!(e.contains("oidc.auth_method"), "{e}");
}

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        "# newest first\nbdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\n\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    )
    .unwrap();
    let text = edit(
        "client_secret = \"demo-secret-change-me\"",
        &format!("client_secret_file = {:?}", secret.display().to_string()),
    )
    .replace(
        "keys = [\"bdUQR9e39/klNsj8v+uB7pY3l4mG3G+InOMg6tpcX4Q=\"]",
        &format!("keys_file = {:?}", keys.display().to_string()),
    );
    let c = load(&text, &[]).unwrap();
    assert_eq!(c.oidc.client_secret.as_ref().unwrap().expose(), "s3cr3t");
    assert_eq!(c.session.keys.len(), 2);
    assert!(
        !format!("{c:?}").contains("s3cr3t"),
        "secrets must not be printed"
    );

    let e = err(
        &text.replace(&secret.display().to_string(), "/nonexistent/secret"),
        &[],
    );
    assert!(
        e.contains("`oidc.client_secret_file`: cannot read /nonexistent/secret"),
        "{e}"
    );
    let both = edit(
        "client_secret = \"demo-secret-change-me\"",
        "client_secret = \"a\"\nclient_secret_file = \"/x\"",
    );
    assert!(err(&both, &[]).contains("not both"));
    let pk = edit(
        "auth_method = \"client_secret_basic\"",
        "auth_method = \"private_key_jwt\"",
    )
    .replace(
        "client_secret = \"demo-secret-change-me\"",
        &format!("private_key_file = {:?}", secret.display().to_string()),
    );
    let e = err(&pk, &[]);
    assert!(
        e.contains("`oidc.private_key_file`") && e.contains("no RSA, EC"),
        "{e}"
    );
}

#[test]
fn store_section() {
    let with = |lines: &str| format!("{EXAMPLE}\n[store]\n{lines}\n");
    let c = load(&with("url = \"redis://user:pw@127.0.0.1:6379/0\""), &[]).unwrap();
    let store = c.store.unwrap();
    assert_eq!(store.key_prefix, "tollgate:");
    assert_eq!(store.timeout, std::time::Duration::from_millis(500));
    assert!(
        !format!("{store:?}").contains("pw"),
        "the URL's password is redacted"
    );
    let e = err(&with("url = \"http://127.0.0.1:6379\""), &[]);
    assert!(e.contains("store.url"), "{e}");
    let c = load(
        &with("cluster_urls = [\"redis://a:1\", \"rediss://u:pw@b:2/0\"]"),
        &[],
    )
    .unwrap();
    let store = c.store.unwrap();
    assert!(
        matches!(&store.target, crate::config::StoreTarget::Cluster(n) if n.len() == 2),
        "{store:?}"
    );
    assert!(!format!("{store:?}").contains("pw"));
    let e = err(
        &with("url = \"redis://a:1\"\ncluster_urls = [\"redis://a:1\"]"),
        &[],
    );
    assert!(
        e.contains("store.cluster_urls") && e.contains("not both"),
        "{e}"
    );
    let e = err(&with("cluster_urls = [\"redis://a:1\", \"b:2\"]"), &[]);
    assert!(e.contains("store.cluster_urls[1]"), "{e}");
    let e = err(&with("cluster_urls = [\"redis://a:1/3\"]"), &[]);
    assert!(e.contains("database 0"), "{e}");
    let e = err(&with("key_prefix = \"t:\""), &[]);
    assert!(e.contains("store.url"), "{e}");
    assert!(load(EXAMPLE, &[]).unwrap().store.is_none());
}

#[test]
fn route_audiences() {
    let with = |lines: &str| {
        edit(
            "identity_headers = false",
            &format!("identity_headers = false\n{lines}"),
        )
    };
    for (text, message) in [
        (
            with("resource = \"https://orders.example.com#x\""),
            "`routes[0].resource`: \"https://orders.example.com#x\" must be an absolute URI without a fragment",
        ),
        (
            with("resource = \"/orders\""),
            "`routes[0].resource`: \"/orders\" must be an absolute URI",
        ),
        (
            with("scopes = [\"read\", \"a b\"]"),
            "`routes[0].scopes[1]`: \"a b\" is not a scope",
        ),
        (
            with("scopes = [\"\"]"),
            "`routes[0].scopes[0]`: \"\" is not a scope",
        ),
        (
            edit("auth = \"none\"", "auth = \"none\"\nresource = \"https://a.example\""),
            "`routes[1].resource`: needs a route with a session",
        ),
    ] {
        let e = err(&text, &[]);
        assert!(e.contains(message), "{e}\nexpected: {message}");
    }

    // Each resource once, in order; the login's scope is [oidc] scopes then the routes'.
    let text = EXAMPLE
        .replace(EXAMPLE_KEYS_LINE, &format!("keys = [\"{}\"]", *OWN_KEY))
        .replacen(
            "identity_headers = false",
            "identity_headers = false\nresource = \"https://orders.example\"\nscopes = [\"read\", \"openid\"]",
            1,
        )
        + "\n[[routes]]\nprefix = \"/billing\"\nupstream = \"http://127.0.0.1:9000\"\nresource = \"https://billing.example\"\n\
           [[routes]]\nprefix = \"/orders2\"\nupstream = \"http://127.0.0.1:9000\"\nresource = \"https://orders.example\"\nscopes = \"write\"\n";
    let c = load(&text, &[]).unwrap();
    assert_eq!(
        c.resources(),
        ["https://orders.example", "https://billing.example"]
    );
    assert_eq!(
        c.login_scope(),
        format!("{} read write", c.oidc.scopes.join(" "))
    );
    let ids: Vec<_> = c
        .routes
        .iter()
        .filter_map(|r| r.audience.as_ref().map(|a| a.id))
        .collect();
    assert_eq!(ids.len(), 3);
    assert_ne!(
        ids[0], ids[2],
        "the same resource with other scopes is another audience"
    );
}

#[test]
fn upgrade_socket_and_listen_addresses() {
    let e = err(
        &edit(
            "upgrade_sock = \"/run/tollgate/upgrade.sock\"",
            "upgrade_sock = \"/tmp/tollgate.sock\"",
        ),
        &[],
    );
    assert!(
        e.starts_with("`server.upgrade_sock`: /tmp is writable by other users"),
        "{e}"
    );
    let private = tempfile::tempdir().unwrap();
    let path = private.path().join("upgrade.sock");
    let text = edit(
        "upgrade_sock = \"/run/tollgate/upgrade.sock\"",
        &format!("upgrade_sock = {:?}", path.display().to_string()),
    );
    if let Err(e) = load(&text, &[]) {
        panic!("{e}");
    }

    let e = err(
        &edit("listen = \"127.0.0.1:9100\"", "listen = \"127.0.0.1:8080\""),
        &[],
    );
    assert!(e.contains("127.0.0.1:8080 is listed twice"), "{e}");
}

/// DBSC: off by default; `"dbsc"` needs https; the bound cookie lives at least 10 s; a route
/// that requires a binding needs it on, and a session.
#[test]
fn device_binding_keys() {
    let c = load(EXAMPLE, &[]).unwrap();
    assert_eq!(c.session.device_binding, DeviceBinding::Off);
    assert_eq!(c.session.bound_cookie_lifetime, Duration::from_secs(300));
    assert!(c.routes.iter().all(|r| !r.require_device_binding));

    let https = edit(
        "public_url = \"http://127.0.0.1:8080\"",
        "public_url = \"https://app.example.com\"",
    )
    .replace(EXAMPLE_KEYS_LINE, &format!("keys = [\"{}\"]", &*OWN_KEY));
    let on = |text: &str, extra: &str| {
        text.replace(
            "same_site = \"lax\"",
            &format!("same_site = \"lax\"\n{extra}"),
        )
    };
    let c = load(
        &on(
            &https,
            "device_binding = \"dbsc\"\nbound_cookie_lifetime = \"10s\"",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(c.session.device_binding, DeviceBinding::Dbsc);
    assert_eq!(c.session.bound_cookie_lifetime, Duration::from_secs(10));

    let e = err(&on(EXAMPLE, "device_binding = \"dbsc\""), &[]);
    assert!(
        e.contains("session.device_binding") && e.contains("https"),
        "{e}"
    );
    let e = err(&on(&https, "bound_cookie_lifetime = \"9s\""), &[]);
    assert!(
        e.contains("session.bound_cookie_lifetime") && e.contains("10s"),
        "{e}"
    );
    let e = err(&on(&https, "device_binding = \"tpm\""), &[]);
    assert!(e.contains("session.device_binding"), "{e}");

    let e = err(
        &https,
        &[("TOLLGATE__ROUTES__0__REQUIRE_DEVICE_BINDING", "true")],
    );
    assert!(
        e.contains("routes[0].require_device_binding") && e.contains("dbsc"),
        "{e}"
    );
}

/// `[providers.NAME]`: every provider key, errors named `providers.NAME.key`; hosts pick one
/// provider each; routes name providers that exist.
#[test]
fn several_providers() {
    let with = |providers: &str| format!("{EXAMPLE}\n{providers}");
    let b = "[providers.partner-b]\nissuer = \"https://b.example/as\"\nclient_id = \"cb\"\n\
             client_secret = \"sb\"\nhosts = [\"Partner.Example.com\"]\nscopes = [\"openid\"]\n";
    let c = load(&with(b), &[]).unwrap();
    assert_eq!(c.oidc.name, "default");
    assert_eq!(c.providers.len(), 1);
    let p = &c.providers[0];
    assert_eq!(p.name, "partner-b");
    assert_eq!(p.hosts, ["partner.example.com"]);
    assert_eq!(p.issuer_id, "https://b.example/as");
    assert_eq!(p.callback_path, c.oidc.callback_path);
    assert_eq!(c.all_providers().count(), 2);
    assert!(c.provider("partner-b").is_some());
    // Each provider answers at its own callback path; a host's logins come back to it.
    let public = &c.server.public_origin;
    assert_eq!(
        c.redirect_uri_at(&c.oidc, public),
        format!("{public}/callback")
    );
    assert_eq!(
        c.redirect_uri_at(p, public),
        format!("{public}/callback/partner-b")
    );
    assert_eq!(
        c.host_origins(),
        [(
            "partner.example.com".to_string(),
            "http://partner.example.com:8080".to_string()
        )]
    );
    // public_url's own host needs no origin of its own.
    let twice = load(
        &with(b).replace(
            "hosts = [\"Partner.Example.com\"]",
            "hosts = [\"Partner.Example.com\", \"127.0.0.1\"]",
        ),
        &[],
    )
    .unwrap();
    assert_eq!(twice.host_origins(), c.host_origins());
    // With several providers, a route with a rule and no providers takes the default's only.
    let payments = c
        .routes
        .iter()
        .find(|r| r.prefix == "/api/payments")
        .unwrap();
    assert_eq!(payments.providers, ["default"]);
    assert!(c
        .routes
        .iter()
        .find(|r| r.prefix == "/api")
        .unwrap()
        .providers
        .is_empty());
    let single = load(EXAMPLE, &[]).unwrap();
    assert!(single.routes.iter().all(|r| r.providers.is_empty()));

    for (text, expected) in [
        (
            with("[providers.default]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"),
            "`providers.default`",
        ),
        (
            with("[providers.B]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"),
            "a provider name is",
        ),
        (
            with("[providers.b]\nissuer = \"https://b.example\"\nclient_id = \"c\"\n"),
            "`providers.b.client_secret`",
        ),
        (
            with("[providers.b]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\ncallback_path = \"/cb\"\n"),
            "`providers.b.callback_path`",
        ),
        (
            with("[providers.b]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\nhosts = \"a.example\"\n\
                  [providers.c]\nissuer = \"https://c.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\nhosts = [\"A.example\"]\n"),
            "`providers.c.hosts`",
        ),
        (
            with("[providers.b]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\nhosts = [\"https://x\"]\n"),
            "`providers.b.hosts`",
        ),
        (
            with("[providers.b]\nissuer = \"http://127.0.0.1:9090/as\"\nclient_id = \"c\"\nclient_secret = \"s\"\n"),
            "`providers.b.issuer`: is also provider \"default\"'s issuer",
        ),
        (
            edit("auth = \"required\"", "auth = \"required\"\nproviders = [\"nope\"]"),
            "`routes[0].providers`: \"nope\" is not a provider (the providers are default)",
        ),
        // A provider's callback ({callback_path}/NAME) may not hide another endpoint or route.
        (
            with("[providers.b]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\n")
                .replace(
                    "backchannel_logout_path = \"/backchannel-logout\"",
                    "backchannel_logout_path = \"/callback/b\"",
                ),
            "`providers.b.name`: its callback \"/callback/b\"",
        ),
        (
            with("[providers.b]\nissuer = \"https://b.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\n")
                .replace("callback_path = \"/callback\"", "callback_path = \"/cb/\""),
            "`oidc.callback_path`",
        ),
    ] {
        let e = err(&text, &[]);
        assert!(e.contains(expected), "expected {expected:?} in {e:?}");
    }
    // A route may restrict its providers; and step-up rules parse into the route's rule.
    let c = load(
        &with(b).replacen(
            "\nauth = \"required\"",
            "\nauth = \"required\"\nproviders = [\"partner-b\"]\nrequire = { acr = [\"urn:mfa\"], max_age = \"10m\" }",
            1,
        ),
        &[],
    )
    .unwrap();
    let r = c.routes.iter().find(|r| !r.providers.is_empty()).unwrap();
    assert_eq!(r.providers, ["partner-b"]);
    assert_eq!(r.require.step_up().unwrap().max_age, Some(600));
    assert!(c.kept_claim_names().contains(&"auth_time".to_string()));
}
