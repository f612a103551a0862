//! A countdown latch: tasks count down once each, the coordinator awaits zero.
//!
//! Used to learn, without polling, when every connection attempt has resolved and when
//! every receiver has seen every message it expects.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Counts down from `n`; [`Latch::wait`] returns once it reaches zero.
#[derive(Debug)]
pub(crate) struct Latch {
    /// Tasks that have not counted down yet.
    remaining: AtomicUsize,
    /// Woken when `remaining` reaches zero.
    zero: Notify,
}

impl Latch {
    /// A latch waiting for `n` count-downs.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            remaining: AtomicUsize::new(n),
            zero: Notify::new(),
        }
    }

    /// Counts down once (saturating at zero).
    pub(crate) fn count_down(&self) {
        let prev = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
        if prev == Ok(1) {
            self.zero.notify_waiters();
        }
    }

    /// How many count-downs are still missing.
    pub(crate) fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }

    /// Waits until the count is zero.
    pub(crate) async fn wait(&self) {
        loop {
            let notified = self.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.remaining() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn wakes_only_at_zero() {
        let latch = Arc::new(Latch::new(2));
        latch.count_down();
        let waiting = tokio::time::timeout(Duration::from_millis(30), latch.wait()).await;
        assert!(waiting.is_err(), "returned before zero");
        let l = latch.clone();
        let waiter = tokio::spawn(async move { l.wait().await });
        tokio::task::yield_now().await;
        latch.count_down();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken at zero")
            .unwrap();
        latch.count_down();
        assert_eq!(latch.remaining(), 0);
        Latch::new(0).wait().await;
    }
}
