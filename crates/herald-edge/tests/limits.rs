//! Every configured limit, enforced: max connections (close 1013 / 503), max message size
//! (close 1009 / 413), channels per connection (error 108), the outbound queue (slow consumer
//! closed with 4008 while others keep receiving), the heartbeat (no pong: closed with 4000) and
//! allowed origins (close 1008 / 403).

mod common;

use std::time::Duration;

use common::{api_publish, config, connect, connect_url, hold_clock, http, start, Client, WAIT};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_edge::Edge;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

fn gauge(edge: &Edge, transport: &str) -> i64 {
    edge.node
        .metrics
        .connections
        .with_label_values(&[transport])
        .get()
}

fn disconnects(edge: &Edge, code: &str) -> u64 {
    edge.node
        .metrics
        .disconnects
        .with_label_values(&[code])
        .get()
}

/// Opens a WebSocket that the server accepts (101) and then refuses with a close code; returns
/// that code. A welcome (or any other frame) before the close fails the test.
async fn refused_ws(edge: &Edge, origin: Option<&'static str>) -> u16 {
    let mut req = format!("ws://{}/ws", edge.addr)
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_static(o));
    }
    let (mut ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake in time")
        .expect("the handshake itself succeeds");
    assert_eq!(resp.status(), 101);
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
            .expect("a close frame before the end")
            .expect("frame ok");
        match m {
            Message::Close(Some(f)) => return u16::from(f.code),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("a refused socket got {other:?}"),
        }
    }
}

/// Reads until the server has dropped its side of the TCP connection. The server counts the
/// disconnect and releases the connection slot before it drops the socket, so after this both
/// are settled.
async fn wait_server_gone(c: &mut Client) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, c.ws.next()).await {}
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, c.ws.get_mut().read(&mut buf))
            .await
            .expect("server closes the TCP connection in time")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
}

/// Closes a client, checks the server completes the closing handshake (a browser would
/// otherwise see an unclean close, 1006), and waits until the server is done with it.
async fn close_and_wait_gone(mut c: Client) {
    c.ws.close(None).await.expect("send close");
    loop {
        match tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("close reply in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("closing handshake not completed: {e}"),
            None => break,
        }
    }
    wait_server_gone(&mut c).await;
}

async fn json_error(resp: reqwest::Response, status: u16, code: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    body
}

// ---------------------------------------------------------------------------------------------
// max_connections

#[tokio::test]
async fn max_connections_refuses_with_1013_and_503_and_frees_slots() {
    let mut cfg = config();
    cfg.limits.max_connections = 2;
    let edge = start(cfg).await;
    let base = http(&edge);
    let c1 = connect(&edge).await;
    let mut c2 = connect(&edge).await;
    assert_eq!(gauge(&edge, "ws"), 2);

    // Full: WebSocket gets the handshake, then close 1013 (a browser can read the code).
    assert_eq!(refused_ws(&edge, None).await, 1013);
    // SSE and polls get 503 with a JSON body.
    let r = reqwest::get(format!("{base}/sse?channel=chat:a"))
        .await
        .unwrap();
    json_error(r, 503, 111).await;
    for t in ["0", "1"] {
        let r = reqwest::get(format!("{base}/poll?channel=chat:a&timeout={t}"))
            .await
            .unwrap();
        json_error(r, 503, 111).await;
    }
    // The refusals took no slot, and the admitted clients still work.
    assert_eq!(gauge(&edge, "ws"), 2);
    assert_eq!((gauge(&edge, "sse"), gauge(&edge, "poll")), (0, 0));
    c2.subscribe("chat:a").await;
    c2.publish("chat:a", json!(1)).await;
    assert_eq!(c2.next_op("message").await["data"], 1);

    // A disconnect frees its slot: an SSE stream now fits, then the node is full again.
    close_and_wait_gone(c1).await;
    assert_eq!(gauge(&edge, "ws"), 1);
    let mut s = common::sse(&edge, "channel=chat:a", None).await;
    s.next_named("welcome").await;
    assert_eq!(refused_ws(&edge, None).await, 1013);
    let r = reqwest::get(format!("{base}/poll?channel=chat:a&timeout=0"))
        .await
        .unwrap();
    json_error(r, 503, 111).await;
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains(r#"herald_disconnects_total{code="1013"} 2"#),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// max_message_size

#[tokio::test]
async fn max_message_size_closes_1009_and_answers_413() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let edge = start(cfg).await;
    let mut bystander = connect(&edge).await;
    bystander.subscribe("lim:a").await;

    // A text frame of exactly the limit is fine.
    let mut c = connect(&edge).await;
    let frame_of = |len: usize, id: u64| {
        let empty = json!({"op":"publish","channel":"lim:a","data":"","id":id}).to_string();
        let pad = "p".repeat(len - empty.len());
        let s = json!({"op":"publish","channel":"lim:a","data":pad,"id":id}).to_string();
        assert_eq!(s.len(), len);
        s
    };
    c.send_raw(Message::Text(frame_of(1024, 1).into())).await;
    let ack = c.next_op("ack").await;
    assert_eq!(ack["id"], 1);
    assert_eq!(bystander.next_op("message").await["offset"], 1);

    // One byte over: closed with 1009, nothing published.
    c.send_raw(Message::Text(frame_of(1025, 2).into())).await;
    assert_eq!(c.closed_with().await, Some(1009));
    // A binary frame over the limit too.
    let mut b = connect(&edge).await;
    let payload = vec![7u8; 2000];
    b.send_raw(Message::Binary(
        herald_protocol::binary::encode_binary_publish("lim:a", 3, &payload).into(),
    ))
    .await;
    assert_eq!(b.closed_with().await, Some(1009));

    // Over HTTP: 413 with a JSON body, for data over the limit and a body far over it.
    let client = reqwest::Client::new();
    for data_len in [1100, 50_000] {
        let r = client
            .post(format!("{}/publish", http(&edge)))
            .json(&json!({"channel":"lim:a","data":"d".repeat(data_len)}))
            .send()
            .await
            .unwrap();
        let body = json_error(r, 413, 107).await;
        assert_eq!(body["error"]["name"], "message_too_large");
    }
    // The bystander saw only the one good message, and is still served.
    api_publish(&edge, "lim:a", json!("after")).await;
    let m = bystander.next_op("message").await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(2), json!("after"))
    );
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains(r#"herald_disconnects_total{code="1009"} 2"#),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// max_channels_per_connection

#[tokio::test]
async fn max_channels_per_connection_is_error_108() {
    let mut cfg = config();
    cfg.limits.max_channels_per_connection = 3;
    let edge = start(cfg).await;
    let mut c = connect(&edge).await;
    for ch in ["m:a", "m:b", "m:c"] {
        c.subscribe(ch).await;
    }
    let r = c
        .request(json!({"op":"subscribe","channel":"m:d"}), 44)
        .await;
    assert_eq!(r["op"], "error", "{r}");
    assert_eq!(r["code"], 108, "{r}");
    assert_eq!(r["name"], "limit_exceeded", "{r}");
    // The refused channel delivers nothing; the others still do.
    api_publish(&edge, "m:d", json!("no")).await;
    api_publish(&edge, "m:a", json!("yes")).await;
    let m = c.next_json().await;
    assert_eq!(
        (m["channel"].clone(), m["data"].clone()),
        (json!("m:a"), json!("yes")),
        "{m}"
    );
    c.assert_quiet().await;
    // Unsubscribing frees room for another channel.
    let r = c
        .request(json!({"op":"unsubscribe","channel":"m:a"}), 45)
        .await;
    assert_eq!(r["op"], "unsubscribed", "{r}");
    c.subscribe("m:d").await;
    let r = c
        .request(json!({"op":"subscribe","channel":"m:e"}), 46)
        .await;
    assert_eq!(r["code"], 108, "{r}");

    // SSE and polls: too many channels in one request is 429 with code 108.
    let base = http(&edge);
    let four = "channel=m:a&channel=m:b&channel=m:c&channel=m:d";
    let r = reqwest::get(format!("{base}/sse?{four}")).await.unwrap();
    json_error(r, 429, 108).await;
    let r = reqwest::get(format!("{base}/poll?{four}&timeout=0"))
        .await
        .unwrap();
    json_error(r, 429, 108).await;
    let r = reqwest::get(format!("{base}/poll?channel=m:a,m:b,m:c,m:d&timeout=0"))
        .await
        .unwrap();
    json_error(r, 429, 108).await;
    let mut s = common::sse(&edge, "channel=m:a&channel=m:b&channel=m:c", None).await;
    s.next_named("welcome").await;
}

// ---------------------------------------------------------------------------------------------
// outbound queue: slow consumers

fn slow_closes(edge: &Edge) -> u64 {
    // Read through the Prometheus exposition, as an operator would.
    let text = edge.node.metrics.render();
    text.lines()
        .find(|l| l.starts_with(r#"herald_slow_consumer_closes_total{transport="ws"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().expect("counter value"))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4008_while_others_receive_everything() {
    const CH: &str = "slow:room";
    let mut cfg = config();
    cfg.limits.outbound_queue = 16;
    let edge = start(cfg).await;
    let mut slow = connect(&edge).await;
    slow.subscribe(CH).await;
    let mut fast = connect(&edge).await;
    fast.subscribe(CH).await;
    let mut publisher = connect(&edge).await;

    // The fast subscriber reads concurrently until it sees the last message.
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        loop {
            let m = fast.next_json().await;
            if m["op"] != "message" {
                continue;
            }
            offsets.push(m["offset"].as_u64().unwrap());
            if m["data"]["last"] == true {
                return (fast, offsets);
            }
        }
    });

    // Publish big messages until the slow one (which never reads) overflows: kernel socket
    // buffers, then tungstenite's write buffer, then its 16-slot queue. Then a few more.
    let filler = "f".repeat(32 * 1024);
    let mut published = 0u64;
    let mut after = 0;
    while after < 20 {
        assert!(published < 10_000, "the slow consumer was never closed");
        published += 1;
        publisher
            .publish(CH, json!({"n": published, "pad": filler}))
            .await;
        if slow_closes(&edge) > 0 {
            after += 1;
        }
    }
    published += 1;
    publisher.publish(CH, json!({"last": true})).await;

    let (mut fast, offsets) = tokio::time::timeout(WAIT * 3, reader)
        .await
        .expect("the fast subscriber got everything in time")
        .unwrap();
    assert_eq!(
        offsets,
        (1..=published).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(slow_closes(&edge), 1, "only the slow subscriber is closed");

    // The slow one, reading at last: an unbroken prefix of the stream, then close 4008.
    let mut seen = Vec::new();
    let code = loop {
        let m = tokio::time::timeout(WAIT, slow.ws.next())
            .await
            .expect("frames in time");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "message" {
                    seen.push(v["offset"].as_u64().unwrap());
                }
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("no close frame, error {e}"),
            None => panic!("no close frame"),
        }
    };
    assert_eq!(code, Some(4008));
    wait_server_gone(&mut slow).await;
    assert!(
        (seen.len() as u64) < published,
        "the slow consumer was cut off"
    );
    assert_eq!(
        seen,
        (1..=seen.len() as u64).collect::<Vec<_>>(),
        "its prefix has no gap"
    );
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains(r#"herald_disconnects_total{code="4008"} 1"#),
        "{metrics}"
    );

    // The fast subscriber is still connected and served.
    publisher.publish(CH, json!("still here")).await;
    assert_eq!(fast.next_op("message").await["data"], "still here");
}

// ---------------------------------------------------------------------------------------------
// heartbeat, in paused time
//
// Paused time and real sockets: with `start_paused`, tokio jumps the clock to the next timer
// whenever the runtime is idle, even while bytes are in flight between the test's client and the
// edge over loopback (a pong the kernel has not handed over yet). The clock could then leap past
// a pong deadline while the pong is on its way: a spurious timeout. So these tests hold the clock
// still (tokio does not auto-advance while a blocking task runs) and move it only with
// `tokio::time::advance`, waiting for events in between.

/// Waits for `fut` for at most `d` of real (wall-clock) time; paused tokio timers would not fire.
async fn within_real<F: std::future::Future>(d: Duration, fut: F) -> Option<F::Output> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    tokio::select! {
        biased;
        v = fut => Some(v),
        _ = rx => None,
    }
}

fn heartbeat_config(timeout_secs: u64) -> herald_edge::EdgeConfig {
    let mut cfg = config();
    cfg.limits.ping_interval_secs = 1;
    cfg.limits.ping_timeout_secs = timeout_secs;
    cfg
}

#[tokio::test(start_paused = true)]
async fn heartbeat_closes_a_client_that_never_reads() {
    let _hold = hold_clock();
    let edge = start(heartbeat_config(1)).await;
    let mut c = connect(&edge).await;
    assert_eq!(gauge(&edge, "ws"), 1);
    // The client never reads, so it never answers the server's ping. Move time forward until
    // the server ends the session (its task is tracked).
    let started = tokio::time::Instant::now();
    edge.node.tracker.close();
    let mut ended = false;
    for _ in 0..40 {
        tokio::select! {
            biased;
            _ = edge.node.tracker.wait() => { ended = true; break; }
            _ = tokio::time::advance(Duration::from_millis(250)) => {}
        }
    }
    assert!(ended, "no heartbeat timeout within 10 s of virtual time");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed after {elapsed:?}, before ping interval + timeout"
    );
    assert!(
        elapsed <= Duration::from_secs(5),
        "closed only after {elapsed:?}"
    );
    assert_eq!(gauge(&edge, "ws"), 0, "the connection slot is released");
    assert_eq!(disconnects(&edge, "4000"), 1);
    // Reading now, the client finds the ping it ignored, then close 4000.
    let m = c.ws.next().await.expect("frame").expect("ok");
    assert!(matches!(m, Message::Ping(_)), "{m:?}");
    assert_eq!(c.closed_with().await, Some(4000));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_a_client_that_reads() {
    let _hold = hold_clock();
    // A timeout of 3 intervals: were a pong still in flight at a tick, that tick would skip its
    // ping (one is outstanding) and the test tolerates it; a server that ignores pongs closes
    // the socket 3 s after its first ping, which the test would see.
    let edge = start(heartbeat_config(3)).await;
    let mut c = connect(&edge).await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        // A reading client: tungstenite answers each ping with a pong on its own.
        match within_real(Duration::from_millis(500), c.ws.next()).await {
            None => continue, // no ping this tick
            Some(Some(Ok(Message::Ping(_)))) => {
                pings += 1;
                c.ws.flush().await.expect("pong sent");
            }
            Some(other) => panic!("a reading client got {other:?}"),
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(30));
    assert!(pings >= 15, "only {pings} pings in 30 intervals");
    assert_eq!(gauge(&edge, "ws"), 1, "still connected");
    assert_eq!(disconnects(&edge, "4000"), 0);
    c.subscribe("hb:a").await;
    c.publish("hb:a", json!("alive")).await;
    assert_eq!(c.next_op("message").await["data"], "alive");
}

// ---------------------------------------------------------------------------------------------
// allowed origins

#[tokio::test]
async fn wrong_origin_is_refused_with_1008_and_403() {
    let mut cfg = config();
    cfg.limits.allowed_origins = vec!["https://good.example".into()];
    let edge = start(cfg).await;
    assert_eq!(refused_ws(&edge, Some("https://evil.example")).await, 1008);
    assert_eq!(
        refused_ws(&edge, Some("https://good.example.evil")).await,
        1008
    );
    assert_eq!(refused_ws(&edge, Some("null")).await, 1008);
    assert_eq!(gauge(&edge, "ws"), 0, "refused sockets hold no slot");

    // The listed origin, and non-browser clients (no Origin), are served.
    let mut req = format!("ws://{}/ws", edge.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("https://good.example"));
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut good = Client {
        ws,
        id: String::new(),
        node: String::new(),
    };
    assert_eq!(good.next_op("welcome").await["op"], "welcome");
    let mut plain = connect_url(&format!("ws://{}/ws", edge.addr)).await;
    plain.subscribe("o:a").await;

    // SSE and poll: 403 with a JSON body.
    let base = http(&edge);
    let c = reqwest::Client::new();
    for path in ["/sse?channel=o:a", "/poll?channel=o:a&timeout=0"] {
        let r = c
            .get(format!("{base}{path}"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        json_error(r, 403, 102).await;
        let r = c
            .get(format!("{base}{path}"))
            .header("origin", "https://good.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains(r#"herald_disconnects_total{code="1008"} 3"#),
        "{metrics}"
    );
}
