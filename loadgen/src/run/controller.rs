//! The controller, on the calling thread: ends the measured phase on time, samples the
//! interval tallies (the report's timeline) and draws the progress line until every task has
//! finished.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::run::shared::Shared;
use crate::run::RunConfig;
use crate::stats::Tally;
use crate::timeline::Sample;

/// How often the controller wakes to check for the end of the run (and draw progress).
const CONTROLLER_TICK: Duration = Duration::from_millis(50);

/// Sampling period of the timeline when there is no progress line.
const DEFAULT_SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Draws progress and ends the measured phase; returns, once all `tasks` have finished, the
/// timeline: one sample per progress period (1 s when quiet) of the measured phase. The last
/// sample is taken after every task finished, so the samples add up to the run's totals.
pub(super) fn controller(cfg: &RunConfig, shared: &Shared, tasks: usize) -> Vec<Sample> {
    let tty = std::io::stderr().is_terminal();
    let period = cfg.progress.unwrap_or(DEFAULT_SAMPLE_PERIOD).as_nanos() as u64;
    let mut last_tick = shared.now_ns();
    let mut drew = false;
    let mut timeline = Vec::new();
    loop {
        std::thread::sleep(CONTROLLER_TICK);
        let now = shared.now_ns();
        if now >= shared.measure_until_ns {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let finished = shared.tasks_done.load(Ordering::Relaxed) >= tasks;
        if now.saturating_sub(last_tick) >= period || finished {
            let by_target = shared.recorder.take_interval();
            let interval = Tally::merged(&by_target);
            let secs = now.saturating_sub(last_tick) as f64 / 1e9;
            // Only measured requests are recorded: the part of the interval before the
            // measured phase began counted nothing.
            if now > shared.measure_from_ns {
                let from = last_tick.max(shared.measure_from_ns);
                let end_s = (now - shared.measure_from_ns) as f64 / 1e9;
                let measured_secs = now.saturating_sub(from) as f64 / 1e9;
                timeline.push(Sample::of(&by_target, end_s, measured_secs));
            }
            last_tick = now;
            if cfg.progress.is_some() {
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
    timeline
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
