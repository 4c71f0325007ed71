//! The end-of-run report: a human table on stdout and, with `--json FILE`, the same figures as
//! JSON (field list in docs/loadgen.md).

use std::fmt::Write as _;

use serde::Serialize;

use crate::accuracy::{AccuracyReport, Limit};
use crate::run::{Op, PingSpread, RunConfig, Stop};
use crate::stats::Tally;
use crate::timeline::Detail;

/// Latency percentiles in microseconds (answered requests only).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The settings of the run, echoed so a JSON file stands on its own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConfigEcho {
    /// Target URLs.
    pub targets: Vec<String>,
    /// `round-robin` or `key`.
    pub spread: crate::target::Spread,
    /// `check` or `ping`.
    pub op: Op,
    /// Pings: which shard each went to (`random` or `rotate`); absent for checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_spread: Option<PingSpread>,
    /// Control point.
    pub control_point: String,
    /// Key label.
    pub label_key: String,
    /// Key value prefix.
    pub key_prefix: String,
    /// Key space size.
    pub keys: usize,
    /// `hot`, `uniform` or `zipf:S`.
    pub distribution: String,
    /// Tokens per check.
    pub tokens: f64,
    /// Connection slots.
    pub connections: usize,
    /// Requests in flight per connection slot.
    pub pipeline: usize,
    /// Checks per request.
    pub batch: usize,
    /// Measured duration asked for (`--duration`), if any.
    pub duration_s: Option<f64>,
    /// Measured requests asked for (`--requests`), if any.
    pub requests: Option<u64>,
    /// Warm-up.
    pub warmup_s: f64,
    /// Open-loop rate, if any.
    pub rate: Option<f64>,
    /// The limit used for accuracy and Redis, if any.
    pub limit: Option<Limit>,
    /// Scenario mixes, if any.
    pub scenario: Option<crate::scenario::Scenario>,
    /// Request deadline in ms.
    pub timeout_ms: u64,
    /// Random seed.
    pub seed: u64,
    /// Load threads.
    pub threads: usize,
}

impl ConfigEcho {
    /// Echo of `cfg` with the limit actually used.
    pub fn of(cfg: &RunConfig, limit: Option<Limit>) -> ConfigEcho {
        ConfigEcho {
            targets: cfg.targets.iter().map(ToString::to_string).collect(),
            spread: cfg.spread,
            op: cfg.op,
            ping_spread: (cfg.op == Op::Ping).then_some(cfg.ping_spread),
            control_point: cfg.control_point.clone(),
            label_key: cfg.label_key.clone(),
            key_prefix: cfg.key_prefix.clone(),
            keys: cfg.keys,
            distribution: cfg.distribution.to_string(),
            tokens: cfg.tokens,
            connections: cfg.connections,
            pipeline: cfg.pipeline,
            batch: cfg.batch,
            duration_s: match cfg.stop {
                Stop::Duration(d) => Some(d.as_secs_f64()),
                Stop::Requests(_) => None,
            },
            requests: match cfg.stop {
                Stop::Requests(n) => Some(n),
                Stop::Duration(_) => None,
            },
            warmup_s: cfg.warmup.as_secs_f64(),
            rate: cfg.rate,
            limit,
            scenario: cfg.scenario.clone(),
            timeout_ms: cfg.request_timeout.as_millis() as u64,
            seed: cfg.seed,
            threads: cfg.threads,
        }
    }
}

/// Everything a run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// Target URL(s), comma-separated.
    pub target: String,
    /// Target URLs.
    pub targets: Vec<String>,
    /// `closed` (max throughput) or `open` (fixed `--rate`).
    pub mode: String,
    /// `check` or `ping`.
    pub op: Op,
    /// Length of the measured phase, seconds.
    pub duration_s: f64,
    /// Measured requests: `accepted + rejected + errors`.
    pub requests: u64,
    /// `(accepted + rejected) / duration_s`.
    pub decisions_per_sec: f64,
    /// `requests / duration_s`.
    pub requests_per_sec: f64,
    /// Admitted checks (answered pings in ping mode).
    pub accepted: u64,
    /// Refused checks.
    pub rejected: u64,
    /// Requests without a decision.
    pub errors: u64,
    /// Latency percentiles, microseconds.
    pub latency_us: Latency,
    /// Admitted against allowed, when the limit is known.
    pub accuracy: Option<AccuracyReport>,
    /// The first error seen, for diagnosis.
    pub first_error: Option<String>,
    /// The settings.
    pub config: ConfigEcho,
    /// Timeline, per-target figures and histogram, for `--html` (not in the JSON).
    #[serde(skip)]
    pub detail: Detail,
}

impl Report {
    /// The report of a run of `cfg` against `limit` (if known) that measured `t` over
    /// `duration_s` seconds.
    pub fn from_run(
        cfg: &RunConfig,
        limit: Option<Limit>,
        t: &Tally,
        duration_s: f64,
        accuracy: Option<AccuracyReport>,
        first_error: Option<String>,
    ) -> Report {
        let targets: Vec<String> = cfg.targets.iter().map(ToString::to_string).collect();
        let per_sec = |n: u64| {
            if duration_s > 0.0 {
                n as f64 / duration_s
            } else {
                0.0
            }
        };
        Report {
            target: targets.join(","),
            targets,
            mode: if cfg.rate.is_some() { "open" } else { "closed" }.into(),
            op: cfg.op,
            duration_s,
            requests: t.requests(),
            decisions_per_sec: per_sec(t.accepted + t.rejected),
            requests_per_sec: per_sec(t.requests()),
            accepted: t.accepted,
            rejected: t.rejected,
            errors: t.errors,
            latency_us: Latency {
                p50: t.quantile_us(0.5),
                p90: t.quantile_us(0.9),
                p99: t.quantile_us(0.99),
                p999: t.quantile_us(0.999),
                max: if t.latency.is_empty() {
                    0.0
                } else {
                    t.latency.max() as f64 / 1000.0
                },
                mean: t.latency.mean() / 1000.0,
            },
            accuracy,
            first_error,
            config: ConfigEcho::of(cfg, limit),
            detail: Detail::default(),
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human table.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let load = match self.config.rate {
            Some(r) => format!("open loop at {} req/s", thousands(r as u64)),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(s, "target        {}", self.target);
        let _ = writeln!(
            s,
            "load          {load}, {:?}, {} conn x {} deep{}, {} over {} keys, spread {:?}",
            c.op,
            c.connections,
            c.pipeline,
            if c.batch > 1 {
                format!(" x batch {}", c.batch)
            } else {
                String::new()
            },
            c.distribution,
            thousands(c.keys as u64),
            c.spread,
        );
        let _ = writeln!(s, "duration      {:.2} s", self.duration_s);
        let _ = writeln!(
            s,
            "requests      {}  (accepted {}, rejected {}, errors {})",
            thousands(self.requests),
            thousands(self.accepted),
            thousands(self.rejected),
            thousands(self.errors)
        );
        let _ = writeln!(
            s,
            "decisions/s   {}",
            thousands(self.decisions_per_sec as u64)
        );
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "latency (us)  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let (Some(a), Some(limit)) = (&self.accuracy, &c.limit) {
            let _ = writeln!(
                s,
                "accuracy      admitted/allowed {:.4} ({:.0} of {:.0} tokens over {} keys; limit {} + {} per {:.3}s)",
                a.ratio,
                a.admitted_tokens,
                a.allowed_tokens,
                thousands(a.keys_used),
                limit.capacity,
                limit.fill_amount,
                limit.interval_ns as f64 / 1e9,
            );
            if let Some(k) = a.worst_key {
                let _ = writeln!(
                    s,
                    "worst key     {}{k}: {:.4} ({:.0} of {:.0} tokens)",
                    c.key_prefix, a.worst_ratio, a.worst_admitted_tokens, a.worst_allowed_tokens
                );
            }
        }
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "first error   {e}");
        }
        s
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
