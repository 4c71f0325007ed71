//! The command line: `tollgate-loadgen --target URL... [flags]` runs load;
//! `tollgate-loadgen echo-server` serves raw TCP echo for the loopback floor.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::access::AccessArgs;
use crate::accuracy::Limit;
use crate::drivers::RedisBatch;
use crate::keys::Distribution;
use crate::run::{Op, PingSpread, RunConfig, Stop, DEFAULT_LIMIT};
use crate::scenario::Scenario;
use crate::target::{Spread, Target};

/// Load generator for Tollgate, its gRPC compat port and a Redis+Lua baseline: how much can it
/// take, how fast, how accurate.
#[derive(Debug, Parser)]
#[command(
    name = "tollgate-loadgen",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
  tollgate-loadgen --target tollgate://127.0.0.1:7070 --keys 1000000 --connections 8 --pipeline 64 --duration 5s\n  \
  tollgate-loadgen --target redis://127.0.0.1:6379 --connections 50 --duration 5s --json redis.json\n  \
  tollgate-loadgen --target tollgate://127.0.0.1:7070 --rate 20000 --capacity 100 --fill-amount 10 --interval 1s\n  \
  tollgate-loadgen --target tollgate://10.0.0.1:7070 --target tollgate://10.0.0.2:7070 --spread key\n  \
  tollgate-loadgen echo-server --listen 127.0.0.1:9000\n\nSee docs/loadgen.md for the output fields and how accuracy is computed."
)]
pub struct Cli {
    /// A helper instead of a load run.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The load run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Helpers.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve raw TCP echo (every byte read is written back), to measure the loopback round trip
    /// with `--target echo://ADDR`. Prints `echo-server listening on ADDR` once bound.
    EchoServer(EchoArgs),
    /// Open-loop load on a quota or concurrency scheduler (wait budgets, flow ends), reported
    /// per workload: see the `flows` module docs for the scenario file.
    Flows(FlowsArgs),
}

/// `flows` flags.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The scenario file (YAML).
    pub scenario: std::path::PathBuf,
    /// The server's binary-protocol address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub server: String,
    /// Write the report as JSON to this file (`-` = stdout, instead of the table).
    #[arg(long)]
    pub json: Option<String>,
    /// Seed of the workload picks and hold times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// API key and TLS for the server.
    #[command(flatten)]
    pub access: AccessArgs,
}

/// `echo-server` flags.
#[derive(Debug, Args)]
pub struct EchoArgs {
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
}

/// Flags of a load run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to send load: tollgate://HOST:PORT (binary protocol, shard-aware client),
    /// grpc://HOST:PORT (Aperture FlowControlService/Check), redis://HOST:PORT (EVALSHA of the
    /// loadgen's Lua token bucket) or echo://HOST:PORT (raw echo). Repeat for a cluster.
    #[arg(long = "target", value_name = "URL", num_args = 1..)]
    pub targets: Vec<Target>,
    /// How requests spread over several targets: round-robin (each connection cycles through
    /// them) or key (a key always goes to the same target).
    #[arg(long, value_enum, default_value = "round-robin")]
    pub spread: Spread,
    /// check: rate-limit decisions. ping: round trips without a decision (PING/PONG on the
    /// binary protocol, Redis PING, echo), the IO floor to compare check latency with.
    #[arg(long, value_enum, default_value = "check")]
    pub mode: Op,
    /// --mode ping against a tollgate target: which shard port each ping goes to. random
    /// (default): a shard drawn per ping, as uniform keys spread checks (the IO floor of
    /// uniform checks); rotate: each request slot moves on to the next shard at every reply,
    /// which keeps the requests of one read's replies together on one shard (fuller reads and
    /// sends than checks get). Closed loop over plain connections only: with TLS, API keys or
    /// --rate, pings go to the shared port.
    #[arg(long, value_enum)]
    pub ping_spread: Option<PingSpread>,
    /// Control point of every check (the policy's selector).
    #[arg(long, default_value = "bench")]
    pub control_point: String,
    /// Label that carries the key: the policy's limit_by_label_key.
    #[arg(long, default_value = "user")]
    pub label_key: String,
    /// Key values are this prefix followed by the key index n, for n in 0..keys.
    #[arg(long, default_value = "user-")]
    pub key_prefix: String,
    /// Number of distinct keys (buckets) to spread load over.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Key popularity: hot (every request uses user-0), uniform, zipf:S (rank k drawn with
    /// probability proportional to 1/k^S, e.g. zipf:1.1), or seq (keys in order, so N requests
    /// touch N distinct keys: memory tests).
    #[arg(long, default_value = "uniform")]
    pub distribution: Distribution,
    /// Tokens each check takes.
    #[arg(long, default_value_t = 1.0)]
    pub tokens: f64,
    /// Connection slots. Each opens its own connection(s) to every target (a binary-protocol
    /// slot is one Client: one shared-port connection plus one per shard).
    #[arg(long, short = 'c', default_value_t = 10)]
    pub connections: usize,
    /// Requests in flight per connection slot (concurrent tasks sharing the connection).
    #[arg(long, short = 'd', default_value_t = 1)]
    pub pipeline: usize,
    /// Checks per request: >1 sends CHECK_BATCH frames (tollgate) or pipelined EVALSHAs in one
    /// write (redis); grpc sends them one by one. Every check counts as a decision.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// How redis targets decide a --batch: `pipelined`, one EVALSHA of the single-key script
    /// per check, all in one write; `one-script`, one EVALSHA of a multi-key variant of the same
    /// bucket (loadgen/src/token_bucket_multi.lua) deciding the whole batch.
    #[arg(long, value_enum, default_value = "pipelined")]
    pub redis_batch: RedisBatch,
    /// Length of the measured phase (e.g. 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration, default_value = "10s", conflicts_with = "requests")]
    pub duration: Duration,
    /// Stop after this many measured requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Load before measuring, not counted (buckets, connections and caches warm up).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Open loop: send this many requests per second in total, on a fixed schedule, and
    /// measure latency from each request's intended start (coordinated-omission corrected).
    /// Without it: closed loop, as fast as answers come back.
    #[arg(long)]
    pub rate: Option<f64>,
    /// The limit's bucket capacity (tokens). Giving any of --capacity/--fill-amount/--interval
    /// turns on the accuracy report; redis targets use this limit (default 100 + 10 per 1s).
    #[arg(long)]
    pub capacity: Option<f64>,
    /// The limit's fill amount: tokens added per --interval.
    #[arg(long)]
    pub fill_amount: Option<f64>,
    /// The limit's fill interval (e.g. 1s).
    #[arg(long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// YAML file of label sets with weights (see docs/loadgen.md); each request picks one.
    #[arg(long, value_name = "FILE.yaml")]
    pub scenario: Option<PathBuf>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write a self-contained HTML report to this file: throughput, latency
    /// percentiles and accepted/rejected over time, the latency histogram, per target.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Deadline of one request; a request without an answer by then counts as an error.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub timeout: Duration,
    /// Deadline of one dial.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub connect_timeout: Duration,
    /// Load threads (default: available cores), each a single-threaded runtime owning a share
    /// of the connection slots: a request never wakes another thread.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Period of the progress line (redrawn in place on a terminal, one line per period
    /// otherwise).
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub progress_interval: Duration,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Seed of the key and mix draws (task i uses seed + i): runs are repeatable.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// API key and TLS for tollgate:// targets.
    #[command(flatten)]
    pub access: AccessArgs,
}

impl RunArgs {
    /// The run these flags describe (reads the scenario file).
    pub fn to_config(&self) -> Result<RunConfig, String> {
        if self.ping_spread.is_some() && self.mode != Op::Ping {
            return Err("--ping-spread: applies to --mode ping only".into());
        }
        let limit =
            if self.capacity.is_some() || self.fill_amount.is_some() || self.interval.is_some() {
                Some(Limit {
                    capacity: self.capacity.unwrap_or(DEFAULT_LIMIT.capacity),
                    fill_amount: self.fill_amount.unwrap_or(DEFAULT_LIMIT.fill_amount),
                    interval_ns: self
                        .interval
                        .map_or(DEFAULT_LIMIT.interval_ns, |d| d.as_nanos() as u64),
                })
            } else {
                None
            };
        let scenario = match &self.scenario {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("--scenario {}: {e}", path.display()))?;
                Some(
                    Scenario::parse(&text)
                        .map_err(|e| format!("--scenario {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cfg = RunConfig {
            targets: self.targets.clone(),
            spread: self.spread,
            op: self.mode,
            ping_spread: self.ping_spread.unwrap_or(PingSpread::Random),
            control_point: self.control_point.clone(),
            label_key: self.label_key.clone(),
            key_prefix: self.key_prefix.clone(),
            keys: self.keys,
            distribution: self.distribution.clone(),
            tokens: self.tokens,
            connections: self.connections,
            pipeline: self.pipeline,
            batch: self.batch,
            redis_batch: self.redis_batch,
            stop: match self.requests {
                Some(n) => Stop::Requests(n),
                None => Stop::Duration(self.duration),
            },
            warmup: self.warmup,
            rate: self.rate,
            limit,
            scenario,
            request_timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            progress: (!self.quiet).then_some(self.progress_interval),
            seed: self.seed,
            threads,
            access: self.access.to_access()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses `10s`, `500ms`, `250us`, `2m`, `1h`, `1.5s` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 10s or 500ms"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (ns, us, ms, s, m, h)"
            ))
        }
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn cli_is_consistent_and_parses_a_full_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "tollgate-loadgen",
            "--target",
            "tollgate://127.0.0.1:1",
            "redis://127.0.0.1:2",
            "--keys",
            "1000000",
            "--distribution",
            "zipf:1.1",
            "-c",
            "8",
            "-d",
            "64",
            "--requests",
            "100",
            "--capacity",
            "5",
            "--interval",
            "100ms",
            "--spread",
            "key",
            "--api-key",
            "sesame",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let cfg = cli.run.to_config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.targets.len(), 2);
        assert_eq!(cfg.stop, Stop::Requests(100));
        assert_eq!(cfg.spread, Spread::Key);
        let limit = cfg.limit.unwrap_or_else(|| panic!("limit"));
        assert_eq!(limit.capacity, 5.0);
        assert_eq!(limit.fill_amount, DEFAULT_LIMIT.fill_amount);
        assert_eq!(limit.interval_ns, 100_000_000);
        assert_eq!(
            cfg.access.api_key.as_ref().map(|k| k.expose()),
            Some("sesame")
        );
        assert!(Cli::try_parse_from(["tollgate-loadgen", "echo-server"]).is_ok());
        assert!(
            Cli::try_parse_from(["tollgate-loadgen", "--duration", "1s", "--requests", "5"])
                .is_err()
        );
    }

    #[test]
    fn ping_spread_defaults_to_random_and_is_refused_for_checks() {
        let run = |extra: &[&str]| {
            let mut line = vec!["tollgate-loadgen", "--target", "tollgate://127.0.0.1:1"];
            line.extend_from_slice(extra);
            Cli::try_parse_from(line)
                .unwrap_or_else(|e| panic!("{e}"))
                .run
                .to_config()
        };
        let ping = run(&["--mode", "ping"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ping.ping_spread, PingSpread::Random);
        let rotate = run(&["--mode", "ping", "--ping-spread", "rotate"]);
        assert_eq!(rotate.map(|c| c.ping_spread), Ok(PingSpread::Rotate));
        let err = run(&["--ping-spread", "rotate"]).err().unwrap_or_default();
        assert!(
            err.contains("--ping-spread") && err.contains("--mode ping"),
            "{err}"
        );
    }
}
