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
//!
//! Each entry also keeps the newest position this node has seen on the channel ([`Mark`]s,
//! for `fence.rs`): the last one delivered live, and the newest of those and this node's own
//! acknowledged publishes. They live exactly as long as the entry, so they cost nothing for
//! channels the node does not receive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A position this node has seen, with the message's time: two different messages at one
/// offset differ in time (Redis's clock, in ms, and a failover takes far longer than 1 ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
    pub(crate) ts_ms: u64,
}

/// What [`Subscriptions::note_live`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// Delivered: after everything seen live before (or a new epoch).
    Next,
    /// Not in the table, or no longer referenced: not for the edge.
    Gone,
    /// At or below the last live offset of the same epoch: Redis's topic delivers once and in
    /// order, so the channel's counter went back. Carries the newest mark seen.
    Regressed(Mark),
}

struct Entry {
    refs: u32,
    /// The last publication delivered live (pub/sub order).
    live: Option<Mark>,
    /// The newest of `live` and this node's acknowledged publishes.
    seen: Option<Mark>,
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
                        live: None,
                        seen: None,
                        idle_since: None,
                        wired: false,
                    },
                );
                Acquired::New
            }
        }
    }

    /// Whether `channel` is in the table (referenced, or idle and still subscribed).
    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.lock().channels.contains_key(channel)
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

    /// Records a live publication at `mark` on `channel` and says whether it goes to the edge.
    pub(crate) fn note_live(&self, channel: &str, mark: Mark) -> Live {
        let mut table = self.lock();
        let Some(entry) = table.channels.get_mut(channel) else {
            return Live::Gone;
        };
        if let Some(last) = &entry.live {
            if last.epoch == mark.epoch && mark.offset <= last.offset {
                let newest = entry.seen.clone().unwrap_or_else(|| last.clone());
                return Live::Regressed(newest);
            }
        }
        raise(&mut entry.seen, &mark);
        entry.live = Some(mark);
        if entry.refs == 0 {
            return Live::Gone;
        }
        Live::Next
    }

    /// Records this node's acknowledged publish at (`epoch`, `offset`, `ts_ms`), for channels in
    /// the table only; the epoch is copied only when the mark moves to another one.
    pub(crate) fn note_acked(&self, channel: &str, epoch: &str, offset: u64, ts_ms: u64) {
        let mut table = self.lock();
        let Some(entry) = table.channels.get_mut(channel) else {
            return;
        };
        let epoch = match &entry.seen {
            Some(old) if &*old.epoch == epoch => old.epoch.clone(),
            _ => Arc::from(epoch),
        };
        raise(
            &mut entry.seen,
            &Mark {
                epoch,
                offset,
                ts_ms,
            },
        );
    }

    /// The newest position seen on `channel`, if it is in the table.
    pub(crate) fn seen(&self, channel: &str) -> Option<Mark> {
        self.lock().channels.get(channel)?.seen.clone()
    }

    /// Every channel with a mark, and its newest mark.
    pub(crate) fn marks(&self) -> Vec<(Arc<str>, Mark)> {
        self.lock()
            .channels
            .iter()
            .filter_map(|(name, entry)| Some((name.clone(), entry.seen.clone()?)))
            .collect()
    }

    /// Forgets `channel`'s marks: it started a new epoch, and the old positions name nothing.
    pub(crate) fn forget_marks(&self, channel: &str, epoch: &str) {
        if let Some(entry) = self.lock().channels.get_mut(channel) {
            for mark in [&mut entry.live, &mut entry.seen] {
                if mark.as_ref().is_some_and(|m| &*m.epoch == epoch) {
                    *mark = None;
                }
            }
        }
    }

    /// Forgets every channel's last live position (kept: the newest seen), after pub/sub
    /// moved to a new connection that overlapped the old one.
    pub(crate) fn forget_live_marks(&self) {
        for entry in self.lock().channels.values_mut() {
            entry.live = None;
        }
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

/// `seen` becomes `mark` when that is newer: a later offset of the same epoch, or another
/// epoch (a new generation replaces the old one).
fn raise(seen: &mut Option<Mark>, mark: &Mark) {
    let newer = match seen {
        Some(old) => old.epoch != mark.epoch || mark.offset > old.offset,
        None => true,
    };
    if newer {
        *seen = Some(mark.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(epoch: &str, offset: u64) -> Mark {
        Mark {
            epoch: Arc::from(epoch),
            offset,
            ts_ms: offset * 10,
        }
    }

    #[test]
    fn live_offsets_that_go_back_are_a_regression() {
        let s = Subscriptions::default();
        assert_eq!(
            s.note_live("a", mark("e", 1)),
            Live::Gone,
            "not in the table"
        );
        s.acquire("a");
        assert_eq!(s.note_live("a", mark("e", 1)), Live::Next);
        assert_eq!(s.note_live("a", mark("e", 2)), Live::Next);
        // An acknowledged publish may run ahead of its own live delivery: not a regression.
        s.note_acked("a", "e", 4, 40);
        assert_eq!(s.note_live("a", mark("e", 3)), Live::Next);
        assert_eq!(s.seen("a"), Some(mark("e", 4)));
        // The same epoch again at 3: Redis went back. The newest seen is reported.
        assert_eq!(
            s.note_live("a", mark("e", 3)),
            Live::Regressed(mark("e", 4))
        );
        assert_eq!(
            s.note_live("a", mark("e", 1)),
            Live::Regressed(mark("e", 4))
        );
        // A new epoch is a new generation, not a regression.
        assert_eq!(s.note_live("a", mark("f", 1)), Live::Next);
        assert_eq!(s.seen("a"), Some(mark("f", 1)));
        assert_eq!(s.marks().len(), 1);
        s.forget_marks("a", "f");
        assert!(s.seen("a").is_none());
        // Marks are the entry's: gone with it.
        s.note_acked("b", "e", 1, 10);
        assert!(s.seen("b").is_none(), "only channels in the table");
        s.release("a");
        s.take_idle(Duration::ZERO);
        assert!(s.marks().is_empty());
    }

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
