//! Two edges over a real Redis Cluster (six redis-servers: 3 masters, 3 replicas, started by
//! `herald_testkit`), selected with `redis_cluster` (`--redis-cluster`): a channel on every
//! shard delivers across edges over WebSocket and SSE, in offset order, and presence joins
//! (published from a Lua script with SPUBLISH) cross edges too.

mod common;

use common::*;
use herald_edge::config::NamespaceConfig;
use herald_edge::{Edge, EdgeConfig};
use herald_testkit::redis_cluster::RedisCluster;
use serde_json::json;

fn node_config(cluster: &RedisCluster, id: &str) -> EdgeConfig {
    let mut c = config();
    c.node_id = id.into();
    // Plain `host:port` seeds, as given to `--redis-cluster`, made URLs as the CLI does.
    c.redis_cluster = cluster
        .addresses()
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    c.namespaces.insert(
        "chat".into(),
        NamespaceConfig {
            join_leave: true,
            ..Default::default()
        },
    );
    c
}

/// One channel name per master, each hashing into that master's slots.
fn channel_per_shard(cluster: &RedisCluster) -> Vec<String> {
    let masters = cluster.master_slot_ranges();
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    masters
        .iter()
        .map(|ranges| {
            (0..10_000)
                .map(|i| format!("x:s{i}"))
                .find(|name| {
                    let slot = cluster.keyslot(&format!("{{{name}}}"));
                    ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
                })
                .expect("a channel on every master")
        })
        .collect()
}

async fn two(cluster: &RedisCluster) -> (Edge, Edge) {
    (
        start(node_config(cluster, "e1")).await,
        start(node_config(cluster, "e2")).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_on_every_shard_delivers_across_edges() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let channels = tokio::task::block_in_place(|| channel_per_shard(&cluster));
    let (e1, e2) = two(&cluster).await;

    let mut publisher = connect(&e1).await;
    let mut ws = connect(&e2).await;
    for channel in &channels {
        ws.subscribe(channel).await;
    }
    let mut sse_c = sse(&e1, &format!("channel={}", channels[1]), None).await;
    sse_c.next_named("subscribed").await;

    for round in 1..=3u64 {
        for channel in &channels {
            let ack = publisher
                .publish(channel, json!(format!("{channel}#{round}")))
                .await;
            assert_eq!(ack["offset"], round, "{channel}: {ack}");
            let m = ws.next_op("message").await;
            assert_eq!(
                (m["channel"].clone(), m["offset"].clone(), m["data"].clone()),
                (
                    json!(channel),
                    json!(round),
                    json!(format!("{channel}#{round}"))
                )
            );
        }
        let event = sse_c.next_message().await.json();
        assert_eq!(event["data"], json!(format!("{}#{round}", channels[1])));
    }
    // HTTP API publish on the other edge reaches the WebSocket too.
    let ack = api_publish(&e2, &channels[2], json!("api")).await;
    assert_eq!(ack["offset"], 4, "{ack}");
    assert_eq!(ws.next_op("message").await["data"], "api");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_joins_cross_edges_on_the_cluster() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let (e1, e2) = two(&cluster).await;
    let mut a = connect_url(&format!("ws://{}/ws?user=ann", e1.addr)).await;
    let mut b = connect_url(&format!("ws://{}/ws?user=bob", e2.addr)).await;
    a.subscribe("chat:room").await;
    assert_eq!(a.next_op("join").await["client"], a.id.as_str());
    b.subscribe("chat:room").await;
    let j = a.next_op("join").await;
    assert_eq!(
        (j["user"].clone(), j["node"].clone()),
        (json!("bob"), json!("e2"))
    );
}
