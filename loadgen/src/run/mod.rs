//! One load run: connect, warm up, drive load (closed or open loop), report.
//!
//! ```text
//!  connection slot c (x --connections), one Conn per target
//!    ├─ task (x --pipeline): loop { pick key/mix/target ─ send ─ await ─ record }
//!    └─ ...
//!  controller: timeline sample and progress line every period; sets `stop` at the end
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
//!
//! # Layout
//! - [`config`]: [`RunConfig`], [`Op`], [`Stop`], their validation, [`RunError`].
//! - `plan`: what every load thread needs, fixed before the run (request templates, sampler).
//! - `shared`: the state the tasks and the controller share once the clock starts.
//! - `thread`: one load thread (its own tokio runtime): dial, report ready, run its tasks.
//! - `task`: one load task's request loop, pacing and batch fan-out.
//! - `event_loop`: the closed-loop driver for one `tollgate` target (checks, batches, pings) or
//!   one `redis` target (single checks, pings): one task per connection slot drives its
//!   sockets directly.
//! - `controller`: ends the measured phase, samples the timeline, draws the progress line.
//!
//! [`run_blocking`] below wires them together: phase 1 dials everything (unmeasured), phase 2
//! starts the clock and the tasks, and the report is assembled from what the tasks recorded
//! ([`Report::from_run`]).

pub mod config;
mod controller;
mod event_loop;
mod plan;
mod shared;
mod task;
mod thread;

use std::sync::Arc;

pub use config::{Op, PingSpread, RunConfig, RunError, Stop, DEFAULT_LIMIT, MAX_BATCH};

use crate::report::Report;
use crate::timeline::Detail;
use plan::Plan;
use shared::Shared;

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
    let plan = Arc::new(Plan::new(&cfg, limit));
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
            .spawn(move || thread::load_thread(&plan, &slots, &ready_tx, go_rx))
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
    // Without a limit there is no accuracy report: an empty ledger ignores every update.
    let ledger_keys = if limit.is_some() {
        plan.sampler.key_space()
    } else {
        0
    };
    let shared = Arc::new(Shared::new(&cfg, ledger_keys));
    for g in go {
        let _ = g.send(shared.clone());
    }
    let timeline = controller::controller(&cfg, &shared, cfg.connections * cfg.pipeline);
    for j in joins {
        let _ = j.join();
    }
    let end_ns = shared.now_ns();
    let by_target = shared.recorder.total_by_target();
    let tally = crate::stats::Tally::merged(&by_target);
    let duration_s = end_ns.saturating_sub(shared.measure_from_ns) as f64 / 1e9;
    let accuracy = limit.map(|l| shared.ledger.report(&l));
    let first_error = shared
        .first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut report = Report::from_run(&cfg, limit, &tally, duration_s, accuracy, first_error);
    report.detail = Detail::new(timeline, &by_target, duration_s);
    Ok(report)
}
