//! Counting outcomes and latencies from many tasks at once.
//!
//! Tasks record into one of [`STRIPES`] stripes (task index modulo), each a mutex around two
//! HDR histograms (the whole run and the current progress interval) and counters. With a few
//! runtime threads the locks are practically uncontended; the progress reporter drains the
//! interval histograms once per tick and the final report merges the run histograms.

use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Stripes of the recorder: enough that tasks on different threads rarely share one.
pub const STRIPES: usize = 64;
/// Largest latency recorded, in nanoseconds (60 s); larger values are clamped to it.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// HDR precision: 3 significant digits (0.1% error), the usual choice.
const SIGFIGS: u8 = 3;

/// Counters and histograms of one stripe, or of a merged summary.
#[derive(Clone)]
pub struct Tally {
    /// Requests admitted (or pings answered).
    pub accepted: u64,
    /// Requests refused by the limiter.
    pub rejected: u64,
    /// Requests without a decision (timeout, connection, server error).
    pub errors: u64,
    /// Latency of every answered request, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            accepted: 0,
            rejected: 0,
            errors: 0,
            latency: new_histogram(),
        }
    }

    /// Requests counted.
    pub fn requests(&self) -> u64 {
        self.accepted + self.rejected + self.errors
    }

    fn add(&mut self, other: &Tally) {
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.errors += other.errors;
        // Same bounds on both sides: cannot fail.
        let _ = self.latency.add(&other.latency);
    }

    fn reset(&mut self) {
        self.accepted = 0;
        self.rejected = 0;
        self.errors = 0;
        self.latency.reset();
    }

    /// Latency at quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds: construction cannot fail; fall back to an auto-resizing one.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIGS)
        .or_else(|_| Histogram::new(SIGFIGS))
        .unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
}

/// The outcome of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted (or a ping answered).
    Accepted,
    /// Refused by the limiter.
    Rejected,
    /// No decision.
    Error,
}

struct Stripe {
    run: Tally,
    interval: Tally,
}

/// The shared recorder.
pub struct Recorder {
    stripes: Vec<Mutex<Stripe>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Recorder {
        Recorder {
            stripes: (0..STRIPES)
                .map(|_| {
                    Mutex::new(Stripe {
                        run: Tally::new(),
                        interval: Tally::new(),
                    })
                })
                .collect(),
        }
    }

    /// Records `n` requests with the same outcome and latency (a batch), from task `task`.
    pub fn record(&self, task: usize, outcome: Outcome, latency_ns: u64, n: u64) {
        let Some(stripe) = self.stripes.get(task % STRIPES) else {
            return;
        };
        let mut guard = stripe.lock().unwrap_or_else(|p| p.into_inner());
        let latency = latency_ns.clamp(1, MAX_LATENCY_NS);
        let s = &mut *guard;
        for t in [&mut s.run, &mut s.interval] {
            match outcome {
                Outcome::Accepted => t.accepted += n,
                Outcome::Rejected => t.rejected += n,
                Outcome::Error => t.errors += n,
            }
            if outcome != Outcome::Error {
                let _ = t.latency.record_n(latency, n);
            }
        }
    }

    /// Merges and clears the interval tallies (for the progress line).
    pub fn take_interval(&self) -> Tally {
        let mut out = Tally::new();
        for stripe in &self.stripes {
            let mut s = stripe.lock().unwrap_or_else(|p| p.into_inner());
            out.add(&s.interval);
            s.interval.reset();
        }
        out
    }

    /// Merges the whole-run tallies.
    pub fn total(&self) -> Tally {
        let mut out = Tally::new();
        for stripe in &self.stripes {
            let s = stripe.lock().unwrap_or_else(|p| p.into_inner());
            out.add(&s.run);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merges_and_drains_intervals() {
        let r = Recorder::new();
        r.record(0, Outcome::Accepted, 10_000, 1);
        r.record(1, Outcome::Rejected, 20_000, 3);
        r.record(65, Outcome::Error, 0, 2);
        let i = r.take_interval();
        assert_eq!(
            (i.accepted, i.rejected, i.errors, i.requests()),
            (1, 3, 2, 6)
        );
        assert_eq!(i.latency.len(), 4);
        assert!(r.take_interval().requests() == 0);
        let t = r.total();
        assert_eq!(t.requests(), 6);
        assert!((t.quantile_us(0.5) - 20.0).abs() < 0.1);
        assert!(t.quantile_us(0.5) <= t.quantile_us(0.99));
        // Out-of-range latencies are clamped, not dropped.
        r.record(2, Outcome::Accepted, u64::MAX, 1);
        assert!(r.total().latency.max() >= MAX_LATENCY_NS - MAX_LATENCY_NS / 1000);
    }
}
