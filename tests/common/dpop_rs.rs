//! A resource server that accepts only DPoP-bound access tokens (RFC 9449 §7), as a real API
//! behind tollgate would: for every request it checks the `DPoP` proof (ES256 signature under
//! the key in its header, `typ`, `htm`, `htu`, `ath`, a recent `iat`, a `jti` not seen
//! before) and that the access token is bound to that key, by asking the provider
//! (introspection, RFC 7662: the token's `cnf.jkt` must be the proof key's RFC 7638
//! thumbprint). It answers 200 `{"ok":true,"sub":…}` or 401 `{"error":…}` and records each
//! verdict.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// Where and as whom the resource server introspects tokens.
#[derive(Clone)]
pub struct Introspection {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
}

pub struct DpopResourceServer {
    pub addr: SocketAddr,
    verdicts: Arc<Mutex<Vec<Result<String, String>>>>,
}

struct State {
    introspection: Introspection,
    jtis: Mutex<HashSet<String>>,
    verdicts: Arc<Mutex<Vec<Result<String, String>>>>,
    http: reqwest::Client,
    origin: String,
}

impl DpopResourceServer {
    /// A resource server introspecting at `idp` as the first test client.
    pub async fn for_idp(idp: &super::idp::Idp) -> DpopResourceServer {
        let client = &super::idp::CLIENTS[0];
        Self::start(Introspection {
            url: format!("{}/token/introspection", idp.issuer),
            client_id: client.id.to_string(),
            client_secret: client.secret.unwrap_or_default().to_string(),
        })
        .await
    }

    pub async fn start(introspection: Introspection) -> DpopResourceServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let verdicts = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            introspection,
            jtis: Mutex::new(HashSet::new()),
            verdicts: verdicts.clone(),
            http: reqwest::Client::new(),
            origin: format!("http://{addr}"),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, state.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        DpopResourceServer { addr, verdicts }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every verdict so far: `Ok(sub)` or `Err(why)`.
    pub fn verdicts(&self) -> Vec<Result<String, String>> {
        self.verdicts.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let verdict = verify(&req, &state).await;
    state.verdicts.lock().unwrap().push(verdict.clone());
    let (status, body) = match verdict {
        Ok(sub) => (200, serde_json::json!({ "ok": true, "sub": sub })),
        Err(why) => (401, serde_json::json!({ "error": why })),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

fn header<'r>(req: &'r Request<Incoming>, name: &str) -> Result<&'r str, String> {
    let mut all = req.headers().get_all(name).iter();
    let one = all.next().ok_or(format!("no {name} header"))?;
    if all.next().is_some() {
        return Err(format!("more than one {name} header"));
    }
    one.to_str().map_err(|_| format!("{name} is not text"))
}

async fn verify(req: &Request<Incoming>, state: &State) -> Result<String, String> {
    let token = header(req, "authorization")?
        .strip_prefix("DPoP ")
        .ok_or("the Authorization scheme is not DPoP")?;
    let proof = header(req, "dpop")?;
    let head = jsonwebtoken::decode_header(proof).map_err(|e| format!("proof header: {e}"))?;
    if head.typ.as_deref() != Some("dpop+jwt") || head.alg != jsonwebtoken::Algorithm::ES256 {
        return Err("proof typ/alg".into());
    }
    let jwk = head.jwk.ok_or("no jwk in the proof")?;
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|e| format!("jwk: {e}"))?;
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(proof, &key, &v)
        .map_err(|e| format!("proof signature: {e}"))?
        .claims;
    let expect = |name: &str, want: &str| -> Result<(), String> {
        match claims[name].as_str() {
            Some(got) if got == want => Ok(()),
            got => Err(format!("{name} is {got:?}, expected {want:?}")),
        }
    };
    expect("htm", req.method().as_str())?;
    expect("htu", &format!("{}{}", state.origin, req.uri().path()))?;
    expect(
        "ath",
        &URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes())),
    )?;
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    if iat.abs_diff(tollgate::unix_now()) > 60 {
        return Err("iat is not recent".into());
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?.to_string();
    if !state.jtis.lock().unwrap().insert(jti) {
        return Err("proof replayed (jti seen before)".into());
    }
    // RFC 7638 thumbprint of the proof's key.
    let v = serde_json::to_value(&jwk).unwrap();
    let canonical = format!(
        r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
        v["crv"].as_str().unwrap_or_default(),
        v["kty"].as_str().unwrap_or_default(),
        v["x"].as_str().unwrap_or_default(),
        v["y"].as_str().unwrap_or_default()
    );
    let jkt = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
    let i = &state.introspection;
    let info: serde_json::Value = state
        .http
        .post(&i.url)
        .basic_auth(&i.client_id, Some(&i.client_secret))
        .form(&[("token", token)])
        .send()
        .await
        .map_err(|e| format!("introspection: {e}"))?
        .json()
        .await
        .map_err(|e| format!("introspection: {e}"))?;
    if info["active"] != true {
        return Err("the token is not active".into());
    }
    if info["cnf"]["jkt"].as_str() != Some(jkt.as_str()) {
        return Err(format!(
            "the token is bound to {:?}, the proof's key is {jkt}",
            info["cnf"]["jkt"]
        ));
    }
    Ok(info["sub"].as_str().unwrap_or_default().to_string())
}
