//! Bad input of every class gets a clear answer (an error frame with the right code, or a 4xx
//! with a JSON error body) and never takes anything else down: the offending connection keeps
//! working and other clients on the same channel see nothing but their messages.

mod common;

use common::{api_publish, config, connect, http, poll, start, Client, WAIT};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_edge::Edge;
use herald_protocol::binary::encode_binary_publish;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

const ROOM: &str = "chat:room";

/// Reads the next frame and checks it is an error with `code`, echoing `id` (null when none).
async fn expect_error(c: &mut Client, what: &str, code: u16, id: Option<u64>) -> Value {
    let v = c.next_json().await;
    assert_eq!(v["op"], "error", "{what}: expected an error frame, got {v}");
    assert_eq!(v["code"], code, "{what}: wrong code in {v}");
    assert_eq!(v["id"], json!(id), "{what}: id not echoed in {v}");
    assert!(v["name"].is_string(), "{what}: no name in {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message in {v}"
    );
    v
}

/// Proves `bad` still works after bad input `round`, and that `bystander` (subscribed to
/// ROOM, like `bad`) got exactly the one message published meanwhile, nothing else.
///
/// Strict: every frame `bad` receives here must be the expected one, so a stray error frame,
/// a duplicate delivery (e.g. after a refused double subscribe) or a lost subscription fails.
async fn assert_alive(bad: &mut Client, bystander: &mut Client, round: u64) {
    // Publish on the existing subscription: ack and own copy, in either order.
    let id = 1_000 + round;
    bad.send(json!({"op":"publish","channel":ROOM,"data":{"round":round},"id":id}))
        .await;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        let v = bad.next_json().await;
        match v["op"].as_str() {
            Some("ack") if v["id"] == id && !acked => acked = true,
            Some("message") if v["data"]["round"] == round && !echoed => echoed = true,
            _ => panic!("round {round}: unexpected frame {v}"),
        }
    }
    let m = bystander.next_json().await;
    assert_eq!(m["op"], "message", "round {round}: bystander got {m}");
    assert_eq!(
        m["data"]["round"], round,
        "round {round}: bystander got {m}"
    );
    assert_eq!(m["from"], bad.id.as_str());

    // A fresh subscribe + unsubscribe round trip on the same connection.
    let ch = format!("fresh:r{round}");
    bad.send(json!({"op":"subscribe","channel":ch,"id":id + 100_000}))
        .await;
    let v = bad.next_json().await;
    assert_eq!(v["op"], "subscribed", "round {round}: {v}");
    assert_eq!(v["id"], id + 100_000);
    bad.send(json!({"op":"unsubscribe","channel":ch,"id":id + 200_000}))
        .await;
    let v = bad.next_json().await;
    assert_eq!(v["op"], "unsubscribed", "round {round}: {v}");
    assert_eq!(v["id"], id + 200_000);
}

async fn two_clients(edge: &Edge) -> (Client, Client) {
    let mut bad = connect(edge).await;
    let mut bystander = connect(edge).await;
    bad.subscribe(ROOM).await;
    bystander.subscribe(ROOM).await;
    (bad, bystander)
}

#[tokio::test]
async fn ws_bad_text_frames_get_their_error_codes_and_nothing_breaks() {
    let edge = start(config()).await;
    let (mut bad, mut bystander) = two_clients(&edge).await;
    let long = "x".repeat(256);
    let max_ok = "y".repeat(255);
    let long_epoch = "e".repeat(65);
    // (frame, expected code, expected echoed id)
    let cases: Vec<(String, u16, Option<u64>)> = vec![
        // malformed JSON / not an object
        ("not json".into(), 104, None),
        (r#"{"op":"subscribe","channel":"chat:room","id":5"#.into(), 104, None),
        ("".into(), 104, None),
        ("[1,2,3]".into(), 104, None),
        (r#""subscribe""#.into(), 104, None),
        ("42".into(), 104, None),
        ("null".into(), 104, None),
        // missing fields
        ("{}".into(), 104, None),
        (r#"{"id":7}"#.into(), 104, Some(7)),
        (r#"{"op":"subscribe","id":8}"#.into(), 104, Some(8)),
        (r#"{"op":"unsubscribe","id":9}"#.into(), 104, Some(9)),
        (r#"{"op":"publish","channel":"chat:room","id":10}"#.into(), 104, Some(10)),
        (r#"{"op":"publish","data":1,"id":11}"#.into(), 104, Some(11)),
        (r#"{"op":"history","id":12}"#.into(), 104, Some(12)),
        // unknown op
        (r#"{"op":"fly","id":13}"#.into(), 103, Some(13)),
        (r#"{"op":"","id":14}"#.into(), 103, Some(14)),
        (r#"{"op":"SUBSCRIBE","channel":"chat:room","id":15}"#.into(), 103, Some(15)),
        // wrong types
        (r#"{"op":7,"id":16}"#.into(), 104, Some(16)),
        (r#"{"op":"subscribe","channel":7,"id":17}"#.into(), 104, Some(17)),
        (r#"{"op":"subscribe","channel":["chat:room"],"id":18}"#.into(), 104, Some(18)),
        (r#"{"op":"publish","channel":"chat:room","data":1,"skip_self":"yes","id":19}"#.into(), 104, Some(19)),
        (r#"{"op":"history","channel":"chat:room","limit":-1,"id":20}"#.into(), 104, Some(20)),
        (r#"{"op":"history","channel":"chat:room","limit":"5","id":21}"#.into(), 104, Some(21)),
        (r#"{"op":"subscribe","channel":"chat:x","since":"abc","id":22}"#.into(), 104, Some(22)),
        (r#"{"op":"subscribe","channel":"chat:x","since":{"epoch":"e","offset":-1},"id":23}"#.into(), 104, Some(23)),
        // an id that is not a u64 cannot be echoed
        (r#"{"op":"ping","id":"x"}"#.into(), 104, None),
        (r#"{"op":"ping","id":-3}"#.into(), 104, None),
        // bad channel names
        (r#"{"op":"subscribe","channel":"chat:a room","id":30}"#.into(), 105, Some(30)),
        (format!(r#"{{"op":"subscribe","channel":"{long}","id":31}}"#), 105, Some(31)),
        (r#"{"op":"subscribe","channel":"","id":32}"#.into(), 105, Some(32)),
        (r#"{"op":"subscribe","channel":"a*b","id":33}"#.into(), 105, Some(33)),
        (r#"{"op":"subscribe","channel":"caf\u00e9","id":34}"#.into(), 105, Some(34)),
        (r#"{"op":"subscribe","channel":"a\nb","id":35}"#.into(), 105, Some(35)),
        (r#"{"op":"publish","channel":"a#b,","data":1,"id":36}"#.into(), 105, Some(36)),
        (r#"{"op":"unsubscribe","channel":"a b","id":37}"#.into(), 105, Some(37)),
        (r#"{"op":"presence","channel":"a?b","id":38}"#.into(), 105, Some(38)),
        (r#"{"op":"history","channel":"a b","id":39}"#.into(), 105, Some(39)),
        // bad epochs in `since`
        (r#"{"op":"subscribe","channel":"chat:x","since":{"epoch":"bad epoch!","offset":1},"id":40}"#.into(), 106, Some(40)),
        (r#"{"op":"subscribe","channel":"chat:x","since":{"epoch":"","offset":1},"id":41}"#.into(), 106, Some(41)),
        (format!(r#"{{"op":"subscribe","channel":"chat:x","since":{{"epoch":"{long_epoch}","offset":1}},"id":42}}"#), 106, Some(42)),
        (r#"{"op":"history","channel":"chat:room","since":{"epoch":"a\nb","offset":0},"id":43}"#.into(), 106, Some(43)),
        // history limit too large
        (r#"{"op":"history","channel":"chat:room","limit":100000,"id":50}"#.into(), 104, Some(50)),
        // state errors
        (r#"{"op":"unsubscribe","channel":"chat:never","id":60}"#.into(), 110, Some(60)),
        (r#"{"op":"subscribe","channel":"chat:room","id":61}"#.into(), 109, Some(61)),
    ];
    for (round, (text, code, id)) in cases.iter().enumerate() {
        bad.send_raw(Message::Text(text.clone().into())).await;
        expect_error(&mut bad, text, *code, *id).await;
        assert_alive(&mut bad, &mut bystander, round as u64).await;
    }
    // JSON escapes in a valid channel name are fine (PHP's json_encode writes `\/`).
    bad.send_raw(Message::Text(
        r#"{"op":"subscribe","channel":"esc:a\/b\u0063","id":71}"#.into(),
    ))
    .await;
    let v = bad.next_json().await;
    assert_eq!(
        (v["op"].clone(), v["channel"].clone()),
        (json!("subscribed"), json!("esc:a/bc")),
        "{v}"
    );
    // The longest valid channel name is accepted (the limit is not off by one).
    bad.send(json!({"op":"subscribe","channel":max_ok,"id":70}))
        .await;
    assert_eq!(bad.next_json().await["op"], "subscribed");
    // Each refused request was counted as a client error.
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains(r#"herald_errors_total{code="invalid_channel",source="client"}"#),
        "{metrics}"
    );
    bystander.assert_quiet().await;
}

#[tokio::test]
async fn ws_foreign_epoch_is_not_an_error_but_recovered_false() {
    // A well-formed cursor from another history generation is not bad input: the reply says
    // recovered:false with a fresh position (the only way loss is signalled).
    let edge = start(config()).await;
    let (mut bad, mut bystander) = two_clients(&edge).await;
    api_publish(&edge, "chat:hist", json!(1)).await;
    api_publish(&edge, "chat:hist", json!(2)).await;
    let r = bad
        .request(
            json!({"op":"subscribe","channel":"chat:hist","since":{"epoch":"someoneelse","offset":1}}),
            5,
        )
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    assert_eq!(r["recovered"], false, "{r}");
    assert_eq!(r["offset"], 2, "{r}");
    assert_ne!(r["epoch"], "someoneelse");
    // The server may replay what the current generation holds (up to the reply's offset), in
    // order; anything else before the ping's reply is wrong.
    bad.send(json!({"op":"ping","id":6})).await;
    let mut last = 0;
    loop {
        let v = bad.next_json().await;
        if v["op"] == "pong" && v["id"] == 6 {
            break;
        }
        assert_eq!(
            (v["op"].as_str(), v["channel"].as_str()),
            (Some("message"), Some("chat:hist")),
            "{v}"
        );
        let offset = v["offset"].as_u64().unwrap();
        assert!(offset > last && offset <= 2, "{v}");
        last = offset;
    }
    assert_alive(&mut bad, &mut bystander, 0).await;
}

#[tokio::test]
async fn ws_bad_binary_frames_get_error_frames() {
    let edge = start(config()).await;
    let (mut bad, mut bystander) = two_clients(&edge).await;
    // (frame, code, echoed id)
    let cases: Vec<(Vec<u8>, u16, Option<u64>)> = vec![
        (vec![], 104, None),
        (vec![0], 104, None),
        (vec![0, 0, 0, 0, 0], 104, None),
        (vec![3, b'a', b'b'], 104, None),
        (vec![5, b'c', b'h', b'a', b't', b':', 0, 0], 104, None),
        // the channel is there but invalid; the request id is readable and echoed
        (vec![1, b' ', 0, 0, 0, 7], 105, Some(7)),
        (vec![3, b'a', b'*', b'b', 0, 0, 0, 8, 1, 2, 3], 105, Some(8)),
        (vec![2, 0xff, 0xfe, 0, 0, 0, 9], 105, Some(9)),
        (vec![3, b'a', b' ', b'b', 0, 0, 0, 0], 105, None),
    ];
    for (round, (bytes, code, id)) in cases.iter().enumerate() {
        bad.send_raw(Message::Binary(bytes.clone().into())).await;
        expect_error(&mut bad, &format!("{bytes:?}"), *code, *id).await;
        assert_alive(&mut bad, &mut bystander, round as u64).await;
    }
    // A good binary publish still goes through, acked with its id, delivered as binary.
    bad.send_raw(Message::Binary(
        encode_binary_publish(ROOM, 77, &[0, 1, 2, 255]).into(),
    ))
    .await;
    let mut acked = false;
    let mut got_binary = false;
    while !(acked && got_binary) {
        match bad.next_msg().await {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert!(v["op"] == "ack" && v["id"] == 77, "{v}");
                acked = true;
            }
            Message::Binary(b) => {
                let (ch, _, payload) =
                    herald_protocol::binary::parse_binary_delivery(&b).expect("delivery");
                assert_eq!((ch, payload), (ROOM, &[0u8, 1, 2, 255][..]));
                got_binary = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    match bystander.next_msg().await {
        Message::Binary(b) => {
            let (ch, _, payload) = herald_protocol::binary::parse_binary_delivery(&b).unwrap();
            assert_eq!((ch, payload), (ROOM, &[0u8, 1, 2, 255][..]));
        }
        other => panic!("bystander got {other:?}"),
    }
}

#[tokio::test]
async fn ws_invalid_utf8_text_closes_with_1007_and_others_are_unaffected() {
    let edge = start(config()).await;
    let (mut bad, mut bystander) = two_clients(&edge).await;
    // tungstenite will not build a Text message from invalid bytes, but it sends a raw frame
    // as given (masked, since it is the client).
    let frame = Frame::message(
        vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
        OpCode::Data(OpData::Text),
        true,
    );
    bad.ws.send(Message::Frame(frame)).await.expect("send raw");
    assert_eq!(bad.closed_with().await, Some(1007));
    // The node and the other subscriber carry on.
    let mut other = connect(&edge).await;
    other.publish(ROOM, json!({"after": "utf8"})).await;
    let m = bystander.next_op("message").await;
    assert_eq!(m["data"]["after"], "utf8");
    assert_eq!(
        m["offset"], 1,
        "the bad frame must not have published anything"
    );
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains(r#"herald_disconnects_total{code="1007"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn node_survives_a_burst_of_garbage_while_others_keep_receiving() {
    let edge = start(config()).await;
    let bad = connect(&edge).await;
    let mut bystander = connect(&edge).await;
    bystander.subscribe(ROOM).await;
    let (mut sink, mut stream) = bad.ws.split();
    const N: usize = 1000;
    // Read the bad client's replies concurrently so its socket never backs up.
    let reader = tokio::spawn(async move {
        let mut errors = 0;
        while errors < N {
            let m = tokio::time::timeout(WAIT, stream.next())
                .await
                .expect("error frames keep coming")
                .expect("stream open")
                .expect("frame ok");
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["op"], "error", "{v}");
                errors += 1;
            }
        }
        stream
    });
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let m = match i % 5 {
                0 => Message::Text(format!("garbage {i} {{[").into()),
                1 => Message::Text(format!(r#"{{"op":"nope{i}","id":{i}}}"#).into()),
                2 => Message::Binary(vec![(i % 256) as u8; i % 7].into()),
                3 => Message::Text(
                    format!(r#"{{"op":"subscribe","channel":"bad chan {i}"}}"#).into(),
                ),
                _ => Message::Text(r#"{"op":"publish","channel":"chat:room"}"#.into()),
            };
            sink.send(m).await.expect("send garbage");
        }
        sink
    });
    // Meanwhile the bystander gets every message published to the room, in order.
    let mut publisher = connect(&edge).await;
    for n in 1..=50u64 {
        publisher.publish(ROOM, json!({"n": n})).await;
    }
    for n in 1..=50u64 {
        let m = bystander.next_json().await;
        assert_eq!(m["op"], "message", "{m}");
        assert_eq!(m["data"]["n"], n, "{m}");
        assert_eq!(m["offset"], n);
    }
    let stream = reader
        .await
        .expect("every garbage frame answered with an error");
    let sink = writer.await.unwrap();
    let mut bad = Client {
        ws: sink.reunite(stream).unwrap(),
        id: String::new(),
        node: String::new(),
    };
    // The garbage-sending connection itself still works.
    bad.subscribe("chat:after").await;
    bad.publish("chat:after", json!("ok")).await;
    let m = bad.next_op("message").await;
    assert_eq!(m["data"], "ok");
    bystander.assert_quiet().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP

async fn http_error(resp: reqwest::Response, status: u16, code: u16, what: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "{what}");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/json"), "{what}");
    let body: Value = resp.json().await.expect("JSON error body");
    let e = &body["error"];
    assert_eq!(e["code"], code, "{what}: {body}");
    assert!(
        e["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{what}: {body}"
    );
    assert!(
        e["message"].as_str().is_some_and(|n| !n.is_empty()),
        "{what}: {body}"
    );
    body
}

#[tokio::test]
async fn http_publish_rejects_bad_requests_with_json_errors() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    let edge = start(cfg).await;
    let mut sub = connect(&edge).await;
    sub.subscribe(ROOM).await;
    let base = http(&edge);
    let c = reqwest::Client::new();
    let good = json!({"channel": ROOM, "data": 1}).to_string();
    let big_data = json!({"channel": ROOM, "data": "z".repeat(2000)}).to_string();
    let huge_body = json!({"channel": ROOM, "data": "z".repeat(20_000)}).to_string();
    for path in ["/publish", "/api/publish"] {
        let url = format!("{base}{path}");
        let post = |ct: Option<&str>, body: String| {
            let mut r = c.post(&url).body(body);
            if let Some(ct) = ct {
                r = r.header("content-type", ct);
            }
            r.send()
        };
        let json_ct = Some("application/json");
        // wrong or missing content type
        let r = post(Some("text/plain"), good.clone()).await.unwrap();
        http_error(r, 415, 104, "text/plain").await;
        let r = post(None, good.clone()).await.unwrap();
        http_error(r, 415, 104, "no content type").await;
        let r = post(
            Some("application/x-www-form-urlencoded"),
            "channel=a".into(),
        )
        .await
        .unwrap();
        http_error(r, 415, 104, "form").await;
        // malformed JSON, not an object, missing fields, wrong types
        for (body, code, what) in [
            ("{not json", 104, "malformed"),
            ("", 104, "empty"),
            ("[1,2]", 104, "array"),
            ("\"x\"", 104, "string"),
            ("{}", 104, "empty object"),
            (r#"{"channel":"chat:room"}"#, 104, "missing data"),
            (r#"{"data":1}"#, 104, "missing channel"),
            (r#"{"channel":5,"data":1}"#, 104, "channel not a string"),
            (r#"{"channel":"a b","data":1}"#, 105, "bad channel"),
            (r#"{"channel":"","data":1}"#, 105, "empty channel"),
            (r#"{"channel":"a*b","data":1}"#, 105, "bad char"),
        ] {
            let r = post(json_ct, body.into()).await.unwrap();
            http_error(r, 400, code, &format!("{path} {what}")).await;
        }
        let long = json!({"channel": "x".repeat(256), "data": 1}).to_string();
        http_error(post(json_ct, long).await.unwrap(), 400, 105, "long channel").await;
        // over the size limit: data over it, and a body far over it
        let r = post(json_ct, big_data.clone()).await.unwrap();
        http_error(r, 413, 107, "data over the limit").await;
        let r = post(json_ct, huge_body.clone()).await.unwrap();
        http_error(r, 413, 107, "body over the limit").await;
        // wrong method
        let r = c.get(&url).send().await.unwrap();
        http_error(r, 405, 104, "GET").await;
        let r = c.put(&url).body(good.clone()).send().await.unwrap();
        http_error(r, 405, 104, "PUT").await;
    }
    for (method, path) in [
        (reqwest::Method::GET, "/nope"),
        (reqwest::Method::POST, "/api/nope"),
        (reqwest::Method::GET, "/ws/extra"),
    ] {
        let r = c
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        http_error(r, 404, 104, path).await;
    }
    for (method, path) in [
        (reqwest::Method::POST, "/sse"),
        (reqwest::Method::DELETE, "/poll"),
        (reqwest::Method::POST, "/healthz"),
        (reqwest::Method::DELETE, "/api/info"),
    ] {
        let r = c
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        http_error(r, 405, 104, path).await;
    }
    // Nothing above published anything; a good publish is offset 1 and the only delivery.
    sub.assert_quiet().await;
    let r = c
        .post(format!("{base}/publish"))
        .header("content-type", "application/json; charset=utf-8")
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["offset"], 1, "{body}");
    let m = sub.next_op("message").await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(1), json!(1))
    );
    sub.assert_quiet().await;
}

#[tokio::test]
async fn sse_and_poll_reject_bad_channels_and_cursors() {
    let edge = start(config()).await;
    let base = http(&edge);
    let c = reqwest::Client::new();
    // A cursor this server made, to prove good ones still work afterwards.
    api_publish(&edge, "chat:a", json!("before")).await;
    let first = poll(&edge, "channel=chat:a&timeout=0").await;
    let good_cursor = first["cursor"].as_str().unwrap().to_owned();
    let foreign_version = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v9\nchat:a e1 1\n")
    };
    let bad_line = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("h1\nchat:a\n")
    };
    let too_long = "A".repeat(20_000);
    for path in ["/sse", "/poll"] {
        let get = |q: &str| c.get(format!("{base}{path}?{q}")).send();
        // no channel / bad channel
        for (q, code) in [
            ("", 104),
            ("channel=", 104),
            ("channel=a%20b", 105),
            ("channel=a*b", 105),
            ("channel=chat:a&channel=bad%0Aname", 105),
        ] {
            http_error(get(q).await.unwrap(), 400, code, &format!("{path}?{q}")).await;
        }
        let long = format!("channel={}", "x".repeat(256));
        http_error(get(&long).await.unwrap(), 400, 105, "long channel").await;
        // bad or foreign cursors, as since= and cursor=
        for key in ["since", "cursor"] {
            for cur in [
                "garbage!!",
                "0-0",
                "%00%01",
                "eyJvZmZzZXQiOjF9", // base64 of {"offset":1}: another system's cursor
                foreign_version.as_str(),
                bad_line.as_str(),
                too_long.as_str(),
            ] {
                let q = format!("channel=chat:a&{key}={cur}");
                let what = format!("{path}?{}", &q[..q.len().min(60)]);
                http_error(get(&q).await.unwrap(), 400, 106, &what).await;
            }
        }
    }
    // Last-Event-ID garbage (SSE resume header): text garbage and non-text bytes.
    for v in [
        reqwest::header::HeaderValue::from_static("garbage!!"),
        reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        reqwest::header::HeaderValue::from_str(&foreign_version).unwrap(),
    ] {
        let r = c
            .get(format!("{base}/sse?channel=chat:a"))
            .header("last-event-id", v)
            .send()
            .await
            .unwrap();
        http_error(r, 400, 106, "Last-Event-ID").await;
    }
    // Poll timeouts: not a number, negative, fractional, over the maximum.
    for t in ["abc", "-1", "1.5", "61", "99999999999999999999999"] {
        let r = c
            .get(format!("{base}/poll?channel=chat:a&timeout={t}"))
            .send()
            .await
            .unwrap();
        http_error(r, 400, 104, &format!("timeout={t}")).await;
    }
    // No refused request leaked a connection slot.
    for t in ["ws", "sse", "poll", "longpoll"] {
        assert_eq!(
            edge.node.metrics.connections.with_label_values(&[t]).get(),
            0,
            "{t} connections leaked"
        );
    }
    // Good cursors still work on both.
    api_publish(&edge, "chat:a", json!("hello")).await;
    let r = poll(
        &edge,
        &format!("channel=chat:a&cursor={good_cursor}&timeout=0"),
    )
    .await;
    assert_eq!(r["messages"][0]["data"], "hello", "{r}");
    assert_eq!(r["recovered"], true);
    let mut s = common::sse(&edge, "channel=chat:a", Some(&good_cursor)).await;
    assert_eq!(s.next_message().await.json()["data"], "hello");
}

#[tokio::test]
async fn api_key_guards_api_only() {
    let mut cfg = config();
    cfg.api_key = Some("s3cret-key".into());
    let edge = start(cfg).await;
    let base = http(&edge);
    let c = reqwest::Client::new();
    let body = json!({"channel": ROOM, "data": {"k": 1}});
    let publish_with = |auth: Option<&str>| {
        let mut r = c.post(format!("{base}/api/publish")).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    for (auth, what) in [
        (None, "no key"),
        (Some("apikey wrong"), "wrong key"),
        (Some("apikey s3cret-ke"), "prefix of the key"),
        (Some("apikey s3cret-keyy"), "longer key"),
        (Some("Bearer s3cret-key"), "wrong scheme"),
        (Some("s3cret-key"), "no scheme"),
        (Some("apikey "), "empty key"),
    ] {
        http_error(publish_with(auth).await.unwrap(), 401, 101, what).await;
    }
    for path in [
        "/api/info",
        "/api/history/chat:room",
        "/api/presence/chat:room",
    ] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        http_error(r, 401, 101, path).await;
        let r = c
            .get(format!("{base}{path}"))
            .header("authorization", "apikey s3cret-key")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the key");
    }
    // Refused API publishes published nothing: the first accepted one is offset 1.
    let r = publish_with(Some("apikey s3cret-key")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["offset"], 1);
    // Client endpoints need no key.
    let r = c
        .post(format!("{base}/publish"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["offset"], 2);
    for path in ["/healthz", "/readyz"] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = poll(&edge, "channel=chat:room&timeout=0").await;
    assert!(r["cursor"].is_string());
    let mut ws = connect(&edge).await;
    ws.subscribe(ROOM).await;
}
