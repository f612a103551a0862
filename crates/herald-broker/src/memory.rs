//! The in-process broker: the embedded default for a single edge with no Redis.
//!
//! Channels live in [`SHARDS`] maps keyed by name; each channel's state sits behind its own
//! mutex. A publish takes that mutex, assigns the next offset, appends to the bounded history
//! and hands the publication to [`BrokerEvents`] before releasing it, so events of one channel
//! reach the edge in offset order. The edge's handler only does `try_send`s, so the lock is held
//! for the length of one fan-out, never across an await.
//!
//! Only channels with a local subscription (`subscribe` minus `unsubscribe` above zero) have
//! their publications, joins and leaves delivered; broadcasts go to every attached sink.
//! Several edges may attach to one memory broker (a cluster in one process, for tests): each
//! sink then gets the events of every channel any of them subscribed to.
//!
//! The broker holds its sinks as [`Weak`]s (see [`Broker::attach`]): each delivery upgrades
//! them, and an event for a sink that is gone is dropped.
//!
//! History per channel is bounded by the namespace's size and TTL. Time is read from tokio's
//! clock ([`tokio::time::Instant`]), so a test that pauses time ages history with
//! `tokio::time::advance`. A sweeper task ([`MemoryBroker::spawn_sweeper`]) drops expired
//! messages and forgets channels that have no history and no subscriber; a forgotten channel
//! starts again at a new epoch, so an old cursor gets `recovered: false` rather than a silent
//! gap. The sweeper holds only a `Weak` to the broker and stops when the broker is dropped or
//! [`Broker::shutdown`] is called.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    new_epoch, now_ms, Broker, BrokerError, BrokerEvent, BrokerEvents, HistoryOptions, HistoryPage,
    HistoryQuery, NodeInfo, Payload, Publication, PublishRequest,
};

/// Number of shards of the channel map.
pub const SHARDS: usize = 64;

struct ChannelState {
    /// Empty until the first publish makes one (a read or subscribe alone makes no epoch).
    epoch: Arc<str>,
    top: u64,
    /// Newest at the back; bounded by the namespace's history size.
    history: VecDeque<(Instant, Arc<Publication>)>,
    ttl: Duration,
    last_used: Instant,
    /// Local subscriptions (from `subscribe`/`unsubscribe`): a channel in use is never swept.
    subscribed: u32,
}

impl ChannelState {
    fn new() -> Self {
        Self {
            epoch: Arc::from(""),
            top: 0,
            history: VecDeque::new(),
            ttl: Duration::ZERO,
            last_used: Instant::now(),
            subscribed: 0,
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.history.front() {
            if now.duration_since(*at) >= self.ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.to_string(),
            offset: self.top,
        }
    }
}

type Shard = Mutex<HashMap<Arc<str>, Arc<Mutex<ChannelState>>>>;

/// The in-process broker.
pub struct MemoryBroker {
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Presence: channel → client id → entry. One lock: presence changes once per subscribe.
    presence: Mutex<HashMap<Arc<str>, HashMap<String, PresenceEntry>>>,
    /// Registry entries by node id, written by `heartbeat_node` (several nodes may share one
    /// memory broker in tests).
    nodes: Mutex<HashMap<String, NodeInfo>>,
    /// The attached edges' event sinks, never owned: `attach` adds one, every delivery
    /// upgrades them and skips the ones whose edge is gone (pruned on the next `attach`).
    /// Each live sink gets every event (an in-process "cluster").
    events: RwLock<Vec<Weak<dyn BrokerEvents>>>,
    /// Stops the sweeper: cancelled by [`Broker::shutdown`], watched by the task
    /// [`MemoryBroker::spawn_sweeper`] started. Nothing else listens to it.
    cancel: CancellationToken,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A new, empty broker. Call [`MemoryBroker::spawn_sweeper`] to expire history.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            presence: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            events: RwLock::new(Vec::new()),
            cancel: CancellationToken::new(),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    /// The channel's state if it has any (reads use this: they create nothing).
    fn existing(&self, channel: &str) -> Option<Arc<Mutex<ChannelState>>> {
        self.shard(channel)
            .lock()
            .expect("shard lock")
            .get(channel)
            .cloned()
    }

    fn channel(&self, channel: &str) -> Arc<Mutex<ChannelState>> {
        let mut shard = self.shard(channel).lock().expect("shard lock");
        if let Some(state) = shard.get(channel) {
            return state.clone();
        }
        let state = Arc::new(Mutex::new(ChannelState::new()));
        shard.insert(Arc::from(channel), state.clone());
        state
    }

    /// Delivers `event` to every sink still alive; events for sinks that are gone are dropped.
    fn emit(&self, event: BrokerEvent) {
        let sinks = self.events.read().expect("events lock");
        match sinks.as_slice() {
            [only] => {
                if let Some(sink) = only.upgrade() {
                    sink.on_event(event);
                }
            }
            all => {
                for sink in all.iter().filter_map(Weak::upgrade) {
                    sink.on_event(event.clone());
                }
            }
        }
    }

    /// Whether `channel` has a local subscription (its joins and leaves are delivered).
    fn is_subscribed(&self, channel: &str) -> bool {
        let state = self
            .shard(channel)
            .lock()
            .expect("shard lock")
            .get(channel)
            .cloned();
        state.is_some_and(|state| state.lock().expect("channel lock").subscribed > 0)
    }

    /// Drops expired history and forgets idle, empty, unsubscribed channels. Returns how many
    /// channels were forgotten.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut forgotten = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("shard lock");
            shard.retain(|_, state| {
                let mut st = state.lock().expect("channel lock");
                st.expire(now);
                let idle = now.duration_since(st.last_used) >= st.ttl.max(Duration::from_secs(1));
                let keep = st.subscribed > 0 || !st.history.is_empty() || !idle;
                if !keep {
                    forgotten += 1;
                }
                keep
            });
        }
        forgotten
    }

    /// Runs [`MemoryBroker::sweep`] every `interval` (the first sweep one `interval` from now)
    /// until the broker is dropped or [`Broker::shutdown`] is called. The task holds only a
    /// `Weak` to the broker, so it never keeps it alive; the handle finishes when it stops.
    pub fn spawn_sweeper(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let broker = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match broker.upgrade() {
                    Some(b) => {
                        b.sweep();
                    }
                    None => break,
                }
            }
        })
    }

    /// Number of channels with state.
    pub fn channel_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("shard lock").len())
            .sum()
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn attach(&self, events: Weak<dyn BrokerEvents>) {
        let mut sinks = self.events.write().expect("events lock");
        sinks.retain(|sink| sink.strong_count() > 0);
        sinks.push(events);
    }

    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, BrokerError> {
        let state = self.channel(&request.channel);
        let mut st = state.lock().expect("channel lock");
        let now = Instant::now();
        if st.epoch.is_empty() {
            st.epoch = new_epoch().into();
        }
        st.top += 1;
        st.last_used = now;
        st.ttl = request.history.ttl;
        let publication = Arc::new(Publication {
            channel: request.channel,
            epoch: st.epoch.clone(),
            offset: st.top,
            ts_ms: now_ms(),
            payload: request.payload,
            from: request.from,
            user: request.user,
            skip_self: request.skip_self,
        });
        if request.history.size > 0 && !request.history.ttl.is_zero() {
            st.history.push_back((now, publication.clone()));
            while st.history.len() > request.history.size {
                st.history.pop_front();
            }
        } else {
            st.history.clear();
        }
        st.expire(now);
        let position = st.position();
        // Under the channel lock: events of one channel leave in offset order.
        if st.subscribed > 0 {
            self.emit(BrokerEvent::Publication(publication));
        }
        drop(st);
        Ok(position)
    }

    async fn broadcast(&self, payload: Payload) -> Result<(), BrokerError> {
        self.emit(BrokerEvent::Broadcast(Arc::new(payload)));
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let state = self.channel(channel);
        let mut st = state.lock().expect("channel lock");
        st.subscribed += 1;
        st.last_used = Instant::now();
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let state = self.channel(channel);
        let mut st = state.lock().expect("channel lock");
        st.subscribed = st.subscribed.saturating_sub(1);
        st.last_used = Instant::now();
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        // A read creates nothing: a channel without state is at epoch "", offset 0.
        let Some(state) = self.existing(channel) else {
            let recovered = match &query.since {
                None => true,
                Some(since) => since.epoch.is_empty() && since.offset == 0,
            };
            return Ok(HistoryPage {
                position: StreamPosition {
                    epoch: String::new(),
                    offset: 0,
                },
                publications: Vec::new(),
                recovered,
            });
        };
        let mut st = state.lock().expect("channel lock");
        let now = Instant::now();
        st.last_used = now;
        if st.ttl.is_zero() {
            st.ttl = options.ttl;
        }
        st.expire(now);
        let position = st.position();
        let oldest = st.history.front().map(|(_, p)| p.offset);
        let (start_after, recovered) = match &query.since {
            None => {
                let start = st.top.saturating_sub(query.limit as u64);
                (start, true)
            }
            Some(since) => {
                let same_epoch = crate::same_epoch(&since.epoch, &st.epoch);
                let covered = since.offset == st.top
                    || oldest.is_some_and(|o| since.offset + 1 >= o && since.offset <= st.top);
                (since.offset, same_epoch && covered)
            }
        };
        let publications = if recovered {
            let due = st
                .history
                .iter()
                .map(|(_, p)| p)
                .filter(|p| p.offset > start_after)
                .take(query.limit);
            match (query.max_bytes, &query.since) {
                (0, _) => due.cloned().collect(),
                // After a position: the oldest that fit.
                (max, Some(_)) => within_bytes(due, max),
                // The newest that fit.
                (max, None) => {
                    let due: Vec<&Arc<Publication>> = due.collect();
                    let mut newest = within_bytes(due.into_iter().rev(), max);
                    newest.reverse();
                    newest
                }
            }
        } else {
            Vec::new()
        };
        Ok(HistoryPage {
            position,
            publications,
            recovered,
        })
    }

    async fn presence_add(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let channel: Arc<str> = Arc::from(channel);
        let added = {
            let mut presence = self.presence.lock().expect("presence lock");
            presence
                .entry(channel.clone())
                .or_default()
                .insert(entry.client.clone(), entry.clone())
                .is_none()
        };
        if added && announce && self.is_subscribed(&channel) {
            self.emit(BrokerEvent::Join { channel, entry });
        }
        Ok(())
    }

    async fn presence_remove(
        &self,
        channel: &str,
        entry: PresenceEntry,
        announce: bool,
    ) -> Result<(), BrokerError> {
        let removed = {
            let mut presence = self.presence.lock().expect("presence lock");
            let removed = match presence.get_mut(channel) {
                Some(members) => {
                    let removed = members.remove(&entry.client).is_some();
                    if members.is_empty() {
                        presence.remove(channel);
                    }
                    removed
                }
                None => false,
            };
            removed
        };
        if removed && announce && self.is_subscribed(channel) {
            self.emit(BrokerEvent::Leave {
                channel: Arc::from(channel),
                entry,
            });
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<Vec<PresenceEntry>, BrokerError> {
        let presence = self.presence.lock().expect("presence lock");
        let mut entries: Vec<PresenceEntry> = presence
            .get(channel)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        entries.sort_by(|a, b| a.client.cmp(&b.client));
        Ok(entries)
    }

    async fn heartbeat_node(&self, info: NodeInfo) -> Result<(), BrokerError> {
        self.nodes
            .lock()
            .expect("nodes lock")
            .insert(info.node.clone(), info);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let mut nodes: Vec<NodeInfo> = self
            .nodes
            .lock()
            .expect("nodes lock")
            .values()
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    fn is_healthy(&self) -> bool {
        true
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
    }
}

/// The publications of `ordered` while their payloads fit in `max` bytes (at least one).
fn within_bytes<'a>(
    ordered: impl Iterator<Item = &'a Arc<Publication>>,
    max: usize,
) -> Vec<Arc<Publication>> {
    let mut bytes = 0;
    let mut out = Vec::new();
    for p in ordered {
        let size = p.payload.len();
        if !out.is_empty() && bytes + size > max {
            break;
        }
        bytes += size;
        out.push(p.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    //! What only the memory broker has: sweeping and its sweeper. The `Broker` contract itself
    //! is checked by the conformance suite (`tests/conformance_memory.rs`).

    use super::*;
    use serde_json::value::RawValue;

    fn opts(ttl: Duration) -> HistoryOptions {
        HistoryOptions { size: 10, ttl }
    }

    fn req(channel: &str, ttl: Duration) -> PublishRequest {
        PublishRequest {
            channel: channel.into(),
            payload: Payload::Json(RawValue::from_string("1".into()).unwrap()),
            from: None,
            user: None,
            skip_self: false,
            history: opts(ttl),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_forgets_idle_channels_with_a_new_epoch_after() {
        let b = MemoryBroker::new();
        let first = b.publish(req("c", Duration::from_millis(1))).await.unwrap();
        b.subscribe("busy").await.unwrap();
        // Past the 1 ms TTL but used under a second ago: kept, its expired history dropped.
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(b.sweep(), 0);
        assert!(b.channel("c").lock().unwrap().history.is_empty());
        // Idle for over a second: forgotten, unless something is subscribed to it.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.sweep(), 1);
        assert_eq!(b.channel_count(), 1, "the subscribed channel stays");
        let again = b.publish(req("c", Duration::from_secs(60))).await.unwrap();
        assert_ne!(again.epoch, first.epoch);
        assert_eq!(again.offset, 1);
    }

    #[tokio::test]
    async fn reads_create_no_channel_state() {
        let b = MemoryBroker::new();
        for i in 0..100 {
            let channel = format!("never:{i}");
            let since = StreamPosition {
                epoch: if i % 2 == 0 {
                    String::new()
                } else {
                    "ab12".into()
                },
                offset: i % 3,
            };
            let queries = [
                HistoryQuery::default(),
                HistoryQuery {
                    since: Some(since.clone()),
                    limit: 10,
                    max_bytes: 0,
                },
            ];
            for query in queries {
                let page = b
                    .history(&channel, query.clone(), opts(Duration::from_secs(60)))
                    .await
                    .unwrap();
                assert_eq!(
                    (page.position.epoch.as_str(), page.position.offset),
                    ("", 0)
                );
                let before_everything = since.epoch.is_empty() && since.offset == 0;
                assert_eq!(page.recovered, query.since.is_none() || before_everything);
            }
        }
        assert_eq!(b.channel_count(), 0, "reads made channel state");
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_sweeps_every_interval_and_stops_at_shutdown() {
        let b = Arc::new(MemoryBroker::new());
        let sweeper = b.spawn_sweeper(Duration::from_secs(1));
        b.subscribe("idle").await.unwrap();
        b.unsubscribe("idle").await.unwrap();
        assert_eq!(b.channel_count(), 1);
        // Virtual time: the first tick (at 1 s) finds the channel idle for 1 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(b.channel_count(), 0, "the sweeper ran");

        b.shutdown().await;
        // The broker is still alive: only the cancellation can end the task. (Were it still
        // ticking, paused time would run the hour out and fail here.)
        tokio::time::timeout(Duration::from_secs(3600), sweeper)
            .await
            .expect("sweeper stops at shutdown")
            .expect("sweeper did not panic");
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_stops_when_the_broker_is_dropped() {
        let b = Arc::new(MemoryBroker::new());
        let sweeper = b.spawn_sweeper(Duration::from_secs(1));
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(
            weak.upgrade().is_none(),
            "the sweeper does not own the broker"
        );
        tokio::time::timeout(Duration::from_secs(3600), sweeper)
            .await
            .expect("sweeper stops once the broker is gone")
            .expect("sweeper did not panic");
    }
}
