//! Turns a run's counters, recorders and tallies into report sections.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::receiver::{Finals, Inbox};
use super::RunContext;
use crate::progress::Counters;
use crate::report::{ChannelAnomaly, ConnStats, MessageStats};
use crate::stats::{ChannelTally, LatencySummary};

/// The connection section.
pub(crate) fn conn_stats(ctx: &RunContext, attempted: u64) -> ConnStats {
    ConnStats {
        attempted,
        established: Counters::get(&ctx.counters.connected),
        errors: ctx.connect_errors.snapshot(),
        dropped: ctx.drop_errors.snapshot(),
        connect_latency: LatencySummary::of(&ctx.connect_latency.merged()),
    }
}

/// Awaits every receiver task and tallies its inbox against `finals`.
pub(crate) async fn collect(
    handles: Vec<JoinHandle<Option<Inbox>>>,
    finals: &Finals,
) -> ChannelTally {
    let mut tally = ChannelTally::default();
    for h in handles {
        if let Ok(Some(inbox)) = h.await {
            inbox.finish(finals, &mut tally);
        }
    }
    tally
}

/// The message section.
pub(crate) fn message_stats(
    ctx: &Arc<RunContext>,
    finals: &Finals,
    tally: &ChannelTally,
    send_secs: f64,
    drained: bool,
) -> MessageStats {
    let published: u64 = finals.per_channel.values().flatten().map(|f| f.sent).sum();
    let deliveries = Counters::get(&ctx.counters.delivered);
    let edges = ctx.endpoints.len() > 1;
    let summary = |r: &crate::stats::LatencyRecorder| LatencySummary::of(&r.merged());
    MessageStats {
        send_secs,
        published,
        publish_errors: ctx.publish_errors.snapshot(),
        deliveries,
        deliveries_per_sec: if send_secs > 0.0 {
            deliveries as f64 / send_secs
        } else {
            0.0
        },
        latency: summary(&ctx.latency),
        same_edge: edges.then(|| summary(&ctx.same_edge)),
        cross_edge: edges.then(|| summary(&ctx.cross_edge)),
        seq: tally.total(),
        channel_anomalies: tally
            .anomalies()
            .map(|(ch, receivers, seq)| ChannelAnomaly {
                channel: ctx.channel_name(ch),
                receivers,
                seq: *seq,
            })
            .collect(),
        drained,
    }
}
