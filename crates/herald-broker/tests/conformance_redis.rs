//! The `Broker` contract (`conformance/`) against the Redis broker: a real `redis-server` per
//! test (started on a free port by `herald_testkit`), one `RedisBroker` per node.
//!
//! Redis keeps its own clock, so a history TTL is waited out: the cluster polls the expiry
//! condition until it holds, within a bounded deadline.

mod conformance;

use std::sync::Arc;
use std::time::{Duration, Instant};

use conformance::{Check, Cluster, Interrupt};
use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::Broker;
use herald_testkit::redis::RedisServer;

/// One redis-server; nodes connect to it.
struct Redis {
    server: RedisServer,
}

async fn redis() -> Redis {
    // `RUST_LOG=herald_broker=debug` shows the broker's side of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    Redis {
        server: tokio::task::block_in_place(RedisServer::start),
    }
}

impl Cluster for Redis {
    /// Default configuration (no unsubscribe delay), with quick probes and reconnects.
    async fn node(&self, id: &str) -> Arc<dyn Broker> {
        let config = RedisBrokerConfig {
            probe_interval: Duration::from_millis(300),
            probe_timeout: Duration::from_secs(2),
            reconnect_max: Duration::from_millis(500),
            command_timeout: Duration::from_secs(1),
            ..RedisBrokerConfig::new(self.server.url(), id)
        };
        RedisBroker::connect(config)
            .await
            .expect("connect to redis")
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

impl Interrupt for Redis {
    /// `CLIENT KILL TYPE pubsub`: Redis stays up, every node's pub/sub connection is cut.
    async fn interrupt(&self) {
        let client = redis::Client::open(self.server.url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(killed >= 1, "a pub/sub connection was cut");
    }
}

conformance::conformance_tests!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    redis().await
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_a_lost_subscription() {
    conformance::resync_after_a_lost_subscription(&redis().await).await;
}
