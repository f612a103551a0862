//! A connection's outbound queue: bounded, many senders (fan-out, broadcasts, resyncs), one
//! receiver (the connection's task).
//!
//! Not tokio's `mpsc`: a tokio channel allocates its shared state and a first block of 32 slots
//! when it is made, about 1 KiB per connection whether anything is ever sent (heaptrack of 19.5k
//! idle WebSockets, docs/BENCHMARKS.md). This one is a `VecDeque` behind a mutex inside the
//! connection's hub handle: nothing is allocated until an item is queued, and the storage is
//! given back when a burst has been drained. Both ends take the lock for a push or a pop only
//! (no await under it).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use super::Outbound;

/// Storage kept after the queue drains empty (items); more is given back.
const KEEP: usize = 8;

/// Why an item was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds its capacity.
    Full,
    /// The receiver is gone.
    Closed,
}

/// The queue (see the module docs).
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
}

struct State {
    items: VecDeque<Outbound>,
    /// The receiver's waker while it waits on an empty queue.
    waker: Option<Waker>,
    closed: bool,
}

impl Queue {
    /// An empty queue of at most `capacity` items (allocates nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                waker: None,
                closed: false,
            }),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item` unless the queue is full or closed; wakes the receiver.
    pub(crate) fn push(&self, item: Outbound) -> Result<(), Refused> {
        let waker = {
            let mut state = self.state.lock().expect("queue lock");
            if state.closed {
                return Err(Refused::Closed);
            }
            if state.items.len() >= self.capacity {
                return Err(Refused::Full);
            }
            state.items.push_back(item);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The next item, or `Pending` (the receiver is woken by the next push). Cancel-safe: an
    /// item is taken only when it is returned.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Outbound> {
        let mut state = self.state.lock().expect("queue lock");
        match state.pop() {
            Some(item) => Poll::Ready(item),
            None => {
                match &mut state.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// The next item if one is queued now.
    pub(crate) fn try_pop(&self) -> Option<Outbound> {
        self.state.lock().expect("queue lock").pop()
    }

    /// The receiver is gone: drops what is queued and refuses what comes.
    pub(crate) fn close(&self) {
        let items = {
            let mut state = self.state.lock().expect("queue lock");
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        drop(items); // outside the lock
    }
}

impl State {
    fn pop(&mut self) -> Option<Outbound> {
        let item = self.items.pop_front();
        if self.items.is_empty() && self.items.capacity() > KEEP {
            // A burst has been drained: give its storage back.
            self.items = VecDeque::new();
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bounded_in_order_and_closed() {
        let q = Queue::new(2);
        q.push(Outbound::Resync).unwrap();
        q.push(Outbound::Resync).unwrap();
        assert_eq!(q.push(Outbound::Resync), Err(Refused::Full));
        assert!(q.try_pop().is_some());
        q.push(Outbound::Resync).unwrap();
        q.close();
        assert!(q.try_pop().is_none(), "closing drops what was queued");
        assert_eq!(q.push(Outbound::Resync), Err(Refused::Closed));
    }

    #[test]
    fn nothing_is_allocated_until_used_and_a_drained_burst_is_given_back() {
        let q = Queue::new(1000);
        assert_eq!(q.state.lock().unwrap().items.capacity(), 0);
        for _ in 0..100 {
            q.push(Outbound::Resync).unwrap();
        }
        assert!(q.state.lock().unwrap().items.capacity() >= 100);
        while q.try_pop().is_some() {}
        assert_eq!(q.state.lock().unwrap().items.capacity(), 0);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_push() {
        let q = Arc::new(Queue::new(4));
        let rx = q.clone();
        let waiter = tokio::spawn(async move {
            std::future::poll_fn(|cx| rx.poll_pop(cx)).await;
        });
        tokio::task::yield_now().await;
        q.push(Outbound::Resync).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
