//! A connection's channels and its position in each: the dedup and gap check every live
//! publication passes before it is written.
//!
//! Live publications arrive through the hub; recovered ones come from history. A publication at
//! or below the connection's position is a duplicate and dropped. One more than the position is
//! delivered. Further ahead means a gap (the broker lost live messages, e.g. a Redis blip): the
//! gap is filled from history, or, when history no longer has it, the client is told
//! `recovered: false` with its new position. A different epoch means the channel's history was
//! reset: the client is told the same way. Loss is therefore always signalled, never silent.
//!
//! A position with an empty epoch is "before everything": the channel had no epoch (nobody had
//! published to it) when the connection subscribed. Its first publication, at offset 1, is
//! simply delivered and the position adopts that publication's epoch; one further ahead means
//! the connection missed the first ones, and they are filled from history like any gap (the
//! broker reads an empty epoch as "from offset 1 of the current epoch"). Whenever a gap fill
//! recovers, the position adopts the epoch of the page it read.
//!
//! History is read in pages of at most `limits.max_reply_bytes`. A recovery or gap fill that
//! one page cannot finish leaves the channel **catching up**: live publications of that channel
//! are then not written (history holds them) and the transport calls
//! [`Subscriptions::catch_up`] whenever it is otherwise idle, one page at a time, until the
//! position reaches the channel's newest offset and live delivery takes over. In order, no gap,
//! no duplicate, whatever the reader's distance; `recovered: false` only when history no longer
//! holds what the reader missed.

use std::collections::HashMap;
use std::sync::Arc;

use herald_protocol::StreamPosition;

use crate::hub::Delivery;
use crate::node::Node;

/// What a connection should write, in order.
pub(crate) enum Emit {
    /// A publication.
    Publication(Arc<Delivery>),
    /// The channel's position jumped and messages may be lost: `recovered: false`.
    Reset {
        /// The channel.
        channel: Arc<str>,
        /// The new position.
        position: StreamPosition,
    },
}

struct Position {
    epoch: Arc<str>,
    last: u64,
    /// History still holds publications after `last` that are to be read page by page before
    /// live delivery resumes.
    catching_up: bool,
}

/// The channels of one connection.
#[derive(Default)]
pub(crate) struct Subscriptions {
    channels: HashMap<Arc<str>, Position>,
}

impl Subscriptions {
    /// Whether `channel` is subscribed.
    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Number of channels.
    pub(crate) fn len(&self) -> usize {
        self.channels.len()
    }

    /// Channel names.
    pub(crate) fn names(&self) -> Vec<Arc<str>> {
        self.channels.keys().cloned().collect()
    }

    /// Records a channel at `position`; `complete` false when history after it is still to be
    /// read (the channel catches up first).
    pub(crate) fn insert(&mut self, channel: &str, position: &StreamPosition, complete: bool) {
        self.channels.insert(
            Arc::from(channel),
            Position {
                epoch: Arc::from(position.epoch.as_str()),
                last: position.offset,
                catching_up: !complete,
            },
        );
    }

    /// Whether any channel is catching up (see [`Subscriptions::catch_up`]).
    pub(crate) fn is_catching_up(&self) -> bool {
        self.channels.values().any(|p| p.catching_up)
    }

    /// Reads the next page of one catching-up channel's history.
    pub(crate) async fn catch_up(&mut self, node: &Node, out: &mut Vec<Emit>) {
        let Some((channel, pos)) = self.channels.iter().find(|(_, p)| p.catching_up) else {
            return;
        };
        let channel = channel.clone();
        let since = StreamPosition {
            epoch: pos.epoch.to_string(),
            offset: pos.last,
        };
        self.fill_gap(node, &channel, since, u64::MAX, out).await;
    }

    /// Forgets a channel; returns whether it was there.
    pub(crate) fn remove(&mut self, channel: &str) -> bool {
        self.channels.remove(channel).is_some()
    }

    /// Checks a live publication; pushes what to write into `out`. The gap fills it may need are
    /// boxed: they are rare, and inline they would size every idle connection's future.
    pub(crate) async fn on_live(
        &mut self,
        node: &Node,
        delivery: Arc<Delivery>,
        out: &mut Vec<Emit>,
    ) {
        let p = &delivery.publication;
        let Some(pos) = self.channels.get_mut(&*p.channel) else {
            return; // unsubscribed meanwhile
        };
        if pos.catching_up {
            return; // history holds it; the catch-up reads it in order
        }
        if pos.epoch.is_empty() && pos.last == 0 && p.offset == 1 {
            // Before everything, and this is the channel's first publication: nothing missed.
            pos.epoch = p.epoch.clone();
            pos.last = 1;
            out.push(Emit::Publication(delivery));
            return;
        }
        if *pos.epoch != *p.epoch {
            // A new generation: signal the loss and deliver what it holds before this one.
            let since = StreamPosition {
                epoch: pos.epoch.to_string(),
                offset: pos.last,
            };
            let channel = p.channel.clone();
            Box::pin(self.fill_gap(node, &channel, since, p.offset, out)).await;
            let Some(pos) = self.channels.get_mut(&*p.channel) else {
                return;
            };
            if pos.catching_up || (*pos.epoch == *p.epoch && p.offset <= pos.last) {
                return;
            }
            pos.epoch = p.epoch.clone();
            pos.last = p.offset;
            out.push(Emit::Publication(delivery));
            return;
        }
        if p.offset <= pos.last {
            node.metrics
                .dropped
                .with_label_values(&["any", "duplicate"])
                .inc();
            return;
        }
        if p.offset > pos.last + 1 {
            let since = StreamPosition {
                epoch: pos.epoch.to_string(),
                offset: pos.last,
            };
            let channel = p.channel.clone();
            Box::pin(self.fill_gap(node, &channel, since, p.offset, out)).await;
            let pos = self
                .channels
                .get_mut(&*p.channel)
                .expect("still subscribed");
            if pos.catching_up || p.offset <= pos.last {
                return;
            }
            pos.last = p.offset;
        } else {
            pos.last = p.offset;
        }
        out.push(Emit::Publication(delivery));
    }

    /// After the broker's subscription came back: recover every channel from its position.
    pub(crate) async fn resync(&mut self, node: &Node, out: &mut Vec<Emit>) {
        let names = self.names();
        for channel in names {
            let Some(pos) = self.channels.get(&channel) else {
                continue;
            };
            let since = StreamPosition {
                epoch: pos.epoch.to_string(),
                offset: pos.last,
            };
            Box::pin(self.fill_gap(node, &channel, since, u64::MAX, out)).await;
        }
    }

    async fn fill_gap(
        &mut self,
        node: &Node,
        channel: &Arc<str>,
        since: StreamPosition,
        before: u64,
        out: &mut Vec<Emit>,
    ) {
        let budget = node.config.limits.max_reply_bytes;
        let recovered = node.recover(channel, Some(&since), None, budget).await;
        let Some(pos) = self.channels.get_mut(channel) else {
            return;
        };
        // A page that stopped short of both the channel's top and the gap's end: read on later.
        let unfinished = |joined: &crate::node::Recovered, last: u64| {
            !joined.complete && (before == u64::MAX || last.saturating_add(1) < before)
        };
        match recovered {
            Ok(joined) if joined.recovered => {
                // Recovered from an empty epoch ("before everything") reads the channel's
                // current epoch: the position follows the page it read.
                if *pos.epoch != *joined.position.epoch {
                    pos.epoch = Arc::from(joined.position.epoch.as_str());
                }
                for p in &joined.publications {
                    if p.offset > pos.last && p.offset < before {
                        pos.last = p.offset;
                        out.push(Emit::Publication(Arc::new(Delivery::new(p.clone()))));
                    }
                }
                pos.catching_up = unfinished(&joined, pos.last);
            }
            Ok(joined) => {
                // Lost: say so, then deliver what the new generation still holds.
                let first = joined.publications.first().map(|p| p.offset);
                let before_first = first.map(|o| o - 1).unwrap_or(joined.position.offset);
                pos.epoch = Arc::from(joined.position.epoch.as_str());
                pos.last = before_first.min(before.saturating_sub(1));
                out.push(Emit::Reset {
                    channel: channel.clone(),
                    position: StreamPosition {
                        epoch: joined.position.epoch.clone(),
                        offset: pos.last,
                    },
                });
                for p in &joined.publications {
                    if p.offset > pos.last && p.offset < before {
                        pos.last = p.offset;
                        out.push(Emit::Publication(Arc::new(Delivery::new(p.clone()))));
                    }
                }
                pos.catching_up = unfinished(&joined, pos.last);
            }
            Err(err) => {
                // Catching up stops too: a later live publication finds the gap again.
                pos.catching_up = false;
                // The broker is failing; say so rather than pretend nothing was missed.
                tracing::warn!(cause = %err, channel = %channel, "gap recovery failed");
                if before != u64::MAX {
                    pos.last = before.saturating_sub(1).max(pos.last);
                }
                out.push(Emit::Reset {
                    channel: channel.clone(),
                    position: StreamPosition {
                        epoch: pos.epoch.to_string(),
                        offset: pos.last,
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, Verifier};
    use crate::config::{EdgeConfig, NamespaceConfig};
    use crate::metrics::Metrics;
    use herald_broker::memory::MemoryBroker;
    use herald_broker::{Broker, HistoryQuery, Payload, PublishRequest};
    use serde_json::value::RawValue;

    /// A node over a fresh memory broker; the `tiny` namespace keeps two messages.
    async fn node() -> Arc<Node> {
        let mut config = EdgeConfig::default();
        config.namespaces.insert(
            "tiny".into(),
            NamespaceConfig {
                history_size: 2,
                ..Default::default()
            },
        );
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
        let verifier = Verifier::new(&AuthConfig::default()).await.unwrap();
        Node::new(config, broker, Arc::new(Metrics::new()), verifier, None)
    }

    /// Publishes `n` messages to `channel` (no live delivery: nothing subscribed in the hub)
    /// and returns them as a live delivery would carry them.
    async fn publish(node: &Node, channel: &str, n: u64) -> Vec<Arc<Delivery>> {
        let history = node.config.namespace(channel).history();
        for i in 0..n {
            let request = PublishRequest {
                channel: channel.into(),
                payload: Payload::Json(RawValue::from_string(i.to_string()).unwrap()),
                from: None,
                user: None,
                skip_self: false,
                history,
            };
            node.broker.publish(request).await.unwrap();
        }
        let newest = HistoryQuery {
            since: None,
            limit: n as usize,
            max_bytes: 0,
        };
        let page = node.broker.history(channel, newest, history).await.unwrap();
        page.publications
            .into_iter()
            .map(|p| Arc::new(Delivery::new(p)))
            .collect()
    }

    /// History reads the connection made to fill gaps.
    fn recoveries(node: &Node) -> u64 {
        ["recovered", "not_recovered"]
            .iter()
            .map(|o| node.metrics.recoveries.with_label_values(&[o]).get())
            .sum()
    }

    fn before_everything() -> StreamPosition {
        StreamPosition {
            epoch: String::new(),
            offset: 0,
        }
    }

    /// What was emitted: `Ok(offset)` per publication, `Err(offset)` per reset.
    fn emitted(out: &[Emit]) -> Vec<Result<u64, u64>> {
        out.iter()
            .map(|e| match e {
                Emit::Publication(d) => Ok(d.publication.offset),
                Emit::Reset { position, .. } => Err(position.offset),
            })
            .collect()
    }

    #[tokio::test]
    async fn the_first_publication_after_no_epoch_is_delivered_and_adopts_its_epoch() {
        let node = node().await;
        let mut subs = Subscriptions::default();
        subs.insert("c", &before_everything(), true);
        let live = publish(&node, "c", 2).await;
        let mut out = Vec::new();
        for d in &live {
            subs.on_live(&node, d.clone(), &mut out).await;
        }
        assert_eq!(emitted(&out), vec![Ok(1), Ok(2)]);
        assert_eq!(recoveries(&node), 0, "nothing was missed: no history read");
        let pos = &subs.channels["c"];
        assert_eq!((&*pos.epoch, pos.last), (&*live[0].publication.epoch, 2));
        // A duplicate of what was delivered is dropped (the epoch was adopted).
        subs.on_live(&node, live[1].clone(), &mut out).await;
        assert_eq!(out.len(), 2);
    }

    #[tokio::test]
    async fn missed_first_publications_are_recovered_not_reset() {
        let node = node().await;
        let mut subs = Subscriptions::default();
        subs.insert("c", &before_everything(), true);
        let live = publish(&node, "c", 4).await;
        let mut out = Vec::new();
        subs.on_live(&node, live[2].clone(), &mut out).await;
        assert_eq!(
            emitted(&out),
            vec![Ok(1), Ok(2), Ok(3)],
            "no recovered:false"
        );
        assert_eq!(recoveries(&node), 1);
        // The fill adopted the epoch: the next one is in order, with no further read.
        subs.on_live(&node, live[3].clone(), &mut out).await;
        assert_eq!(emitted(&out), vec![Ok(1), Ok(2), Ok(3), Ok(4)]);
        assert_eq!(recoveries(&node), 1, "the position kept the adopted epoch");
    }

    #[tokio::test]
    async fn a_resync_that_recovers_adopts_the_pages_epoch() {
        let node = node().await;
        let mut subs = Subscriptions::default();
        subs.insert("c", &before_everything(), true);
        let live = publish(&node, "c", 3).await;
        let mut out = Vec::new();
        subs.resync(&node, &mut out).await;
        assert_eq!(emitted(&out), vec![Ok(1), Ok(2), Ok(3)]);
        let pos = &subs.channels["c"];
        assert_eq!(&*pos.epoch, &*live[0].publication.epoch);
        // Live copies of what the resync delivered are duplicates.
        for d in &live {
            subs.on_live(&node, d.clone(), &mut out).await;
        }
        assert_eq!(out.len(), 3);
        assert_eq!(recoveries(&node), 1);
    }

    #[tokio::test]
    async fn before_everything_with_history_gone_is_reset() {
        let node = node().await;
        let mut subs = Subscriptions::default();
        subs.insert("tiny:c", &before_everything(), true);
        let live = publish(&node, "tiny:c", 5).await;
        let mut out = Vec::new();
        let newest = live.last().unwrap().clone();
        assert_eq!(newest.publication.offset, 5);
        subs.on_live(&node, newest, &mut out).await;
        // Offsets 1..=3 are gone: say so (a reset to just before 5), then deliver 5.
        assert_eq!(emitted(&out), vec![Err(4), Ok(5)]);
    }
}
