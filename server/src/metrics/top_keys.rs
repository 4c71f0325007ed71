//! Which keys consume the most of a limiter, per shard, in bounded memory: the space-saving
//! heavy-hitter sketch ([`SpaceSaving`]), kept over two rotating windows
//! ([`WindowedTopKeys`]), one per limiter ([`ShardTopKeys`]).
//!
//! Pure data structures: time is an argument, nothing here reads a clock or locks. A shard
//! feeds its own sketches from the takes it accepted; a query merges every shard's answer
//! (the same key may appear on several shards when checks hopped).
//!
//! Space-saving (Metwally, Agrawal, El Abbadi, 2005) keeps `capacity` counters. A key
//! already counted adds its weight; a new key, when the sketch is full, takes over the
//! smallest counter and inherits its count as its possible overestimate (`error`). So:
//! - with at most `capacity` distinct keys, every count is exact (error 0);
//! - otherwise a key's true weight is within `[count - error, count]`, and any key whose
//!   weight exceeds `total / capacity` is in the sketch.
//!
//! The counters sit in a binary min-heap (the smallest at the root, to be replaced), with a
//! hash index from key to heap position: a take costs one hash and a lookup, plus a sift
//! of at most log2(capacity) levels.

use hashbrown::HashTable;
use std::hash::BuildHasher;

/// Counters per limiter per window. Why this value: with at most 128 distinct keys a
/// window is exact, and beyond that any key with more than 1/128 of a limiter's
/// consumption is guaranteed to be found; two windows of 128 entries of ~50 bytes plus the
/// keys is ~15 KiB per limiter per shard, paid only by limiters that saw keyed takes.
pub const CAPACITY: usize = 128;

/// Length of one window. Two of them make "the last minute": a query covers the current
/// window and the one before it, so between one and two minutes of takes.
pub const WINDOW_NS: u64 = 60_000_000_000;

/// One counted key.
#[derive(Clone, Debug, PartialEq)]
pub struct Counted {
    /// The key (a limit label's value).
    pub key: String,
    /// Tokens counted for it: at least its true consumption.
    pub count: f64,
    /// How much of `count` may belong to keys it replaced (0 = exact).
    pub error: f64,
}

#[derive(Debug)]
struct Entry {
    counted: Counted,
    hash: u64,
}

/// A space-saving sketch over string keys with weights (see the module docs).
#[derive(Debug)]
pub struct SpaceSaving {
    capacity: usize,
    /// Min-heap on `count`.
    heap: Vec<Entry>,
    /// Heap position of each entry, found by the entry's hash.
    index: HashTable<usize>,
    hasher: foldhash::fast::FixedState,
}

impl SpaceSaving {
    /// An empty sketch of `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            heap: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x746f_6c6c_6761_7465),
        }
    }

    /// Counts `weight` (> 0) for `key`.
    pub fn record(&mut self, key: &str, weight: f64) {
        // NaN and non-positive weights count nothing.
        if weight.is_nan() || weight <= 0.0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let heap = &self.heap;
        let found = self
            .index
            .find(hash, |&p| {
                heap[p].hash == hash && heap[p].counted.key == key
            })
            .copied();
        if let Some(pos) = found {
            self.heap[pos].counted.count += weight;
            self.sift_down(pos);
            return;
        }
        if self.heap.len() < self.capacity {
            let pos = self.heap.len();
            self.heap.push(Entry {
                counted: Counted {
                    key: key.to_string(),
                    count: weight,
                    error: 0.0,
                },
                hash,
            });
            self.index.insert_unique(hash, pos, |&p| self.heap[p].hash);
            self.sift_up(pos);
            return;
        }
        // Full: the new key takes over the smallest counter.
        let old_hash = self.heap[0].hash;
        if let Ok(slot) = self.index.find_entry(old_hash, |&p| p == 0) {
            slot.remove();
        }
        let root = &mut self.heap[0];
        let floor = root.counted.count;
        root.counted.key.clear();
        root.counted.key.push_str(key);
        root.counted.count = floor + weight;
        root.counted.error = floor;
        root.hash = hash;
        let heap = &self.heap;
        self.index.insert_unique(hash, 0, |&p| heap[p].hash);
        self.sift_down(0);
    }

    /// The counted keys, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Counted> {
        self.heap.iter().map(|e| &e.counted)
    }

    /// Keys counted.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Forgets every key (keeps the allocations).
    pub fn clear(&mut self) {
        self.heap.clear();
        self.index.clear();
    }

    /// Swaps heap positions `a` and `b`, keeping the index right. `a`'s index slot is
    /// parked on a position no entry has while `b`'s is moved, so two keys with the same
    /// hash cannot be confused.
    fn swap(&mut self, a: usize, b: usize) {
        const PARKED: usize = usize::MAX;
        let (hash_a, hash_b) = (self.heap[a].hash, self.heap[b].hash);
        if let Some(p) = self.index.find_mut(hash_a, |&p| p == a) {
            *p = PARKED;
        }
        if let Some(p) = self.index.find_mut(hash_b, |&p| p == b) {
            *p = a;
        }
        if let Some(p) = self.index.find_mut(hash_a, |&p| p == PARKED) {
            *p = b;
        }
        self.heap.swap(a, b);
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.heap[parent].counted.count <= self.heap[pos].counted.count {
                break;
            }
            self.swap(pos, parent);
            pos = parent;
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        loop {
            let (left, right) = (2 * pos + 1, 2 * pos + 2);
            let mut smallest = pos;
            for child in [left, right] {
                if child < self.heap.len()
                    && self.heap[child].counted.count < self.heap[smallest].counted.count
                {
                    smallest = child;
                }
            }
            if smallest == pos {
                return;
            }
            self.swap(pos, smallest);
            pos = smallest;
        }
    }
}

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
    use proptest::prelude::*;

    fn sorted(s: &SpaceSaving) -> Vec<(String, f64, f64)> {
        let mut v: Vec<_> = s
            .entries()
            .map(|c| (c.key.clone(), c.count, c.error))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn heap_ok(s: &SpaceSaving) -> bool {
        let heap_order =
            (1..s.heap.len()).all(|i| s.heap[(i - 1) / 2].counted.count <= s.heap[i].counted.count);
        let indexed = s.heap.iter().enumerate().all(|(pos, e)| {
            s.index
                .find(e.hash, |&p| {
                    p == pos && s.heap[p].counted.key == e.counted.key
                })
                .is_some()
        });
        heap_order && indexed && s.index.len() == s.heap.len()
    }

    #[test]
    fn few_keys_are_counted_exactly() {
        let mut s = SpaceSaving::new(4);
        for (key, w) in [("a", 1.0), ("b", 2.0), ("a", 1.0), ("c", 5.0), ("a", 1.0)] {
            s.record(key, w);
        }
        assert_eq!(
            sorted(&s),
            vec![
                ("a".into(), 3.0, 0.0),
                ("b".into(), 2.0, 0.0),
                ("c".into(), 5.0, 0.0)
            ]
        );
        assert!(heap_ok(&s));
    }

    #[test]
    fn a_new_key_takes_over_the_smallest_counter() {
        let mut s = SpaceSaving::new(2);
        s.record("a", 5.0);
        s.record("b", 1.0);
        s.record("c", 2.0);
        // "b" (1) was the smallest: "c" inherits it as its possible overestimate.
        assert_eq!(
            sorted(&s),
            vec![("a".into(), 5.0, 0.0), ("c".into(), 3.0, 1.0)]
        );
        assert!(heap_ok(&s));
    }

    #[test]
    fn zero_and_negative_weights_count_nothing() {
        let mut s = SpaceSaving::new(2);
        s.record("a", 0.0);
        s.record("a", -1.0);
        s.record("a", f64::NAN);
        assert!(s.is_empty());
    }

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

    proptest! {
        /// The space-saving guarantees, against exact counts: every count bounds the key's
        /// true weight from above, `count - error` from below, and every key heavier than
        /// total / capacity is in the sketch; the heap and its index stay consistent.
        #[test]
        fn space_saving_bounds_hold(
            takes in proptest::collection::vec((0u8..40, 1u8..5), 1..600),
            capacity in 1usize..16,
        ) {
            let mut s = SpaceSaving::new(capacity);
            let mut exact: std::collections::HashMap<String, f64> = Default::default();
            let mut total = 0.0;
            for (k, w) in takes {
                let key = format!("k{k}");
                s.record(&key, f64::from(w));
                *exact.entry(key).or_default() += f64::from(w);
                total += f64::from(w);
            }
            prop_assert!(heap_ok(&s));
            prop_assert!(s.len() <= capacity);
            for c in s.entries() {
                let truth = exact.get(&c.key).copied().unwrap_or(0.0);
                prop_assert!(c.count >= truth, "{c:?} truth {truth}");
                prop_assert!(c.count - c.error <= truth, "{c:?} truth {truth}");
            }
            for (key, weight) in &exact {
                if *weight > total / capacity as f64 {
                    prop_assert!(s.entries().any(|c| &c.key == key), "heavy {key} missing");
                }
            }
        }
    }
}
