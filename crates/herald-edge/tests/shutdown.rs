//! Graceful shutdown: readiness fails, WebSockets close with 1012, SSE streams end, polls return.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn shutdown_closes_websockets_with_1012_and_ends_sse_and_polls() {
    let mut c = config();
    c.limits.shutdown_grace_secs = 0.4;
    let edge = start(c).await;
    let base = http(&edge);
    let mut a = connect(&edge).await;
    a.subscribe("s").await;
    let mut s = sse(&edge, "channel=s", None).await;
    s.next_named("subscribed").await;
    let first = poll(&edge, "channel=s&timeout=0").await;
    let q = format!(
        "{base}/poll?channel=s&cursor={}&timeout=30",
        first["cursor"].as_str().unwrap()
    );
    let waiter = tokio::spawn(async move {
        reqwest::get(q)
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    let node = edge.node.clone();
    wait_until("ws + sse + poll connected", || node.connection_count() == 3).await;

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(edge.shutdown());
    assert_eq!(a.closed_with().await, Some(1012));
    let close = s.next_named("close").await.json();
    assert_eq!(close["code"], 1012);
    assert!(
        s.next().await.is_none(),
        "SSE stream ends after the close event"
    );
    let polled = waiter.await.unwrap();
    assert_eq!(polled["messages"], json!([]));
    stopping.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "exits within the grace period"
    );
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn draining_node_is_not_ready_and_refuses_new_connections() {
    let mut c = config();
    c.limits.shutdown_grace_secs = 2.0;
    let edge = start(c).await;
    let base = http(&edge);
    let mut a = connect(&edge).await;
    a.subscribe("d").await;
    edge.node
        .draining
        .store(true, std::sync::atomic::Ordering::Release);
    let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let r = reqwest::get(format!("{base}/sse?channel=d")).await.unwrap();
    assert_eq!(r.status(), 503);
    let mut late = connect_raw(&edge).await;
    assert_eq!(late.closed_with().await, Some(1012));
    // Existing connections still work until they are closed.
    a.publish("d", json!(1)).await;
}

#[tokio::test]
async fn draining_spreads_sse_ends_and_poll_answers_over_half_the_grace() {
    let mut c = config();
    c.limits.shutdown_grace_secs = 2.0;
    let edge = start(c).await;
    let base = http(&edge);
    // Each stream is told a random reconnection delay of 1–3 s.
    let mut first = reqwest::get(format!("{base}/sse?channel=j")).await.unwrap();
    let head = String::from_utf8(first.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let retry: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry: "))
        .expect("a retry line")
        .parse()
        .unwrap();
    assert!((1000..=3000).contains(&retry), "{retry}");
    drop(first);
    let mut streams = Vec::new();
    for _ in 0..8 {
        let mut s = sse(&edge, "channel=j", None).await;
        s.next_named("subscribed").await;
        streams.push(s);
    }
    let mut polls = Vec::new();
    for _ in 0..8 {
        let url = format!("{base}/poll?channel=j&timeout=30");
        polls.push(tokio::spawn(async move {
            reqwest::get(url).await.unwrap().text().await.unwrap();
            std::time::Instant::now()
        }));
    }
    let node = edge.node.clone();
    wait_until("16 connections", || node.connection_count() == 16).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(edge.shutdown());
    let mut ends = Vec::new();
    for mut s in streams {
        ends.push(tokio::spawn(async move {
            let close = s.next_named("close").await.json();
            assert_eq!(close["code"], 1012);
            std::time::Instant::now()
        }));
    }
    let mut at = Vec::new();
    for h in ends.into_iter().chain(polls) {
        at.push(h.await.unwrap().duration_since(started));
    }
    stopping.await.unwrap();
    let (min, max) = (at.iter().min().unwrap(), at.iter().max().unwrap());
    assert!(
        *max < std::time::Duration::from_millis(1500),
        "all within half the grace (+ slack): {at:?}"
    );
    // 16 uniform draws over one second all within 100 ms of each other: ~1e-14.
    assert!(
        *max - *min > std::time::Duration::from_millis(100),
        "not spread: {at:?}"
    );
}
