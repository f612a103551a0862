//! The process-wide monotonic epoch that senders and receivers share.
//!
//! Sender and receivers live in one process, so a timestamp is "microseconds since this
//! process's first call to [`now_us`]" on the monotonic clock: no wall-clock skew, no NTP
//! steps. Latency is `receive time - scheduled send time`, both read from this epoch.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant that timestamp 0 stands for.
pub(crate) fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub(crate) fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// The timestamp of `at` in microseconds since [`epoch`] (0 for instants before it).
pub(crate) fn us_of(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_grow() {
        let a = now_us();
        let at = Instant::now();
        let b = now_us();
        assert!(b >= a);
        let t = us_of(at);
        assert!(t >= a && t <= b);
        assert_eq!(us_of(epoch()), 0);
    }
}
