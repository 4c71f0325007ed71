//! Counting outcomes and latencies from many tasks at once.
//!
//! Tasks record into one of [`STRIPES`] stripes (task index modulo), each a mutex around, per
//! target, two HDR histograms (the whole run and the current interval) and counters. With a
//! few runtime threads the locks are practically uncontended. A request is recorded into the
//! interval only; the controller drains the intervals once per tick (the progress line and
//! the report's timeline), adding each into its stripe's whole-run tally, and the final
//! report merges the whole-run tallies with what the last interval holds. (Recorded into
//! both at once, every request cost two histogram updates instead of one.)

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
    /// Nothing counted.
    pub fn new() -> Tally {
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

    /// `tallies` added together.
    pub fn merged(tallies: &[Tally]) -> Tally {
        let mut out = Tally::new();
        for t in tallies {
            out.add(t);
        }
        out
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

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
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

/// One stripe: per target, the whole run and the current interval.
struct Stripe {
    run: Vec<Tally>,
    interval: Vec<Tally>,
}

/// The shared recorder.
pub struct Recorder {
    stripes: Vec<Mutex<Stripe>>,
}

impl Recorder {
    /// An empty recorder for a run against `targets` targets (at least one).
    pub fn new(targets: usize) -> Recorder {
        let targets = targets.max(1);
        Recorder {
            stripes: (0..STRIPES)
                .map(|_| {
                    Mutex::new(Stripe {
                        run: (0..targets).map(|_| Tally::new()).collect(),
                        interval: (0..targets).map(|_| Tally::new()).collect(),
                    })
                })
                .collect(),
        }
    }

    /// Records `n` requests to target `target` with the same outcome and latency (a batch),
    /// from task `task`. An unknown target is not counted.
    pub fn record(&self, task: usize, target: usize, outcome: Outcome, latency_ns: u64, n: u64) {
        self.record_all(task, target, &[(outcome, latency_ns, n)]);
    }

    /// [`Recorder::record`] of each `(outcome, latency_ns, n)` of `records`, taking the
    /// stripe's lock once (a read's worth of replies).
    pub fn record_all(&self, task: usize, target: usize, records: &[(Outcome, u64, u64)]) {
        let Some(stripe) = self.stripes.get(task % STRIPES) else {
            return;
        };
        let mut guard = stripe.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = guard.interval.get_mut(target) else {
            return;
        };
        for &(outcome, latency_ns, n) in records {
            match outcome {
                Outcome::Accepted => t.accepted += n,
                Outcome::Rejected => t.rejected += n,
                Outcome::Error => t.errors += n,
            }
            if outcome != Outcome::Error {
                let _ = t.latency.record_n(latency_ns.clamp(1, MAX_LATENCY_NS), n);
            }
        }
    }

    /// Merges and clears the interval tallies, per target (the progress line, the timeline).
    pub fn take_interval(&self) -> Vec<Tally> {
        let mut out: Vec<Tally> = Vec::new();
        for stripe in &self.stripes {
            let mut s = stripe.lock().unwrap_or_else(|p| p.into_inner());
            if out.is_empty() {
                out = (0..s.interval.len()).map(|_| Tally::new()).collect();
            }
            let s = &mut *s;
            for ((o, i), r) in out.iter_mut().zip(&mut s.interval).zip(&mut s.run) {
                o.add(i);
                r.add(i);
                i.reset();
            }
        }
        out
    }

    /// Merges the whole-run tallies, per target: the drained intervals and the current one.
    pub fn total_by_target(&self) -> Vec<Tally> {
        let mut out: Vec<Tally> = Vec::new();
        for stripe in &self.stripes {
            let s = stripe.lock().unwrap_or_else(|p| p.into_inner());
            if out.is_empty() {
                out = (0..s.run.len()).map(|_| Tally::new()).collect();
            }
            for ((o, r), i) in out.iter_mut().zip(&s.run).zip(&s.interval) {
                o.add(r);
                o.add(i);
            }
        }
        out
    }

    /// Merges the whole-run tallies of every target.
    pub fn total(&self) -> Tally {
        Tally::merged(&self.total_by_target())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_merges_and_drains_intervals() {
        let r = Recorder::new(1);
        r.record(0, 0, Outcome::Accepted, 10_000, 1);
        r.record(1, 0, Outcome::Rejected, 20_000, 3);
        r.record(65, 0, Outcome::Error, 0, 2);
        let i = Tally::merged(&r.take_interval());
        assert_eq!(
            (i.accepted, i.rejected, i.errors, i.requests()),
            (1, 3, 2, 6)
        );
        assert_eq!(i.latency.len(), 4);
        assert!(Tally::merged(&r.take_interval()).requests() == 0);
        let t = r.total();
        assert_eq!(t.requests(), 6);
        assert!((t.quantile_us(0.5) - 20.0).abs() < 0.1);
        assert!(t.quantile_us(0.5) <= t.quantile_us(0.99));
        // Out-of-range latencies are clamped, not dropped.
        r.record(2, 0, Outcome::Accepted, u64::MAX, 1);
        assert!(r.total().latency.max() >= MAX_LATENCY_NS - MAX_LATENCY_NS / 1000);
    }

    #[test]
    fn the_total_holds_drained_intervals_and_the_current_one_once_each() {
        let r = Recorder::new(1);
        r.record_all(
            0,
            0,
            &[
                (Outcome::Accepted, 10_000, 2),
                (Outcome::Rejected, 30_000, 1),
                (Outcome::Error, 0, 4),
            ],
        );
        assert_eq!(r.total().requests(), 7, "the current interval counts");
        assert_eq!(Tally::merged(&r.take_interval()).requests(), 7);
        assert_eq!(r.total().requests(), 7, "a drained interval counts once");
        r.record(5, 0, Outcome::Accepted, 20_000, 1);
        let t = r.total();
        assert_eq!((t.accepted, t.rejected, t.errors), (3, 1, 4));
        assert_eq!(t.latency.len(), 4, "errors carry no latency");
        assert_eq!(Tally::merged(&r.take_interval()).requests(), 1);
        assert_eq!(r.total().requests(), 8);
    }

    #[test]
    fn keeps_targets_apart_and_ignores_unknown_ones() {
        let r = Recorder::new(2);
        r.record(0, 0, Outcome::Accepted, 10_000, 5);
        r.record(3, 1, Outcome::Rejected, 10_000, 2);
        r.record(3, 2, Outcome::Accepted, 10_000, 7);
        let interval = r.take_interval();
        assert_eq!(interval.len(), 2);
        assert_eq!((interval[0].accepted, interval[0].rejected), (5, 0));
        assert_eq!((interval[1].accepted, interval[1].rejected), (0, 2));
        let by_target = r.total_by_target();
        assert_eq!(by_target.iter().map(Tally::requests).sum::<u64>(), 7);
        assert_eq!(r.total().requests(), 7);
    }
}
