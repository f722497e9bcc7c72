//! Micro benchmarks of the per-request work tollgate adds on authenticated routes:
//! opening a realistic session (three ~1.2 KB JWTs, chunked over two cookies), rewriting
//! the upstream request headers, and the refresh single-flight path (a burst of requests with
//! one expiring token sharing one refresh; the provider call itself is replaced by a task that
//! yields once, so what is measured is tollgate's coordination, not the network). The load
//! benchmark against bare Pingora and nginx lives in `benches/load/`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora::http::RequestHeader;
use tollgate::config::{SameSite, SessionConfig};
use tollgate::oidc::refresh::{self, flight_key, Flights, Purpose, RefreshOutcome, Spent};
use tollgate::oidc::token_client::TokenResponse;
use tollgate::proxy::headers::{bearer_value, rewrite, UpstreamRewrite};
use tollgate::session::cookie::SessionCookies;
use tollgate::session::fixture::{self, jwt};
use tollgate::session::{Session, SessionCodec};

fn codec() -> SessionCodec {
    SessionCodec::new(
        &SessionConfig {
            cookie_name: "__Host-tollgate".into(),
            dropped_host_prefix: false,
            keys: vec![[1u8; 32], [2u8; 32]],
            same_site: SameSite::Lax,
            max_lifetime: Duration::from_secs(86400),
            idle_timeout: Duration::from_secs(28800),
            refresh_skew: Duration::from_secs(30),
            storage: Default::default(),
            device_binding: Default::default(),
            bound_cookie_lifetime: Duration::from_secs(300),
        },
        true,
    )
}

/// The shared fixture (three ~1.2 KB JWTs), as unit and integration tests use it.
fn session() -> Session<'static> {
    fixture::session(tollgate::unix_now(), &jwt(1200, 1))
}

fn browser_cookie_header(lines: &[String]) -> String {
    let mut parts = vec![
        "_ga=GA1.1.123456789.1700000000".to_string(),
        "theme=dark".to_string(),
    ];
    parts.extend(
        lines
            .iter()
            .map(|l| l.split(';').next().unwrap_or_default().to_string()),
    );
    parts.join("; ")
}

fn bench(c: &mut Criterion) {
    let codec = codec();
    let lines = codec
        .set_cookie_lines(&session(), &SessionCookies::default(), tollgate::unix_now())
        .expect("seal");
    let header = browser_cookie_header(&lines);
    let now = tollgate::unix_now();
    let (_, payload) = codec.open([header.as_str()]);
    assert!(codec.decode(&payload.expect("opens"), now).is_ok());
    println!(
        "session: {} cookies, {} bytes of Cookie header",
        lines.len(),
        header.len()
    );

    // What the hot path does: find, decrypt, and decode borrowing every string (no copies).
    c.bench_function("session_open (3 x 1.2 KB JWTs, chunked)", |b| {
        b.iter(|| {
            let (_, payload) = codec.open([black_box(header.as_str())]);
            let payload = payload.unwrap();
            codec
                .decode(&payload, now)
                .map(|s| s.access_expires_at)
                .unwrap()
        })
    });
    // The same, then an owned copy: what a refresh or re-seal starts from.
    c.bench_function("session_open_owned (refresh path)", |b| {
        b.iter(|| {
            let (_, payload) = codec.open([black_box(header.as_str())]);
            codec.decode(&payload.unwrap(), now).unwrap().into_owned()
        })
    });
    c.bench_function("session_seal (3 x 1.2 KB JWTs, chunked)", |b| {
        let s = session();
        b.iter(|| codec.set_cookie_lines(black_box(&s), &SessionCookies::default(), now))
    });

    let mut base = RequestHeader::build("GET", b"/api/orders?page=2", None).expect("request");
    base.insert_header("host", "app.example.com")
        .expect("header");
    base.insert_header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/148.0")
        .expect("header");
    base.insert_header("accept", "application/json")
        .expect("header");
    base.insert_header("x-csrf", "1").expect("header");
    base.insert_header("origin", "https://app.example.com")
        .expect("header");
    base.insert_header("cookie", header.as_str())
        .expect("header");
    let token = session().access_token;
    // Baseline for reading the rewrite figure: one header write through Pingora's
    // case-preserving header map, of which the rewrite does seven.
    c.bench_function("pingora insert_header (baseline)", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |req| req.insert_header("x-forwarded-proto", black_box("https")),
            criterion::BatchSize::PerIteration,
        )
    });
    let bearer = bearer_value(&token).unwrap();
    let host = http::HeaderValue::from_static("127.0.0.1:9000");
    let public_host = http::HeaderValue::from_static("app.example.com");
    c.bench_function("upstream header rewrite", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |req| {
                rewrite(
                    req,
                    &UpstreamRewrite {
                        identity: None,
                        dpop_proof: None,
                        bearer: Some(black_box(&bearer)),
                        drop_client_authorization: true,
                        cookie_name: "__Host-tollgate",
                        client_ip: Some([10, 0, 0, 7].into()),
                        proto: "https",
                        forwarded_host: &public_host,
                        request_id: "0f8e5d0c7b6a49382716a5b4c3d2e1f0",
                        upstream_host: &host,
                        path: None,
                    },
                )
            },
            criterion::BatchSize::PerIteration,
        )
    });
    // What a `token_binding = "dpop"` route adds per request: one ES256 proof for the
    // upstream URL (the key is loaded once per session and kept); routes without it pay
    // nothing. Set beside "upstream header rewrite", the whole per-request rewrite.
    let key = tollgate::oidc::dpop::DpopKey::generate().expect("key");
    let ath = tollgate::oidc::dpop::ath(&token);
    c.bench_function("dpop proof for the upstream request (ES256)", |b| {
        b.iter(|| {
            key.proof_with_ath(
                black_box("GET"),
                black_box("http://127.0.0.1:9000/api/items"),
                Some(&ath),
                None,
                1_700_000_000,
            )
        })
    });
    let pkcs8 = key.pkcs8().to_vec();
    c.bench_function("dpop key load from the session (once per session)", |b| {
        b.iter(|| tollgate::oidc::dpop::DpopKey::from_pkcs8(black_box(&pkcs8)))
    });
}

fn bench_refresh(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let tokens = Arc::new(TokenResponse {
        access_token: jwt(1200, 4),
        token_type: "Bearer".into(),
        expires_in: Some(300),
        refresh_token: Some(jwt(1200, 5)),
        refresh_expires_in: None,
        id_token: Some(jwt(1200, 6)),
        scope: None,
    });
    let old_refresh = jwt(1200, 2);
    let wait = Duration::from_secs(12);
    let calls = Arc::new(AtomicUsize::new(0));
    // The stand-in for the provider call: yields once (so the other requests of the burst
    // arrive while it is in flight) and counts how often it ran.
    let provider = |calls: &Arc<AtomicUsize>, tokens: &Arc<TokenResponse>| {
        let (calls, tokens) = (calls.clone(), tokens.clone());
        async move {
            tokio::task::yield_now().await;
            calls.fetch_add(1, Ordering::Relaxed);
            Spent {
                purpose: Purpose::SESSION,
                outcome: RefreshOutcome::Refreshed(tokens, 0),
            }
        }
    };

    let mut iterations = 0;
    c.bench_function(
        "refresh single flight: burst of 64 requests, one refresh",
        |b| {
            b.iter(|| {
                iterations += 1;
                let flights = Flights::default();
                let key = flight_key(black_box(&old_refresh));
                rt.block_on(futures_util::future::join_all((0..64).map(|_| {
                    flights.run(key, Purpose::SESSION, wait, provider(&calls, &tokens))
                })))
            })
        },
    );
    assert_eq!(
        calls.load(Ordering::Relaxed),
        iterations,
        "exactly one provider call per burst"
    );

    let warm = Flights::default();
    let key = flight_key(&old_refresh);
    rt.block_on(warm.run(key, Purpose::SESSION, wait, provider(&calls, &tokens)));
    c.bench_function(
        "refresh single flight: late request answered from the kept result",
        |b| {
            b.iter(|| {
                rt.block_on(warm.run(
                    flight_key(black_box(&old_refresh)),
                    Purpose::SESSION,
                    wait,
                    provider(&calls, &tokens),
                ))
            })
        },
    );

    let codec = codec();
    let now = tollgate::unix_now();
    c.bench_function("refresh: apply new tokens and re-seal the session", |b| {
        b.iter_batched_ref(
            session,
            |s| {
                refresh::apply(s, black_box(&tokens), now);
                codec.set_cookie_lines(s, &SessionCookies::default(), now)
            },
            criterion::BatchSize::PerIteration,
        )
    });
}

criterion_group!(benches, bench, bench_refresh);
criterion_main!(benches);
