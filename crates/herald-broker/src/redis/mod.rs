//! The Redis broker: several edges made one cluster through one Redis.
//!
//! # How a message travels
//!
//! An edge calls [`Broker::publish`]; one Lua script (`scripts.rs`, `lua/publish.lua`) assigns the
//! next offset of the channel, appends the message to the channel's stream (id `<offset>-0`,
//! exact `MAXLEN` = the namespace's history size, TTL = its history TTL) and `PUBLISH`es the
//! very same bytes (`codec.rs`) on the channel's topic. Every node that has local
//! subscribers for the channel `SUBSCRIBE`d that topic on its one pub/sub connection
//! (`pubsub.rs`); its reader decodes the message, upgrades the edge's sink (the broker holds
//! only a `Weak` to it, see [`Broker::attach`]; events for a sink that is gone are dropped) and
//! calls [`BrokerEvents::on_event`]. Join and leave go on the same topic, so they reach exactly the
//! nodes with subscribers; broadcasts go on one cluster topic every node subscribes to.
//!
//! # What is guaranteed
//!
//! * Offsets grow by one per publish, per channel, across the cluster; events of a channel
//!   reach the edge in offset order (scripts run one at a time, a topic delivers in order).
//! * `publish` returns `Ok` only after Redis ran the script; during an outage it fails with
//!   [`BrokerError::Unavailable`] within `command_timeout` (at once while the pub/sub
//!   connection is known to be down). A publish that timed out may still have been applied.
//! * Live delivery is at most once: messages published while a node's pub/sub connection is
//!   down are not delivered live; after reconnecting the node emits [`BrokerEvent::Resync`](crate::BrokerEvent::Resync)
//!   and readers recover them from history.
//! * History answers `recovered: false` whenever it cannot prove it holds every message after
//!   the reader's position: another epoch (the channel's keys expired, or Redis restarted
//!   empty, so the script started a new epoch), a position ahead of the newest offset, or the
//!   next message already trimmed or older than the history TTL.
//!
//! # Background tasks (one [`CancellationToken`], one [`TaskTracker`])
//!
//! * the pub/sub supervisor — reads, probes, reconnects (`pubsub.rs`); it never waits on the
//!   edge: it queues messages in a bounded queue (`inbound.rs`, [`RedisBrokerConfig::event_queue`]);
//! * the dispatcher — hands queued messages to the edge's sink; after an overflow (messages
//!   dropped and counted, [`RedisBroker::dropped_events`]) emits one `Resync` once drained;
//! * the subscriber — sends one `SUBSCRIBE` for every first subscribe waiting
//!   (`subscriber.rs`), so channel churn costs a round trip per batch, not per channel;
//! * the unsubscriber — batches `UNSUBSCRIBE`s of channels whose last local reference went
//!   (after [`RedisBrokerConfig::unsubscribe_delay`], zero by default: the edge's hub already
//!   delays its unsubscribes; the delay is kept for users embedding the broker without the
//!   edge hub);
//! * the presence refresher — rewrites this node's presence entries every third of their TTL,
//!   and at once after a reconnect.
//!
//! # Redis Cluster
//!
//! With [`RedisBrokerConfig::cluster_nodes`] set (the edge's `--redis-cluster`) the same broker
//! talks to a Redis Cluster (Redis ≥ 7) through redis-rs's `cluster_async` (`sharded.rs`): every
//! key of a channel carries the `{channel}` hash tag, so each script runs on the channel's
//! shard, and the scripts `SPUBLISH` on the channel's topic, which carries the same tag
//! (`keys.rs`). Nodes `SSUBSCRIBE` on one RESP3 cluster connection, i.e. one connection per
//! shard, grouped by slot per command; a message crosses only its own shard. The registry and
//! broadcast share the fixed `{herald}` tag; the liveness probe has one topic per master. A
//! lost, hung or moved shard does not stop the others: the old connection keeps delivering
//! while a fresh one subscribes everything, then the two swap and one `Resync` follows
//! (`sharded.rs`, `pubsub.rs`). A failover to a replica that missed the newest writes takes a
//! channel's counter back; the node detects it (`fence.rs`) and starts a new epoch, so no
//! (epoch, offset) ever names two messages.
//!
//! # TLS
//!
//! `rediss://` URLs connect through rustls with the `ring` provider and the system's root
//! certificates (`rustls-native-certs`, which honours `SSL_CERT_FILE`), or only the CAs in
//! [`RedisBrokerConfig::tls_ca_file`]. No OpenSSL or other system library is needed. The
//! `#insecure` URL fragment (no verification) is refused: it needs redis-rs's
//! `tls-rustls-insecure` feature, which is deliberately not enabled.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::{
    Broker, BrokerError, BrokerEvents, HistoryOptions, HistoryPage, HistoryQuery, NodeInfo,
    Payload, PublishRequest,
};

mod codec;
mod commands;
mod config;
mod fence;
mod history;
mod inbound;
mod keys;
mod presence;
mod probe;
mod publish;
mod pubsub;
mod registry;
mod scripts;
mod sharded;
mod subscriber;
mod subscriptions;

pub use config::RedisBrokerConfig;

use commands::Commands;
use keys::Keys;
use presence::PresenceBook;
use pubsub::PubSub;
use scripts::Scripts;

/// The cluster broker over Redis. Create with [`RedisBroker::connect`]; stop with
/// [`Broker::shutdown`] (or cancel the token given to
/// [`RedisBroker::connect_with_cancel`]).
pub struct RedisBroker {
    config: RedisBrokerConfig,
    keys: Keys,
    scripts: Scripts,
    /// Command connections (publish, history, presence, registry, probes).
    commands: Arc<Commands>,
    /// The pub/sub connection and the subscription table.
    pubsub: Arc<PubSub>,
    /// Presence entries this node wrote (the refresher rewrites them).
    presence: PresenceBook,
    /// Cancels every background task; fired by `shutdown` (or by the owner of the parent).
    cancel: CancellationToken,
    /// The background tasks, awaited by `shutdown`.
    tasks: TaskTracker,
}

impl RedisBroker {
    /// Connects (command connections and the pub/sub connection, subscribed to the broadcast
    /// and probe topics) and starts the background tasks. Fails if Redis cannot be reached now.
    pub async fn connect(config: RedisBrokerConfig) -> Result<Arc<Self>, BrokerError> {
        Self::connect_with_cancel(config, CancellationToken::new()).await
    }

    /// [`RedisBroker::connect`] with background tasks that also stop when `cancel` fires.
    pub async fn connect_with_cancel(
        config: RedisBrokerConfig,
        cancel: CancellationToken,
    ) -> Result<Arc<Self>, BrokerError> {
        config.validate()?;
        let client = open_client(&config)?;
        let instance = crate::new_epoch();
        let is_cluster = config.is_cluster();
        let keys = if is_cluster {
            Keys::new_cluster(&config.prefix, &config.node_id, &instance)
        } else {
            Keys::new(&config.prefix, &config.node_id, &instance)
        };
        let commands = Arc::new(Commands::connect(&client, &config).await?);
        let pubsub = Arc::new(PubSub::new(client, keys.clone(), config.clone()));
        let stream = pubsub.establish().await?;
        pubsub.mark_healthy();
        let broker = Arc::new(Self {
            config,
            keys,
            scripts: Scripts::new(is_cluster),
            commands: commands.clone(),
            pubsub: pubsub.clone(),
            presence: PresenceBook::default(),
            cancel: cancel.child_token(),
            tasks: TaskTracker::new(),
        });
        let cancel = broker.cancel.clone();
        broker
            .tasks
            .spawn(pubsub.clone().run(stream, commands.clone(), cancel.clone()));
        broker
            .tasks
            .spawn(pubsub.clone().run_dispatcher(cancel.clone()));
        broker
            .tasks
            .spawn(pubsub.clone().run_subscriber(cancel.clone()));
        broker
            .tasks
            .spawn(pubsub.clone().run_fencer(commands.clone(), cancel.clone()));
        broker
            .tasks
            .spawn(pubsub.clone().run_unsubscriber(cancel.clone()));
        broker
            .tasks
            .spawn(presence::run_refresher(Arc::downgrade(&broker), cancel));
        info!(node = %broker.config.node_id, prefix = %broker.config.prefix, "redis broker connected");
        Ok(broker)
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisBrokerConfig {
        &self.config
    }

    /// How many times the pub/sub connection was lost and re-established (for metrics).
    pub fn reconnects(&self) -> u64 {
        self.pubsub.reconnects()
    }

    /// When the pub/sub connection last delivered anything (probes arrive every
    /// `probe_interval`, so this stays recent while the connection is alive).
    pub fn last_pubsub_activity(&self) -> Instant {
        self.pubsub.last_activity()
    }

    /// Seconds since [`RedisBroker::last_pubsub_activity`] (for a gauge).
    pub fn pubsub_idle_secs(&self) -> f64 {
        self.pubsub.last_activity().elapsed().as_secs_f64()
    }

    /// Pub/sub messages dropped since start because the event queue was full (the edge's sink
    /// fell [`RedisBrokerConfig::event_queue`] messages behind); each overflow is followed by a
    /// [`BrokerEvent::Resync`](crate::BrokerEvent::Resync). A counter for metrics.
    pub fn dropped_events(&self) -> u64 {
        self.pubsub.inbox.dropped()
    }

    /// Pub/sub messages waiting for the edge's sink now (at most
    /// [`RedisBrokerConfig::event_queue`]). A gauge for metrics.
    pub fn queued_events(&self) -> usize {
        self.pubsub.inbox.len()
    }

    /// New epochs this node started because a channel's offset counter went back in Redis (a
    /// failover to a replica that missed writes, or a restore from an old snapshot); see
    /// `fence.rs`. A counter for metrics.
    pub fn epochs_fenced(&self) -> u64 {
        self.pubsub.fence.fenced()
    }

    /// Channels this node currently receives (with at least one local reference).
    pub fn subscribed_channels(&self) -> usize {
        self.pubsub.subs.live_count()
    }

    /// Fails fast when the pub/sub connection is known to be down: Redis is unreachable, and
    /// waiting for the command timeout would only delay the same answer.
    fn ensure_connected(&self) -> Result<(), BrokerError> {
        if self.pubsub.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(
                "redis connection is down, reconnecting".into(),
            ))
        }
    }

    /// Milliseconds for a Redis TTL argument (at least 1: zero would mean "expire now").
    fn ttl_ms(ttl: Duration) -> u64 {
        (ttl.as_millis() as u64).max(1)
    }

    /// How long a channel's epoch and offset live after a publish or read.
    fn meta_ttl_ms(&self, history_ttl: Duration) -> u64 {
        Self::ttl_ms(history_ttl.max(self.config.meta_ttl))
    }
}

impl Drop for RedisBroker {
    /// Stops the background tasks (like a node that died: no cleanup, entries expire).
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The redis-rs client for the configured URL (and CA file), or the cluster's seed nodes.
fn open_client(config: &RedisBrokerConfig) -> Result<sharded::Client, BrokerError> {
    let read_ca = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|err| BrokerError::Config(format!("tls_ca_file {}: {err}", path.display())))
    };
    if config.is_cluster() {
        let ca = match &config.tls_ca_file {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        return Ok(sharded::Client::Cluster {
            nodes: config.cluster_nodes.clone(),
            ca,
        });
    }
    let bad_url = |err: redis::RedisError| BrokerError::Config(format!("redis url: {err}"));
    let client = match &config.tls_ca_file {
        None => redis::Client::open(config.url.as_str()).map_err(bad_url),
        Some(path) => {
            let pem = read_ca(path)?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            redis::Client::build_with_tls(config.url.as_str(), certificates).map_err(bad_url)
        }
    }?;
    Ok(sharded::Client::Single(client))
}

#[async_trait]
impl Broker for RedisBroker {
    fn attach(&self, events: Weak<dyn BrokerEvents>) {
        let _ = self.pubsub.events.set(events);
    }

    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, BrokerError> {
        self.publish_message(request).await
    }

    async fn broadcast(&self, payload: Payload) -> Result<(), BrokerError> {
        self.broadcast_message(payload).await
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.pubsub.subscribe(channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        self.pubsub.unsubscribe(channel);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        self.read_history(channel, query, options).await
    }

    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        self.add_presence(channel, entry, announce).await
    }

    async fn presence_remove(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        self.remove_presence(channel, entry, announce).await
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        self.read_presence(channel).await
    }

    async fn heartbeat_node(&self, info: NodeInfo) -> Result<(), BrokerError> {
        self.write_node(info).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        self.read_nodes().await
    }

    fn is_healthy(&self) -> bool {
        self.pubsub.is_healthy()
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(self.config.command_timeout, self.tasks.wait()).await;
        // Best effort: leave the registry and presence now rather than after their TTLs.
        self.forget_node().await;
        self.forget_presence().await;
        info!(node = %self.config.node_id, "redis broker stopped");
    }
}
