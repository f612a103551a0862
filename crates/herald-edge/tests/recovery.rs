//! Resume after a disconnect on every transport: no gap, no duplicate; `recovered:false` with a
//! fresh position when history no longer covers the reader.

mod common;

use common::*;
use herald_edge::config::NamespaceConfig;
use serde_json::json;

fn small_history() -> herald_edge::EdgeConfig {
    let mut c = config();
    c.namespaces.insert(
        "tiny".into(),
        NamespaceConfig {
            history_size: 2,
            ..Default::default()
        },
    );
    c
}

fn offsets(msgs: &[serde_json::Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn websocket_resumes_without_gap_or_duplicate() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    let sub = a.subscribe("r:ws").await;
    // Nothing was published yet, so nothing exists: the position is the empty one, and the
    // client takes the epoch from the messages it gets.
    assert_eq!((&sub["epoch"], &sub["offset"]), (&json!(""), &json!(0)));
    api_publish(&edge, "r:ws", json!(1)).await;
    let m = a.next_op("message").await;
    assert_eq!(m["offset"], 1);
    let epoch = m["epoch"].as_str().unwrap().to_owned();
    drop(a);
    for i in 2..=5 {
        api_publish(&edge, "r:ws", json!(i)).await;
    }
    let mut b = connect(&edge).await;
    let r = b
        .request(
            json!({"op":"subscribe","channel":"r:ws","since":{"epoch":epoch,"offset":1}}),
            1,
        )
        .await;
    assert_eq!(r["recovered"], true);
    assert_eq!(r["offset"], 5);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(b.next_op("message").await);
    }
    assert_eq!(offsets(&got), vec![2, 3, 4, 5]);
    let data: Vec<_> = got.iter().map(|m| m["data"].clone()).collect();
    assert_eq!(data, vec![json!(2), json!(3), json!(4), json!(5)]);
    api_publish(&edge, "r:ws", json!(6)).await;
    assert_eq!(b.next_op("message").await["offset"], 6);
    b.assert_quiet().await;
}

#[tokio::test]
async fn websocket_gets_recovered_false_when_history_is_gone() {
    let edge = start(small_history()).await;
    let mut a = connect(&edge).await;
    let sub = a.subscribe("tiny:x").await;
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    drop(a);
    for i in 1..=5 {
        api_publish(&edge, "tiny:x", json!(i)).await;
    }
    let mut b = connect(&edge).await;
    let r = b
        .request(
            json!({"op":"subscribe","channel":"tiny:x","since":{"epoch":epoch,"offset":0}}),
            1,
        )
        .await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["offset"], 5, "a fresh position at the top");
    b.assert_quiet().await;
    // A foreign epoch is never "recovered" either.
    let r = b
        .request(
            json!({"op":"subscribe","channel":"tiny:y","since":{"epoch":"zzzz","offset":0}}),
            2,
        )
        .await;
    assert_eq!(r["recovered"], false);
}

#[tokio::test]
async fn sse_resumes_from_last_event_id() {
    let edge = start(config()).await;
    let mut s = sse(&edge, "channel=r:a&channel=r:b", None).await;
    s.next_named("subscribed").await;
    s.next_named("subscribed").await;
    api_publish(&edge, "r:a", json!("a1")).await;
    let last = s.next_message().await.id.unwrap();
    drop(s);
    api_publish(&edge, "r:a", json!("a2")).await;
    api_publish(&edge, "r:b", json!("b1")).await;
    api_publish(&edge, "r:a", json!("a3")).await;
    let mut s = sse(&edge, "channel=r:a&channel=r:b", Some(&last)).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(s.next_message().await.json()["data"].clone());
    }
    got.sort_by_key(|v| v.as_str().unwrap().to_owned());
    assert_eq!(got, vec![json!("a2"), json!("a3"), json!("b1")]);
    let sub = s.next_named("subscribed").await.json();
    assert_eq!(sub["recovered"], true);
    api_publish(&edge, "r:a", json!("a4")).await;
    let m = s.next_message().await.json();
    assert_eq!(
        (m["data"].clone(), m["offset"].clone()),
        (json!("a4"), json!(4))
    );
    // ?since= does the same as the header.
    let mut s2 = sse(
        &edge,
        &format!("channel=r:a&channel=r:b&since={last}"),
        None,
    )
    .await;
    let mut n = 0;
    while n < 4 {
        let ev = s2.next().await.unwrap();
        if ev.event.is_none() {
            n += 1;
        }
    }
}

#[tokio::test]
async fn sse_reports_recovered_false_when_history_is_gone() {
    let edge = start(small_history()).await;
    let mut s = sse(&edge, "channel=tiny:s", None).await;
    let sub = s.next_named("subscribed").await;
    let id = sub.id.unwrap();
    drop(s);
    for i in 1..=5 {
        api_publish(&edge, "tiny:s", json!(i)).await;
    }
    let mut s = sse(&edge, "channel=tiny:s", Some(&id)).await;
    let sub = s.next_named("subscribed").await;
    assert_eq!(sub.json()["recovered"], false);
    assert_eq!(sub.json()["offset"], 5);
    let c = herald_protocol::Cursor::decode(&sub.id.unwrap()).unwrap();
    assert_eq!(c.get("tiny:s").unwrap().offset, 5);
}

#[tokio::test]
async fn polling_resumes_from_its_cursor_on_any_edge_of_one_broker() {
    let broker = std::sync::Arc::new(herald_broker::memory::MemoryBroker::new());
    let e1 = start_on(config(), broker.clone()).await;
    let e2 = start_on(config(), broker.clone()).await;
    let first = poll(&e1, "channel=r:p&timeout=0").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    for i in 1..=3 {
        api_publish(&e1, "r:p", json!(i)).await;
    }
    let got = poll(&e2, &format!("channel=r:p&cursor={cursor}&timeout=5")).await;
    assert_eq!(got["recovered"], true);
    assert_eq!(offsets(got["messages"].as_array().unwrap()), vec![1, 2, 3]);
    let again = poll(
        &e1,
        &format!(
            "channel=r:p&cursor={}&timeout=0",
            got["cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(again["messages"], json!([]), "no duplicate");
}

#[tokio::test]
async fn polling_reports_recovered_false_with_a_fresh_cursor() {
    let edge = start(small_history()).await;
    let first = poll(&edge, "channel=tiny:p&timeout=0").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        api_publish(&edge, "tiny:p", json!(i)).await;
    }
    let got = poll(&edge, &format!("channel=tiny:p&cursor={cursor}&timeout=5")).await;
    assert_eq!(got["recovered"], false);
    assert_eq!(got["messages"], json!([]));
    let fresh = herald_protocol::Cursor::decode(got["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(fresh.get("tiny:p").unwrap().offset, 5);
    // From the fresh cursor on, nothing is lost.
    api_publish(&edge, "tiny:p", json!(6)).await;
    let next = poll(
        &edge,
        &format!(
            "channel=tiny:p&cursor={}&timeout=5",
            got["cursor"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(next["recovered"], true);
    assert_eq!(offsets(next["messages"].as_array().unwrap()), vec![6]);
}

#[tokio::test]
async fn a_websocket_position_resumes_sse_and_poll_as_epoch_colon_offset() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    a.subscribe("sw:x").await;
    for i in 1..=3 {
        api_publish(&edge, "sw:x", json!(i)).await;
    }
    let epoch = a.next_op("message").await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    // The WebSocket client saw offset 1, then switches to SSE and to polling.
    let mut s = sse(&edge, &format!("channel=sw:x&since={epoch}:1"), None).await;
    assert_eq!(s.next_message().await.json()["offset"], 2);
    assert_eq!(s.next_message().await.json()["offset"], 3);
    let r = reqwest::get(format!(
        "{}/poll?channel=sw:x&since={epoch}:1&timeout=0",
        http(&edge)
    ))
    .await
    .unwrap();
    assert_eq!(r.headers()["x-herald-node"], "test");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(offsets(p["messages"].as_array().unwrap()), vec![2, 3]);
    // With several channels the short form is ambiguous: a clear 400.
    let r = reqwest::get(format!(
        "{}/poll?channel=a&channel=b&since={epoch}:1",
        http(&edge)
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 106);
}
