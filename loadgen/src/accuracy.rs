//! How many admissions a limit allows, and how close a run came to it. Pure: times are
//! nanoseconds since the run's epoch, passed in; nothing here reads a clock.
//!
//! A token bucket that starts full (capacity `C`), fills continuously with `F` tokens per
//! interval `I`, and refuses a take it cannot cover admits at most
//!
//! ```text
//! allowed(key) = C + F * (t_last - t_first) / I        (tokens)
//! ```
//!
//! over a window `[t_first, t_last]`. The loadgen takes, per key actually used,
//! `t_first` = when the first request for the key was *sent* and `t_last` = when the reply to
//! the last *admitted* request for the key was *received*. Both are noted when the answer
//! arrives ([`Ledger::answered`], one update of the key's record per request): every request
//! the loadgen sends gets an answer (its reply, an error or a timeout; a connection that fails
//! answers its requests in flight as errors), and any answer, refusals and errors included,
//! counts its send time, since the request may have reached the server and made its bucket.
//! Every admission the server (or servers) made for that key happened inside that window, so
//! the window can only be wider than the server's, and `admitted / allowed <= 1` for any
//! correct limiter, however many targets shared the key. A ratio above 1 is over-admission:
//! the error of lazy sync in a cluster, or a bug. A key whose bucket existed before the run (a
//! previous run used the same key) starts below full and only lowers the ratio.
//!
//! The ledger is shared by every load task: one slot per key index, updated with relaxed
//! atomics (the totals are read after every task has finished).

use std::sync::atomic::{AtomicU64, Ordering};

/// The limit the target enforces, as the loadgen was told (`--capacity`, `--fill-amount`,
/// `--interval`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Limit {
    /// Tokens a new bucket holds.
    pub capacity: f64,
    /// Tokens added per interval.
    pub fill_amount: f64,
    /// The fill interval in nanoseconds (> 0).
    pub interval_ns: u64,
}

impl Limit {
    /// Tokens the limit allows over a window of `elapsed_ns` for one key that starts full.
    pub fn allowed(&self, elapsed_ns: u64) -> f64 {
        if self.interval_ns == 0 {
            return self.capacity;
        }
        self.capacity + self.fill_amount * elapsed_ns as f64 / self.interval_ns as f64
    }
}

/// Sentinel for "no request sent yet" in [`Ledger`]'s first-sent slots.
const NEVER: u64 = u64::MAX;

/// Admitted tokens are summed as integers in these units per token, so atomics can add them:
/// a thousandth of a token is finer than any `--tokens` anyone sets.
const MILLI: f64 = 1000.0;

/// Per-key admission record of one run: one `Slot` per key index.
pub struct Ledger {
    slots: Vec<Slot>,
}

/// One key's record. The three fields share a cache line (32-byte aligned, so a slot never
/// straddles two): with a million keys drawn at random, an update costs one cache miss, not
/// three.
#[repr(align(32))]
struct Slot {
    /// Tokens admitted, in thousandths.
    admitted_milli: AtomicU64,
    /// Earliest send time ([`NEVER`] if unused).
    first_sent_ns: AtomicU64,
    /// Latest reply time of an admitted request (0 if none admitted).
    last_admit_ns: AtomicU64,
}

/// The accuracy of a run: admitted against allowed, overall and for the worst key.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AccuracyReport {
    /// Keys that got at least one request.
    pub keys_used: u64,
    /// Tokens admitted, summed over keys.
    pub admitted_tokens: f64,
    /// Tokens the limit allows, summed over used keys.
    pub allowed_tokens: f64,
    /// `admitted_tokens / allowed_tokens` (0 when nothing was allowed).
    pub ratio: f64,
    /// The key with the highest admitted/allowed ratio, as `user-<n>` index.
    pub worst_key: Option<u64>,
    /// That key's ratio.
    pub worst_ratio: f64,
    /// That key's admitted tokens.
    pub worst_admitted_tokens: f64,
    /// That key's allowed tokens.
    pub worst_allowed_tokens: f64,
}

impl Ledger {
    /// A ledger for keys `0..keys`.
    pub fn new(keys: usize) -> Ledger {
        Ledger {
            slots: (0..keys)
                .map(|_| Slot {
                    admitted_milli: AtomicU64::new(0),
                    first_sent_ns: AtomicU64::new(NEVER),
                    last_admit_ns: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Starts loading `key`'s record into the cache, so that [`Ledger::answered`] a little
    /// later does not wait for memory. With a million keys the ledger (32 MiB) is far beyond
    /// the caches, and each update was a miss paid in line: over a quarter of the loadgen's
    /// CPU at 8 x 64 over 1M keys (docs/performance.md, section:binary-costs). A hint: it
    /// changes nothing, and an unknown key is ignored.
    #[inline]
    pub fn prefetch(&self, key: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(slot) = self.slots.get(key) {
            // SAFETY: PREFETCHT0 only hints the cache; it reads nothing into the program and
            // cannot fault, and the address is a live slot's.
            unsafe {
                std::arch::x86_64::_mm_prefetch(
                    std::ptr::from_ref(slot).cast::<i8>(),
                    std::arch::x86_64::_MM_HINT_T0,
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// Notes the answer to a request for `key` that was sent at `sent_ns`: `admitted` is
    /// `Some(tokens)` when it was admitted, its reply received at `reply_ns`, and `None` when
    /// it was refused or failed. Any answer opens the key's window at its send time; only an
    /// admission adds tokens and extends the window's end.
    pub fn answered(&self, key: usize, sent_ns: u64, admitted: Option<f64>, reply_ns: u64) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        // Cheap checks first: after a key's first answers the bounds rarely move.
        if slot.first_sent_ns.load(Ordering::Relaxed) > sent_ns {
            slot.first_sent_ns.fetch_min(sent_ns, Ordering::Relaxed);
        }
        if let Some(tokens) = admitted {
            slot.admitted_milli
                .fetch_add((tokens * MILLI).round() as u64, Ordering::Relaxed);
            if slot.last_admit_ns.load(Ordering::Relaxed) < reply_ns {
                slot.last_admit_ns.fetch_max(reply_ns, Ordering::Relaxed);
            }
        }
    }

    /// Compares what was admitted with what `limit` allows.
    pub fn report(&self, limit: &Limit) -> AccuracyReport {
        let mut r = AccuracyReport {
            keys_used: 0,
            admitted_tokens: 0.0,
            allowed_tokens: 0.0,
            ratio: 0.0,
            worst_key: None,
            worst_ratio: 0.0,
            worst_admitted_tokens: 0.0,
            worst_allowed_tokens: 0.0,
        };
        for (key, slot) in self.slots.iter().enumerate() {
            let first = slot.first_sent_ns.load(Ordering::Relaxed);
            if first == NEVER {
                continue;
            }
            r.keys_used += 1;
            let admitted = slot.admitted_milli.load(Ordering::Relaxed) as f64 / MILLI;
            let last = slot.last_admit_ns.load(Ordering::Relaxed);
            let allowed = limit.allowed(last.saturating_sub(first));
            r.admitted_tokens += admitted;
            r.allowed_tokens += allowed;
            let ratio = if allowed > 0.0 {
                admitted / allowed
            } else {
                0.0
            };
            if r.worst_key.is_none() || ratio > r.worst_ratio {
                r.worst_key = Some(key as u64);
                r.worst_ratio = ratio;
                r.worst_admitted_tokens = admitted;
                r.worst_allowed_tokens = allowed;
            }
        }
        if r.allowed_tokens > 0.0 {
            r.ratio = r.admitted_tokens / r.allowed_tokens;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    /// A reference token bucket on a virtual clock, to drive the ledger like a server would.
    struct Bucket {
        tokens: f64,
        at: u64,
    }

    impl Bucket {
        fn take(&mut self, limit: &Limit, now: u64, n: f64) -> bool {
            let fill = limit.fill_amount * (now - self.at) as f64 / limit.interval_ns as f64;
            self.tokens = (self.tokens + fill).min(limit.capacity);
            self.at = now;
            if self.tokens >= n {
                self.tokens -= n;
                true
            } else {
                false
            }
        }
    }

    #[test]
    fn a_prefetch_records_nothing_and_ignores_unknown_keys() {
        let limit = Limit {
            capacity: 10.0,
            fill_amount: 10.0,
            interval_ns: SEC,
        };
        let ledger = Ledger::new(4);
        ledger.answered(1, 0, Some(2.0), MS);
        let before = ledger.report(&limit);
        for key in [0, 1, 3, 4, usize::MAX] {
            ledger.prefetch(key);
        }
        assert_eq!(ledger.report(&limit), before);
        assert_eq!(before.keys_used, 1);
    }

    #[test]
    fn allowed_is_capacity_plus_fill_over_the_window() {
        let limit = Limit {
            capacity: 100.0,
            fill_amount: 10.0,
            interval_ns: SEC,
        };
        assert_eq!(limit.allowed(0), 100.0);
        assert_eq!(limit.allowed(5 * SEC), 150.0);
        assert_eq!(limit.allowed(500 * MS), 105.0);
    }

    #[test]
    fn a_saturated_exact_limiter_scores_close_to_one() {
        let limit = Limit {
            capacity: 10.0,
            // 0.125 tokens per ms: exact in binary, so the reference bucket never loses a
            // token to rounding.
            fill_amount: 125.0,
            interval_ns: SEC,
        };
        let ledger = Ledger::new(2);
        let mut bucket = Bucket {
            tokens: limit.capacity,
            at: 0,
        };
        // Key 1 hammered every 1 ms for 10 s, 50 us round trip; key 0 never used.
        let mut now = 0;
        while now < 10 * SEC {
            let admitted = bucket.take(&limit, now + 25_000, 1.0).then_some(1.0);
            ledger.answered(1, now, admitted, now + 50_000);
            now += MS;
        }
        let r = ledger.report(&limit);
        assert_eq!(r.keys_used, 1);
        assert_eq!(r.worst_key, Some(1));
        // 10 + 125/s * ~10 s = ~1260 allowed; the exact bucket admits just under that.
        assert!(
            r.allowed_tokens > 1259.0 && r.allowed_tokens < 1261.0,
            "{r:?}"
        );
        assert!(r.ratio <= 1.0 && r.ratio > 0.99, "{r:?}");
        assert_eq!(r.ratio, r.worst_ratio);
    }

    #[test]
    fn over_admission_shows_above_one_and_names_the_worst_key() {
        let limit = Limit {
            capacity: 5.0,
            fill_amount: 1.0,
            interval_ns: SEC,
        };
        let ledger = Ledger::new(3);
        // Two targets each holding a full bucket for key 2 (no sync): each admits 5 at t=0.
        for _ in 0..10 {
            ledger.answered(2, 0, Some(1.0), 100);
        }
        // Key 0: 3 admissions over 2 s, well within 5 + 2.
        for i in 0..3 {
            ledger.answered(0, i * SEC, Some(1.0), i * SEC);
        }
        let r = ledger.report(&limit);
        assert_eq!(r.keys_used, 2);
        assert_eq!(r.worst_key, Some(2));
        assert_eq!(r.worst_admitted_tokens, 10.0);
        assert!((r.worst_allowed_tokens - 5.0).abs() < 1e-3);
        assert!((r.worst_ratio - 2.0).abs() < 1e-3);
        // Overall: 13 admitted of (5 + ~0) + (5 + 2) allowed.
        assert!((r.allowed_tokens - 12.0).abs() < 1e-3, "{r:?}");
        assert!(r.ratio > 1.0);
    }

    #[test]
    fn tokens_per_request_scale_admissions_and_unused_or_rejected_keys_count_right() {
        let limit = Limit {
            capacity: 10.0,
            fill_amount: 0.0,
            interval_ns: SEC,
        };
        let ledger = Ledger::new(4);
        ledger.answered(3, 7, Some(4.0), 9);
        ledger.answered(3, 7, Some(4.0), 8);
        // Key 1: answered but never admitted (refused, or failed): allowed is the capacity
        // alone.
        ledger.answered(1, 5, None, 6);
        let r = ledger.report(&limit);
        assert_eq!(r.keys_used, 2);
        assert_eq!(r.admitted_tokens, 8.0);
        assert_eq!(r.allowed_tokens, 20.0);
        assert_eq!(r.worst_key, Some(3));
        assert!((r.worst_ratio - 0.8).abs() < 1e-9);
        // Out-of-range keys are ignored, not a panic.
        ledger.answered(99, 1, Some(1.0), 1);
    }

    #[test]
    fn earliest_send_and_latest_admission_win_regardless_of_order() {
        let limit = Limit {
            capacity: 0.0,
            fill_amount: 1.0,
            interval_ns: SEC,
        };
        let ledger = Ledger::new(1);
        // Answers arrive out of send order; a refusal's send time opens the window too.
        ledger.answered(0, 3 * SEC, Some(1.0), 4 * SEC);
        ledger.answered(0, SEC, None, 5 * SEC);
        ledger.answered(0, 2 * SEC, Some(1.0), 2 * SEC);
        let r = ledger.report(&limit);
        assert!((r.allowed_tokens - 3.0).abs() < 1e-9, "{r:?}");
    }
}
