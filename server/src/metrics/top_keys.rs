//! Which keys consume the most of a limiter, per shard, in bounded memory: the space-saving
//! heavy-hitter sketch ([`SpaceSaving`]), kept over two rotating windows
//! ([`WindowedTopKeys`]), one per limiter ([`ShardTopKeys`]).
//!
//! Pure data structures: time is an argument, nothing here reads a clock or locks. A shard
//! feeds its own sketches from the takes it accepted; a query merges every shard's answer
//! (the same key may appear on several shards when checks hopped).
//!
//! A shard does not update a sketch on each take: [`ShardTopKeys::record`] appends the take
//! to a short list, and the list goes into the sketches [`PENDING_TAKES`] at a time (and
//! before every query, so answers never lag). Why: between two takes the decision path walks
//! a bucket table far larger than the caches and evicts the sketch's lines, so recording
//! each take at once paid a few cache misses per decision (most of the metrics' cost in
//! docs/performance.md); a batch finds the sketch in cache after its first take. The
//! sketches see the same takes in the same order, with their own timestamps.
//!
//! Once a limiter's current window is full (more than [`CAPACITY`] keys), its takes are also
//! sampled: each accepted take is counted with probability 1 / [`SAMPLE_EVERY`], by its own
//! random draw (so no traffic pattern lines up with the sampling), with [`SAMPLE_EVERY`]
//! times its tokens; the others cost the draw. Counts stay unbiased, with about
//! `sqrt(SAMPLE_EVERY / takes)` of added relative error. While the window has room every
//! take is counted, so with at most [`CAPACITY`] keys counts stay exact. Why sample: even
//! batched, counting every take of 100,000 uniform keys was most of the metrics' cost in
//! docs/performance.md ("Metrics on vs off").
//!
//! The sketch itself is [`SpaceSaving`] (its own module): this one adds the windows and
//! the per-limiter table.

pub use super::space_saving::{Counted, SpaceSaving};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// Counters per limiter per window. Why this value: with at most 128 distinct keys a
/// window is exact, and beyond that any key heavier than the smallest of 128 counters is
/// found; two windows of 128 entries of ~50 bytes plus the keys is ~15 KiB per limiter per
/// shard (plus the 8 KiB filter of a window that saw more keys), paid only by limiters that
/// saw keyed takes.
pub const CAPACITY: usize = 128;

/// Once a limiter's current window is full, one accepted take in this many (on average) is
/// counted, with this many times its tokens; a power of two, so both are exact. Why this
/// value: benches/metrics_cost.sh put the top keys' share of a pipelined decision at 2.4%
/// counting one take in 8 and 1.5% at one in 16 (with the rest of the metrics, 1.2–1.4% in
/// all at 16, against the 3% bound); a key with 10,000 takes in a window is still counted
/// within ~4% (`sqrt(16 / takes)`; docs/admin.md).
pub const SAMPLE_EVERY: u32 = 16;

/// Length of one window. Two of them make "the last minute": a query covers the current
/// window and the one before it, so between one and two minutes of takes.
pub const WINDOW_NS: u64 = 60_000_000_000;

/// A limiter's sketch over the current window and the one before it.
#[derive(Debug)]
pub struct WindowedTopKeys {
    /// When counting began (the windows reach no further back).
    created: u64,
    /// Start of the current window (ns, the caller's clock).
    current_start: u64,
    current: SpaceSaving,
    /// The window just before `current` (empty if nothing was recorded in it).
    previous: SpaceSaving,
}

impl WindowedTopKeys {
    /// Empty windows, the current one starting at `now_ns`.
    pub fn new(now_ns: u64) -> WindowedTopKeys {
        WindowedTopKeys {
            created: now_ns,
            current_start: now_ns,
            current: SpaceSaving::new(CAPACITY),
            previous: SpaceSaving::new(CAPACITY),
        }
    }

    /// Counts `weight` for `key` at `now_ns`.
    #[inline]
    pub fn record(&mut self, key: &str, weight: f64, now_ns: u64) {
        self.rotate(now_ns);
        self.current.record(key, weight);
    }

    /// Moves to the window holding `now_ns`: the current window becomes the previous one
    /// if it is the one just before, and is forgotten if it is older.
    fn rotate(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.current_start);
        if elapsed < WINDOW_NS {
            return;
        }
        let windows = elapsed / WINDOW_NS;
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        if windows >= 2 {
            self.previous.clear();
        }
        self.current_start += windows * WINDOW_NS;
    }

    /// Whether the current window has a counter for every key it may see (then every
    /// take is counted, exactly).
    fn current_has_room(&self) -> bool {
        self.current.len() < CAPACITY
    }

    /// Every key counted in the two windows (counts of a key in both are added), and since
    /// when they count: the older window's start, or when counting began if later.
    pub fn counted(&mut self, now_ns: u64) -> (Vec<Counted>, u64) {
        self.rotate(now_ns);
        let mut merged = Merged::default();
        merged.add(self.previous.entries().cloned());
        merged.add(self.current.entries().cloned());
        let since = self
            .current_start
            .saturating_sub(WINDOW_NS)
            .max(self.created);
        (merged.into_vec(), since)
    }
}

/// Takes a shard holds before they go into the sketches. Why this value: a batch this long
/// pays the sketch's cache misses once per 128 counted takes (~1,000 accepted takes when
/// sampling), and the list (3 KiB plus the keys' bytes) stays small next to the caches it
/// is meant to spare.
pub const PENDING_TAKES: usize = 128;

/// A take recorded but not yet counted. Its key is the part of `pending_keys` from the
/// previous take's `key_end` (0 for the first) to its own.
#[derive(Debug, Clone, Copy)]
struct PendingTake {
    limiter: u32,
    key_end: u32,
    tokens: f64,
    now_ns: u64,
}

/// Which of a limiter's takes are counted: all of them (`every` 1), or each with
/// probability `1 / every`.
#[derive(Debug, Clone, Copy)]
struct Sampler {
    every: u32,
    /// A take is counted when a uniform `u32` draw is below this (`u32::MAX` when `every`
    /// is 1, where no draw is made).
    below: u32,
}

impl Sampler {
    const EVERY_TAKE: Sampler = Sampler {
        every: 1,
        below: u32::MAX,
    };

    /// Each take counted with probability `1 / every` (`every` a power of two, so the
    /// probability and the weight are exact).
    const fn one_in(every: u32) -> Sampler {
        Sampler {
            every,
            below: (1u64 << 32).div_ceil(every as u64) as u32,
        }
    }
}

/// One shard's windows, one per limiter id that saw a keyed take, and the takes not yet
/// counted in them.
#[derive(Debug)]
pub struct ShardTopKeys {
    by_limiter: Vec<Option<WindowedTopKeys>>,
    /// Per limiter id. Apart from the windows: a take that is passed over touches only
    /// this small array, which stays in cache.
    samplers: Vec<Sampler>,
    /// Draws the sampling gaps (seeded: a shard fed the same takes answers the same).
    rng: SmallRng,
    pending: Vec<PendingTake>,
    /// The pending takes' keys, end to end.
    pending_keys: String,
}

impl Default for ShardTopKeys {
    fn default() -> ShardTopKeys {
        ShardTopKeys {
            by_limiter: Vec::new(),
            samplers: Vec::new(),
            rng: SmallRng::seed_from_u64(0x746f_702d_6b65_7973),
            pending: Vec::new(),
            pending_keys: String::new(),
        }
    }
}

impl ShardTopKeys {
    /// Counts an accepted take of `tokens` from `key`'s bucket of limiter `id` (at the
    /// latest when the next query asks). Ids at or beyond
    /// `super::per_limiter::MAX_LIMITERS` are not tracked.
    #[inline]
    pub fn record(&mut self, id: u32, key: &str, tokens: f64, now_ns: u64) {
        self.record_with(id, tokens, now_ns, || Some(key));
    }

    /// [`ShardTopKeys::record`], asking for the key only if this take is counted (a take
    /// passed over by sampling costs one random draw and nothing else). `key` gives
    /// None for a take without a key, which counts nothing.
    #[inline]
    pub fn record_with<'k>(
        &mut self,
        id: u32,
        tokens: f64,
        now_ns: u64,
        key: impl FnOnce() -> Option<&'k str>,
    ) {
        if let Some(sampler) = self.samplers.get(id as usize) {
            if sampler.every > 1 && self.rng.next_u32() >= sampler.below {
                return;
            }
        }
        if let Some(key) = key() {
            self.count(id, key, tokens, now_ns);
        }
    }

    /// A take that sampling did not pass over: into the pending list. Out of line, so that
    /// the decision path inlines only the sampling check.
    #[inline(never)]
    fn count(&mut self, id: u32, key: &str, tokens: f64, now_ns: u64) {
        let index = id as usize;
        if index >= super::per_limiter::MAX_LIMITERS {
            return;
        }
        if index >= self.samplers.len() {
            self.samplers.resize(index + 1, Sampler::EVERY_TAKE);
        }
        let every = self.samplers[index].every;
        if self.pending.capacity() == 0 {
            self.pending.reserve_exact(PENDING_TAKES);
            self.pending_keys.reserve(PENDING_TAKES * 16);
        }
        self.pending_keys.push_str(key);
        self.pending.push(PendingTake {
            limiter: id,
            // Keys are label values, far below 4 GiB in a batch of PENDING_TAKES.
            key_end: self.pending_keys.len() as u32,
            tokens: tokens * f64::from(every),
            now_ns,
        });
        if self.pending.len() >= PENDING_TAKES {
            self.flush();
        }
    }

    /// Counts every pending take into its limiter's windows, in the order they were taken.
    fn flush(&mut self) {
        let mut key_start = 0;
        for take in &self.pending {
            let key_end = take.key_end as usize;
            let key = &self.pending_keys[key_start..key_end];
            key_start = key_end;
            let id = take.limiter as usize;
            if id >= self.by_limiter.len() {
                self.by_limiter.resize_with(id + 1, || None);
            }
            let windows =
                self.by_limiter[id].get_or_insert_with(|| WindowedTopKeys::new(take.now_ns));
            windows.record(key, take.tokens, take.now_ns);
            // The window may have just filled up, or rotated to an empty one.
            let sampler = &mut self.samplers[id];
            if windows.current_has_room() {
                *sampler = Sampler::EVERY_TAKE;
            } else if sampler.every == 1 {
                *sampler = Sampler::one_in(SAMPLE_EVERY);
            }
        }
        self.pending.clear();
        self.pending_keys.clear();
    }

    /// What limiter `id`'s windows counted, and since when (None: nothing counted).
    pub fn counted(&mut self, id: u32, now_ns: u64) -> Option<(Vec<Counted>, u64)> {
        self.flush();
        let windows = self.by_limiter.get_mut(id as usize)?.as_mut()?;
        Some(windows.counted(now_ns))
    }
}

/// Sketch entries merged by key (counts and errors add).
#[derive(Debug, Default)]
pub struct Merged {
    by_key: hashbrown::HashMap<String, (f64, f64)>,
}

impl Merged {
    /// Adds entries (from a window, or a shard's answer).
    pub fn add(&mut self, entries: impl IntoIterator<Item = Counted>) {
        for c in entries {
            let slot = self.by_key.entry(c.key).or_insert((0.0, 0.0));
            slot.0 += c.count;
            slot.1 += c.error;
        }
    }

    /// Every key, largest count first (ties by key, so answers are stable).
    pub fn into_vec(self) -> Vec<Counted> {
        let mut all: Vec<Counted> = self
            .by_key
            .into_iter()
            .map(|(key, (count, error))| Counted { key, count, error })
            .collect();
        all.sort_by(|a, b| b.count.total_cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn windows_rotate_and_forget_what_is_older_than_the_previous_one() {
        let mut w = WindowedTopKeys::new(0);
        w.record("old", 1.0, 0);
        w.record("mid", 2.0, WINDOW_NS + 1);
        w.record("old", 1.0, WINDOW_NS + 2);
        let (counted, since) = w.counted(WINDOW_NS + 3);
        assert_eq!(since, 0);
        let keys: Vec<_> = counted.iter().map(|c| (c.key.as_str(), c.count)).collect();
        assert_eq!(keys, [("mid", 2.0), ("old", 2.0)]);
        // Two windows later the first is gone, the second is the previous one.
        let (counted, since) = w.counted(2 * WINDOW_NS + 5);
        assert_eq!(since, WINDOW_NS);
        assert_eq!(counted.len(), 2, "{counted:?}");
        let (counted, _) = w.counted(4 * WINDOW_NS);
        assert!(counted.is_empty(), "{counted:?}");
    }

    #[test]
    fn pending_takes_count_the_same_as_takes_counted_at_once() {
        // More takes than the pending list holds, so some are counted by a flush on the
        // way and the rest by the query; spread over two windows and three limiters.
        let mut batched = ShardTopKeys::default();
        let mut direct: Vec<Option<WindowedTopKeys>> = (0..3).map(|_| None).collect();
        for i in 0..(PENDING_TAKES * 3 + 7) {
            let id = (i % 3) as u32;
            let key = format!("k{}", (i * 7) % 300);
            let now = (i as u64) * (WINDOW_NS / PENDING_TAKES as u64);
            let tokens = (i % 5 + 1) as f64;
            batched.record(id, &key, tokens, now);
            direct[id as usize]
                .get_or_insert_with(|| WindowedTopKeys::new(now))
                .record(&key, tokens, now);
        }
        // Just after the last take, so both windows still hold takes.
        let now = (PENDING_TAKES * 3 + 7) as u64 * (WINDOW_NS / PENDING_TAKES as u64);
        for id in 0..3u32 {
            let got = batched.counted(id, now).expect("counted");
            let want = direct[id as usize].as_mut().expect("direct").counted(now);
            assert_eq!(got, want, "limiter {id}");
            assert!(!got.0.is_empty());
        }
        assert!(batched.pending.is_empty());
    }

    #[test]
    fn a_full_window_samples_and_still_estimates_a_heavy_key() {
        // 2,000 light keys and one key with a fifth of the takes: the window fills up and
        // sampling starts; the heavy key is still first, counted within 5% (its sampling
        // error is ~sqrt(16 / 40,000) = 2%).
        let mut top = ShardTopKeys::default();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut heavy = 0.0;
        for _ in 0..200_000 {
            if rng.gen_range(0..5) == 0 {
                top.record(0, "heavy", 1.0, 1);
                heavy += 1.0;
            } else {
                top.record(0, &format!("light-{}", rng.gen_range(0..2_000)), 1.0, 1);
            }
        }
        assert_eq!(top.samplers[0].every, SAMPLE_EVERY, "sampling once full");
        let (counted, _) = top.counted(0, 2).expect("counted");
        assert_eq!(counted[0].key, "heavy");
        let relative = (counted[0].count - heavy).abs() / heavy;
        assert!(relative < 0.05, "{} against {heavy}", counted[0].count);
    }

    #[test]
    fn sampling_stops_when_the_window_rotates_to_an_empty_one() {
        let mut top = ShardTopKeys::default();
        for i in 0..(CAPACITY * 20) {
            top.record(0, &format!("k{i}"), 1.0, 0);
        }
        top.counted(0, 0);
        assert_eq!(top.samplers[0].every, SAMPLE_EVERY);
        // Two windows later: the next counted take lands in an empty window.
        let later = 2 * WINDOW_NS;
        while top.pending.is_empty() {
            top.record(0, "late", 1.0, later);
        }
        top.counted(0, later);
        assert_eq!(top.samplers[0].every, 1);
        assert_eq!(top.samplers[0].below, u32::MAX);
        let (counted, _) = top.counted(0, later).expect("counted");
        assert_eq!(counted.len(), 1, "{counted:?}");
    }

    #[test]
    fn a_sampled_take_is_counted_one_time_in_every() {
        let sampler = Sampler::one_in(SAMPLE_EVERY);
        assert_eq!(
            u64::from(sampler.below) * u64::from(SAMPLE_EVERY),
            1u64 << 32,
            "exact probability"
        );
        let mut top = ShardTopKeys::default();
        top.samplers.push(sampler);
        let takes = 400_000;
        for _ in 0..takes {
            top.record(0, "k", 1.0, 0);
        }
        // Each counted take weighs SAMPLE_EVERY, so the count estimates the takes (the
        // standard deviation is sqrt(7 * 400,000) = 1,673, so 1% is 2.4 of them).
        let (counted, _) = top.counted(0, 0).expect("counted");
        let relative = (counted[0].count - takes as f64).abs() / takes as f64;
        assert!(relative < 0.01, "{}", counted[0].count);
    }

    #[test]
    fn a_query_counts_takes_still_pending() {
        let mut top = ShardTopKeys::default();
        top.record(1, "a", 2.0, 0);
        top.record(1, "b", 1.0, 0);
        let (counted, _) = top.counted(1, 1).expect("counted");
        let keys: Vec<_> = counted.iter().map(|c| (c.key.as_str(), c.count)).collect();
        assert_eq!(keys, [("a", 2.0), ("b", 1.0)]);
    }

    #[test]
    fn shard_windows_are_per_limiter_and_merge_across_shards() {
        let (mut a, mut b) = (ShardTopKeys::default(), ShardTopKeys::default());
        a.record(3, "x", 2.0, 0);
        b.record(3, "x", 1.0, 0);
        b.record(3, "y", 4.0, 0);
        a.record(0, "z", 9.0, 0);
        assert!(a.counted(1, 0).is_none());
        let mut merged = Merged::default();
        merged.add(a.counted(3, 1).expect("a").0);
        merged.add(b.counted(3, 1).expect("b").0);
        let top: Vec<_> = merged
            .into_vec()
            .into_iter()
            .map(|c| (c.key, c.count))
            .collect();
        assert_eq!(top, [("y".to_string(), 4.0), ("x".to_string(), 3.0)]);
    }
}
