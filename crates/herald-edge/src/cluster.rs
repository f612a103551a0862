//! Connecting the edge to the Redis broker (one Redis, or a Redis Cluster), and exporting its
//! health as metrics.

use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::Broker;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntGauge};

use crate::config::EdgeConfig;
use crate::metrics::Metrics;

/// Connects the Redis broker named by `url` and starts exporting its health.
pub(crate) async fn connect_redis(
    url: &str,
    config: &EdgeConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Broker>> {
    let rc = RedisBrokerConfig::new(url, config.node_id.clone());
    connect(rc, &redact(url), metrics).await
}

/// Connects the Redis broker to the Redis Cluster reached through the seed `nodes` (sharded
/// pub/sub) and starts exporting its health.
pub(crate) async fn connect_redis_cluster(
    nodes: &[String],
    config: &EdgeConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Broker>> {
    let rc = RedisBrokerConfig::cluster(nodes.to_vec(), config.node_id.clone());
    let seeds: Vec<String> = nodes.iter().map(|n| redact(n)).collect();
    connect(
        rc,
        &format!("the Redis Cluster {}", seeds.join(",")),
        metrics,
    )
    .await
}

async fn connect(
    mut rc: RedisBrokerConfig,
    what: &str,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Broker>> {
    // The hub owns the node's one unsubscribe delay (`limits.unsubscribe_delay_ms`); the broker
    // unsubscribes when told, batching what arrives together.
    rc.unsubscribe_delay = Duration::ZERO;
    let broker = RedisBroker::connect(rc)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {what}: {e}"))?;
    export_health(&broker, metrics);
    Ok(broker)
}

fn export_health(broker: &Arc<RedisBroker>, metrics: &Arc<Metrics>) {
    let health = RedisHealth {
        broker: Arc::downgrade(broker),
        reconnects: IntCounter::new(
            "herald_redis_reconnects_total",
            "Times the pub/sub connection to Redis was re-established.",
        )
        .expect("metric"),
        idle: Gauge::new(
            "herald_redis_pubsub_idle_seconds",
            "Seconds since the last message or probe seen on the pub/sub connection.",
        )
        .expect("metric"),
        healthy: IntGauge::new(
            "herald_redis_healthy",
            "1 while the pub/sub connection is up and its probe answers.",
        )
        .expect("metric"),
        subscribed: IntGauge::new(
            "herald_redis_subscribed_channels",
            "Channels this node is subscribed to in Redis.",
        )
        .expect("metric"),
        dropped: IntCounter::new(
            "herald_redis_pubsub_dropped_total",
            "Pub/sub messages dropped because the intake queue was full (a resync follows).",
        )
        .expect("metric"),
        queued: IntGauge::new(
            "herald_redis_pubsub_queued_events",
            "Pub/sub messages waiting in the bounded intake queue.",
        )
        .expect("metric"),
        fenced: IntCounter::new(
            "herald_redis_epochs_fenced_total",
            "New epochs this node started because a channel's offset went back in Redis (failover to a replica that missed writes, or a restore).",
        )
        .expect("metric"),
    };
    if let Err(err) = metrics.registry().register(Box::new(health)) {
        tracing::warn!(cause = %err, "cannot register the Redis health metrics");
    }
}

/// The Redis broker's health, read from the broker at scrape time (so a flip of
/// `herald_redis_healthy` or a reconnect shows in the very next scrape). Holds the broker
/// weakly: after the broker is gone the last values stay.
struct RedisHealth {
    broker: Weak<RedisBroker>,
    /// A counter: raised by the broker's reconnect count's growth since the last scrape.
    reconnects: IntCounter,
    idle: Gauge,
    healthy: IntGauge,
    subscribed: IntGauge,
    /// A counter: raised by the broker's dropped-event count's growth since the last scrape.
    dropped: IntCounter,
    queued: IntGauge,
    /// A counter: raised by the broker's fenced-epoch count's growth since the last scrape.
    fenced: IntCounter,
}

impl Collector for RedisHealth {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.reconnects.desc();
        d.extend(self.idle.desc());
        d.extend(self.healthy.desc());
        d.extend(self.subscribed.desc());
        d.extend(self.dropped.desc());
        d.extend(self.queued.desc());
        d.extend(self.fenced.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if let Some(b) = self.broker.upgrade() {
            let total = b.reconnects();
            self.reconnects
                .inc_by(total.saturating_sub(self.reconnects.get()));
            self.idle.set(b.pubsub_idle_secs());
            self.healthy.set(b.is_healthy() as i64);
            self.subscribed.set(b.subscribed_channels() as i64);
            let dropped = b.dropped_events();
            self.dropped
                .inc_by(dropped.saturating_sub(self.dropped.get()));
            self.queued.set(b.queued_events() as i64);
            let fenced = b.epochs_fenced();
            self.fenced.inc_by(fenced.saturating_sub(self.fenced.get()));
        }
        let mut m = self.reconnects.collect();
        m.extend(self.idle.collect());
        m.extend(self.healthy.collect());
        m.extend(self.subscribed.collect());
        m.extend(self.dropped.collect());
        m.extend(self.queued.collect());
        m.extend(self.fenced.collect());
        m
    }
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
