//! A shard's buckets: one hashbrown map from (limiter, key) to bucket state, owned by a
//! single thread, so no locks or atomics.
//!
//! Memory per live bucket is what the 1M/10M-key targets are about, so entries are packed:
//! the key is one heap slice `[limiter id: u32 LE][label value bytes]` (16 bytes inline)
//! and the slot is 24 bytes (bucket 16, last use in seconds 4, unsynced consumption 4).
//! Lookups hash a borrowed (limiter, &str) that hashes exactly like the stored key, so
//! the hot path allocates only when a new key appears.

use crate::bucket::{Take, TokenBucket};
use crate::engine::{
    Decision, Engine, LimiterId, LimiterOutcome, OutcomeKind, Outcomes, PlannedTake,
};
use hashbrown::HashTable;
use std::hash::{BuildHasher, Hasher};

/// Stored key: limiter id (4 bytes LE) followed by the label value.
#[derive(Clone, PartialEq, Eq)]
struct BucketKey(Box<[u8]>);

impl BucketKey {
    fn new(limiter: LimiterId, value: &str) -> BucketKey {
        let mut bytes = Vec::with_capacity(4 + value.len());
        bytes.extend_from_slice(&limiter.0.to_le_bytes());
        bytes.extend_from_slice(value.as_bytes());
        BucketKey(bytes.into_boxed_slice())
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

/// Hashes (limiter, value) the same way for stored and borrowed keys.
fn hash_key(hasher: &foldhash::fast::RandomState, limiter: LimiterId, value: &[u8]) -> u64 {
    let mut h = hasher.build_hasher();
    h.write_u32(limiter.0);
    h.write(value);
    h.finish()
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
    /// `HashTable` rather than `HashMap`: we supply the hash, so a lookup hashes the
    /// borrowed key once and a miss inserts with that same hash.
    map: HashTable<(BucketKey, Slot)>,
    hasher: foldhash::fast::RandomState,
    /// Record consumption for replication (cluster mode only: costs a dirty list).
    track_unsynced: bool,
    /// Keys with non-zero `unsynced`, so a drain does not scan the whole map.
    dirty: Vec<BucketKey>,
}

impl Default for BucketStore {
    fn default() -> Self {
        BucketStore::new()
    }
}

impl BucketStore {
    /// An empty store.
    pub fn new() -> BucketStore {
        BucketStore {
            map: HashTable::new(),
            hasher: Default::default(),
            track_unsynced: false,
            dirty: Vec::new(),
        }
    }

    /// An empty store sized for `keys` buckets.
    pub fn with_capacity(keys: usize) -> BucketStore {
        BucketStore {
            map: HashTable::with_capacity(keys),
            ..BucketStore::new()
        }
    }

    /// Start recording consumption for [`BucketStore::drain_unsynced`].
    pub fn track_consumption(&mut self, on: bool) {
        self.track_unsynced = on;
    }

    /// Live buckets.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no live buckets.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes of the map's table (excluding key heap slices): for memory accounting.
    pub fn table_bytes(&self) -> usize {
        self.map.allocation_size()
    }

    fn find(&self, limiter: LimiterId, key: &str) -> Option<&Slot> {
        let hash = hash_key(&self.hasher, limiter, key.as_bytes());
        self.map
            .find(hash, |(k, _)| {
                k.limiter() == limiter && k.value() == key.as_bytes()
            })
            .map(|(_, slot)| slot)
    }

    fn slot(&mut self, engine: &Engine, limiter: LimiterId, key: &str, now_ns: u64) -> &mut Slot {
        let hash = hash_key(&self.hasher, limiter, key.as_bytes());
        let hasher = &self.hasher;
        let entry = self.map.entry(
            hash,
            |(k, _)| k.limiter() == limiter && k.value() == key.as_bytes(),
            |(k, _)| hash_key(hasher, k.limiter(), k.value()),
        );
        let occupied = entry.or_insert_with(|| {
            let params = engine.limiter(limiter).params_for(key);
            let slot = Slot {
                bucket: TokenBucket::new(&params, now_ns),
                last_used_s: seconds(now_ns),
                unsynced: 0.0,
            };
            (BucketKey::new(limiter, key), slot)
        });
        &mut occupied.into_mut().1
    }

    /// Take `tokens` from one bucket (negative = return), creating it full if new.
    pub fn take(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: f64,
        now_ns: u64,
    ) -> Take {
        let params = engine.limiter(limiter).params_for(key);
        let track = self.track_unsynced;
        let slot = self.slot(engine, limiter, key, now_ns);
        let take = slot.bucket.take(&params, now_ns, tokens);
        slot.last_used_s = seconds(now_ns);
        if track && take.accepted && tokens != 0.0 {
            let was_clean = slot.unsynced == 0.0;
            slot.unsynced += tokens as f32;
            if was_clean {
                self.dirty.push(BucketKey::new(limiter, key));
            }
        }
        take
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

    /// Takes every planned bucket of one shard's group, in order. If any rejects, the
    /// group's accepted takes are handed back at once and marked `Returned`; the caller
    /// hands back other groups' tokens (see [`BucketStore::give_back`]).
    pub fn take_group(
        &mut self,
        engine: &Engine,
        takes: &[PlannedTake<'_>],
        now_ns: u64,
    ) -> Outcomes {
        let mut outcomes = Outcomes::new();
        for t in takes {
            let outcome = match t.key {
                None => LimiterOutcome {
                    limiter: t.limiter,
                    kind: OutcomeKind::KeyNotFound,
                    tokens: t.tokens,
                    remaining: 0.0,
                    current: 0.0,
                    wait_ns: 0,
                },
                Some(key) => {
                    let take = self.take(engine, t.limiter, key, t.tokens, now_ns);
                    LimiterOutcome {
                        limiter: t.limiter,
                        kind: if take.accepted {
                            OutcomeKind::Accepted
                        } else {
                            OutcomeKind::Rejected
                        },
                        tokens: t.tokens,
                        remaining: take.remaining,
                        current: take.current,
                        wait_ns: take.wait_ns,
                    }
                }
            };
            outcomes.push(outcome);
        }
        if Decision::needs_return(&outcomes) {
            self.give_back(engine, takes, &mut outcomes, now_ns);
        }
        outcomes
    }

    /// Hands back the tokens of every `Accepted` outcome (matched to `takes` by position)
    /// and marks it `Returned`.
    pub fn give_back(
        &mut self,
        engine: &Engine,
        takes: &[PlannedTake<'_>],
        outcomes: &mut [LimiterOutcome],
        now_ns: u64,
    ) {
        for (t, o) in takes.iter().zip(outcomes.iter_mut()) {
            if o.kind != OutcomeKind::Accepted {
                continue;
            }
            if let Some(key) = t.key {
                let back = self.take(engine, t.limiter, key, -t.tokens, now_ns);
                o.remaining = back.remaining;
            }
            o.kind = OutcomeKind::Returned;
        }
    }

    /// Drops buckets idle longer than their limiter's `max_idle_time` (and with nothing
    /// left to replicate). Returns how many were dropped. O(live buckets): the server
    /// runs it on a timer, not per request.
    pub fn evict_idle(&mut self, engine: &Engine, now_ns: u64) -> usize {
        let now_s = seconds(now_ns);
        let before = self.map.len();
        self.map.retain(|(key, slot)| {
            let max_idle_s = engine.get_limiter(key.limiter()).map_or(0, |spec| {
                (spec.max_idle_ns / 1_000_000_000).min(u64::from(u32::MAX)) as u32
            });
            slot.unsynced != 0.0 || now_s.saturating_sub(slot.last_used_s) < max_idle_s
        });
        before - self.map.len()
    }

    /// Consumption recorded since the last drain, reset to zero (cluster replication).
    pub fn drain_unsynced(&mut self, mut emit: impl FnMut(Consumed)) {
        for key in std::mem::take(&mut self.dirty) {
            let hash = hash_key(&self.hasher, key.limiter(), key.value());
            let Some((_, slot)) = self.map.find_mut(hash, |(k, _)| *k == key) else {
                continue;
            };
            let tokens = std::mem::replace(&mut slot.unsynced, 0.0);
            if tokens != 0.0 {
                emit(Consumed {
                    limiter: key.limiter(),
                    key: String::from_utf8_lossy(key.value()).into_owned(),
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
        for (key, slot) in self.map.iter() {
            let Some(spec) = engine.get_limiter(key.limiter()) else {
                continue;
            };
            let value = std::str::from_utf8(key.value()).unwrap_or_default();
            emit(
                key.limiter(),
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

fn seconds(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000).min(u64::from(u32::MAX)) as u32
}
