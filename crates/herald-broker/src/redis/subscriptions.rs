//! Which channels this node receives, with reference counts and delayed release.
//!
//! A channel enters the table on its first `subscribe` and is `SUBSCRIBE`d on the wire then.
//! `unsubscribe` only lowers its count; at zero the channel is marked idle and stays
//! subscribed for `unsubscribe_delay`, so a subscriber that comes straight back costs nothing.
//! The unsubscriber task takes idle channels out with [`Subscriptions::take_idle`] and sends
//! one batched `UNSUBSCRIBE`. The pub/sub reader delivers only channels whose count is above
//! zero ([`Subscriptions::live`]), so nothing reaches the edge after its last unsubscribe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Entry {
    refs: u32,
    /// When `refs` fell to zero.
    idle_since: Option<Instant>,
}

/// The table. Every method holds the lock briefly and never across an await.
#[derive(Default)]
pub(crate) struct Subscriptions {
    channels: Mutex<HashMap<Arc<str>, Entry>>,
}

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.channels.lock().expect("subscriptions lock")
    }

    /// Adds one reference; true when the channel was not in the table (it needs a SUBSCRIBE).
    pub(crate) fn acquire(&self, channel: &str) -> bool {
        let mut channels = self.lock();
        match channels.get_mut(channel) {
            Some(entry) => {
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
        let mut channels = self.lock();
        match channels.get_mut(channel) {
            Some(entry) if entry.refs > 0 => {
                entry.refs -= 1;
                if entry.refs == 0 {
                    entry.idle_since = Some(Instant::now());
                }
                true
            }
            _ => false,
        }
    }

    /// Removes a channel whatever its count (its SUBSCRIBE failed).
    pub(crate) fn forget(&self, channel: &str) {
        self.lock().remove(channel);
    }

    /// The channel's shared name if it has a reference (its messages go to the edge).
    pub(crate) fn live(&self, channel: &str) -> Option<Arc<str>> {
        let channels = self.lock();
        let (name, entry) = channels.get_key_value(channel)?;
        (entry.refs > 0).then(|| name.clone())
    }

    /// Every channel that is, or should be, subscribed on the wire.
    pub(crate) fn all(&self) -> Vec<Arc<str>> {
        self.lock().keys().cloned().collect()
    }

    /// Whether any channel waits for its delayed unsubscribe.
    pub(crate) fn has_idle(&self) -> bool {
        self.lock().values().any(|e| e.refs == 0)
    }

    /// Removes and returns the channels idle for at least `delay`.
    pub(crate) fn take_idle(&self, delay: Duration) -> Vec<Arc<str>> {
        let now = Instant::now();
        let mut due = Vec::new();
        self.lock().retain(|name, entry| {
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
        due
    }

    /// Channels with at least one reference.
    pub(crate) fn live_count(&self) -> usize {
        self.lock().values().filter(|e| e.refs > 0).count()
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
        assert!(s.release("a"));
        assert!(s.live("a").is_some());
        assert!(s.release("a"));
        assert!(!s.release("a"));
        // Idle but kept: not delivered, still subscribed on the wire.
        assert!(s.live("a").is_none());
        assert_eq!(s.all().len(), 2);
        assert!(s.take_idle(Duration::from_secs(60)).is_empty());
        // Coming back within the delay needs no SUBSCRIBE.
        assert!(!s.acquire("a"));
        assert!(s.release("a"));
        assert_eq!(&*s.take_idle(Duration::ZERO)[0], "a");
        assert_eq!(s.all().len(), 1);
        assert_eq!(s.live_count(), 1);
        assert!(!s.has_idle());
    }
}
