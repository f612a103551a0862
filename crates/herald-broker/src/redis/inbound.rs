//! The bounded queue between the pub/sub reader and the edge's event sink.
//!
//! redis-rs's pub/sub connection hands messages to its stream through an unbounded channel: a
//! reader that stops reading lets that channel, and the node's memory, grow without limit. So
//! the reader never waits on anything: for each message it only updates the activity clock,
//! answers probes, and `try_send`s the message into this queue ([`Inbox::push`]). The
//! dispatcher task ([`super::PubSub::run_dispatcher`]) decodes queued messages and hands them to
//! [`BrokerEvents::on_event`](crate::BrokerEvents::on_event), in queue order (so each channel's
//! events still leave in offset order).
//!
//! When the queue is full (the sink is too slow) the message is dropped, counted
//! ([`Inbox::dropped`]) and the queue marked overflowed. Once the dispatcher has emptied the
//! queue it emits one [`BrokerEvent::Resync`](crate::BrokerEvent::Resync): every message is in
//! history (the publish script wrote it there before publishing it), so readers recover what
//! was dropped instead of the node growing. The reader is also the only sender of the
//! `Resync` that follows a reconnect, through the same queue, so it never overtakes the
//! messages read before it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};
use tracing::warn;

/// What the dispatcher is handed.
pub(crate) enum Inbound {
    /// A message on a channel topic or the broadcast topic, as read.
    Message(redis::Msg),
    /// The subscription was lost and is back: readers should check history.
    Resync,
}

/// The queue and its overflow accounting.
pub(crate) struct Inbox {
    /// The pub/sub reader (and the supervisor, for a reconnect's `Resync`) sends with
    /// `try_send`, never waiting; the dispatcher receives. Bounded by `event_queue`: full means
    /// the message is dropped and counted, and a `Resync` follows once the queue drains. Closed
    /// when the dispatcher stops (shutdown): sends are then ignored.
    tx: mpsc::Sender<Inbound>,
    /// The receiving end, taken once by the dispatcher task.
    rx: Mutex<Option<mpsc::Receiver<Inbound>>>,
    /// Messages dropped because the queue was full, since start.
    dropped: AtomicU64,
    /// Set by an overflow, cleared by the dispatcher when it emits the `Resync`.
    overflowed: AtomicBool,
    /// Signalled by every overflow, awaited by the dispatcher: it emits the `Resync` even when
    /// no message follows the dropped ones.
    overflow: Notify,
    capacity: usize,
}

impl Inbox {
    /// A queue of `capacity` messages.
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
            overflowed: AtomicBool::new(false),
            overflow: Notify::new(),
            capacity,
        }
    }

    /// Queues `item` without waiting; drops (and counts) it when the queue is full.
    pub(crate) fn push(&self, item: Inbound) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => {
                if matches!(item, Inbound::Message(_)) {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                if !self.overflowed.swap(true, Ordering::AcqRel) {
                    warn!(
                        capacity = self.capacity,
                        "pub/sub event queue full: dropping messages, readers will resync from history"
                    );
                }
                self.overflow.notify_one();
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// The receiving end, once (for the dispatcher task).
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<Inbound>> {
        self.rx.lock().expect("inbox lock").take()
    }

    /// Waits for the next overflow signal.
    pub(crate) async fn overflowed(&self) {
        self.overflow.notified().await;
    }

    /// Whether a `Resync` is due now: the queue overflowed and `rx` has drained. Clears the
    /// overflow mark when it answers true.
    pub(crate) fn resync_due(&self, rx: &mpsc::Receiver<Inbound>) -> bool {
        rx.is_empty() && self.overflowed.swap(false, Ordering::AcqRel)
    }

    /// Messages dropped because the queue was full, since start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages waiting now (at most the capacity).
    pub(crate) fn len(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Inbound {
        Inbound::Resync
    }

    #[tokio::test]
    async fn overflow_counts_messages_and_asks_for_one_resync_after_draining() {
        let inbox = Inbox::new(2);
        let mut rx = inbox.take_receiver().unwrap();
        assert!(inbox.take_receiver().is_none(), "one dispatcher");
        inbox.push(msg());
        inbox.push(msg());
        assert_eq!(inbox.len(), 2);
        // A full queue drops; a Resync item is not a lost message.
        inbox.push(msg());
        assert_eq!(inbox.dropped(), 0);
        assert_eq!(inbox.len(), 2, "never beyond capacity");
        assert!(!inbox.resync_due(&rx), "not before the queue drained");
        rx.recv().await.unwrap();
        rx.recv().await.unwrap();
        // The overflow left a wake-up behind, so a dispatcher asleep on it notices.
        tokio::time::timeout(std::time::Duration::from_secs(1), inbox.overflowed())
            .await
            .expect("overflow signalled");
        assert!(inbox.resync_due(&rx));
        assert!(!inbox.resync_due(&rx), "once per overflow");
    }
}
