//! The receiving side of a run: [`Inbox`] accounts for every delivery of one connection,
//! [`Finals`] says what each stream sent, and [`open_receivers`] opens and drives the
//! subscriber connections of fanout and idle.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::RunContext;
use crate::clients::{Delivery, Subscriber};
use crate::clock::us_of;
use crate::latch::Latch;
use crate::progress::Counters;
use crate::stats::{ChannelTally, SeqSummary, SeqTracker};

/// What one sender sent on one channel, known once sending is over.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamFinal {
    /// The sender's index (`Stamp::s`).
    pub(crate) sender: u32,
    /// Sequence numbers 0..sent were sent.
    pub(crate) sent: u64,
    /// Of those, the ones whose publish failed (not expected anywhere).
    pub(crate) failed: BTreeSet<u64>,
}

/// Every stream's final count, by channel.
#[derive(Debug, Clone, Default)]
pub(crate) struct Finals {
    /// Channel index -> the streams sent on it.
    pub(crate) per_channel: HashMap<usize, Vec<StreamFinal>>,
}

/// Announces [`Finals`] to every receiver once sending is over (None before).
pub(crate) type FinalsRx = watch::Receiver<Option<Arc<Finals>>>;

/// One connection's accounting.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// Connection number (picks the histogram shard).
    conn: usize,
    /// The channels it subscribed.
    channels: Vec<usize>,
    /// (channel, sender) -> sequence tracker.
    trackers: HashMap<(usize, u32), SeqTracker>,
    /// Rooms: this connection's edge and the number of edges, for same/cross-edge latency
    /// (sender `s` sits on edge `s % edges`).
    edges: Option<(usize, usize)>,
    /// A sender whose stream this connection is not sent (its own, where the server never
    /// echoes a publisher: Pusher client events); neither expected nor counted as lost.
    not_echoed: Option<u32>,
}

impl Inbox {
    /// An empty inbox for connection `conn` subscribed to `channels`.
    pub(crate) fn new(conn: usize, channels: Vec<usize>, edges: Option<(usize, usize)>) -> Self {
        Self {
            conn,
            channels,
            trackers: HashMap::new(),
            edges,
            not_echoed: None,
        }
    }

    /// Expects nothing from `sender` (this connection's own stream, on a server that does
    /// not echo a publisher's messages back to it).
    pub(crate) fn without_echo_of(mut self, sender: u32) -> Self {
        self.not_echoed = Some(sender);
        self
    }

    /// Records latency and sequence of each delivery, and empties `batch`.
    pub(crate) fn accept(&mut self, ctx: &RunContext, batch: &mut Vec<Delivery>) {
        Counters::add(&ctx.counters.delivered, batch.len() as u64);
        for d in batch.drain(..) {
            let us = d.recv_us.saturating_sub(d.stamp.t);
            ctx.latency.record(self.conn, us);
            if let Some((edge, edges)) = self.edges {
                if edges > 1 {
                    let same = d.stamp.s as usize % edges == edge;
                    let rec = if same {
                        &ctx.same_edge
                    } else {
                        &ctx.cross_edge
                    };
                    rec.record(self.conn, us);
                }
            }
            self.trackers
                .entry((d.channel, d.stamp.s))
                .or_default()
                .observe(d.stamp.seq);
        }
    }

    /// True when every stream of every subscribed channel has fully arrived.
    pub(crate) fn is_complete(&self, finals: &Finals) -> bool {
        self.channels.iter().all(|ch| {
            finals.per_channel.get(ch).map_or(true, |streams| {
                streams.iter().all(|f| {
                    Some(f.sender) == self.not_echoed
                        || self
                            .trackers
                            .get(&(*ch, f.sender))
                            .is_some_and(|t| t.is_complete(f.sent))
                        || f.sent == f.failed.len() as u64
                })
            })
        })
    }

    /// Adds this connection's tally per channel into `tally`.
    pub(crate) fn finish(&self, finals: &Finals, tally: &mut ChannelTally) {
        let empty = SeqTracker::default();
        for ch in &self.channels {
            let mut sum = SeqSummary::default();
            let expected = finals.per_channel.get(ch).into_iter().flatten();
            for f in expected.filter(|f| Some(f.sender) != self.not_echoed) {
                let t = self.trackers.get(&(*ch, f.sender)).unwrap_or(&empty);
                sum.add(&t.finish(f.sent, &f.failed));
            }
            tally.add(*ch, &sum);
        }
    }
}

/// Drives one connection until the run is cancelled or the connection fails: accounts for
/// deliveries and counts `done` down once the connection has everything it expects (or
/// has died). Returns the inbox and the connection (None when it failed).
pub(crate) async fn drive(
    ctx: &RunContext,
    mut sub: Subscriber,
    mut inbox: Inbox,
    mut finals_rx: FinalsRx,
    done: &Latch,
) -> (Inbox, Option<Subscriber>) {
    let mut finals = finals_rx.borrow_and_update().clone();
    let mut counted = false;
    let mut batch = Vec::new();
    let alive = loop {
        if !counted && finals.as_ref().is_some_and(|f| inbox.is_complete(f)) {
            done.count_down();
            counted = true;
        }
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break true,
            changed = finals_rx.changed(), if finals.is_none() => {
                if changed.is_ok() {
                    finals = finals_rx.borrow_and_update().clone();
                }
            }
            r = sub.next(&mut batch) => match r {
                Ok(()) => inbox.accept(ctx, &mut batch),
                Err(e) => {
                    ctx.drop_errors.count(&e);
                    break false;
                }
            },
        }
    };
    if !counted {
        done.count_down();
    }
    if alive {
        (inbox, Some(sub))
    } else {
        ctx.counters
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        Counters::add(&ctx.counters.dropped, 1);
        (inbox, None)
    }
}

/// How [`open_receivers`] opens and keeps its connections.
pub(crate) struct OpenPlan<A, C> {
    /// Number of connections.
    pub(crate) n: usize,
    /// When connection `i` is due to start opening (open model: connect latency is
    /// measured from this instant).
    pub(crate) at: A,
    /// The channels connection `i` subscribes.
    pub(crate) channels_of: C,
    /// Keep each connection open until the run ends (false: close once subscribed).
    pub(crate) hold: bool,
}

/// Opens the connections of `plan`. `connected` counts down once per attempt, `done` once
/// per connection that has everything (or failed). Each task returns its inbox (None when
/// the connection never opened).
pub(crate) fn open_receivers<A, C>(
    ctx: &Arc<RunContext>,
    plan: OpenPlan<A, C>,
    finals_rx: &FinalsRx,
    connected: &Arc<Latch>,
    done: &Arc<Latch>,
) -> Vec<JoinHandle<Option<Inbox>>>
where
    A: Fn(usize) -> Instant,
    C: Fn(usize) -> Vec<usize>,
{
    (0..plan.n)
        .map(|i| {
            let ctx = ctx.clone();
            let channels = (plan.channels_of)(i);
            let finals_rx = finals_rx.clone();
            let (connected, done) = (connected.clone(), done.clone());
            let at = (plan.at)(i);
            let hold = plan.hold;
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let spec = ctx.spec(i, &channels);
                let http = ctx.http.for_conn(i);
                let sub = Subscriber::connect(ctx.args.target, ctx.args.transport, spec, http);
                let sub = tokio::select! {
                    _ = ctx.cancel.cancelled() => None,
                    r = sub => match r {
                        Ok(s) => Some(s),
                        Err(e) => {
                            ctx.connect_errors.count(&e);
                            None
                        }
                    },
                };
                connected.count_down();
                let Some(sub) = sub else {
                    done.count_down();
                    return None;
                };
                ctx.connect_latency
                    .record(i, us_of(Instant::now()).saturating_sub(us_of(at)));
                Counters::add(&ctx.counters.connected, 1);
                let inbox = Inbox::new(i, channels, None);
                if !hold {
                    done.count_down();
                    sub.close().await;
                    return Some(inbox);
                }
                Counters::add(&ctx.counters.open, 1);
                let (inbox, sub) = drive(&ctx, sub, inbox, finals_rx, &done).await;
                if let Some(sub) = sub {
                    sub.close().await;
                }
                Some(inbox)
            })
        })
        .collect()
}
