//! Identity and permissions end to end, with real HS256 tokens over real sockets: every
//! transport refuses a missing, forged, mis-addressed or expired token with the documented
//! code and accepts a valid one from each carrier; identity flows into welcome, presence,
//! join/leave and messages; namespace rules, channel tokens and user-limited channels hold;
//! `POST /publish` cannot act as another user's connection; a session ends with 4010 at `exp`
//! unless refreshed.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use herald_edge::config::{NamespaceConfig, PublishRule, SubscribeRule};
use herald_edge::{Edge, EdgeConfig};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "test-secret-0123456789-abcdefghij";
const AUDIENCE: &str = "herald-tests";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `claims` with `secret` (HS256).
fn sign_with(secret: &str, claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A valid connection token of `user` for an hour.
fn token(user: &str) -> String {
    sign_with(
        SECRET,
        json!({"sub": user, "aud": AUDIENCE, "exp": now() + 3600}),
    )
}

fn token_with(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("aud").is_none() {
        claims["aud"] = json!(AUDIENCE);
    }
    sign_with(SECRET, claims)
}

fn auth_config() -> EdgeConfig {
    let mut c = config();
    c.auth.hmac_secret = Some(SECRET.into());
    c.auth.audience = Some(AUDIENCE.into());
    c.auth.auth_timeout_secs = 1;
    let ns = |subscribe, publish| NamespaceConfig {
        subscribe,
        publish,
        join_leave: true,
        ..Default::default()
    };
    c.namespaces.insert(
        "open".into(),
        ns(Some(SubscribeRule::Anyone), Some(PublishRule::Anyone)),
    );
    c.namespaces.insert(
        "private".into(),
        ns(Some(SubscribeRule::Token), Some(PublishRule::Subscriber)),
    );
    c.namespaces.insert(
        "users".into(),
        ns(Some(SubscribeRule::User), Some(PublishRule::User)),
    );
    c.namespaces.insert(
        "dm".into(),
        ns(Some(SubscribeRule::None), Some(PublishRule::Anyone)),
    );
    c
}

async fn edge() -> Edge {
    start(auth_config()).await
}

/// A WebSocket with extra request headers; reads the welcome (or returns the close code).
async fn ws_with(
    edge: &Edge,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, Value), Option<u16>> {
    let mut req = format!("ws://{}/ws?{query}", edge.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        req.headers_mut()
            .insert(name, v.parse().expect("header value"));
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("handshake");
    let mut c = Client {
        ws,
        id: String::new(),
        node: String::new(),
    };
    match tokio::time::timeout(WAIT, c.ws.next())
        .await
        .expect("a first frame in time")
    {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["op"], "welcome", "{v}");
            c.id = v["client"].as_str().unwrap().to_owned();
            c.node = v["node"].as_str().unwrap().to_owned();
            Ok((c, v))
        }
        Some(Ok(Message::Close(f))) => Err(f.map(|f| u16::from(f.code))),
        other => panic!("unexpected first frame {other:?}"),
    }
}

async fn ws_user(edge: &Edge, user: &str) -> Client {
    ws_with(edge, &format!("token={}", token(user)), &[])
        .await
        .expect("welcome")
        .0
}

async fn get(edge: &Edge, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{}/{path}", http(edge)))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn every_transport_refuses_bad_tokens_with_the_documented_codes() {
    let edge = edge().await;
    let expired = token_with(json!({"sub": "ann", "exp": now() - 600}));
    let forged = sign_with(
        "another-secret-0123456789-abcdefgh",
        json!({"sub": "ann", "aud": AUDIENCE, "exp": now() + 60}),
    );
    let wrong_aud = sign_with(
        SECRET,
        json!({"sub": "ann", "aud": "someone-else", "exp": now() + 60}),
    );
    // (token query, WebSocket close code, HTTP status, error name)
    let cases = [
        (forged.as_str(), 4501, 401, "unauthorized"),
        (wrong_aud.as_str(), 4501, 401, "unauthorized"),
        ("not-a-jwt", 4501, 401, "unauthorized"),
        (expired.as_str(), 4010, 401, "token_expired"),
    ];
    for (tok, close, status, name) in cases {
        let refused = ws_with(&edge, &format!("token={tok}"), &[]).await;
        assert_eq!(refused.err(), Some(Some(close)), "ws {name}");
        for path in [
            format!("sse?channel=open:a&token={tok}"),
            format!("poll?channel=open:a&timeout=0&token={tok}"),
        ] {
            let (s, body) = get(&edge, &path).await;
            assert_eq!(s, status, "{path}");
            assert_eq!(body["error"]["name"], name, "{path}: {body}");
        }
    }
    // No token at all with anonymous access off (the default once a key is configured).
    for path in ["sse?channel=open:a", "poll?channel=open:a&timeout=0"] {
        let (s, body) = get(&edge, path).await;
        assert_eq!((s, &body["error"]["name"]), (401, &json!("unauthorized")));
    }
    // A WebSocket without a token waits for `connect`; sending nothing ends in 4501.
    let mut raw = connect_raw(&edge).await;
    assert_eq!(raw.closed_with().await, Some(4501));
    // Nothing leaked: every refused connection released its slot.
    let node = edge.node.clone();
    wait_until("slots released", || node.connection_count() == 0).await;
    let metrics = edge.node.metrics.render();
    for result in ["invalid", "expired", "missing"] {
        assert!(
            metrics.contains(&format!("herald_auth_total{{result=\"{result}\"}}")),
            "{result}"
        );
    }
}

#[tokio::test]
async fn a_valid_token_is_read_from_every_carrier_and_names_the_user() {
    let edge = edge().await;
    let tok = token("ann");
    // Query, Authorization header, cookie, and the `connect` first frame.
    let (_, w) = ws_with(&edge, &format!("token={tok}"), &[]).await.unwrap();
    assert_eq!(w["user"], "ann");
    let bearer = format!("Bearer {tok}");
    let (_, w) = ws_with(&edge, "", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(w["user"], "ann");
    let cookie = format!("herald_token={tok}");
    let (_, w) = ws_with(&edge, "", &[("cookie", &cookie)]).await.unwrap();
    assert_eq!(w["user"], "ann");
    let mut raw = connect_raw(&edge).await;
    raw.send(json!({"op":"connect","token": tok})).await;
    let w = raw.next_json().await;
    assert_eq!((&w["op"], &w["user"]), (&json!("welcome"), &json!("ann")));
    // SSE and polls, by query, header and cookie.
    let r = reqwest::Client::new()
        .get(format!("{}/sse?channel=open:a", http(&edge)))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut s = sse(&edge, &format!("channel=open:a&token={tok}"), None).await;
    assert_eq!(s.next_named("welcome").await.json()["user"], "ann");
    let r = reqwest::Client::new()
        .get(format!("{}/poll?channel=open:a&timeout=0", http(&edge)))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // With a token, `user` cannot be chosen by the client.
    let (s, _) = get(&edge, &format!("sse?channel=open:a&token={tok}&user=bob")).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn identity_reaches_presence_join_leave_and_messages_and_cannot_be_forged() {
    let edge = edge().await;
    let info_token = token_with(json!({"sub": "ann", "exp": now() + 3600,
        "info": {"name": "Ann"}}));
    let mut bob = ws_user(&edge, "bob").await;
    bob.subscribe("users:room").await;
    let (mut ann, _) = ws_with(&edge, &format!("token={info_token}"), &[])
        .await
        .unwrap();
    ann.subscribe("users:room").await;
    // Bob first hears his own join, then Ann's, with what her token says about her.
    let join = loop {
        let join = bob.next_op("join").await;
        if join["user"] == "ann" {
            break join;
        }
    };
    assert_eq!(join["info"], json!({"name": "Ann"}));
    let r = ann
        .request(json!({"op":"presence","channel":"users:room"}), 5)
        .await;
    let users: Vec<&str> = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user"].as_str().unwrap())
        .collect();
    assert!(users.contains(&"ann") && users.contains(&"bob"), "{r}");
    // Messages carry the server-set `from` and `user`.
    ann.publish("users:room", json!("hi")).await;
    let m = bob.next_op("message").await;
    assert_eq!((&m["from"], &m["user"]), (&json!(ann.id), &json!("ann")));
    // POST /publish as bob may not name ann's connection (to skip it or act as it).
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .bearer_auth(token("bob"))
        .json(&json!({"channel":"users:room","data":1,"client": ann.id,"skip_self":true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // As ann it may, and the message is ann's.
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .bearer_auth(token("ann"))
        .json(&json!({"channel":"users:room","data":2,"client": ann.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = bob.next_op("message").await;
    assert_eq!((&m["data"], &m["user"]), (&json!(2), &json!("ann")));
    // Anonymous HTTP publish to a `user` namespace is refused.
    let r = reqwest::Client::new()
        .post(format!("{}/publish", http(&edge)))
        .json(&json!({"channel":"users:room","data":3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    ann.ws.close(None).await.unwrap();
    let leave = bob.next_op("leave").await;
    assert_eq!(leave["user"], "ann");
}

#[tokio::test]
async fn namespace_rules_channel_tokens_and_user_limited_channels() {
    let edge = edge().await;
    let mut ann = ws_user(&edge, "ann").await;
    let channel_token = |sub: &str, channel: &str| {
        token_with(json!({"sub": sub, "channel": channel, "exp": now() + 600}))
    };
    // `token` namespace: none, someone else's, another channel's → refused; the right one works.
    let sub = |t: Option<String>| {
        let mut f = json!({"op":"subscribe","channel":"private:x"});
        if let Some(t) = t {
            f["token"] = json!(t);
        }
        f
    };
    for (i, t) in [
        None,
        Some(channel_token("bob", "private:x")),
        Some(channel_token("ann", "private:y")),
    ]
    .into_iter()
    .enumerate()
    {
        let r = ann.request(sub(t), 10 + i as u64).await;
        assert_eq!(r["name"], "permission_denied", "{r}");
    }
    // History and presence follow subscribe: refused without the token, too.
    let r = ann
        .request(json!({"op":"history","channel":"private:x"}), 20)
        .await;
    assert_eq!(r["name"], "permission_denied", "{r}");
    let r = ann
        .request(sub(Some(channel_token("ann", "private:x"))), 21)
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    // Subscribed now: history needs no token; `subscriber` publish works.
    let r = ann
        .request(json!({"op":"history","channel":"private:x"}), 22)
        .await;
    assert_eq!(r["op"], "history", "{r}");
    ann.publish("private:x", json!(1)).await;
    // `subscriber` publish from a connection that did not subscribe: refused.
    let mut bob = ws_user(&edge, "bob").await;
    let r = bob
        .request(json!({"op":"publish","channel":"private:x","data":1}), 30)
        .await;
    assert_eq!(r["name"], "permission_denied", "{r}");
    // User-limited channels, even in a namespace closed to clients: only the named users.
    let r = bob
        .request(json!({"op":"subscribe","channel":"dm:#ann,bob"}), 31)
        .await;
    assert_eq!(r["op"], "subscribed", "{r}");
    let mut eve = ws_user(&edge, "eve").await;
    let r = eve
        .request(json!({"op":"subscribe","channel":"dm:#ann,bob"}), 32)
        .await;
    assert_eq!(r["name"], "permission_denied", "{r}");
    let r = eve
        .request(json!({"op":"presence","channel":"dm:#ann,bob"}), 33)
        .await;
    assert_eq!(r["name"], "permission_denied", "{r}");
    // On SSE the limited channel is one value with its commas, and the rule holds there too.
    let (s, _) = get(
        &edge,
        &format!("sse?channel=dm:%23ann,bob&token={}", token("eve")),
    )
    .await;
    assert_eq!(s, 403);
    let mut s = sse(
        &edge,
        &format!("channel=dm:%23ann,bob&token={}", token("ann")),
        None,
    )
    .await;
    assert_eq!(
        s.next_named("welcome").await.json()["channels"],
        json!(["dm:#ann,bob"])
    );
    // Channel tokens on SSE, in channel order.
    let url = format!(
        "channel=open:a&channel=private:z&channel_token=&channel_token={}&token={}",
        channel_token("ann", "private:z"),
        token("ann")
    );
    let mut s = sse(&edge, &url, None).await;
    s.next_named("subscribed").await;
    let (status, _) = get(
        &edge,
        &format!("poll?channel=private:z&timeout=0&token={}", token("ann")),
    )
    .await;
    assert_eq!(status, 403, "no channel token on the poll");
}

#[tokio::test]
async fn the_channels_claim_subscribes_server_side() {
    let edge = edge().await;
    let tok = token_with(json!({"sub": "ann", "exp": now() + 600,
        "channels": ["dm:granted", "private:g"]}));
    let (mut ann, _) = ws_with(&edge, &format!("token={tok}"), &[]).await.unwrap();
    for _ in 0..2 {
        let s = ann.next_op("subscribed").await;
        assert!(s["id"].is_null(), "{s}");
    }
    api_publish(&edge, "dm:granted", json!("pushed")).await;
    assert_eq!(ann.next_op("message").await["data"], "pushed");
}

#[tokio::test(start_paused = true)]
async fn a_session_ends_with_4010_at_exp_unless_refreshed() {
    let _hold = hold_clock();
    let mut cfg = auth_config();
    cfg.limits.ping_interval_secs = 3600;
    cfg.limits.ping_timeout_secs = 3600;
    let edge = start(cfg).await;
    let short = token_with(json!({"sub": "ann", "exp": now() + 60}));
    let (mut kept, _) = ws_with(&edge, &format!("token={short}"), &[])
        .await
        .unwrap();
    let (mut lapsed, _) = ws_with(&edge, &format!("token={short}"), &[])
        .await
        .unwrap();
    let mut stream = sse(&edge, &format!("channel=open:a&token={short}"), None).await;
    stream.next_named("subscribed").await;
    // `kept` refreshes for an hour; a token of another user is refused.
    let r = kept
        .request(json!({"op":"refresh","token": token("bob")}), 2)
        .await;
    assert_eq!(r["name"], "unauthorized", "{r}");
    let fresh = token_with(json!({"sub": "ann", "exp": now() + 3600}));
    let r = kept
        .request(json!({"op":"refresh","token": fresh}), 3)
        .await;
    assert_eq!(r["op"], "refreshed", "{r}");
    // Past exp + leeway on the paused clock.
    tokio::time::advance(Duration::from_secs(60 + 5 + 1)).await;
    assert_eq!(lapsed.closed_with().await, Some(4010));
    let close = stream.next_named("close").await.json();
    assert_eq!(close["code"], 4010);
    let r = kept.request(json!({"op":"ping"}), 4).await;
    assert_eq!(r["op"], "pong", "the refreshed session lives on");
}

#[tokio::test]
async fn the_origin_must_match_the_host_when_no_origins_are_listed() {
    let edge = start(config()).await;
    let host = edge.addr.to_string();
    for (origin, status) in [
        (format!("http://{host}"), 200),
        ("http://evil.example".to_owned(), 403),
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}/poll?channel=a&timeout=0", http(&edge)))
            .header("origin", origin.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{origin}");
    }
    let refused = ws_with(&edge, "", &[("origin", "http://evil.example")]).await;
    assert_eq!(refused.err(), Some(Some(1008)));
    let ok = ws_with(&edge, "", &[("origin", &format!("http://{host}"))]).await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn without_any_key_the_quick_start_stays_open() {
    // No auth configured: anonymous connections, `?user=` display names, anyone publishes.
    let edge = start(config()).await;
    let (mut c, w) = ws_with(&edge, "user=ann", &[]).await.unwrap();
    assert_eq!(w["user"], "ann");
    c.subscribe("a").await;
    c.publish("a", json!(1)).await;
    let m = c.next_op("message").await;
    assert!(
        m.get("user").is_none(),
        "an unproven name is not a message's user: {m}"
    );
}

#[tokio::test]
async fn a_users_presence_and_messages_cross_edges() {
    let broker = std::sync::Arc::new(herald_broker::memory::MemoryBroker::new());
    let node = |id: &str| {
        let mut c = auth_config();
        c.node_id = id.into();
        c
    };
    let e1 = start_on(node("e1"), broker.clone()).await;
    let e2 = start_on(node("e2"), broker.clone()).await;
    let info = token_with(json!({"sub": "ann", "exp": now() + 600, "info": {"name": "Ann"}}));
    let (mut ann, _) = ws_with(&e1, &format!("token={info}"), &[]).await.unwrap();
    ann.subscribe("users:x").await;
    let mut bob = ws_user(&e2, "bob").await;
    bob.subscribe("users:x").await;
    let r = bob
        .request(json!({"op":"presence","channel":"users:x"}), 7)
        .await;
    let ann_entry = r["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user"] == "ann")
        .cloned()
        .unwrap_or_else(|| panic!("ann is not in presence on e2: {r}"));
    assert_eq!(
        (&ann_entry["node"], &ann_entry["info"]),
        (&json!("e1"), &json!({"name": "Ann"}))
    );
    ann.publish("users:x", json!("from e1")).await;
    let m = bob.next_op("message").await;
    assert_eq!((&m["data"], &m["user"]), (&json!("from e1"), &json!("ann")));
}

#[tokio::test]
async fn open_connections_are_capped_per_user() {
    let mut c = auth_config();
    c.limits.max_connections_per_user = 2;
    let edge = start(c).await;
    let _a = ws_user(&edge, "ann").await;
    let tok = token("ann");
    let mut s = sse(&edge, &format!("channel=open:a&token={tok}"), None).await;
    s.next_named("subscribed").await;
    // A third connection of ann's is refused on every transport; bob is not affected.
    let refused = ws_with(&edge, &format!("token={tok}"), &[]).await;
    assert_eq!(refused.err(), Some(Some(4029)));
    let (status, body) = get(&edge, &format!("poll?channel=open:a&timeout=0&token={tok}")).await;
    assert_eq!(
        (status, &body["error"]["name"]),
        (429, &json!("rate_limited"))
    );
    ws_user(&edge, "bob").await;
}
