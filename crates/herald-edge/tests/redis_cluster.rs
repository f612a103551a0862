//! Two edges over a real Redis Cluster (six redis-servers: 3 masters, 3 replicas, started by
//! `herald_testkit`), selected with `redis_cluster` (`--redis-cluster`): a channel on every
//! shard delivers across edges over WebSocket and SSE, in offset order, and presence joins
//! (published from a Lua script with SPUBLISH) cross edges too. And a master killed under
//! traffic: WebSocket, SSE and poll readers on the other edge heal with nothing lost.

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

/// A master of the cluster dies under traffic (`kill -9`, the replica promoted by the cluster
/// after its node timeout). A WebSocket, an SSE stream and a polling reader on the other edge
/// each end with every acknowledged publication once, in order: the edge resynced them from
/// history after it resubscribed. A publish that failed (503, error 111) may still have landed
/// (it timed out after Redis applied it); it then arrives like any other, never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_heals_across_a_master_failover() {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    let channel = tokio::task::block_in_place(|| channel_per_shard(&cluster))[0].clone();
    let slot = cluster.keyslot(&format!("{{{channel}}}"));
    let victim = cluster.master_of(slot);
    let replica = cluster.replica_of(victim);
    let (e1, e2) = two(&cluster).await;

    let mut ws = connect(&e2).await;
    ws.subscribe(&channel).await;
    let mut sse_c = sse(&e2, &format!("channel={channel}"), None).await;
    sse_c.next_named("subscribed").await;
    let first = poll(&e2, &format!("channel={channel}&timeout=0")).await;
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();

    let client = reqwest::Client::new();
    let url = format!("{}/api/publish", http(&e1));
    let mut acked: Vec<u64> = Vec::new();
    let mut failed: Vec<u64> = Vec::new();
    let publish = |n: u64| {
        let (client, url, channel) = (client.clone(), url.clone(), channel.clone());
        async move {
            let r = client
                .post(url)
                .json(&json!({"channel": channel, "data": n}))
                .send()
                .await
                .expect("publish request");
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            (status, body)
        }
    };
    let mut n = 0;
    for _ in 0..20 {
        n += 1;
        assert!(publish(n).await.0.is_success());
        acked.push(n);
    }
    cluster.kill(victim);
    // Publish through the outage until the replica is promoted, then 20 more acknowledged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut after = 0;
    loop {
        n += 1;
        let (status, body) = publish(n).await;
        if status.is_success() {
            acked.push(n);
        } else {
            assert_eq!(status, 503, "an outage is 503 Unavailable: {body}");
            failed.push(n);
        }
        assert!(std::time::Instant::now() < deadline, "no failover");
        if after == 0 {
            if tokio::task::block_in_place(|| cluster.master_of(slot)) == replica {
                after = 1;
            }
        } else if status.is_success() {
            after += 1;
            if after > 20 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !failed.is_empty(),
        "publishes to the dead shard failed meanwhile"
    );
    let last = *acked.last().unwrap();

    let check = |what: &str, got: &[u64]| {
        let only_acked: Vec<u64> = got
            .iter()
            .copied()
            .filter(|n| !failed.contains(n))
            .collect();
        assert_eq!(
            only_acked, acked,
            "{what}: every acknowledged publication once, in order"
        );
        let mut sorted = got.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), got.len(), "{what}: no duplicate");
    };
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(ws.next_op("message").await["data"].as_u64().unwrap());
    }
    check("websocket", &got);
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        got.push(sse_c.next_message().await.json()["data"].as_u64().unwrap());
    }
    check("sse", &got);
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let page = poll(&e2, &format!("channel={channel}&cursor={cursor}&timeout=5")).await;
        assert_ne!(page["recovered"], false, "poll: {page}");
        for m in page["messages"].as_array().unwrap() {
            got.push(m["data"].as_u64().unwrap());
        }
        cursor = page["cursor"].as_str().unwrap().to_owned();
    }
    check("poll", &got);
    eprintln!(
        "failover across edges: {} acknowledged, {} failed ({:?})",
        acked.len(),
        failed.len(),
        failed
    );
}
