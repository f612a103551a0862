//! Nodes of a Redis cluster for this crate's Redis-only tests (`redis_broker.rs`,
//! `redis_outages.rs`): a real `redis-server` from `herald_testkit`, one `RedisBroker` per node
//! with an event sink the test owns, and direct questions to Redis (`PUBSUB NUMSUB`, ...).
//!
//! Each test binary uses a different part of it.

#![allow(dead_code)]

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::{
    Broker, BrokerEvent, BrokerEvents, HistoryOptions, HistoryQuery, Payload, PublishRequest,
};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use herald_testkit::redis::RedisServer;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// Generous: the machine has two cores shared with builds.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

struct Recorder(mpsc::UnboundedSender<BrokerEvent>);

impl BrokerEvents for Recorder {
    fn on_event(&self, event: BrokerEvent) {
        let _ = self.0.send(event);
    }
}

/// A node's events. Owns the sink: the broker only holds a `Weak` to it.
pub(crate) struct Events {
    _sink: Arc<Recorder>,
    rx: mpsc::UnboundedReceiver<BrokerEvent>,
}

impl Events {
    async fn recv(&mut self) -> Option<BrokerEvent> {
        self.rx.recv().await
    }
}

pub(crate) fn config(redis: &RedisServer, node: &str) -> RedisBrokerConfig {
    RedisBrokerConfig {
        unsubscribe_delay: Duration::from_millis(100),
        probe_interval: Duration::from_millis(300),
        probe_timeout: Duration::from_secs(2),
        reconnect_max: Duration::from_millis(500),
        command_timeout: Duration::from_secs(1),
        ..RedisBrokerConfig::new(redis.url(), node)
    }
}

pub(crate) async fn node_with(config: RedisBrokerConfig) -> (Arc<RedisBroker>, Events) {
    // `RUST_LOG=herald_broker=debug` shows the broker's side of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let broker = RedisBroker::connect(config)
        .await
        .expect("connect to redis");
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Arc::new(Recorder(tx));
    let weak = Arc::downgrade(&sink);
    broker.attach(weak as Weak<dyn BrokerEvents>);
    (broker, Events { _sink: sink, rx })
}

pub(crate) async fn node(redis: &RedisServer, id: &str) -> (Arc<RedisBroker>, Events) {
    node_with(config(redis, id)).await
}

pub(crate) fn history(size: usize) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl: Duration::from_secs(60),
    }
}

pub(crate) fn json(text: &str) -> Payload {
    Payload::Json(RawValue::from_string(text.to_string()).unwrap())
}

pub(crate) fn request(channel: &str, payload: Payload, size: usize) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        payload,
        from: None,
        user: None,
        skip_self: false,
        history: history(size),
    }
}

pub(crate) fn json_of(payload: &Payload) -> String {
    match payload {
        Payload::Json(raw) => raw.get().to_string(),
        Payload::Binary(_) => panic!("json payload expected"),
    }
}

pub(crate) async fn next_event(events: &mut Events) -> BrokerEvent {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event within the timeout")
        .expect("event channel open")
}

/// The next publication, skipping anything else (a `Resync`, joins...).
pub(crate) async fn next_publication(events: &mut Events) -> Arc<herald_broker::Publication> {
    loop {
        if let BrokerEvent::Publication(p) = next_event(events).await {
            return p;
        }
    }
}

pub(crate) async fn assert_quiet(events: &mut Events) {
    if let Ok(Some(event)) = tokio::time::timeout(QUIET, events.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}

pub(crate) async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn entry(client: &str, node: &str) -> PresenceEntry {
    PresenceEntry {
        client: client.into(),
        user: format!("user-{client}"),
        node: node.into(),
        info: None,
    }
}

pub(crate) fn since(epoch: &str, offset: u64, limit: usize) -> HistoryQuery {
    HistoryQuery {
        since: Some(StreamPosition {
            epoch: epoch.into(),
            offset,
        }),
        limit,
        max_bytes: 0,
    }
}

/// Runs one command on a fresh connection of its own.
pub(crate) async fn admin<T: redis::FromRedisValue>(
    redis: &RedisServer,
    command: &redis::Cmd,
) -> T {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    command.query_async(&mut con).await.unwrap()
}

/// How many connections are SUBSCRIBEd to `topic`, asked of Redis directly.
pub(crate) async fn subscribers(redis: &RedisServer, topic: &str) -> i64 {
    let (_, count): (String, i64) =
        admin(redis, redis::cmd("PUBSUB").arg("NUMSUB").arg(topic)).await;
    count
}
