//! `GET /connection/websocket`: Centrifugo's client protocol v2 (JSON) on the raw wire —
//! batching, the `{}` heartbeat, bad frames, unknown methods, the per-frame command cap,
//! `rpc`, codes. The SDK-level tests (centrifuge-python) are in `tests-centrifugo/`.

mod common;

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// A raw Centrifugo connection.
struct Cf {
    ws: Ws,
}

impl Cf {
    async fn open(edge: &herald_edge::Edge) -> Cf {
        let url = format!("ws://{}/connection/websocket", edge.addr);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        Cf { ws }
    }

    /// Opens and connects (anonymous); returns the connect result.
    async fn connected(edge: &herald_edge::Edge) -> (Cf, Value) {
        let mut c = Cf::open(edge).await;
        c.send(&[json!({"id":1,"connect":{"name":"test"}})]).await;
        let r = c.frame().await;
        assert_eq!(r[0]["id"], 1, "{r:?}");
        (c, r[0]["connect"].clone())
    }

    /// Sends `commands` as one frame, newline-separated.
    async fn send(&mut self, commands: &[Value]) {
        let text: Vec<String> = commands.iter().map(Value::to_string).collect();
        self.send_text(&text.join("\n")).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// The lines of the next text frame.
    async fn frame(&mut self) -> Vec<Value> {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame ok");
            match m {
                Message::Text(t) => {
                    return t
                        .split('\n')
                        .map(|l| serde_json::from_str(l).expect("json line"))
                        .collect()
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// The next reply with this id, skipping pushes.
    async fn reply(&mut self, id: u64) -> Value {
        loop {
            for v in self.frame().await {
                if v["id"] == id {
                    return v;
                }
            }
        }
    }

    /// The close frame's code and reason (lines before it skipped).
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close in time");
            match m {
                Some(Ok(Message::Close(Some(f)))) => return (f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    panic!("closed without a code")
                }
                Some(Ok(_)) => continue,
            }
        }
    }
}

#[tokio::test]
async fn connect_subscribe_publish_and_receive_with_batched_commands_and_replies() {
    let edge = start(config()).await;
    let mut c = Cf::open(&edge).await;
    // connect, subscribe and publish in one frame: the replies come in command order.
    c.send(&[
        json!({"id":1,"connect":{"name":"raw","version":"1"}}),
        json!({"id":2,"subscribe":{"channel":"chat:a"}}),
        json!({"id":3,"publish":{"channel":"chat:a","data":{"text":"hi"}}}),
    ])
    .await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.extend(c.frame().await);
    }
    assert_eq!(seen[0]["id"], 1, "{seen:?}");
    let connect = &seen[0]["connect"];
    assert!(connect["client"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(connect["ping"], 25);
    assert_eq!(connect["pong"], true);
    assert_eq!(connect["node"], "test");
    let subscribe = seen.iter().find(|v| v["id"] == 2).expect("subscribe reply");
    assert_eq!(subscribe["subscribe"]["positioned"], true);
    assert!(seen
        .iter()
        .any(|v| v["id"] == 3 && v["publish"] == json!({})));
    let push = seen
        .iter()
        .find(|v| v.get("push").is_some())
        .expect("pub push");
    assert_eq!(push["push"]["channel"], "chat:a");
    assert_eq!(push["push"]["pub"]["data"], json!({"text":"hi"}));
    assert_eq!(push["push"]["pub"]["offset"], 1);
    assert_eq!(push["push"]["pub"]["info"]["client"], connect["client"]);
    // Replies to one frame of commands are one frame.
    c.send(&[
        json!({"id":4,"presence":{"channel":"chat:a"}}),
        json!({"id":5,"presence_stats":{"channel":"chat:a"}}),
        json!({"id":6,"history":{"channel":"chat:a","limit":10}}),
        json!({"id":7,"ping":{}}),
    ])
    .await;
    let f = c.frame().await;
    assert_eq!(f.len(), 4, "{f:?}");
    assert!(f[0]["presence"]["presence"][connect["client"].as_str().unwrap()].is_object());
    assert_eq!(
        f[1]["presence_stats"],
        json!({"num_clients":1,"num_users":1})
    );
    assert_eq!(f[2]["history"]["publications"][0]["data"]["text"], "hi");
    assert_eq!(f[2]["history"]["offset"], 1);
    assert_eq!(f[3], json!({"id":7,"ping":{}}));
}

#[tokio::test]
async fn the_server_pings_with_an_empty_object_and_closes_3012_without_a_pong() {
    let mut cfg = config();
    cfg.limits.ping_interval_secs = 1;
    cfg.limits.ping_timeout_secs = 1;
    let edge = start(cfg).await;
    let (mut c, connect) = Cf::connected(&edge).await;
    assert_eq!(connect["ping"], 1);
    // Answered pings keep the connection: three in a row.
    for _ in 0..3 {
        assert_eq!(c.frame().await, vec![json!({})]);
        c.send_text("{}").await;
    }
    c.send(&[json!({"id":2,"ping":{}})]).await;
    assert_eq!(c.reply(2).await["ping"], json!({}));
    // An unanswered ping: disconnect 3012 "no pong".
    assert_eq!(c.frame().await, vec![json!({})]);
    let (code, reason) = c.closed().await;
    assert_eq!((code, reason.as_str()), (3012, "no pong"));
}

#[tokio::test]
async fn a_frame_that_is_not_a_command_disconnects_3501() {
    let edge = start(config()).await;
    for bad in ["not json", "[1,2]", "{\"subscribe\":{\"channel\":\"a\"}}"] {
        let (mut c, _) = Cf::connected(&edge).await;
        c.send_text(bad).await;
        let (code, reason) = c.closed().await;
        assert_eq!((code, reason.as_str()), (3501, "bad request"), "{bad}");
    }
    // Before `connect` only `connect` is accepted.
    let mut c = Cf::open(&edge).await;
    c.send(&[json!({"id":1,"subscribe":{"channel":"a"}})]).await;
    assert_eq!(c.closed().await.0, 3501);
    // Binary frames would be protobuf: not spoken here.
    let (mut c, _) = Cf::connected(&edge).await;
    c.ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(c.closed().await.0, 3501);
    // The edge still serves.
    let (_c, connect) = Cf::connected(&edge).await;
    assert!(connect["client"].is_string());
}

#[tokio::test]
async fn bad_commands_get_centrifugo_errors_and_the_connection_stays() {
    let edge = start(config()).await;
    let (mut c, _) = Cf::connected(&edge).await;
    c.send(&[
        json!({"id":2,"frobnicate":{"x":1}}),
        json!({"id":3,"rpc":{"method":"sum","data":{}}}),
        json!({"id":4,"subscribe":{"channel":"bad channel!"}}),
        json!({"id":5,"publish":{"channel":"a"}}),
        json!({"id":6,"subscribe":{"channel":"a"}}),
        json!({"id":7,"subscribe":{"channel":"a"}}),
        json!({"id":8,"send":{"data":{}}}),
        json!({"id":9,"connect":{}}),
        json!({"id":10,"unsubscribe":{"channel":"never"}}),
        json!({"id":11,"history":{"channel":"a","since":{"epoch":"nosuch","offset":3},"limit":5}}),
    ])
    .await;
    let mut replies = Vec::new();
    while replies.len() < 10 {
        replies.extend(c.frame().await);
    }
    let code = |id: u64| {
        let r = replies.iter().find(|r| r["id"] == id).expect("reply");
        r["error"]["code"].as_u64()
    };
    assert_eq!(code(2), Some(104), "unknown method: method not found");
    assert_eq!(code(3), Some(108), "rpc: not available");
    let rpc = replies.iter().find(|r| r["id"] == 3).unwrap();
    assert!(rpc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not available"));
    assert_eq!(code(4), Some(107));
    assert_eq!(code(5), Some(107));
    assert_eq!(code(6), None);
    assert_eq!(code(7), Some(105), "already subscribed");
    assert_eq!(code(8), Some(108));
    assert_eq!(code(9), Some(107));
    assert_eq!(code(10), None, "unsubscribe is idempotent");
    assert_eq!(code(11), Some(112), "unrecoverable position");
    c.send(&[json!({"id":12,"ping":{}})]).await;
    assert_eq!(c.reply(12).await["ping"], json!({}));
}

#[tokio::test]
async fn commands_per_frame_are_capped_and_each_counts_against_the_command_rate() {
    let mut cfg = config();
    cfg.limits.max_commands_per_frame = 8;
    cfg.limits.command_rate = 5; // bursts of 10
    cfg.limits.rate_close_after = 60;
    let edge = start(cfg).await;
    let (mut c, _) = Cf::connected(&edge).await;
    // 8 commands: allowed; 9: disconnect 3501.
    let batch: Vec<Value> = (10..18).map(|id| json!({"id":id,"ping":{}})).collect();
    c.send(&batch).await;
    let f = c.frame().await;
    assert_eq!(f.len(), 8);
    assert!(f.iter().all(|r| r["ping"] == json!({})), "{f:?}");
    // The bucket (10) is almost empty: of the next 8, some are refused with 111.
    let batch: Vec<Value> = (20..28).map(|id| json!({"id":id,"ping":{}})).collect();
    c.send(&batch).await;
    let f = c.frame().await;
    assert_eq!(f.len(), 8);
    let refused: Vec<&Value> = f.iter().filter(|r| r["error"]["code"] == 111).collect();
    assert!(refused.len() >= 5, "{f:?}");
    assert_eq!(refused[0]["error"]["temporary"], true);
    let batch: Vec<Value> = (30..39).map(|id| json!({"id":id,"ping":{}})).collect();
    c.send(&batch).await;
    let (code, _) = c.closed().await;
    assert_eq!(code, 3501);
    let m = &edge.node.metrics;
    let capped = m
        .limit_rejections
        .with_label_values(&["max_commands_per_frame"]);
    assert_eq!(capped.get(), 1);
    let rate = m.limit_rejections.with_label_values(&["command_rate"]);
    assert!(rate.get() >= 5);
}

#[tokio::test]
async fn a_frame_over_max_message_size_closes_1009() {
    let mut cfg = config();
    cfg.limits.max_message_size = 1024;
    cfg.limits.max_reply_bytes = 1024 * 1024;
    let edge = start(cfg).await;
    let (mut c, _) = Cf::connected(&edge).await;
    let big = "x".repeat(2000);
    c.send(&[json!({"id":2,"publish":{"channel":"a","data":big}})])
        .await;
    assert_eq!(c.closed().await.0, 1009);
}

#[tokio::test]
async fn join_leave_pushes_and_recovery_by_offset() {
    let mut cfg = config();
    cfg.namespaces.insert(
        "room".into(),
        herald_edge::config::NamespaceConfig {
            presence: true,
            join_leave: true,
            history_size: 100,
            history_ttl_secs: 300,
            ..Default::default()
        },
    );
    let edge = start(cfg).await;
    let (mut a, _) = Cf::connected(&edge).await;
    a.send(&[json!({"id":2,"subscribe":{"channel":"room:1"}})])
        .await;
    let sub = a.reply(2).await;
    assert_eq!(sub["subscribe"]["recoverable"], true);
    let (mut b, b_connect) = Cf::connected(&edge).await;
    b.send(&[json!({"id":2,"subscribe":{"channel":"room:1"}})])
        .await;
    b.reply(2).await;
    let b_client = b_connect["client"].as_str().unwrap();
    let join = loop {
        let f = a.frame().await;
        if let Some(j) = f
            .into_iter()
            .find(|v| v["push"]["join"]["info"]["client"] == b_client)
        {
            break j;
        }
    };
    assert_eq!(join["push"]["channel"], "room:1");
    for i in 1..=3 {
        b.send(&[json!({"id":10+i,"publish":{"channel":"room:1","data":i}})])
            .await;
        b.reply(10 + i).await;
    }
    drop(b);
    loop {
        let f = a.frame().await;
        if f.iter()
            .any(|v| v["push"]["leave"]["info"]["client"] == b_client)
        {
            break;
        }
    }
    // A new connection recovers after offset 1 of the epoch the first subscribe gave.
    let (mut c, _) = Cf::connected(&edge).await;
    let epoch = sub["subscribe"]["epoch"].as_str().unwrap();
    c.send(&[
        json!({"id":2,"subscribe":{"channel":"room:1","recover":true,"epoch":epoch,"offset":1}}),
    ])
    .await;
    let r = c.reply(2).await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(r["subscribe"]["was_recovering"], true);
    let offsets: Vec<u64> = r["subscribe"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![2, 3]);
    assert_eq!(r["subscribe"]["offset"], 3);
    // History: newest first, before offset 3.
    c.send(&[json!({"id":3,"history":{"channel":"room:1","limit":5,"reverse":true,"since":{"epoch":r["subscribe"]["epoch"],"offset":3}}})])
        .await;
    let h = c.reply(3).await;
    let data: Vec<&Value> = h["history"]["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"])
        .collect();
    assert_eq!(data, vec![&json!(2), &json!(1)]);
}

const SECRET: &str = "centrifugo-test-secret-0123456789";

fn sign(claims: Value) -> String {
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    encode(&Header::default(), &claims, &key).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn tokens_expiry_server_side_subscriptions_and_their_recovery() {
    let mut cfg = config();
    cfg.auth.hmac_secret = Some(SECRET.into());
    cfg.auth.auth_timeout_secs = 2;
    let edge = start(cfg).await;
    // An expired token: error 109 on the open socket, then a good one connects.
    let mut c = Cf::open(&edge).await;
    let expired = sign(json!({"sub":"ann","exp": now() - 600}));
    c.send(&[json!({"id":1,"connect":{"token":expired}})]).await;
    let r = c.reply(1).await;
    assert_eq!(r["error"]["code"], 109, "{r}");
    let exp = now() + 600;
    let good = sign(json!({"sub":"ann","exp": exp, "channels":["news"]}));
    c.send(&[json!({"id":2,"connect":{"token":good}})]).await;
    let r = c.reply(2).await;
    let connect = &r["connect"];
    assert_eq!(connect["expires"], true, "{r}");
    let ttl = connect["ttl"].as_u64().unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
    // The `channels` claim: a server-side subscription in the connect result.
    assert_eq!(connect["subs"]["news"]["offset"], 0, "{r}");
    assert_eq!(
        edge.node
            .metrics
            .connections
            .with_label_values(&["centrifugo"])
            .get(),
        1
    );
    c.send(&[
        json!({"id":3,"publish":{"channel":"news","data":"a"}}),
        json!({"id":4,"publish":{"channel":"news","data":"b"}}),
    ])
    .await;
    let mut pubs = 0;
    while pubs < 2 {
        pubs += c
            .frame()
            .await
            .iter()
            .filter(|v| v["push"]["channel"] == "news")
            .count();
    }
    // Refresh answers with the new ttl.
    let later = sign(json!({"sub":"ann","exp": now() + 1200}));
    c.send(&[json!({"id":5,"refresh":{"token":later}})]).await;
    let r = c.reply(5).await;
    assert!(r["refresh"]["ttl"].as_u64().unwrap() > 1100, "{r}");
    drop(c);
    // Reconnect recovering `news` after offset 1 (the SDK's empty epoch of a fresh channel).
    let mut c = Cf::open(&edge).await;
    c.send(&[json!({"id":1,"connect":{"token":good,"subs":{"news":{"recover":true,"epoch":"","offset":1}}}})])
        .await;
    let r = c.reply(1).await;
    let news = &r["connect"]["subs"]["news"];
    assert_eq!(news["recovered"], true, "{r}");
    assert_eq!(news["publications"][0]["data"], "b", "{r}");
    assert_eq!(news["publications"].as_array().unwrap().len(), 1);
    // A forged token: disconnect 3500 (no reconnect).
    let mut c = Cf::open(&edge).await;
    c.send(&[json!({"id":1,"connect":{"token":"not.a.jwt"}})])
        .await;
    assert_eq!(c.closed().await, (3500, "invalid token".to_owned()));
    // No connect in time: 3500 as well.
    let mut c = Cf::open(&edge).await;
    assert_eq!(c.closed().await.0, 3500);
}

#[tokio::test]
async fn an_unrefreshed_token_ends_with_3005_and_a_drain_with_3001() {
    let mut cfg = config();
    cfg.auth.hmac_secret = Some(SECRET.into());
    cfg.auth.leeway_secs = 0;
    let edge = start(cfg).await;
    let mut c = Cf::open(&edge).await;
    let short = sign(json!({"sub":"bo","exp": now() + 1}));
    c.send(&[json!({"id":1,"connect":{"token":short}})]).await;
    assert_eq!(c.reply(1).await["connect"]["expires"], true);
    // No refresh: the SDK reconnects (3005 is below 3500) and gets 109, then a fresh token.
    let (code, reason) = c.closed().await;
    assert_eq!((code, reason.as_str()), (3005, "connection expired"));

    let mut d = Cf::open(&edge).await;
    let long = sign(json!({"sub":"bo","exp": now() + 600}));
    d.send(&[json!({"id":1,"connect":{"token":long}})]).await;
    d.reply(1).await;
    edge.shutdown().await;
    // The disconnect push, then the close frame with the same code.
    let push = d.frame().await;
    assert_eq!(
        push[0]["push"]["disconnect"],
        json!({"code":3001,"reason":"shutdown","reconnect":true})
    );
    assert_eq!(d.closed().await, (3001, "shutdown".to_owned()));
}
