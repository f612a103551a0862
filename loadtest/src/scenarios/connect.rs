//! connect: open-loop connection arrivals. Connection `k` is due at `start + k / --rate`
//! for `--duration`, whether or not earlier ones finished; connect latency is measured from
//! the due time. Connections are held until the end (or closed at once with `--no-hold`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::watch;

use super::receiver::{open_receivers, Finals, OpenPlan};
use super::summary::{collect, conn_stats};
use super::{RunContext, Window};
use crate::latch::Latch;
use crate::report::{round3, Results};

/// Runs the connect scenario.
pub(crate) async fn run(ctx: Arc<RunContext>, hold: bool) -> Result<(Results, Window)> {
    let rate = ctx.args.rate;
    if rate <= 0.0 {
        bail!("--rate (connections per second) must be positive");
    }
    let n = (rate * ctx.args.duration.as_secs_f64()).round() as usize;
    let channels = ctx.args.channels.unwrap_or(1).max(1);
    let (_finals_tx, finals_rx) = watch::channel(None);
    let connected = Arc::new(Latch::new(n));
    let done = Arc::new(Latch::new(n));
    let mut window = Window::begin(&ctx.args.server_pids);
    let start = Instant::now() + Duration::from_millis(20);
    let plan = OpenPlan {
        n,
        at: |k| start + Duration::from_secs_f64(k as f64 / rate),
        channels_of: |k| vec![k % channels],
        hold,
    };
    let handles = open_receivers(&ctx, plan, &finals_rx, &connected, &done);
    connected.wait().await;
    let elapsed = start.elapsed().as_secs_f64();
    window.end();
    ctx.cancel.cancel();
    let _ = collect(handles, &Finals::default()).await;

    let mut results = Results {
        connections: conn_stats(&ctx, n as u64),
        ..Default::default()
    };
    let established = results.connections.established;
    let secs = ctx.args.duration.as_secs_f64().max(elapsed);
    results.extra.insert("offered_per_sec".into(), json!(rate));
    results.extra.insert(
        "achieved_per_sec".into(),
        json!(round3(established as f64 / secs)),
    );
    results
        .extra
        .insert("all_resolved_after_secs".into(), json!(round3(elapsed)));
    Ok((results, window))
}
