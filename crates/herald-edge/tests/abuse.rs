//! Rate limits and per-client caps: each limit hit on the transports it applies to, with the
//! documented code, the offender refused or closed, and a well-behaved client on the same edge
//! unaffected throughout.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use herald_edge::{Edge, EdgeConfig};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

fn limited() -> EdgeConfig {
    let mut c = config();
    c.limits.command_rate = 20;
    c.limits.publish_rate = 5;
    c.limits.rate_close_after = 1;
    c.limits.connect_rate_per_ip = 3;
    c
}

/// A WebSocket whose upgrade carries `headers`.
async fn ws_with_headers(edge: &Edge, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{}/ws", edge.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The first frame: `Ok(welcome)` or `Err(close code)`.
async fn first_frame(ws: &mut Ws) -> Result<Value, Option<u16>> {
    match tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a frame")
    {
        Some(Ok(Message::Text(t))) => Ok(serde_json::from_str(&t).unwrap()),
        Some(Ok(Message::Close(f))) => Err(f.map(|f| u16::from(f.code))),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_flooding_connection_gets_112_then_4029_while_a_subscriber_keeps_receiving() {
    // Rates low enough that the few milliseconds this test takes refill nothing.
    let mut c = limited();
    c.limits.command_rate = 5;
    c.limits.publish_rate = 1;
    let edge = start(c).await;
    let mut calm = connect(&edge).await;
    calm.subscribe("room").await;
    let mut loud = connect(&edge).await;
    // Publishes: the burst (2 × 1) is acked, the next is refused with 112.
    for i in 0..2 {
        loud.publish("room", json!(i)).await;
    }
    let r = loud
        .request(json!({"op":"publish","channel":"room","data":"over"}), 77)
        .await;
    assert_eq!((&r["code"], &r["id"]), (&json!(112), &json!(77)), "{r}");
    // Sustained excess of commands: keep sending until the server closes with 4029.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if loud
                .ws
                .send(Message::text(r#"{"op":"ping"}"#))
                .await
                .is_err()
            {
                return None;
            }
            // Drain what is there without waiting on it.
            while let Ok(Some(msg)) =
                tokio::time::timeout(Duration::from_millis(1), loud.ws.next()).await
            {
                if let Ok(Message::Close(f)) = msg {
                    return f.map(|f| u16::from(f.code));
                }
            }
        }
    })
    .await
    .expect("closed within the wait");
    assert_eq!(closed, Some(4029));
    // The calm subscriber got the two accepted messages, in order, and nothing refused.
    for i in 0..2 {
        assert_eq!(calm.next_op("message").await["data"], i);
    }
    calm.assert_quiet().await;
    let r = calm.request(json!({"op":"ping"}), 5).await;
    assert_eq!(r["op"], "pong");
    let m = edge.node.metrics.render();
    for label in ["publish_rate", "rate_close_after"] {
        assert!(
            !m.contains(&format!(
                "herald_limit_rejections_total{{limit=\"{label}\"}} 0"
            )),
            "{label} not counted"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn connects_per_address_are_rated_on_every_transport() {
    let _hold = hold_clock();
    let edge = start(limited()).await;
    // Burst of 2 × 3 new connections from 127.0.0.1, then 429 / 4029.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(sse(&edge, "channel=a", None).await);
    }
    let r = reqwest::get(format!("{}/sse?channel=a", http(&edge)))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let mut ws = ws_with_headers(&edge, &[]).await;
    assert_eq!(first_frame(&mut ws).await.err(), Some(Some(4029)));
    // A client behind the trusted proxy (loopback by default) is counted under its own address.
    let mut other = ws_with_headers(&edge, &[("x-forwarded-for", "198.51.100.20")]).await;
    assert!(first_frame(&mut other).await.is_ok());
    // Polls and HTTP publishes count against the address's command bucket (2 × 20).
    let mut statuses = Vec::new();
    for _ in 0..45 {
        let r = reqwest::Client::new()
            .get(format!("{}/poll?channel=a&timeout=0", http(&edge)))
            .header("x-forwarded-for", "198.51.100.30")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        40,
        "{statuses:?}"
    );
    assert!(statuses[40..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .header("x-forwarded-for", "198.51.100.30")
        .json(&json!({"channel":"a","data":1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    // Time refills the buckets.
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = reqwest::Client::new()
        .get(format!("{}/poll?channel=a&timeout=0", http(&edge)))
        .header("x-forwarded-for", "198.51.100.30")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    let _hold = hold_clock();
    let mut c = limited();
    c.limits.trusted_proxies = Vec::new();
    let edge = start(c).await;
    // Not trusted: every X-Forwarded-For is ignored, all count as 127.0.0.1.
    let mut results = Vec::new();
    for i in 0..7 {
        let xff = format!("198.51.100.{i}");
        let mut ws = ws_with_headers(&edge, &[("x-forwarded-for", &xff)]).await;
        results.push(first_frame(&mut ws).await.is_ok());
    }
    assert_eq!(results.iter().filter(|ok| **ok).count(), 6, "{results:?}");
    assert!(!results[6]);
}

#[tokio::test]
async fn open_connections_are_capped_per_address() {
    let mut c = config();
    c.limits.max_connections_per_ip = 2;
    let edge = start(c).await;
    let a = connect(&edge).await;
    let _b = sse(&edge, "channel=x", None).await;
    let r = reqwest::get(format!("{}/poll?channel=x&timeout=0", http(&edge)))
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let mut ws = ws_with_headers(&edge, &[]).await;
    assert_eq!(first_frame(&mut ws).await.err(), Some(Some(4029)));
    // A slot comes back when a connection closes.
    drop(a);
    let node = edge.node.clone();
    wait_until("the closed socket to release its slot", || {
        node.connection_count() == 1
    })
    .await;
    let r = reqwest::get(format!("{}/poll?channel=x&timeout=0", http(&edge)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A WebSocket client over a socket with a tiny receive buffer that it never reads: the
/// edge's writes to it stall almost at once.
async fn never_reading_subscriber(edge: &Edge, channel: &str) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(edge.addr).await.unwrap();
    let url = format!("ws://{}/ws", edge.addr);
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    first_frame(&mut ws).await.expect("welcome");
    ws.send(Message::text(
        json!({"op":"subscribe","channel":channel,"id":1}).to_string(),
    ))
    .await
    .unwrap();
    // Read the subscribe reply, then never read again.
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        if let Some(Ok(Message::Text(t))) = msg {
            if t.contains("subscribed") {
                return ws;
            }
        }
    }
}

fn rejections(edge: &Edge, limit: &str) -> f64 {
    let text = edge.node.metrics.render();
    let key = format!("herald_limit_rejections_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_subscriber_over_its_byte_budget_is_closed_while_others_get_everything() {
    let mut c = config();
    c.limits.max_message_size = 64 * 1024;
    c.limits.outbound_queue_bytes = 256 * 1024;
    c.limits.write_timeout_secs = 600; // the byte budget, not the timeout, must act
    let edge = start(c).await;
    let mut fast = connect(&edge).await;
    fast.subscribe("big").await;
    let _slow = never_reading_subscriber(&edge, "big").await;
    let node = edge.node.clone();
    let payload = "x".repeat(60_000);
    // Publish until the stalled subscriber is dropped; the fast one reads as it goes.
    let mut sent = 0;
    while node.connection_count() == 2 {
        assert!(sent < 2000, "the stalled subscriber was never closed");
        api_publish(&edge, "big", json!(payload)).await;
        assert_eq!(fast.next_op("message").await["offset"], sent + 1);
        sent += 1;
    }
    assert!(rejections(&edge, "outbound_queue_bytes") >= 1.0);
    // The fast subscriber keeps receiving in order.
    api_publish(&edge, "big", json!("after")).await;
    assert_eq!(fast.next_op("message").await["data"], "after");
}

#[tokio::test]
async fn a_socket_that_accepts_nothing_is_closed_after_the_write_timeout() {
    let mut c = config();
    c.limits.write_timeout_secs = 1;
    c.limits.max_message_size = 64 * 1024;
    // Budgets large enough that only the timeout can act.
    c.limits.outbound_queue = 100_000;
    c.limits.outbound_queue_bytes = 256 * 1024 * 1024;
    let edge = start(c).await;
    let _slow = never_reading_subscriber(&edge, "stall").await;
    let node = edge.node.clone();
    let payload = "y".repeat(60_000);
    // Twice what the kernel's send buffer can take (tcp_wmem's max), then wait for the write
    // timeout to end the session: its connection slot is released.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    for _ in 0..(2 * wmem_max / payload.len() + 1) {
        api_publish(&edge, "stall", json!(payload)).await;
    }
    wait_until("the stalled socket to be closed", || {
        node.connection_count() == 0
    })
    .await;
    assert!(rejections(&edge, "write_timeout") >= 1.0);
    let m = edge.node.metrics.render();
    assert!(
        m.contains("herald_disconnects_total{code=\"4008\"} 1"),
        "a stalled session counts as a 4008 close"
    );
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut c = config();
    c.limits.header_read_timeout_secs = 1;
    let edge = start(c).await;
    let mut tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // The edge closes the connection (EOF, possibly after a 408) without the head ending.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf))
        .await
        .expect("closed by the edge within the wait");
    assert!(read.is_ok() || buf.is_empty());
    let text = String::from_utf8_lossy(&buf);
    assert!(!text.contains("200 OK"), "{text}");
    // A head over max_header_bytes is refused too.
    let mut tcp = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "z".repeat(64 * 1024)
    );
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "{text}"
    );
}

#[tokio::test]
async fn a_redis_at_maxmemory_refuses_publishes_with_111_and_acknowledges_nothing_it_lost() {
    use herald_testkit::redis::RedisServer;
    let redis = RedisServer::start_with_args(
        None,
        false,
        &["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"],
    );
    let mut c = config();
    c.redis_url = Some(redis.url());
    let edge = start(c).await;
    let mut pubr = connect(&edge).await;
    let body = "m".repeat(4000);
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut refused = 0;
    for i in 0..3000u64 {
        let channel = format!("full:{}", i % 30);
        let r = pubr
            .request(
                json!({"op":"publish","channel":channel,"data":{"i": i, "b": body}}),
                i + 1,
            )
            .await;
        match r["op"].as_str() {
            Some("ack") => acked.push((channel, r["offset"].as_u64().unwrap())),
            Some("error") => {
                assert_eq!(r["code"], 111, "{r}");
                refused += 1;
                if refused >= 20 {
                    break;
                }
            }
            other => panic!("{other:?}: {r}"),
        }
    }
    assert!(
        refused >= 20,
        "Redis never filled up ({} acked)",
        acked.len()
    );
    // Every acknowledged publication is in history: count them per channel.
    let mut per_channel = std::collections::BTreeMap::<String, u64>::new();
    for (ch, offset) in &acked {
        let top = per_channel.entry(ch.clone()).or_default();
        *top = (*top).max(*offset);
    }
    for (ch, top) in per_channel {
        let r: Value = reqwest::get(format!("{}/api/history/{ch}?limit=1000", http(&edge)))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            r["offset"], top,
            "{ch}: the newest offset is the last acknowledged one"
        );
        let offsets: Vec<u64> = r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(
            offsets,
            (1..=top).collect::<Vec<u64>>(),
            "{ch}: nothing acknowledged was lost"
        );
    }
}

#[tokio::test]
async fn idle_sockets_count_against_the_connection_limit() {
    use tokio::io::AsyncReadExt as _;
    let mut c = config();
    c.limits.max_connections = 8;
    c.limits.header_read_timeout_secs = 60; // the cap, not the timeout, must act
    let edge = start(c).await;
    // The listener's cap: max_connections + an eighth + 64 = 73 sockets in their HTTP phase.
    let cap = 8 + 8 / 8 + 64;
    let mut idle = Vec::new();
    for _ in 0..cap {
        idle.push(tokio::net::TcpStream::connect(edge.addr).await.unwrap());
    }
    // One more is accepted by the kernel and closed by the edge at once: EOF, no response.
    let mut extra = tokio::net::TcpStream::connect(edge.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, extra.read(&mut buf))
        .await
        .expect("closed by the edge")
        .unwrap_or(0);
    assert_eq!(n, 0, "the socket over the cap is closed");
    assert!(rejections(&edge, "connections") >= 1.0);
    // Idle sockets going away give their places back.
    drop(idle);
    let url = format!("{}/healthz", http(&edge));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(&url).await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "places never came back"
        );
        // Polling a condition that has no event of its own (as common::wait_until does).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
