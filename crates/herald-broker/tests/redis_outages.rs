//! The Redis broker through outages, against a real `redis-server` (started on a free port by
//! `herald_testkit`): Redis killed and restarted empty, the pub/sub connections cut, and a
//! Redis that stops answering the liveness probe. Each node must notice, refuse quickly,
//! reconnect, resubscribe and tell its edge to resync.

mod redis_nodes;

use std::time::{Duration, Instant};

use herald_broker::redis::RedisBrokerConfig;
use herald_broker::{Broker, BrokerError, BrokerEvent};
use herald_testkit::redis::RedisServer;
use redis_nodes::*;

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

/// Redis went back without dropping a connection (a restore from an older snapshot stands for
/// it here: the counter is set back by hand): the next publish comes from a node that never
/// saw the newer offsets, so it reuses one. The subscriber's node sees a live offset at or
/// below one it delivered, does not deliver it, starts a new epoch and tells its readers to
/// resync; they learn `recovered: false` instead of dropping the new message as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_offset_that_goes_back_fences_the_channel() {
    let redis = RedisServer::start();
    let (a, _a_events) = node(&redis, "a").await;
    let (b, mut b_events) = node(&redis, "b").await;
    b.subscribe("restored").await.unwrap();
    let mut epoch = String::new();
    for n in 1..=5 {
        let at = a
            .publish(request("restored", json(&n.to_string()), 10))
            .await
            .unwrap();
        epoch = at.epoch;
        assert_eq!(next_publication(&mut b_events).await.offset, n);
    }
    // The restored state: the counter at 2 and a history that ends there too.
    let _: i64 = admin(
        &redis,
        redis::cmd("HSET")
            .arg("herald:m:{restored}")
            .arg("o")
            .arg(2),
    )
    .await;
    let _: i64 = admin(&redis, redis::cmd("DEL").arg("herald:h:{restored}")).await;
    // A node with no marks of the channel publishes: offset 3 again, in the same epoch.
    let (c, _c_events) = node(&redis, "c").await;
    let reused = c
        .publish(request("restored", json("\"new 3\""), 10))
        .await
        .unwrap();
    assert_eq!((reused.epoch.as_str(), reused.offset), (epoch.as_str(), 3));
    // b drops it (it already delivered another 3) and fences.
    loop {
        match next_event(&mut b_events).await {
            BrokerEvent::Resync => break,
            BrokerEvent::Publication(p) => panic!("delivered a reused offset: {p:?}"),
            _ => {}
        }
    }
    assert_eq!(b.epochs_fenced(), 1);
    let page = b
        .history("restored", since(&epoch, 5, 10), history(10))
        .await
        .unwrap();
    assert!(!page.recovered);
    assert_ne!(page.position.epoch, epoch);
    let next = c
        .publish(request("restored", json("\"after\""), 10))
        .await
        .unwrap();
    assert_ne!(next.epoch, epoch);
    assert_eq!(next.offset, 1);
    let p = next_publication(&mut b_events).await;
    assert_eq!((p.epoch.to_string(), p.offset), (next.epoch, 1));
}

/// A node's own publish carries its mark: when Redis went back below an offset the node has
/// seen, the publish itself starts a new epoch instead of reusing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_below_the_nodes_mark_starts_a_new_epoch() {
    let redis = RedisServer::start();
    let (a, mut a_events) = node(&redis, "a").await;
    a.subscribe("marked").await.unwrap();
    let mut epoch = String::new();
    for n in 1..=4 {
        epoch = a
            .publish(request("marked", json(&n.to_string()), 10))
            .await
            .unwrap()
            .epoch;
        assert_eq!(next_publication(&mut a_events).await.offset, n);
    }
    let _: i64 = admin(
        &redis,
        redis::cmd("HSET").arg("herald:m:{marked}").arg("o").arg(1),
    )
    .await;
    let at = a
        .publish(request("marked", json("\"new\""), 10))
        .await
        .unwrap();
    assert_ne!(at.epoch, epoch, "a new epoch, not offset 2 again");
    assert_eq!(at.offset, 1);
    assert_eq!(a.epochs_fenced(), 1);
    let p = next_publication(&mut a_events).await;
    assert_eq!((p.epoch.to_string(), p.offset), (at.epoch, 1));
}
