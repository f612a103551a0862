//! Every transport end to end with real clients: WebSocket, SSE, long-poll, short poll, HTTP.

mod common;

use common::*;
use futures_util::SinkExt as _;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn websocket_publish_reaches_every_subscriber_after_ack() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    let mut b = connect(&edge).await;
    assert_eq!(a.node, "test");
    assert_ne!(a.id, b.id);
    let sub = a.subscribe("chat:lobby").await;
    assert_eq!(sub["offset"], 0);
    assert_eq!(sub["recovered"], true);
    b.subscribe("chat:lobby").await;

    a.send(json!({"op":"publish","channel":"chat:lobby","data":{"text":"hi"},"id":3}))
        .await;
    // The publisher gets its own copy and the ack (the memory broker fans out before acking).
    let mut got_ack = None;
    let mut got_msg = None;
    while got_ack.is_none() || got_msg.is_none() {
        let v = a.next_json().await;
        match v["op"].as_str().unwrap() {
            "ack" => got_ack = Some(v),
            "message" => got_msg = Some(v),
            other => panic!("unexpected {other}"),
        }
    }
    let ack = got_ack.unwrap();
    assert_eq!(ack["id"], 3);
    assert_eq!(ack["offset"], 1);
    let m = b.next_op("message").await;
    assert_eq!(m["channel"], "chat:lobby");
    assert_eq!(m["offset"], 1);
    assert_eq!(m["data"], json!({"text":"hi"}));
    assert_eq!(m["from"], a.id.as_str());
    assert_eq!(m["epoch"], ack["epoch"]);
}

#[tokio::test]
async fn skip_self_leaves_out_only_the_sender() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    let mut b = connect(&edge).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    let ack = a
        .request(
            json!({"op":"publish","channel":"room","data":1,"skip_self":true}),
            7,
        )
        .await;
    assert_eq!(ack["op"], "ack");
    assert_eq!(b.next_op("message").await["data"], 1);
    a.assert_quiet().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    a.subscribe("room").await;
    let r = a
        .request(json!({"op":"unsubscribe","channel":"room"}), 4)
        .await;
    assert_eq!(r["op"], "unsubscribed");
    api_publish(&edge, "room", json!("x")).await;
    a.assert_quiet().await;
}

#[tokio::test]
async fn presence_history_and_app_ping() {
    let edge = start(config()).await;
    let mut a = connect_url(&format!("ws://{}/ws?user=alice", edge.addr)).await;
    a.subscribe("chat:p").await;
    for i in 1..=3 {
        a.publish("chat:p", json!(i)).await;
    }
    let p = a
        .request(json!({"op":"presence","channel":"chat:p"}), 10)
        .await;
    assert_eq!(p["clients"][0]["client"], a.id.as_str());
    assert_eq!(p["clients"][0]["user"], "alice");
    assert_eq!(p["clients"][0]["node"], "test");
    let h = a
        .request(json!({"op":"history","channel":"chat:p","limit":2}), 11)
        .await;
    assert_eq!(h["op"], "history");
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3]);
    let h = a
        .request(
            json!({"op":"history","channel":"chat:p","since":{"epoch":h["epoch"],"offset":1}}),
            12,
        )
        .await;
    assert_eq!(h["recovered"], true);
    assert_eq!(h["messages"].as_array().unwrap().len(), 2);
    let pong = a.request(json!({"op":"ping"}), 13).await;
    assert_eq!(pong["op"], "pong");
    let api = reqwest::get(format!("{}/api/presence/chat:p", http(&edge)))
        .await
        .unwrap();
    let api: serde_json::Value = api.json().await.unwrap();
    assert_eq!(api["clients"][0]["client"], a.id.as_str());
}

#[tokio::test]
async fn join_and_leave_events_where_the_namespace_enables_them() {
    let mut c = config();
    c.namespaces.insert(
        "jl".into(),
        herald_edge::config::NamespaceConfig {
            join_leave: true,
            ..Default::default()
        },
    );
    let edge = start(c).await;
    let mut a = connect(&edge).await;
    a.subscribe("jl:room").await;
    let mut b = connect_url(&format!("ws://{}/ws?user=bob", edge.addr)).await;
    b.subscribe("jl:room").await;
    // Subscribers see their own join first, then others'.
    let own = a.next_op("join").await;
    assert_eq!(own["client"], a.id.as_str());
    let j = a.next_op("join").await;
    assert_eq!(j["client"], b.id.as_str());
    assert_eq!(j["user"], "bob");
    let b_id = b.id.clone();
    let mut sse = sse(&edge, "channel=jl:room", None).await;
    let j = sse.next_named("join").await.json();
    assert_eq!(j["channel"], "jl:room");
    drop(b);
    let l = a.next_op("leave").await;
    assert_eq!(l["client"], b_id.as_str());
    // Without join_leave, no events.
    let mut c2 = connect(&edge).await;
    c2.subscribe("quiet:room").await;
    let mut d = connect(&edge).await;
    d.subscribe("quiet:room").await;
    c2.assert_quiet().await;
}

#[tokio::test]
async fn binary_publish_is_binary_on_websocket_and_base64_elsewhere() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    let mut b = connect(&edge).await;
    b.subscribe("bin:x").await;
    let mut s = sse(&edge, "channel=bin:x", None).await;
    s.next_named("subscribed").await;
    let payload = vec![0u8, 1, 2, 255, 10, 13];
    let frame = herald_protocol::binary::encode_binary_publish("bin:x", 42, &payload);
    a.ws.send(Message::Binary(frame.into())).await.unwrap();
    let ack = a.next_op("ack").await;
    assert_eq!(ack["id"], 42);
    match b.next_msg().await {
        Message::Binary(bytes) => {
            let (ch, off, body) = herald_protocol::binary::parse_binary_delivery(&bytes).unwrap();
            assert_eq!((ch, off, body), ("bin:x", 1, &payload[..]));
        }
        other => panic!("expected binary, got {other:?}"),
    }
    let m = s.next_message().await.json();
    assert_eq!(m["data"]["$binary"], "AAEC/woN");
}

#[tokio::test]
async fn sse_streams_several_channels_with_cursor_ids() {
    let edge = start(config()).await;
    let mut s = sse(&edge, "channel=a&channel=b", None).await;
    let w = s.next().await.unwrap();
    assert_eq!(w.event.as_deref(), Some("welcome"));
    assert_eq!(w.json()["node"], "test");
    s.next_named("subscribed").await;
    s.next_named("subscribed").await;
    api_publish(&edge, "a", json!("one")).await;
    api_publish(&edge, "b", json!("two")).await;
    let m1 = s.next_message().await;
    let m2 = s.next_message().await;
    assert_eq!(m1.json()["data"], "one");
    assert_eq!(m2.json()["data"], "two");
    let id = m2.id.clone().expect("message has an id");
    assert!(!id.contains('\n'));
    let c = herald_protocol::Cursor::decode(&id).unwrap();
    assert_eq!(c.get("a").unwrap().offset, 1);
    assert_eq!(c.get("b").unwrap().offset, 1);
    // SSE clients publish with POST /publish.
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .json(&json!({"channel":"a","data":{"k":"v"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m3 = s.next_message().await.json();
    assert_eq!(m3["data"], json!({"k":"v"}));
    assert_eq!(m3["offset"], 2);
}

#[tokio::test]
async fn sse_data_with_raw_newlines_stays_one_event() {
    let edge = start(config()).await;
    let mut s = sse(&edge, "channel=nl", None).await;
    s.next_named("subscribed").await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/publish", http(&edge)))
        .header("content-type", "application/json")
        .body("{\"channel\":\"nl\",\"data\":{\"a\":\r\n1}}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.next_message().await.json()["data"], json!({"a":1}));
}

#[tokio::test]
async fn long_poll_waits_for_a_publication_and_short_poll_answers_at_once() {
    let edge = start(config()).await;
    // Short poll with no cursor: nothing, and a cursor for "now".
    let first = poll(&edge, "channel=lp&timeout=0").await;
    assert_eq!(first["messages"], json!([]));
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    // Long poll waits until a publication arrives.
    let e2 = http(&edge);
    let q = format!("channel=lp&cursor={cursor}&timeout=20");
    let waiter = tokio::spawn(async move {
        reqwest::get(format!("{e2}/poll?{q}"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    let node = edge.node.clone();
    wait_until("the poll to wait in the hub", || {
        node.hub.connection_count() == 1
    })
    .await;
    let started = std::time::Instant::now();
    api_publish(&edge, "lp", json!("wake")).await;
    let got = waiter.await.unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(got["messages"][0]["data"], "wake");
    assert_eq!(got["recovered"], true);
    // The next poll with the new cursor sees only later messages.
    api_publish(&edge, "lp", json!("second")).await;
    let cursor = got["cursor"].as_str().unwrap();
    let next = poll(&edge, &format!("channel=lp&cursor={cursor}&timeout=0")).await;
    let msgs = next["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["data"], "second");
    // A long poll with nothing to say ends at its timeout with an unchanged position.
    let cursor = next["cursor"].as_str().unwrap();
    let idle = poll(&edge, &format!("channel=lp&cursor={cursor}&timeout=1")).await;
    assert_eq!(idle["messages"], json!([]));
    assert_eq!(idle["cursor"], next["cursor"]);
}

#[tokio::test]
async fn http_api_broadcast_info_and_health() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    a.subscribe("x").await;
    a.subscribe("y").await;
    let client = reqwest::Client::new();
    let r: serde_json::Value = client
        .post(format!("{}/api/broadcast", http(&edge)))
        .json(&json!({"channels":["x","y"],"data":"both"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    let m1 = a.next_op("message").await;
    let m2 = a.next_op("message").await;
    assert_eq!(
        (m1["data"].clone(), m2["data"].clone()),
        (json!("both"), json!("both"))
    );
    // With no channels: every connection, subscribed or not.
    let mut idle = connect(&edge).await;
    let mut s = sse(&edge, "channel=z", None).await;
    s.next_named("subscribed").await;
    let r = client
        .post(format!("{}/api/broadcast", http(&edge)))
        .json(&json!({"data":{"all":true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(idle.next_op("broadcast").await["data"], json!({"all":true}));
    assert_eq!(a.next_op("broadcast").await["data"], json!({"all":true}));
    assert_eq!(
        s.next_named("broadcast").await.json()["data"],
        json!({"all":true})
    );
    let info: serde_json::Value = reqwest::get(format!("{}/api/info", http(&edge)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["nodes"][0]["node"], "test");
    assert_eq!(info["nodes"][0]["connections"]["ws"], 2);
    assert_eq!(info["nodes"][0]["connections"]["sse"], 1);
    assert_eq!(
        reqwest::get(format!("{}/healthz", http(&edge)))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", http(&edge)))
            .await
            .unwrap()
            .status(),
        200
    );
    let r = reqwest::get(format!("{}/healthz", http(&edge)))
        .await
        .unwrap();
    assert!(r
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|c| c.to_str().unwrap().starts_with("herald_node=test")));
    assert_eq!(r.headers()["x-herald-node"], "test");
    // A client that already sticks to this edge is not told again; one sent by another's
    // cookie (failover) is moved here.
    let client = reqwest::Client::new();
    for (cookie, told) in [
        ("a=1; herald_node=test", false),
        ("herald_node=other", true),
        ("herald_node=tes", true),
    ] {
        let r = client
            .get(format!("{}/healthz", http(&edge)))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-herald-node"], "test");
        assert_eq!(r.headers().get("set-cookie").is_some(), told, "{cookie}");
    }
}

#[tokio::test]
async fn metrics_listener_exports_the_counts() {
    let edge = start(config()).await;
    let mut a = connect(&edge).await;
    a.subscribe("m").await;
    a.publish("m", json!(1)).await;
    a.next_op("message").await;
    let text = reqwest::get(format!("http://{}/metrics", edge.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("herald_connections_current{transport=\"ws\"} 1"),
        "{text}"
    );
    assert!(text.contains("herald_messages_published_total{transport=\"ws\"} 1"));
    assert!(text.contains("herald_messages_delivered_total{transport=\"ws\"} 1"));
    assert!(text.contains("herald_delivery_latency_seconds_bucket"));
    // /metrics is not on the client listener.
    assert_eq!(
        reqwest::get(format!("{}/metrics", http(&edge)))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn two_nodes_over_one_broker_deliver_across() {
    let broker = std::sync::Arc::new(herald_broker::memory::MemoryBroker::new());
    let mut c1 = config();
    c1.node_id = "n1".into();
    let mut c2 = config();
    c2.node_id = "n2".into();
    let e1 = start_on(c1, broker.clone()).await;
    let e2 = start_on(c2, broker.clone()).await;
    let mut a = connect(&e1).await;
    let mut b = connect(&e2).await;
    assert_eq!((a.node.as_str(), b.node.as_str()), ("n1", "n2"));
    b.subscribe("cross").await;
    a.publish("cross", json!("over")).await;
    assert_eq!(b.next_op("message").await["data"], "over");
}

#[tokio::test]
async fn sse_sends_a_ping_event_every_heartbeat_and_names_the_interval_in_welcome() {
    let mut c = config();
    c.limits.sse_heartbeat_secs = 1;
    let edge = start(c).await;
    let mut resp = reqwest::get(format!("{}/sse?channel=hb", http(&edge)))
        .await
        .unwrap();
    let mut seen = String::new();
    // The ping is the event awaited; WAIT bounds it.
    while !seen.contains("\nevent: ping\ndata: {}\n\n") {
        let chunk = tokio::time::timeout(WAIT, resp.chunk())
            .await
            .expect("a keep-alive within the wait")
            .unwrap()
            .expect("stream open");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(
        seen.contains("\"ping_interval\":1"),
        "the welcome names the heartbeat: {seen}"
    );
}

#[tokio::test]
async fn the_broker_subscription_outlives_the_last_subscriber_by_the_delay_only() {
    let mut c = config();
    c.limits.unsubscribe_delay_ms = 1000;
    let edge = start(c).await;
    let mut a = connect(&edge).await;
    a.subscribe("ud").await;
    let r = a
        .request(json!({"op":"unsubscribe","channel":"ud"}), 2)
        .await;
    assert_eq!(r["op"], "unsubscribed");
    assert_eq!(edge.node.hub.channel_count(), 1, "kept for the delay");
    let node = edge.node.clone();
    wait_until("the channel to be released", || {
        node.hub.channel_count() == 0
    })
    .await;
}
