//! rooms: `--connections` members in rooms of `--room-size` (member `i` is in room
//! `i / room_size` and on edge `i % K`, so rooms mix edges). Every member publishes
//! `--rate` msgs/s on its room over its own WebSocket (Herald `op:publish`; nchan's pub/sub
//! location `/ps/<room>`; sockudo: a `client-` event on `private-<room>`) and receives
//! everything its room publishes, its own messages included -- except on sockudo, which
//! never echoes a client event to its sender (Pusher semantics), so there a member expects
//! only the others' messages. With several `--url`s, latency is split into same-edge and
//! cross-edge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::receiver::{Finals, FinalsRx, Inbox, StreamFinal};
use super::summary::{collect, conn_stats, message_stats};
use super::{RunContext, Window};
use crate::cli::{Target, Transport};
use crate::clients::Subscriber;
use crate::clock::us_of;
use crate::latch::Latch;
use crate::payload::{self, Stamp};
use crate::progress::Counters;
use crate::report::Results;

/// What the coordinator and the members share.
struct Shared {
    /// Counted down by each member once its connection attempt resolved.
    connected: Latch,
    /// Counted down by each member once it sent its last message (or gave up).
    sent_all: Latch,
    /// Counted down by each member once it received everything (or died).
    done: Latch,
    /// The sending phase's start; None until every member is connected.
    go: watch::Receiver<Option<Instant>>,
    /// Messages sent per member; None = never connected.
    sent: Vec<AtomicU64>,
    /// Publish acks and error replies (Herald).
    replies: (AtomicU64, AtomicU64),
}

/// Runs the rooms scenario.
pub(crate) async fn run(ctx: Arc<RunContext>, room_size: usize) -> Result<(Results, Window)> {
    if ctx.args.transport != Transport::Ws {
        bail!("rooms publishes over the members' own sockets: use --transport ws");
    }
    let n = ctx.args.connections;
    let room_size = room_size.max(1);
    let rooms = ctx.args.channels.unwrap_or(n.div_ceil(room_size)).max(1);
    let (go_tx, go_rx) = watch::channel(None);
    let (finals_tx, finals_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        connected: Latch::new(n),
        sent_all: Latch::new(n),
        done: Latch::new(n),
        go: go_rx,
        sent: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        replies: Default::default(),
    });
    let start = Instant::now();
    let handles: Vec<JoinHandle<Option<Inbox>>> = (0..n)
        .map(|i| {
            let room = (i / room_size) % rooms;
            let at = start + ctx.ramp_offset(i, n);
            tokio::spawn(member(
                ctx.clone(),
                shared.clone(),
                i,
                room,
                at,
                finals_rx.clone(),
            ))
        })
        .collect();
    shared.connected.wait().await;

    let mut window = Window::begin(&ctx.args.server_pids);
    let go = Instant::now() + Duration::from_millis(50);
    let _ = go_tx.send(Some(go));
    shared.sent_all.wait().await;
    let mut finals = Finals::default();
    for (i, sent) in shared.sent.iter().enumerate() {
        let sent = sent.load(Ordering::Acquire);
        if sent != u64::MAX {
            let stream = StreamFinal {
                sender: i as u32,
                sent,
                failed: Default::default(),
            };
            finals
                .per_channel
                .entry((i / room_size) % rooms)
                .or_default()
                .push(stream);
        }
    }
    let finals = Arc::new(finals);
    let _ = finals_tx.send(Some(finals.clone()));
    let drained = tokio::time::timeout(ctx.args.drain, shared.done.wait())
        .await
        .is_ok();
    window.end();
    ctx.cancel.cancel();
    let tally = collect(handles, &finals).await;
    let send_secs = ctx.args.duration.as_secs_f64();
    let mut results = Results {
        connections: conn_stats(&ctx, n as u64),
        messages: Some(message_stats(&ctx, &finals, &tally, send_secs, drained)),
        ..Default::default()
    };
    results.extra.insert("rooms".into(), json!(rooms));
    results.extra.insert("room_size".into(), json!(room_size));
    if ctx.args.target == Target::Herald {
        let (acked, rejected) = &shared.replies;
        results.extra.insert(
            "publish_replies".into(),
            json!({"acked": acked.load(Ordering::Relaxed), "rejected": rejected.load(Ordering::Relaxed)}),
        );
    }
    Ok((results, window))
}

/// One member: connect, wait for the start, then publish on schedule and receive until
/// the run is cancelled.
async fn member(
    ctx: Arc<RunContext>,
    shared: Arc<Shared>,
    i: usize,
    room: usize,
    at: Instant,
    mut finals_rx: FinalsRx,
) -> Option<Inbox> {
    tokio::time::sleep_until(at.into()).await;
    let mut spec = ctx.spec(i, &[room]);
    spec.pubsub = true;
    let http = ctx.http.for_conn(i);
    let sub = Subscriber::connect(ctx.args.target, ctx.args.transport, spec, http).await;
    shared.connected.count_down();
    let mut sub = match sub {
        Ok(s) => s,
        Err(e) => {
            ctx.connect_errors.count(&e);
            shared.sent_all.count_down();
            shared.done.count_down();
            return None;
        }
    };
    ctx.connect_latency
        .record(i, us_of(Instant::now()).saturating_sub(us_of(at)));
    Counters::add(&ctx.counters.open, 1);
    Counters::add(&ctx.counters.connected, 1);
    let name = ctx.channel_name(room);
    let edges = ctx.endpoints.len();
    let mut inbox = Inbox::new(i, vec![room], Some((ctx.edge_of(i), edges)));
    if ctx.args.target == Target::Sockudo {
        inbox = inbox.without_echo_of(i as u32);
    }
    let mut go_rx = shared.go.clone();
    let rate = ctx.args.rate.max(1e-3);
    // Members start evenly spread over one period, so the room is not a burst.
    let phase = Duration::from_secs_f64(i as f64 / ctx.args.connections.max(1) as f64 / rate);
    let mut go: Option<Instant> = *go_rx.borrow_and_update();
    let mut seq = 0u64;
    let mut sending = true;
    let mut finals: Option<Arc<Finals>> = None;
    let (mut counted, mut batch) = (false, Vec::new());
    let mut failed = false;
    loop {
        let due = go.map(|g| g + phase + Duration::from_secs_f64(seq as f64 / rate));
        if sending {
            if let (Some(g), Some(d)) = (go, due) {
                if d >= g + ctx.args.duration {
                    sending = false;
                    shared.sent[i].store(seq, Ordering::Release);
                    shared.sent_all.count_down();
                }
            }
        }
        if !counted && finals.as_ref().is_some_and(|f| inbox.is_complete(f)) {
            shared.done.count_down();
            counted = true;
        }
        let send_at = due
            .filter(|_| sending)
            .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365));
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            r = go_rx.changed(), if go.is_none() => {
                if r.is_ok() { go = *go_rx.borrow_and_update(); }
            }
            r = finals_rx.changed(), if finals.is_none() => {
                if r.is_ok() { finals = finals_rx.borrow_and_update().clone(); }
            }
            _ = tokio::time::sleep_until(send_at.into()), if sending && go.is_some() => {
                let data = payload::encode(
                    Stamp { seq, t: us_of(send_at), s: i as u32 },
                    ctx.args.payload,
                );
                Counters::add(&ctx.counters.sent, 1);
                seq += 1;
                if let Err(e) = sub.publish(&name, data).await {
                    ctx.drop_errors.count(&e);
                    failed = true;
                    break;
                }
            }
            r = sub.next(&mut batch) => match r {
                Ok(()) => inbox.accept(&ctx, &mut batch),
                Err(e) => {
                    ctx.drop_errors.count(&e);
                    failed = true;
                    break;
                }
            },
        }
    }
    if sending {
        shared.sent[i].store(seq, Ordering::Release);
        shared.sent_all.count_down();
    }
    if !counted {
        shared.done.count_down();
    }
    let (acked, rejected) = sub.publish_replies();
    shared.replies.0.fetch_add(acked, Ordering::Relaxed);
    shared.replies.1.fetch_add(rejected, Ordering::Relaxed);
    if failed {
        Counters::add(&ctx.counters.dropped, 1);
    } else {
        sub.close().await;
    }
    ctx.counters.open.fetch_sub(1, Ordering::Relaxed);
    Some(inbox)
}
