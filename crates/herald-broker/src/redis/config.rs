//! Configuration of the Redis broker.

use std::time::Duration;

use crate::BrokerError;

/// How a [`super::RedisBroker`] connects and how its background tasks pace themselves.
///
/// Every field has a documented default ([`RedisBrokerConfig::default`]); call
/// [`RedisBrokerConfig::validate`] (done by `connect`) before use.
#[derive(Debug, Clone)]
pub struct RedisBrokerConfig {
    /// `redis://[:password@]host:port[/db]` or `rediss://` (TLS through rustls, system roots).
    /// Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Seed nodes of a Redis Cluster (`redis://[:password@]host:port` or `rediss://`, any
    /// subset of the nodes: the topology is discovered). When non-empty the broker talks to
    /// the cluster with sharded pub/sub (see `sharded.rs`) and `url` is only used in messages.
    /// Default empty (one Redis at `url`).
    pub cluster_nodes: Vec<String>,
    /// A PEM file of CA certificates to trust for `rediss://` instead of the system roots
    /// (a private CA, or a self-signed Redis certificate). Default none.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// This node's id: names its registry entry and its probe topic. Default `"node"`.
    pub node_id: String,
    /// Prefix of every key and pub/sub topic, so clusters can share one Redis. Default `"herald"`.
    pub prefix: String,
    /// How long a presence entry lives without a refresh. The node refreshes its own entries
    /// every third of it, so a dead node's clients vanish after at most this long. Default 30 s.
    pub presence_ttl: Duration,
    /// How long a node's registry entry lives without a heartbeat. Default 30 s.
    pub node_ttl: Duration,
    /// How long a channel stays `SUBSCRIBE`d after its last local reference went; churn within
    /// it costs nothing. The delay is the caller's: the edge's hub already waits its own
    /// `unsubscribe_delay_ms` before it calls `unsubscribe`, so the default is zero and the
    /// unsubscriber only batches `UNSUBSCRIBE`s (checked every 10 ms). Set it only when
    /// embedding the broker without the edge hub. Default 0.
    pub unsubscribe_delay: Duration,
    /// How often the pub/sub connection is probed (a message to this node's probe topic that
    /// must come back). Default 5 s.
    pub probe_interval: Duration,
    /// How long a probe may take before the connection is declared dead and rebuilt. Default 3 s.
    pub probe_timeout: Duration,
    /// Bound on every command (publish, history, presence, subscribe): past it the call fails
    /// with [`BrokerError::Unavailable`]. Default 1.5 s.
    pub command_timeout: Duration,
    /// Bound on opening one connection. Default 2 s.
    pub connect_timeout: Duration,
    /// First pause before reconnecting the pub/sub connection; doubles per failure. Default 100 ms.
    pub reconnect_min: Duration,
    /// Longest pause between reconnect attempts (each pause is jittered to 50–100 %). Default 5 s.
    pub reconnect_max: Duration,
    /// Number of multiplexed command connections (round-robin). Default 1: see the measurement
    /// in the `commands` module.
    pub command_connections: usize,
    /// Least time a channel's epoch and offset live after its last publish or read: longer than
    /// the history TTL so a reader at the top of an idle channel still resumes. Default 24 h.
    pub meta_ttl: Duration,
    /// Most channels per `SUBSCRIBE`/`UNSUBSCRIBE` command when resubscribing or batching.
    /// Default 256.
    pub subscribe_batch: usize,
    /// Most pub/sub messages waiting between the pub/sub reader and the edge's event sink. When
    /// the sink falls this far behind, further messages are dropped (counted in
    /// [`super::RedisBroker::dropped_events`]) and, once the queue has drained, one
    /// [`crate::BrokerEvent::Resync`] makes readers recover them from history. Memory held is
    /// at most this many messages. Default 8192.
    pub event_queue: usize,
}

impl Default for RedisBrokerConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            tls_ca_file: None,
            node_id: "node".into(),
            prefix: "herald".into(),
            presence_ttl: Duration::from_secs(30),
            node_ttl: Duration::from_secs(30),
            unsubscribe_delay: Duration::ZERO,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            command_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            command_connections: 1,
            meta_ttl: Duration::from_secs(24 * 3600),
            subscribe_batch: 256,
            event_queue: 8192,
        }
    }
}

impl RedisBrokerConfig {
    /// A default configuration for `url` and `node_id`.
    pub fn new(url: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// A default configuration for the Redis Cluster reached through the seed `nodes`.
    pub fn cluster(nodes: Vec<String>, node_id: impl Into<String>) -> Self {
        Self {
            url: nodes.first().cloned().unwrap_or_default(),
            cluster_nodes: nodes,
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// Whether the broker talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        !self.cluster_nodes.is_empty()
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |what: &str| Err(BrokerError::Config(what.to_string()));
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return bad("redis url must start with redis:// or rediss://");
        }
        for node in &self.cluster_nodes {
            if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                return bad("redis cluster node urls must start with redis:// or rediss://");
            }
        }
        if self.tls_ca_file.is_some() && !self.url.starts_with("rediss://") {
            return bad("tls_ca_file needs a rediss:// url");
        }
        if self.node_id.is_empty() || self.node_id.contains(char::is_whitespace) {
            return bad("node id must be non-empty, without whitespace");
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return bad("key prefix must be non-empty, without braces or spaces");
        }
        let positive = [
            ("presence_ttl", self.presence_ttl),
            ("node_ttl", self.node_ttl),
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_min", self.reconnect_min),
            ("meta_ttl", self.meta_ttl),
        ];
        for (name, value) in positive {
            if value.as_millis() == 0 {
                return bad(&format!("{name} must be at least 1 ms"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return bad("reconnect_max must be >= reconnect_min");
        }
        if self.command_connections == 0 || self.command_connections > 64 {
            return bad("command_connections must be 1..=64");
        }
        if self.subscribe_batch == 0 {
            return bad("subscribe_batch must be at least 1");
        }
        if self.event_queue == 0 {
            return bad("event_queue must be at least 1");
        }
        Ok(())
    }

    /// How often this node rewrites its presence entries.
    pub(crate) fn presence_refresh(&self) -> Duration {
        (self.presence_ttl / 3).max(Duration::from_millis(10))
    }

    /// How often pending unsubscribes are checked: half the delay, between 10 ms (so a zero
    /// delay batches instead of spinning) and 1 s.
    pub(crate) fn unsubscribe_tick(&self) -> Duration {
        (self.unsubscribe_delay / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_refused() {
        RedisBrokerConfig::default().validate().unwrap();
        // No delay by default (the edge's hub owns it): valid, and the unsubscriber still
        // sleeps between batches rather than spinning.
        let zero = RedisBrokerConfig::default();
        assert_eq!(zero.unsubscribe_delay, Duration::ZERO);
        assert_eq!(zero.unsubscribe_tick(), Duration::from_millis(10));
        let long = RedisBrokerConfig {
            unsubscribe_delay: Duration::from_secs(60),
            ..RedisBrokerConfig::default()
        };
        assert_eq!(long.unsubscribe_tick(), Duration::from_secs(1));
        let mut c = RedisBrokerConfig::new("http://x", "n");
        assert!(c.validate().is_err());
        c.url = "rediss://:pw@host:6380/0".into();
        c.validate().unwrap();
        c.command_connections = 0;
        assert!(c.validate().is_err());
        c.command_connections = 1;
        c.event_queue = 0;
        assert!(c.validate().is_err());
        let c = RedisBrokerConfig {
            reconnect_max: Duration::from_millis(1),
            ..RedisBrokerConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
