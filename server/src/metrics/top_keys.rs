//! Which keys consume the most of a limiter, per shard, in bounded memory: the space-saving
//! heavy-hitter sketch ([`SpaceSaving`]), kept over two rotating windows
//! ([`WindowedTopKeys`]), one per limiter ([`ShardTopKeys`]).
//!
//! Pure data structures: time is an argument, nothing here reads a clock or locks. A shard
//! feeds its own sketches from the takes it accepted; a query merges every shard's answer
//! (the same key may appear on several shards when checks hopped).
//!
//! The sketch itself is [`SpaceSaving`] (its own module): this one adds the windows and
//! the per-limiter table.

pub use super::space_saving::{Counted, SpaceSaving};

/// Counters per limiter per window. Why this value: with at most 128 distinct keys a
/// window is exact, and beyond that any key heavier than the smallest of 128 counters is
/// found; two windows of 128 entries of ~50 bytes plus the keys is ~15 KiB per limiter per
/// shard (plus the 8 KiB filter of a window that saw more keys), paid only by limiters that
/// saw keyed takes.
pub const CAPACITY: usize = 128;

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

/// One shard's windows, one per limiter id that saw a keyed take.
#[derive(Debug, Default)]
pub struct ShardTopKeys {
    by_limiter: Vec<Option<WindowedTopKeys>>,
}

impl ShardTopKeys {
    /// Counts an accepted take of `tokens` from `key`'s bucket of limiter `id`. Ids at or
    /// beyond `super::per_limiter::MAX_LIMITERS` are not tracked.
    #[inline]
    pub fn record(&mut self, id: u32, key: &str, tokens: f64, now_ns: u64) {
        let id = id as usize;
        if id >= super::per_limiter::MAX_LIMITERS {
            return;
        }
        if id >= self.by_limiter.len() {
            self.by_limiter.resize_with(id + 1, || None);
        }
        self.by_limiter[id]
            .get_or_insert_with(|| WindowedTopKeys::new(now_ns))
            .record(key, tokens, now_ns);
    }

    /// What limiter `id`'s windows counted, and since when (None: nothing counted).
    pub fn counted(&mut self, id: u32, now_ns: u64) -> Option<(Vec<Counted>, u64)> {
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
