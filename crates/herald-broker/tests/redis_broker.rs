//! The Redis broker against a real `redis-server` (started on a free port by the harness in
//! `redis_support`): several brokers in one process stand for several nodes.

mod redis_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::{
    Broker, BrokerError, BrokerEvent, BrokerEvents, HistoryOptions, HistoryQuery, NodeInfo,
    Payload, PublishRequest,
};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use redis_support::RedisServer;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Generous: the machine has two cores shared with builds.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

struct Recorder(mpsc::UnboundedSender<BrokerEvent>);

impl BrokerEvents for Recorder {
    fn on_event(&self, event: BrokerEvent) {
        let _ = self.0.send(event);
    }
}

type Events = mpsc::UnboundedReceiver<BrokerEvent>;

fn config(redis: &RedisServer, node: &str) -> RedisBrokerConfig {
    RedisBrokerConfig {
        unsubscribe_delay: Duration::from_millis(100),
        probe_interval: Duration::from_millis(300),
        probe_timeout: Duration::from_secs(2),
        reconnect_max: Duration::from_millis(500),
        command_timeout: Duration::from_secs(1),
        ..RedisBrokerConfig::new(redis.url(), node)
    }
}

async fn node_with(config: RedisBrokerConfig) -> (Arc<RedisBroker>, Events) {
    // `RUST_LOG=herald_broker=debug` shows the broker's side of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let broker = RedisBroker::connect(config)
        .await
        .expect("connect to redis");
    let (tx, rx) = mpsc::unbounded_channel();
    broker.attach(Arc::new(Recorder(tx)));
    (broker, rx)
}

async fn node(redis: &RedisServer, id: &str) -> (Arc<RedisBroker>, Events) {
    node_with(config(redis, id)).await
}

fn history(size: usize) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl: Duration::from_secs(60),
    }
}

fn json(text: &str) -> Payload {
    Payload::Json(RawValue::from_string(text.to_string()).unwrap())
}

fn request(channel: &str, payload: Payload, size: usize) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        payload,
        from: None,
        skip_self: false,
        history: history(size),
    }
}

fn json_of(payload: &Payload) -> String {
    match payload {
        Payload::Json(raw) => raw.get().to_string(),
        Payload::Binary(_) => panic!("json payload expected"),
    }
}

async fn next_event(events: &mut Events) -> BrokerEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event within the timeout")
        .expect("event channel open")
}

/// The next publication, skipping anything else (a `Resync`, joins...).
async fn next_publication(events: &mut Events) -> Arc<herald_broker::Publication> {
    loop {
        if let BrokerEvent::Publication(p) = next_event(events).await {
            return p;
        }
    }
}

async fn assert_quiet(events: &mut Events) {
    if let Ok(Some(event)) = tokio::time::timeout(QUIET, events.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry(client: &str, node: &str) -> PresenceEntry {
    PresenceEntry {
        client: client.into(),
        user: format!("user-{client}"),
        node: node.into(),
    }
}

fn since(epoch: &str, offset: u64, limit: usize) -> HistoryQuery {
    HistoryQuery {
        since: Some(StreamPosition {
            epoch: epoch.into(),
            offset,
        }),
        limit,
    }
}

/// Runs one command on a fresh connection of its own.
async fn admin<T: redis::FromRedisValue>(redis: &RedisServer, command: &redis::Cmd) -> T {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut con).await.unwrap()
}

/// How many connections are SUBSCRIBEd to `topic`, asked of Redis directly.
async fn subscribers(redis: &RedisServer, topic: &str) -> i64 {
    let (_, count): (String, i64) =
        admin(redis, redis::cmd("PUBSUB").arg("NUMSUB").arg(topic)).await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_cross_nodes_in_offset_order() {
    let redis = RedisServer::start();
    let (a, mut a_events) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    b.subscribe("chat:order").await.unwrap();
    a.subscribe("chat:order").await.unwrap();

    // Four concurrent publishers on A, 50 messages each.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..50 {
                let body = format!(r#"{{"t":{t},"i":{i}}}"#);
                let pos = a
                    .publish(request("chat:order", json(&body), 1000))
                    .await
                    .unwrap();
                offsets.push(pos.offset);
            }
            offsets
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked.sort();
    assert_eq!(
        acked,
        (1..=200).collect::<Vec<u64>>(),
        "offsets +1 per publish"
    );

    for events in [&mut b_events, &mut a_events] {
        let mut epoch = None;
        for expected in 1..=200u64 {
            let p = next_publication(events).await;
            assert_eq!(p.offset, expected, "delivered in offset order, no gap");
            assert_eq!(&*p.channel, "chat:order");
            assert!(p.ts_ms > 1_600_000_000_000);
            assert_eq!(*epoch.get_or_insert(p.epoch.clone()), p.epoch);
        }
    }
    assert_quiet(&mut b_events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_payloads_sender_and_skip_self_cross_nodes() {
    let redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    b.subscribe("bin:x").await.unwrap();

    let bytes: Vec<u8> = (0..=255u8).rev().chain(*b"|p|:\r\n\0").collect();
    a.publish(PublishRequest {
        from: Some("client-7".into()),
        skip_self: true,
        ..request("bin:x", Payload::Binary(Bytes::from(bytes.clone())), 10)
    })
    .await
    .unwrap();
    let text = r#"{"emoji":"\u00e9 ✓","n":[1,2.5,null],"s":"a|b:c"}"#;
    a.publish(request("bin:x", json(text), 10)).await.unwrap();

    let p = next_publication(&mut b_events).await;
    match &p.payload {
        Payload::Binary(got) => assert_eq!(&got[..], &bytes[..]),
        other => panic!("binary expected, got {other:?}"),
    }
    assert_eq!(p.from.as_deref(), Some("client-7"));
    assert!(p.skip_self);
    let p = next_publication(&mut b_events).await;
    assert_eq!(json_of(&p.payload), text, "json bytes unchanged");
    assert_eq!(p.from, None);
    assert!(!p.skip_self);

    // The same bytes come back from history.
    let page = b
        .history("bin:x", since(&p.epoch, 0, 10), history(10))
        .await
        .unwrap();
    assert!(page.recovered);
    match &page.publications[0].payload {
        Payload::Binary(got) => assert_eq!(&got[..], &bytes[..]),
        other => panic!("binary expected, got {other:?}"),
    }
    assert_eq!(page.publications[0].from.as_deref(), Some("client-7"));
    assert!(page.publications[0].skip_self);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_reference_counts_and_delayed_unsubscribe() {
    let redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    let topic = "herald:t:room:1";
    let publish = |n: u32| {
        let a = a.clone();
        async move {
            a.publish(request("room:1", json(&n.to_string()), 0))
                .await
                .unwrap()
        }
    };

    b.subscribe("room:1").await.unwrap();
    b.subscribe("room:1").await.unwrap();
    assert_eq!(subscribers(&redis, topic).await, 1);
    b.unsubscribe("room:1").await.unwrap();
    publish(1).await;
    assert_eq!(json_of(&next_publication(&mut b_events).await.payload), "1");

    // Last reference gone: nothing is delivered, and the wire UNSUBSCRIBE follows the delay.
    b.unsubscribe("room:1").await.unwrap();
    publish(2).await;
    assert_quiet(&mut b_events).await;
    let deadline = Instant::now() + WAIT;
    while subscribers(&redis, topic).await != 0 {
        assert!(Instant::now() < deadline, "UNSUBSCRIBE never reached redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.subscribed_channels(), 0);

    // Back again: delivered again, offsets continued meanwhile.
    b.subscribe("room:1").await.unwrap();
    let pos = publish(3).await;
    let p = next_publication(&mut b_events).await;
    assert_eq!((p.offset, pos.offset), (3, 3));
    // A stray unsubscribe is harmless.
    b.unsubscribe("never:subscribed").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_recovers_within_the_window_and_refuses_outside() {
    let redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    let (b, _b_events) = node(&redis, "b").await;

    // A cursor before the first publish; the first publish keeps its epoch.
    let page = b
        .history("h:c", HistoryQuery::default(), history(4))
        .await
        .unwrap();
    assert_eq!(page.position.offset, 0);
    let epoch = page.position.epoch.clone();
    assert!(!epoch.is_empty());
    for i in 1..=10 {
        let pos = a
            .publish(request("h:c", json(&i.to_string()), 4))
            .await
            .unwrap();
        assert_eq!((pos.epoch.as_str(), pos.offset), (epoch.as_str(), i));
    }
    let offsets = |page: &herald_broker::HistoryPage| -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    };

    // Kept: 7..=10 (MAXLEN 4). After 6 is fully covered, on the other node.
    let page = b
        .history("h:c", since(&epoch, 6, 100), history(4))
        .await
        .unwrap();
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![7, 8, 9, 10]);
    assert_eq!(json_of(&page.publications[0].payload), "7");
    assert_eq!(
        (page.position.epoch.as_str(), page.position.offset),
        (epoch.as_str(), 10)
    );
    // Limit: the first two, still recovered (the rest can be read on).
    let page = b
        .history("h:c", since(&epoch, 6, 2), history(4))
        .await
        .unwrap();
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![7, 8]);
    // After 5: message 6 is trimmed.
    let page = b
        .history("h:c", since(&epoch, 5, 100), history(4))
        .await
        .unwrap();
    assert!(!page.recovered && page.publications.is_empty());
    assert_eq!(page.position.offset, 10);
    // At the top: nothing missed. Ahead of it, another epoch, no epoch: not recovered.
    let page = b
        .history("h:c", since(&epoch, 10, 100), history(4))
        .await
        .unwrap();
    assert!(page.recovered && page.publications.is_empty());
    assert!(
        !b.history("h:c", since(&epoch, 11, 10), history(4))
            .await
            .unwrap()
            .recovered
    );
    assert!(
        !b.history("h:c", since("zzzz9999", 9, 10), history(4))
            .await
            .unwrap()
            .recovered
    );
    assert!(
        !b.history("h:c", since("", 9, 10), history(4))
            .await
            .unwrap()
            .recovered
    );
    // Limit 0 still decides `recovered`.
    let page = b
        .history("h:c", since(&epoch, 8, 0), history(4))
        .await
        .unwrap();
    assert!(page.recovered && page.publications.is_empty());
    // No since: the newest `limit`.
    let page = b
        .history(
            "h:c",
            HistoryQuery {
                since: None,
                limit: 2,
            },
            history(4),
        )
        .await
        .unwrap();
    assert_eq!(offsets(&page), vec![9, 10]);

    // Size 0 keeps nothing but offsets still grow.
    a.publish(request("h:none", json("1"), 0)).await.unwrap();
    let pos = a.publish(request("h:none", json("2"), 0)).await.unwrap();
    assert_eq!(pos.offset, 2);
    let page = b
        .history("h:none", since(&pos.epoch, 1, 10), history(0))
        .await
        .unwrap();
    assert!(!page.recovered);
    assert!(
        b.history("h:none", since(&pos.epoch, 2, 10), history(0))
            .await
            .unwrap()
            .recovered
    );

    // Messages older than the history TTL no longer count.
    let short = HistoryOptions {
        size: 10,
        ttl: Duration::from_millis(1500),
    };
    let pos = a
        .publish(PublishRequest {
            history: short,
            ..request("h:ttl", json("1"), 10)
        })
        .await
        .unwrap();
    let page = b
        .history("h:ttl", since(&pos.epoch, 0, 10), short)
        .await
        .unwrap();
    assert!(page.recovered && page.publications.len() == 1);
    tokio::time::sleep(Duration::from_millis(2000)).await; // let the TTL pass
    let page = b
        .history("h:ttl", since(&pos.epoch, 0, 10), short)
        .await
        .unwrap();
    assert!(!page.recovered && page.publications.is_empty());
    assert_eq!(page.position.offset, 1, "the offset outlives the history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_join_leave_across_nodes_and_expiry_of_a_dead_node() {
    let redis = RedisServer::start();
    let (a, mut a_events) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    b.subscribe("p:room").await.unwrap();
    a.subscribe("p:room").await.unwrap();

    a.presence_add("p:room", entry("c1", "a"), true)
        .await
        .unwrap();
    for events in [&mut b_events, &mut a_events] {
        match next_event(events).await {
            BrokerEvent::Join { channel, entry: e } => {
                assert_eq!((&*channel, e), ("p:room", entry("c1", "a")));
            }
            other => panic!("join expected, got {other:?}"),
        }
    }
    // Adding again is no new join; adding without announce is silent.
    a.presence_add("p:room", entry("c1", "a"), true)
        .await
        .unwrap();
    b.presence_add("p:room", entry("c2", "b"), false)
        .await
        .unwrap();
    assert_quiet(&mut b_events).await;
    let everyone = a.presence("p:room").await.unwrap();
    assert_eq!(everyone, vec![entry("c1", "a"), entry("c2", "b")]);

    a.presence_remove("p:room", entry("c1", "a"), true)
        .await
        .unwrap();
    match next_event(&mut b_events).await {
        BrokerEvent::Leave { entry: e, .. } => assert_eq!(e, entry("c1", "a")),
        other => panic!("leave expected, got {other:?}"),
    }
    a.presence_remove("p:room", entry("c1", "a"), true)
        .await
        .unwrap();
    assert_quiet(&mut b_events).await;
    assert_eq!(b.presence("p:room").await.unwrap(), vec![entry("c2", "b")]);

    // Node C refreshes its short-lived entry while alive...
    let ttl = Duration::from_millis(1200);
    let (c, _c_events) = node_with(RedisBrokerConfig {
        presence_ttl: ttl,
        ..config(&redis, "c")
    })
    .await;
    c.presence_add("p:room", entry("c3", "c"), false)
        .await
        .unwrap();
    tokio::time::sleep(ttl * 2).await; // two TTLs pass: only refreshes keep it
    assert!(a
        .presence("p:room")
        .await
        .unwrap()
        .contains(&entry("c3", "c")));
    // ...and its entries expire once it dies without cleaning up.
    drop(c);
    let deadline = Instant::now() + WAIT;
    loop {
        let now = a.presence("p:room").await.unwrap();
        if now == vec![entry("c2", "b")] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead node's entry never expired: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn info(node: &str) -> NodeInfo {
    NodeInfo {
        node: node.into(),
        address: format!("{node}:8080"),
        connections: [("ws".to_string(), 3u64)].into_iter().collect(),
        channels: 2,
        delivered: 10,
        published: 4,
        uptime_secs: 1,
        version: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registry_lists_live_nodes() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis, "a").await;
    let (b, _) = node_with(RedisBrokerConfig {
        node_ttl: Duration::from_millis(500),
        ..config(&redis, "b")
    })
    .await;
    let (c, _) = node(&redis, "c").await;
    a.heartbeat_node(info("a")).await.unwrap();
    b.heartbeat_node(info("b")).await.unwrap();
    c.heartbeat_node(info("c")).await.unwrap();
    assert_eq!(
        a.nodes().await.unwrap(),
        vec![info("a"), info("b"), info("c")]
    );

    // B stops heartbeating: gone after its TTL. C shuts down: gone at once.
    c.shutdown().await;
    assert!(!c.is_healthy());
    assert_eq!(a.nodes().await.unwrap(), vec![info("a"), info("b")]);
    let deadline = Instant::now() + WAIT;
    while a.nodes().await.unwrap() != vec![info("a")] {
        assert!(Instant::now() < deadline, "expired node still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_node() {
    let redis = RedisServer::start();
    let (a, mut a_events) = node(&redis, "a").await;
    let (_b, mut b_events) = node(&redis, "b").await;
    a.broadcast(json(r#"{"notice":"maintenance"}"#))
        .await
        .unwrap();
    a.broadcast(Payload::Binary(Bytes::from_static(b"\x00\xffraw")))
        .await
        .unwrap();
    for events in [&mut a_events, &mut b_events] {
        match next_event(events).await {
            BrokerEvent::Broadcast(p) => assert_eq!(json_of(&p), r#"{"notice":"maintenance"}"#),
            other => panic!("broadcast expected, got {other:?}"),
        }
        match next_event(events).await {
            BrokerEvent::Broadcast(p) => match &*p {
                Payload::Binary(b) => assert_eq!(&b[..], b"\x00\xffraw"),
                other => panic!("binary expected, got {other:?}"),
            },
            other => panic!("broadcast expected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_clearly_without_redis_and_on_bad_config() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let err = RedisBroker::connect(RedisBrokerConfig::new(
        format!("redis://127.0.0.1:{port}"),
        "n",
    ))
    .await
    .err()
    .expect("no redis there");
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = RedisBroker::connect(RedisBrokerConfig::new("http://x", "n"))
        .await
        .err()
        .expect("bad url");
    assert!(matches!(err, BrokerError::Config(_)), "{err:?}");
}

/// What the background publisher saw.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    unavailable: u64,
    slowest_failure: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_and_restarted_empty() {
    let mut redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    b.subscribe("live:feed").await.unwrap();
    a.presence_add("live:feed", entry("c1", "a"), false)
        .await
        .unwrap();
    let before = a
        .publish(request("live:feed", json("0"), 100))
        .await
        .unwrap();
    assert_eq!(next_publication(&mut b_events).await.offset, before.offset);

    // Traffic: A publishes every 10 ms until stopped.
    let stop = tokio_util::sync::CancellationToken::new();
    let traffic = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.is_cancelled() {
                tick.tick().await;
                let started = Instant::now();
                match a.publish(request("live:feed", json("1"), 100)).await {
                    Ok(_) => tally.ok += 1,
                    Err(BrokerError::Unavailable(_)) => {
                        tally.unavailable += 1;
                        tally.slowest_failure = tally.slowest_failure.max(started.elapsed());
                    }
                    Err(other) => panic!("publish during outage: {other:?}"),
                }
            }
            tally
        })
    };
    // Some traffic flows to B first.
    next_publication(&mut b_events).await;

    tokio::task::block_in_place(|| redis.kill());
    let killed = Instant::now();
    wait_until("both nodes see the outage", || {
        !a.is_healthy() && !b.is_healthy()
    })
    .await;
    let noticed = killed.elapsed();
    // Publishing now is refused, quickly.
    let started = Instant::now();
    let refused = a.publish(request("live:feed", json("2"), 100)).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        a.history("live:feed", since(&before.epoch, 0, 10), history(100))
            .await,
        Err(BrokerError::Unavailable(_))
    ));
    let started = Instant::now();
    let refused = b.subscribe("other:channel").await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        b.subscribed_channels(),
        1,
        "a refused subscribe counts nothing"
    );
    let reconnects_before = b.reconnects();
    // Redis stays away for a while: reconnect attempts fail and back off meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!a.is_healthy() && !b.is_healthy());
    assert_eq!(b.reconnects(), reconnects_before);

    tokio::task::block_in_place(|| redis.restart());
    let restarted = Instant::now();
    wait_until("both nodes are healthy again", || {
        a.is_healthy() && b.is_healthy()
    })
    .await;
    println!(
        "outage noticed after {noticed:?}; healthy {:?} after the restart",
        restarted.elapsed()
    );
    assert!(b.reconnects() > reconnects_before);
    assert!(b.last_pubsub_activity().elapsed() < WAIT);

    // B was told it may have missed messages...
    loop {
        match next_event(&mut b_events).await {
            BrokerEvent::Resync => break,
            BrokerEvent::Publication(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.cancel();
    let tally = traffic.await.unwrap();
    println!("publishes during the test: {tally:?}");
    assert!(tally.ok > 0 && tally.unavailable > 0, "{tally:?}");
    assert!(
        tally.slowest_failure < Duration::from_secs(3),
        "refusals must be quick: {tally:?}"
    );

    // ...and delivery resumes without recreating anything, in a new epoch.
    let after = a
        .publish(request("live:feed", json("3"), 100))
        .await
        .unwrap();
    assert_ne!(after.epoch, before.epoch, "empty restart means a new epoch");
    let p = loop {
        let p = next_publication(&mut b_events).await;
        if *p.epoch == *after.epoch && p.offset == after.offset {
            break p;
        }
    };
    assert_eq!(json_of(&p.payload), "3");

    // An old cursor is told it lost messages; a new one recovers.
    let page = b
        .history(
            "live:feed",
            since(&before.epoch, before.offset, 100),
            history(100),
        )
        .await
        .unwrap();
    assert!(!page.recovered && page.publications.is_empty());
    assert_eq!(page.position.epoch, after.epoch);
    let page = b
        .history(
            "live:feed",
            since(&after.epoch, after.offset - 1, 100),
            history(100),
        )
        .await
        .unwrap();
    assert!(page.recovered);
    assert_eq!(page.publications.len(), 1);

    // Presence written before the restart is rewritten by its node.
    let deadline = Instant::now() + WAIT;
    while b.presence("live:feed").await.unwrap() != vec![entry("c1", "a")] {
        assert!(
            Instant::now() < deadline,
            "presence not restored after restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_is_used_and_a_wrong_one_refused() {
    let redis = RedisServer::start_with(Some("s3cret"), false);
    let (a, _) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    b.subscribe("auth:c").await.unwrap();
    a.publish(request("auth:c", json("1"), 10)).await.unwrap();
    assert_eq!(next_publication(&mut b_events).await.offset, 1);
    let wrong = RedisBroker::connect(RedisBrokerConfig {
        url: redis.url().replace("s3cret", "wrong"),
        ..config(&redis, "c")
    })
    .await;
    assert!(wrong.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_password() {
    let redis = RedisServer::start_with(Some("s3cret"), true);
    assert!(redis.url().starts_with("rediss://:s3cret@"));
    let tls = |id: &str| RedisBrokerConfig {
        tls_ca_file: Some(redis.ca_file()),
        ..config(&redis, id)
    };
    let (a, _) = node_with(tls("a")).await;
    let (b, mut b_events) = node_with(tls("b")).await;
    b.subscribe("tls:c").await.unwrap();
    let bytes = Bytes::from_static(b"\x00over tls\xff");
    a.publish(request("tls:c", Payload::Binary(bytes.clone()), 10))
        .await
        .unwrap();
    match &next_publication(&mut b_events).await.payload {
        Payload::Binary(got) => assert_eq!(got, &bytes),
        other => panic!("binary expected, got {other:?}"),
    }
    assert!(a.is_healthy() && b.is_healthy());
    // Without trusting that CA the certificate is refused.
    let untrusted = RedisBroker::connect(config(&redis, "c")).await;
    assert!(untrusted.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_pubsub_connection_resubscribes_every_channel_in_batches() {
    let redis = RedisServer::start();
    let (a, _) = node(&redis, "a").await;
    let (b, mut b_events) = node_with(RedisBrokerConfig {
        subscribe_batch: 64,
        ..config(&redis, "b")
    })
    .await;
    const CHANNELS: usize = 300;
    for i in 0..CHANNELS {
        b.subscribe(&format!("many:{i}")).await.unwrap();
    }
    let before = a.publish(request("many:0", json("0"), 10)).await.unwrap();
    assert_eq!(next_publication(&mut b_events).await.offset, 1);

    // Redis stays up; only the pub/sub connections are cut.
    let killed: i64 = admin(
        &redis,
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
    )
    .await;
    assert!(killed >= 2, "both nodes' pub/sub connections killed");
    match next_event(&mut b_events).await {
        BrokerEvent::Resync => {}
        other => panic!("resync expected, got {other:?}"),
    }
    wait_until("b is healthy", || b.is_healthy()).await;
    // a lost its pub/sub connection too, and refuses publishes until it is back.
    wait_until("a is healthy", || a.is_healthy()).await;
    assert_eq!(b.reconnects(), 1);
    for i in [0, 1, CHANNELS / 2, CHANNELS - 1] {
        assert_eq!(subscribers(&redis, &format!("herald:t:many:{i}")).await, 1);
    }
    let last = format!("many:{}", CHANNELS - 1);
    a.publish(request(&last, json("1"), 10)).await.unwrap();
    let p = next_publication(&mut b_events).await;
    assert_eq!((&*p.channel, p.offset), (last.as_str(), 1));
    // History survived: the same epoch, and recovery works across the cut.
    let after = a.publish(request("many:0", json("2"), 10)).await.unwrap();
    assert_eq!(after.epoch, before.epoch);
    let page = b
        .history("many:0", since(&before.epoch, 1, 10), history(10))
        .await
        .unwrap();
    assert!(page.recovered);
    assert_eq!(page.publications.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_probe_marks_unhealthy_until_redis_answers_again() {
    let redis = RedisServer::start();
    let (a, _) = node_with(RedisBrokerConfig {
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(400),
        ..config(&redis, "a")
    })
    .await;
    assert!(a.is_healthy());
    // Writes (PUBLISH included) hang for 3 s: the probe cannot come back.
    let paused = Instant::now();
    let _: String = admin(
        &redis,
        redis::cmd("CLIENT").arg("PAUSE").arg(3000).arg("WRITE"),
    )
    .await;
    wait_until("the probe fails", || !a.is_healthy()).await;
    let noticed = paused.elapsed();
    assert!(
        noticed < Duration::from_millis(2500),
        "noticed after {noticed:?}"
    );
    // A publish cannot be applied now: refused within the command timeout, not acked.
    let started = Instant::now();
    let refused = a.publish(request("paused:c", json("1"), 10)).await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // Redis answers again: healthy without recreating anything.
    wait_until("healthy again", || a.is_healthy()).await;
    assert!(paused.elapsed() >= Duration::from_millis(2500));
    assert!(a.reconnects() >= 1);
    a.publish(request("paused:c", json("2"), 10)).await.unwrap();
}
