//! History is read in pages of at most `limits.max_reply_bytes`: a reader far behind resumes on
//! every transport with every message, in order, no gap, no duplicate, while live messages keep
//! coming; a forged cursor over many channels costs one page, not the channels' histories.

mod common;

use std::collections::BTreeSet;

use common::*;
use herald_edge::config::NamespaceConfig;
use herald_edge::{Edge, EdgeConfig};
use serde_json::{json, Value};

const PAGE: usize = 64 * 1024;
const BEHIND: u64 = 200;
/// ~4 KB each: the reader is about 12 pages behind.
fn payload(i: u64) -> Value {
    json!({"i": i, "pad": "p".repeat(4000)})
}

fn paged() -> EdgeConfig {
    let mut c = config();
    c.limits.max_message_size = 16 * 1024;
    c.limits.max_reply_bytes = PAGE;
    c.namespaces.insert(
        "p".into(),
        NamespaceConfig {
            history_size: 10_000,
            history_ttl_secs: 600,
            ..Default::default()
        },
    );
    c
}

/// Publishes `n` messages to `channel`; returns the epoch.
async fn fill(edge: &Edge, channel: &str, from: u64, n: u64) -> String {
    let mut epoch = String::new();
    for i in from..from + n {
        let r = api_publish(edge, channel, payload(i)).await;
        epoch = r["epoch"].as_str().unwrap().to_owned();
    }
    epoch
}

fn assert_in_order(offsets: &[u64], last: u64) {
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(offsets, expected.as_slice(), "every message once, in order");
}

#[tokio::test]
async fn a_websocket_far_behind_catches_up_in_pages_with_live_messages_interleaved() {
    let edge = start(paged()).await;
    let epoch = fill(&edge, "p:ws", 1, BEHIND).await;
    let mut c = connect(&edge).await;
    let r = c
        .request(
            json!({"op":"subscribe","channel":"p:ws","since":{"epoch":epoch,"offset":0}}),
            1,
        )
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert!(
        r["offset"].as_u64().unwrap() < BEHIND,
        "the first page stops short: {r}"
    );
    // More is published while the reader is still catching up.
    fill(&edge, "p:ws", BEHIND + 1, 20).await;
    let mut offsets = Vec::new();
    while offsets.len() < (BEHIND + 20) as usize {
        let m = c.next_op("message").await;
        assert_eq!(m["data"]["i"], m["offset"]);
        offsets.push(m["offset"].as_u64().unwrap());
    }
    assert_in_order(&offsets, BEHIND + 20);
    c.assert_quiet().await;
    // Then live delivery as usual.
    api_publish(&edge, "p:ws", payload(BEHIND + 21)).await;
    assert_eq!(c.next_op("message").await["offset"], BEHIND + 21);
}

#[tokio::test]
async fn an_sse_stream_far_behind_is_streamed_in_pages() {
    let edge = start(paged()).await;
    let epoch = fill(&edge, "p:sse", 1, BEHIND).await;
    let mut s = sse(&edge, &format!("channel=p:sse&since={epoch}:0"), None).await;
    let mut offsets = Vec::new();
    let mut subscribed = None;
    let mut filled = false;
    // The first page comes before the `subscribed` event, the rest after it.
    while offsets.len() < (BEHIND + 5) as usize {
        let ev = s.next().await.expect("stream open");
        match ev.event.as_deref() {
            None => offsets.push(ev.json()["offset"].as_u64().unwrap()),
            Some("subscribed") => subscribed = Some(ev.json()),
            _ => {}
        }
        if subscribed.is_some() && !filled {
            filled = true;
            fill(&edge, "p:sse", BEHIND + 1, 5).await;
        }
    }
    assert_eq!(subscribed.expect("a subscribed event")["recovered"], true);
    assert_in_order(&offsets, BEHIND + 5);
}

#[tokio::test]
async fn polls_far_behind_take_one_page_each_and_the_cursor_leads_to_the_rest() {
    let edge = start(paged()).await;
    let epoch = fill(&edge, "p:poll", 1, BEHIND).await;
    let mut cursor = format!("{epoch}:0");
    let mut offsets = Vec::new();
    let mut polls = 0;
    while offsets.len() < BEHIND as usize {
        polls += 1;
        assert!(polls <= 100, "no progress");
        let url = format!(
            "{}/poll?channel=p:poll&since={cursor}&timeout=0",
            http(&edge)
        );
        let body = reqwest::get(url).await.unwrap().text().await.unwrap();
        assert!(
            body.len() <= PAGE + 16 * 1024 + 1024,
            "a reply is one page (+ one message): {} bytes",
            body.len()
        );
        let r: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["recovered"], true);
        for m in r["messages"].as_array().unwrap() {
            offsets.push(m["offset"].as_u64().unwrap());
        }
        cursor = r["cursor"].as_str().unwrap().to_owned();
    }
    assert_in_order(&offsets, BEHIND);
    assert!(polls >= 10, "{polls} polls for ~800 KB in 64 KiB pages");
}

#[tokio::test]
async fn history_requests_say_when_there_is_more() {
    let edge = start(paged()).await;
    let epoch = fill(&edge, "p:h", 1, 40).await;
    let mut c = connect(&edge).await;
    let mut since = json!({"epoch": epoch, "offset": 0});
    let mut seen = Vec::new();
    for id in 1..=10 {
        let r = c
            .request(
                json!({"op":"history","channel":"p:h","since": since, "limit": 1000}),
                id,
            )
            .await;
        let messages = r["messages"].as_array().unwrap();
        assert!(!messages.is_empty());
        for m in messages {
            seen.push(m["offset"].as_u64().unwrap());
        }
        let last = messages.last().unwrap();
        since = json!({"epoch": last["epoch"], "offset": last["offset"]});
        if r["more"] == false {
            break;
        }
    }
    assert_in_order(&seen, 40);
}

#[tokio::test]
async fn a_forged_cursor_over_many_channels_costs_one_page() {
    let edge = start(paged()).await;
    let mut channels = Vec::new();
    let mut epochs = BTreeSet::new();
    for k in 0..20 {
        let ch = format!("p:amp{k}");
        epochs.insert(fill(&edge, &ch, 1, 30).await);
        channels.push(ch);
    }
    // One cursor at offset 0 of every channel: 20 × 30 × 4 KB ≈ 2.4 MB of history behind it.
    let mut positions = herald_protocol::Cursor::new();
    for ch in &channels {
        let r = reqwest::get(format!("{}/api/history/{ch}?limit=1", http(&edge)))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        positions.set(
            ch,
            herald_protocol::StreamPosition {
                epoch: r["epoch"].as_str().unwrap().to_owned(),
                offset: 0,
            },
        );
    }
    let query: String = channels.iter().map(|c| format!("channel={c}&")).collect();
    let url = format!(
        "{}/poll?{query}cursor={}&timeout=0",
        http(&edge),
        positions.encode()
    );
    let mut handles = Vec::new();
    for _ in 0..8 {
        let url = url.clone();
        handles.push(tokio::spawn(async move {
            reqwest::get(url).await.unwrap().text().await.unwrap().len()
        }));
    }
    for h in handles {
        let len = h.await.unwrap();
        assert!(
            len <= PAGE + 16 * 1024 + 4096,
            "one page per request, not the channels' histories: {len} bytes"
        );
    }
}
