//! [`SpaceSaving`]: which keys weigh the most in a stream, in bounded memory and a few
//! nanoseconds per take. Pure: no clock, no locks.
//!
//! Space-saving (Metwally, Agrawal, El Abbadi, 2005) keeps `capacity` counters. A key
//! already counted adds its weight. Until the sketch is full every key gets a counter, so
//! with at most `capacity` distinct keys every count is exact (error 0).
//!
//! Once full, a key not counted is admitted at random (Randomized Admission Policy, Ben
//! Basat, Einziger, Friedman and Kassner, 2017): it takes over the smallest counter, whose
//! count `floor` it inherits as its `error`, with probability `weight / (floor + weight)`, and
//! is otherwise not counted. Why not plain space-saving, which always takes over: with many
//! more keys than counters (1M uniform keys in the end-to-end runs) every take then replaced
//! the smallest counter and re-sifted the heap, which cost more than the decision it
//! recorded; admitted at random, replacements get rarer as counts grow, and a take of an
//! uncounted key costs one hash, one missed lookup and one random draw. Heavy keys still get
//! in (each of their takes is another draw) and light ones rarely displace them.
//!
//! What holds (tested against exact counts): with at most `capacity` keys every count is
//! exact; beyond that, `count - error` never exceeds a key's true weight (what it added
//! since it got its counter), and `count` estimates it (it may be below the truth: takes
//! not admitted are not counted anywhere).
//!
//! Counters sit in slots that keep their place; a binary min-heap of slot numbers finds the
//! smallest, and a hash index finds a key's slot. Heap moves touch only slot numbers and
//! positions, never the index.

use hashbrown::HashTable;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hash::BuildHasher;

/// The random draws' seed: fixed, so a sketch fed the same takes answers the same.
const SEED: u64 = 0x746f_6c6c_6761_7465;

/// One counted key.
#[derive(Clone, Debug, PartialEq)]
pub struct Counted {
    /// The key (a limit label's value).
    pub key: String,
    /// Tokens counted for it: its consumption, exactly while the sketch has seen at most
    /// its capacity of keys, else an estimate.
    pub count: f64,
    /// How much of `count` was inherited from the counter it took over (0 = exact).
    pub error: f64,
}

#[derive(Debug)]
struct Slot {
    counted: Counted,
    hash: u64,
    /// Where this slot sits in the heap.
    heap_pos: usize,
}

/// A space-saving sketch over string keys with weights (see the module docs).
#[derive(Debug)]
pub struct SpaceSaving {
    capacity: usize,
    /// The counters; a slot keeps its place while its key changes.
    slots: Vec<Slot>,
    /// Min-heap of slot numbers, on the slots' counts.
    heap: Vec<usize>,
    /// Slot number of each counted key, found by the key's hash.
    index: HashTable<usize>,
    /// Admission draws for uncounted keys on a full sketch.
    rng: SmallRng,
    hasher: foldhash::fast::FixedState,
}

impl SpaceSaving {
    /// An empty sketch of `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            capacity: capacity.max(1),
            slots: Vec::new(),
            heap: Vec::new(),
            index: HashTable::new(),
            rng: SmallRng::seed_from_u64(SEED),
            hasher: foldhash::fast::FixedState::with_seed(SEED),
        }
    }

    /// Counts `weight` (> 0) for `key`.
    #[inline]
    pub fn record(&mut self, key: &str, weight: f64) {
        // NaN and non-positive weights count nothing.
        if weight.is_nan() || weight <= 0.0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        let found = self
            .index
            .find(hash, |&s| {
                slots[s].hash == hash && slots[s].counted.key == key
            })
            .copied();
        if let Some(slot) = found {
            self.slots[slot].counted.count += weight;
            self.sift_down(self.slots[slot].heap_pos);
            return;
        }
        if self.slots.len() < self.capacity {
            self.add_slot(key, weight, hash);
            return;
        }
        self.admit(key, weight, hash);
    }

    /// A new counter while there is room: exact.
    fn add_slot(&mut self, key: &str, weight: f64, hash: u64) {
        let slot = self.slots.len();
        let pos = self.heap.len();
        self.slots.push(Slot {
            counted: Counted {
                key: key.to_string(),
                count: weight,
                error: 0.0,
            },
            hash,
            heap_pos: pos,
        });
        self.heap.push(slot);
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&s| slots[s].hash);
        self.sift_up(pos);
    }

    /// An uncounted key on a full sketch: over the smallest counter with probability
    /// `weight / (floor + weight)`, inheriting its count as the possible overestimate.
    fn admit(&mut self, key: &str, weight: f64, hash: u64) {
        let smallest = self.heap[0];
        let floor = self.slots[smallest].counted.count;
        let draw: f64 = self.rng.gen();
        if draw * (floor + weight) >= weight {
            return;
        }
        let leaving_hash = self.slots[smallest].hash;
        if let Ok(entry) = self.index.find_entry(leaving_hash, |&s| s == smallest) {
            entry.remove();
        }
        let slot = &mut self.slots[smallest];
        slot.counted.key.clear();
        slot.counted.key.push_str(key);
        slot.counted.count = floor + weight;
        slot.counted.error = floor;
        slot.hash = hash;
        let slots = &self.slots;
        self.index.insert_unique(hash, smallest, |&s| slots[s].hash);
        self.sift_down(0);
    }

    /// The counted keys, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &Counted> {
        self.slots.iter().map(|s| &s.counted)
    }

    /// Keys counted.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Forgets every key (keeps the allocations).
    pub fn clear(&mut self) {
        self.slots.clear();
        self.heap.clear();
        self.index.clear();
    }

    fn count_at(&self, pos: usize) -> f64 {
        self.slots[self.heap[pos]].counted.count
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.slots[self.heap[a]].heap_pos = a;
        self.slots[self.heap[b]].heap_pos = b;
    }

    fn sift_up(&mut self, mut pos: usize) {
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if self.count_at(parent) <= self.count_at(pos) {
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
                if child < self.heap.len() && self.count_at(child) < self.count_at(smallest) {
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

    /// Heap order, positions that match the heap, and an index naming each slot once.
    fn consistent(s: &SpaceSaving) -> bool {
        let heap_order = (1..s.heap.len()).all(|i| s.count_at((i - 1) / 2) <= s.count_at(i));
        let positions = s
            .heap
            .iter()
            .enumerate()
            .all(|(pos, &slot)| s.slots[slot].heap_pos == pos);
        let indexed = s.slots.iter().enumerate().all(|(n, slot)| {
            s.index
                .find(slot.hash, |&i| {
                    i == n && s.slots[i].counted.key == slot.counted.key
                })
                .is_some()
        });
        heap_order
            && positions
            && indexed
            && s.index.len() == s.slots.len()
            && s.heap.len() == s.slots.len()
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
        assert!(consistent(&s));
    }

    #[test]
    fn an_admitted_key_inherits_the_smallest_count_as_its_error() {
        let mut s = SpaceSaving::new(2);
        s.record("a", 5.0);
        s.record("b", 1.0);
        // Each take of "c" is admitted with probability 1/2 (weight 1 against floor 1):
        // within a few dozen takes it gets in, over "b", with error 1.
        let mut takes = 0;
        while !s.entries().any(|c| c.key == "c") {
            s.record("c", 1.0);
            takes += 1;
            assert!(takes < 64, "never admitted");
        }
        assert_eq!(
            sorted(&s),
            vec![("a".into(), 5.0, 0.0), ("c".into(), 2.0, 1.0)]
        );
        assert!(consistent(&s));
    }

    #[test]
    fn a_flood_of_distinct_keys_leaves_the_heavy_one_counted() {
        let mut s = SpaceSaving::new(8);
        for i in 0..100_000u32 {
            s.record(&format!("k{i}"), 1.0);
            if i % 10 == 0 {
                s.record("heavy", 1.0);
            }
        }
        let heavy = s
            .entries()
            .find(|c| c.key == "heavy")
            .expect("heavy counted");
        // 10,000 takes: counted since early on, and the largest count by far.
        assert!(heavy.count - heavy.error <= 10_000.0, "{heavy:?}");
        assert!((9_000.0..=11_000.0).contains(&heavy.count), "{heavy:?}");
        assert!(s
            .entries()
            .all(|c| c.key == "heavy" || c.count < heavy.count / 2.0));
        assert!(consistent(&s));
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
    fn clear_forgets_every_key() {
        let mut s = SpaceSaving::new(1);
        s.record("a", 5.0);
        s.clear();
        assert!(s.is_empty());
        s.record("b", 1.0);
        assert_eq!(sorted(&s), vec![("b".into(), 1.0, 0.0)]);
        assert!(consistent(&s));
    }

    proptest! {
        /// Against exact counts: with at most `capacity` keys every count is exact;
        /// always `count - error` is at most the truth, and slots, heap and index stay
        /// consistent.
        #[test]
        fn space_saving_bounds_hold(
            takes in proptest::collection::vec((0u16..3000, 1u8..5), 1..3000),
            capacity in 1usize..16,
        ) {
            let mut s = SpaceSaving::new(capacity);
            let mut exact: std::collections::HashMap<String, f64> = Default::default();
            for (k, w) in takes {
                // Mostly a few keys, sometimes one of many.
                let key = format!("k{}", if k % 4 == 0 { k } else { k % 40 });
                s.record(&key, f64::from(w));
                *exact.entry(key).or_default() += f64::from(w);
            }
            prop_assert!(consistent(&s));
            prop_assert!(s.len() <= capacity);
            for c in s.entries() {
                let truth = exact.get(&c.key).copied().unwrap_or(0.0);
                prop_assert!(c.count - c.error <= truth, "{c:?} truth {truth}");
                if exact.len() <= capacity {
                    prop_assert!(c.count == truth && c.error == 0.0, "{c:?} truth {truth}");
                }
            }
        }
    }
}
