//! The scheduled HTTP publisher of fanout and storm: message `k` is due at
//! `start + k / rate` (open model) and carries that due time, so a publisher that falls
//! behind shows up as latency instead of silently sending less.
//!
//! Each channel has one request in flight at a time (channels publish concurrently):
//! concurrent publishes to one channel could be sequenced by the server in any order,
//! which would read as reordering that no server caused. A channel whose publishes fall
//! behind delays its later ones, and the delay shows up as latency.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::receiver::{Finals, StreamFinal};
use super::RunContext;
use crate::clients::publish::HttpPublisher;
use crate::clock::us_of;
use crate::payload::{self, Stamp};
use crate::progress::Counters;

/// Publishes at `rate` msgs/s in total, round-robin over `channels` channels, from `start`
/// for `duration`. Returns once every request has been answered, with what each channel's
/// stream sent.
pub(crate) async fn publish_schedule(
    ctx: &Arc<RunContext>,
    channels: usize,
    start: Instant,
    duration: Duration,
) -> Finals {
    let rate = ctx.args.rate.max(1e-3);
    let channels = channels.max(1);
    let http = ctx.http.for_conn(usize::MAX).clone();
    let publisher = HttpPublisher::new(
        http,
        ctx.args.target,
        ctx.publish_endpoint.clone(),
        ctx.app.clone(),
    );
    // One sequential worker per channel, fed through a bounded queue: a full queue makes
    // the schedule wait, and the wait is measured because stamps carry the due time.
    let (queues, workers): (Vec<_>, Vec<_>) = (0..channels)
        .map(|ch| {
            let (tx, rx) = mpsc::channel::<(u64, Box<RawValue>)>(ctx.args.max_inflight.max(1));
            let worker = tokio::spawn(channel_worker(
                ctx.clone(),
                publisher.clone(),
                ctx.channel_name(ch),
                rx,
            ));
            (tx, worker)
        })
        .unzip();
    let mut sent = vec![0u64; channels];
    for k in 0u64.. {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        if due >= start + duration {
            break;
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let ch = (k % channels as u64) as usize;
        let seq = sent[ch];
        let stamp = Stamp {
            seq,
            t: us_of(due),
            s: 0,
        };
        let data = payload::encode(stamp, ctx.args.payload);
        let queued = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            r = queues[ch].send((seq, data)) => r.is_ok(),
        };
        if queued {
            sent[ch] += 1;
            Counters::add(&ctx.counters.sent, 1);
        }
    }
    drop(queues);
    let mut per_channel = std::collections::HashMap::new();
    for (ch, worker) in workers.into_iter().enumerate() {
        let failed = worker.await.unwrap_or_default();
        let stream = StreamFinal {
            sender: 0,
            sent: sent[ch],
            failed,
        };
        per_channel.insert(ch, vec![stream]);
    }
    Finals { per_channel }
}

/// Publishes one channel's queue in order until the queue closes; returns the sequence
/// numbers whose publish failed.
async fn channel_worker(
    ctx: Arc<RunContext>,
    publisher: HttpPublisher,
    name: String,
    mut queue: mpsc::Receiver<(u64, Box<RawValue>)>,
) -> BTreeSet<u64> {
    let mut failed = BTreeSet::new();
    while let Some((seq, data)) = queue.recv().await {
        if let Err(e) = publisher.publish(&name, data).await {
            Counters::add(&ctx.counters.send_errors, 1);
            ctx.publish_errors.count(&e);
            failed.insert(seq);
        }
    }
    failed
}
