//! The state the load tasks and the controller share once the clock has started.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::Mutex;
use std::time::Instant;

use crate::accuracy::Ledger;
use crate::drivers::CallError;
use crate::run::{RunConfig, Stop};
use crate::stats::Recorder;

/// State shared by the tasks and the controller.
pub(super) struct Shared {
    /// Latency histograms and outcome counters, striped per task.
    pub(super) recorder: Recorder,
    /// Admissions per key, for the accuracy report.
    pub(super) ledger: Ledger,
    /// Set by the controller at the end of the duration, or by the task that issues the last
    /// of `Stop::Requests`; every task stops at its next request.
    pub(super) stop: AtomicBool,
    /// Measured requests issued (for `Stop::Requests`).
    pub(super) issued: AtomicU64,
    /// Tasks that have finished (the controller waits for all).
    pub(super) tasks_done: AtomicUsize,
    /// The first failed call's error, for the report.
    pub(super) first_error: Mutex<Option<String>>,
    /// Start of the run: every task's clock.
    epoch: Instant,
    /// End of the warm-up, ns since `epoch`.
    pub(super) measure_from_ns: u64,
    /// End of the measured phase for `Stop::Duration`, ns since `epoch`.
    pub(super) measure_until_ns: u64,
}

impl Shared {
    /// Starts the clock now. `ledger_keys` is the key space the accuracy ledger tracks (0 when
    /// the run has no limit to measure against).
    pub(super) fn new(cfg: &RunConfig, ledger_keys: usize) -> Shared {
        let measure_from_ns = cfg.warmup.as_nanos() as u64;
        Shared {
            recorder: Recorder::new(),
            ledger: Ledger::new(ledger_keys),
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
        }
    }

    /// Nanoseconds since the run started.
    pub(super) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Keeps the first error of the run.
    pub(super) fn note_error(&self, e: &CallError) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(e.clone());
        }
    }
}
