//! The in-process broker: the embedded default for a single edge with no Redis.
//!
//! Channels live in [`SHARDS`] maps keyed by name; each channel's state sits behind its own
//! mutex. A publish takes that mutex, assigns the next offset, appends to the bounded history
//! and hands the publication to [`BrokerEvents`] before releasing it, so events of one channel
//! reach the edge in offset order. The edge's handler only does `try_send`s, so the lock is held
//! for the length of one fan-out, never across an await.
//!
//! History per channel is bounded by the namespace's size and TTL. A sweeper task (every
//! `sweep_interval`) drops expired messages and forgets channels that have no history and no
//! subscriber; a forgotten channel starts again at a new epoch, so an old cursor gets
//! `recovered: false` rather than a silent gap.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;

use crate::{
    new_epoch, now_ms, Broker, BrokerError, BrokerEvent, BrokerEvents, HistoryOptions, HistoryPage,
    HistoryQuery, NodeInfo, Payload, Publication, PublishRequest,
};

/// Number of shards of the channel map.
pub const SHARDS: usize = 64;

struct ChannelState {
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
            epoch: new_epoch().into(),
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
    /// The attached edges' event handlers; each gets every event (in-process "cluster").
    events: RwLock<Vec<Arc<dyn BrokerEvents>>>,
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
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
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

    fn emit(&self, event: BrokerEvent) {
        let handlers = self.events.read().expect("events lock");
        if let [only] = handlers.as_slice() {
            only.on_event(event);
        } else {
            for h in handlers.iter() {
                h.on_event(event.clone());
            }
        }
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

    /// Runs [`MemoryBroker::sweep`] every `interval` until `cancel` fires.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        interval: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
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
    fn attach(&self, events: Arc<dyn BrokerEvents>) {
        self.events.write().expect("events lock").push(events);
    }

    async fn publish(&self, request: PublishRequest) -> Result<StreamPosition, BrokerError> {
        let state = self.channel(&request.channel);
        let mut st = state.lock().expect("channel lock");
        let now = Instant::now();
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
        self.emit(BrokerEvent::Publication(publication));
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
        let state = self.channel(channel);
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
                let same_epoch = *since.epoch == *st.epoch;
                let covered = since.offset == st.top
                    || oldest.is_some_and(|o| since.offset + 1 >= o && since.offset <= st.top);
                (since.offset, same_epoch && covered)
            }
        };
        let publications = if recovered {
            st.history
                .iter()
                .map(|(_, p)| p)
                .filter(|p| p.offset > start_after)
                .take(query.limit)
                .cloned()
                .collect()
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
        if added && announce {
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
        if removed && announce {
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

    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    struct Collect(Mutex<Vec<BrokerEvent>>);
    impl BrokerEvents for Collect {
        fn on_event(&self, event: BrokerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn opts(size: usize) -> HistoryOptions {
        HistoryOptions {
            size,
            ttl: Duration::from_secs(60),
        }
    }

    fn req(channel: &str, n: u32, size: usize) -> PublishRequest {
        PublishRequest {
            channel: channel.into(),
            payload: Payload::Json(RawValue::from_string(n.to_string()).unwrap()),
            from: None,
            skip_self: false,
            history: opts(size),
        }
    }

    #[tokio::test]
    async fn offsets_grow_by_one_and_events_follow_offset_order() {
        let b = MemoryBroker::new();
        let seen = Arc::new(Collect(Mutex::new(Vec::new())));
        b.attach(seen.clone());
        for i in 1..=5u64 {
            let p = b.publish(req("c", i as u32, 10)).await.unwrap();
            assert_eq!(p.offset, i);
        }
        let offsets: Vec<u64> = seen
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                BrokerEvent::Publication(p) => p.offset,
                _ => 0,
            })
            .collect();
        assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn history_recovers_within_window_and_refuses_outside() {
        let b = MemoryBroker::new();
        let mut epoch = String::new();
        for i in 1..=10 {
            epoch = b.publish(req("c", i, 4)).await.unwrap().epoch;
        }
        let since = |offset| HistoryQuery {
            since: Some(StreamPosition {
                epoch: epoch.clone(),
                offset,
            }),
            limit: 100,
        };
        // Kept: 7..=10. After 6 is fully covered.
        let page = b.history("c", since(6), opts(4)).await.unwrap();
        assert!(page.recovered);
        let got: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(got, vec![7, 8, 9, 10]);
        // After 5: message 6 is gone.
        let page = b.history("c", since(5), opts(4)).await.unwrap();
        assert!(!page.recovered && page.publications.is_empty());
        assert_eq!(page.position.offset, 10);
        // At the top: nothing missed.
        assert!(b.history("c", since(10), opts(4)).await.unwrap().recovered);
        // Ahead of the top, or another epoch: not recovered.
        assert!(!b.history("c", since(11), opts(4)).await.unwrap().recovered);
        let foreign = HistoryQuery {
            since: Some(StreamPosition {
                epoch: "other".into(),
                offset: 9,
            }),
            limit: 10,
        };
        assert!(!b.history("c", foreign, opts(4)).await.unwrap().recovered);
        // No since: newest `limit`.
        let page = b
            .history(
                "c",
                HistoryQuery {
                    since: None,
                    limit: 2,
                },
                opts(4),
            )
            .await
            .unwrap();
        let got: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
        assert_eq!(got, vec![9, 10]);
    }

    #[tokio::test]
    async fn sweep_forgets_idle_channels_with_a_new_epoch_after() {
        let b = MemoryBroker::new();
        let first = b
            .publish(PublishRequest {
                history: HistoryOptions {
                    size: 10,
                    ttl: Duration::from_millis(1),
                },
                ..req("c", 1, 10)
            })
            .await
            .unwrap();
        // Age the message past its 1 ms TTL by moving its timestamp, not by sleeping.
        {
            let st = b.channel("c");
            let mut st = st.lock().unwrap();
            for (at, _) in st.history.iter_mut() {
                *at -= Duration::from_millis(5);
            }
        }
        // Used under a second ago: kept, but its expired history is dropped.
        assert_eq!(b.sweep(), 0);
        assert!(b.channel("c").lock().unwrap().history.is_empty());
        {
            let st = b.channel("c");
            let mut st = st.lock().unwrap();
            st.last_used = Instant::now() - Duration::from_secs(2);
        }
        assert_eq!(b.sweep(), 1);
        let again = b.publish(req("c", 2, 10)).await.unwrap();
        assert_ne!(again.epoch, first.epoch);
        assert_eq!(again.offset, 1);
    }

    #[tokio::test]
    async fn presence_announces_join_and_leave_once() {
        let b = MemoryBroker::new();
        let seen = Arc::new(Collect(Mutex::new(Vec::new())));
        b.attach(seen.clone());
        let e = PresenceEntry {
            client: "c1".into(),
            user: "u".into(),
            node: "n".into(),
        };
        b.presence_add("room", e.clone(), true).await.unwrap();
        b.presence_add("room", e.clone(), true).await.unwrap();
        assert_eq!(b.presence("room").await.unwrap(), vec![e.clone()]);
        b.presence_remove("room", e.clone(), true).await.unwrap();
        b.presence_remove("room", e.clone(), true).await.unwrap();
        assert!(b.presence("room").await.unwrap().is_empty());
        let kinds: Vec<&str> = seen
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e {
                BrokerEvent::Join { .. } => "join",
                BrokerEvent::Leave { .. } => "leave",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, vec!["join", "leave"]);
    }
}
