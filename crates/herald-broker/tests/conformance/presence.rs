//! Presence (members, joins and leaves) and the node registry.

use herald_broker::BrokerEvent;

use super::{attach, entry, info, Cluster};

/// Presence lists every member across nodes, sorted by client; an announced add or remove is
/// told once, only when the member really came or went, and only to subscribed nodes.
pub(crate) async fn presence_lists_members_and_announces_join_and_leave_once(
    cluster: &impl Cluster,
) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let mut a_events = attach(&a);
    let mut b_events = attach(&b);

    // Nobody subscribed to "lobby": the join is recorded but not delivered.
    a.presence_add("lobby", entry("c0", "a"), true)
        .await
        .unwrap();
    a_events.assert_quiet().await;
    b_events.assert_quiet().await;
    assert_eq!(b.presence("lobby").await.unwrap(), vec![entry("c0", "a")]);

    b.subscribe("room").await.unwrap();
    a.presence_add("room", entry("c1", "a"), true)
        .await
        .unwrap();
    match b_events.next().await {
        BrokerEvent::Join { channel, entry: e } => {
            assert_eq!((&*channel, e), ("room", entry("c1", "a")));
        }
        other => panic!("join expected, got {other:?}"),
    }
    // Adding again is no new join; adding without announce is silent.
    a.presence_add("room", entry("c1", "a"), true)
        .await
        .unwrap();
    b.presence_add("room", entry("c2", "b"), false)
        .await
        .unwrap();
    b_events.assert_quiet().await;
    let everyone = vec![entry("c1", "a"), entry("c2", "b")];
    assert_eq!(a.presence("room").await.unwrap(), everyone);
    assert_eq!(b.presence("room").await.unwrap(), everyone);

    a.presence_remove("room", entry("c1", "a"), true)
        .await
        .unwrap();
    match b_events.next().await {
        BrokerEvent::Leave { channel, entry: e } => {
            assert_eq!((&*channel, e), ("room", entry("c1", "a")));
        }
        other => panic!("leave expected, got {other:?}"),
    }
    // Removing again is no new leave; removing without announce is silent.
    a.presence_remove("room", entry("c1", "a"), true)
        .await
        .unwrap();
    assert_eq!(b.presence("room").await.unwrap(), vec![entry("c2", "b")]);
    b.presence_remove("room", entry("c2", "b"), false)
        .await
        .unwrap();
    b_events.assert_quiet().await;
    assert!(a.presence("room").await.unwrap().is_empty());
    assert_eq!(a.presence("lobby").await.unwrap(), vec![entry("c0", "a")]);
}

/// Every node that heartbeats is listed (by id), once, with its latest entry.
pub(crate) async fn node_registry_lists_every_heartbeating_node(cluster: &impl Cluster) {
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    assert!(a.nodes().await.unwrap().is_empty());
    b.heartbeat_node(info("b")).await.unwrap();
    a.heartbeat_node(info("a")).await.unwrap();
    assert_eq!(a.nodes().await.unwrap(), vec![info("a"), info("b")]);
    let newer = super::NodeInfo {
        uptime_secs: 99,
        channels: 7,
        ..info("a")
    };
    a.heartbeat_node(newer.clone()).await.unwrap();
    assert_eq!(b.nodes().await.unwrap(), vec![newer, info("b")]);
}
