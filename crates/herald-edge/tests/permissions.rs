//! Namespace permissions hold on every transport: a namespace with `client_subscribe = false`
//! gives its messages, history and presence to no client, however it asks; `client_publish =
//! false` refuses publishes over WebSocket and `POST /publish`; `presence = false` refuses
//! presence. The API (`/api/*`) is not a client and still reads and writes.

mod common;

use common::*;
use herald_edge::config::NamespaceConfig;
use herald_edge::Edge;
use serde_json::json;

/// Permission denied, as error frames and HTTP bodies carry it.
const DENIED: u64 = 102;

async fn edge() -> Edge {
    let mut c = config();
    c.namespaces.insert(
        "secret".into(),
        NamespaceConfig {
            client_subscribe: false,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "readonly".into(),
        NamespaceConfig {
            client_publish: false,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "nopresence".into(),
        NamespaceConfig {
            presence: false,
            ..Default::default()
        },
    );
    start(c).await
}

#[tokio::test]
async fn a_namespace_closed_to_subscribers_hides_messages_history_and_presence_on_websocket() {
    let edge = edge().await;
    // Something to hide: a message in history.
    api_publish(&edge, "secret:a", json!("hidden")).await;
    let mut c = connect(&edge).await;
    for (i, op) in ["subscribe", "history", "presence"].into_iter().enumerate() {
        let id = i as u64 + 1;
        let r = c
            .request(json!({"op": op, "channel": "secret:a"}), id)
            .await;
        assert_eq!(r["op"], "error", "{op}: {r}");
        assert_eq!(r["code"], DENIED, "{op}: {r}");
        assert!(!r.to_string().contains("hidden"), "{op}: {r}");
    }
    // The same requests on an open namespace work, so the refusals above are the rule's.
    api_publish(&edge, "open:a", json!("seen")).await;
    let r = c
        .request(json!({"op":"history","channel":"open:a"}), 10)
        .await;
    assert_eq!(r["op"], "history", "{r}");
    assert_eq!(r["messages"][0]["data"], "seen");
    c.subscribe("open:a").await;
    let r = c
        .request(json!({"op":"presence","channel":"open:a"}), 11)
        .await;
    assert_eq!(r["clients"][0]["client"], c.id.as_str(), "{r}");
    // The API is not a client: it still reads the closed channel.
    let body: serde_json::Value = reqwest::get(format!("{}/api/history/secret:a", http(&edge)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["messages"][0]["data"], "hidden");
}

#[tokio::test]
async fn a_namespace_closed_to_subscribers_refuses_sse_and_polls() {
    let edge = edge().await;
    api_publish(&edge, "secret:a", json!("hidden")).await;
    for path in [
        "sse?channel=secret:a",
        "sse?channel=open:a&channel=secret:a",
        "poll?channel=secret:a&timeout=0",
        "poll?channel=open:a,secret:a&timeout=1",
    ] {
        let r = reqwest::get(format!("{}/{path}", http(&edge)))
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], DENIED, "{path}: {body}");
    }
    // Nothing was left behind: no connection, no subscription.
    assert_eq!(edge.node.connection_count(), 0);
    assert_eq!(edge.node.hub.channel_count(), 0);
}

#[tokio::test]
async fn publish_and_presence_rules_hold_on_websocket_and_http() {
    let edge = edge().await;
    let mut c = connect(&edge).await;
    // A read-only namespace: subscribing is fine, publishing is not, on either path.
    c.subscribe("readonly:a").await;
    let r = c
        .request(json!({"op":"publish","channel":"readonly:a","data":1}), 2)
        .await;
    assert_eq!(r["code"], DENIED, "{r}");
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .json(&json!({"channel":"readonly:a","data":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The API may; the subscriber gets exactly that one message.
    api_publish(&edge, "readonly:a", json!("from-api")).await;
    assert_eq!(c.next_op("message").await["data"], "from-api");
    c.assert_quiet().await;
    // Presence off: refused even to a subscriber.
    c.subscribe("nopresence:a").await;
    let r = c
        .request(json!({"op":"presence","channel":"nopresence:a"}), 3)
        .await;
    assert_eq!(r["code"], DENIED, "{r}");
}
