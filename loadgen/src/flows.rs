//! `tollgate-loadgen flows SCENARIO.yaml`: open-loop load on a quota or concurrency
//! scheduler through the binary protocol (version 2), measured per workload.
//!
//! Every request carries the scenario's wait budget, so the server may queue it. A quota run
//! reports, per workload, the admitted rate, its share of the admitted tokens, the queue wait
//! (time to an admitting answer) p50/p99 and the rejections by refusal; overall, admitted
//! tokens per second against the scenario's `quota`. A concurrency run holds each admitted
//! flow for a time drawn from `hold`, then ends it with `FLOW_END`, and reports the hold
//! times and the flows in flight (sampled every millisecond, as the client sees them: from
//! the accepting reply to sending its `FLOW_END`, so never ahead of the server's count) against the scenario's `limit`.
//!
//! ```yaml
//! kind: quota                # or concurrency
//! control_point: llm
//! rate: 200                  # requests per second, in total (open loop)
//! duration: 5s
//! wait: 2s                   # each request's wait budget
//! quota: 100                 # optional: tokens per second the policy admits (quota runs)
//! limit: 10                  # optional: the concurrency limit (concurrency runs)
//! hold: { min: 50ms, max: 200ms }   # concurrency runs: how long an admitted flow holds
//! workloads:
//!   - name: gold
//!     weight: 1              # share of the requests (> 0)
//!     labels: { api_key: k, tier: gold }
//!     tokens: 1              # optional, default 1
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::access::BinaryAccess;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize};
use tollgate_protocol::client::{CheckRequest, Client, ClientConfig, FailMode};

use crate::cli::parse_duration;

/// What the scenario loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A quota scheduler: tokens per interval, shared by workloads.
    Quota,
    /// A concurrency limiter or scheduler: flows in flight, ended after their hold time.
    Concurrency,
}

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowScenario {
    /// Quota or concurrency.
    pub kind: Kind,
    /// The control point of every check.
    pub control_point: String,
    /// Requests per second, in total.
    pub rate: f64,
    /// How long to send.
    #[serde(deserialize_with = "duration")]
    pub duration: Duration,
    /// Each request's wait budget.
    #[serde(deserialize_with = "duration")]
    pub wait: Duration,
    /// Tokens per second the policy admits, to compare with (quota runs).
    #[serde(default)]
    pub quota: Option<f64>,
    /// The concurrency limit, to compare with (concurrency runs).
    #[serde(default)]
    pub limit: Option<f64>,
    /// How long an admitted flow holds (concurrency runs).
    #[serde(default)]
    pub hold: Option<Hold>,
    /// The workloads.
    pub workloads: Vec<Workload>,
}

/// A hold time range: uniform in `[min, max]`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// Shortest hold.
    #[serde(deserialize_with = "duration")]
    pub min: Duration,
    /// Longest hold.
    #[serde(deserialize_with = "duration")]
    pub max: Duration,
}

/// One workload: its labels and share of the requests.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Its name in the report.
    pub name: String,
    /// Relative share of the requests (> 0).
    pub weight: f64,
    /// Flow labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Tokens per request (default 1).
    #[serde(default)]
    pub tokens: Option<f64>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

impl FlowScenario {
    /// Parses and checks a scenario file's text; errors name the field.
    pub fn parse(text: &str) -> Result<FlowScenario, String> {
        let s: FlowScenario = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if !(s.rate.is_finite() && s.rate > 0.0 && s.rate <= 1e6) {
            return Err("rate: must be > 0 and at most 1000000".into());
        }
        if s.duration.is_zero() {
            return Err("duration: must be > 0".into());
        }
        if s.wait > Duration::from_secs(3600) {
            return Err("wait: must be at most 1h".into());
        }
        if s.workloads.is_empty() {
            return Err("workloads: at least one is needed".into());
        }
        for (i, w) in s.workloads.iter().enumerate() {
            if !(w.weight.is_finite() && w.weight > 0.0) {
                return Err(format!("workloads[{i}].weight: must be > 0"));
            }
            if w.tokens.is_some_and(|t| !(t.is_finite() && t >= 0.0)) {
                return Err(format!("workloads[{i}].tokens: must be >= 0"));
            }
        }
        match (s.kind, s.hold) {
            (Kind::Concurrency, None) => {
                return Err("hold: a concurrency scenario needs { min, max }".into())
            }
            (Kind::Concurrency, Some(h)) if h.min > h.max => {
                return Err("hold: min must be at most max".into())
            }
            (Kind::Quota, Some(_)) => return Err("hold: only for concurrency scenarios".into()),
            _ => {}
        }
        Ok(s)
    }
}

/// Per-workload figures.
#[derive(Debug, Serialize)]
pub struct WorkloadReport {
    /// The workload's name.
    pub name: String,
    /// Requests sent.
    pub sent: u64,
    /// Requests admitted.
    pub admitted: u64,
    /// Admitted per second of the run.
    pub admitted_per_sec: f64,
    /// Tokens admitted.
    pub admitted_tokens: f64,
    /// Its share of all admitted tokens (0..1).
    pub admitted_token_share: f64,
    /// Time to an admitting answer, p50, milliseconds.
    pub wait_p50_ms: f64,
    /// Time to an admitting answer, p99, milliseconds.
    pub wait_p99_ms: f64,
    /// Rejections by refusal (`exhausted`, `timed_out`, ...; `rejected` when the server
    /// gave none), and `error` for requests that got no decision.
    pub rejected: BTreeMap<String, u64>,
}

/// A run's figures.
#[derive(Debug, Serialize)]
pub struct FlowReport {
    /// Quota or concurrency.
    pub kind: Kind,
    /// Seconds from the first request to the last answer.
    pub elapsed_secs: f64,
    /// Per workload, in scenario order.
    pub workloads: Vec<WorkloadReport>,
    /// Admitted tokens per second, all workloads.
    pub admitted_tokens_per_sec: f64,
    /// The scenario's `quota`, if given.
    pub quota: Option<f64>,
    /// Admitted tokens per second over `quota`.
    pub admitted_over_quota: Option<f64>,
    /// Concurrency runs: hold time p50/p99/max, milliseconds.
    pub hold_ms: Option<[f64; 3]>,
    /// Concurrency runs: most flows in flight at once (client side).
    pub max_in_flight: Option<u64>,
    /// Concurrency runs: mean flows in flight over the sending phase (sampled every ms).
    pub mean_in_flight: Option<f64>,
    /// The scenario's `limit`, if given.
    pub limit: Option<f64>,
    /// `FLOW_END`s whose flow the server no longer knew, or that failed.
    pub flow_end_unknown: u64,
}

struct Tally {
    sent: u64,
    admitted: u64,
    admitted_tokens: f64,
    wait_us: Histogram<u64>,
    rejected: BTreeMap<String, u64>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 1 h: constant, valid bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .or_else(|_| Histogram::new(3))
        .unwrap_or_else(|_| unreachable!("3 significant figures is valid"))
}

/// Runs `scenario` against the binary protocol at `addr` and reports.
pub fn run(
    addr: &str,
    access: &BinaryAccess,
    scenario: &FlowScenario,
    seed: u64,
) -> Result<FlowReport, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_async(addr, access, scenario, seed))
}

/// Requests in flight the flows client asks for: the server's default `max_in_flight`.
const MAX_IN_FLIGHT: usize = 4096;

async fn run_async(
    addr: &str,
    access: &BinaryAccess,
    s: &FlowScenario,
    seed: u64,
) -> Result<FlowReport, String> {
    let mut cfg = ClientConfig::new(addr.to_string(), FailMode::Closed);
    access.apply(&mut cfg);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.client_name = "tollgate-loadgen-flows".into();
    // Every request may wait up to its budget on the server, so `rate × wait` of them are in
    // flight at once. The client's default cap (1,024) would hold the rest back in the client,
    // where their budgets run without the server seeing them: ask for as many as the server
    // allows (the client takes the smaller of this and HELLO's `max_in_flight`, 4,096 by
    // default), and say when even that is too few.
    cfg.max_in_flight = MAX_IN_FLIGHT;
    let needed = s.rate * s.wait.as_secs_f64();
    if needed > MAX_IN_FLIGHT as f64 {
        eprintln!(
            "warning: rate x wait = {needed:.0} requests may be in flight at once, above the \
             connection's {MAX_IN_FLIGHT}: some wait in the client (their waits then include \
             that), or the server answers OVERLOADED (counted as error)"
        );
    }
    let client = Rc::new(Client::connect(cfg).await.map_err(|e| e.to_string())?);
    let tallies: Rc<RefCell<Vec<Tally>>> = Rc::new(RefCell::new(
        s.workloads
            .iter()
            .map(|_| Tally {
                sent: 0,
                admitted: 0,
                admitted_tokens: 0.0,
                wait_us: histogram(),
                rejected: BTreeMap::new(),
            })
            .collect(),
    ));
    let holds = Rc::new(RefCell::new(histogram()));
    let in_flight = Rc::new(Cell::new(0u64));
    let max_in_flight = Rc::new(Cell::new(0u64));
    let unknown_ends = Rc::new(Cell::new(0u64));
    let total_weight: f64 = s.workloads.iter().map(|w| w.weight).sum();
    let mut rng = StdRng::seed_from_u64(seed);
    let period = Duration::from_secs_f64(1.0 / s.rate);
    let started = Instant::now();
    let sending_ends = started + s.duration;
    let mut tasks = Vec::new();
    let (mut samples, mut sample_sum) = (0u64, 0u64);
    let mut next_sample = started;
    let mut n: u32 = 0;
    loop {
        let due = started + period * n;
        if due >= sending_ends {
            break;
        }
        // Sample in-flight flows every millisecond while waiting for the next send.
        while next_sample < due {
            tokio::time::sleep_until(next_sample.into()).await;
            samples += 1;
            sample_sum += in_flight.get();
            next_sample += Duration::from_millis(1);
        }
        tokio::time::sleep_until(due.into()).await;
        n += 1;
        let mut pick = rng.gen::<f64>() * total_weight;
        let index = s
            .workloads
            .iter()
            .position(|w| {
                pick -= w.weight;
                pick < 0.0
            })
            .unwrap_or(s.workloads.len() - 1);
        let w = &s.workloads[index];
        let tokens = w.tokens.unwrap_or(1.0);
        let mut req = CheckRequest::new(s.control_point.clone()).wait(s.wait);
        req.tokens = w.tokens;
        for (k, v) in &w.labels {
            req = req.label(k.clone(), v.clone());
        }
        let hold = s.hold.map(|h| {
            if h.max > h.min {
                rng.gen_range(h.min..=h.max)
            } else {
                h.min
            }
        });
        let (client, tallies, holds, in_flight, max_in_flight, unknown_ends) = (
            client.clone(),
            tallies.clone(),
            holds.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            unknown_ends.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            let sent_at = Instant::now();
            let result = client.check(&req).await;
            let waited = sent_at.elapsed();
            let ids: Vec<u64> = {
                let mut t = tallies.borrow_mut();
                let t = &mut t[index];
                t.sent += 1;
                match &result {
                    Ok(reply) if reply.accepted() => {
                        t.admitted += 1;
                        t.admitted_tokens += tokens;
                        let _ = t.wait_us.record(waited.as_micros().max(1) as u64);
                        reply.flow_ids().collect()
                    }
                    Ok(reply) => {
                        let why = reply.refusal().map_or("rejected", |r| r.as_str());
                        *t.rejected.entry(why.to_string()).or_default() += 1;
                        Vec::new()
                    }
                    Err(_) => {
                        *t.rejected.entry("error".to_string()).or_default() += 1;
                        Vec::new()
                    }
                }
            };
            let Some(hold) = hold else { return };
            if ids.is_empty() {
                return;
            }
            in_flight.set(in_flight.get() + 1);
            max_in_flight.set(max_in_flight.get().max(in_flight.get()));
            let held_from = Instant::now();
            tokio::time::sleep(hold).await;
            // Over once its end is sent: the server frees the slot only after, so this
            // count never runs ahead of the server's.
            in_flight.set(in_flight.get() - 1);
            let ended = client.flow_end(&ids).await;
            let _ = holds
                .borrow_mut()
                .record(held_from.elapsed().as_micros().max(1) as u64);
            let all_ended = ended.is_ok_and(|st| {
                st.iter()
                    .all(|s| *s == tollgate_protocol::FlowEndStatus::Ended)
            });
            if !all_ended {
                unknown_ends.set(unknown_ends.get() + 1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let tallies = tallies.borrow();
    let all_tokens: f64 = tallies.iter().map(|t| t.admitted_tokens).sum();
    let ms = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let workloads = s
        .workloads
        .iter()
        .zip(tallies.iter())
        .map(|(w, t)| WorkloadReport {
            name: w.name.clone(),
            sent: t.sent,
            admitted: t.admitted,
            admitted_per_sec: t.admitted as f64 / s.duration.as_secs_f64(),
            admitted_tokens: t.admitted_tokens,
            admitted_token_share: if all_tokens > 0.0 {
                t.admitted_tokens / all_tokens
            } else {
                0.0
            },
            wait_p50_ms: ms(&t.wait_us, 0.5),
            wait_p99_ms: ms(&t.wait_us, 0.99),
            rejected: t.rejected.clone(),
        })
        .collect();
    let tokens_per_sec = all_tokens / s.duration.as_secs_f64();
    let concurrency = s.kind == Kind::Concurrency;
    let holds = holds.borrow();
    Ok(FlowReport {
        kind: s.kind,
        elapsed_secs: elapsed,
        workloads,
        admitted_tokens_per_sec: tokens_per_sec,
        quota: s.quota,
        admitted_over_quota: s.quota.filter(|q| *q > 0.0).map(|q| tokens_per_sec / q),
        hold_ms: concurrency.then(|| [ms(&holds, 0.5), ms(&holds, 0.99), ms(&holds, 1.0)]),
        max_in_flight: concurrency.then(|| max_in_flight.get()),
        mean_in_flight: concurrency.then(|| {
            if samples == 0 {
                0.0
            } else {
                sample_sum as f64 / samples as f64
            }
        }),
        limit: s.limit,
        flow_end_unknown: unknown_ends.get(),
    })
}

impl FlowReport {
    /// The human table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>10} {:>8} {:>10} {:>10}  rejected",
            "workload", "sent", "admitted", "admitted/s", "share", "wait p50", "wait p99"
        );
        for w in &self.workloads {
            let rejected: Vec<String> =
                w.rejected.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(
                out,
                "{:<16} {:>8} {:>9} {:>10.1} {:>7.1}% {:>8.1}ms {:>8.1}ms  {}",
                w.name,
                w.sent,
                w.admitted,
                w.admitted_per_sec,
                w.admitted_token_share * 100.0,
                w.wait_p50_ms,
                w.wait_p99_ms,
                if rejected.is_empty() {
                    "-".to_string()
                } else {
                    rejected.join(" ")
                }
            );
        }
        let _ = write!(
            out,
            "admitted tokens/s: {:.1}",
            self.admitted_tokens_per_sec
        );
        if let (Some(q), Some(r)) = (self.quota, self.admitted_over_quota) {
            let _ = write!(out, " (quota {q}: {:.1}%)", r * 100.0);
        }
        let _ = writeln!(out);
        if let (Some(h), Some(max), Some(mean)) =
            (self.hold_ms, self.max_in_flight, self.mean_in_flight)
        {
            let _ = write!(
                out,
                "hold p50 {:.1}ms p99 {:.1}ms max {:.1}ms; in flight max {max} mean {mean:.2}",
                h[0], h[1], h[2]
            );
            if let Some(limit) = self.limit {
                let _ = write!(out, " (limit {limit})");
            }
            let _ = writeln!(out, "; unknown flow ends {}", self.flow_end_unknown);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_checked_field_by_field() {
        let ok = "kind: quota\ncontrol_point: llm\nrate: 10\nduration: 1s\nwait: 500ms\nworkloads: [ { name: a, weight: 1 } ]\n";
        let s = FlowScenario::parse(ok).unwrap();
        assert_eq!(s.wait, Duration::from_millis(500));
        for (text, field) in [
            (ok.replace("rate: 10", "rate: 0"), "rate:"),
            (ok.replace("duration: 1s", "duration: 0s"), "duration:"),
            (ok.replace("weight: 1", "weight: -1"), "workloads[0].weight"),
            (ok.replace("kind: quota", "kind: concurrency"), "hold:"),
            (format!("{ok}hold: {{ min: 1s, max: 2s }}\n"), "hold:"),
        ] {
            let e = FlowScenario::parse(&text).unwrap_err();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        let bad_hold =
            ok.replace("kind: quota", "kind: concurrency") + "hold: { min: 2s, max: 1s }\n";
        assert!(FlowScenario::parse(&bad_hold)
            .unwrap_err()
            .contains("min must be"));
    }
}
