//! Live delivery: offsets and order, what a publication carries, subscriptions, broadcasts,
//! the sink the broker must not own, and `Resync` after a lost subscription.

use std::time::Duration;

use bytes::Bytes;
use herald_broker::{BrokerError, BrokerEvent, Payload, PublishRequest};

use super::{
    attach, entry, json, json_of, keep, offsets, request, since, Cluster, Interrupt, WAIT,
};

/// Offsets grow by exactly one per publish, whoever publishes concurrently, and every
/// subscribed node gets the events in offset order with no gap; another channel counts alone.
pub(crate) async fn offsets_grow_by_one_and_events_follow_offset_order(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut a_events = attach(&a);
    let mut b_events = attach(&b);
    b.subscribe("order").await.unwrap();
    a.subscribe("order").await.unwrap();

    let mut tasks = Vec::new();
    for t in 0..4 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25 {
                let body = format!(r#"{{"t":{t},"i":{i}}}"#);
                acked.push(a.publish(request("order", json(&body), keep(1000))).await);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap().into_iter().map(Result::unwrap));
    }
    let epoch = acked[0].epoch.clone();
    assert!(acked.iter().all(|p| p.epoch == epoch), "one epoch");
    let mut acked: Vec<u64> = acked.iter().map(|p| p.offset).collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=100).collect::<Vec<u64>>(), "+1 per publish");

    for events in [&mut b_events, &mut a_events] {
        for expected in 1..=100u64 {
            let p = events.publication().await;
            assert_eq!(p.offset, expected, "offset order, no gap");
            assert_eq!((&*p.channel, &*p.epoch), ("order", epoch.as_str()));
            assert!(p.ts_ms > 1_600_000_000_000, "a Unix millisecond time");
        }
    }
    // Another channel has its own offsets, and nobody subscribed to it hears of it.
    let other = a.publish(request("order:other", json("1"), keep(10))).await;
    assert_eq!(other.unwrap().offset, 1);
    b_events.assert_quiet().await;
}

/// Binary and JSON bodies, the sender and `skip_self` arrive as published, live and from
/// history.
pub(crate) async fn publications_arrive_as_published(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut b_events = attach(&b);
    b.subscribe("bin").await.unwrap();

    let bytes: Vec<u8> = (0..=255u8).rev().chain(*b"|p|:\r\n\0").collect();
    a.publish(PublishRequest {
        from: Some("client-7".into()),
        user: Some("alice".into()),
        skip_self: true,
        ..request("bin", Payload::Binary(Bytes::from(bytes.clone())), keep(10))
    })
    .await
    .unwrap();
    let text = r#"{"emoji":"\u00e9 ✓","n":[1,2.5,null],"s":"a|b:c"}"#;
    a.publish(request("bin", json(text), keep(10)))
        .await
        .unwrap();

    let live = [b_events.publication().await, b_events.publication().await];
    let page = b
        .history("bin", since(&live[0].epoch, 0, 10), keep(10))
        .await
        .unwrap();
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![1, 2]);
    for (first, second) in [
        (&live[0], &live[1]),
        (&page.publications[0], &page.publications[1]),
    ] {
        match &first.payload {
            Payload::Binary(got) => assert_eq!(&got[..], &bytes[..]),
            other => panic!("binary expected, got {other:?}"),
        }
        assert_eq!(first.from.as_deref(), Some("client-7"));
        assert_eq!(first.user.as_deref(), Some("alice"));
        assert!(first.skip_self);
        assert_eq!(json_of(&second.payload), text, "json bytes unchanged");
        assert_eq!(second.from, None);
        assert!(!second.skip_self);
    }
}

/// Subscriptions are counted: delivery goes on until the last reference is gone, stops
/// after it, and comes back with the next subscribe (offsets went on meanwhile).
pub(crate) async fn unsubscribe_stops_delivery_after_the_last_reference(cluster: &impl Cluster) {
    let x = cluster.node("x").await;
    let mut events = attach(&x);
    let publish = |n: u64| {
        let x = x.clone();
        async move {
            let body = n.to_string();
            let pos = x.publish(request("sub", json(&body), keep(10))).await;
            assert_eq!(pos.unwrap().offset, n);
        }
    };
    // Not subscribed yet: nothing.
    publish(1).await;
    events.assert_quiet().await;

    x.subscribe("sub").await.unwrap();
    x.subscribe("sub").await.unwrap();
    publish(2).await;
    assert_eq!(json_of(&events.publication().await.payload), "2");
    x.unsubscribe("sub").await.unwrap();
    publish(3).await;
    assert_eq!(
        events.publication().await.offset,
        3,
        "one reference is left"
    );

    x.unsubscribe("sub").await.unwrap();
    publish(4).await;
    events.assert_quiet().await;

    x.subscribe("sub").await.unwrap();
    publish(5).await;
    assert_eq!(events.publication().await.offset, 5);
    // A stray unsubscribe is harmless and takes nothing from "sub".
    x.unsubscribe("never:subscribed").await.unwrap();
    publish(6).await;
    assert_eq!(events.publication().await.offset, 6);
}

/// A broadcast reaches every node's sink, in order, with no subscription needed.
pub(crate) async fn broadcast_reaches_every_node(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut a_events = attach(&a);
    let mut b_events = attach(&b);
    a.broadcast(json(r#"{"notice":"maintenance"}"#))
        .await
        .unwrap();
    a.broadcast(Payload::Binary(Bytes::from_static(b"\x00\xffraw")))
        .await
        .unwrap();
    for events in [&mut a_events, &mut b_events] {
        match events.next().await {
            BrokerEvent::Broadcast(p) => assert_eq!(json_of(&p), r#"{"notice":"maintenance"}"#),
            other => panic!("broadcast expected, got {other:?}"),
        }
        match events.next().await {
            BrokerEvent::Broadcast(p) => match &*p {
                Payload::Binary(b) => assert_eq!(&b[..], b"\x00\xffraw"),
                other => panic!("binary expected, got {other:?}"),
            },
            other => panic!("broadcast expected, got {other:?}"),
        }
    }
}

/// The broker delivers through the `Weak` it was given and never keeps the sink alive; once
/// the sink is gone its events are dropped and the broker works on.
pub(crate) async fn the_broker_never_owns_its_sink(cluster: &impl Cluster) {
    let x = cluster.node("x").await;
    let mut events = attach(&x);
    x.subscribe("own").await.unwrap();
    x.publish(request("own", json("1"), keep(10)))
        .await
        .unwrap();
    assert_eq!(events.publication().await.offset, 1);

    let queued = events.drop_and_drain().await;
    assert!(queued.is_empty(), "nothing else was delivered: {queued:?}");
    let pos = x.publish(request("own", json("2"), keep(10))).await;
    assert_eq!(pos.unwrap().offset, 2);
    x.broadcast(json("3")).await.unwrap();
    x.presence_add("own", entry("c1", "x"), true).await.unwrap();
    assert_eq!(x.presence("own").await.unwrap(), vec![entry("c1", "x")]);
}

/// After its subscription connection was lost and is back, a node says so with `Resync`,
/// still receives the channels it had, and history after its last position has everything.
#[allow(dead_code)] // only for clusters that can be interrupted
pub(crate) async fn resync_after_a_lost_subscription(cluster: &impl Interrupt) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut b_events = attach(&b);
    b.subscribe("resync").await.unwrap();
    let first = a.publish(request("resync", json("1"), keep(10))).await;
    let first = first.unwrap();
    assert_eq!(b_events.publication().await.offset, first.offset);

    cluster.interrupt().await;
    match b_events.next().await {
        BrokerEvent::Resync => {}
        other => panic!("resync expected, got {other:?}"),
    }
    // The publisher may be reconnecting too: it refuses until it is back (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    let second = loop {
        match a.publish(request("resync", json("2"), keep(10))).await {
            Ok(pos) => break pos,
            Err(BrokerError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("publish after reconnect: {err:?}"),
        }
    };
    assert_eq!(
        (second.epoch.as_str(), second.offset),
        (first.epoch.as_str(), 2)
    );
    assert_eq!(b_events.publication().await.offset, 2, "still subscribed");
    let page = b
        .history("resync", since(&first.epoch, first.offset, 10), keep(10))
        .await
        .unwrap();
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![2]);
}
