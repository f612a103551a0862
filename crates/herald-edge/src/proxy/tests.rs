//! The hook client against a real HTTP backend (axum on `127.0.0.1:0`) started per test.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;

use super::wire::{clip_reason, DEFAULT_DENY_REASON, MAX_REASON_BYTES};
use super::*;

/// What the held route shares with the test.
#[derive(Clone, Default)]
struct Held {
    /// Requests the held route has received.
    seen: Arc<AtomicUsize>,
    /// Notified (one stored permit) for each request the held route receives.
    arrived: Arc<Notify>,
    /// Never notified: the held route waits on it until the client gives up.
    release: Arc<Notify>,
}

/// The test backend: one route per kind of answer.
fn backend(held: Held) -> Router {
    Router::new()
        .route(
            "/connect/ok",
            post(|| async {
                Json(json!({
                    "user": "u1",
                    "info": {"name": "Ann"},
                    "channels": ["news", "chat:1"],
                    "exp": 4_000_000_000_u64,
                    "future_field": true,
                }))
            }),
        )
        .route(
            "/connect/bare",
            post(|| async { Json(json!({"user": "u2"})) }),
        )
        .route(
            "/forbidden",
            post(|| async { (StatusCode::FORBIDDEN, Json(json!({"reason": "no session"}))) }),
        )
        .route(
            "/forbidden/html",
            post(|| async { (StatusCode::FORBIDDEN, "<html>nope</html>") }),
        )
        .route(
            "/refuse",
            post(|| async { Json(json!({"allow": false, "reason": "banned"})) }),
        )
        .route("/empty", post(|| async { Json(json!({})) }))
        .route("/allow", post(|| async { Json(json!({"allow": true})) }))
        .route(
            "/replace",
            post(|| async { Json(json!({"data": {"text": "[censored]"}})) }),
        )
        .route("/echo", post(echo))
        .route("/echo/connect", post(echo_connect))
        .route("/hold", post(hold))
        .route("/garbage/text", post(|| async { "user=u1" }))
        .route(
            "/garbage/500",
            post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({}))) }),
        )
        .route(
            "/garbage/redirect",
            post(|| async { (StatusCode::FOUND, [(header::LOCATION, "/empty")]) }),
        )
        .route("/garbage/array", post(|| async { Json(json!(["u1"])) }))
        .route("/garbage/big-length", post(big_with_length))
        .route("/garbage/big-chunked", post(big_chunked))
        .route(
            "/garbage/no-user",
            post(|| async { Json(json!({"info": {}})) }),
        )
        .route(
            "/garbage/empty-user",
            post(|| async { Json(json!({"user": ""})) }),
        )
        .route(
            "/garbage/long-user",
            post(|| async { Json(json!({"user": "u".repeat(256)})) }),
        )
        .route(
            "/garbage/info-array",
            post(|| async { Json(json!({"user": "u1", "info": [1, 2]})) }),
        )
        .route(
            "/garbage/info-big",
            post(|| async { Json(json!({"user": "u1", "info": {"pad": "x".repeat(1100)}})) }),
        )
        .route(
            "/garbage/bad-channel",
            post(|| async { Json(json!({"user": "u1", "channels": ["no spaces"]})) }),
        )
        .route(
            "/garbage/allow-string",
            post(|| async { Json(json!({"user": "u1", "allow": "yes"})) }),
        )
        .with_state(held)
}

/// Answers with what it received: the body, and the request's own HTTP headers.
async fn echo(headers: HeaderMap, body: Bytes) -> Json<Value> {
    let body: Value = serde_json::from_slice(&body).expect("the hook body is JSON");
    let http_headers: Vec<String> = headers.keys().map(|name| name.to_string()).collect();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    Json(json!({
        "data": {"body": body, "content_type": content_type, "http_headers": http_headers}
    }))
}

/// Answers a connect with the body it received as the user's `info`.
async fn echo_connect(body: Bytes) -> Json<Value> {
    let body: Value = serde_json::from_slice(&body).expect("the hook body is JSON");
    Json(json!({"user": "echo", "info": body}))
}

/// Counts the request, says so, then never answers.
async fn hold(State(held): State<Held>) -> &'static str {
    held.seen.fetch_add(1, Ordering::SeqCst);
    held.arrived.notify_one();
    held.release.notified().await;
    "{}"
}

/// A valid JSON object padded past the cap, with a `Content-Length`.
async fn big_with_length() -> Response {
    let mut body = " ".repeat(MAX_ANSWER_BYTES);
    body.push_str(r#"{"user":"u1"}"#);
    body.into_response()
}

/// A valid JSON object padded past the cap, chunked (no `Content-Length`).
async fn big_chunked() -> Response {
    let mut chunks: Vec<Result<Bytes, std::io::Error>> = (0..MAX_ANSWER_BYTES / 1024)
        .map(|_| Ok(Bytes::from(vec![b' '; 1024])))
        .collect();
    chunks.push(Ok(Bytes::from_static(br#"{"user":"u1"}"#)));
    Body::from_stream(futures_util::stream::iter(chunks)).into_response()
}

/// Starts `router` on a free port and returns the address.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    addr
}

/// A client whose three hooks all go to `path`.
fn client(addr: SocketAddr, path: &str, timeout: Duration, concurrency: usize) -> ProxyClient {
    let url = format!("http://{addr}{path}");
    ProxyClient::new(ProxyConfig {
        connect_url: Some(url.clone()),
        subscribe_url: Some(url.clone()),
        publish_url: Some(url),
        timeout,
        concurrency,
    })
    .expect("valid config")
}

fn patient(addr: SocketAddr, path: &str) -> ProxyClient {
    client(addr, path, Duration::from_secs(10), 8)
}

fn request() -> ProxyRequest<'static> {
    ProxyRequest {
        client: "c1",
        transport: "websocket",
        remote_addr: Some(IpAddr::from([203, 0, 113, 7])),
        user: None,
        headers: vec![("cookie".into(), "session=abc".into())],
        cookies: None,
    }
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid JSON")
}

fn assert_unavailable<T: fmt::Debug>(result: Result<T, ProxyError>, what: &str) -> String {
    match result {
        Err(ProxyError::Unavailable(message)) => message,
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_allowed_names_user_info_channels_exp() {
    let addr = serve(backend(Held::default())).await;
    let reply = patient(addr, "/connect/ok")
        .connect(&request())
        .await
        .expect("allowed");
    assert_eq!(reply.user, "u1");
    assert_eq!(
        reply.info.as_deref().map(RawValue::get),
        Some(r#"{"name":"Ann"}"#)
    );
    assert_eq!(reply.channels, ["news", "chat:1"]);
    assert_eq!(reply.exp, Some(4_000_000_000));

    let bare = patient(addr, "/connect/bare")
        .connect(&request())
        .await
        .expect("allowed");
    assert_eq!(bare.user, "u2");
    assert!(bare.info.is_none() && bare.channels.is_empty() && bare.exp.is_none());
}

#[tokio::test]
async fn connect_denied_by_403_or_allow_false() {
    let addr = serve(backend(Held::default())).await;
    let denied = patient(addr, "/forbidden").connect(&request()).await;
    let denied = denied.expect_err("denied");
    assert_eq!(denied, ProxyError::Denied("no session".into()));
    assert_eq!(denied.result_label(), "denied");

    let html = patient(addr, "/forbidden/html").connect(&request()).await;
    assert_eq!(
        html.expect_err("denied"),
        ProxyError::Denied(DEFAULT_DENY_REASON.into())
    );

    let refused = patient(addr, "/refuse").connect(&request()).await;
    assert_eq!(
        refused.expect_err("denied"),
        ProxyError::Denied("banned".into())
    );
}

#[tokio::test]
async fn subscribe_allowed_or_denied() {
    let addr = serve(backend(Held::default())).await;
    let req = request();
    for path in ["/empty", "/allow"] {
        let result = patient(addr, path).subscribe(&req, "chat:1").await;
        assert_eq!(result, Ok(()), "{path}");
    }
    let forbidden = patient(addr, "/forbidden").subscribe(&req, "chat:1").await;
    assert_eq!(forbidden, Err(ProxyError::Denied("no session".into())));
    let refused = patient(addr, "/refuse").subscribe(&req, "chat:1").await;
    assert_eq!(refused, Err(ProxyError::Denied("banned".into())));
}

#[tokio::test]
async fn publish_keeps_or_replaces_data() {
    let addr = serve(backend(Held::default())).await;
    let req = request();
    let data = raw(r#"{"text":"damn"}"#);
    let kept = patient(addr, "/empty").publish(&req, "chat:1", &data).await;
    assert_eq!(kept.expect("allowed").map(|d| d.get().to_owned()), None);

    let replaced = patient(addr, "/replace")
        .publish(&req, "chat:1", &data)
        .await
        .expect("allowed")
        .expect("replaced");
    assert_eq!(replaced.get(), r#"{"text":"[censored]"}"#);

    let refused = patient(addr, "/refuse")
        .publish(&req, "chat:1", &data)
        .await;
    assert_eq!(
        refused.expect_err("denied"),
        ProxyError::Denied("banned".into())
    );
}

#[tokio::test]
async fn request_body_carries_the_fields_and_only_allow_listed_headers() {
    let addr = serve(backend(Held::default())).await;
    let mut incoming = HeaderMap::new();
    for (name, value) in [
        ("cookie", "session=abc"),
        ("cookie", "theme=dark"),
        ("authorization", "Bearer t0k3n"),
        ("user-agent", "test-agent"),
        ("origin", "https://app.example"),
        ("x-forwarded-for", "198.51.100.1"),
        ("x-forwarded-for", "10.0.0.1"),
        ("x-real-ip", "198.51.100.1"),
        ("accept-language", "fr"),
        ("host", "edge.example"),
        ("x-api-key", "secret-key"),
        ("proxy-authorization", "Basic c2VjcmV0"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ] {
        incoming.append(name, HeaderValue::from_static(value));
    }
    let req = ProxyRequest {
        client: "c9",
        transport: "sse",
        remote_addr: Some(IpAddr::from([198, 51, 100, 1])),
        user: Some("u7"),
        headers: select_headers(&incoming),
        cookies: None,
    };
    let echoed = patient(addr, "/echo")
        .publish(&req, "chat:1", &raw(r#"{"n": 1}"#))
        .await
        .expect("allowed")
        .expect("echo replaces the data");
    let echoed: Value = serde_json::from_str(echoed.get()).expect("JSON");

    assert_eq!(echoed["content_type"], "application/json");
    assert_eq!(
        echoed["body"],
        json!({
            "client": "c9",
            "transport": "sse",
            "remote_addr": "198.51.100.1",
            "user": "u7",
            "headers": {
                "cookie": "session=abc; theme=dark",
                "authorization": "Bearer t0k3n",
                "user-agent": "test-agent",
                "origin": "https://app.example",
                "x-forwarded-for": "198.51.100.1, 10.0.0.1",
                "x-real-ip": "198.51.100.1",
                "accept-language": "fr",
            },
            "channel": "chat:1",
            "data": {"n": 1},
        })
    );
    // The client's headers travel in the body only, never as headers of the hook request.
    let http_headers = echoed["http_headers"].as_array().expect("array");
    for forwarded in ["cookie", "authorization", "origin", "x-api-key"] {
        assert!(
            !http_headers.iter().any(|name| name == forwarded),
            "{forwarded} sent as an HTTP header: {http_headers:?}"
        );
    }

    // Connect: no user, channel or data; `cookies` replaces the cookie header.
    let req = ProxyRequest {
        client: "c10",
        transport: "websocket",
        remote_addr: None,
        user: None,
        headers: vec![
            ("cookie".into(), "stale=1".into()),
            ("user-agent".into(), "ua".into()),
        ],
        cookies: Some("session=fresh"),
    };
    let reply = patient(addr, "/echo/connect")
        .connect(&req)
        .await
        .expect("allowed");
    let body: Value = serde_json::from_str(reply.info.expect("echo").get()).expect("JSON");
    assert_eq!(
        body,
        json!({
            "client": "c10",
            "transport": "websocket",
            "headers": {"user-agent": "ua", "cookie": "session=fresh"},
        })
    );
}

#[tokio::test]
async fn slow_backend_is_unavailable_within_about_the_timeout() {
    let held = Held::default();
    let addr = serve(backend(held.clone())).await;
    let timeout = Duration::from_millis(200);
    let proxy = client(addr, "/hold", timeout, 8);
    let started = std::time::Instant::now();
    let message = assert_unavailable(proxy.subscribe(&request(), "chat:1").await, "slow");
    let elapsed = started.elapsed();
    assert!(message.contains("no answer within 200 ms"), "{message}");
    assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
    assert!(elapsed < timeout * 5, "gave up late: {elapsed:?}");
    assert_eq!(held.seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn backend_down_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    let message = assert_unavailable(
        patient(addr, "/connect/ok").connect(&request()).await,
        "down",
    );
    assert!(message.contains("cannot connect"), "{message}");
}

#[tokio::test]
async fn garbage_answers_are_unavailable() {
    let addr = serve(backend(Held::default())).await;
    let cases = [
        ("/garbage/text", "not a JSON object"),
        ("/garbage/500", "answered 500"),
        ("/garbage/redirect", "answered 302"),
        ("/garbage/array", "not a JSON object"),
        ("/garbage/big-length", "limit"),
        ("/garbage/big-chunked", "limit"),
        ("/garbage/no-user", "no `user`"),
        ("/garbage/empty-user", "`user` is 0 bytes"),
        ("/garbage/long-user", "`user` is 256 bytes"),
        ("/garbage/info-array", "not an object"),
        ("/garbage/info-big", "`info` is"),
        ("/garbage/bad-channel", "`channels`"),
        ("/garbage/allow-string", "wrong shape"),
    ];
    for (path, expected) in cases {
        let message = assert_unavailable(patient(addr, path).connect(&request()).await, path);
        assert!(message.contains(expected), "{path}: {message}");
        assert!(
            !message.contains("127.0.0.1"),
            "{path} names the URL: {message}"
        );
    }
}

#[tokio::test]
async fn concurrency_bound_refuses_a_second_call_while_the_first_is_held() {
    let held = Held::default();
    let addr = serve(backend(held.clone())).await;
    let proxy = ProxyClient::new(ProxyConfig {
        connect_url: Some(format!("http://{addr}/connect/ok")),
        subscribe_url: Some(format!("http://{addr}/hold")),
        publish_url: None,
        timeout: Duration::from_secs(2),
        concurrency: 1,
    })
    .expect("valid config");

    let first = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.subscribe(&request(), "chat:1").await }
    });
    held.arrived.notified().await;

    // The second waits at most half the budget for the one permit, which the first holds for
    // the whole budget.
    let message = assert_unavailable(proxy.subscribe(&request(), "chat:2").await, "second");
    assert!(message.contains("backend busy"), "{message}");
    assert_eq!(held.seen.load(Ordering::SeqCst), 1);

    let first = first.await.expect("first call task");
    let message = assert_unavailable(first, "first");
    assert!(message.contains("no answer"), "{message}");
    assert_eq!(held.seen.load(Ordering::SeqCst), 1);

    // The permit came back.
    let reply = proxy.connect(&request()).await.expect("allowed");
    assert_eq!(reply.user, "u1");
}

#[test]
fn new_validates_the_config() {
    let ok = ProxyClient::new(ProxyConfig {
        connect_url: Some("https://app.example/herald/connect".into()),
        ..ProxyConfig::default()
    })
    .expect("valid");
    assert!(ok.has_connect() && !ok.has_subscribe() && !ok.has_publish());
    let debug = format!("{ok:?}");
    assert!(!debug.contains("app.example"), "{debug}");

    let bad = [
        (
            "ftp://app.example/x",
            1,
            Duration::from_secs(1),
            "http or https",
        ),
        (
            "/herald/connect",
            1,
            Duration::from_secs(1),
            "not a valid URL",
        ),
        ("http://", 1, Duration::from_secs(1), "not a valid URL"),
        (
            "http://app.example/",
            0,
            Duration::from_secs(1),
            "concurrency",
        ),
        ("http://app.example/", 1, Duration::ZERO, "timeout"),
    ];
    for (url, concurrency, timeout, expected) in bad {
        let err = ProxyClient::new(ProxyConfig {
            subscribe_url: Some(url.into()),
            concurrency,
            timeout,
            ..ProxyConfig::default()
        })
        .expect_err(url);
        assert!(err.contains(expected), "{url}: {err}");
    }
}

#[test]
fn select_headers_keeps_only_the_allow_list() {
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("secret"));
    headers.insert("host", HeaderValue::from_static("edge"));
    headers.insert("user-agent", HeaderValue::from_static("ua"));
    headers.insert(
        "accept-language",
        HeaderValue::from_bytes(b"caf\xc3\xa9").expect("opaque value"),
    );
    assert_eq!(
        select_headers(&headers),
        [("user-agent".to_owned(), "ua".to_owned())]
    );
    assert!(select_headers(&HeaderMap::new()).is_empty());
}

#[test]
fn labels_and_reasons() {
    assert_eq!(ProxyError::Denied(String::new()).result_label(), "denied");
    assert_eq!(
        ProxyError::Unavailable(String::new()).result_label(),
        "unavailable"
    );
    let long = "é".repeat(200); // 400 bytes
    let clipped = clip_reason(long);
    assert!(clipped.len() <= MAX_REASON_BYTES && clipped.len() >= MAX_REASON_BYTES - 1);
    assert_eq!(clip_reason("short".into()), "short");
}
