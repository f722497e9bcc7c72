//! https upstreams: the certificate is verified against the trusted roots, and SNI carries the
//! upstream URL's host. A private CA is trusted through `SSL_CERT_FILE`, as in a cluster with an
//! internal CA.

mod common;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

struct Pki {
    ca_pem: String,
    leaf_der: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

/// A test CA and a leaf certificate for `names`, signed by it.
fn pki(names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tollgate test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf_der: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

fn acceptor(pki: &Pki) -> TlsAcceptor {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.leaf_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.leaf_key.clone())),
        )
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_with_sni() {
    // Bind where "localhost" resolves first, which is where tollgate will connect.
    let localhost: SocketAddr = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap();
    let good = pki(&["localhost"]);
    let echo = Echo::start_tls(localhost, acceptor(&good)).await;
    // Same CA, but the certificate names another host.
    let wrong_name = Echo::start_tls(localhost, acceptor(&pki(&["api.example.internal"]))).await;

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &good.ca_pem).unwrap();
    let (good_port, wrong_port) = (echo.addr.port(), wrong_name.addr.port());
    let config = TestConfig::without_provider()
        .route("/api", &format!("https://localhost:{good_port}"), "")
        .route(
            "/wrong-name",
            &format!("https://localhost:{wrong_port}"),
            "auth = \"none\"",
        );
    let tg = Tollgate::start_with_env(
        |port, metrics| config.render(port, metrics),
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    )
    .await;
    let c = reqwest::Client::new();
    let token = access_token(500);
    let r = c
        .get(tg.url("/api/over-tls"))
        .header("cookie", tg.mint_cookie(&token))
        .header("x-csrf", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    assert_eq!(
        seen.sni.as_deref(),
        Some("localhost"),
        "SNI from the upstream host"
    );
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(
        seen.header("host"),
        Some(format!("localhost:{good_port}").as_str())
    );

    // A certificate for another name is refused: 502, and the upstream never gets a request.
    let r = c.get(tg.url("/wrong-name/x")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(wrong_name.count(), 0);
}
