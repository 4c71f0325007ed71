//! The token bucket, with Aperture's rate-limiter semantics, on a caller-supplied clock.
//!
//! Time is a `u64` of nanoseconds on any monotonic clock the caller chooses (the server uses
//! its own process-start epoch; tests use a virtual clock). Nothing here reads a clock.
//!
//! Semantics (see ../shared/aperture-compat.md, "Bucket"):
//! - a new key starts full;
//! - `continuous_fill` adds `fill_amount * elapsed / interval`; otherwise only whole
//!   intervals add `fill_amount` each;
//! - the level is capped at `capacity`;
//! - a take of `n` tokens that would go negative takes nothing and reports the wait until
//!   `n` tokens exist; tokens handed back (rollback) are still capped.
//! - `delay_initial_fill`: a new bucket starts full but does not fill until the time it
//!   would take to fill an empty bucket has passed, so the first interval cannot admit
//!   a full bucket *plus* a fill.

use crate::tokens::Tokens;

/// Wait reported when a take can never succeed (more tokens than the capacity, or no fill).
pub const WAIT_FOREVER: u64 = u64::MAX;

/// The shape of one bucket: everything except its level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketParams {
    /// Maximum tokens the bucket holds; a new bucket starts with this many.
    pub capacity: f64,
    /// Tokens added per `interval_ns`.
    pub fill_amount: f64,
    /// The fill period in nanoseconds (> 0).
    pub interval_ns: u64,
    /// true: fill continuously; false: whole intervals only.
    pub continuous_fill: bool,
    /// true: a new bucket waits capacity/fill_amount intervals before it starts filling.
    pub delay_initial_fill: bool,
}

impl BucketParams {
    /// The same bucket with capacity and fill multiplied (an override's limit_scale_factor).
    pub fn scaled(self, factor: f64) -> BucketParams {
        BucketParams {
            capacity: self.capacity * factor,
            fill_amount: self.fill_amount * factor,
            ..self
        }
    }

    /// Why a key override's `factor` cannot scale these parameters (a valid bucket): the
    /// scaled bucket would be infinite, so admit everything, or hold nothing. None: it can.
    /// The policy file and a runtime limit change are held to this same rule.
    pub fn scale_problem(&self, factor: f64) -> Option<&'static str> {
        let scaled = self.scaled(factor);
        if !scaled.capacity.is_finite() || !scaled.fill_amount.is_finite() {
            Some("bucket_capacity or fill_amount times this factor is not a finite number")
        } else if scaled.capacity <= 0.0 {
            Some("bucket_capacity times this factor rounds to 0")
        } else {
            None
        }
    }

    /// Tokens per nanosecond.
    fn fill_rate(&self) -> f64 {
        self.fill_amount / self.interval_ns as f64
    }

    /// Time a new bucket waits before filling when `delay_initial_fill` is set.
    fn initial_fill_delay_ns(&self) -> u64 {
        if !self.delay_initial_fill || self.fill_amount <= 0.0 {
            return 0;
        }
        let intervals = (self.capacity / self.fill_amount).ceil();
        saturating_f64_to_u64(intervals * self.interval_ns as f64)
    }
}

/// The level of one bucket. 16 bytes: it is stored once per live key.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    /// Tokens available as of `last_fill_ns`.
    tokens: f64,
    /// The time up to which fills have been credited. May lie in the future while a
    /// delayed initial fill has not started.
    last_fill_ns: u64,
}

/// When a bucket gains tokens, from a given moment ([`TokenBucket::refill`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refill {
    /// Nanoseconds until the next fill is credited: 0 while a continuous fill runs; None
    /// when the bucket is full or never fills.
    pub next_fill_in_ns: Option<u64>,
    /// Nanoseconds until the bucket is full again (0: full now; None: never).
    pub full_in_ns: Option<u64>,
}

impl Refill {
    /// A bucket that never fills.
    pub const NEVER: Refill = Refill {
        next_fill_in_ns: None,
        full_in_ns: None,
    };
}

/// The result of one take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Take {
    /// Whether the tokens were taken (always true for a return, n <= 0).
    pub accepted: bool,
    /// Tokens in the bucket before this take (after the fill up to now).
    pub current: f64,
    /// Tokens left after this take (equals `current` when refused).
    pub remaining: f64,
    /// When refused: nanoseconds until `n` tokens exist, or [`WAIT_FOREVER`]. 0 when accepted.
    pub wait_ns: u64,
}

impl TokenBucket {
    /// A new bucket: full, filling from `now_ns` (or later with `delay_initial_fill`).
    pub fn new(params: &BucketParams, now_ns: u64) -> TokenBucket {
        TokenBucket {
            tokens: params.capacity,
            last_fill_ns: now_ns.saturating_add(params.initial_fill_delay_ns()),
        }
    }

    /// A bucket at an explicit level (replication and tests).
    pub fn with_level(tokens: f64, last_fill_ns: u64) -> TokenBucket {
        TokenBucket {
            tokens,
            last_fill_ns,
        }
    }

    /// Tokens available at `now_ns`, without changing the bucket.
    pub fn level(&self, params: &BucketParams, now_ns: u64) -> f64 {
        let mut copy = *self;
        copy.fill(params, now_ns);
        copy.tokens
    }

    /// Credit fills up to `now_ns`, capped at the capacity. A clock that goes backwards
    /// credits nothing.
    fn fill(&mut self, params: &BucketParams, now_ns: u64) {
        if now_ns > self.last_fill_ns {
            let elapsed = now_ns - self.last_fill_ns;
            if params.continuous_fill {
                self.tokens += params.fill_rate() * elapsed as f64;
                self.last_fill_ns = now_ns;
            } else {
                let intervals = elapsed / params.interval_ns;
                self.tokens += intervals as f64 * params.fill_amount;
                self.last_fill_ns += intervals * params.interval_ns;
            }
        }
        // Capped even when nothing was credited: a bucket still in its delayed initial fill
        // (`last_fill_ns` ahead of now) may hold an older, larger capacity (a limit lowered
        // by a reload or the admin API), and must not admit more than the new one.
        if self.tokens > params.capacity {
            self.tokens = params.capacity;
        }
    }

    /// Take `n` tokens at `now_ns`, or none if fewer than `n` are there.
    pub fn take(&mut self, params: &BucketParams, now_ns: u64, n: Tokens) -> Take {
        self.fill(params, now_ns);
        let n = n.get();
        let current = self.tokens;
        if self.tokens >= n {
            self.tokens -= n;
            return Take {
                accepted: true,
                current,
                remaining: self.tokens,
                wait_ns: 0,
            };
        }
        Take {
            accepted: false,
            current,
            remaining: current,
            wait_ns: self.wait_for(params, now_ns, n),
        }
    }

    /// Hands back `n` tokens taken earlier (another limiter rejected the flow), capped at
    /// the capacity; returns the level after.
    pub fn put_back(&mut self, params: &BucketParams, now_ns: u64, n: Tokens) -> f64 {
        self.fill(params, now_ns);
        self.tokens = (self.tokens + n.get()).min(params.capacity);
        self.tokens
    }

    /// Debit `n` tokens unconditionally (a peer's consumption arriving by replication):
    /// the level may go negative, which is what makes over-admission self-correcting.
    pub fn debit(&mut self, params: &BucketParams, now_ns: u64, n: f64) {
        self.fill(params, now_ns);
        self.tokens = (self.tokens - n).min(params.capacity);
    }

    /// When this bucket next gains tokens and when it is full again, seen from `now_ns`
    /// (the admin API's bucket read). Reads only.
    pub fn refill(&self, params: &BucketParams, now_ns: u64) -> Refill {
        let mut copy = *self;
        copy.fill(params, now_ns);
        if copy.tokens >= params.capacity {
            return Refill {
                next_fill_in_ns: None,
                full_in_ns: Some(0),
            };
        }
        if params.fill_amount <= 0.0 {
            return Refill::NEVER;
        }
        let missing = params.capacity - copy.tokens;
        // Fills are credited from `last_fill_ns`, which lies ahead of now only while a
        // delayed initial fill has not started.
        let starts_in = copy.last_fill_ns.saturating_sub(now_ns);
        if params.continuous_fill {
            let to_full = saturating_f64_to_u64((missing / params.fill_rate()).ceil());
            return Refill {
                next_fill_in_ns: Some(starts_in),
                full_in_ns: Some(starts_in.saturating_add(to_full)),
            };
        }
        // Whole intervals from `last_fill_ns`, the last boundary credited.
        let at = |intervals: f64| {
            let offset = saturating_f64_to_u64(intervals * params.interval_ns as f64);
            copy.last_fill_ns
                .saturating_add(offset)
                .saturating_sub(now_ns)
        };
        Refill {
            next_fill_in_ns: Some(at(1.0)),
            full_in_ns: Some(at((missing / params.fill_amount).ceil())),
        }
    }

    /// Nanoseconds from `now_ns` until `n` tokens exist (the bucket was just filled).
    fn wait_for(&self, params: &BucketParams, now_ns: u64, n: f64) -> u64 {
        if n > params.capacity || params.fill_amount <= 0.0 {
            return WAIT_FOREVER;
        }
        let missing = n - self.tokens;
        // Fills start at last_fill_ns, which may still be in the future (delayed initial fill).
        let fill_starts_in = self.last_fill_ns.saturating_sub(now_ns);
        let since_fill = now_ns.saturating_sub(self.last_fill_ns);
        let wait = if params.continuous_fill {
            saturating_f64_to_u64((missing / params.fill_rate()).ceil())
        } else {
            let intervals = (missing / params.fill_amount).ceil();
            let until = saturating_f64_to_u64(intervals * params.interval_ns as f64);
            until.saturating_sub(since_fill)
        };
        fill_starts_in.saturating_add(wait)
    }
}

fn saturating_f64_to_u64(x: f64) -> u64 {
    if x.is_nan() || x <= 0.0 {
        0
    } else if x >= u64::MAX as f64 {
        u64::MAX
    } else {
        x as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn tk(n: f64) -> Tokens {
        Tokens::new(n).expect("test cost")
    }

    fn params(capacity: f64, fill: f64, interval_ns: u64, continuous: bool) -> BucketParams {
        BucketParams {
            capacity,
            fill_amount: fill,
            interval_ns,
            continuous_fill: continuous,
            delay_initial_fill: false,
        }
    }

    #[test]
    fn refill_reports_the_next_fill_and_when_full() {
        let discrete = params(10.0, 4.0, SEC, false);
        let mut b = TokenBucket::new(&discrete, 0);
        assert_eq!(
            b.refill(&discrete, 0),
            Refill {
                next_fill_in_ns: None,
                full_in_ns: Some(0)
            }
        );
        assert!(b.take(&discrete, SEC / 4, tk(10.0)).accepted);
        // Empty at 0.25s: +4 at 1s, +4 at 2s, +4 (capped) at 3s.
        assert_eq!(
            b.refill(&discrete, SEC / 4),
            Refill {
                next_fill_in_ns: Some(3 * SEC / 4),
                full_in_ns: Some(2 * SEC + 3 * SEC / 4)
            }
        );
        let continuous = params(10.0, 10.0, SEC, true);
        let mut c = TokenBucket::new(&continuous, 0);
        assert!(c.take(&continuous, 0, tk(5.0)).accepted);
        assert_eq!(
            c.refill(&continuous, 0),
            Refill {
                next_fill_in_ns: Some(0),
                full_in_ns: Some(SEC / 2)
            }
        );
        let never = params(10.0, 0.0, SEC, true);
        let mut n = TokenBucket::new(&never, 0);
        assert!(n.take(&never, 0, tk(1.0)).accepted);
        assert_eq!(n.refill(&never, 5 * SEC), Refill::NEVER);
    }

    #[test]
    fn new_bucket_is_full_and_refuses_past_capacity() {
        let p = params(5.0, 0.0, SEC, true);
        let mut b = TokenBucket::new(&p, 0);
        let accepted = (0..8).filter(|_| b.take(&p, 0, tk(1.0)).accepted).count();
        assert_eq!(accepted, 5);
        let refused = b.take(&p, 10 * SEC, tk(1.0));
        assert!(!refused.accepted);
        assert_eq!(refused.wait_ns, WAIT_FOREVER, "no fill: never");
    }

    #[test]
    fn continuous_fill_is_proportional_and_capped() {
        let p = params(10.0, 10.0, SEC, true);
        let mut b = TokenBucket::new(&p, 0);
        assert!(b.take(&p, 0, tk(10.0)).accepted);
        let t = b.take(&p, SEC / 2, tk(0.0));
        assert!((t.current - 5.0).abs() < 1e-9);
        assert!(
            (b.level(&p, 100 * SEC) - 10.0).abs() < 1e-9,
            "capped at capacity"
        );
    }

    #[test]
    fn discrete_fill_adds_whole_intervals_only() {
        let p = params(10.0, 4.0, SEC, false);
        let mut b = TokenBucket::new(&p, 0);
        assert!(b.take(&p, 0, tk(10.0)).accepted);
        assert_eq!(b.level(&p, SEC - 1), 0.0);
        assert_eq!(b.level(&p, SEC), 4.0);
        assert_eq!(b.level(&p, 2 * SEC + SEC / 2), 8.0);
        // The half interval is not lost: the next boundary is still at 3s.
        assert!(b.take(&p, 2 * SEC + SEC / 2, tk(8.0)).accepted);
        assert_eq!(b.level(&p, 3 * SEC), 4.0);
    }

    #[test]
    fn refused_take_takes_nothing_and_reports_wait() {
        let p = params(10.0, 2.0, SEC, true);
        let mut b = TokenBucket::new(&p, 0);
        assert!(b.take(&p, 0, tk(9.0)).accepted);
        let t = b.take(&p, 0, tk(3.0));
        assert!(!t.accepted);
        assert_eq!(t.remaining, 1.0);
        assert_eq!(t.wait_ns, SEC, "2 missing tokens at 2/s");
        // Waiting exactly that long is enough.
        assert!(b.take(&p, SEC, tk(3.0)).accepted);
    }

    #[test]
    fn discrete_wait_counts_to_the_next_boundary() {
        let p = params(10.0, 5.0, SEC, false);
        let mut b = TokenBucket::new(&p, 0);
        assert!(b.take(&p, 0, tk(10.0)).accepted);
        let t = b.take(&p, SEC / 4, tk(1.0));
        assert_eq!(t.wait_ns, 3 * SEC / 4);
    }

    #[test]
    fn put_back_returns_tokens_capped() {
        let p = params(5.0, 0.0, SEC, true);
        let mut b = TokenBucket::new(&p, 0);
        assert!(b.take(&p, 0, tk(3.0)).accepted);
        assert_eq!(b.put_back(&p, 0, tk(2.0)), 4.0);
        assert_eq!(b.put_back(&p, 0, tk(100.0)), 5.0, "capped at capacity");
    }

    #[test]
    fn delayed_initial_fill_starts_after_fill_time() {
        let mut p = params(10.0, 10.0, SEC, true);
        p.delay_initial_fill = true;
        let mut b = TokenBucket::new(&p, 0);
        assert!(b.take(&p, 0, tk(10.0)).accepted);
        assert_eq!(
            b.level(&p, SEC / 2),
            0.0,
            "no fill during the first fill time"
        );
        assert!((b.level(&p, SEC + SEC / 2) - 5.0).abs() < 1e-9);
        let t = b.take(&p, SEC / 2, tk(5.0));
        assert_eq!(t.wait_ns, SEC, "0.5s until fill starts + 0.5s to fill 5");
    }

    #[test]
    fn a_lowered_capacity_caps_a_bucket_still_in_its_delayed_initial_fill() {
        for continuous in [true, false] {
            let mut p = params(1000.0, 10.0, SEC, continuous);
            p.delay_initial_fill = true;
            let b = TokenBucket::new(&p, 0);
            // The limit is lowered before the bucket's first fill.
            p.capacity = 10.0;
            let mut lowered = b;
            assert_eq!(lowered.level(&p, SEC / 2), 10.0, "continuous: {continuous}");
            assert!(lowered.take(&p, SEC / 2, tk(10.0)).accepted);
            assert!(!lowered.take(&p, SEC / 2, tk(1.0)).accepted, "not 1000");
            let mut at_once = b;
            assert!(
                !at_once.take(&p, SEC / 2, tk(11.0)).accepted,
                "continuous: {continuous}"
            );
        }
    }

    #[test]
    fn clock_going_backwards_credits_nothing() {
        let p = params(10.0, 10.0, SEC, true);
        let mut b = TokenBucket::new(&p, 5 * SEC);
        assert!(b.take(&p, 5 * SEC, tk(10.0)).accepted);
        assert!(!b.take(&p, SEC, tk(1.0)).accepted);
    }

    #[derive(Debug, Clone)]
    struct Step {
        advance_ns: u64,
        tokens: f64,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (
                0u64..2 * SEC,
                prop_oneof![3 => 0.1f64..5.0, 1 => -3.0f64..0.0],
            )
                .prop_map(|(advance_ns, tokens)| Step { advance_ns, tokens }),
            1..300,
        )
    }

    proptest! {
        /// Over any sequence of takes, admitted tokens never exceed
        /// capacity + fill rate x elapsed (+ whatever was handed back).
        #[test]
        fn admitted_never_exceeds_capacity_plus_fill(
            capacity in 1.0f64..100.0,
            fill in 0.0f64..50.0,
            interval_ns in (SEC / 100)..(10 * SEC),
            continuous in any::<bool>(),
            delay in any::<bool>(),
            steps in steps(),
        ) {
            let p = BucketParams { capacity, fill_amount: fill, interval_ns, continuous_fill: continuous, delay_initial_fill: delay };
            let mut b = TokenBucket::new(&p, 0);
            let (mut now, mut admitted, mut returned) = (0u64, 0.0f64, 0.0f64);
            for s in steps {
                now += s.advance_ns;
                let remaining = if s.tokens > 0.0 {
                    let t = b.take(&p, now, tk(s.tokens));
                    if t.accepted { admitted += s.tokens; }
                    t.remaining
                } else {
                    returned += -s.tokens;
                    b.put_back(&p, now, tk(-s.tokens))
                };
                prop_assert!(remaining <= capacity + 1e-9);
                prop_assert!(remaining >= -1e-9);
                let bound = capacity + p.fill_rate() * now as f64 + returned;
                prop_assert!(admitted <= bound + 1e-6, "admitted {admitted} > bound {bound}");
            }
        }

        /// A refused take followed by waiting the reported time succeeds.
        #[test]
        fn waiting_the_reported_time_is_enough(
            capacity in 1.0f64..100.0,
            fill in 0.5f64..50.0,
            interval_ns in (SEC / 100)..(10 * SEC),
            continuous in any::<bool>(),
            drain in 0.0f64..1.0,
            want in 0.0f64..1.0,
        ) {
            let p = BucketParams { capacity, fill_amount: fill, interval_ns, continuous_fill: continuous, delay_initial_fill: false };
            let mut b = TokenBucket::new(&p, 0);
            prop_assert!(b.take(&p, 0, tk(capacity * drain)).accepted);
            let n = (capacity * want).max(1e-3);
            let t = b.take(&p, 1, tk(n));
            if !t.accepted {
                prop_assert!(t.wait_ns != WAIT_FOREVER);
                prop_assert!(b.take(&p, 1 + t.wait_ns + 1, tk(n)).accepted);
            }
        }
    }
}
