//! The hub: which local connections listen to which channel, and fan-out to them.
//!
//! Channels are spread over `SHARDS` maps, each behind its own `RwLock`, so fan-out on one
//! channel never blocks subscribes on most others. The first local subscriber of a channel makes
//! the broker subscribe (every concurrent subscriber awaits that same subscription before it
//! reads history, so recovery is always "subscribe first"); when the last one leaves, the channel
//! is marked idle, and the hub's reaper (one task, on the node's background tracker)
//! unsubscribes the broker once it has stayed idle for `unsubscribe_delay` — the one
//! unsubscribe delay of the node: the broker unsubscribes when told. A subscriber that comes back within the delay finds
//! the channel still live and costs nothing.
//!
//! The broker holds the hub only through a `Weak` (see [`herald_broker::Broker::attach`]); the
//! hub owns its broker handle, so there is no ownership cycle.
//!
//! Fan-out never waits on a client: a publication is wrapped once in a `Delivery` (whose
//! frames are encoded at most once per node) and `try_send` into each subscriber's bounded
//! queue. A full queue marks the connection for closing with 4008 through its
//! `ConnHandle::kill`; the client resumes from history when it reconnects.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::{Broker, BrokerEvent, BrokerEvents, Payload, Publication};
use herald_protocol::frame::MessageData;
use herald_protocol::{CloseCode, StreamPosition};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::EdgeError;
use crate::metrics::{Metrics, Transport};

mod queue;
pub(crate) use queue::Queue;
use queue::Refused;

/// Shards of the channel map.
const SHARDS: usize = 64;

/// A publication as this node delivers it, with its frames encoded lazily, once.
pub(crate) struct Delivery {
    /// The publication.
    pub(crate) publication: Arc<Publication>,
    text: OnceLock<Utf8Bytes>,
    binary: OnceLock<Bytes>,
    /// Centrifugo's publication object and its push (`/connection/websocket`).
    centrifugo: OnceLock<(String, Utf8Bytes)>,
}

impl Delivery {
    /// Wraps a publication.
    pub(crate) fn new(publication: Arc<Publication>) -> Self {
        Self {
            publication,
            text: OnceLock::new(),
            binary: OnceLock::new(),
            centrifugo: OnceLock::new(),
        }
    }

    /// The JSON message frame (shared by WebSocket text, SSE `data:` and poll replies).
    pub(crate) fn text(&self) -> &Utf8Bytes {
        self.text.get_or_init(|| {
            let p = &self.publication;
            let data = match &p.payload {
                Payload::Json(raw) => MessageData::Json(raw),
                Payload::Binary(bytes) => MessageData::Binary(bytes),
            };
            Utf8Bytes::from(herald_protocol::frame::encode_publication(
                &p.channel,
                &p.epoch,
                p.offset,
                p.ts_ms,
                data,
                p.from.as_deref(),
                p.user.as_deref(),
            ))
        })
    }

    /// Centrifugo's publication object (embedded in subscribe and history results) and its
    /// `pub` push, encoded once per node. Binary payloads travel as `{"$binary":"<base64>"}`.
    pub(crate) fn centrifugo(&self) -> &(String, Utf8Bytes) {
        self.centrifugo.get_or_init(|| {
            use herald_protocol::centrifugo::reply;
            let p = &self.publication;
            let marker;
            let data: &serde_json::value::RawValue = match &p.payload {
                Payload::Json(raw) => raw,
                Payload::Binary(bytes) => {
                    marker = serde_json::value::RawValue::from_string(
                        herald_protocol::frame::binary_marker(bytes),
                    )
                    .expect("marker is JSON");
                    &marker
                }
            };
            let info = p.from.as_deref().map(|client| reply::ClientInfo {
                user: p.user.as_deref().unwrap_or(""),
                client,
                conn_info: None,
            });
            let publication = reply::encode_publication(data, p.offset, p.ts_ms, &p.epoch, info);
            let push = Utf8Bytes::from(reply::encode_pub_push(&p.channel, &publication));
            (publication, push)
        })
    }

    /// The binary WebSocket frame, for binary payloads.
    pub(crate) fn binary(&self) -> Option<&Bytes> {
        match &self.publication.payload {
            Payload::Binary(payload) => Some(self.binary.get_or_init(|| {
                Bytes::from(herald_protocol::binary::encode_binary_delivery(
                    &self.publication.channel,
                    self.publication.offset,
                    payload,
                ))
            })),
            Payload::Json(_) => None,
        }
    }
}

/// What kind of non-publication event a connection receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventKind {
    /// A client joined.
    Join,
    /// A client left.
    Leave,
    /// A broadcast to every connection.
    Broadcast,
}

impl EventKind {
    /// SSE event name.
    pub(crate) fn name(self) -> &'static str {
        use herald_protocol::sse;
        match self {
            EventKind::Join => sse::JOIN,
            EventKind::Leave => sse::LEAVE,
            EventKind::Broadcast => sse::BROADCAST,
        }
    }
}

/// An item in a connection's outbound queue.
#[derive(Clone)]
pub(crate) enum Outbound {
    /// A publication on a subscribed channel.
    Publication(Arc<Delivery>),
    /// Join, leave or broadcast, already encoded as JSON text; one allocation shared by every
    /// queue it goes to. Behind an `Arc` so that `Outbound` is two words (queued items cost
    /// 16 bytes each, not 40).
    Event(Arc<(EventKind, Utf8Bytes)>),
    /// The broker lost and regained its subscription: check history for gaps.
    Resync,
}

// Kept at two words (see `Outbound::Event`).
const _: () = assert!(std::mem::size_of::<Outbound>() == 16);

impl Outbound {
    /// What the item is taken to cost in memory while queued: its payload or text plus a fixed
    /// overhead for the wrapper (the encoded frame, when built, is shared by every queue).
    pub(crate) fn cost(&self) -> usize {
        const OVERHEAD: usize = 128;
        OVERHEAD
            + match self {
                Outbound::Publication(d) => d.publication.payload.len(),
                Outbound::Event(event) => event.1.len(),
                Outbound::Resync => 0,
            }
    }
}

/// The hub's handle on one connection.
pub(crate) struct ConnHandle {
    /// Hub-unique key.
    key: u64,
    /// The client id (as in `from`, presence and `skip_self`).
    pub(crate) client: Arc<str>,
    /// The connection's authenticated user (`None` when anonymous): `POST /publish` may name
    /// this connection only as the same user.
    pub(crate) user: Option<Arc<str>>,
    /// The connection's transport (metric label).
    transport: Transport,
    /// Fan-out pushes here; the connection's task pops. Bounded by `limits.outbound_queue`;
    /// full means the connection is killed with 4008.
    pub(crate) queue: Queue,
    /// Cancelled when the connection must close; [`ConnHandle::close_code`] says why. The
    /// connection's task listens; the hub (slow consumer) and the node (shutdown) cancel.
    pub(crate) cancel: CancellationToken,
    close_code: AtomicU16,
    /// Bytes of the items in the queue (see [`Outbound::cost`]): fan-out adds, the
    /// connection subtracts as it takes them. Over `byte_budget` the connection is closed 4008.
    queued_bytes: AtomicUsize,
    /// `limits.outbound_queue_bytes`.
    byte_budget: usize,
}

impl ConnHandle {
    /// Closes the connection with `code` (the first reason wins).
    pub(crate) fn kill(&self, code: CloseCode) {
        let _ =
            self.close_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.cancel.cancel();
    }

    /// Why the connection was killed, if it was.
    pub(crate) fn close_code(&self) -> Option<CloseCode> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            code => Some(CloseCode::from_code(code).unwrap_or(CloseCode::Internal)),
        }
    }

    /// Marks an item as taken off the queue (its bytes leave the budget).
    pub(crate) fn taken(&self, item: &Outbound) {
        self.queued_bytes.fetch_sub(item.cost(), Ordering::AcqRel);
    }

    fn offer(&self, item: Outbound, metrics: &Metrics) {
        let cost = item.cost();
        let before = self.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.byte_budget {
            self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            metrics.limit_rejected(crate::metrics::Limit::OutboundBytes);
            self.overflow(metrics);
            return;
        }
        match self.queue.push(item) {
            Ok(()) => {}
            Err(Refused::Full) => {
                self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
                self.overflow(metrics);
            }
            Err(Refused::Closed) => {
                self.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            }
        }
    }

    /// The queue is full (by count or bytes): drop, count, and close the connection (4008).
    fn overflow(&self, metrics: &Metrics) {
        if !self.cancel.is_cancelled() {
            metrics
                .slow_consumers
                .with_label_values(&[self.transport.label()])
                .inc();
        }
        metrics
            .dropped
            .with_label_values(&[self.transport.label(), "slow_consumer"])
            .inc();
        self.kill(CloseCode::SlowConsumer);
    }
}

struct ChannelEntry {
    subscribers: Vec<Arc<ConnHandle>>,
    /// Initialised once the broker subscription for this entry is live.
    ready: Arc<tokio::sync::OnceCell<()>>,
    /// The channel's newest position as far as this edge knows, while the broker subscription
    /// is live (see [`Joined::known`]): set by every live publication fanned out here and by a
    /// complete history read made while the subscription was live; cleared by a resync.
    newest: Mutex<Option<(Arc<str>, u64)>>,
    /// When the last subscriber left (None while anyone listens).
    idle_since: Option<Instant>,
    /// Whether the channel is in the hub's idle list (at most once).
    queued: bool,
}

type ChannelShard = RwLock<HashMap<Arc<str>, ChannelEntry>>;
type ConnectionShard = Mutex<HashMap<Arc<str>, Arc<ConnHandle>>>;

/// Channel → local subscribers, and every local connection.
pub struct Hub {
    /// Channel → subscribers. Written on (un)subscribe, read by fan-out.
    channels: Box<[ChannelShard]>,
    /// Every local connection by client id, for broadcasts to all, shutdown, and the
    /// `POST /publish` check of a named connection.
    connections: Box<[ConnectionShard]>,
    hasher: RandomState,
    next_key: std::sync::atomic::AtomicU64,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    unsubscribe_delay: Duration,
    queue_size: usize,
    byte_budget: usize,
    /// Channels that became idle, roughly oldest first: pushed by [`Hub::unsubscribe`], taken
    /// by the reaper ([`Hub::run_reaper`]) once `unsubscribe_delay` has passed. A channel is in
    /// it at most once (`ChannelEntry::queued`), so it is bounded by the number of channels
    /// however often a client subscribes and unsubscribes.
    idle: Mutex<VecDeque<(Arc<str>, Instant)>>,
    /// Resyncs seen: a history read started before a resync must not fill a channel's
    /// `newest` after it (see [`Hub::remember`]).
    resyncs: AtomicU64,
}

/// A subscriber's place in a channel, from [`Hub::subscribe`].
pub(crate) struct Joined {
    /// The channel's newest position, when this edge knows it: the broker subscription was
    /// already live when the subscriber was added, and the position is the last publication
    /// fanned out here (or a complete history read made while live, with no resync since).
    /// Every publication after it reaches the subscriber live (or, after a lost subscription,
    /// the resync that makes it read history), because it was added under the same lock that
    /// fan-out holds: a subscriber at this position needs no history read.
    pub(crate) known: Option<StreamPosition>,
    ready: Arc<tokio::sync::OnceCell<()>>,
    resyncs: u64,
}

impl Hub {
    /// A hub over `broker`. Attach it with `broker.attach(Arc::downgrade(&hub))`.
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        unsubscribe_delay: Duration,
        queue_size: usize,
        byte_budget: usize,
    ) -> Self {
        Self {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            connections: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_key: std::sync::atomic::AtomicU64::new(1),
            broker,
            metrics,
            unsubscribe_delay,
            queue_size,
            byte_budget,
            idle: Mutex::new(VecDeque::new()),
            resyncs: AtomicU64::new(0),
        }
    }

    fn channel_shard(&self, channel: &str) -> &ChannelShard {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    fn connection_shard(&self, client: &str) -> &ConnectionShard {
        &self.connections[(self.hasher.hash_one(client) as usize) % SHARDS]
    }

    /// Registers a connection; returns its handle, whose queue the connection's task pops.
    pub(crate) fn connect(
        &self,
        client: Arc<str>,
        user: Option<Arc<str>>,
        transport: Transport,
        parent: &CancellationToken,
    ) -> Arc<ConnHandle> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ConnHandle {
            key,
            client: client.clone(),
            user,
            transport,
            queue: Queue::new(self.queue_size),
            cancel: parent.child_token(),
            close_code: AtomicU16::new(0),
            queued_bytes: AtomicUsize::new(0),
            byte_budget: self.byte_budget,
        });
        self.connection_shard(&client)
            .lock()
            .expect("connections lock")
            .insert(client, handle.clone());
        handle
    }

    /// Forgets a connection (its channels must be left with [`Hub::unsubscribe`] first).
    pub(crate) fn disconnect(&self, handle: &ConnHandle) {
        let mut shard = self
            .connection_shard(&handle.client)
            .lock()
            .expect("connections lock");
        if shard
            .get(&handle.client)
            .is_some_and(|h| h.key == handle.key)
        {
            shard.remove(&handle.client);
        }
    }

    /// The local connection with this client id, if there is one.
    pub(crate) fn find(&self, client: &str) -> Option<Arc<ConnHandle>> {
        self.connection_shard(client)
            .lock()
            .expect("connections lock")
            .get(client)
            .cloned()
    }

    /// Whether `handle` is subscribed to `channel` here.
    pub(crate) fn is_subscribed(&self, channel: &str, handle: &ConnHandle) -> bool {
        let shard = self.channel_shard(channel).read().expect("hub lock");
        shard
            .get(channel)
            .is_some_and(|e| e.subscribers.iter().any(|h| h.key == handle.key))
    }

    /// Adds `handle` to `channel` and waits until the broker subscription is live; says what
    /// the edge knows of the channel's position (see [`Joined::known`]).
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        handle: &Arc<ConnHandle>,
    ) -> Result<Joined, EdgeError> {
        let (ready, known, resyncs) = {
            let mut shard = self.channel_shard(channel).write().expect("hub lock");
            let entry = match shard.get_mut(channel) {
                Some(e) => e,
                None => {
                    self.metrics.channels.inc();
                    shard.entry(Arc::from(channel)).or_insert(ChannelEntry {
                        subscribers: Vec::new(),
                        ready: Arc::new(tokio::sync::OnceCell::new()),
                        newest: Mutex::new(None),
                        idle_since: None,
                        queued: false,
                    })
                }
            };
            entry.subscribers.push(handle.clone());
            entry.idle_since = None;
            // Read under the write lock, with the subscriber added: no fan-out is in between.
            let newest = entry.newest.lock().expect("newest lock");
            let known = match &*newest {
                Some((epoch, offset)) if entry.ready.initialized() => Some(StreamPosition {
                    epoch: epoch.to_string(),
                    offset: *offset,
                }),
                _ => None,
            };
            drop(newest);
            (
                entry.ready.clone(),
                known,
                self.resyncs.load(Ordering::Acquire),
            )
        };
        self.metrics.subscriptions.inc();
        let result = ready
            .get_or_try_init(|| async { self.broker.subscribe(channel).await })
            .await;
        if let Err(err) = result {
            self.unsubscribe(channel, handle);
            return Err(err.into());
        }
        Ok(Joined {
            known,
            ready,
            resyncs,
        })
    }

    /// Records `position`, the channel's newest as a history read after `joined` found it
    /// (the read was made with the broker subscription live), unless the edge learnt a
    /// position since — a live publication is never older than a read that raced it — or a
    /// resync came in between (the read may predate a publication the subscription lost), or
    /// the channel was released and made anew.
    pub(crate) fn remember(&self, channel: &str, joined: &Joined, position: &StreamPosition) {
        let shard = self.channel_shard(channel).read().expect("hub lock");
        let Some(entry) = shard.get(channel) else {
            return;
        };
        if !Arc::ptr_eq(&entry.ready, &joined.ready) {
            return;
        }
        let mut newest = entry.newest.lock().expect("newest lock");
        // Checked under the entry's lock: a resync counts first, then clears every entry.
        if newest.is_none() && self.resyncs.load(Ordering::Acquire) == joined.resyncs {
            *newest = Some((Arc::from(position.epoch.as_str()), position.offset));
        }
    }

    /// Forgets every channel's known position (the broker lost and regained its
    /// subscriptions: what it delivered may have gaps).
    fn forget_positions(&self) {
        self.resyncs.fetch_add(1, Ordering::AcqRel);
        for shard in self.channels.iter() {
            let shard = shard.read().expect("hub lock");
            for entry in shard.values() {
                *entry.newest.lock().expect("newest lock") = None;
            }
        }
    }

    /// Removes `handle` from `channel`; the broker is unsubscribed later if nobody returns.
    pub(crate) fn unsubscribe(&self, channel: &str, handle: &ConnHandle) {
        let mut shard = self.channel_shard(channel).write().expect("hub lock");
        let Some((name, _)) = shard.get_key_value(channel) else {
            return;
        };
        let name = name.clone();
        let entry = shard.get_mut(channel).expect("entry just seen");
        // Order does not matter to fan-out: swap out instead of shifting the rest (this runs
        // at the end of every poll, on channels with thousands of subscribers).
        let mut i = 0;
        while i < entry.subscribers.len() {
            if entry.subscribers[i].key == handle.key {
                entry.subscribers.swap_remove(i);
                self.metrics.subscriptions.dec();
            } else {
                i += 1;
            }
        }
        if entry.subscribers.is_empty() && entry.idle_since.is_none() {
            let now = Instant::now();
            entry.idle_since = Some(now);
            if !entry.queued {
                entry.queued = true;
                drop(shard);
                self.idle.lock().expect("idle lock").push_back((name, now));
            }
        }
    }

    /// Runs until `stop`: releases channels that stayed idle for `unsubscribe_delay`, checking
    /// every half delay (10 ms … 1 s).
    pub(crate) async fn run_reaper(self: Arc<Self>, stop: CancellationToken) {
        let tick =
            (self.unsubscribe_delay / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            for channel in self.take_due() {
                self.broker
                    .unsubscribe(&channel)
                    .await
                    .unwrap_or_else(|err| {
                        tracing::warn!(cause = %err, "broker unsubscribe failed");
                    });
            }
        }
    }

    /// Removes the channels idle for the whole delay; returns those whose broker subscription
    /// was live (they need a broker unsubscribe).
    fn take_due(&self) -> Vec<Arc<str>> {
        let now = Instant::now();
        let due_at = |since: Instant| now.duration_since(since) >= self.unsubscribe_delay;
        let mut due = Vec::new();
        loop {
            let next = {
                let mut idle = self.idle.lock().expect("idle lock");
                match idle.front() {
                    Some((_, since)) if due_at(*since) => idle.pop_front(),
                    _ => None,
                }
            };
            let Some((channel, _)) = next else {
                break;
            };
            let mut shard = self.channel_shard(&channel).write().expect("hub lock");
            let Some(entry) = shard.get_mut(&*channel) else {
                continue;
            };
            match entry.idle_since {
                // Someone came back: the channel stays, and leaves the list.
                None => entry.queued = false,
                // Idle again, but since later than it was queued: wait for its own time.
                Some(since) if !due_at(since) => {
                    drop(shard);
                    self.idle
                        .lock()
                        .expect("idle lock")
                        .push_back((channel, since));
                }
                Some(_) => {
                    let entry = shard.remove(&*channel).expect("entry just seen");
                    drop(shard);
                    self.metrics.channels.dec();
                    if entry.ready.initialized() {
                        due.push(channel);
                    }
                }
            }
        }
        due
    }

    /// Channels with local subscribers (or in their unsubscribe delay).
    pub fn channel_count(&self) -> usize {
        self.channels
            .iter()
            .map(|s| s.read().expect("hub lock").len())
            .sum()
    }

    /// Local connections.
    pub fn connection_count(&self) -> usize {
        self.connections
            .iter()
            .map(|s| s.lock().expect("connections lock").len())
            .sum()
    }

    /// Every local connection (for shutdown).
    pub(crate) fn all_connections(&self) -> Vec<Arc<ConnHandle>> {
        self.connections
            .iter()
            .flat_map(|s| {
                s.lock()
                    .expect("connections lock")
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn fan_out(&self, channel: &str, mut item: impl FnMut(&ConnHandle) -> Option<Outbound>) {
        let shard = self.channel_shard(channel).read().expect("hub lock");
        if let Some(entry) = shard.get(channel) {
            for handle in &entry.subscribers {
                if let Some(out) = item(handle) {
                    handle.offer(out, &self.metrics);
                }
            }
        }
    }

    fn presence_event(
        &self,
        kind: EventKind,
        channel: &str,
        entry: &herald_protocol::frame::PresenceEntry,
    ) {
        let text = Utf8Bytes::from(herald_protocol::frame::encode_join_leave(
            kind == EventKind::Join,
            channel,
            entry,
        ));
        let event = Arc::new((kind, text));
        self.fan_out(channel, |_| Some(Outbound::Event(event.clone())));
    }

    fn to_everyone(&self, item: Outbound) {
        for shard in self.connections.iter() {
            let shard = shard.lock().expect("connections lock");
            for handle in shard.values() {
                handle.offer(item.clone(), &self.metrics);
            }
        }
    }
}

impl BrokerEvents for Hub {
    fn on_event(&self, event: BrokerEvent) {
        match event {
            BrokerEvent::Publication(publication) => {
                let channel = publication.channel.clone();
                let skip = match (&publication.from, publication.skip_self) {
                    (Some(from), true) => Some(from.clone()),
                    _ => None,
                };
                let shard = self.channel_shard(&channel).read().expect("hub lock");
                let Some(entry) = shard.get(&*channel) else {
                    return;
                };
                if entry.ready.initialized() {
                    let mut newest = entry.newest.lock().expect("newest lock");
                    let behind = matches!(&*newest,
                        Some((epoch, offset)) if *epoch == publication.epoch && *offset >= publication.offset);
                    if !behind {
                        *newest = Some((publication.epoch.clone(), publication.offset));
                    }
                }
                let delivery = Arc::new(Delivery::new(publication));
                for handle in &entry.subscribers {
                    if skip.as_deref() != Some(&*handle.client) {
                        handle.offer(Outbound::Publication(delivery.clone()), &self.metrics);
                    }
                }
            }
            BrokerEvent::Join { channel, entry } => {
                self.presence_event(EventKind::Join, &channel, &entry)
            }
            BrokerEvent::Leave { channel, entry } => {
                self.presence_event(EventKind::Leave, &channel, &entry)
            }
            BrokerEvent::Broadcast(payload) => {
                self.metrics.broadcasts.inc();
                let data = match &*payload {
                    Payload::Json(raw) => herald_protocol::frame::encode_broadcast(raw),
                    Payload::Binary(b) => {
                        let marker = herald_protocol::frame::binary_marker(b);
                        let raw = serde_json::value::RawValue::from_string(marker)
                            .expect("marker is JSON");
                        herald_protocol::frame::encode_broadcast(&raw)
                    }
                };
                self.to_everyone(Outbound::Event(Arc::new((
                    EventKind::Broadcast,
                    Utf8Bytes::from(data),
                ))));
            }
            BrokerEvent::Resync => {
                // Forgotten before anyone hears of the resync: a subscriber that took a known
                // position before this is a connection, and reads history on the resync.
                self.forget_positions();
                self.to_everyone(Outbound::Resync)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_broker::memory::MemoryBroker;

    fn hub(delay: Duration) -> Arc<Hub> {
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
        let hub = Arc::new(Hub::new(
            broker.clone(),
            Arc::new(Metrics::new()),
            delay,
            8,
            1 << 20,
        ));
        let events: Arc<dyn BrokerEvents> = hub.clone();
        broker.attach(Arc::downgrade(&events));
        hub
    }

    #[tokio::test]
    async fn churn_keeps_one_idle_entry_per_channel_and_the_delay_holds() {
        let hub = hub(Duration::from_secs(3600));
        let token = CancellationToken::new();
        let conn = hub.connect(Arc::from("c1"), None, Transport::Ws, &token);
        for _ in 0..1000 {
            hub.subscribe("a", &conn).await.unwrap();
            hub.unsubscribe("a", &conn);
        }
        assert_eq!(
            hub.idle.lock().unwrap().len(),
            1,
            "one entry, however much churn"
        );
        assert!(hub.take_due().is_empty(), "not before the delay");
        assert_eq!(hub.channel_count(), 1, "kept for the delay");
    }

    #[tokio::test]
    async fn an_idle_channel_is_released_once_and_a_returning_one_is_kept() {
        let hub = hub(Duration::ZERO);
        let token = CancellationToken::new();
        let conn = hub.connect(Arc::from("c1"), None, Transport::Ws, &token);
        hub.subscribe("gone", &conn).await.unwrap();
        hub.subscribe("back", &conn).await.unwrap();
        hub.unsubscribe("gone", &conn);
        hub.unsubscribe("back", &conn);
        hub.subscribe("back", &conn).await.unwrap();
        let released = hub.take_due();
        assert_eq!(released.iter().map(|c| &**c).collect::<Vec<_>>(), ["gone"]);
        assert_eq!(hub.channel_count(), 1, "`back` has a subscriber again");
        assert!(hub.idle.lock().unwrap().is_empty());
        assert!(hub.take_due().is_empty(), "released once");
        // Leaving again queues it again.
        hub.unsubscribe("back", &conn);
        assert_eq!(hub.take_due().len(), 1);
        assert_eq!(hub.channel_count(), 0);
    }

    async fn publish(hub: &Hub, channel: &str) -> StreamPosition {
        hub.broker
            .publish(herald_broker::PublishRequest {
                channel: Arc::from(channel),
                payload: Payload::Json(
                    serde_json::value::RawValue::from_string("1".into()).unwrap(),
                ),
                from: None,
                user: None,
                skip_self: false,
                history: herald_broker::HistoryOptions {
                    size: 10,
                    ttl: Duration::from_secs(60),
                },
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_known_position_is_the_last_fanned_out_until_a_resync() {
        let hub = hub(Duration::from_secs(3600));
        let token = CancellationToken::new();
        let c1 = hub.connect(Arc::from("c1"), None, Transport::Ws, &token);
        let c2 = hub.connect(Arc::from("c2"), None, Transport::Ws, &token);
        let c3 = hub.connect(Arc::from("c3"), None, Transport::Ws, &token);
        let first = hub.subscribe("k", &c1).await.unwrap();
        assert_eq!(first.known, None, "nothing fanned out, nothing read yet");
        publish(&hub, "k").await;
        let second = publish(&hub, "k").await;
        let joined = hub.subscribe("k", &c2).await.unwrap();
        assert_eq!(joined.known.as_ref(), Some(&second));
        hub.on_event(BrokerEvent::Resync);
        let after = hub.subscribe("k", &c3).await.unwrap();
        assert_eq!(
            after.known, None,
            "a resync forgets: the subscription may have lost some"
        );
    }

    #[tokio::test]
    async fn a_read_older_than_a_resync_or_a_live_publication_is_not_remembered() {
        let hub = hub(Duration::from_secs(3600));
        let token = CancellationToken::new();
        let c1 = hub.connect(Arc::from("c1"), None, Transport::Ws, &token);
        let c2 = hub.connect(Arc::from("c2"), None, Transport::Ws, &token);
        let c3 = hub.connect(Arc::from("c3"), None, Transport::Ws, &token);
        let c4 = hub.connect(Arc::from("c4"), None, Transport::Ws, &token);
        let read = StreamPosition {
            epoch: String::new(),
            offset: 0,
        };
        // A read that raced a resync.
        let joined = hub.subscribe("k", &c1).await.unwrap();
        hub.on_event(BrokerEvent::Resync);
        hub.remember("k", &joined, &read);
        assert_eq!(hub.subscribe("k", &c2).await.unwrap().known, None);
        // A read that raced a live publication (the read saw the channel before it).
        let joined = hub.subscribe("k", &c3).await.unwrap();
        let live = publish(&hub, "k").await;
        hub.remember("k", &joined, &read);
        let now = hub.subscribe("k", &c4).await.unwrap();
        assert_eq!(now.known.as_ref(), Some(&live));
        // With no race, a read is remembered.
        hub.on_event(BrokerEvent::Resync);
        let joined = hub.subscribe("j", &c1).await.unwrap();
        hub.remember("j", &joined, &read);
        assert_eq!(hub.subscribe("j", &c2).await.unwrap().known, Some(read));
    }
}
