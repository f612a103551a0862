//! The backend proxy hooks through a running edge, against a real HTTP backend the test starts:
//! a cookie session becomes the connection's user (connect hook), a `proxy` namespace asks the
//! backend on every subscribe and publish (which may rewrite the data), and a backend that is
//! down, slow or answering garbage refuses with "unavailable", never lets anyone in.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use herald_edge::config::{NamespaceConfig, PublishRule, SubscribeRule};
use herald_edge::Edge;
use serde_json::{json, Value};

/// Counts the hook calls the backend saw.
#[derive(Default)]
struct Backend {
    calls: AtomicUsize,
}

fn session(body: &Value) -> Option<String> {
    let cookie = body["headers"]["cookie"].as_str()?;
    cookie
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "session")
        .map(|(_, v)| v.to_owned())
}

async fn connect_hook(State(b): State<Arc<Backend>>, Json(body): Json<Value>) -> Response {
    b.calls.fetch_add(1, Ordering::SeqCst);
    match session(&body).as_deref() {
        Some("garbage") => "not json".into_response(),
        Some("slow") => std::future::pending::<Response>().await,
        Some(user) if user.starts_with("u-") => Json(json!({
            "user": &user[2..], "info": {"via": "cookie"}
        }))
        .into_response(),
        _ => (StatusCode::FORBIDDEN, Json(json!({"reason": "no session"}))).into_response(),
    }
}

async fn subscribe_hook(State(b): State<Arc<Backend>>, Json(body): Json<Value>) -> Response {
    b.calls.fetch_add(1, Ordering::SeqCst);
    let allowed = body["channel"] == "gated:open" && body["user"] == "ann";
    Json(json!({"allow": allowed, "reason": "not for you"})).into_response()
}

async fn publish_hook(State(b): State<Arc<Backend>>, Json(body): Json<Value>) -> Response {
    b.calls.fetch_add(1, Ordering::SeqCst);
    if body["data"]["text"] == "bad word" {
        return (StatusCode::FORBIDDEN, "{}").into_response();
    }
    Json(json!({"data": {"text": body["data"]["text"], "checked_by": "backend"}})).into_response()
}

async fn backend() -> (SocketAddr, Arc<Backend>) {
    let state = Arc::new(Backend::default());
    let app = Router::new()
        .route("/connect", post(connect_hook))
        .route("/subscribe", post(subscribe_hook))
        .route("/publish", post(publish_hook))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

async fn edge_with(backend: SocketAddr) -> Edge {
    let mut c = config();
    c.auth.connect_proxy_url = Some(format!("http://{backend}/connect"));
    c.auth.subscribe_proxy_url = Some(format!("http://{backend}/subscribe"));
    c.auth.publish_proxy_url = Some(format!("http://{backend}/publish"));
    c.auth.proxy_timeout_ms = 300;
    c.namespaces.insert(
        "gated".into(),
        NamespaceConfig {
            subscribe: Some(SubscribeRule::Proxy),
            publish: Some(PublishRule::Proxy),
            ..Default::default()
        },
    );
    start(c).await
}

async fn get_with_cookie(edge: &Edge, path: &str, cookie: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}/{path}", http(edge)))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_connect_hook_turns_a_cookie_session_into_a_user() {
    let (addr, _) = backend().await;
    let edge = edge_with(addr).await;
    let r = get_with_cookie(&edge, "sse?channel=gated:open", "session=u-ann").await;
    assert_eq!(r.status(), 200);
    let mut s = Sse::from_response(r);
    let welcome = s.next_named("welcome").await.json();
    assert_eq!(welcome["user"], "ann");
    // No session: the backend's 403 is the client's 401 (unauthorized).
    let r = get_with_cookie(&edge, "poll?channel=gated:open&timeout=0", "other=1").await;
    assert_eq!(r.status(), 401);
    // Garbage, slow (past the 300 ms timeout) and down: 503, nobody let in.
    for cookie in ["session=garbage", "session=slow"] {
        let r = get_with_cookie(&edge, "poll?channel=gated:open&timeout=0", cookie).await;
        assert_eq!(r.status(), 503, "{cookie}");
    }
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let edge_down = edge_with(down).await;
    let r = get_with_cookie(
        &edge_down,
        "poll?channel=gated:open&timeout=0",
        "session=u-ann",
    )
    .await;
    assert_eq!(r.status(), 503);
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains("herald_auth_total{result=\"unavailable\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_auth_total{result=\"denied\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn proxy_namespaces_ask_the_backend_on_subscribe_and_publish() {
    let (addr, state) = backend().await;
    let edge = edge_with(addr).await;
    let r = get_with_cookie(&edge, "sse?channel=gated:open", "session=u-ann").await;
    assert_eq!(r.status(), 200);
    let mut ann = Sse::from_response(r);
    ann.next_named("subscribed").await;
    // Bob may connect but the backend refuses him this channel; ann may not have another one.
    let r = get_with_cookie(&edge, "poll?channel=gated:open&timeout=0", "session=u-bob").await;
    assert_eq!(r.status(), 403);
    let r = get_with_cookie(&edge, "poll?channel=gated:other&timeout=0", "session=u-ann").await;
    assert_eq!(r.status(), 403);
    // Publishing: the backend rewrites the data; a refused word is 403 and never delivered.
    let publish = |text: &'static str| {
        let url = format!("{}/publish", http(&edge));
        async move {
            reqwest::Client::new()
                .post(url)
                .header("cookie", "session=u-ann")
                .json(&json!({"channel": "gated:open", "data": {"text": text}}))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(publish("bad word").await, 403);
    assert_eq!(publish("hello").await, 200);
    let m = ann.next_message().await.json();
    assert_eq!(m["data"], json!({"text": "hello", "checked_by": "backend"}));
    assert_eq!(m["user"], "ann");
    assert!(state.calls.load(Ordering::SeqCst) >= 7);
}
