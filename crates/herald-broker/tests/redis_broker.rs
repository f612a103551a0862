//! What only the Redis broker does, against a real `redis-server` (started on a free port by
//! `herald_testkit`): several brokers in one process stand for several nodes.
//!
//! The `Broker` contract itself (order, offsets, history, presence, registry, broadcast,
//! subscriptions, `Resync`) is checked by the conformance suite (`conformance_redis.rs`);
//! Redis outages by `redis_outages.rs`. This file keeps what Redis's TTLs and configuration
//! decide: the delayed wire UNSUBSCRIBE, presence refresh and expiry, registry expiry,
//! connection errors, passwords and TLS.

mod redis_nodes;

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::{Broker, BrokerError, NodeInfo, Payload};
use herald_testkit::redis::RedisServer;
use redis_nodes::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_unsubscribe_waits_the_configured_delay_and_none_by_default() {
    let redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    // Embedded without the edge hub: a delay of its own.
    let delay = Duration::from_secs(2);
    let (b, mut b_events) = node_with(RedisBrokerConfig {
        unsubscribe_delay: delay,
        ..config(&redis, "b")
    })
    .await;
    let topic = "herald:t:room:1";
    b.subscribe("room:1").await.unwrap();
    b.subscribe("room:1").await.unwrap();
    assert_eq!(subscribers(&redis, topic).await, 1);
    b.unsubscribe("room:1").await.unwrap();
    b.unsubscribe("room:1").await.unwrap();
    let released = Instant::now();
    // Within the delay: still SUBSCRIBEd on the wire, but nothing reaches the edge.
    assert_eq!(subscribers(&redis, topic).await, 1);
    assert_eq!(b.subscribed_channels(), 0);
    a.publish(request("room:1", json("1"), 0)).await.unwrap();
    assert_quiet(&mut b_events).await;
    let deadline = Instant::now() + delay + WAIT;
    while subscribers(&redis, topic).await != 0 {
        assert!(Instant::now() < deadline, "UNSUBSCRIBE never reached redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released.elapsed() >= delay, "unsubscribed before the delay");

    // The default (the edge's hub owns the delay): unsubscribed at the next batch.
    let (c, _c_events) = node_with(RedisBrokerConfig {
        unsubscribe_delay: RedisBrokerConfig::default().unsubscribe_delay,
        ..config(&redis, "c")
    })
    .await;
    c.subscribe("room:2").await.unwrap();
    assert_eq!(subscribers(&redis, "herald:t:room:2").await, 1);
    c.unsubscribe("room:2").await.unwrap();
    let released = Instant::now();
    let deadline = released + WAIT;
    while subscribers(&redis, "herald:t:room:2").await != 0 {
        assert!(Instant::now() < deadline, "UNSUBSCRIBE never reached redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = released.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "no delay by default, took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_refreshed_while_a_node_lives_and_expires_when_it_dies() {
    let redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    a.presence_add("p:room", entry("c1", "a"), false)
        .await
        .unwrap();
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
    tokio::time::sleep(ttl * 2).await; // two TTLs of Redis's clock pass: only refreshes keep it
    assert_eq!(
        a.presence("p:room").await.unwrap(),
        vec![entry("c1", "a"), entry("c3", "c")]
    );
    // ...and its entries expire once it dies without cleaning up.
    drop(c);
    let deadline = Instant::now() + WAIT;
    loop {
        let now = a.presence("p:room").await.unwrap();
        if now == vec![entry("c1", "a")] {
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
async fn node_registry_forgets_expired_and_shut_down_nodes() {
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
