//! Latency histograms and per-stream sequence accounting (loss, duplicates, reordering).
//!
//! Latencies go into HDR histograms (1 µs – 60 s, 3 significant digits). A
//! [`LatencyRecorder`] keeps one histogram per shard (connection `i` records into shard
//! `i % shards`, so workers rarely share a lock); reports merge the raw histograms, never
//! percentiles. A [`SeqTracker`] follows one (channel, sender) stream at one receiver.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest trackable latency, µs.
const LOWEST_US: u64 = 1;
/// Highest trackable latency, µs (60 s); larger values are clamped.
const HIGHEST_US: u64 = 60_000_000;

/// A fresh histogram with the project-wide bounds.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, 3).expect("static histogram bounds")
}

/// Sharded latency histograms; shared by every connection task of a run.
pub(crate) struct LatencyRecorder {
    /// One histogram per shard; locked only for one `record` or by `merged`.
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl LatencyRecorder {
    /// A recorder with `shards` histograms (at least one).
    pub(crate) fn new(shards: usize) -> Self {
        let shards = (0..shards.max(1))
            .map(|_| Mutex::new(new_histogram()))
            .collect();
        Self { shards }
    }

    /// Records one latency in µs for the worker `worker`.
    pub(crate) fn record(&self, worker: usize, us: u64) {
        let shard = &self.shards[worker % self.shards.len()];
        let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
        h.saturating_record(us.clamp(LOWEST_US, HIGHEST_US));
    }

    /// All shards merged into one histogram.
    pub(crate) fn merged(&self) -> Histogram<u64> {
        let mut out = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.add(&*h).expect("same bounds");
        }
        out
    }
}

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(crate) struct LatencySummary {
    /// Number of samples.
    pub(crate) count: u64,
    /// Mean, ms.
    pub(crate) mean_ms: f64,
    /// 50th percentile, ms.
    pub(crate) p50_ms: f64,
    /// 90th percentile, ms.
    pub(crate) p90_ms: f64,
    /// 99th percentile, ms.
    pub(crate) p99_ms: f64,
    /// 99.9th percentile, ms.
    pub(crate) p999_ms: f64,
    /// Maximum, ms.
    pub(crate) max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram of µs values.
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Follows one (channel, sender) stream of sequence numbers at one receiver.
///
/// Keeps the next expected number and the ranges skipped so far, so memory stays small
/// unless the stream really has gaps.
#[derive(Debug, Default, Clone)]
pub(crate) struct SeqTracker {
    /// The next sequence number expected in order.
    next: u64,
    /// Skipped ranges below `next`: start -> end (exclusive).
    missing: BTreeMap<u64, u64>,
    /// Distinct sequence numbers received.
    received: u64,
    /// Sequence numbers received more than once.
    duplicates: u64,
    /// Sequence numbers that arrived after a later one.
    reordered: u64,
}

impl SeqTracker {
    /// Accounts for one received sequence number.
    pub(crate) fn observe(&mut self, seq: u64) {
        if seq == self.next {
            self.next += 1;
            self.received += 1;
        } else if seq > self.next {
            self.missing.insert(self.next, seq);
            self.next = seq + 1;
            self.received += 1;
        } else if self.take_missing(seq) {
            self.received += 1;
            self.reordered += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// Removes `seq` from the skipped ranges; false when it was not skipped.
    fn take_missing(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        true
    }

    /// True when every number below `sent` has arrived.
    pub(crate) fn is_complete(&self, sent: u64) -> bool {
        self.next >= sent && self.missing.range(..sent).next().is_none()
    }

    /// The final tally, given how many numbers were sent and which of them failed to
    /// publish (those are not expected).
    pub(crate) fn finish(&self, sent: u64, failed: &BTreeSet<u64>) -> SeqSummary {
        let mut lost = 0;
        let mut count_range = |start: u64, end: u64| {
            let end = end.min(sent);
            if start < end {
                let failed_in = failed.range(start..end).count() as u64;
                lost += end - start - failed_in;
            }
        };
        for (&start, &end) in &self.missing {
            count_range(start, end);
        }
        count_range(self.next, sent);
        SeqSummary {
            expected: sent - failed.range(..sent).count() as u64,
            received: self.received,
            lost,
            duplicates: self.duplicates,
            reordered: self.reordered,
        }
    }
}

/// Loss, duplicates and reordering of one or many streams; adds up with [`SeqSummary::add`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct SeqSummary {
    /// Deliveries that should have arrived.
    pub(crate) expected: u64,
    /// Distinct deliveries that arrived.
    pub(crate) received: u64,
    /// Expected deliveries that never arrived.
    pub(crate) lost: u64,
    /// Deliveries that arrived more than once (extra copies).
    pub(crate) duplicates: u64,
    /// Deliveries that arrived after a later one of the same stream.
    pub(crate) reordered: u64,
}

impl SeqSummary {
    /// Adds another tally into this one.
    pub(crate) fn add(&mut self, other: &SeqSummary) {
        self.expected += other.expected;
        self.received += other.received;
        self.lost += other.lost;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
    }

    /// True when anything went wrong.
    pub(crate) fn has_anomaly(&self) -> bool {
        self.lost + self.duplicates + self.reordered > 0
    }
}

/// Per-channel tallies of a run: channel index -> (receivers, summary).
#[derive(Debug, Default)]
pub(crate) struct ChannelTally {
    /// Channel index -> (number of receiving streams, their summed tally).
    per_channel: BTreeMap<usize, (u64, SeqSummary)>,
}

impl ChannelTally {
    /// Adds one receiver's tally for `channel`.
    pub(crate) fn add(&mut self, channel: usize, summary: &SeqSummary) {
        let entry = self.per_channel.entry(channel).or_default();
        entry.0 += 1;
        entry.1.add(summary);
    }

    /// The sum over every channel.
    pub(crate) fn total(&self) -> SeqSummary {
        let mut total = SeqSummary::default();
        for (_, s) in self.per_channel.values() {
            total.add(s);
        }
        total
    }

    /// Channels whose tally shows loss, duplicates or reordering.
    pub(crate) fn anomalies(&self) -> impl Iterator<Item = (usize, u64, &SeqSummary)> + '_ {
        self.per_channel
            .iter()
            .filter(|(_, (_, s))| s.has_anomaly())
            .map(|(&ch, (n, s))| (ch, *n, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64], sent: u64) -> SeqSummary {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.observe(s);
        }
        t.finish(sent, &BTreeSet::new())
    }

    #[test]
    fn in_order_stream_is_clean() {
        let s = run(&[0, 1, 2, 3, 4], 5);
        assert_eq!(
            s,
            SeqSummary {
                expected: 5,
                received: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn gaps_and_tail_count_as_loss() {
        // 2 and 3 skipped, 7..10 never came.
        let s = run(&[0, 1, 4, 5, 6], 10);
        assert_eq!(s.lost, 5);
        assert_eq!(s.received, 5);
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.reordered, 0);
    }

    #[test]
    fn late_arrivals_are_reordered_not_lost() {
        let s = run(&[0, 3, 1, 2, 4], 5);
        assert_eq!(s.lost, 0);
        assert_eq!(s.reordered, 2);
        assert_eq!(s.received, 5);
        // A gap filled from the middle splits the range correctly.
        let s = run(&[0, 6, 3, 1, 5, 2, 4], 7);
        assert_eq!((s.lost, s.reordered, s.received), (0, 5, 7));
    }

    #[test]
    fn repeats_are_duplicates() {
        let s = run(&[0, 1, 1, 2, 0, 4, 3, 3], 5);
        assert_eq!(s.duplicates, 3);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.lost, 0);
    }

    #[test]
    fn failed_publishes_are_not_expected() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3] {
            t.observe(s);
        }
        let failed: BTreeSet<u64> = [2, 4].into();
        let s = t.finish(5, &failed);
        assert_eq!((s.expected, s.lost), (3, 0));
    }

    #[test]
    fn completeness_needs_every_number() {
        let mut t = SeqTracker::default();
        t.observe(0);
        t.observe(2);
        assert!(!t.is_complete(3));
        t.observe(1);
        assert!(t.is_complete(3));
        assert!(!t.is_complete(4));
    }

    #[test]
    fn recorder_merges_raw_histograms_across_shards() {
        let r = LatencyRecorder::new(4);
        for i in 0..1000u64 {
            r.record(i as usize, 1000 + i);
        }
        r.record(7, 10_000_000);
        let h = r.merged();
        assert_eq!(h.len(), 1001);
        let s = LatencySummary::of(&h);
        assert!((s.p50_ms - 1.5).abs() < 0.01, "{s:?}");
        assert!((s.max_ms - 10_000.0).abs() / 10_000.0 < 0.001, "{s:?}");
        // Out-of-range values are clamped, not dropped.
        r.record(0, 0);
        r.record(0, u64::MAX);
        assert_eq!(r.merged().len(), 1003);
    }

    #[test]
    fn channel_tally_sums_and_flags() {
        let mut tally = ChannelTally::default();
        tally.add(0, &run(&[0, 1, 2], 3));
        tally.add(0, &run(&[0, 2], 3));
        tally.add(1, &run(&[0, 1, 2], 3));
        let total = tally.total();
        assert_eq!((total.expected, total.received, total.lost), (9, 8, 1));
        let bad: Vec<_> = tally.anomalies().map(|(ch, n, _)| (ch, n)).collect();
        assert_eq!(bad, vec![(0, 2)]);
    }
}
