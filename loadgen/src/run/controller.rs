//! The controller, on the calling thread: ends the measured phase on time and draws the
//! progress line until every task has finished.

use std::io::{IsTerminal, Write as _};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::run::shared::Shared;
use crate::run::RunConfig;
use crate::stats::Tally;

/// How often the controller wakes to check for the end of the run (and draw progress).
const CONTROLLER_TICK: Duration = Duration::from_millis(50);

/// Draws progress and ends the measured phase; returns once all `tasks` have finished.
pub(super) fn controller(cfg: &RunConfig, shared: &Shared, tasks: usize) {
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
