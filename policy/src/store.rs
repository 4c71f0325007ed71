//! A shard's buckets: hashbrown tables from (limiter, key) to bucket state, owned by a
//! single thread, so no locks or atomics.
//!
//! Memory and cache misses per live bucket are what the 1M/10M-key targets are about, so
//! entries are packed and short keys live inside the table:
//! - keys of up to [`INLINE_VALUE_MAX`] bytes (most user ids, tenant names, IPs) are stored
//!   inline: a 16-byte `[len][limiter id u16][value]` array, so a lookup touches one cache
//!   line and there is no per-key allocation;
//! - longer keys go to a second table as one heap slice `[limiter id u32][value]`.
//!
//! The slot is 24 bytes (bucket 16, last use in seconds 4, unsynced consumption 4), so an
//! inline entry is 40 bytes. Lookups hash a borrowed (limiter, &str) exactly as the
//! stored key hashes, so the hot path allocates only when a new long key appears.

use crate::bucket::{Take, TokenBucket};
use crate::engine::Engine;
use crate::identity::LimiterId;
use crate::tokens::Tokens;
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};

/// Longest label value stored inline (16 bytes minus length and a u16 limiter id).
pub const INLINE_VALUE_MAX: usize = 13;

/// How a table stores its keys.
trait StoredKey: Sized {
    fn new(limiter: LimiterId, value: &[u8]) -> Self;
    fn limiter(&self) -> LimiterId;
    fn value(&self) -> &[u8];
}

/// `[value len][limiter id u16 LE][value, zero padded]`; only for ids < 65536 and values
/// of at most [`INLINE_VALUE_MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct InlineKey([u8; 16]);

impl StoredKey for InlineKey {
    fn new(limiter: LimiterId, value: &[u8]) -> InlineKey {
        let mut raw = [0u8; 16];
        raw[0] = value.len() as u8; // <= INLINE_VALUE_MAX, checked by `fits_inline`
        raw[1..3].copy_from_slice(&(limiter.0 as u16).to_le_bytes());
        raw[3..3 + value.len()].copy_from_slice(value);
        InlineKey(raw)
    }

    fn limiter(&self) -> LimiterId {
        LimiterId(u32::from(u16::from_le_bytes([self.0[1], self.0[2]])))
    }

    fn value(&self) -> &[u8] {
        &self.0[3..3 + usize::from(self.0[0]).min(INLINE_VALUE_MAX)]
    }
}

/// `[limiter id u32 LE][value]` on the heap.
#[derive(Clone, PartialEq, Eq)]
struct HeapKey(Box<[u8]>);

impl StoredKey for HeapKey {
    fn new(limiter: LimiterId, value: &[u8]) -> HeapKey {
        let mut bytes = Vec::with_capacity(4 + value.len());
        bytes.extend_from_slice(&limiter.0.to_le_bytes());
        bytes.extend_from_slice(value);
        HeapKey(bytes.into_boxed_slice())
    }

    fn limiter(&self) -> LimiterId {
        let mut id = [0u8; 4];
        id.copy_from_slice(&self.0[..4]);
        LimiterId(u32::from_le_bytes(id))
    }

    fn value(&self) -> &[u8] {
        &self.0[4..]
    }
}

fn fits_inline(limiter: LimiterId, value: &[u8]) -> bool {
    value.len() <= INLINE_VALUE_MAX && limiter.0 <= u32::from(u16::MAX)
}

/// Hashes (limiter, value) the same way for stored and borrowed keys.
fn hash_key(hasher: &foldhash::fast::RandomState, limiter: LimiterId, value: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write_u32(limiter.0);
    h.write(value);
    h.finish()
}

/// One hashbrown table of buckets with one key representation.
struct Table<K> {
    entries: HashTable<(K, Slot)>,
}

impl<K: StoredKey> Table<K> {
    fn with_capacity(n: usize) -> Self {
        Table {
            entries: HashTable::with_capacity(n),
        }
    }

    fn find(
        &self,
        hasher: &foldhash::fast::RandomState,
        limiter: LimiterId,
        value: &[u8],
    ) -> Option<&Slot> {
        let hash = hash_key(hasher, limiter, value);
        self.entries
            .find(hash, |(k, _)| k.limiter() == limiter && k.value() == value)
            .map(|(_, s)| s)
    }

    fn find_mut(
        &mut self,
        hasher: &foldhash::fast::RandomState,
        limiter: LimiterId,
        value: &[u8],
    ) -> Option<&mut Slot> {
        let hash = hash_key(hasher, limiter, value);
        self.entries
            .find_mut(hash, |(k, _)| k.limiter() == limiter && k.value() == value)
            .map(|(_, s)| s)
    }

    /// The slot, created by `new_slot` if absent; one hash for probe and insert.
    fn slot(
        &mut self,
        hasher: &foldhash::fast::RandomState,
        limiter: LimiterId,
        value: &[u8],
        new_slot: impl FnOnce() -> Slot,
    ) -> &mut Slot {
        let hash = hash_key(hasher, limiter, value);
        let entry = self.entries.entry(
            hash,
            |(k, _)| k.limiter() == limiter && k.value() == value,
            |(k, _)| hash_key(hasher, k.limiter(), k.value()),
        );
        &mut entry
            .or_insert_with(|| (K::new(limiter, value), new_slot()))
            .into_mut()
            .1
    }
}

#[derive(Clone, Copy)]
struct Slot {
    bucket: TokenBucket,
    /// Seconds (of the caller's clock) of the last take: drives idle eviction.
    last_used_s: u32,
    /// Tokens consumed here since the last replication drain (cluster mode).
    unsynced: f32,
}

/// One consumption record drained for replication.
#[derive(Clone, Debug, PartialEq)]
pub struct Consumed {
    /// Which limiter.
    pub limiter: LimiterId,
    /// The bucket key.
    pub key: String,
    /// Tokens consumed since the previous drain (negative when more was returned).
    pub tokens: f32,
}

/// A shard's buckets.
pub struct BucketStore {
    /// Buckets with short keys, stored inline. `HashTable` rather than `HashMap`: we
    /// supply the hash, so a lookup hashes the borrowed key once and a miss inserts with
    /// that same hash.
    short: Table<InlineKey>,
    /// Buckets with keys longer than [`INLINE_VALUE_MAX`].
    long: Table<HeapKey>,
    hasher: foldhash::fast::RandomState,
    /// Record consumption for replication (cluster mode only: costs a dirty list).
    track_unsynced: bool,
    /// Keys with non-zero `unsynced`, so a drain does not scan the whole map.
    dirty: Vec<(LimiterId, Box<str>)>,
}

impl Default for BucketStore {
    fn default() -> Self {
        BucketStore::new()
    }
}

impl BucketStore {
    /// An empty store.
    pub fn new() -> BucketStore {
        BucketStore::with_capacity(0)
    }

    /// An empty store sized for `keys` buckets (with short keys).
    pub fn with_capacity(keys: usize) -> BucketStore {
        BucketStore {
            short: Table::with_capacity(keys),
            long: Table::with_capacity(0),
            hasher: Default::default(),
            track_unsynced: false,
            dirty: Vec::new(),
        }
    }

    /// Start recording consumption for [`BucketStore::drain_unsynced`].
    pub fn track_consumption(&mut self, on: bool) {
        self.track_unsynced = on;
    }

    /// Live buckets.
    pub fn len(&self) -> usize {
        self.short.entries.len() + self.long.entries.len()
    }

    /// Whether there are no live buckets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the tables (excluding long keys' heap slices): for memory accounting.
    pub fn table_bytes(&self) -> usize {
        self.short.entries.allocation_size() + self.long.entries.allocation_size()
    }

    fn find(&self, limiter: LimiterId, key: &str) -> Option<&Slot> {
        let value = key.as_bytes();
        if fits_inline(limiter, value) {
            self.short.find(&self.hasher, limiter, value)
        } else {
            self.long.find(&self.hasher, limiter, value)
        }
    }

    fn find_mut(&mut self, limiter: LimiterId, key: &str) -> Option<&mut Slot> {
        let value = key.as_bytes();
        if fits_inline(limiter, value) {
            self.short.find_mut(&self.hasher, limiter, value)
        } else {
            self.long.find_mut(&self.hasher, limiter, value)
        }
    }

    fn slot(&mut self, engine: &Engine, limiter: LimiterId, key: &str, now_ns: u64) -> &mut Slot {
        let new_slot = || {
            let params = engine.limiter(limiter).params_for(key);
            Slot {
                bucket: TokenBucket::new(&params, now_ns),
                last_used_s: seconds(now_ns),
                unsynced: 0.0,
            }
        };
        let value = key.as_bytes();
        if fits_inline(limiter, value) {
            self.short.slot(&self.hasher, limiter, value, new_slot)
        } else {
            self.long.slot(&self.hasher, limiter, value, new_slot)
        }
    }

    /// Takes `tokens` from one bucket, creating it full if new.
    pub fn take(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        now_ns: u64,
    ) -> Take {
        let params = engine.limiter(limiter).params_for(key);
        let slot = self.slot(engine, limiter, key, now_ns);
        let take = slot.bucket.take(&params, now_ns, tokens);
        slot.last_used_s = seconds(now_ns);
        if take.accepted {
            self.record_consumption(limiter, key, tokens.get());
        }
        take
    }

    /// Hands back `tokens` taken from one bucket by a flow that another limiter rejected.
    /// The one way tokens return to a bucket, whichever shard decided the flow.
    pub fn give_back(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        now_ns: u64,
    ) {
        let Some(spec) = engine.get_limiter(limiter) else {
            return;
        };
        let params = spec.params_for(key);
        let slot = self.slot(engine, limiter, key, now_ns);
        slot.bucket.put_back(&params, now_ns, tokens);
        slot.last_used_s = seconds(now_ns);
        self.record_consumption(limiter, key, -tokens.get());
    }

    /// Adds to a bucket's consumption since the last replication drain (cluster mode).
    fn record_consumption(&mut self, limiter: LimiterId, key: &str, tokens: f64) {
        if !self.track_unsynced || tokens == 0.0 {
            return;
        }
        let Some(slot) = self.find_mut(limiter, key) else {
            return;
        };
        let was_clean = slot.unsynced == 0.0;
        slot.unsynced += tokens as f32;
        if was_clean {
            self.dirty.push((limiter, key.into()));
        }
    }

    /// Debit a peer's consumption (replication): may drive the level below zero.
    pub fn debit(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: f64,
        now_ns: u64,
    ) {
        let params = engine.limiter(limiter).params_for(key);
        let slot = self.slot(engine, limiter, key, now_ns);
        slot.bucket.debit(&params, now_ns, tokens);
        slot.last_used_s = seconds(now_ns);
    }

    /// Tokens available in one bucket now (a new key reports full capacity).
    pub fn level(&self, engine: &Engine, limiter: LimiterId, key: &str, now_ns: u64) -> f64 {
        let params = engine.limiter(limiter).params_for(key);
        match self.find(limiter, key) {
            Some(slot) => slot.bucket.level(&params, now_ns),
            None => params.capacity,
        }
    }

    /// Drops buckets idle longer than their limiter's `max_idle_time` (and with nothing
    /// left to replicate). Returns how many were dropped. O(live buckets): the server
    /// runs it on a timer, not per request.
    pub fn evict_idle(&mut self, engine: &Engine, now_ns: u64) -> usize {
        let now_s = seconds(now_ns);
        let before = self.len();
        let keep = |limiter: LimiterId, value: &[u8], slot: &Slot| {
            let Some(spec) = engine.get_limiter(limiter) else {
                return false; // its component is gone (a reload removed it)
            };
            if slot.unsynced != 0.0 {
                return true;
            }
            if spec.kind.counts_in_flight() {
                // Tokens of flows in flight: dropping the counter would forget them.
                let params = spec.params_for(std::str::from_utf8(value).unwrap_or_default());
                if slot.bucket.level(&params, now_ns) < params.capacity {
                    return true;
                }
            }
            let max_idle_s = (spec.max_idle_ns / 1_000_000_000).min(u64::from(u32::MAX)) as u32;
            now_s.saturating_sub(slot.last_used_s) < max_idle_s
        };
        self.short
            .entries
            .retain(|(k, slot)| keep(k.limiter(), k.value(), slot));
        self.long
            .entries
            .retain(|(k, slot)| keep(k.limiter(), k.value(), slot));
        before - self.len()
    }

    /// After a reload from `old` to `new`: a concurrency counter whose capacity changed
    /// moves by the difference, so the flows in flight stay counted (20 → 10 with 15 in
    /// flight leaves -5: nothing is admitted until 5 more end). Token buckets need nothing:
    /// the next fill caps them at the new capacity and fills at the new rate. O(live
    /// buckets), once per reload.
    pub fn rebase_in_flight(&mut self, old: &Engine, new: &Engine, now_ns: u64) {
        let shift = |limiter: LimiterId, value: &[u8], slot: &mut Slot| {
            let (Some(before), Some(after)) = (old.get_limiter(limiter), new.get_limiter(limiter))
            else {
                return;
            };
            if !after.kind.counts_in_flight() {
                return;
            }
            let key = std::str::from_utf8(value).unwrap_or_default();
            let (was, now) = (before.params_for(key), after.params_for(key));
            if was.capacity != now.capacity {
                slot.bucket.debit(&now, now_ns, was.capacity - now.capacity);
            }
        };
        for (k, slot) in self.short.entries.iter_mut() {
            shift(k.limiter(), k.value(), slot);
        }
        for (k, slot) in self.long.entries.iter_mut() {
            shift(k.limiter(), k.value(), slot);
        }
    }

    /// Consumption recorded since the last drain, reset to zero (cluster replication).
    pub fn drain_unsynced(&mut self, mut emit: impl FnMut(Consumed)) {
        for (limiter, key) in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.find_mut(limiter, &key) else {
                continue;
            };
            let tokens = std::mem::replace(&mut slot.unsynced, 0.0);
            if tokens != 0.0 {
                emit(Consumed {
                    limiter,
                    key: key.into(),
                    tokens,
                });
            }
        }
    }

    /// Every bucket's level at `now_ns` (state transfer to a joining peer).
    pub fn snapshot(
        &self,
        engine: &Engine,
        now_ns: u64,
        mut emit: impl FnMut(LimiterId, &str, f64),
    ) {
        let short = self
            .short
            .entries
            .iter()
            .map(|(k, s)| (k.limiter(), k.value(), s));
        let long = self
            .long
            .entries
            .iter()
            .map(|(k, s)| (k.limiter(), k.value(), s));
        for (limiter, value, slot) in short.chain(long) {
            let Some(spec) = engine.get_limiter(limiter) else {
                continue;
            };
            let value = std::str::from_utf8(value).unwrap_or_default();
            emit(
                limiter,
                value,
                slot.bucket.level(&spec.params_for(value), now_ns),
            );
        }
    }

    /// Lowers a bucket to `level` if it is above it (state transfer: a peer saw more
    /// consumption than we did). Never raises a level, so a stale snapshot cannot
    /// hand out tokens again.
    pub fn lower_to(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        level: f64,
        now_ns: u64,
    ) {
        let params = engine.limiter(limiter).params_for(key);
        let slot = self.slot(engine, limiter, key, now_ns);
        let current = slot.bucket.level(&params, now_ns);
        if level < current {
            slot.bucket.debit(&params, now_ns, current - level);
        }
    }
}

/// One live bucket, read without changing it ([`BucketStore::inspect`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketView {
    /// Tokens available now.
    pub tokens: f64,
    /// When it gains tokens and is full again.
    pub refill: crate::bucket::Refill,
    /// When it was last taken from, in whole seconds of the caller's clock.
    pub last_used_s: u32,
}

impl BucketStore {
    /// A live bucket as it stands at `now_ns` (the admin API's bucket read); None when no
    /// bucket exists for the key (a take would create it full).
    pub fn inspect(
        &self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        now_ns: u64,
    ) -> Option<BucketView> {
        let params = engine.get_limiter(limiter)?.params_for(key);
        let slot = self.find(limiter, key)?;
        Some(BucketView {
            tokens: slot.bucket.level(&params, now_ns),
            refill: slot.bucket.refill(&params, now_ns),
            last_used_s: slot.last_used_s,
        })
    }
}

fn seconds(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000).min(u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_policies;

    fn tk(n: f64) -> Tokens {
        Tokens::new(n).expect("test cost")
    }

    fn engine() -> Engine {
        let policies = parse_policies(
            "policies: [ { policy_name: p, rate_limiter: { bucket_capacity: 3, fill_amount: 0, parameters: { interval: 1s, limit_by_label_key: k }, selectors: [ { control_point: c } ] } } ]",
            "t",
        )
        .unwrap();
        Engine::new(&policies)
    }

    #[test]
    fn short_and_long_keys_are_distinct_buckets() {
        let e = engine();
        let mut s = BucketStore::new();
        let short = "abcdefghijklm"; // INLINE_VALUE_MAX bytes
        let long = "abcdefghijklmn"; // one more: heap
        assert_eq!(short.len(), INLINE_VALUE_MAX);
        for _ in 0..3 {
            assert!(s.take(&e, LimiterId(0), short, tk(1.0), 0).accepted);
        }
        assert!(!s.take(&e, LimiterId(0), short, tk(1.0), 0).accepted);
        assert!(s.take(&e, LimiterId(0), long, tk(3.0), 0).accepted);
        assert!(!s.take(&e, LimiterId(0), long, tk(1.0), 0).accepted);
        assert!(
            s.take(&e, LimiterId(0), "", tk(1.0), 0).accepted,
            "empty key (shared bucket) is its own"
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s.level(&e, LimiterId(0), short, 0), 0.0);
        assert_eq!(s.level(&e, LimiterId(0), "unseen", 0), 3.0);
    }

    #[test]
    fn inspect_reads_a_live_bucket_and_nothing_else() {
        let e = engine();
        let mut s = BucketStore::new();
        assert_eq!(s.inspect(&e, LimiterId(0), "a", 0), None);
        s.take(&e, LimiterId(0), "a", tk(2.0), 3_000_000_000);
        let view = s
            .inspect(&e, LimiterId(0), "a", 4_000_000_000)
            .expect("live");
        assert_eq!(view.tokens, 1.0);
        assert_eq!(view.last_used_s, 3);
        assert_eq!(view.refill, crate::bucket::Refill::NEVER, "fill_amount 0");
        assert_eq!(s.inspect(&e, LimiterId(9), "a", 0), None, "unknown limiter");
    }

    #[test]
    fn drain_reports_consumption_once() {
        let e = engine();
        let mut s = BucketStore::new();
        s.track_consumption(true);
        s.take(&e, LimiterId(0), "a", tk(1.0), 0);
        s.take(&e, LimiterId(0), "a", tk(1.0), 0);
        s.take(&e, LimiterId(0), "a-very-long-key-value", tk(2.0), 0);
        let mut seen = Vec::new();
        s.drain_unsynced(|c| seen.push((c.key, c.tokens)));
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            vec![
                ("a".to_string(), 2.0),
                ("a-very-long-key-value".to_string(), 2.0)
            ]
        );
        let mut again = 0;
        s.drain_unsynced(|_| again += 1);
        assert_eq!(again, 0);
    }

    proptest::proptest! {
        /// The two-table store behaves exactly like one plain map of buckets.
        #[test]
        fn matches_a_plain_map_model(ops in proptest::collection::vec((0usize..6, 0u64..3, 0.1f64..2.0), 1..200)) {
            let e = engine();
            let params = e.limiter(LimiterId(0)).params;
            let keys = ["", "a", "abcdefghijklm", "abcdefghijklmn", "user-12345678901234567890", "z"];
            let mut store = BucketStore::new();
            let mut model: std::collections::HashMap<&str, TokenBucket> = Default::default();
            let mut now = 0;
            for (k, dt, n) in ops {
                now += dt * 100_000_000;
                let key = keys[k];
                let got = store.take(&e, LimiterId(0), key, tk(n), now);
                let want = model.entry(key).or_insert_with(|| TokenBucket::new(&params, now)).take(&params, now, tk(n));
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
