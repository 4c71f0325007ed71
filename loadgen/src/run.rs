//! One load run: connect, warm up, drive load (closed or open loop), report.
//!
//! ```text
//!  connection slot c (x --connections), one Conn per target
//!    ├─ task (x --pipeline): loop { pick key/mix/target ─ send ─ await ─ record }
//!    └─ ...
//!  controller: progress line every tick; sets `stop` at the end of the duration
//! ```
//!
//! Closed loop: each task sends its next request as soon as the previous one is answered, so
//! `connections x pipeline` requests are always in flight: maximum throughput.
//!
//! Open loop (`--rate R`): each of the `connections x pipeline` tasks owns an evenly staggered
//! share of the schedule (one request every `tasks / R` seconds). A task that falls behind
//! sends at once, and that request's latency is measured from its *intended* start time, so
//! the time a request waited behind a slow one is charged to the server (coordinated-omission
//! correction, as wrk2 does). When the task was on schedule the latency is measured from the
//! actual send, so the loadgen's own timer granularity is not charged to the server.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tollgate_protocol::client::CheckRequest;

use crate::accuracy::{Ledger, Limit};
use crate::drivers::{tokens_of, CallError, Conn, ConnSettings, RedisLimit, PING_PAYLOAD_LEN};
use crate::keys::{key_name, Distribution, KeySampler};
use crate::report::{ConfigEcho, Latency, Report};
use crate::scenario::{MixPicker, Scenario};
use crate::stats::{Outcome, Recorder, Tally};
use crate::target::{Protocol, Spread, Target};

/// Most checks in one `--batch` (the protocol's `CHECK_BATCH` limit).
pub const MAX_BATCH: usize = tollgate_protocol::MAX_BATCH;
/// Limit assumed for `redis` targets when none is given: the policy in `--help`'s example.
pub const DEFAULT_LIMIT: Limit = Limit {
    capacity: 100.0,
    fill_amount: 10.0,
    interval_ns: 1_000_000_000,
};
/// How often the controller wakes to check for the end of the run (and draw progress).
const CONTROLLER_TICK: Duration = Duration::from_millis(50);

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A rate-limit check (CHECK, FlowControlService/Check, EVALSHA).
    Check,
    /// A round trip without a decision (PING/PONG, Redis PING, echo): the IO floor.
    Ping,
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
}

impl RunConfig {
    /// A closed-loop, 1 s check run of `targets` with the documented defaults, for tests and
    /// as a starting point.
    pub fn new(targets: Vec<Target>) -> RunConfig {
        RunConfig {
            targets,
            spread: Spread::RoundRobin,
            op: Op::Check,
            control_point: "bench".into(),
            label_key: "user".into(),
            key_prefix: "user-".into(),
            keys: 1000,
            distribution: Distribution::Uniform,
            tokens: 1.0,
            connections: 1,
            pipeline: 1,
            batch: 1,
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
            if l.interval_ns == 0 || l.capacity < 0.0 || l.fill_amount < 0.0 {
                return Err("--capacity/--fill-amount must be >= 0 and --interval > 0".into());
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

/// State shared by the tasks and the controller.
struct Shared {
    recorder: Recorder,
    ledger: Ledger,
    stop: AtomicBool,
    /// Measured requests issued (for `Stop::Requests`).
    issued: AtomicU64,
    /// Tasks that have finished (the controller waits for all).
    tasks_done: AtomicUsize,
    first_error: Mutex<Option<String>>,
    epoch: Instant,
    /// End of the warm-up, ns since `epoch`.
    measure_from_ns: u64,
    /// End of the measured phase for `Stop::Duration`, ns since `epoch`.
    measure_until_ns: u64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn note_error(&self, e: &CallError) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.clone());
        }
    }
}

/// Runs the load described by `cfg` and reports. Blocks.
///
/// The load runs on `cfg.threads` threads (at most one per connection slot), each with its own
/// single-threaded tokio runtime owning a share of the slots (slot `c` on thread
/// `c % threads`). A connection's request tasks, and its client's writer and reader tasks, then
/// share one thread: a request costs no cross-thread wake-up, which on a small machine would
/// cost the loadgen more CPU than the server it measures.
pub fn run_blocking(cfg: RunConfig) -> Result<Report, RunError> {
    cfg.validate().map_err(RunError::Config)?;
    let limit = cfg.effective_limit();
    let redis_limit = limit.unwrap_or(DEFAULT_LIMIT);
    let settings = ConnSettings {
        request_timeout: cfg.request_timeout,
        connect_timeout: cfg.connect_timeout,
        max_in_flight: (cfg.pipeline * 2).max(1024),
        redis_limit: RedisLimit {
            capacity: redis_limit.capacity.to_string(),
            fill_amount: redis_limit.fill_amount.to_string(),
            interval_us: (redis_limit.interval_ns / 1000).max(1).to_string(),
        },
    };
    let sampler = KeySampler::new(&cfg.distribution, cfg.keys);
    let scenario = cfg.scenario.clone().unwrap_or_else(Scenario::single);
    let plan = Arc::new(Plan {
        picker: scenario.picker(),
        templates: templates(&cfg, &scenario),
        sampler: sampler.clone(),
        settings,
        cfg: cfg.clone(),
    });
    let threads = cfg.threads.clamp(1, cfg.connections);

    // Phase 1: every thread dials its slots (dials are not measured) and reports.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut go = Vec::with_capacity(threads);
    let mut joins = Vec::with_capacity(threads);
    for t in 0..threads {
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<Arc<Shared>>();
        go.push(go_tx);
        let slots: Vec<usize> = (0..cfg.connections).filter(|c| c % threads == t).collect();
        let (plan, ready_tx) = (plan.clone(), ready_tx.clone());
        let join = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || load_thread(&plan, &slots, &ready_tx, go_rx))
            .map_err(|e| RunError::Config(format!("cannot start a load thread: {e}")))?;
        joins.push(join);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a load thread died while connecting".into());
                break;
            }
        }
    }
    if let Some(e) = failure {
        // Dropping the go senders releases the threads that did connect.
        drop(go);
        for j in joins {
            let _ = j.join();
        }
        return Err(RunError::Connect(e));
    }

    // Phase 2: the clock starts; every thread gets the shared state and runs its tasks.
    let measure_from_ns = cfg.warmup.as_nanos() as u64;
    let shared = Arc::new(Shared {
        recorder: Recorder::new(),
        // Without a limit there is no accuracy report: an empty ledger ignores every update.
        ledger: Ledger::new(if limit.is_some() {
            sampler.key_space()
        } else {
            0
        }),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        tasks_done: AtomicUsize::new(0),
        first_error: Mutex::new(None),
        epoch: Instant::now(),
        measure_from_ns,
        measure_until_ns: match cfg.stop {
            Stop::Duration(d) => measure_from_ns.saturating_add(d.as_nanos() as u64),
            Stop::Requests(_) => u64::MAX,
        },
    });
    for g in go {
        let _ = g.send(shared.clone());
    }
    controller(&cfg, &shared, cfg.connections * cfg.pipeline);
    for j in joins {
        let _ = j.join();
    }
    let end_ns = shared.now_ns();
    let tally = shared.recorder.total();
    let duration_s = end_ns.saturating_sub(measure_from_ns) as f64 / 1e9;
    let accuracy = limit.map(|l| shared.ledger.report(&l));
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(build_report(
        &cfg,
        limit,
        &tally,
        duration_s,
        accuracy,
        first_error,
    ))
}

/// What every load thread needs, fixed before the run.
struct Plan {
    cfg: RunConfig,
    settings: ConnSettings,
    sampler: KeySampler,
    picker: MixPicker,
    templates: Vec<(CheckRequest, f64)>,
}

/// One load thread: dial `slots`, report, wait for the start, run the slots' tasks.
fn load_thread(
    plan: &Arc<Plan>,
    slots: &[usize],
    ready: &std::sync::mpsc::Sender<Result<(), String>>,
    go: tokio::sync::oneshot::Receiver<Arc<Shared>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start a runtime: {e}")));
            return;
        }
    };
    rt.block_on(async {
        let cfg = &plan.cfg;
        let mut conns: Vec<(usize, Arc<Vec<Conn>>)> = Vec::with_capacity(slots.len());
        for &c in slots {
            let mut slot = Vec::with_capacity(cfg.targets.len());
            for t in &cfg.targets {
                match Conn::connect(t, &plan.settings).await {
                    Ok(conn) => slot.push(conn),
                    Err(e) => {
                        let _ = ready.send(Err(format!("{t}: {e}")));
                        return;
                    }
                }
            }
            conns.push((c, Arc::new(slot)));
        }
        let _ = ready.send(Ok(()));
        let Ok(shared) = go.await else { return };
        let tasks_total = cfg.connections * cfg.pipeline;
        let period_ns = cfg.rate.map(|r| (tasks_total as f64 * 1e9 / r).max(1.0));
        let mut handles = Vec::with_capacity(conns.len() * cfg.pipeline);
        for (c, slot) in &conns {
            for d in 0..cfg.pipeline {
                let index = c * cfg.pipeline + d;
                let task = Task {
                    index,
                    conns: slot.clone(),
                    shared: shared.clone(),
                    sampler: plan.sampler.clone(),
                    picker: plan.picker.clone(),
                    plan: plan.clone(),
                    rng: rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(index as u64)),
                    spread: cfg.spread,
                    op: cfg.op,
                    batch: cfg.batch,
                    stop_after: match cfg.stop {
                        Stop::Requests(n) => Some(n),
                        Stop::Duration(_) => None,
                    },
                    pacing: period_ns.map(|p| Pacing {
                        period_ns: p,
                        next_ns: p * index as f64 / tasks_total as f64,
                    }),
                };
                handles.push(tokio::spawn(task.run()));
            }
        }
        for h in handles {
            let _ = h.await;
            shared.tasks_done.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Draws progress and ends the measured phase; returns once all `tasks` have finished.
fn controller(cfg: &RunConfig, shared: &Shared, tasks: usize) {
    let tty = std::io::stderr().is_terminal();
    let mut last_tick = shared.now_ns();
    let mut drew = false;
    loop {
        std::thread::sleep(CONTROLLER_TICK);
        let now = shared.now_ns();
        if now >= shared.measure_until_ns {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let finished = shared.tasks_done.load(Ordering::Relaxed) >= tasks;
        if let Some(period) = cfg.progress {
            if now.saturating_sub(last_tick) >= period.as_nanos() as u64 || finished {
                let interval = shared.recorder.take_interval();
                let secs = now.saturating_sub(last_tick) as f64 / 1e9;
                last_tick = now;
                let line = progress_line(shared, now, &interval, secs);
                let mut err = std::io::stderr().lock();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                    drew = true;
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
        }
        if finished {
            break;
        }
    }
    if drew {
        let _ = writeln!(std::io::stderr());
    }
}

fn progress_line(shared: &Shared, now_ns: u64, t: &Tally, secs: f64) -> String {
    let phase = if now_ns < shared.measure_from_ns {
        "warmup"
    } else {
        "run"
    };
    let elapsed = now_ns.saturating_sub(shared.measure_from_ns.min(now_ns)) as f64 / 1e9;
    let rate = if secs > 0.0 {
        (t.accepted + t.rejected) as f64 / secs
    } else {
        0.0
    };
    format!(
        "[{phase} {elapsed:6.1}s] {} dec/s  accepted {}  rejected {}  errors {}  p99 {:.1}us",
        crate::report::thousands(rate as u64),
        crate::report::thousands(t.accepted),
        crate::report::thousands(t.rejected),
        crate::report::thousands(t.errors),
        t.quantile_us(0.99),
    )
}

/// One request template per scenario mix; the key label is last and rewritten per request.
fn templates(cfg: &RunConfig, scenario: &Scenario) -> Vec<(CheckRequest, f64)> {
    scenario
        .mixes
        .iter()
        .map(|m| {
            let mut labels: Vec<(String, String)> = m
                .labels
                .iter()
                .filter(|(k, _)| **k != cfg.label_key)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.push((cfg.label_key.clone(), String::new()));
            let tokens = m.tokens.unwrap_or(cfg.tokens);
            let control_point = m
                .control_point
                .clone()
                .unwrap_or_else(|| cfg.control_point.clone());
            (
                CheckRequest {
                    control_point,
                    labels,
                    tokens: Some(tokens),
                },
                tokens,
            )
        })
        .collect()
}

/// Open-loop schedule of one task.
struct Pacing {
    period_ns: f64,
    /// Intended start of the next request, ns since the epoch.
    next_ns: f64,
}

/// One load task.
struct Task {
    index: usize,
    conns: Arc<Vec<Conn>>,
    shared: Arc<Shared>,
    sampler: KeySampler,
    picker: MixPicker,
    /// The run's fixed inputs (templates, key prefix).
    plan: Arc<Plan>,
    rng: rand::rngs::StdRng,
    spread: Spread,
    op: Op,
    batch: usize,
    stop_after: Option<u64>,
    pacing: Option<Pacing>,
}

impl Task {
    async fn run(mut self) {
        // This task's own copies of the templates, rewritten in place per request.
        let mut singles: Vec<CheckRequest> =
            self.plan.templates.iter().map(|(r, _)| r.clone()).collect();
        // Batch slots, reused: (mix of the slot's current contents, key) and the requests.
        let mut slots: Vec<(usize, usize)> = Vec::with_capacity(self.batch);
        let mut batch: Vec<CheckRequest> = Vec::with_capacity(self.batch);
        let ping = [0x5au8; PING_PAYLOAD_LEN];
        let mut seq: u64 = 0;
        let mut prev_done_ns: u64 = 0;
        let targets = self.conns.len();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            let intended = match self.pacing.as_mut() {
                Some(p) => {
                    let at = p.next_ns as u64;
                    p.next_ns += p.period_ns;
                    let now = self.shared.now_ns();
                    if at > now {
                        tokio::time::sleep(Duration::from_nanos(at - now)).await;
                    }
                    Some(at)
                }
                None => None,
            };
            let now = self.shared.now_ns();
            let measured = now >= self.shared.measure_from_ns;
            if measured {
                if now >= self.shared.measure_until_ns {
                    break;
                }
                if let Some(limit) = self.stop_after {
                    let before = self
                        .shared
                        .issued
                        .fetch_add(self.batch as u64, Ordering::Relaxed);
                    if before >= limit {
                        self.shared.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            seq += 1;
            // [accepted, rejected, errors]
            let mut counts = [0u64; 3];
            let (sent, done) = if self.op == Op::Ping {
                let target = self.spread.pick(targets, seq, 0);
                let sent = self.shared.now_ns();
                let r = match self.conns.get(target) {
                    Some(c) => c.ping(&ping).await.map(|()| true),
                    None => Err("no connection".to_string()),
                };
                let done = self.shared.now_ns();
                self.tally(None, 0.0, &r, done, &mut counts);
                (sent, done)
            } else if self.batch == 1 {
                let mix = self.picker.pick(&mut self.rng);
                let key = self.sampler.sample(&mut self.rng);
                let target = self.spread.pick(targets, seq, key);
                let tokens = self.plan.templates.get(mix).map_or(1.0, |(_, t)| *t);
                let Some(req) = singles.get_mut(mix) else {
                    break;
                };
                set_key(req, &self.plan.cfg.key_prefix, key);
                let sent = self.shared.now_ns();
                self.shared.ledger.sent(key, sent);
                let r = match self.conns.get(target) {
                    Some(c) => c.check(req).await,
                    None => Err("no connection".to_string()),
                };
                let done = self.shared.now_ns();
                self.tally(Some(key), tokens, &r, done, &mut counts);
                (sent, done)
            } else {
                for i in 0..self.batch {
                    let mix = self.picker.pick(&mut self.rng);
                    let key = self.sampler.sample(&mut self.rng);
                    if i >= batch.len() || slots.get(i).map(|s| s.0) != Some(mix) {
                        let Some((template, _)) = self.plan.templates.get(mix) else {
                            break;
                        };
                        if i >= batch.len() {
                            batch.push(template.clone());
                            slots.push((mix, key));
                        } else {
                            batch[i] = template.clone();
                        }
                    }
                    if let Some(slot) = slots.get_mut(i) {
                        *slot = (mix, key);
                    }
                    if let Some(req) = batch.get_mut(i) {
                        set_key(req, &self.plan.cfg.key_prefix, key);
                    }
                }
                let sent = self.shared.now_ns();
                for (_, key) in &slots {
                    self.shared.ledger.sent(*key, sent);
                }
                let results = self.send_batch(&batch, &slots, seq).await;
                let done = self.shared.now_ns();
                for ((_, key), (req, r)) in slots.iter().zip(batch.iter().zip(&results)) {
                    self.tally(Some(*key), tokens_of(req), r, done, &mut counts);
                }
                (sent, done)
            };
            // Coordinated-omission correction: charge the wait behind a late reply.
            let start = match intended {
                Some(at) if prev_done_ns > at => at,
                _ => sent,
            };
            prev_done_ns = done;
            if measured {
                let latency = done.saturating_sub(start);
                for (outcome, n) in [Outcome::Accepted, Outcome::Rejected, Outcome::Error]
                    .into_iter()
                    .zip(counts)
                {
                    if n > 0 {
                        self.shared.recorder.record(self.index, outcome, latency, n);
                    }
                }
            }
        }
    }

    /// Counts one result; an admission goes into the accuracy ledger.
    fn tally(
        &self,
        key: Option<usize>,
        tokens: f64,
        r: &Result<bool, CallError>,
        done_ns: u64,
        counts: &mut [u64; 3],
    ) {
        match r {
            Ok(true) => {
                counts[0] += 1;
                if let Some(key) = key {
                    self.shared.ledger.admitted(key, tokens, done_ns);
                }
            }
            Ok(false) => counts[1] += 1,
            Err(e) => {
                counts[2] += 1;
                self.shared.note_error(e);
            }
        }
    }

    /// Sends a batch: with one target as one call; with several, grouped by target (the whole
    /// batch to one target for round-robin, by key for key spread), all groups at once.
    async fn send_batch(
        &self,
        batch: &[CheckRequest],
        slots: &[(usize, usize)],
        seq: u64,
    ) -> Vec<Result<bool, CallError>> {
        let targets = self.conns.len();
        if targets == 1 || self.spread == Spread::RoundRobin {
            let t = self.spread.pick(targets, seq, 0);
            return match self.conns.get(t) {
                Some(c) => c.check_batch(batch).await,
                None => vec![Err("no connection".to_string()); batch.len()],
            };
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); targets];
        for (i, (_, key)) in slots.iter().enumerate() {
            if let Some(g) = groups.get_mut(self.spread.pick(targets, seq, *key)) {
                g.push(i);
            }
        }
        let calls = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .map(|(t, g)| {
                let reqs: Vec<CheckRequest> =
                    g.iter().filter_map(|&i| batch.get(i).cloned()).collect();
                let conn = self.conns.get(t).cloned();
                async move {
                    match conn {
                        Some(c) => c.check_batch(&reqs).await,
                        None => vec![Err("no connection".to_string()); reqs.len()],
                    }
                }
            });
        let answers = futures::future::join_all(calls).await;
        let mut out: Vec<Result<bool, CallError>> = vec![Err("lost".into()); batch.len()];
        for (g, a) in groups.iter().filter(|g| !g.is_empty()).zip(answers) {
            for (&i, r) in g.iter().zip(a) {
                if let Some(slot) = out.get_mut(i) {
                    *slot = r;
                }
            }
        }
        out
    }
}

/// Rewrites the key label (the last label, by convention) to key `key`.
fn set_key(req: &mut CheckRequest, prefix: &str, key: usize) {
    if let Some((_, v)) = req.labels.last_mut() {
        key_name(v, prefix, key);
    }
}

fn build_report(
    cfg: &RunConfig,
    limit: Option<Limit>,
    t: &Tally,
    duration_s: f64,
    accuracy: Option<crate::accuracy::AccuracyReport>,
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
    }
}
