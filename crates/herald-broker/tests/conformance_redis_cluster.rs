//! The `Broker` contract (`conformance/`) against the Redis broker on a Redis Cluster: six
//! `redis-server --cluster-enabled yes` per test (3 masters, 3 replicas, started by
//! `herald_testkit`), one `RedisBroker` in cluster mode per node. Plus sharding itself: a
//! channel on each master, published and received across two nodes.

mod conformance;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{Check, Cluster, Interrupt};
use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::{Broker, BrokerEvent, HistoryOptions, Payload, PublishRequest};
use herald_testkit::redis_cluster::RedisCluster;

/// One Redis Cluster; nodes connect to it through all six seeds.
struct Sharded {
    cluster: RedisCluster,
}

async fn cluster() -> Sharded {
    // `RUST_LOG=herald_broker=debug` shows the broker's side of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Sharded {
        cluster: tokio::task::block_in_place(RedisCluster::start),
    }
}

impl Sharded {
    fn config(&self, id: &str) -> RedisBrokerConfig {
        RedisBrokerConfig {
            probe_interval: Duration::from_millis(300),
            probe_timeout: Duration::from_secs(2),
            reconnect_max: Duration::from_millis(500),
            command_timeout: Duration::from_secs(1),
            ..RedisBrokerConfig::cluster(self.cluster.urls(), id)
        }
    }

    async fn broker(&self, id: &str) -> Arc<RedisBroker> {
        RedisBroker::connect(self.config(id))
            .await
            .expect("connect to the redis cluster")
    }
}

impl Cluster for Sharded {
    async fn node(&self, id: &str) -> Arc<dyn Broker> {
        self.broker(id).await
    }

    /// Polls `expired` until it holds, for at most the TTL plus ten seconds.
    async fn outlive(&self, ttl: Duration, mut expired: Check) {
        let deadline = Instant::now() + ttl + conformance::WAIT;
        while !expired().await {
            assert!(
                Instant::now() < deadline,
                "not expired {ttl:?} after its TTL"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn short_ttl(&self) -> Duration {
        Duration::from_secs(1)
    }
}

impl Interrupt for Sharded {
    /// `CLIENT KILL TYPE pubsub` on every master: the cluster stays up, every node's sharded
    /// pub/sub connections are cut.
    async fn interrupt(&self) {
        let mut killed = 0;
        for url in self.cluster.urls() {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let n: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query_async(&mut con)
                .await
                .unwrap();
            killed += n;
        }
        assert!(killed >= 1, "a pub/sub connection was cut");
    }
}

conformance::conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    cluster().await
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_a_lost_subscription() {
    conformance::resync_after_a_lost_subscription(&cluster().await).await;
}

/// A channel name whose topic (and keys) land in one of `ranges`.
fn channel_on(cluster: &RedisCluster, ranges: &[(u16, u16)]) -> String {
    (0..10_000)
        .map(|i| format!("shard:c{i}"))
        .find(|name| {
            let slot = cluster.keyslot(&format!("{{{name}}}"));
            ranges.iter().any(|&(a, b)| (a..=b).contains(&slot))
        })
        .expect("a channel on every master")
}

fn json(text: &str) -> Payload {
    Payload::Json(serde_json::value::RawValue::from_string(text.to_string()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_on_every_shard_publishes_and_delivers_across_nodes() {
    let sharded = cluster().await;
    let masters = sharded.cluster.master_slot_ranges();
    assert_eq!(masters.len(), 3, "three masters: {masters:?}");
    let channels: Vec<String> = tokio::task::block_in_place(|| {
        masters
            .iter()
            .map(|ranges| channel_on(&sharded.cluster, ranges))
            .collect()
    });
    let slots: BTreeSet<u16> = channels
        .iter()
        .map(|c| sharded.cluster.keyslot(&format!("{{{c}}}")))
        .collect();
    assert_eq!(slots.len(), 3, "channels on three different slots");

    let publisher = sharded.broker("pub").await;
    let receiver: Arc<dyn Broker> = sharded.broker("sub").await;
    let mut sink = conformance::attach(&receiver);
    for channel in &channels {
        receiver.subscribe(channel).await.unwrap();
    }
    // Sharded pub/sub: each channel's topic is SSUBSCRIBEd on exactly one cluster node (its
    // shard's master), and nothing herald uses is an ordinary (cluster-wide) channel.
    for channel in &channels {
        let topic = format!("herald:t:{{{channel}}}");
        let mut holders = 0;
        for url in sharded.cluster.urls() {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let shard: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .arg(&topic)
                .query_async(&mut con)
                .await
                .unwrap();
            holders += shard.len();
            let plain: Vec<String> = redis::cmd("PUBSUB")
                .arg("CHANNELS")
                .arg("herald:*")
                .query_async(&mut con)
                .await
                .unwrap();
            assert!(plain.is_empty(), "ordinary channels in use: {plain:?}");
        }
        assert_eq!(holders, 1, "{topic} subscribed on exactly one shard");
    }
    let history = HistoryOptions {
        size: 10,
        ttl: Duration::from_secs(60),
    };
    for round in 1..=2u64 {
        for channel in &channels {
            let position = publisher
                .publish(PublishRequest {
                    channel: Arc::from(channel.as_str()),
                    payload: json(&format!("{{\"round\":{round}}}")),
                    from: None,
                    user: None,
                    skip_self: false,
                    history,
                })
                .await
                .unwrap();
            assert_eq!(position.offset, round, "{channel}: offsets grow by one");
            match sink.next().await {
                BrokerEvent::Publication(p) => {
                    assert_eq!(&*p.channel, channel.as_str());
                    assert_eq!(p.offset, round);
                    assert_eq!(p.epoch.as_ref(), position.epoch);
                }
                other => panic!("expected a publication on {channel}, got {other:?}"),
            }
        }
    }
    // And each shard kept its channel's history.
    for (channel, ranges) in channels.iter().zip(&masters) {
        let page = receiver
            .history(
                channel,
                herald_broker::HistoryQuery {
                    since: None,
                    limit: 10,
                    max_bytes: 0,
                },
                history,
            )
            .await
            .unwrap();
        assert_eq!(page.publications.len(), 2, "{channel} ({ranges:?}) history");
    }
    publisher.shutdown().await;
    receiver.shutdown().await;
}
