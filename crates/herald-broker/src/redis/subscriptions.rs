//! Which channels this node receives, with reference counts and delayed release.
//!
//! A channel enters the table on its first `subscribe` and is `SUBSCRIBE`d on the wire then.
//! `unsubscribe` only lowers its count; at zero the channel is marked idle and stays
//! subscribed for `unsubscribe_delay`. That delay is the caller's: zero by default, because
//! the edge's hub already waits before it unsubscribes; it is kept for users embedding the
//! broker without the hub, for whom a subscriber that comes straight back then costs nothing.
//! The unsubscriber task (every 10 ms or more) takes idle channels out with
//! [`Subscriptions::take_idle`] and sends one batched `UNSUBSCRIBE`; it asks
//! [`Subscriptions::has_idle`] first, which is a counter read, not a scan. The pub/sub reader
//! delivers only channels whose count is above zero ([`Subscriptions::live`]), so nothing
//! reaches the edge after its last unsubscribe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Entry {
    refs: u32,
    /// When `refs` fell to zero.
    idle_since: Option<Instant>,
}

#[derive(Default)]
struct Table {
    channels: HashMap<Arc<str>, Entry>,
    /// How many entries have `refs == 0` (waiting for their UNSUBSCRIBE).
    idle: usize,
}

/// The table. Every method holds the lock briefly and never across an await.
#[derive(Default)]
pub(crate) struct Subscriptions {
    /// Written by `subscribe`/`unsubscribe` and the unsubscriber, read by the pub/sub reader
    /// for every message.
    table: Mutex<Table>,
}

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("subscriptions lock")
    }

    /// Adds one reference; true when the channel was not in the table (it needs a SUBSCRIBE).
    pub(crate) fn acquire(&self, channel: &str) -> bool {
        let mut table = self.lock();
        let Table { channels, idle } = &mut *table;
        match channels.get_mut(channel) {
            Some(entry) => {
                if entry.refs == 0 {
                    *idle -= 1;
                }
                entry.refs += 1;
                entry.idle_since = None;
                false
            }
            None => {
                channels.insert(
                    Arc::from(channel),
                    Entry {
                        refs: 1,
                        idle_since: None,
                    },
                );
                true
            }
        }
    }

    /// Drops one reference; false when the channel held none.
    pub(crate) fn release(&self, channel: &str) -> bool {
        let mut table = self.lock();
        let Table { channels, idle } = &mut *table;
        match channels.get_mut(channel) {
            Some(entry) if entry.refs > 0 => {
                entry.refs -= 1;
                if entry.refs == 0 {
                    entry.idle_since = Some(Instant::now());
                    *idle += 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Removes a channel whatever its count (its SUBSCRIBE failed).
    pub(crate) fn forget(&self, channel: &str) {
        let mut table = self.lock();
        if table.channels.remove(channel).is_some_and(|e| e.refs == 0) {
            table.idle -= 1;
        }
    }

    /// The channel's shared name if it has a reference (its messages go to the edge).
    pub(crate) fn live(&self, channel: &str) -> Option<Arc<str>> {
        let table = self.lock();
        let (name, entry) = table.channels.get_key_value(channel)?;
        (entry.refs > 0).then(|| name.clone())
    }

    /// Every channel that is, or should be, subscribed on the wire.
    pub(crate) fn all(&self) -> Vec<Arc<str>> {
        self.lock().channels.keys().cloned().collect()
    }

    /// Whether any channel waits for its delayed unsubscribe.
    pub(crate) fn has_idle(&self) -> bool {
        self.lock().idle > 0
    }

    /// Removes and returns the channels idle for at least `delay`.
    pub(crate) fn take_idle(&self, delay: Duration) -> Vec<Arc<str>> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut table = self.lock();
        table.channels.retain(|name, entry| {
            let expired = entry.refs == 0
                && match entry.idle_since {
                    Some(since) => now.duration_since(since) >= delay,
                    None => true,
                };
            if expired {
                due.push(name.clone());
            }
            !expired
        });
        table.idle -= due.len();
        due
    }

    /// Channels with at least one reference.
    pub(crate) fn live_count(&self) -> usize {
        let table = self.lock();
        table.channels.len() - table.idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_delay_and_batch() {
        let s = Subscriptions::default();
        assert!(s.acquire("a"));
        assert!(!s.acquire("a"));
        assert!(s.acquire("b"));
        assert!(!s.has_idle());
        assert!(s.release("a"));
        assert!(s.live("a").is_some());
        assert!(s.release("a"));
        assert!(!s.release("a"));
        // Idle but kept: not delivered, still subscribed on the wire.
        assert!(s.live("a").is_none());
        assert!(s.has_idle());
        assert_eq!(s.live_count(), 1);
        assert_eq!(s.all().len(), 2);
        assert!(s.take_idle(Duration::from_secs(60)).is_empty());
        // Coming back within the delay needs no SUBSCRIBE.
        assert!(!s.acquire("a"));
        assert!(!s.has_idle());
        assert!(s.release("a"));
        assert_eq!(&*s.take_idle(Duration::ZERO)[0], "a");
        assert_eq!(s.all().len(), 1);
        assert_eq!(s.live_count(), 1);
        assert!(!s.has_idle());
        // A failed SUBSCRIBE forgets the channel, and an idle one leaves the count with it.
        assert!(s.acquire("c"));
        s.forget("c");
        assert!(s.acquire("d"));
        assert!(s.release("d"));
        s.forget("d");
        assert!(!s.has_idle());
        assert_eq!(s.live_count(), 1);
    }
}
