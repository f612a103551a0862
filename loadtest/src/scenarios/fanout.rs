//! fanout: `--connections` subscribers spread round-robin over `--channels` channels (and
//! over the `--url`s), one HTTP publisher at `--rate` msgs/s in total for `--duration`.
//!
//! Phases: open every subscriber (spread over `--ramp`) and wait until each attempt has
//! resolved; publish on schedule; announce what was sent; wait until every receiver has
//! everything or `--drain` passes; cancel and tally.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::watch;

use super::publisher::publish_schedule;
use super::receiver::{open_receivers, OpenPlan};
use super::summary::{collect, conn_stats, message_stats};
use super::{RunContext, Window};
use crate::latch::Latch;
use crate::report::Results;

/// Runs the fanout scenario.
pub(crate) async fn run(ctx: Arc<RunContext>) -> Result<(Results, Window)> {
    let n = ctx.args.connections;
    let channels = ctx.args.channels.unwrap_or(1).max(1);
    let (finals_tx, finals_rx) = watch::channel(None);
    let connected = Arc::new(Latch::new(n));
    let done = Arc::new(Latch::new(n));
    let start = Instant::now();
    let plan = OpenPlan {
        n,
        at: |i| start + ctx.ramp_offset(i, n),
        channels_of: |i| vec![i % channels],
        hold: true,
    };
    let handles = open_receivers(&ctx, plan, &finals_rx, &connected, &done);
    connected.wait().await;

    let mut window = Window::begin(&ctx.args.server_pids);
    // A short lead so the first due times are not already in the past.
    let start = Instant::now() + Duration::from_millis(20);
    let finals = publish_schedule(&ctx, channels, start, ctx.args.duration).await;
    let send_secs = ctx.args.duration.as_secs_f64();
    let finals = Arc::new(finals);
    let _ = finals_tx.send(Some(finals.clone()));
    let drained = tokio::time::timeout(ctx.args.drain, done.wait())
        .await
        .is_ok();
    window.end();
    ctx.cancel.cancel();

    let tally = collect(handles, &finals).await;
    let results = Results {
        connections: conn_stats(&ctx, n as u64),
        messages: Some(message_stats(&ctx, &finals, &tally, send_secs, drained)),
        extra: Default::default(),
    };
    Ok((results, window))
}
