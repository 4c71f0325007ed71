//! What the report keeps beyond its totals, for `--html`: figures of each interval of the
//! measured phase (in all and per target), each target's totals, and the latency
//! histogram. Not part of `--json`, whose fields stay as docs/loadgen.md lists them.

use serde::Serialize;

use crate::stats::Tally;

/// What one interval (or one target's whole run) saw.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figures {
    /// Admitted checks (answered pings).
    pub accepted: u64,
    /// Refused checks.
    pub rejected: u64,
    /// Requests without a decision.
    pub errors: u64,
    /// `(accepted + rejected) / seconds`.
    pub decisions_per_sec: f64,
    /// Latency percentiles in microseconds (answered requests).
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

impl Figures {
    /// The figures of `t`, counted over `secs` seconds.
    pub fn of(t: &Tally, secs: f64) -> Figures {
        Figures {
            accepted: t.accepted,
            rejected: t.rejected,
            errors: t.errors,
            decisions_per_sec: if secs > 0.0 {
                (t.accepted + t.rejected) as f64 / secs
            } else {
                0.0
            },
            p50_us: t.quantile_us(0.5),
            p90_us: t.quantile_us(0.9),
            p99_us: t.quantile_us(0.99),
            p999_us: t.quantile_us(0.999),
        }
    }
}

/// One interval of the measured phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// End of the interval, seconds since the measured phase began.
    pub end_s: f64,
    /// Its length in seconds.
    pub secs: f64,
    /// Every target together.
    pub all: Figures,
    /// Per target, in `--target` order.
    pub targets: Vec<Figures>,
}

impl Sample {
    /// The sample of per-target interval tallies `tallies` ending at `end_s`, `secs` long.
    pub fn of(tallies: &[Tally], end_s: f64, secs: f64) -> Sample {
        Sample {
            end_s,
            secs,
            all: Figures::of(&Tally::merged(tallies), secs),
            targets: tallies.iter().map(|t| Figures::of(t, secs)).collect(),
        }
    }
}

/// One bar of the latency histogram: requests answered in `(from_us, upto_us]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bucket {
    /// Lower bound, microseconds (exclusive; 0 for the first bar).
    pub from_us: f64,
    /// Upper bound, microseconds (inclusive).
    pub upto_us: f64,
    /// Requests.
    pub count: u64,
}

/// The latency histogram of `t` in bars whose bounds double from 1 µs, up to the largest
/// latency seen; empty bars are kept so the axis is regular.
pub fn histogram(t: &Tally) -> Vec<Bucket> {
    if t.latency.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut from_us = 0.0;
    for v in t.latency.iter_log(1_000, 2.0) {
        let upto_us = v.value_iterated_to() as f64 / 1000.0;
        out.push(Bucket {
            from_us,
            upto_us,
            count: v.count_since_last_iteration(),
        });
        from_us = upto_us;
    }
    out
}

/// The details of a run: the timeline, each target's totals, the histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Detail {
    /// Interval samples of the measured phase, in order.
    pub timeline: Vec<Sample>,
    /// Per target (in `--target` order), over the whole measured phase.
    pub targets: Vec<Figures>,
    /// Latency histogram of every answered request.
    pub histogram: Vec<Bucket>,
}

impl Detail {
    /// The detail of a run whose per-target totals are `by_target`, measured over
    /// `duration_s` seconds, sampled as `timeline`.
    pub fn new(timeline: Vec<Sample>, by_target: &[Tally], duration_s: f64) -> Detail {
        Detail {
            timeline,
            targets: by_target
                .iter()
                .map(|t| Figures::of(t, duration_s))
                .collect(),
            histogram: histogram(&Tally::merged(by_target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Outcome, Recorder};

    #[test]
    fn histogram_bars_cover_every_answer_once() {
        let r = Recorder::new(1);
        r.record(0, 0, Outcome::Accepted, 3_000, 10); // 3 µs
        r.record(0, 0, Outcome::Rejected, 150_000, 5); // 150 µs
        r.record(0, 0, Outcome::Error, 0, 4); // no latency
        let bars = histogram(&r.total());
        assert_eq!(bars.iter().map(|b| b.count).sum::<u64>(), 15);
        let bar_of = |us: f64| bars.iter().find(|b| b.from_us < us && us <= b.upto_us);
        assert_eq!(bar_of(3.0).map(|b| b.count), Some(10));
        assert_eq!(bar_of(150.0).map(|b| b.count), Some(5));
        assert!(bars.windows(2).all(|w| w[0].upto_us == w[1].from_us));
    }

    #[test]
    fn a_sample_adds_its_targets_up() {
        let r = Recorder::new(2);
        r.record(0, 0, Outcome::Accepted, 1_000, 30);
        r.record(1, 1, Outcome::Rejected, 1_000, 10);
        let s = Sample::of(&r.take_interval(), 2.0, 2.0);
        assert_eq!((s.all.accepted, s.all.rejected), (30, 10));
        assert_eq!(s.targets.len(), 2);
        assert!((s.all.decisions_per_sec - 20.0).abs() < 1e-9);
    }
}
