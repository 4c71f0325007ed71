//! What a run is asked to do: [`RunConfig`] and its parts ([`Op`], [`Stop`]), the checks on
//! their combination, and [`RunError`].

use std::time::Duration;

use crate::access::BinaryAccess;
use crate::accuracy::Limit;
use crate::drivers::RedisBatch;
use crate::keys::Distribution;
use crate::scenario::Scenario;
use crate::target::{Protocol, Spread, Target};

/// Most checks in one `--batch` (the protocol's `CHECK_BATCH` limit).
pub const MAX_BATCH: usize = tollgate_protocol::MAX_BATCH;
/// Limit assumed for `redis` targets when none is given: the policy in `--help`'s example.
pub const DEFAULT_LIMIT: Limit = Limit {
    capacity: 100.0,
    fill_amount: 10.0,
    interval_ns: 1_000_000_000,
};

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A rate-limit check (CHECK, FlowControlService/Check, EVALSHA).
    Check,
    /// A round trip without a decision (PING/PONG, Redis PING, echo): the IO floor.
    Ping,
}

/// Which of a connection slot's shard connections each ping goes to (`--ping-spread`).
///
/// Checks go to whichever shard owns their key; over uniform keys that is a shard drawn at
/// random per check, so the replies one read brings are followed by requests to every shard.
/// `Random` gives pings that same pattern, which is what makes them the IO floor of uniform
/// checks. `Rotate` moves each request slot on to the next shard at every reply: with two
/// shards the requests one read's replies call for mostly go to one shard together, a pattern
/// that keeps each shard's reads and sends about twice as full as checks ever find them
/// (docs/performance.md, section:binary-costs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PingSpread {
    /// Each ping to a shard drawn at random, as a uniform key's check.
    Random,
    /// Request slot `r` of the connection slot whose first task number is `first_task`, after
    /// `n` replies, pings shard `(first_task + r + n) % shards`.
    Rotate,
}

/// When the measured phase ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long (after the warm-up).
    Duration(Duration),
    /// After this many requests (after the warm-up).
    Requests(u64),
}

/// Everything a run needs. Built from the command line by [`crate::cli`], or directly by tests.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Where to send load; several = a cluster.
    pub targets: Vec<Target>,
    /// How requests spread over the targets.
    pub spread: Spread,
    /// Check or ping.
    pub op: Op,
    /// Which shard each ping goes to (binary protocol, closed loop).
    pub ping_spread: PingSpread,
    /// Control point of every check (unless the scenario overrides it).
    pub control_point: String,
    /// Label whose value is the key (`user=user-<n>`): the policy's `limit_by_label_key`.
    pub label_key: String,
    /// Key values are `<key_prefix><n>`.
    pub key_prefix: String,
    /// Size of the key space.
    pub keys: usize,
    /// How keys are drawn.
    pub distribution: Distribution,
    /// Tokens per check (unless the scenario overrides it).
    pub tokens: f64,
    /// Connection slots (each holds one connection per target).
    pub connections: usize,
    /// Tasks per connection slot, each with one request (or batch) in flight.
    pub pipeline: usize,
    /// Checks per request (`CHECK_BATCH` / pipelined EVALSHAs); 1 = single checks.
    pub batch: usize,
    /// How `redis` targets decide a batch (one script call per check, or one for all).
    pub redis_batch: RedisBatch,
    /// When to stop.
    pub stop: Stop,
    /// Load before measuring (not counted).
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; `None` = closed loop.
    pub rate: Option<f64>,
    /// The limit the targets enforce, for accuracy (and the Redis script's arguments).
    pub limit: Option<Limit>,
    /// Label sets with weights.
    pub scenario: Option<Scenario>,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Deadline of one dial.
    pub connect_timeout: Duration,
    /// Progress line period; `None` = silent.
    pub progress: Option<Duration>,
    /// Seed of the per-task random generators (task `i` uses `seed + i`).
    pub seed: u64,
    /// Load threads, each a single-threaded tokio runtime owning a share of the connection
    /// slots (at most one thread per slot).
    pub threads: usize,
    /// API key and TLS of `tollgate://` connections.
    pub access: BinaryAccess,
}

impl RunConfig {
    /// A closed-loop, 1 s check run of `targets` with the documented defaults, for tests and
    /// as a starting point.
    pub fn new(targets: Vec<Target>) -> RunConfig {
        RunConfig {
            targets,
            spread: Spread::RoundRobin,
            op: Op::Check,
            ping_spread: PingSpread::Random,
            control_point: "bench".into(),
            label_key: "user".into(),
            key_prefix: "user-".into(),
            keys: 1000,
            distribution: Distribution::Uniform,
            tokens: 1.0,
            connections: 1,
            pipeline: 1,
            batch: 1,
            redis_batch: RedisBatch::Pipelined,
            stop: Stop::Duration(Duration::from_secs(1)),
            warmup: Duration::ZERO,
            rate: None,
            limit: None,
            scenario: None,
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            progress: None,
            seed: 1,
            threads: 1,
            access: BinaryAccess::default(),
        }
    }

    /// The limit used for accuracy and for Redis: the given one, else [`DEFAULT_LIMIT`] when
    /// every target is Redis (the loadgen then sets the limit itself), else none.
    pub fn effective_limit(&self) -> Option<Limit> {
        self.limit.or_else(|| {
            let all_redis = !self.targets.is_empty()
                && self.targets.iter().all(|t| t.protocol == Protocol::Redis);
            all_redis.then_some(DEFAULT_LIMIT)
        })
    }

    /// Checks the combination of settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.targets.is_empty() {
            return Err("--target: at least one target is needed".into());
        }
        if self.connections == 0 || self.pipeline == 0 {
            return Err("--connections and --pipeline must be >= 1".into());
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(format!("--batch must be within 1..={MAX_BATCH}"));
        }
        if self.keys == 0 {
            return Err("--keys must be >= 1".into());
        }
        if !(self.tokens.is_finite() && self.tokens >= 0.0) {
            return Err("--tokens must be >= 0".into());
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err("--rate must be > 0".into());
            }
        }
        if let Some(l) = &self.limit {
            // `!(x >= 0)` and not `x < 0`: NaN compares false both ways.
            let valid = |x: f64| x.is_finite() && x >= 0.0;
            if l.interval_ns == 0 || !valid(l.capacity) || !valid(l.fill_amount) {
                return Err(
                    "--capacity/--fill-amount must be finite numbers >= 0 and --interval > 0"
                        .into(),
                );
            }
        }
        if self.op == Op::Ping && self.targets.iter().any(|t| t.protocol == Protocol::Grpc) {
            return Err("--mode ping: grpc targets have no ping".into());
        }
        if let Stop::Requests(0) = self.stop {
            return Err("--requests must be >= 1".into());
        }
        Ok(())
    }
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The settings do not make sense together.
    #[error("invalid settings: {0}")]
    Config(String),
    /// A target could not be reached before the run started.
    #[error("cannot connect: {0}")]
    Connect(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_must_be_finite_numbers() {
        let target: Target = "tollgate://127.0.0.1:7070".parse().expect("a target");
        let with = |capacity: f64, fill_amount: f64| {
            let mut cfg = RunConfig::new(vec![target.clone()]);
            cfg.limit = Some(Limit {
                capacity,
                fill_amount,
                interval_ns: 1_000_000_000,
            });
            cfg.validate()
        };
        assert_eq!(with(100.0, 10.0), Ok(()));
        assert_eq!(with(0.0, 0.0), Ok(()));
        for (capacity, fill_amount) in [
            (f64::NAN, 10.0),
            (f64::INFINITY, 10.0),
            (100.0, f64::NAN),
            (100.0, f64::INFINITY),
            (-1.0, 10.0),
        ] {
            let refused = with(capacity, fill_amount).expect_err("refused");
            assert!(
                refused.contains("finite"),
                "{capacity} {fill_amount}: {refused}"
            );
        }
    }
}
