//! The hub: which local connections listen to which channel, and fan-out to them.
//!
//! Channels are spread over [`SHARDS`] maps, each behind its own `RwLock`, so fan-out on one
//! channel never blocks subscribes on most others. The first local subscriber of a channel makes
//! the broker subscribe (every concurrent subscriber awaits that same subscription before it
//! reads history, so recovery is always "subscribe first"); when the last one leaves, the broker
//! is unsubscribed after `unsubscribe_delay` if the channel is still unused.
//!
//! Fan-out never waits on a client: a publication is wrapped once in a [`Delivery`] (whose
//! frames are encoded at most once per node) and `try_send` into each subscriber's bounded
//! queue. A full queue marks the connection for closing with 4008 through its
//! [`ConnHandle::kill`]; the client resumes from history when it reconnects.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, BrokerEvent, BrokerEvents, Payload, Publication};
use herald_protocol::CloseCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::EdgeError;
use crate::metrics::{Metrics, Transport};

/// Shards of the channel map.
pub const SHARDS: usize = 64;

/// A publication as this node delivers it, with its frames encoded lazily, once.
pub struct Delivery {
    /// The publication.
    pub publication: Arc<Publication>,
    text: OnceLock<Utf8Bytes>,
    binary: OnceLock<Bytes>,
}

impl Delivery {
    /// Wraps a publication.
    pub fn new(publication: Arc<Publication>) -> Self {
        Self {
            publication,
            text: OnceLock::new(),
            binary: OnceLock::new(),
        }
    }

    /// The JSON message frame (shared by WebSocket text, SSE `data:` and poll replies).
    pub fn text(&self) -> &Utf8Bytes {
        self.text
            .get_or_init(|| Utf8Bytes::from(self.publication.json_frame()))
    }

    /// The binary WebSocket frame, for binary payloads.
    pub fn binary(&self) -> Option<&Bytes> {
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
pub enum EventKind {
    /// A client joined.
    Join,
    /// A client left.
    Leave,
    /// A broadcast to every connection.
    Broadcast,
}

impl EventKind {
    /// SSE event name.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Broadcast => "broadcast",
        }
    }
}

/// An item in a connection's outbound queue.
#[derive(Clone)]
pub enum Outbound {
    /// A publication on a subscribed channel.
    Publication(Arc<Delivery>),
    /// Join, leave or broadcast, already encoded as JSON text.
    Event(EventKind, Utf8Bytes),
    /// The broker lost and regained its subscription: check history for gaps.
    Resync,
}

/// The hub's handle on one connection.
pub struct ConnHandle {
    /// Hub-unique key.
    pub key: u64,
    /// The client id (as in `from`, presence and `skip_self`).
    pub client: Arc<str>,
    /// The connection's transport (metric label).
    pub transport: Transport,
    /// Fan-out sends here with `try_send`; the connection's task receives. Bounded by
    /// `limits.outbound_queue`; full means the connection is killed with 4008.
    tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection must close; [`ConnHandle::close_code`] says why. The
    /// connection's task listens; the hub (slow consumer) and the node (shutdown) cancel.
    pub cancel: CancellationToken,
    close_code: AtomicU16,
}

impl ConnHandle {
    /// Closes the connection with `code` (the first reason wins).
    pub fn kill(&self, code: CloseCode) {
        let _ =
            self.close_code
                .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire);
        self.cancel.cancel();
    }

    /// Why the connection was killed, if it was.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self.close_code.load(Ordering::Acquire) {
            0 => None,
            4008 => Some(CloseCode::SlowConsumer),
            1012 => Some(CloseCode::Restart),
            1013 => Some(CloseCode::TryAgainLater),
            _ => Some(CloseCode::Internal),
        }
    }

    fn offer(&self, item: Outbound, metrics: &Metrics) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
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
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

struct ChannelEntry {
    subscribers: Vec<Arc<ConnHandle>>,
    /// Initialised once the broker subscription for this entry is live.
    ready: Arc<tokio::sync::OnceCell<()>>,
}

type ChannelShard = RwLock<HashMap<Arc<str>, ChannelEntry>>;
type ConnectionShard = Mutex<HashMap<u64, Arc<ConnHandle>>>;

/// Channel → local subscribers, and every local connection.
pub struct Hub {
    /// Channel → subscribers. Written on (un)subscribe, read by fan-out.
    channels: Box<[ChannelShard]>,
    /// Every local connection, for broadcasts to all and shutdown.
    connections: Box<[ConnectionShard]>,
    hasher: RandomState,
    next_key: std::sync::atomic::AtomicU64,
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    unsubscribe_delay: Duration,
    queue_size: usize,
}

impl Hub {
    /// A hub over `broker`. Attach it with `broker.attach(hub.clone())`.
    pub fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        unsubscribe_delay: Duration,
        queue_size: usize,
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
        }
    }

    fn channel_shard(&self, channel: &str) -> &ChannelShard {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// Registers a connection; returns its handle and the receiving end of its queue.
    pub fn connect(
        &self,
        client: Arc<str>,
        transport: Transport,
        parent: &CancellationToken,
    ) -> (Arc<ConnHandle>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(self.queue_size);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(ConnHandle {
            key,
            client,
            transport,
            tx,
            cancel: parent.child_token(),
            close_code: AtomicU16::new(0),
        });
        self.connections[(key as usize) % SHARDS]
            .lock()
            .expect("connections lock")
            .insert(key, handle.clone());
        (handle, rx)
    }

    /// Forgets a connection (its channels must be left with [`Hub::unsubscribe`] first).
    pub fn disconnect(&self, handle: &ConnHandle) {
        self.connections[(handle.key as usize) % SHARDS]
            .lock()
            .expect("connections lock")
            .remove(&handle.key);
    }

    /// Adds `handle` to `channel` and waits until the broker subscription is live.
    pub async fn subscribe(
        self: &Arc<Self>,
        channel: &str,
        handle: &Arc<ConnHandle>,
    ) -> Result<(), EdgeError> {
        let ready = {
            let mut shard = self.channel_shard(channel).write().expect("hub lock");
            let entry = match shard.get_mut(channel) {
                Some(e) => e,
                None => {
                    self.metrics.channels.inc();
                    shard.entry(Arc::from(channel)).or_insert(ChannelEntry {
                        subscribers: Vec::new(),
                        ready: Arc::new(tokio::sync::OnceCell::new()),
                    })
                }
            };
            entry.subscribers.push(handle.clone());
            entry.ready.clone()
        };
        self.metrics.subscriptions.inc();
        let result = ready
            .get_or_try_init(|| async { self.broker.subscribe(channel).await })
            .await;
        if let Err(err) = result {
            self.unsubscribe(channel, handle);
            return Err(err.into());
        }
        Ok(())
    }

    /// Removes `handle` from `channel`; the broker is unsubscribed later if nobody returns.
    pub fn unsubscribe(self: &Arc<Self>, channel: &str, handle: &ConnHandle) {
        let now_empty = {
            let mut shard = self.channel_shard(channel).write().expect("hub lock");
            let Some(entry) = shard.get_mut(channel) else {
                return;
            };
            let before = entry.subscribers.len();
            entry.subscribers.retain(|h| h.key != handle.key);
            if entry.subscribers.len() < before {
                self.metrics.subscriptions.dec();
            }
            entry.subscribers.is_empty().then(|| entry.ready.clone())
        };
        if let Some(ready) = now_empty {
            let hub = self.clone();
            let channel: Arc<str> = Arc::from(channel);
            tokio::spawn(async move {
                tokio::time::sleep(hub.unsubscribe_delay).await;
                hub.release_if_unused(&channel, &ready).await;
            });
        }
    }

    async fn release_if_unused(&self, channel: &str, ready: &Arc<tokio::sync::OnceCell<()>>) {
        let removed = {
            let mut shard = self.channel_shard(channel).write().expect("hub lock");
            match shard.get(channel) {
                Some(e) if e.subscribers.is_empty() && Arc::ptr_eq(&e.ready, ready) => {
                    shard.remove(channel);
                    true
                }
                _ => false,
            }
        };
        if removed {
            self.metrics.channels.dec();
            if ready.initialized() {
                if let Err(err) = self.broker.unsubscribe(channel).await {
                    tracing::warn!(cause = %err, "broker unsubscribe failed");
                }
            }
        }
    }

    /// Channels with local subscribers.
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
    pub fn all_connections(&self) -> Vec<Arc<ConnHandle>> {
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
        self.fan_out(channel, |_| Some(Outbound::Event(kind, text.clone())));
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
                let delivery = Arc::new(Delivery::new(publication));
                self.fan_out(&channel, |h| {
                    if skip.as_deref() == Some(&*h.client) {
                        return None;
                    }
                    Some(Outbound::Publication(delivery.clone()))
                });
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
                self.to_everyone(Outbound::Event(EventKind::Broadcast, Utf8Bytes::from(data)));
            }
            BrokerEvent::Resync => self.to_everyone(Outbound::Resync),
        }
    }
}
