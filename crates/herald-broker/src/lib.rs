//! Herald brokers: how publications travel between edges, and where history and presence live.
//!
//! The [`Broker`] trait is the seam between an edge and the rest of the cluster. An edge calls
//! it to publish, to say which channels it has local subscribers for, to read history and
//! presence, and to heartbeat itself into the node registry. The broker calls back into the edge
//! through [`BrokerEvents`] (given once, with [`Broker::attach`]) for every publication, join,
//! leave and broadcast on a channel the edge subscribed to.
//!
//! Ownership runs one way: the edge owns the broker (an `Arc<dyn Broker>`), and the broker
//! holds only a [`Weak`] to the edge's event sink. It upgrades that `Weak` for each event it
//! delivers and silently drops the event once the upgrade fails (the edge is gone), so an edge
//! and its broker never keep each other alive.
//!
//! Two implementations sit beside the trait:
//!
//! * [`memory::MemoryBroker`] — the embedded default: one process, no Redis. Offsets, history
//!   and presence live in sharded maps; a publish is delivered synchronously under the
//!   channel's lock, so per-channel delivery order is offset order.
//! * [`redis::RedisBroker`] — the cluster: an atomic Lua publish (offset, XADD, PUBLISH), one
//!   dedicated pub/sub connection per node, presence hashes and a node registry with TTLs.
//!   The same broker also runs on a Redis Cluster with sharded pub/sub (SSUBSCRIBE/SPUBLISH).
//!
//! Guarantees every implementation keeps: offsets in a channel grow by exactly one per publish;
//! events for one channel reach [`BrokerEvents::on_event`] in offset order; a publish returns
//! `Ok` only once the broker holds the message; history answers `recovered: false` whenever it
//! cannot prove it holds everything after the reader's position; a read never creates state (a
//! channel nobody published to is at `{"epoch": "", "offset": 0}`). One suite of tests checks
//! these against both implementations (`tests/conformance/`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod error;
pub mod memory;
pub mod redis;

pub use error::BrokerError;

/// The body of a publication.
#[derive(Debug, Clone)]
pub enum Payload {
    /// JSON, exactly as the publisher wrote it.
    Json(Box<RawValue>),
    /// Opaque bytes (WebSocket binary publish).
    Binary(Bytes),
}

impl Payload {
    /// Size in bytes of the payload as it travels.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(raw) => raw.get().len(),
            Payload::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One message in one channel, as every node sees it.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The channel.
    pub channel: Arc<str>,
    /// The history generation the offset belongs to.
    pub epoch: Arc<str>,
    /// The offset: previous offset + 1.
    pub offset: u64,
    /// When the broker accepted it, Unix milliseconds.
    pub ts_ms: u64,
    /// The body.
    pub payload: Payload,
    /// The publishing client, if a client published it.
    pub from: Option<Arc<str>>,
    /// The publishing client's authenticated user, set by the server (never by the client).
    pub user: Option<Arc<str>>,
    /// When true, the client named in `from` does not receive it.
    pub skip_self: bool,
}

impl Publication {
    /// The position just after this publication.
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.to_string(),
            offset: self.offset,
        }
    }
}

/// How much history a channel keeps (from its namespace's configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    /// Most messages kept; 0 keeps none (offsets still grow).
    pub size: usize,
    /// How long a message is kept, and how long an idle channel's stream lives.
    pub ttl: Duration,
}

/// A publish request.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The channel (already validated).
    pub channel: Arc<str>,
    /// The body.
    pub payload: Payload,
    /// The publishing client.
    pub from: Option<Arc<str>>,
    /// The publishing client's authenticated user.
    pub user: Option<Arc<str>>,
    /// Whether the publisher skips its own copy.
    pub skip_self: bool,
    /// How the channel keeps history.
    pub history: HistoryOptions,
}

/// A history read. Reads never create state: the position of a channel nobody published to is
/// `{"epoch": "", "offset": 0}`, and reading it leaves nothing behind in the broker.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Read after this position; `None` reads the newest `limit` messages. An empty epoch is a
    /// position taken before the channel had an epoch: it stands for whatever epoch the channel
    /// has now, so `{"epoch": "", "offset": 0}` reads every message from offset 1 and is
    /// `recovered` while history still holds offset 1 (or nothing was ever published).
    pub since: Option<StreamPosition>,
    /// At most this many publications; 0 only asks for the current position.
    pub limit: usize,
    /// At most about this many bytes of publications (always at least one publication when
    /// any is due); 0: no byte bound. The bound holds before anything is loaded into the edge:
    /// a reader pages through a long history instead of taking it whole. A page cut short by
    /// it (or by `limit`) ends before the channel's newest offset; the reader continues after
    /// its last publication.
    pub max_bytes: usize,
}

/// The answer to a history read.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The channel's current position (epoch and newest offset).
    pub position: StreamPosition,
    /// Publications in offset order.
    pub publications: Vec<Arc<Publication>>,
    /// With `since`: true when every publication after `since` is (or, past `limit`, can be)
    /// returned; false when the epoch differs or history no longer reaches back that far.
    pub recovered: bool,
}

/// A node's entry in the cluster registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub node: String,
    /// Address clients reach it on, as configured.
    pub address: String,
    /// Open client connections by transport name.
    pub connections: std::collections::BTreeMap<String, u64>,
    /// Channels with local subscribers.
    pub channels: u64,
    /// Publications delivered since start (for rates on the status page).
    pub delivered: u64,
    /// Publications accepted from this node's clients since start.
    pub published: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Herald version.
    pub version: String,
}

/// Something the broker tells an edge.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    /// A publication on a channel the edge subscribed to.
    Publication(Arc<Publication>),
    /// A client joined a channel (namespaces with join/leave on).
    Join {
        /// The channel.
        channel: Arc<str>,
        /// Who joined.
        entry: PresenceEntry,
    },
    /// A client left a channel.
    Leave {
        /// The channel.
        channel: Arc<str>,
        /// Who left.
        entry: PresenceEntry,
    },
    /// A message for every connection of the cluster (no channel).
    Broadcast(Arc<Payload>),
    /// The broker's subscription was lost and is back: live messages may have been missed, so
    /// readers should check history after their positions.
    Resync,
}

/// The edge side of a broker: receives events. Implementations must not block: they run on the
/// broker's delivery path (under a channel lock for the memory broker, on the pub/sub reader for
/// Redis).
pub trait BrokerEvents: Send + Sync + 'static {
    /// Handles one event.
    fn on_event(&self, event: BrokerEvent);
}

/// The seam between an edge and the cluster. See the crate docs for the guarantees.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sets the receiver of events. Called once, before any subscribe.
    ///
    /// The broker never owns its event sink: it keeps only this `Weak`, upgrades it for each
    /// event (or batch of events) it delivers, and drops events silently once the upgrade
    /// fails, because the edge that owned the sink is gone. The caller keeps the sink alive
    /// (`broker.attach(Arc::downgrade(&hub) as Weak<dyn BrokerEvents>)`), so a sink that owns
    /// the broker forms no reference cycle.
    fn attach(&self, events: Weak<dyn BrokerEvents>);

    /// Publishes; returns the new position once the broker holds the message.
    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, BrokerError>;

    /// Sends a payload to every connection of the cluster.
    async fn broadcast(&self, payload: Payload) -> Result<(), BrokerError>;

    /// Starts receiving `channel` (this node has a local subscriber): its publications, joins
    /// and leaves reach the sink from now on. Calls are counted.
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Stops receiving `channel` once every `subscribe` of it has been matched by an
    /// `unsubscribe` (no local subscriber is left); an unmatched call is harmless.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError>;

    /// Reads history (see [`HistoryQuery`] and [`HistoryPage`]).
    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError>;

    /// Adds a client to a channel's presence; emits `Join` when `announce`.
    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError>;

    /// Removes a client from a channel's presence; emits `Leave` when `announce`.
    async fn presence_remove(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError>;

    /// Everyone in a channel, across the cluster.
    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError>;

    /// Writes this node's registry entry (called periodically).
    async fn heartbeat_node(&self, info: NodeInfo) -> Result<(), BrokerError>;

    /// The live nodes of the cluster.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;

    /// Whether the broker can deliver now (readiness depends on it).
    fn is_healthy(&self) -> bool;

    /// Releases connections and background tasks.
    async fn shutdown(&self);
}

/// Whether a reader whose position is in epoch `reader` reads the channel's epoch `current`: the
/// same epoch, or an empty one (the reader's position was taken before the channel had an
/// epoch, so the channel's first epoch, the one a publish made since, is the reader's).
pub(crate) fn same_epoch(reader: &str, current: &str) -> bool {
    reader.is_empty() || reader == current
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random epoch: 8 ASCII letters and digits.
pub fn new_epoch() -> String {
    use rand::Rng as _;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
