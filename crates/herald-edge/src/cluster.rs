//! Connecting the edge to the Redis cluster broker, and exporting its health as metrics.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::redis::{RedisBroker, RedisBrokerConfig};
use herald_broker::Broker;
use prometheus::{Gauge, IntGauge};

use crate::config::EdgeConfig;
use crate::metrics::Metrics;

/// Connects the Redis broker named by `url` and starts exporting its health.
pub async fn connect_redis(
    url: &str,
    config: &EdgeConfig,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn Broker>> {
    let mut rc = RedisBrokerConfig::new(url, config.node_id.clone());
    // The hub already delays unsubscribes; the broker need not wait again.
    rc.unsubscribe_delay = Duration::from_millis(100);
    let broker = RedisBroker::connect(rc)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {}: {e}", redact(url)))?;
    export_health(&broker, metrics);
    Ok(broker)
}

fn export_health(broker: &Arc<RedisBroker>, metrics: &Arc<Metrics>) {
    let reconnects = IntGauge::new(
        "herald_redis_reconnects_total",
        "Times the pub/sub connection to Redis was re-established.",
    )
    .expect("metric");
    let idle = Gauge::new(
        "herald_redis_pubsub_idle_seconds",
        "Seconds since the last message or probe seen on the pub/sub connection.",
    )
    .expect("metric");
    let healthy = IntGauge::new(
        "herald_redis_healthy",
        "1 while the pub/sub connection is up and its probe answers.",
    )
    .expect("metric");
    let subscribed = IntGauge::new(
        "herald_redis_subscribed_channels",
        "Channels this node is subscribed to in Redis.",
    )
    .expect("metric");
    for m in [&reconnects, &healthy, &subscribed] {
        let _ = metrics.registry().register(Box::new(m.clone()));
    }
    let _ = metrics.registry().register(Box::new(idle.clone()));
    let weak = Arc::downgrade(broker);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(b) = weak.upgrade() else { break };
            reconnects.set(b.reconnects() as i64);
            idle.set(b.pubsub_idle_secs());
            healthy.set(b.is_healthy() as i64);
            subscribed.set(b.subscribed_channels() as i64);
        }
    });
}

/// The URL with any password replaced, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}
