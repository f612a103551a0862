//! Readiness follows the health of the Redis pub/sub connection, and cross-node delivery heals
//! after that connection dies, with nothing lost silently. Two edges over one real redis-server:
//! the publisher on e1, the subscribers on e2.
//!
//! * `CLIENT KILL TYPE pubsub` (then `CLIENT PAUSE`, as a Redis failover does) closes e2's
//!   subscriber connection: e2 reports not ready until it has resubscribed and its probe made
//!   the round trip, counts a reconnect, and its subscribers get every offset in order.
//! * A *silently* dead subscription (the socket stays open but nothing arrives, as behind a
//!   NAT or firewall that dropped the flow) is found by the liveness probe: e2 goes not ready,
//!   reconnects, and fills the gap from history.

mod common;
use herald_testkit::redis as redis_support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use herald_edge::{Edge, EdgeConfig};
use redis_support::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn node_config(redis_url: String, id: &str) -> EdgeConfig {
    let mut c = config();
    c.node_id = id.into();
    c.redis_url = Some(redis_url);
    c
}

async fn is_ready(edge: &Edge) -> bool {
    match reqwest::get(format!("{}/readyz", http(edge))).await {
        Ok(r) => r.status() == 200,
        Err(_) => false,
    }
}

/// `herald_redis_reconnects_total` from the node's metrics listener.
async fn reconnects(edge: &Edge) -> f64 {
    metric(edge, "herald_redis_reconnects_total").await
}

/// An unlabelled metric from the node's metrics listener.
async fn metric(edge: &Edge, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", edge.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} exported"))
        .parse()
        .unwrap()
}

/// Polls `/readyz` until it says `ready`, for at most `within`; returns whether it did.
async fn wait_ready(edge: &Edge, ready: bool, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if is_ready(edge).await == ready {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes through the API like a client that retries on 503 (a node whose own Redis
/// connection is down refuses publishes at once). Returns the offset and how many refusals.
async fn publish_retrying(edge: &Edge, channel: &str, data: Value) -> (u64, u32) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut refused = 0;
    loop {
        let r = client
            .post(format!("{}/api/publish", http(edge)))
            .json(&json!({"channel": channel, "data": data}))
            .send()
            .await
            .expect("publish request");
        if r.status() == 200 {
            let v: Value = r.json().await.unwrap();
            return (v["offset"].as_u64().unwrap(), refused);
        }
        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish kept failing"
        );
        refused += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One command on a fresh raw connection; the reply as text (errors start with `-`).
async fn redis_cmd(port: u16, args: &[&str]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let line = line.trim_end().to_owned();
    match line.as_bytes().first() {
        Some(b'$') => {
            let n: usize = line[1..].parse().unwrap();
            let mut body = vec![0u8; n + 2];
            r.read_exact(&mut body).await.unwrap();
            String::from_utf8_lossy(&body[..n]).into_owned()
        }
        _ => line,
    }
}

/// What a subscriber saw: offsets in arrival order; a `None` is a `recovered: false` reset.
#[derive(Default)]
struct Seen(Vec<Option<u64>>);

impl Seen {
    /// Every offset from 1 to `last` is there, once and in order, except right after a reset
    /// (loss that was signalled). Returns how many resets there were.
    fn assert_complete(&self, last: u64, who: &str) -> usize {
        let mut expect = 1;
        let mut resets = 0;
        for item in &self.0 {
            match item {
                None => resets += 1,
                Some(o) if resets > 0 && *o >= expect => expect = *o + 1,
                Some(o) => {
                    assert_eq!(*o, expect, "{who}: offsets {:?}", self.0);
                    expect += 1;
                }
            }
        }
        assert_eq!(expect, last + 1, "{who}: offsets {:?}", self.0);
        resets
    }
}

/// Reads a WebSocket subscriber until it has seen offset `last`.
async fn ws_read_to(c: &mut Client, last: u64, seen: &mut Seen) {
    loop {
        let v: Value = c.next_json().await;
        match v["op"].as_str() {
            Some("message") => {
                let o = v["offset"].as_u64().unwrap();
                seen.0.push(Some(o));
                if o >= last {
                    return;
                }
            }
            Some("subscribed") if v["recovered"] == false => seen.0.push(None),
            _ => {}
        }
    }
}

/// Reads an SSE subscriber until it has seen offset `last`.
async fn sse_read_to(s: &mut Sse, last: u64, seen: &mut Seen) {
    loop {
        let ev = s.next().await.expect("sse stream open");
        let v = ev.json();
        match ev.event.as_deref() {
            None => {
                let o = v["offset"].as_u64().unwrap();
                seen.0.push(Some(o));
                if o >= last {
                    return;
                }
            }
            Some("subscribed") if v["recovered"] == false => seen.0.push(None),
            _ => {}
        }
    }
}

#[tokio::test]
async fn pubsub_kill_flips_readiness_counts_a_reconnect_and_delivery_heals() {
    let redis = RedisServer::start();
    let e1 = start(node_config(redis.url(), "e1")).await;
    let e2 = start(node_config(redis.url(), "e2")).await;
    assert!(is_ready(&e2).await);
    assert_eq!(reconnects(&e2).await, 0.0);

    let mut ws = connect(&e2).await;
    ws.subscribe("h:room").await;
    let mut sse_c = sse(&e2, "channel=h:room", None).await;
    sse_c.next_named("subscribed").await;

    // Watch e2's readiness throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let saw_not_ready = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, saw) = (stop.clone(), saw_not_ready.clone());
        let url = format!("{}/readyz", http(&e2));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let ok = client
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    saw.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // Publish on e1 before, during and after the kill.
    for i in 0..10u64 {
        assert_eq!(api_publish(&e1, "h:room", json!(i)).await["offset"], i + 1);
    }
    let killed = redis_cmd(redis.port(), &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert!(killed.starts_with(':'), "{killed}");
    assert!(killed != ":0", "no pub/sub connection was killed");
    // A failover pauses clients too; it also keeps e2 unready long enough to be seen.
    let paused = redis_cmd(redis.port(), &["CLIENT", "PAUSE", "700", "ALL"]).await;
    assert_eq!(paused, "+OK");
    // e1 lost its subscriber too and refuses publishes (503) until it is back: retried, as a
    // client would. Offsets only grow (a publish that timed out may still have been applied;
    // then it is in history, and subscribers get it).
    let mut top = 10;
    let mut refusals = 0;
    for i in 10..40u64 {
        let (offset, refused) = publish_retrying(&e1, "h:room", json!(i)).await;
        assert!(offset > top, "{offset} after {top}");
        top = offset;
        refusals += refused;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("publishes refused while e1 reconnected: {refusals}");
    assert!(wait_ready(&e2, true, WAIT).await, "e2 ready again");
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(
        saw_not_ready.load(Ordering::Relaxed),
        "e2 never reported not ready while its pub/sub connection was down"
    );
    assert!(reconnects(&e2).await >= 1.0, "the reconnect is counted");

    // Healed: a publish on e1 now reaches e2's subscribers live.
    let last = api_publish(&e1, "h:room", json!("after")).await["offset"]
        .as_u64()
        .unwrap();
    assert_eq!(last, top + 1);
    let mut seen = Seen::default();
    ws_read_to(&mut ws, last, &mut seen).await;
    let ws_resets = seen.assert_complete(last, "ws");
    let mut seen = Seen::default();
    sse_read_to(&mut sse_c, last, &mut seen).await;
    let sse_resets = seen.assert_complete(last, "sse");
    // History (100 per channel) covered the gap, so nothing had to be reported lost.
    assert_eq!((ws_resets, sse_resets), (0, 0));
    ws.assert_quiet().await;
}

/// A TCP proxy in front of Redis that can make one connection go silent (bytes vanish both
/// ways while both sockets stay open) and hold new connections without connecting them.
struct Proxy {
    port: u16,
    /// Upstream local port (what Redis's CLIENT LIST shows as `addr`) → that link's silence flag.
    links: Arc<Mutex<HashMap<u16, Arc<AtomicBool>>>>,
    /// While set, new connections are accepted and then left hanging.
    hold_new: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(redis_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<HashMap<u16, Arc<AtomicBool>>>> = Arc::default();
        let hold_new = Arc::new(AtomicBool::new(false));
        let (l, h) = (links.clone(), hold_new.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if h.load(Ordering::Relaxed) {
                    held.push(client);
                    continue;
                }
                let upstream = TcpStream::connect(("127.0.0.1", redis_port)).await.unwrap();
                let silent = Arc::new(AtomicBool::new(false));
                let local = upstream.local_addr().unwrap().port();
                l.lock().unwrap().insert(local, silent.clone());
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(pump(cr, uw, silent.clone()));
                tokio::spawn(pump(ur, cw, silent));
            }
        });
        Proxy {
            port,
            links,
            hold_new,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Copies `from` to `to` until either closes; while `silent`, what is read is dropped.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::Relaxed) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The upstream ports of Redis clients subscribed to something (CLIENT LIST `sub` > 0).
async fn subscriber_ports(redis_port: u16) -> Vec<u16> {
    let list = redis_cmd(redis_port, &["CLIENT", "LIST"]).await;
    list.lines()
        .filter(|l| {
            l.split(' ')
                .any(|kv| kv.strip_prefix("sub=").is_some_and(|n| n != "0"))
        })
        .filter_map(|l| {
            let addr = l.split(' ').find_map(|kv| kv.strip_prefix("addr="))?;
            addr.rsplit_once(':')?.1.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn silently_dead_subscription_is_found_by_the_probe_and_healed() {
    let redis = RedisServer::start();
    let proxy = Proxy::start(redis.port()).await;
    let e1 = start(node_config(redis.url(), "e1")).await;
    let e2 = start(node_config(proxy.url(), "e2")).await;
    let mut ws = connect(&e2).await;
    ws.subscribe("s:room").await;
    assert_eq!(api_publish(&e1, "s:room", json!(1)).await["offset"], 1);
    assert_eq!(ws.next_op("message").await["offset"], 1);

    // Silence e2's subscriber connection (only it: its command connection still works, so
    // publishes and probes are sent and Redis thinks they were delivered). Hold reconnects
    // for a moment so the not-ready state lasts long enough to be seen.
    let links: Vec<(u16, Arc<AtomicBool>)> = proxy
        .links
        .lock()
        .unwrap()
        .iter()
        .map(|(p, s)| (*p, s.clone()))
        .collect();
    let subscribers = subscriber_ports(redis.port()).await;
    let silenced: Vec<u16> = links
        .iter()
        .filter(|(p, _)| subscribers.contains(p))
        .map(|(p, s)| {
            s.store(true, Ordering::Relaxed);
            *p
        })
        .collect();
    assert_eq!(silenced.len(), 1, "e2 has one pub/sub connection");
    proxy.hold_new.store(true, Ordering::Relaxed);

    // Published and accepted by Redis, but it never reaches e2 live.
    assert_eq!(api_publish(&e1, "s:room", json!(2)).await["offset"], 2);
    ws.assert_quiet().await;
    assert!(is_ready(&e2).await, "nothing has noticed yet");

    // Joining the live channel now, a subscriber is answered from the position e2 knows
    // (offset 1, without a Redis read) — stale, as nothing has noticed the silence. It must
    // still get offset 2: the heal's resync makes it read history. So must a long-poll whose
    // cursor is at that known position (it waits, as e2 knows of nothing newer).
    let known_before = metric(&e2, "herald_subscribe_positions_known_total").await;
    let mut late = connect(&e2).await;
    let reply = late.subscribe("s:room").await;
    assert_eq!(
        reply["offset"], 1,
        "answered from e2's known position: {reply}"
    );
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    let mut cursor = herald_protocol::Cursor::new();
    cursor.set(
        "s:room",
        herald_protocol::StreamPosition { epoch, offset: 1 },
    );
    let cursor = cursor.encode();
    let mut poller = {
        let url = format!(
            "{}/poll?channel=s:room&cursor={cursor}&timeout=25",
            http(&e2)
        );
        tokio::spawn(async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::select! {
        () = wait_until_metric(&e2, "herald_subscribe_positions_known_total", known_before + 2.0) => {}
        r = &mut poller => panic!("poll ended early: {r:?}"),
    }

    // The probe (every 5 s, 3 s to answer) notices: not ready.
    let noticed = wait_ready(&e2, false, Duration::from_secs(20)).await;
    assert!(
        noticed,
        "a silent pub/sub connection must make the node unready"
    );
    let body: Value = reqwest::get(format!("{}/readyz", http(&e2)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["ready"].clone(), body["broker"].clone()),
        (json!(false), json!(false))
    );

    // Let connections through again: e2 reconnects, counts it, and is ready.
    proxy.hold_new.store(false, Ordering::Relaxed);
    assert!(
        wait_ready(&e2, true, Duration::from_secs(20)).await,
        "e2 ready again"
    );
    assert!(reconnects(&e2).await >= 1.0);

    // The heal forgot e2's stale position: a subscriber joining now reads Redis's.
    let mut fresh = connect(&e2).await;
    assert_eq!(fresh.subscribe("s:room").await["offset"], 2);

    // The message published into the silence is recovered from history, then live delivery
    // works again.
    assert_eq!(ws.next_op("message").await["offset"], 2);
    assert_eq!(late.next_op("message").await["offset"], 2);
    let polled = poller.await.unwrap();
    assert_eq!(polled["recovered"], true, "{polled}");
    let offsets: Vec<u64> = polled["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2], "{polled}");
    assert_eq!(api_publish(&e1, "s:room", json!(3)).await["offset"], 3);
    assert_eq!(ws.next_op("message").await["offset"], 3);
    assert_eq!(late.next_op("message").await["offset"], 3);
    assert_eq!(fresh.next_op("message").await["offset"], 3);
    ws.assert_quiet().await;
    late.assert_quiet().await;
}

/// Waits (polling the scrape, 10 s at most) until an unlabelled metric reaches `value`.
async fn wait_until_metric(edge: &Edge, name: &str, value: f64) {
    for _ in 0..1000 {
        if metric(edge, name).await >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never reached {value}");
}
