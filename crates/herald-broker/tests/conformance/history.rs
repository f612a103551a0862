//! History: positions and epochs, windows by size and by TTL, `since`, `limit` and
//! `recovered`.

use herald_broker::{HistoryOptions, HistoryQuery, PublishRequest};

use super::{json, json_of, keep, offsets, request, since, Check, Cluster};

/// A channel never published to is at `{"epoch": "", "offset": 0}` (reading it creates
/// nothing, so there is no epoch yet). A reader holding that position gets every message from
/// offset 1 of whatever epoch the first publish makes, `recovered`, on any node; once history no
/// longer holds offset 1 it is `recovered: false` with nothing returned.
pub(crate) async fn empty_channel_is_at_no_epoch_and_a_reader_there_gets_everything(
    cluster: &impl Cluster,
) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    for query in [HistoryQuery::default(), since("", 0, 10)] {
        let page = b.history("fresh", query, keep(4)).await.unwrap();
        assert_eq!(
            (page.position.epoch.as_str(), page.position.offset),
            ("", 0)
        );
        assert!(page.recovered && page.publications.is_empty());
    }
    // A foreign epoch, or an offset no channel at "" can have: not recovered.
    for (epoch, offset) in [("zzzz9999", 0), ("", 1)] {
        let page = b.history("fresh", since(epoch, offset, 10), keep(4)).await;
        let page = page.unwrap();
        assert!(!page.recovered, "since {epoch:?}/{offset}: {page:?}");
    }
    // Subscribing makes no epoch either.
    b.subscribe("fresh").await.unwrap();
    let page = b.history("fresh", HistoryQuery::default(), keep(4)).await;
    assert_eq!(page.unwrap().position.epoch, "");

    let first = a
        .publish(request("fresh", json("1"), keep(4)))
        .await
        .unwrap();
    assert!(!first.epoch.is_empty(), "the first publish makes the epoch");
    assert_eq!(first.offset, 1);
    for i in 2..=3 {
        a.publish(request("fresh", json(&i.to_string()), keep(4)))
            .await
            .unwrap();
    }
    let page = b.history("fresh", since("", 0, 10), keep(4)).await.unwrap();
    assert!(page.recovered, "{page:?}");
    assert_eq!(offsets(&page), vec![1, 2, 3]);
    assert_eq!(json_of(&page.publications[0].payload), "1");
    assert_eq!(
        (page.position.epoch.as_str(), page.position.offset),
        (first.epoch.as_str(), 3),
        "the answer names the epoch the reader now follows"
    );
    // Paged: the first page, still recovered.
    let page = b.history("fresh", since("", 0, 2), keep(4)).await.unwrap();
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![1, 2]);

    // History keeps 4: after two more, offset 1 is gone and "" / 0 can no longer be covered.
    for i in 4..=5 {
        a.publish(request("fresh", json(&i.to_string()), keep(4)))
            .await
            .unwrap();
    }
    let page = b.history("fresh", since("", 0, 10), keep(4)).await.unwrap();
    assert!(!page.recovered && page.publications.is_empty(), "{page:?}");
    assert_eq!(page.position.offset, 5);
    b.unsubscribe("fresh").await.unwrap();
}

/// Size-bounded history: after a position inside the window everything is returned (up to
/// `limit`, still `recovered`); outside it, ahead of the top, or in another epoch, nothing and
/// `recovered: false`; without `since`, the newest `limit`.
pub(crate) async fn history_window_by_size_with_since_and_limit(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut epoch = String::new();
    for i in 1..=10u64 {
        let pos = a.publish(request("h", json(&i.to_string()), keep(4))).await;
        let pos = pos.unwrap();
        assert_eq!(pos.offset, i);
        epoch = pos.epoch;
    }
    let read = |query: HistoryQuery| {
        let b = b.clone();
        async move { b.history("h", query, keep(4)).await.unwrap() }
    };

    // Kept: 7..=10. After 6 is fully covered, on the other node.
    let page = read(since(&epoch, 6, 100)).await;
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![7, 8, 9, 10]);
    assert_eq!(json_of(&page.publications[0].payload), "7");
    assert_eq!(
        (page.position.epoch.as_str(), page.position.offset),
        (epoch.as_str(), 10)
    );
    // Limit: the first two, still recovered (the rest can be read on).
    let page = read(since(&epoch, 6, 2)).await;
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![7, 8]);
    // Limit 0 only asks whether the position is covered.
    let page = read(since(&epoch, 8, 0)).await;
    assert!(page.recovered && page.publications.is_empty());
    // After 5: message 6 is trimmed. Nothing, not a page with a gap.
    let page = read(since(&epoch, 5, 100)).await;
    assert!(!page.recovered && page.publications.is_empty());
    assert_eq!(page.position.offset, 10);
    // At the top: nothing missed.
    let page = read(since(&epoch, 10, 100)).await;
    assert!(page.recovered && page.publications.is_empty());
    // An empty epoch (a position taken before the channel had one) reads the current epoch.
    let page = read(since("", 8, 100)).await;
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![9, 10]);
    // Ahead of the top, another epoch, an empty one past what history holds: not recovered,
    // nothing returned.
    for (epoch, offset) in [(epoch.as_str(), 11), ("zzzz9999", 9), ("", 5), ("", 11)] {
        let page = read(since(epoch, offset, 10)).await;
        assert!(
            !page.recovered && page.publications.is_empty(),
            "since {epoch:?}/{offset}: {page:?}"
        );
        assert_eq!(page.position.offset, 10);
    }
    // No since: the newest `limit`.
    let page = read(HistoryQuery {
        since: None,
        limit: 2,
        max_bytes: 0,
    })
    .await;
    assert_eq!(offsets(&page), vec![9, 10]);
}

/// History size 0 keeps nothing, but offsets still grow and a reader at the top is fine.
pub(crate) async fn history_size_zero_keeps_nothing_but_offsets_grow(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    a.publish(request("none", json("1"), keep(0)))
        .await
        .unwrap();
    let pos = a.publish(request("none", json("2"), keep(0))).await;
    let pos = pos.unwrap();
    assert_eq!(pos.offset, 2);
    let page = a.history("none", since(&pos.epoch, 1, 10), keep(0)).await;
    let page = page.unwrap();
    assert!(!page.recovered && page.publications.is_empty());
    let page = a.history("none", since(&pos.epoch, 2, 10), keep(0)).await;
    assert!(page.unwrap().recovered);
}

/// Messages older than the history TTL are no longer served nor counted: `recovered: false`
/// after them, while the channel's epoch and offset outlive them.
pub(crate) async fn history_window_by_ttl(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let short = HistoryOptions {
        size: 10,
        ttl: cluster.short_ttl(),
    };
    let pos = a
        .publish(PublishRequest {
            history: short,
            ..request("ttl", json("1"), short)
        })
        .await
        .unwrap();
    let page = b.history("ttl", since(&pos.epoch, 0, 10), short).await;
    let page = page.unwrap();
    assert!(page.recovered);
    assert_eq!(offsets(&page), vec![1]);

    let reader = b.clone();
    let epoch = pos.epoch.clone();
    let expired: Check = Box::new(move || {
        let (b, epoch) = (reader.clone(), epoch.clone());
        Box::pin(async move {
            let page = b.history("ttl", since(&epoch, 0, 10), short).await;
            !page.unwrap().recovered
        })
    });
    cluster.outlive(short.ttl, expired).await;

    let page = b.history("ttl", since(&pos.epoch, 0, 10), short).await;
    let page = page.unwrap();
    assert!(!page.recovered && page.publications.is_empty());
    assert_eq!(
        (page.position.epoch.as_str(), page.position.offset),
        (pos.epoch.as_str(), 1),
        "the epoch and offset outlive the history"
    );
    let newest = HistoryQuery {
        since: None,
        limit: 10,
        max_bytes: 0,
    };
    let page = b.history("ttl", newest, short).await.unwrap();
    assert!(
        page.publications.is_empty(),
        "expired messages are not served"
    );
    let page = b.history("ttl", since(&pos.epoch, 1, 10), short).await;
    assert!(
        page.unwrap().recovered,
        "a reader at the top missed nothing"
    );
}

/// `max_bytes` bounds a page: after a position, the oldest publications that fit (at least one);
/// without one, the newest that fit. A reader pages through with no gap and no duplicate.
pub(crate) async fn history_pages_by_bytes(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut epoch = String::new();
    let body = |i: u64| json(&format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(990)));
    for i in 1..=10u64 {
        epoch = a
            .publish(request("pb", body(i), keep(100)))
            .await
            .unwrap()
            .epoch;
    }
    let page = |since: Option<u64>, max_bytes: usize| {
        let b = b.clone();
        let epoch = epoch.clone();
        async move {
            let query = HistoryQuery {
                since: since.map(|o| herald_protocol::StreamPosition { epoch, offset: o }),
                limit: 100,
                max_bytes,
            };
            b.history("pb", query, keep(100)).await.unwrap()
        }
    };
    // About 1 KB each: 3.5 KB holds three.
    let first = page(Some(0), 3500).await;
    assert!(first.recovered);
    assert_eq!(offsets(&first), vec![1, 2, 3]);
    assert_eq!(
        first.position.offset, 10,
        "the position is still the newest"
    );
    let newest = page(None, 3500).await;
    assert_eq!(offsets(&newest), vec![8, 9, 10]);
    // A bound smaller than one message still returns one: a reader always progresses.
    assert_eq!(offsets(&page(Some(4), 10).await), vec![5]);
    // Paging through: every offset once, in order.
    let mut seen = Vec::new();
    let mut at = 0;
    while at < 10 {
        let p = page(Some(at), 2500).await;
        assert!(p.recovered && !p.publications.is_empty());
        seen.extend(offsets(&p));
        at = *seen.last().unwrap();
    }
    assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
    // No bound: everything.
    assert_eq!(offsets(&page(Some(0), 0).await).len(), 10);
}
