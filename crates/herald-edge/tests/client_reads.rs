//! `GET /presence` and `GET /history`: the WebSocket `presence` and `history` ops for SSE and
//! polling clients, with the caller's own token and the namespace rules. They answer an allowed
//! client with exactly what was published (paged by `max_reply_bytes`, resumed with `since`,
//! cut by `limit`), refuse what the rules forbid (403/102), bad tokens (401/101, 401/113) and bad
//! input (400 with 104/105/106), and let a caller count as subscribed only through its own SSE
//! connection (`client=`). `GET /dev/token` honours `ttl`.

mod common;

use common::*;
use herald_edge::config::{NamespaceConfig, PublishRule, SubscribeRule};
use herald_edge::{Edge, EdgeConfig};
use jsonwebtoken::{decode, encode, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-0123456789-abcdefghij";
const AUDIENCE: &str = "herald-tests";
/// Error codes, as HTTP bodies carry them.
const UNAUTHORIZED: u64 = 101;
const DENIED: u64 = 102;
const BAD_REQUEST: u64 = 104;
const INVALID_CHANNEL: u64 = 105;
const BAD_CURSOR: u64 = 106;
const TOKEN_EXPIRED: u64 = 113;
/// The reply page: two of the [`padded`] messages fit, three do not.
const PAGE: usize = 1024;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign_with(secret: &str, claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token_with(mut claims: Value) -> String {
    if claims.get("aud").is_none() {
        claims["aud"] = json!(AUDIENCE);
    }
    sign_with(SECRET, claims)
}

/// A valid connection token of `user` for an hour.
fn token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now() + 3600}))
}

/// A channel token of `user` for `channel`.
fn channel_token(user: &str, channel: &str) -> String {
    token_with(json!({"sub": user, "channel": channel, "exp": now() + 600}))
}

/// About 420 bytes of JSON: two fit in a [`PAGE`], three do not.
fn padded(i: u64) -> Value {
    json!({"i": i, "pad": "p".repeat(400)})
}

fn edge_config() -> EdgeConfig {
    let mut c = config();
    c.auth.hmac_secret = Some(SECRET.into());
    c.auth.audience = Some(AUDIENCE.into());
    c.auth.dev_token_endpoint = true;
    c.limits.max_message_size = PAGE;
    c.limits.max_reply_bytes = PAGE;
    let ns = |subscribe| NamespaceConfig {
        subscribe: Some(subscribe),
        publish: Some(PublishRule::Anyone),
        ..Default::default()
    };
    c.namespaces
        .insert("open".into(), ns(SubscribeRule::Anyone));
    c.namespaces.insert("users".into(), ns(SubscribeRule::User));
    c.namespaces
        .insert("private".into(), ns(SubscribeRule::Token));
    c.namespaces.insert("feed".into(), ns(SubscribeRule::None));
    c.namespaces.insert(
        "secret".into(),
        NamespaceConfig {
            client_subscribe: false,
            ..Default::default()
        },
    );
    c.namespaces.insert(
        "nopresence".into(),
        NamespaceConfig {
            presence: false,
            ..ns(SubscribeRule::User)
        },
    );
    c.namespaces.insert(
        "small".into(),
        NamespaceConfig {
            history_size: 3,
            ..ns(SubscribeRule::User)
        },
    );
    c
}

async fn edge() -> Edge {
    start(edge_config()).await
}

/// A GET on the client listener: status and JSON body.
async fn get(edge: &Edge, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("{}/{path}", http(edge)))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, body)
}

/// A GET that must succeed.
async fn get_ok(edge: &Edge, path: &str) -> Value {
    let (status, body) = get(edge, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// A GET that must fail with `status` and error `code`.
async fn refused(edge: &Edge, path: &str, status: u16, code: u64) -> Value {
    let (s, body) = get(edge, path).await;
    assert_eq!(
        (s, &body["error"]["code"]),
        (status, &json!(code)),
        "{path}: {body}"
    );
    body
}

fn offsets(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages: {body}"))
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

fn data_i(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"]["i"].as_u64().unwrap())
        .collect()
}

/// Publishes `n` padded messages 1..=n to `channel`; returns the epoch.
async fn fill(edge: &Edge, channel: &str, n: u64) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let r = api_publish(edge, channel, padded(i)).await;
        assert_eq!(r["offset"], i, "{r}");
        epoch = r["epoch"].as_str().unwrap().to_owned();
    }
    epoch
}

/// The client id an SSE stream's welcome names.
async fn sse_client(s: &mut Sse) -> String {
    let welcome = s.next_named("welcome").await.json();
    welcome["client"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn history_answers_an_allowed_client_in_pages_with_since_and_limit() {
    let edge = edge().await;
    let epoch = fill(&edge, "users:room", 5).await;
    let ann = token("ann");
    // No since: the newest page — the two newest messages fit — and nothing more after them.
    let body = get_ok(&edge, &format!("history?channel=users:room&token={ann}")).await;
    assert_eq!(body["channel"], "users:room");
    assert_eq!(body["epoch"], epoch.as_str());
    assert_eq!(body["offset"], 5);
    assert_eq!(body["recovered"], true);
    assert_eq!(body["more"], false, "{body}");
    assert_eq!(offsets(&body), [4, 5]);
    assert_eq!(data_i(&body), [4, 5]);
    for m in body["messages"].as_array().unwrap() {
        assert_eq!(m["channel"], "users:room");
        assert_eq!(m["epoch"], epoch.as_str());
    }
    // From the start: page by page, `more` until the last, every message once, in order.
    let mut since = format!("{epoch}:0");
    let mut seen: Vec<u64> = Vec::new();
    let mut pages = 0;
    loop {
        let body = get_ok(
            &edge,
            &format!("history?channel=users:room&since={since}&token={ann}"),
        )
        .await;
        pages += 1;
        let got = offsets(&body);
        assert!(!got.is_empty() && got.len() <= 2, "{body}");
        assert_eq!(data_i(&body), got);
        seen.extend(&got);
        since = format!("{epoch}:{}", got.last().unwrap());
        if body["more"] == false {
            break;
        }
        assert!(pages < 10, "no end to the pages");
    }
    assert_eq!(seen, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
    // `limit` cuts a page short (and says so); without `since`, the newest `limit`.
    let body = get_ok(
        &edge,
        &format!("history?channel=users:room&since={epoch}:2&limit=1&token={ann}"),
    )
    .await;
    assert_eq!((offsets(&body), &body["more"]), (vec![3], &json!(true)));
    let body = get_ok(
        &edge,
        &format!("history?channel=users:room&limit=1&token={ann}"),
    )
    .await;
    assert_eq!((offsets(&body), &body["more"]), (vec![5], &json!(false)));
    // `limit=0`: the position only.
    let body = get_ok(
        &edge,
        &format!("history?channel=users:room&limit=0&token={ann}"),
    )
    .await;
    assert_eq!((offsets(&body), &body["offset"]), (vec![], &json!(5)));
    // Resuming at the end: nothing, recovered.
    let body = get_ok(
        &edge,
        &format!("history?channel=users:room&since={epoch}:5&token={ann}"),
    )
    .await;
    assert_eq!((offsets(&body), &body["recovered"]), (vec![], &json!(true)));
    // A since from another generation: not recovered, as on the WebSocket.
    let body = get_ok(
        &edge,
        &format!("history?channel=users:room&since=zzzzzzzz:1&token={ann}"),
    )
    .await;
    assert_eq!(body["recovered"], false, "{body}");
    // The same reads as the WebSocket op and as /api/history give the same messages.
    let mut ws = connect_url(&format!("ws://{}/ws?token={ann}", edge.addr)).await;
    let op = ws
        .request(
            json!({"op":"history","channel":"users:room","since":{"epoch":epoch,"offset":2},"limit":2}),
            1,
        )
        .await;
    let http_body = get_ok(
        &edge,
        &format!("history?channel=users:room&since={epoch}:2&limit=2&token={ann}"),
    )
    .await;
    assert_eq!(op["messages"], http_body["messages"]);
    assert_eq!(op["more"], http_body["more"]);
    let api = get_ok(
        &edge,
        &format!("api/history/users:room?since={epoch}:2&limit=2"),
    )
    .await;
    assert_eq!(api, http_body);
    // Replies are not cached (they depend on who asks) and are counted.
    let r = reqwest::get(format!(
        "{}/history?channel=users:room&token={ann}",
        http(&edge)
    ))
    .await
    .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    let metrics = edge.node.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("herald_transport_sent_bytes_total{transport=\"http\"}")),
        "{metrics}"
    );
}

#[tokio::test]
async fn history_limit_is_capped_by_the_namespace_as_on_the_websocket() {
    let edge = edge().await;
    let epoch = fill(&edge, "small:a", 2).await;
    for i in 3..=5 {
        api_publish(&edge, "small:a", json!({"i": i})).await;
    }
    let ann = token("ann");
    // history_size = 3: a larger limit reads 3, the newest.
    let body = get_ok(
        &edge,
        &format!("history?channel=small:a&limit=10&token={ann}"),
    )
    .await;
    assert_eq!(offsets(&body), [3, 4, 5]);
    assert_eq!(data_i(&body), [3, 4, 5]);
    let body = get_ok(
        &edge,
        &format!("history?channel=small:a&since={epoch}:3&limit=10000&token={ann}"),
    )
    .await;
    assert_eq!(offsets(&body), [4, 5]);
}

#[tokio::test]
async fn presence_answers_an_allowed_client() {
    let edge = edge().await;
    let mut s = sse(
        &edge,
        &format!("channel=users:room&token={}", token("ann")),
        None,
    )
    .await;
    let ann_client = sse_client(&mut s).await;
    s.next_named("subscribed").await;
    let body = get_ok(
        &edge,
        &format!("presence?channel=users:room&token={}", token("bob")),
    )
    .await;
    assert_eq!(body["channel"], "users:room");
    let clients = body["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1, "{body}");
    assert_eq!(clients[0]["client"], ann_client.as_str());
    assert_eq!(clients[0]["user"], "ann");
    assert_eq!(clients[0]["node"], "test");
    // The same body as the server API's.
    assert_eq!(get_ok(&edge, "api/presence/users:room").await, body);
    // An empty channel is an empty list.
    let body = get_ok(
        &edge,
        &format!("presence?channel=users:empty&token={}", token("bob")),
    )
    .await;
    assert_eq!(body["clients"], json!([]));
    // The token may come as a bearer header too.
    let r = reqwest::Client::new()
        .get(format!("{}/presence?channel=users:room", http(&edge)))
        .bearer_auth(token("bob"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn namespace_rules_refuse_reads_with_403_and_102() {
    let edge = edge().await;
    api_publish(&edge, "secret:a", json!("hidden")).await;
    api_publish(&edge, "dm:#ann,bob", json!("between-us")).await;
    let ann = token("ann");
    let eve = token("eve");
    // A namespace closed to clients: neither history nor presence, whoever asks.
    for op in ["history", "presence"] {
        let body = refused(
            &edge,
            &format!("{op}?channel=secret:a&token={ann}"),
            403,
            DENIED,
        )
        .await;
        assert!(!body.to_string().contains("hidden"), "{body}");
    }
    // Presence off: presence refused, history still readable.
    refused(
        &edge,
        &format!("presence?channel=nopresence:a&token={ann}"),
        403,
        DENIED,
    )
    .await;
    get_ok(&edge, &format!("history?channel=nopresence:a&token={ann}")).await;
    // A `token` namespace: no channel token, another user's, another channel's → refused.
    for ct in [
        String::new(),
        format!("&channel_token={}", channel_token("bob", "private:x")),
        format!("&channel_token={}", channel_token("ann", "private:y")),
    ] {
        for op in ["history", "presence"] {
            refused(
                &edge,
                &format!("{op}?channel=private:x&token={ann}{ct}"),
                403,
                DENIED,
            )
            .await;
        }
    }
    // The right channel token opens both.
    let ct = channel_token("ann", "private:x");
    for op in ["history", "presence"] {
        get_ok(
            &edge,
            &format!("{op}?channel=private:x&token={ann}&channel_token={ct}"),
        )
        .await;
    }
    // A user-limited channel: another user is refused, a named one reads it.
    for op in ["history", "presence"] {
        let body = refused(
            &edge,
            &format!("{op}?channel=dm:%23ann,bob&token={eve}"),
            403,
            DENIED,
        )
        .await;
        assert!(!body.to_string().contains("between-us"), "{body}");
    }
    let body = get_ok(&edge, &format!("history?channel=dm:%23ann,bob&token={ann}")).await;
    assert_eq!(body["channel"], "dm:#ann,bob");
    assert_eq!(body["messages"][0]["data"], "between-us");
    get_ok(
        &edge,
        &format!("presence?channel=dm:%23ann,bob&token={ann}"),
    )
    .await;
    // A forbidden origin.
    let r = reqwest::Client::new()
        .get(format!(
            "{}/history?channel=users:a&token={ann}",
            http(&edge)
        ))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let metrics = edge.node.metrics.render();
    assert!(
        metrics.contains("herald_errors_total{code=\"permission_denied\",source=\"client\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_or_missing_tokens_are_refused_with_401() {
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
    for op in ["history", "presence"] {
        // Anonymous access is off once a key is configured: no token is 401.
        refused(&edge, &format!("{op}?channel=users:a"), 401, UNAUTHORIZED).await;
        for tok in [forged.as_str(), wrong_aud.as_str(), "not-a-jwt"] {
            refused(
                &edge,
                &format!("{op}?channel=users:a&token={tok}"),
                401,
                UNAUTHORIZED,
            )
            .await;
        }
        let body = refused(
            &edge,
            &format!("{op}?channel=users:a&token={expired}"),
            401,
            TOKEN_EXPIRED,
        )
        .await;
        assert_eq!(body["error"]["name"], "token_expired");
        // Even on a channel anyone may read.
        refused(
            &edge,
            &format!("{op}?channel=open:a&token={expired}"),
            401,
            TOKEN_EXPIRED,
        )
        .await;
    }
}

#[tokio::test]
async fn bad_input_is_refused_with_400_and_the_right_code() {
    let edge = edge().await;
    let ann = token("ann");
    let long = "c".repeat(1000);
    for op in ["history", "presence"] {
        for (query, code) in [
            (String::new(), BAD_REQUEST),
            ("channel=".to_owned(), BAD_REQUEST),
            ("channel=users:a&channel=users:b".to_owned(), BAD_REQUEST),
            ("channel=has%20space".to_owned(), INVALID_CHANNEL),
            (format!("channel={long}"), INVALID_CHANNEL),
        ] {
            refused(&edge, &format!("{op}?{query}&token={ann}"), 400, code).await;
        }
    }
    for (query, code) in [
        ("since=not-a-cursor", BAD_CURSOR),
        ("since=abc:xyz", BAD_CURSOR),
        ("since=ab-c:1", BAD_CURSOR),
        ("limit=abc", BAD_REQUEST),
        ("limit=-1", BAD_REQUEST),
        ("limit=1.5", BAD_REQUEST),
        ("limit=10001", BAD_REQUEST),
        ("limit=99999999999999999999999", BAD_REQUEST),
    ] {
        refused(
            &edge,
            &format!("history?channel=users:a&{query}&token={ann}"),
            400,
            code,
        )
        .await;
    }
    // The largest limit is fine.
    get_ok(
        &edge,
        &format!("history?channel=users:a&limit=10000&token={ann}"),
    )
    .await;
    // A POST is not these endpoints.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/history?channel=users:a&token={ann}",
            http(&edge)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn a_subscriber_reads_only_through_its_own_subscribed_sse_connection() {
    let edge = edge().await;
    api_publish(&edge, "feed:ann", json!("for-ann")).await;
    api_publish(&edge, "private:x", json!("private")).await;
    let ann = token("ann");
    let bob = token("bob");
    // `feed` admits no client subscribe: ann's SSE holds feed:ann through her token's
    // `channels` claim, and private:x through a channel token.
    let granted = token_with(json!({"sub": "ann", "exp": now() + 3600, "channels": ["feed:ann"]}));
    let mut s = sse(
        &edge,
        &format!(
            "channel=private:x&channel_token={}&token={granted}",
            channel_token("ann", "private:x")
        ),
        None,
    )
    .await;
    let client = sse_client(&mut s).await;
    s.next_named("subscribed").await;
    s.next_named("subscribed").await;
    // Without `client`, neither channel is readable with a plain token.
    for op in ["history", "presence"] {
        for ch in ["feed:ann", "private:x"] {
            refused(
                &edge,
                &format!("{op}?channel={ch}&token={ann}"),
                403,
                DENIED,
            )
            .await;
        }
    }
    // Naming her own connection: both are.
    let body = get_ok(
        &edge,
        &format!("history?channel=feed:ann&token={ann}&client={client}"),
    )
    .await;
    assert_eq!(body["messages"][0]["data"], "for-ann");
    let body = get_ok(
        &edge,
        &format!("history?channel=private:x&token={ann}&client={client}"),
    )
    .await;
    assert_eq!(body["messages"][0]["data"], "private");
    let body = get_ok(
        &edge,
        &format!("presence?channel=private:x&token={ann}&client={client}"),
    )
    .await;
    assert_eq!(body["clients"][0]["client"], client.as_str(), "{body}");
    // Her connection does not hold feed:bob: naming it does not help there.
    refused(
        &edge,
        &format!("history?channel=feed:bob&token={ann}&client={client}"),
        403,
        DENIED,
    )
    .await;
    // Another user naming her connection, or anyone naming no connection here: refused.
    for c in [client.as_str(), "no-such-client"] {
        refused(
            &edge,
            &format!("history?channel=feed:ann&token={bob}&client={c}"),
            403,
            DENIED,
        )
        .await;
    }
    refused(
        &edge,
        &format!("history?channel=feed:ann&token={ann}&client=no-such-client"),
        403,
        DENIED,
    )
    .await;
    drop(s);
}

#[tokio::test]
async fn dev_token_honours_ttl_and_refuses_a_bad_one() {
    let edge = edge().await;
    let mut validation = Validation::default();
    validation.set_audience(&[AUDIENCE]);
    let claims = |token: &str| -> Value {
        decode::<Value>(
            token,
            &DecodingKey::from_secret(SECRET.as_bytes()),
            &validation,
        )
        .expect("a valid token")
        .claims
    };
    for (query, ttl) in [
        ("user=ann&ttl=5", 5),
        ("ttl=86400&user=ann", 86_400),
        ("user=ann", 3600),
    ] {
        let before = now();
        let body = get_ok(&edge, &format!("dev/token?{query}")).await;
        let after = now();
        let exp = body["exp"].as_u64().unwrap();
        assert!(
            (before + ttl..=after + ttl).contains(&exp),
            "{query}: exp {exp}"
        );
        let token = body["token"].as_str().unwrap();
        let c = claims(token);
        assert_eq!(c["exp"], exp, "{query}");
        assert_eq!(c["sub"], "ann");
        // It is a working connection token.
        get_ok(&edge, &format!("history?channel=users:a&token={token}")).await;
    }
    for ttl in [
        "0",
        "86401",
        "-1",
        "abc",
        "1.5",
        "",
        "99999999999999999999999",
    ] {
        refused(
            &edge,
            &format!("dev/token?user=ann&ttl={ttl}"),
            400,
            BAD_REQUEST,
        )
        .await;
    }
    refused(&edge, "dev/token?ttl=5", 400, BAD_REQUEST).await;
}
