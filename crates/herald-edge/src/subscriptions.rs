//! A connection's channels and its position in each: the dedup and gap check every live
//! publication passes before it is written.
//!
//! Live publications arrive through the hub; recovered ones come from history. A publication at
//! or below the connection's position is a duplicate and dropped. One more than the position is
//! delivered. Further ahead means a gap (the broker lost live messages, e.g. a Redis blip): the
//! gap is filled from history, or, when history no longer has it, the client is told
//! `recovered: false` with its new position. A different epoch means the channel's history was
//! reset: the client is told the same way. Loss is therefore always signalled, never silent.

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

    /// Records a channel at `position`.
    pub(crate) fn insert(&mut self, channel: &str, position: &StreamPosition) {
        self.channels.insert(
            Arc::from(channel),
            Position {
                epoch: Arc::from(position.epoch.as_str()),
                last: position.offset,
            },
        );
    }

    /// Forgets a channel; returns whether it was there.
    pub(crate) fn remove(&mut self, channel: &str) -> bool {
        self.channels.remove(channel).is_some()
    }

    /// Checks a live publication; pushes what to write into `out`.
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
        if *pos.epoch != *p.epoch {
            // A new generation: signal the loss and deliver what it holds before this one.
            let since = StreamPosition {
                epoch: pos.epoch.to_string(),
                offset: pos.last,
            };
            let channel = p.channel.clone();
            self.fill_gap(node, &channel, since, p.offset, out).await;
            let Some(pos) = self.channels.get_mut(&*p.channel) else {
                return;
            };
            if *pos.epoch == *p.epoch && p.offset <= pos.last {
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
            self.fill_gap(node, &channel, since, p.offset, out).await;
            let pos = self
                .channels
                .get_mut(&*p.channel)
                .expect("still subscribed");
            if p.offset <= pos.last {
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
            self.fill_gap(node, &channel, since, u64::MAX, out).await;
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
        let recovered = node.recover(channel, Some(&since)).await;
        let Some(pos) = self.channels.get_mut(channel) else {
            return;
        };
        match recovered {
            Ok(joined) if joined.recovered => {
                for p in joined.publications {
                    if p.offset > pos.last && p.offset < before {
                        pos.last = p.offset;
                        out.push(Emit::Publication(Arc::new(Delivery::new(p))));
                    }
                }
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
                        epoch: joined.position.epoch,
                        offset: pos.last,
                    },
                });
                for p in joined.publications {
                    if p.offset > pos.last && p.offset < before {
                        pos.last = p.offset;
                        out.push(Emit::Publication(Arc::new(Delivery::new(p))));
                    }
                }
            }
            Err(err) => {
                // The broker is failing; say so rather than pretend nothing was missed.
                tracing::warn!(cause = %err, "gap recovery failed");
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
