//! Logging refusals at a bounded rate: a flood of refused peers (connection caps, wrong API
//! keys) cannot flood the log. One log line at most per [`REFUSAL_LOG_PERIOD`], carrying how
//! many refusals were not logged since.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Refusals of one kind are logged at most this often (per node).
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);

/// When a refusal of one kind was last logged, and how many were not since. Shared by the
/// node's shards (atomics: touched per refusal, never per request).
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// When a refusal was last logged (clock ns; 0 = never).
    last_log_ns: AtomicU64,
    /// Refusals since the last one logged.
    unlogged: AtomicU64,
}

impl RefusalLog {
    /// Counts a refusal; returns how many to report if this one is to be logged now (this
    /// one included), None while the last log is under [`REFUSAL_LOG_PERIOD`] old.
    pub fn to_log(&self, now_ns: u64) -> Option<u64> {
        let period = u64::try_from(REFUSAL_LOG_PERIOD.as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_log_ns.load(Ordering::Relaxed);
        let due = last == 0 || now_ns.saturating_sub(last) >= period;
        if due
            && self
                .last_log_ns
                .compare_exchange(last, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unlogged.swap(0, Ordering::Relaxed) + 1);
        }
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_period_with_the_count_since() {
        let log = RefusalLog::default();
        let second = 1_000_000_000u64;
        assert_eq!(log.to_log(5 * second), Some(1));
        assert_eq!(log.to_log(5 * second + 1), None);
        assert_eq!(log.to_log(5 * second + second / 2), None);
        assert_eq!(
            log.to_log(6 * second),
            Some(3),
            "two unlogged, and this one"
        );
        assert_eq!(log.to_log(6 * second + 10), None);
    }
}
