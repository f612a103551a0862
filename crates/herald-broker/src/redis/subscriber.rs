//! First subscribes, batched: one `SUBSCRIBE` round trip for every channel waiting.
//!
//! A `subscribe` of a channel the node does not receive yet no longer takes the wire lock
//! itself. It adds its reference to the table, queues the channel here with a oneshot for the
//! answer ([`Waiting::push`]) and waits. The subscriber task ([`PubSub::run_subscriber`]) takes
//! everything queued, sends one `SUBSCRIBE` per `subscribe_batch` channels under the wire lock
//! (so wire commands still follow table order, see `pubsub.rs`), and answers every waiter. While
//! one round trip is in flight the next batch gathers, so channel churn costs a round trip per
//! batch rather than one per channel, and a subscribe waits behind at most the batch in flight.
//!
//! Measured with `tests/redis_limits.rs` (see the numbers there): 200 concurrent first
//! subscribes took a handful of `SUBSCRIBE` commands instead of 200.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::commands::map_err;
use super::pubsub::{unavailable, PubSub};
use crate::BrokerError;

/// The answer a waiter gets.
type Reply = oneshot::Sender<Result<(), BrokerError>>;

#[derive(Default)]
struct Queue {
    items: Vec<(Arc<str>, Reply)>,
    closed: bool,
}

/// Channels waiting for their `SUBSCRIBE`.
#[derive(Default)]
pub(crate) struct Waiting {
    /// `PubSub::subscribe` pushes (channel, reply); the subscriber task takes them all at once
    /// and answers each. Closed once the task stopped: a push is refused, and the replies that
    /// were queued are dropped (their waiters see "shutting down").
    queue: Mutex<Queue>,
    /// Signalled by every push, awaited by the subscriber task.
    wake: Notify,
}

impl Waiting {
    /// Queues `channel`; the answer comes on the returned receiver. `None` after shutdown.
    pub(crate) fn push(
        &self,
        channel: Arc<str>,
    ) -> Option<oneshot::Receiver<Result<(), BrokerError>>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.queue.lock().expect("waiting lock");
            if queue.closed {
                return None;
            }
            queue.items.push((channel, tx));
        }
        self.wake.notify_one();
        Some(rx)
    }

    fn take(&self) -> Vec<(Arc<str>, Reply)> {
        std::mem::take(&mut self.queue.lock().expect("waiting lock").items)
    }

    /// Stops taking waiters (the replies still queued are dropped).
    fn close(&self) {
        let mut queue = self.queue.lock().expect("waiting lock");
        queue.closed = true;
        queue.items.clear();
    }
}

impl PubSub {
    /// Runs until `cancel`: answers queued first subscribes, one batch per round trip.
    pub(crate) async fn run_subscriber(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.waiting.wake.notified() => {}
            }
            loop {
                let batch = self.waiting.take();
                if batch.is_empty() {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.subscribe_waiting(batch) => {}
                }
            }
        }
        self.waiting.close();
    }

    /// SUBSCRIBEs the channels of `batch` that still need it and answers every waiter; a
    /// waiter whose SUBSCRIBE failed gets its reference taken back.
    async fn subscribe_waiting(&self, batch: Vec<(Arc<str>, Reply)>) {
        let _wire = self.wire.lock().await;
        let mut channels: Vec<Arc<str>> = batch.iter().map(|(c, _)| c.clone()).collect();
        channels.sort_unstable();
        channels.dedup();
        // A reconnect may have subscribed some meanwhile (it subscribes the whole table).
        channels.retain(|c| self.subs.needs_wire(c));
        let mut failed: HashMap<Arc<str>, BrokerError> = HashMap::new();
        match self.current_sink() {
            None => {
                for channel in &channels {
                    failed.insert(channel.clone(), unavailable("disconnected"));
                }
            }
            Some(mut sink) => {
                for chunk in channels.chunks(self.config.subscribe_batch) {
                    let topics: Vec<String> = chunk.iter().map(|c| self.keys.topic(c)).collect();
                    let sent =
                        tokio::time::timeout(self.config.command_timeout, sink.subscribe(&topics))
                            .await
                            .map_err(|_| unavailable("subscribe timed out"))
                            .and_then(|r| r.map_err(map_err));
                    match sent {
                        Ok(()) => self.subs.mark_wired(chunk),
                        Err(err) => {
                            // Should a timed-out SUBSCRIBE have landed after all, its messages
                            // are dropped as unsubscribed until the next reconnect.
                            for channel in chunk {
                                failed.insert(channel.clone(), err.clone());
                            }
                        }
                    }
                }
            }
        }
        debug!(
            waiters = batch.len(),
            channels = channels.len(),
            failed = failed.len(),
            "subscribed a batch"
        );
        for (channel, reply) in batch {
            let answer = match failed.get(&channel) {
                Some(err) => {
                    self.subs.abandon(&channel);
                    Err(err.clone())
                }
                None => Ok(()),
            };
            let _ = reply.send(answer);
        }
    }
}
