//! The [`Broker`] contract, written once and run against every broker.
//!
//! Each case is a generic async function over a [`Cluster`]: a source of nodes (brokers that
//! share channels, history, presence and the registry) plus a way to let a history TTL pass.
//! `conformance_memory.rs` runs every case over one [`MemoryBroker`] on a paused clock (every
//! "node" is the same broker with its own sink); `conformance_redis.rs` runs them over a real
//! `redis-server` per test, one `RedisBroker` per node. [`conformance_tests!`] generates one
//! `#[tokio::test]` per case, so a case added to its list reaches both brokers.
//!
//! What the cases check is the contract in the crate docs: offsets grow by exactly one and
//! events follow offset order; publications arrive as published; history windows by size and
//! by TTL, `since`, `limit` and `recovered` (including another epoch); presence lists and
//! announces joins and leaves once, only on subscribed channels; the node registry; broadcasts;
//! unsubscribe stops delivery; the broker never owns its sink; and, for brokers that can lose
//! their subscription, `Resync`.
//!
//! [`MemoryBroker`]: herald_broker::memory::MemoryBroker

mod delivery;
mod history;
mod presence;

pub(crate) use delivery::*;
pub(crate) use history::*;
pub(crate) use presence::*;

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use herald_broker::{
    Broker, BrokerEvent, BrokerEvents, HistoryOptions, HistoryPage, HistoryQuery, NodeInfo,
    Payload, Publication, PublishRequest,
};
use herald_protocol::frame::PresenceEntry;
use herald_protocol::StreamPosition;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

/// How long an expected event may take (generous: two cores shared with builds).
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

/// Asked again until it answers true: "has the history expired yet?".
pub(crate) type Check = Box<dyn FnMut() -> BoxFuture<'static, bool> + Send>;

/// The brokers under test, seen as a cluster.
pub(crate) trait Cluster {
    /// A new node: a broker that shares channels, history, presence and the node registry
    /// with every other node of this cluster, with no sink attached yet.
    async fn node(&self, id: &str) -> Arc<dyn Broker>;

    /// Lets `ttl` pass for the brokers, until `expired` answers true; fails if it never does.
    async fn outlive(&self, ttl: Duration, expired: Check);

    /// A history TTL short enough to wait out, long enough to read before it passes.
    fn short_ttl(&self) -> Duration;
}

/// A cluster whose nodes can lose their subscription connection and get it back.
#[allow(dead_code)] // the memory broker has no such connection
pub(crate) trait Interrupt: Cluster {
    /// Cuts every node's subscription connection (the brokers must notice and recover).
    async fn interrupt(&self);
}

/// Generates one `#[tokio::test]` (with the given attribute) per case of the contract, each
/// running the case against the cluster `$cluster` evaluates to. (Cases that need more of a
/// cluster, like [`Interrupt`], are written out by the files that can run them.)
macro_rules! conformance_tests {
    (#[$runtime:meta] $cluster:expr) => {
        $crate::conformance::conformance_tests!(@cases #[$runtime] $cluster;
            offsets_grow_by_one_and_events_follow_offset_order,
            publications_arrive_as_published,
            unsubscribe_stops_delivery_after_the_last_reference,
            broadcast_reaches_every_node,
            the_broker_never_owns_its_sink,
            empty_channel_is_at_no_epoch_and_a_reader_there_gets_everything,
            history_window_by_size_with_since_and_limit,
            history_pages_by_bytes,
            history_size_zero_keeps_nothing_but_offsets_grow,
            history_window_by_ttl,
            presence_lists_members_and_announces_join_and_leave_once,
            node_registry_lists_every_heartbeating_node,
        );
    };
    (@cases #[$runtime:meta] $cluster:expr; $($case:ident),+ $(,)?) => {
        $(
            #[$runtime]
            async fn $case() {
                let cluster = $cluster;
                $crate::conformance::$case(&cluster).await;
            }
        )+
    };
}
pub(crate) use conformance_tests;

/// Forwards events to a channel the test reads.
struct Recorder(mpsc::UnboundedSender<BrokerEvent>);

impl BrokerEvents for Recorder {
    fn on_event(&self, event: BrokerEvent) {
        let _ = self.0.send(event);
    }
}

/// An attached event sink: the test owns it (the broker only holds a `Weak`).
pub(crate) struct Sink {
    /// Keeps the sink alive; dropping it detaches the node's events.
    owner: Option<Arc<Recorder>>,
    /// What the broker delivered, in order.
    events: mpsc::UnboundedReceiver<BrokerEvent>,
}

/// Attaches a new sink to `broker`.
pub(crate) fn attach(broker: &Arc<dyn Broker>) -> Sink {
    let (tx, events) = mpsc::unbounded_channel();
    let owner = Arc::new(Recorder(tx));
    let weak: Weak<Recorder> = Arc::downgrade(&owner);
    broker.attach(weak as Weak<dyn BrokerEvents>);
    Sink {
        owner: Some(owner),
        events,
    }
}

impl Sink {
    /// The next event, failing after [`WAIT`].
    pub(crate) async fn next(&mut self) -> BrokerEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("an event within the timeout")
            .expect("event channel open")
    }

    /// The next publication, failing on any other event.
    pub(crate) async fn publication(&mut self) -> Arc<Publication> {
        match self.next().await {
            BrokerEvent::Publication(p) => p,
            other => panic!("publication expected, got {other:?}"),
        }
    }

    /// Fails if any event arrives within [`QUIET`].
    pub(crate) async fn assert_quiet(&mut self) {
        if let Ok(Some(event)) = tokio::time::timeout(QUIET, self.events.recv()).await {
            panic!("expected no event, got {event:?}");
        }
    }

    /// Drops the sink; then waits until every sender is gone, which proves nothing else (the
    /// broker) kept it alive. Returns what was still queued.
    pub(crate) async fn drop_and_drain(mut self) -> Vec<BrokerEvent> {
        drop(self.owner.take());
        let mut queued = Vec::new();
        let drained = tokio::time::timeout(WAIT, async {
            while let Some(event) = self.events.recv().await {
                queued.push(event);
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "the broker still holds the sink it was given"
        );
        queued
    }
}

/// History kept: `size` messages for a minute.
pub(crate) fn keep(size: usize) -> HistoryOptions {
    HistoryOptions {
        size,
        ttl: Duration::from_secs(60),
    }
}

/// A JSON payload of exactly `text`.
pub(crate) fn json(text: &str) -> Payload {
    Payload::Json(RawValue::from_string(text.to_string()).unwrap())
}

/// The JSON text of a payload.
pub(crate) fn json_of(payload: &Payload) -> String {
    match payload {
        Payload::Json(raw) => raw.get().to_string(),
        Payload::Binary(_) => panic!("json payload expected"),
    }
}

/// A plain publish keeping `history`.
pub(crate) fn request(channel: &str, payload: Payload, history: HistoryOptions) -> PublishRequest {
    PublishRequest {
        channel: channel.into(),
        payload,
        from: None,
        user: None,
        skip_self: false,
        history,
    }
}

/// A read of at most `limit` publications after `(epoch, offset)`.
pub(crate) fn since(epoch: &str, offset: u64, limit: usize) -> HistoryQuery {
    HistoryQuery {
        since: Some(StreamPosition {
            epoch: epoch.into(),
            offset,
        }),
        limit,
        max_bytes: 0,
    }
}

/// The offsets of a page.
pub(crate) fn offsets(page: &HistoryPage) -> Vec<u64> {
    page.publications.iter().map(|p| p.offset).collect()
}

/// A presence entry of `client` on `node`.
pub(crate) fn entry(client: &str, node: &str) -> PresenceEntry {
    PresenceEntry {
        client: client.into(),
        user: format!("user-{client}"),
        node: node.into(),
        // Carried as given, across nodes and through Redis.
        info: Some(serde_json::json!({"name": client, "n": [1, 2.5]})),
    }
}

/// A registry entry for `node`.
pub(crate) fn info(node: &str) -> NodeInfo {
    NodeInfo {
        node: node.into(),
        address: format!("{node}:8080"),
        connections: [("ws".to_string(), 3u64)].into_iter().collect(),
        channels: 2,
        delivered: 10,
        published: 4,
        uptime_secs: 1,
        version: "test".into(),
    }
}
