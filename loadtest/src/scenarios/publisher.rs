//! The scheduled HTTP publisher of fanout and storm: message `k` is due at
//! `start + k / rate` (open model) and carries that due time, so a publisher that falls
//! behind shows up as latency instead of silently sending less.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::receiver::{Finals, StreamFinal};
use super::RunContext;
use crate::clients::publish::HttpPublisher;
use crate::clock::us_of;
use crate::payload::{self, Stamp};
use crate::progress::Counters;

/// Publishes at `rate` msgs/s in total, round-robin over `channels` channels, from `start`
/// for `duration`, with at most `--max-inflight` requests open. Returns once every
/// request has been answered, with what each channel's stream sent.
pub(crate) async fn publish_schedule(
    ctx: &Arc<RunContext>,
    channels: usize,
    start: Instant,
    duration: Duration,
) -> Finals {
    let rate = ctx.args.rate.max(1e-3);
    let channels = channels.max(1);
    let http = ctx.http.for_conn(usize::MAX).clone();
    let publisher = HttpPublisher::new(http, ctx.args.target, ctx.publish_endpoint.clone());
    let window = ctx.args.max_inflight.max(1);
    let inflight = Arc::new(Semaphore::new(window));
    let failed: Arc<Mutex<HashMap<usize, BTreeSet<u64>>>> = Arc::default();
    let names: Vec<String> = (0..channels).map(|c| ctx.channel_name(c)).collect();
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
        sent[ch] += 1;
        let data = payload::encode(
            Stamp {
                seq,
                t: us_of(due),
                s: 0,
            },
            ctx.args.payload,
        );
        let permit = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            p = inflight.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        Counters::add(&ctx.counters.sent, 1);
        let (publisher, failed, ctx2) = (publisher.clone(), failed.clone(), ctx.clone());
        let name = names[ch].clone();
        tokio::spawn(async move {
            if let Err(e) = publisher.publish(&name, data).await {
                Counters::add(&ctx2.counters.send_errors, 1);
                ctx2.publish_errors.count(&e);
                let mut failed = failed.lock().unwrap_or_else(|e| e.into_inner());
                failed.entry(ch).or_default().insert(seq);
            }
            drop(permit);
        });
    }
    // Every permit back = every request answered.
    let _all = inflight.acquire_many(window as u32).await;
    let mut failed = failed.lock().unwrap_or_else(|e| e.into_inner());
    let per_channel = sent
        .iter()
        .enumerate()
        .map(|(ch, &n)| {
            let stream = StreamFinal {
                sender: 0,
                sent: n,
                failed: failed.remove(&ch).unwrap_or_default(),
            };
            (ch, vec![stream])
        })
        .collect();
    Finals { per_channel }
}
