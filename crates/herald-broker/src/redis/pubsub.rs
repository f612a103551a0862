//! The node's one dedicated pub/sub connection: subscriptions, the reader, the liveness probe
//! and reconnection.
//!
//! redis-rs's `aio::PubSub` (RESP2, any Redis) is split into a sink (SUBSCRIBE/UNSUBSCRIBE,
//! awaiting Redis's confirmation) and a stream of messages that simply ends when the socket
//! dies; it does not reconnect by itself. So this module owns the life cycle:
//!
//! 1. [`PubSub::establish`] opens a connection and subscribes the broadcast topic, this
//!    instance's probe topic and every channel in [`Subscriptions`], in batches.
//! 2. [`PubSub::run`] (the supervisor task) reads messages in arrival order and, without ever
//!    waiting, queues them in a bounded queue (`inbound.rs`); the dispatcher task
//!    ([`PubSub::run_dispatcher`]) hands them to [`BrokerEvents`] in queue order. Redis
//!    delivers one topic's messages in publish order and the publish script publishes in
//!    offset order, so each channel's events leave in offset order. A full queue drops, counts,
//!    and is followed by [`BrokerEvent::Resync`] once drained.
//! 3. Every `probe_interval` a nonce is published (over the command connection) to the probe
//!    topic; if it is not read back within `probe_timeout` the connection is declared dead
//!    (`probe.rs`).
//! 4. When the stream ends or the probe fails: unhealthy, no sink, reconnect with capped,
//!    jittered exponential backoff; after resubscribing, emit [`BrokerEvent::Resync`] (live
//!    messages may have been missed), check one probe round trip (which also proves the
//!    command connection is back) and become healthy again.
//!
//! SUBSCRIBE and UNSUBSCRIBE for a channel must reach Redis in the order the table changed, so
//! every wire (un)subscription — from the subscriber task (`subscriber.rs`, which batches first
//! subscribes), the unsubscriber task and `establish` — holds the `wire` lock from reading the
//! table to Redis's confirmation. Callers of `subscribe` never hold it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec;
use super::commands::{map_err, Commands};
use super::fence::Fence;
use super::inbound::{Inbound, Inbox};
use super::keys::Keys;
use super::sharded::{Client, Delivery, Incoming, Sink};
use super::subscriber::Waiting;
use super::subscriptions::{Acquired, Live, Mark, Subscriptions};
use super::RedisBrokerConfig;
use crate::{BrokerError, BrokerEvent, BrokerEvents};

/// Why [`PubSub::serve`] returned.
enum Ended {
    Cancelled,
    Lost(&'static str),
}

/// State of the pub/sub connection, shared by the broker and its background tasks.
pub(crate) struct PubSub {
    client: Client,
    pub(crate) keys: Keys,
    pub(crate) config: RedisBrokerConfig,
    /// Channels this node receives.
    pub(crate) subs: Subscriptions,
    /// The live connection's sink: set by `establish`, cleared by the supervisor when the
    /// connection is lost; `subscribe` and the unsubscriber clone it to send commands. `None`
    /// means disconnected.
    sink: Mutex<Option<Sink>>,
    /// Held by the subscriber task, the unsubscriber and `establish` from reading the table to
    /// Redis's confirmation of the matching (UN)SUBSCRIBE, so wire commands follow table order.
    pub(crate) wire: tokio::sync::Mutex<()>,
    /// First subscribes waiting for the subscriber task's next batched SUBSCRIBE.
    pub(crate) waiting: Waiting,
    /// Between the reader and the event sink: bounded, see `inbound.rs`.
    pub(crate) inbox: Inbox,
    /// Offset regressions (`fence.rs`).
    pub(crate) fence: Fence,
    /// This instance's probe topics: one on one Redis; one per master on a cluster (each
    /// tagged into a slot of its master, so a hung shard fails its probe), from the topology
    /// the connection saw when it was established.
    pub(crate) probe_topics: Mutex<Vec<String>>,
    /// The sink of a connection a healing one replaced, kept alive (its stream still
    /// delivers) until the supervisor swaps streams.
    retired: Mutex<Option<Sink>>,
    /// Cluster topics this node asked to `SUNSUBSCRIBE` whose confirmation has not come yet:
    /// Redis confirms with the same `sunsubscribe` push it sends when a slot moves, and a
    /// channel subscribed again meanwhile must not be mistaken for a moved slot (channel churn
    /// would otherwise heal the whole connection). Entries leave with their confirmation, and
    /// all of them with the connection they were sent on.
    unsubscribing: Mutex<std::collections::HashMap<String, u32>>,
    healthy: AtomicBool,
    reconnects: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` when the connection last delivered anything.
    last_activity_ms: AtomicU64,
    /// Signalled after every successful reconnect (the presence refresher rewrites entries a
    /// restarted Redis may have lost).
    pub(crate) reconnected: Notify,
    /// The edge's event sink, set once by `attach` and never owned: the reader upgrades it for
    /// each event and drops the event when the upgrade fails (the edge is gone). Events
    /// before `attach` are dropped too.
    pub(crate) events: OnceLock<Weak<dyn BrokerEvents>>,
}

pub(crate) fn unavailable(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("redis pub/sub: {what}"))
}

impl PubSub {
    pub(crate) fn new(client: Client, keys: Keys, config: RedisBrokerConfig) -> Self {
        let event_queue = config.event_queue;
        Self {
            client,
            keys,
            config,
            subs: Subscriptions::default(),
            sink: Mutex::new(None),
            wire: tokio::sync::Mutex::new(()),
            waiting: Waiting::default(),
            inbox: Inbox::new(event_queue),
            fence: Fence::new(),
            probe_topics: Mutex::new(Vec::new()),
            retired: Mutex::new(None),
            unsubscribing: Mutex::new(Default::default()),
            healthy: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            reconnected: Notify::new(),
            events: OnceLock::new(),
        }
    }

    /// Marks the first connection healthy (before the supervisor starts, so `connect` returns
    /// a healthy broker).
    pub(crate) fn mark_healthy(&self) {
        self.healthy.store(true, Ordering::Release);
    }

    /// Whether the connection is up and its probe answers.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether a connection is established (it may still fail its probe).
    pub(crate) fn is_connected(&self) -> bool {
        self.sink.lock().expect("sink lock").is_some()
    }

    /// Successful reconnections since start.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// When the connection last delivered a message (probes included).
    pub(crate) fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    /// Hands `event` to the edge's sink if it is attached and still alive; drops it otherwise.
    fn emit(&self, event: BrokerEvent) {
        if let Some(sink) = self.events.get().and_then(Weak::upgrade) {
            sink.on_event(event);
        }
    }

    pub(crate) fn current_sink(&self) -> Option<Sink> {
        self.sink.lock().expect("sink lock").clone()
    }

    /// Opens a connection and subscribes everything this node needs. On success the sink is
    /// installed and the message stream returned; health is the caller's to set.
    pub(crate) async fn establish(&self) -> Result<Incoming, BrokerError> {
        let (mut sink, stream) = self.client.pubsub(&self.config).await?;
        let probes = match tokio::time::timeout(self.config.command_timeout, sink.shard_tags())
            .await
            .map_err(|_| unavailable("CLUSTER SLOTS timed out"))?
            .map_err(map_err)?
        {
            Some(tags) if !tags.is_empty() => {
                tags.iter().map(|t| self.keys.shard_probe(t)).collect()
            }
            _ => vec![self.keys.probe().to_string()],
        };
        let _wire = self.wire.lock().await;
        let mut topics = vec![self.keys.broadcast().to_string()];
        topics.extend(probes.iter().cloned());
        let channels = self.subs.all();
        topics.extend(channels.iter().map(|c| self.keys.topic(c)));
        for batch in topics.chunks(self.config.subscribe_batch) {
            tokio::time::timeout(self.config.command_timeout, sink.subscribe(batch))
                .await
                .map_err(|_| unavailable("subscribe timed out"))?
                .map_err(map_err)?;
        }
        self.subs.mark_wired(&channels);
        let replaced = self.sink.lock().expect("sink lock").replace(sink);
        // A healing cluster connection replaces one that still delivers: dropping its sink
        // would end its stream too, so it is kept until the supervisor swaps streams.
        *self.retired.lock().expect("retired lock") = replaced;
        *self.probe_topics.lock().expect("probe topics lock") = probes;
        self.touch();
        debug!(topics = topics.len(), "redis pub/sub connection subscribed");
        Ok(stream)
    }

    /// Adds a reference to `channel`; returns once Redis confirmed its SUBSCRIBE (sent by the
    /// subscriber task, batched with the other channels waiting). On error the reference is
    /// given back.
    pub(crate) async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        if !self.is_connected() {
            return Err(unavailable("disconnected"));
        }
        if self.subs.acquire(channel) == Acquired::Wired {
            return Ok(());
        }
        let Some(answer) = self.waiting.push(Arc::from(channel)) else {
            self.subs.abandon(channel);
            return Err(unavailable("shutting down"));
        };
        // The subscriber answers within a bounded time (each SUBSCRIBE is bounded by the
        // command timeout); it drops the answer only when it stops.
        answer
            .await
            .unwrap_or_else(|_| Err(unavailable("shutting down")))
    }

    /// Drops a reference; the wire UNSUBSCRIBE follows after `unsubscribe_delay`.
    pub(crate) fn unsubscribe(&self, channel: &str) {
        if !self.subs.release(channel) {
            debug!(channel, "unsubscribe of a channel with no subscription");
        }
    }

    /// Runs until `cancel`: UNSUBSCRIBEs channels idle for `unsubscribe_delay`, in batches.
    pub(crate) async fn run_unsubscriber(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.unsubscribe_tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.subs.has_idle() {
                self.flush_idle().await;
            }
        }
    }

    async fn flush_idle(&self) {
        let _wire = self.wire.lock().await;
        let due = self.subs.take_idle(self.config.unsubscribe_delay);
        if due.is_empty() {
            return;
        }
        // Disconnected: nothing to send, and the reconnect no longer resubscribes them.
        let Some(mut sink) = self.current_sink() else {
            return;
        };
        for batch in due.chunks(self.config.subscribe_batch) {
            let topics: Vec<String> = batch.iter().map(|c| self.keys.topic(c)).collect();
            if self.client.is_cluster() {
                let mut pending = self.unsubscribing.lock().expect("unsubscribing lock");
                for topic in &topics {
                    *pending.entry(topic.clone()).or_default() += 1;
                }
            }
            let sent =
                tokio::time::timeout(self.config.command_timeout, sink.unsubscribe(&topics)).await;
            match sent {
                Ok(Ok(())) => debug!(channels = topics.len(), "unsubscribed idle channels"),
                Ok(Err(err)) => warn!(cause = %err, channels = topics.len(), "unsubscribe failed"),
                Err(_) => warn!(channels = topics.len(), "unsubscribe timed out"),
            }
        }
    }

    /// The supervisor: serves `stream`, and reconnects whenever it is lost, until `cancel`.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut stream: Incoming,
        commands: Arc<Commands>,
        cancel: CancellationToken,
    ) {
        self.healthy.store(true, Ordering::Release);
        loop {
            let ended = self.serve(&mut stream, &commands, &cancel).await;
            self.healthy.store(false, Ordering::Release);
            *self.sink.lock().expect("sink lock") = None;
            match ended {
                Ended::Cancelled => return,
                Ended::Lost(why) => warn!(cause = why, "redis pub/sub connection lost"),
            }
            self.unsubscribing
                .lock()
                .expect("unsubscribing lock")
                .clear();
            stream = match self.reconnect(&commands, &cancel).await {
                Some(stream) => stream,
                None => return,
            };
            let count = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
            self.healthy.store(true, Ordering::Release);
            self.reconnected.notify_one();
            info!(
                reconnects = count,
                channels = self.subs.live_count(),
                "redis pub/sub reconnected and resubscribed"
            );
        }
    }

    /// Retries [`PubSub::establish`] with capped, jittered exponential backoff until a
    /// connection is subscribed (then [`BrokerEvent::Resync`] is emitted: from here on nothing
    /// is missed) and a probe made the full round trip through the command connection too.
    async fn reconnect(
        &self,
        commands: &Arc<Commands>,
        cancel: &CancellationToken,
    ) -> Option<Incoming> {
        let mut delay = self.config.reconnect_min;
        for attempt in 1u32.. {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(jitter(delay)) => {}
            }
            let err = match self.establish().await {
                // A failover or restore may have taken the counters back: new epochs before
                // anyone rereads history (fence.rs).
                Ok(mut stream) => {
                    match self.fence.check_all(commands, &self.keys, &self.subs).await {
                        Ok(_) => {
                            // Through the queue: after whatever was read before the connection broke.
                            self.inbox.push(Inbound::Resync);
                            match self.verify(&mut stream, commands, cancel).await {
                                Ok(()) => return Some(stream),
                                Err(err) => err,
                            }
                        }
                        Err(err) => err,
                    }
                }
                Err(err) => err,
            };
            *self.sink.lock().expect("sink lock") = None;
            debug!(attempt, cause = %err, "redis pub/sub reconnect failed");
            if attempt % 10 == 0 {
                warn!(attempt, cause = %err, "redis still unreachable");
            }
            delay = (delay * 2).min(self.config.reconnect_max);
        }
        None
    }

    /// Reads one connection until it ends, its probe fails, or `cancel`.
    async fn serve(
        &self,
        stream: &mut Incoming,
        commands: &Arc<Commands>,
        cancel: &CancellationToken,
    ) -> Ended {
        let interval = self.config.probe_interval;
        let mut probe_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The probe in flight: its nonce and the instant it must be back by.
        let mut pending: Option<Probe> = None;
        // A cluster shard's resubscription in progress, and whether another shard dropped
        // meanwhile (then it runs again once done).
        let mut healing: Option<Healing<'_>> = None;
        let mut again = false;
        loop {
            let deadline = pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ended::Cancelled,
                message = stream.next() => match message {
                    Some(Delivery::Unsubscribed(topic))
                        if self.confirms_own_unsubscribe(&topic) || !self.holds(&topic) => {}
                    Some(lost @ (Delivery::ShardLost | Delivery::Unsubscribed(_))) => {
                        match lost {
                            Delivery::Unsubscribed(topic) => warn!(topic, "redis cluster dropped a shard channel (slot moved): resubscribing"),
                            _ => warn!("a redis cluster shard's pub/sub connection dropped: resubscribing"),
                        }
                        self.healthy.store(false, Ordering::Release);
                        // The probe may have gone through that shard; none while healing.
                        pending = None;
                        if healing.is_some() {
                            again = true;
                        } else {
                            healing = Some(Box::pin(self.heal(commands)));
                        }
                    }
                    Some(message) => self.route(message, &mut pending),
                    None => return Ended::Lost("connection closed"),
                },
                healed = poll_healing(&mut healing) => {
                    // From here on the new connection delivers. The two overlapped for a
                    // moment: a publication may come twice (the edge drops the second), so
                    // the live marks restart rather than call that a regression.
                    *stream = healed;
                    self.retired.lock().expect("retired lock").take();
                    self.unsubscribing.lock().expect("unsubscribing lock").clear();
                    self.subs.forget_live_marks();
                    self.inbox.push(Inbound::Resync);
                    if std::mem::take(&mut again) {
                        healing = Some(Box::pin(self.heal(commands)));
                    } else {
                        healing = None;
                        let count = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
                        self.healthy.store(true, Ordering::Release);
                        self.reconnected.notify_one();
                        info!(reconnects = count, "redis cluster shard resubscribed");
                    }
                }
                _ = sleep_until(deadline) => {
                    warn!(timeout_ms = self.config.probe_timeout.as_millis() as u64, "pub/sub probe not answered");
                    if !self.client.is_cluster() {
                        return Ended::Lost("liveness probe timed out");
                    }
                    // A hung shard (its socket open, nothing answering): the others keep
                    // delivering while a fresh connection finds its promoted replica.
                    pending = None;
                    self.healthy.store(false, Ordering::Release);
                    if healing.is_none() {
                        healing = Some(Box::pin(self.heal(commands)));
                    }
                }
                _ = probe_tick.tick(), if pending.is_none() && healing.is_none() => {
                    pending = Some(self.send_probe(commands));
                }
            }
        }
    }

    /// Whether a `sunsubscribe` push of `topic` confirms this node's own `SUNSUBSCRIBE` (and
    /// takes that expectation off the list).
    fn confirms_own_unsubscribe(&self, topic: &str) -> bool {
        let mut pending = self.unsubscribing.lock().expect("unsubscribing lock");
        match pending.get_mut(topic) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    pending.remove(topic);
                }
                true
            }
            None => false,
        }
    }

    /// Whether `topic` is one this node keeps subscribed (its own probe, the broadcast, or a
    /// channel in the table).
    fn holds(&self, topic: &str) -> bool {
        self.keys.is_probe(topic)
            || topic == self.keys.broadcast()
            || self
                .keys
                .channel_of(topic)
                .is_some_and(|channel| self.subs.contains(channel))
    }

    /// After a cluster shard dropped: opens a fresh cluster pub/sub connection (fresh
    /// topology) and subscribes everything on it, with capped, jittered backoff until every
    /// shard confirmed — the lost one's only once its replica is promoted — then checks for
    /// offset regressions. New subscribes go to the new connection from then on; the caller
    /// swaps streams. Meanwhile the old connection keeps delivering the other shards.
    /// (Resubscribing on the same connection was tried: a subscription confirmed during the
    /// promotion could vanish with the slot's reassignment, without a push saying so.)
    async fn heal(&self, commands: &Arc<Commands>) -> Incoming {
        let mut delay = self.config.reconnect_min;
        for attempt in 1u32.. {
            tokio::time::sleep(jitter(delay)).await;
            let healed = match self.establish().await {
                Ok(stream) => self
                    .fence
                    .check_all(commands, &self.keys, &self.subs)
                    .await
                    .map(|_| stream),
                Err(err) => Err(err),
            };
            match healed {
                Ok(stream) => return stream,
                Err(err) => {
                    debug!(attempt, cause = %err, "redis cluster resubscribe failed");
                    if attempt % 10 == 0 {
                        warn!(attempt, cause = %err, "a redis cluster shard is still unreachable");
                    }
                }
            }
            delay = (delay * 2).min(self.config.reconnect_max);
        }
        unreachable!("the loop only returns")
    }

    /// The reader's part, which never waits: notes activity, answers this instance's probe,
    /// and queues anything else for the dispatcher (dropped and counted when the queue is full).
    pub(crate) fn route(&self, delivery: Delivery, pending: &mut Option<Probe>) {
        self.touch();
        let message = match delivery {
            Delivery::Message(message) => message,
            // Through the queue, after the messages read before it.
            Delivery::Resync => return self.inbox.push(Inbound::Resync),
            Delivery::ShardLost | Delivery::Unsubscribed(_) => return, // handled by `serve`
        };
        if self.keys.is_probe(message.get_channel_name()) {
            let bytes = message.get_payload_bytes();
            if let Some(probe) = pending {
                if codec::decode_probe(bytes) == Some(probe.nonce) {
                    probe.remaining = probe.remaining.saturating_sub(1);
                    if probe.remaining == 0 {
                        *pending = None;
                    }
                }
            }
            return;
        }
        self.inbox.push(Inbound::Message(message));
    }

    /// The dispatcher task: hands queued messages to the edge, in order, until `cancel`; emits
    /// one [`BrokerEvent::Resync`] after an overflow, once the queue has drained.
    pub(crate) async fn run_dispatcher(self: Arc<Self>, cancel: CancellationToken) {
        let Some(mut rx) = self.inbox.take_receiver() else {
            return;
        };
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                item = rx.recv() => match item {
                    Some(Inbound::Message(message)) => self.dispatch(&message),
                    Some(Inbound::Resync) => self.emit(BrokerEvent::Resync),
                    None => return,
                },
                _ = self.inbox.overflowed() => {}
            }
            if self.inbox.resync_due(&rx) {
                info!(
                    dropped_total = self.inbox.dropped(),
                    "pub/sub event queue drained after an overflow: resync"
                );
                self.emit(BrokerEvent::Resync);
            }
        }
    }

    /// Hands one queued pub/sub message to the edge.
    fn dispatch(&self, message: &redis::Msg) {
        let topic = message.get_channel_name();
        let bytes = message.get_payload_bytes();
        if let Some(channel) = self.keys.channel_of(topic) {
            // Only channels with local subscribers reach the edge.
            let Some(channel) = self.subs.live(channel) else {
                return;
            };
            match codec::decode_channel_message(&channel, bytes) {
                Ok(BrokerEvent::Publication(publication)) => {
                    let mark = Mark {
                        epoch: publication.epoch.clone(),
                        offset: publication.offset,
                        ts_ms: publication.ts_ms,
                    };
                    match self.subs.note_live(&channel, mark) {
                        Live::Next => self.emit(BrokerEvent::Publication(publication)),
                        Live::Gone => {}
                        Live::Regressed(newest) => {
                            warn!(
                                channel = %channel,
                                epoch = %publication.epoch,
                                offset = publication.offset,
                                seen = newest.offset,
                                "live offset went back: not delivered, fencing the channel"
                            );
                            self.fence.suspect(channel, newest);
                        }
                    }
                }
                Ok(event) => self.emit(event),
                Err(err) => warn!(channel = %channel, cause = %err, "undecodable message dropped"),
            }
        } else if topic == self.keys.broadcast() {
            match codec::decode_broadcast(bytes) {
                Ok(payload) => self.emit(BrokerEvent::Broadcast(Arc::new(payload))),
                Err(err) => warn!(cause = %err, "undecodable broadcast dropped"),
            }
        } else {
            debug!(topic, "message on an unexpected topic");
        }
    }
}

impl PubSub {
    /// The fencer task: for each channel whose live offsets went back, a new epoch (unless
    /// another node started one already), then one [`BrokerEvent::Resync`] so readers find
    /// out; a check Redis did not answer is retried after `reconnect_max`. See `fence.rs`.
    pub(crate) async fn run_fencer(
        self: Arc<Self>,
        commands: Arc<Commands>,
        cancel: CancellationToken,
    ) {
        loop {
            let suspects = tokio::select! {
                _ = cancel.cancelled() => return,
                suspects = self.fence.take_suspects() => suspects,
            };
            let mut failed = Vec::new();
            for (channel, mark) in suspects {
                match self
                    .fence
                    .check(&commands, &self.keys, &channel, &mark, true)
                    .await
                {
                    Ok(_) => self.subs.forget_marks(&channel, &mark.epoch),
                    Err(err) => {
                        warn!(channel = %channel, cause = %err, "fencing a channel failed, retrying");
                        failed.push((channel, mark));
                    }
                }
            }
            // After the fences: readers then find the new epochs.
            self.inbox.push(Inbound::Resync);
            if !failed.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(self.config.reconnect_max) => {}
                }
                for (channel, mark) in failed {
                    self.fence.suspect(channel, mark);
                }
            }
        }
    }
}

/// A fresh cluster pub/sub connection being set up (see [`PubSub::heal`]).
type Healing<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Incoming> + Send + 'a>>;

/// Runs the healing future if there is one; pending forever otherwise.
async fn poll_healing(healing: &mut Option<Healing<'_>>) -> Incoming {
    match healing {
        Some(future) => future.as_mut().await,
        None => std::future::pending().await,
    }
}

/// A probe in flight: its nonce, the instant all its copies must be back by, and how many
/// (one per probe topic) are still out.
pub(crate) struct Probe {
    pub(crate) nonce: u64,
    pub(crate) deadline: tokio::time::Instant,
    pub(crate) remaining: usize,
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// 50–100 % of `delay`, so nodes that lost Redis together do not return in lockstep.
fn jitter(delay: Duration) -> Duration {
    use rand::Rng as _;
    let ms = delay.as_millis().max(2) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}
