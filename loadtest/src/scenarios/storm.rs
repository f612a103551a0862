//! storm (WebSocket; Herald or sockudo): `--connections` clients across the `--url`s, a
//! publisher at `--rate` through `--publish-url`, and one node killed (`--kill-cmd` after
//! `--kill-after`, or by the calling script). Disconnected clients reconnect to the next
//! URL after a random delay up to `--reconnect-jitter` (backing off on failure) and
//! resubscribe: Herald's with `since` = their last position, sockudo's plainly (the Pusher
//! protocol has no resume). Reports the time from the kill until 95/99/100 % of the
//! disconnected clients were reconnected and resumed, the clients that never came back, and
//! loss (sequence tracking survives reconnects, so what a client missed while it was away is
//! counted as lost).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::Rng;
use serde_json::json;
use tokio::sync::watch;

use super::publisher::publish_schedule;
use super::receiver::{FinalsRx, Inbox};
use super::summary::{conn_stats, message_stats};
use super::{RunContext, Window};
use crate::cli::{StormArgs, Target, Transport};
use crate::clients::Subscriber;
use crate::clock::{now_us, us_of};
use crate::latch::Latch;
use crate::progress::Counters;
use crate::report::{round3, Results};
use crate::stats::ChannelTally;

/// What one client went through, µs since the process epoch.
#[derive(Debug, Default, Clone, Copy)]
struct Recovery {
    /// First time its connection broke.
    lost_at: Option<u64>,
    /// First successful reconnect after that (welcome + subscribed).
    back_at: Option<u64>,
    /// Whether every channel came back `recovered: true`.
    resumed: bool,
}

/// Runs the storm scenario.
pub(crate) async fn run(ctx: Arc<RunContext>, args: &StormArgs) -> Result<(Results, Window)> {
    if ctx.args.transport != Transport::Ws || ctx.args.target == Target::Nchan {
        bail!("storm runs over WebSocket against --target herald or sockudo (nchan here is one process: nothing to fail over to)");
    }
    let n = ctx.args.connections;
    let channels = ctx.args.channels.unwrap_or(1).max(1);
    let (finals_tx, finals_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        connected: Latch::new(n),
        done: Latch::new(n),
        first_loss: AtomicU64::new(u64::MAX),
        jitter: args.reconnect_jitter,
    });
    let start = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (ctx, shared, finals_rx) = (ctx.clone(), shared.clone(), finals_rx.clone());
            let at = start + ctx.ramp_offset(i, n);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                client(&ctx, &shared, i, vec![i % channels], finals_rx).await
            })
        })
        .collect();
    shared.connected.wait().await;

    let mut window = Window::begin(&ctx.args.server_pids);
    let begin = Instant::now() + Duration::from_millis(20);
    let killer = args.kill_cmd.clone().map(|cmd| {
        let at = begin + args.kill_after;
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let killed_at = now_us();
            let status = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .status()
                .await;
            (killed_at, status.map(|s| s.success()).unwrap_or(false))
        })
    });
    let finals = Arc::new(publish_schedule(&ctx, channels, begin, ctx.args.duration).await);
    let _ = finals_tx.send(Some(finals.clone()));
    let drained = tokio::time::timeout(ctx.args.drain, shared.done.wait())
        .await
        .is_ok();
    window.end();
    ctx.cancel.cancel();

    let (kill_us, kill_ok) = match killer {
        Some(k) => {
            let (at, ok) = k.await?;
            (Some(at), Some(ok))
        }
        None => {
            let first = shared.first_loss.load(Ordering::Acquire);
            ((first != u64::MAX).then_some(first), None)
        }
    };
    let mut recoveries = Vec::new();
    let mut tally = ChannelTally::default();
    for h in handles {
        if let Ok(Some((inbox, rec))) = h.await {
            inbox.finish(&finals, &mut tally);
            recoveries.push(rec);
        }
    }
    let send_secs = ctx.args.duration.as_secs_f64();
    let mut results = Results {
        connections: conn_stats(&ctx, n as u64),
        messages: Some(message_stats(&ctx, &finals, &tally, send_secs, drained)),
        ..Default::default()
    };
    results
        .extra
        .insert("storm".into(), storm_summary(&recoveries, kill_us, kill_ok));
    Ok((results, window))
}

/// Time from the kill until `q` of the disconnected clients were back; None = never.
fn time_to(sorted_secs: &[f64], lost: usize, q: f64) -> Option<f64> {
    let need = ((lost as f64) * q).ceil() as usize;
    if need == 0 {
        return Some(0.0);
    }
    sorted_secs.get(need - 1).copied()
}

fn storm_summary(
    recs: &[Recovery],
    kill_us: Option<u64>,
    kill_ok: Option<bool>,
) -> serde_json::Value {
    let lost: Vec<&Recovery> = recs.iter().filter(|r| r.lost_at.is_some()).collect();
    let kill = kill_us.unwrap_or(0);
    let secs = |pick: &dyn Fn(&Recovery) -> Option<u64>| {
        let mut v: Vec<f64> = lost
            .iter()
            .filter_map(|r| pick(r))
            .map(|t| round3(t.saturating_sub(kill) as f64 / 1e6))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let back = secs(&|r| r.back_at);
    let resumed = secs(&|r| r.back_at.filter(|_| r.resumed));
    let pct = |v: &[f64]| {
        json!({
            "p95_secs": time_to(v, lost.len(), 0.95),
            "p99_secs": time_to(v, lost.len(), 0.99),
            "p100_secs": time_to(v, lost.len(), 1.0),
        })
    };
    json!({
        "kill_command_ok": kill_ok,
        "kill_at_secs": kill_us.map(|k| round3(k as f64 / 1e6)),
        "disconnected": lost.len(),
        "reconnected": back.len(),
        "resumed": resumed.len(),
        "never_reconnected": lost.len() - back.len(),
        "not_recovered": back.len() - resumed.len(),
        "time_to_reconnect": pct(&back),
        "time_to_resume": pct(&resumed),
    })
}

/// What the coordinator and the clients share.
struct Shared {
    /// Counted down by each client once its first connection attempt resolved.
    connected: Latch,
    /// Counted down by each client once it received everything (or the run ended).
    done: Latch,
    /// The first connection loss seen, µs (stands for the kill without `--kill-cmd`).
    first_loss: AtomicU64,
    /// Largest random delay before the first reconnect attempt.
    jitter: Duration,
}

/// One client: connect, receive, and on loss reconnect (next URL) and resume.
async fn client(
    ctx: &RunContext,
    shared: &Shared,
    i: usize,
    channels: Vec<usize>,
    mut finals_rx: FinalsRx,
) -> Option<(Inbox, Recovery)> {
    let (connected, done, first_loss, jitter) = (
        &shared.connected,
        &shared.done,
        &shared.first_loss,
        shared.jitter,
    );
    let began = Instant::now();
    let http = ctx.http.for_conn(i);
    let mut spec = ctx.spec(i, &channels);
    let target = ctx.args.target;
    let first = Subscriber::connect(target, Transport::Ws, spec.clone(), http).await;
    connected.count_down();
    let mut sub = match first {
        Ok(s) => s,
        Err(e) => {
            ctx.connect_errors.count(&e);
            done.count_down();
            return None;
        }
    };
    ctx.connect_latency
        .record(i, us_of(Instant::now()) - us_of(began));
    Counters::add(&ctx.counters.open, 1);
    Counters::add(&ctx.counters.connected, 1);
    let mut inbox = Inbox::new(i, channels, None);
    let mut rec = Recovery::default();
    let mut finals = finals_rx.borrow_and_update().clone();
    let (mut counted, mut batch) = (false, Vec::new());
    let mut edge = ctx.edge_of(i);
    loop {
        if !counted && finals.as_ref().is_some_and(|f| inbox.is_complete(f)) {
            done.count_down();
            counted = true;
        }
        let err = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            r = finals_rx.changed(), if finals.is_none() => {
                if r.is_ok() { finals = finals_rx.borrow_and_update().clone(); }
                continue;
            }
            r = sub.next(&mut batch) => match r {
                Ok(()) => { inbox.accept(ctx, &mut batch); continue; }
                Err(e) => e,
            },
        };
        // The connection broke: remember where each channel stood, then come back.
        ctx.drop_errors.count(&err);
        ctx.counters.open.fetch_sub(1, Ordering::Relaxed);
        Counters::add(&ctx.counters.dropped, 1);
        let lost_at = now_us();
        first_loss.fetch_min(lost_at, Ordering::AcqRel);
        rec.lost_at.get_or_insert(lost_at);
        spec.since = sub
            .herald_ws()
            .map(|s| s.positions().to_vec())
            .unwrap_or_default();
        // Close the broken socket before reconnecting: kept open until the new connection
        // is up, every disconnected client held two descriptors, and with 10k+ clients the
        // tool ran out (EMFILE, reported as fd_limit) and backed off - its own delay, not
        // the server's.
        drop(sub);
        let mut delay =
            Duration::from_secs_f64(rand::rng().random_range(0.0..=jitter.as_secs_f64()));
        let back = loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
            edge = (edge + 1) % ctx.endpoints.len();
            spec.endpoint = ctx.endpoints[edge].clone();
            match Subscriber::connect(target, Transport::Ws, spec.clone(), http).await {
                Ok(s) => break Some(s),
                Err(e) => {
                    ctx.connect_errors.count(&e);
                    delay = (delay * 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
                }
            }
        };
        let Some(new) = back else { break };
        // sockudo: never resumed (no positions), whatever was published meanwhile is lost.
        let resumed = new.herald_ws().is_some_and(|s| {
            s.subscribed()
                .iter()
                .all(|r| r.as_ref().is_some_and(|r| r.recovered))
        });
        if rec.back_at.is_none() {
            rec.back_at = Some(now_us());
            rec.resumed = resumed;
        }
        Counters::add(&ctx.counters.open, 1);
        Counters::add(&ctx.counters.connected, 1);
        sub = new;
    }
    if !counted {
        done.count_down();
    }
    Some((inbox, rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_times_count_the_never_returned() {
        // 4 lost; 3 came back at 1, 2, 3 s; one never did.
        let v = [1.0, 2.0, 3.0];
        assert_eq!(time_to(&v, 4, 0.5), Some(2.0));
        assert_eq!(time_to(&v, 4, 0.75), Some(3.0));
        assert_eq!(time_to(&v, 4, 0.95), None);
        assert_eq!(time_to(&[], 0, 1.0), Some(0.0));
        let recs = [
            Recovery {
                lost_at: Some(1_000_000),
                back_at: Some(2_000_000),
                resumed: true,
            },
            Recovery {
                lost_at: Some(1_000_000),
                back_at: Some(3_000_000),
                resumed: false,
            },
            Recovery {
                lost_at: Some(1_000_000),
                back_at: None,
                resumed: false,
            },
            Recovery::default(),
        ];
        let s = storm_summary(&recs, Some(1_000_000), Some(true));
        assert_eq!(s["disconnected"], 3);
        assert_eq!(s["never_reconnected"], 1);
        assert_eq!(s["not_recovered"], 1);
        assert_eq!(s["time_to_reconnect"]["p95_secs"], serde_json::Value::Null);
        assert_eq!(s["time_to_resume"]["p95_secs"], serde_json::Value::Null);
    }
}
