//! OpenTelemetry traces end to end: tollgate exports over OTLP/HTTP (protobuf) to a small
//! receiver started here, in front of the real provider, a real echo upstream and a real
//! `redis-server` (README, Operations, "Traces").

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::flow::*;
use common::idp::CLIENTS;
use common::redis::Redis;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// One span as the receiver got it (ids in lower-case hex, attribute values as text).
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: HashMap<String, String>,
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Decodes one export into `store`; whether it was an `ExportTraceServiceRequest`.
fn record(store: &Mutex<Vec<Got>>, body: bytes::Bytes) -> bool {
    let Ok(export) = ExportTraceServiceRequest::decode(body) else {
        return false;
    };
    let mut got = store.lock().unwrap();
    for rs in export.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for s in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Got {
                service: service.clone(),
                name: s.name,
                kind: s.kind,
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent: hex(&s.parent_span_id),
                attrs: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect(),
            });
        }
    }
    true
}

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// OTLP/HTTP: `POST /v1/traces`, protobuf both ways.
async fn answer_http(
    store: Arc<Mutex<Vec<Got>>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let status = if path != "/v1/traces" {
        404
    } else if record(&store, body) {
        200
    } else {
        400
    };
    let body = ExportTraceServiceResponse::default().encode_to_vec();
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/x-protobuf")
        .body(Full::new(bytes::Bytes::from(body)).boxed())
        .unwrap())
}

/// OTLP/gRPC: the `TraceService/Export` unary call over h2c (a 5-byte length prefix on each
/// message, `grpc-status` in the trailers).
async fn answer_grpc(
    store: Arc<Mutex<Vec<Got>>>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let ok = path == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
        && body.len() >= 5
        && body[0] == 0
        && record(&store, body.slice(5..));
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", if ok { "0" } else { "3" }.parse().unwrap());
    let frames = futures_util::stream::iter(vec![
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ]))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ]);
    Ok(hyper::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(http_body_util::StreamBody::new(frames).boxed())
        .unwrap())
}

impl Receiver {
    /// A receiver for `http/protobuf` (`grpc`: false) or `grpc`.
    async fn start(grpc: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let store = spans.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    if grpc {
                        let svc = service_fn(move |req| answer_grpc(store.clone(), req));
                        let _ = hyper::server::conn::http2::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(io, svc)
                        .await;
                    } else {
                        let svc = service_fn(move |req| answer_http(store.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        Receiver { addr, spans }
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until a span satisfies `want`.
    async fn wait_for(&self, what: &str, want: impl Fn(&Got) -> bool) -> Got {
        for _ in 0..200 {
            if let Some(s) = self.spans().into_iter().find(|s| want(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no span {what}; got {:#?}", self.spans());
    }
}

/// `traceparent` as the test sends it: trace `trace` under span `span`, sampled.
fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

/// Every request's spans reach the receiver with the right parentage, the upstream and the
/// provider calls continue the trace, and no span holds a token, cookie or secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_request_to_the_upstream_provider_and_store() {
    let receiver = Receiver::start(false).await;
    let echo = Echo::start().await;
    let redis = Redis::start().await;
    let port = free_port();
    let idp = idp_for(&[port]).await;
    let client = &CLIENTS[0];
    let config = tollgate_config(&idp, client, &echo.url(), "")
        .section(&format!(
            "[store]\nurl = \"{}\"\nkey_prefix = \"trace:\"\n",
            redis.url()
        ))
        .section(&format!(
            "[tracing]\notlp_endpoint = \"http://{}\"\nservice_name = \"tollgate-test\"",
            receiver.addr
        ));
    let mut tg = Tollgate::start_on_with_env(
        port,
        |p, m| config.render(p, m),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    tg.wait_for("/readyz").await.expect("ready");
    tg.wait_metrics(&["tollgate_store_up 1"]).await;

    // Log in: the code exchange is a span of the callback request's trace.
    let cookie = login_cookie(&tg).await;
    let exchange = receiver
        .wait_for("for the code exchange", |s| {
            s.name == "oidc.provider"
                && s.attrs.get("tollgate.oidc.call").map(String::as_str)
                    == Some("authorization_code")
        })
        .await;
    assert_eq!(
        exchange.attrs.get("tollgate.provider").map(String::as_str),
        Some("default"),
        "provider calls are labelled with the provider"
    );
    let callback = receiver
        .wait_for("for the callback", |s| s.span_id == exchange.parent)
        .await;
    assert_eq!(callback.kind, SERVER);
    assert_eq!(callback.trace_id, exchange.trace_id);
    assert_eq!(callback.attrs["url.path"], "/callback");
    assert!(
        callback.parent.is_empty(),
        "a new trace without a traceparent"
    );
    assert_eq!(callback.service, "tollgate-test");

    // An API call under the client's trace: request span → upstream span → the upstream's
    // traceparent.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/data?x=1", &cookie)
        .header("traceparent", traceparent(trace, parent))
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = echo.last();
    let sent = seen
        .header("traceparent")
        .expect("the upstream gets a traceparent");
    assert!(sent.starts_with(&format!("00-{trace}-")), "{sent}");
    assert!(
        !sent.contains(parent),
        "the upstream's parent is tollgate's span: {sent}"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));
    let upstream_span = &sent[36..52];
    let up = receiver
        .wait_for("for the upstream call", |s| s.span_id == upstream_span)
        .await;
    assert_eq!((up.kind, up.trace_id.as_str()), (CLIENT, trace));
    assert_eq!(up.attrs["http.response.status_code"], "200");
    let echo_host = echo.url().trim_start_matches("http://").to_string();
    assert_eq!(up.attrs["server.address"], echo_host);
    let req = receiver
        .wait_for("for the API request", |s| s.span_id == up.parent)
        .await;
    assert_eq!((req.kind, req.parent.as_str()), (SERVER, parent));
    assert_eq!(req.name, "GET /api");
    assert_eq!(req.attrs["http.route"], "/api");
    assert_eq!(req.attrs["url.path"], "/api/data", "never the query");
    assert_eq!(req.attrs["http.response.status_code"], "200");
    assert_eq!(req.attrs["http.request.method"], "GET");
    assert_eq!(req.attrs["tollgate.outcome"], "proxied");
    assert!(!req.attrs.contains_key("error.type"), "{:?}", req.attrs);
    let request_id = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(req.attrs["tollgate.request_id"], request_id);
    // The access log line carries the trace id.
    let log = tg.log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"request\"") && l.contains(&format!("\"trace_id\":\"{trace}\""))),
        "{log}"
    );

    // A refresh under another trace: the provider call and the store's lock are its spans.
    let mut session = open_session(&tg.codec(), &cookie).expect("a session");
    let (access, refresh) = (
        session.access_token.to_string(),
        session.refresh_token.as_deref().unwrap().to_string(),
    );
    session.access_expires_at = tollgate::unix_now() - 1;
    let due = tg.mint_cookie_for(session);
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    let r = tg
        .with_session(&plain(), reqwest::Method::GET, "/api/refreshed", &due)
        .header("traceparent", traceparent(trace2, "b7ad6b7169203331"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", tg.log());
    let refresh_span = receiver
        .wait_for("for the refresh", |s| {
            s.trace_id == trace2
                && s.attrs.get("tollgate.oidc.call").map(String::as_str) == Some("refresh_token")
        })
        .await;
    let store_span = receiver
        .wait_for("for a store operation", |s| {
            s.trace_id == trace2 && s.name == "store"
        })
        .await;
    assert_eq!(store_span.attrs["db.system.name"], "redis");
    let req2 = receiver
        .wait_for("for the refreshing request", |s| {
            s.trace_id == trace2 && s.kind == SERVER
        })
        .await;
    assert_eq!(refresh_span.parent, req2.span_id);

    // Nothing secret in any span.
    let secrets = [
        access.as_str(),
        refresh.as_str(),
        client.secret.unwrap(),
        cookie.split_once('=').unwrap().1,
        due.split_once('=').unwrap().1,
    ];
    for s in receiver.spans() {
        for (k, v) in &s.attrs {
            for secret in secrets {
                let probe = &secret[..secret.len().min(24)];
                assert!(
                    !v.contains(probe),
                    "span {} attribute {k} holds a secret",
                    s.name
                );
            }
            assert!(!v.contains("code="), "span {} attribute {k}: {v}", s.name);
        }
    }
}

/// With traces off, nothing is exported, the client's `traceparent` reaches the upstream
/// unchanged, and the access log still names the client's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_the_client_trace_passes_through() {
    let echo = Echo::start().await;
    let config =
        TestConfig::without_provider()
            .threads(2)
            .route("/", &echo.url(), "auth = \"none\"");
    let tg = Tollgate::start(|p, m| config.render(p, m)).await;
    let tp = traceparent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let r = reqwest::Client::new()
        .get(tg.url("/x"))
        .header("traceparent", &tp)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.last().header("traceparent"), Some(tp.as_str()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !tg
        .log()
        .contains("\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"")
    {
        assert!(tokio::time::Instant::now() < deadline, "{}", tg.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!tg.log().contains("traces: exporting"));
}

/// The gRPC transport: the same spans reach a receiver speaking OTLP/gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_over_grpc_too() {
    let receiver = Receiver::start(true).await;
    let echo = Echo::start().await;
    let config = TestConfig::without_provider()
        .threads(2)
        .route("/", &echo.url(), "auth = \"none\"")
        .section(&format!(
            "[tracing]\notlp_endpoint = \"http://{}\"\notlp_protocol = \"grpc\"",
            receiver.addr
        ));
    let tg = Tollgate::start_with_env(
        |p, m| config.render(p, m),
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ],
    )
    .await;
    let trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = reqwest::Client::new()
        .get(tg.url("/grpc"))
        .header("traceparent", traceparent(trace, "00f067aa0ba902b8"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let req = receiver
        .wait_for("for the request over gRPC", |s| {
            s.trace_id == trace && s.kind == SERVER
        })
        .await;
    assert_eq!(req.service, "from-env");
    assert_eq!(req.name, "GET /");
    receiver
        .wait_for("for the upstream call over gRPC", |s| {
            s.parent == req.span_id
        })
        .await;
}

/// `sample_ratio = 0`: a request that starts its own trace is not sampled (no span exported,
/// the upstream's `traceparent` says so with flags `00`, the access log still names the
/// trace), while a client's sampled trace is continued and exported (parent-based sampling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_drops_new_traces_and_follows_the_clients_decision() {
    let receiver = Receiver::start(false).await;
    let echo = Echo::start().await;
    let config = TestConfig::without_provider()
        .threads(2)
        .route("/", &echo.url(), "auth = \"none\"")
        .section(&format!(
            "[tracing]\notlp_endpoint = \"http://{}\"\nsample_ratio = 0.0",
            receiver.addr
        ));
    let tg = Tollgate::start_with_env(
        |p, m| config.render(p, m),
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let r = reqwest::Client::new()
        .get(tg.url("/dropped"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = echo
        .last()
        .header("traceparent")
        .expect("the upstream gets a traceparent")
        .to_string();
    assert!(sent.ends_with("-00"), "not sampled: {sent}");
    let dropped = sent[3..35].to_string();
    // A sampled trace from the client, sent after: once its spans are in, the unsampled
    // request's would have been exported too (one batch processor, in order).
    let trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let r = reqwest::Client::new()
        .get(tg.url("/kept"))
        .header("traceparent", traceparent(trace, "00f067aa0ba902b9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kept = receiver
        .wait_for("for the client's sampled trace", |s| {
            s.trace_id == trace && s.kind == SERVER
        })
        .await;
    assert_eq!(kept.attrs["url.path"], "/kept");
    receiver
        .wait_for("for its upstream call", |s| s.parent == kept.span_id)
        .await;
    assert!(
        receiver.spans().iter().all(|s| s.trace_id != dropped),
        "the unsampled trace was exported: {:#?}",
        receiver.spans()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !tg.log().contains(&format!("\"trace_id\":\"{dropped}\"")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the access log names the unsampled trace: {}",
            tg.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
