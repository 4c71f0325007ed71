//! [`LatencyHistogram`]: fixed log-scale buckets of counters, exported as a Prometheus
//! histogram.
//!
//! The bounds are fixed (not configurable) so that every shard's histogram has the same
//! buckets and the scraper merges them by adding, and so that recording is a search in a
//! constant table plus two counter stores, with no allocation.

use super::counter::Counter;

/// Upper bounds of the buckets, in nanoseconds: 1-2.5-5 steps per decade from 250 ns to
/// 1 s. Why these: a decision decided where it arrives takes well under a microsecond of
/// server time per check in a pipelined read, a cross-shard hop tens to hundreds of
/// microseconds (docs/performance.md), a gRPC check hundreds of microseconds; anything
/// above a second is a stall, counted in the overflow bucket (`+Inf`).
pub const BOUNDS_NS: [u64; 22] = [
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Buckets: one per bound, plus the overflow.
pub const BUCKETS: usize = BOUNDS_NS.len() + 1;

/// A latency histogram. Its writers follow [`Counter`]'s rules: a shard's histogram is
/// recorded only by that shard ([`LatencyHistogram::record`]); a histogram written by
/// other threads uses [`LatencyHistogram::record_shared`].
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [Counter; BUCKETS],
    /// Sum of all recorded latencies, in nanoseconds (2^64 ns is 584 years).
    sum_ns: Counter,
}

/// The bucket a latency falls in: the first whose bound is at least `ns`.
#[inline]
pub fn bucket_of(ns: u64) -> usize {
    BOUNDS_NS.partition_point(|&bound| bound < ns)
}

impl LatencyHistogram {
    /// Records `n` events that each took `ns` (single writer).
    #[inline]
    pub fn record(&self, ns: u64, n: u64) {
        self.buckets[bucket_of(ns)].add(n);
        self.sum_ns.add(ns.saturating_mul(n));
    }

    /// Records `n` events that each took `ns`, from any thread.
    #[inline]
    pub fn record_shared(&self, ns: u64, n: u64) {
        self.buckets[bucket_of(ns)].add_shared(n);
        self.sum_ns.add_shared(ns.saturating_mul(n));
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut snap = HistogramSnapshot::default();
        for (to, from) in snap.buckets.iter_mut().zip(&self.buckets) {
            *to = from.get();
        }
        snap.sum_ns = self.sum_ns.get();
        snap
    }
}

/// A histogram's counts at one moment; snapshots of several shards add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Events per bucket (not cumulative), the last one the overflow.
    pub buckets: [u64; BUCKETS],
    /// Sum of the latencies, in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Events recorded: the sum of the buckets, so it always agrees with them even when
    /// the snapshot raced a writer.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds another snapshot's counts.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }

    /// The latency below which a fraction `q` (0..=1) of the events fell, in nanoseconds:
    /// the upper bound of the bucket holding that rank (so at most 2.5x high). None when
    /// empty; `u64::MAX` when the rank is in the overflow bucket.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BOUNDS_NS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }

    /// `(upper bound in seconds, events in that bucket)` as the Prometheus encoder takes
    /// them, the overflow bucket with an infinite bound.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        BOUNDS_NS
            .iter()
            .map(|&ns| ns as f64 / 1e9)
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_the_bound_of_the_bucket_holding_the_rank() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile_ns(0.5), None);
        h.record(800, 90); // the 1 µs bucket
        h.record(40_000, 9); // the 50 µs bucket
        h.record(3_000_000_000, 1); // overflow
        let s = h.snapshot();
        assert_eq!(s.quantile_ns(0.5), Some(1_000));
        assert_eq!(s.quantile_ns(0.99), Some(50_000));
        assert_eq!(s.quantile_ns(1.0), Some(u64::MAX));
    }

    #[test]
    fn a_latency_lands_in_the_first_bucket_whose_bound_covers_it() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(250), 0);
        assert_eq!(bucket_of(251), 1);
        assert_eq!(bucket_of(1_000), 2);
        assert_eq!(bucket_of(1_000_000_000), 20);
        assert_eq!(bucket_of(2_500_000_001), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn bounds_ascend() {
        assert!(BOUNDS_NS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn records_merge_and_export() {
        let (a, b) = (LatencyHistogram::default(), LatencyHistogram::default());
        a.record(300, 4);
        a.record(3_000_000_000, 1);
        b.record_shared(300, 1);
        let mut snap = a.snapshot();
        snap.merge(&b.snapshot());
        assert_eq!(snap.count(), 6);
        assert_eq!(snap.sum_ns, 300 * 5 + 3_000_000_000);
        let buckets = snap.prometheus_buckets();
        assert_eq!(buckets.len(), BUCKETS);
        assert_eq!(buckets[1], (500e-9, 5));
        assert_eq!(buckets[BUCKETS - 1], (f64::INFINITY, 1));
    }
}
