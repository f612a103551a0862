//! Which channels this node receives, with reference counts and delayed release.
//!
//! A channel enters the table on its first `subscribe` and is `SUBSCRIBE`d on the wire then,
//! by the subscriber task, batched with every other first subscribe waiting (`subscriber.rs`);
//! `wired` records Redis's confirmation, and a later `subscribe` of a channel not yet wired
//! waits for it too.
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
    /// Redis confirmed a `SUBSCRIBE` of the channel on the current connection.
    wired: bool,
}

/// What [`Subscriptions::acquire`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The channel was not in the table: it needs a `SUBSCRIBE`.
    New,
    /// In the table, its `SUBSCRIBE` not yet confirmed: wait for it.
    Pending,
    /// Subscribed on the wire already.
    Wired,
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

    /// Adds one reference; says whether the channel still needs (or waits for) a SUBSCRIBE.
    pub(crate) fn acquire(&self, channel: &str) -> Acquired {
        let mut table = self.lock();
        let Table { channels, idle } = &mut *table;
        match channels.get_mut(channel) {
            Some(entry) => {
                if entry.refs == 0 {
                    *idle -= 1;
                }
                entry.refs += 1;
                entry.idle_since = None;
                if entry.wired {
                    Acquired::Wired
                } else {
                    Acquired::Pending
                }
            }
            None => {
                channels.insert(
                    Arc::from(channel),
                    Entry {
                        refs: 1,
                        idle_since: None,
                        wired: false,
                    },
                );
                Acquired::New
            }
        }
    }

    /// Whether `channel` is in the table without a confirmed SUBSCRIBE.
    pub(crate) fn needs_wire(&self, channel: &str) -> bool {
        self.lock()
            .channels
            .get(channel)
            .is_some_and(|entry| !entry.wired)
    }

    /// Records Redis's confirmation of a SUBSCRIBE of `channels` (those still in the table).
    pub(crate) fn mark_wired(&self, channels: &[Arc<str>]) {
        let mut table = self.lock();
        for channel in channels {
            if let Some(entry) = table.channels.get_mut(channel) {
                entry.wired = true;
            }
        }
    }

    /// Gives back a reference whose SUBSCRIBE failed. A channel left without references goes
    /// (or, should another SUBSCRIBE have wired it meanwhile, waits for its UNSUBSCRIBE like
    /// any idle channel).
    pub(crate) fn abandon(&self, channel: &str) {
        let mut table = self.lock();
        let Table { channels, idle } = &mut *table;
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        if entry.refs == 0 {
            return;
        }
        entry.refs -= 1;
        if entry.refs == 0 {
            if entry.wired {
                entry.idle_since = Some(Instant::now());
                *idle += 1;
            } else {
                channels.remove(channel);
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
        assert_eq!(s.acquire("a"), Acquired::New);
        assert_eq!(s.acquire("a"), Acquired::Pending, "not confirmed yet");
        assert!(s.needs_wire("a"));
        s.mark_wired(&[Arc::from("a")]);
        assert!(!s.needs_wire("a"));
        assert_eq!(s.acquire("b"), Acquired::New);
        s.mark_wired(&[Arc::from("b")]);
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
        assert_eq!(s.acquire("a"), Acquired::Wired);
        assert!(!s.has_idle());
        assert!(s.release("a"));
        assert_eq!(&*s.take_idle(Duration::ZERO)[0], "a");
        assert_eq!(s.all().len(), 1);
        assert_eq!(s.live_count(), 1);
        assert!(!s.has_idle());
        // A failed SUBSCRIBE gives its reference back: an unwired channel leaves the table...
        assert_eq!(s.acquire("c"), Acquired::New);
        assert_eq!(s.acquire("c"), Acquired::Pending);
        s.abandon("c");
        assert!(s.live("c").is_some(), "the other waiter's reference stays");
        s.abandon("c");
        assert!(s.live("c").is_none() && !s.needs_wire("c"));
        assert!(!s.has_idle());
        // ...a wired one (a reconnect subscribed it meanwhile) waits for its UNSUBSCRIBE.
        assert_eq!(s.acquire("d"), Acquired::New);
        s.mark_wired(&[Arc::from("d")]);
        s.abandon("d");
        assert!(s.has_idle());
        assert_eq!(&*s.take_idle(Duration::ZERO)[0], "d");
        assert_eq!(s.live_count(), 1);
    }
}
