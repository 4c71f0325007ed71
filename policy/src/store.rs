//! A shard's buckets: tables from (limiter, key) to bucket state, owned by a single thread,
//! so no locks or atomics.
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
//!
//! What a client can make the store consume is bounded, and no step is long:
//! - **Growth in small steps.** Each table is segmented (`store/segments.rs`): a growth step splits
//!   one segment of at most a few thousand entries, never the whole table.
//! - **A cap on live buckets** ([`BucketStore::set_max_buckets`]). At the cap a new key first
//!   evicts one bucket *of the segment it goes to*, found in a bounded sample: the first
//!   bucket whose loss would change no decision (full again, nothing to replicate), else the
//!   idle-longest of the sample. Taking the victim where the new key lands keeps every
//!   segment's size, so a flood at the cap neither splits segments nor empties and regrows
//!   them: the tables' memory stays flat. Only when that segment has nothing to evict does a
//!   clock hand over all segments pick one. Evictions of buckets that were not full are
//!   counted ([`StoreStats::evicted_not_full`]): such a key starts full again, an
//!   over-admission.
//! - **No abort on memory.** Every allocation a new key causes is fallible; a key that gets
//!   no room is decided on a transient full bucket that is then forgotten
//!   ([`StoreStats::refused`]).
//! - **An incremental sweep** ([`BucketStore::sweep`]): each call visits a bounded number of
//!   bucket positions from a cursor, drops buckets idle past their `max_idle_time`, and
//!   shrinks segments left mostly empty, so memory returns.
//!
//! # Layout
//! - this file: [`BucketStore`], its keys, the keep and eviction rules.
//! - `store/segments.rs`: the segmented hash table (extendible hashing over hashbrown tables).

mod segments;

use crate::bucket::{Take, TokenBucket};
use crate::engine::Engine;
use crate::identity::LimiterId;
use crate::tokens::Tokens;
use segments::{NoRoom, Position, SegmentedTable};
use std::hash::{BuildHasher, Hasher};

/// Longest label value stored inline (16 bytes minus length and a u16 limiter id).
pub const INLINE_VALUE_MAX: usize = 13;

/// Bucket positions one [`BucketStore::sweep`] call should visit, so that a call holds its
/// shard for well under a millisecond. Why this value: a position costs a few nanoseconds
/// (a control byte, and for an occupied one its slot and limiter), measured at ~0.1 ms
/// per call (docs/performance.md), leaving room for a slower machine.
pub const SWEEP_BUDGET: usize = 16_384;

/// Buckets the eviction hand compares before it picks the idle-longest. Why this value:
/// sampled LRU (as Redis does) with 16 samples evicts from the oldest ~6% on average, at
/// a bounded cost of 16 bucket reads per new key at the cap.
const EVICT_SAMPLE: usize = 16;

/// Bucket positions (occupied or not) the eviction hand looks at, at most, for one victim.
/// Why this value: at the cap the tables are at least ~40% occupied, so 16 samples are
/// found within ~40 positions; the bound only matters for sparse tables, where it keeps a
/// new key's cost to a few microseconds.
const EVICT_MAX_POSITIONS: usize = 256;

/// How a table stores its keys.
trait StoredKey: Sized {
    fn limiter(&self) -> LimiterId;
    fn value(&self) -> &[u8];
}

/// `[value len][limiter id u16 LE][value, zero padded]`; only for ids < 65536 and values
/// of at most [`INLINE_VALUE_MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
struct InlineKey([u8; 16]);

impl InlineKey {
    fn new(limiter: LimiterId, value: &[u8]) -> InlineKey {
        let mut raw = [0u8; 16];
        raw[0] = value.len() as u8; // <= INLINE_VALUE_MAX, checked by `fits_inline`
        raw[1..3].copy_from_slice(&(limiter.0 as u16).to_le_bytes());
        raw[3..3 + value.len()].copy_from_slice(value);
        InlineKey(raw)
    }
}

impl StoredKey for InlineKey {
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

impl HeapKey {
    /// The key, or `NoRoom` if its slice cannot be allocated.
    fn try_new(limiter: LimiterId, value: &[u8]) -> Result<HeapKey, NoRoom> {
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(4 + value.len())
            .map_err(|_| NoRoom)?;
        bytes.extend_from_slice(&limiter.0.to_le_bytes());
        bytes.extend_from_slice(value);
        Ok(HeapKey(bytes.into_boxed_slice()))
    }
}

impl StoredKey for HeapKey {
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

/// One segmented table of buckets with one key representation.
struct Table<K> {
    entries: SegmentedTable<(K, Slot)>,
}

impl<K: StoredKey> Table<K> {
    fn new() -> Self {
        Table {
            entries: SegmentedTable::new(),
        }
    }

    fn with_capacity(n: usize) -> Self {
        Table {
            entries: SegmentedTable::with_capacity(n),
        }
    }

    #[inline]
    fn find(&self, hash: u64, limiter: LimiterId, value: &[u8]) -> Option<Position> {
        self.entries
            .find(hash, |(k, _)| k.limiter() == limiter && k.value() == value)
    }

    #[inline]
    fn slot(&self, at: Position) -> Option<&Slot> {
        self.entries.get(at).map(|(_, s)| s)
    }

    #[inline]
    fn slot_mut(&mut self, at: Position) -> Option<&mut Slot> {
        self.entries.get_mut(at).map(|(_, s)| s)
    }

    /// Adds a key known to be absent.
    fn insert(
        &mut self,
        hasher: &foldhash::fast::RandomState,
        hash: u64,
        key: K,
        slot: Slot,
    ) -> Result<Position, NoRoom> {
        self.entries.insert(hash, (key, slot), |(k, _)| {
            hash_key(hasher, k.limiter(), k.value())
        })
    }

    /// The bucket at `at`, as (limiter, key value, slot).
    #[inline]
    fn at(&self, at: Position) -> Option<(LimiterId, &[u8], &Slot)> {
        self.entries
            .get(at)
            .map(|(k, s)| (k.limiter(), k.value(), s))
    }

    /// Drops one segment's `expired` buckets, telling `dropped_one` each one's limiter;
    /// returns (positions visited, buckets dropped).
    fn sweep_segment(
        &mut self,
        segment: usize,
        expired: impl Fn(LimiterId, &[u8], &Slot) -> bool,
        mut dropped_one: impl FnMut(LimiterId),
    ) -> (usize, usize) {
        let visited = self.entries.segment_buckets(segment);
        let dropped = self.entries.retain_segment(segment, |(k, slot)| {
            let drop = expired(k.limiter(), k.value(), slot);
            if drop {
                dropped_one(k.limiter());
            }
            !drop
        });
        (visited, dropped)
    }

    /// Shrinks one segment if it is left mostly empty; returns whether it did.
    fn shrink_segment(&mut self, hasher: &foldhash::fast::RandomState, segment: usize) -> bool {
        self.entries
            .shrink_if_sparse(segment, |(k, _)| hash_key(hasher, k.limiter(), k.value()))
    }

    fn iter(&self) -> impl Iterator<Item = (LimiterId, &[u8], &Slot)> {
        self.entries
            .iter()
            .map(|(k, s)| (k.limiter(), k.value(), s))
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

/// Which table a key's bucket is in, and its hash there: see [`BucketStore::bucket_hash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketHash {
    hash: u64,
    long: bool,
}

/// A place in the store: which table, and where in it. The sweep cursor and the eviction
/// hand walk the short-key table, then the long-key table, then start over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    long: bool,
    at: Position,
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

/// A store's counters, for metrics and logs. Counts are since the store was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live buckets.
    pub live: usize,
    /// The cap on live buckets (`usize::MAX`: none).
    pub max_buckets: usize,
    /// Buckets dropped at the cap that were full with nothing left to replicate (or whose
    /// limiter a reload removed): dropping them changes no decision.
    pub evicted_full: u64,
    /// Buckets dropped at the cap that were below capacity or not yet replicated: their
    /// keys start full again, an over-admission of up to what each had consumed.
    pub evicted_not_full: u64,
    /// Buckets dropped by the idle sweep (idle past their limiter's `max_idle_time`).
    pub evicted_idle: u64,
    /// New keys that got no bucket (nothing evictable within the bounded search, or an
    /// allocation failed): decided on a transient full bucket, then forgotten.
    pub refused: u64,
    /// Bucket positions in the tables: what one full sweep visits.
    pub positions: usize,
}

/// What one [`BucketStore::sweep`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Bucket positions visited (occupied or not): the work done, at most the budget.
    pub visited: usize,
    /// Buckets dropped.
    pub dropped: usize,
    /// Whether the cursor came back to the start: a whole pass ended in this call.
    pub wrapped: bool,
}

/// A shard's buckets.
pub struct BucketStore {
    /// Buckets with short keys, stored inline. We supply the hash, so a lookup hashes the
    /// borrowed key once and a miss inserts with that same hash.
    short: Table<InlineKey>,
    /// Buckets with keys longer than [`INLINE_VALUE_MAX`].
    long: Table<HeapKey>,
    hasher: foldhash::fast::RandomState,
    /// Record consumption for replication (cluster mode only: costs a dirty list).
    track_unsynced: bool,
    /// Keys with non-zero `unsynced`, so a drain does not scan the whole map.
    dirty: Vec<(LimiterId, Box<str>)>,
    /// Live buckets at most; a new key beyond it evicts one first.
    max_buckets: usize,
    /// Where the idle sweep goes on.
    sweep_cursor: Cursor,
    /// Where the eviction hand looks for its next victim.
    hand: Cursor,
    /// The transient bucket a refused key is decided on (never stored).
    scratch: Slot,
    stats: StoreStats,
    /// Live buckets per limiter (index: `LimiterId`), for the admin API and status page.
    live_by_limiter: Vec<usize>,
}

impl Default for BucketStore {
    fn default() -> Self {
        BucketStore::new()
    }
}

/// What dropping one bucket would lose, for choosing a victim at the cap; ordered from
/// least to most. (The idle sweep has its own rule, [`idle_expired`].)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Loss {
    /// Nothing: its limiter is gone, or it is full with nothing left to replicate, so the
    /// key recreated later starts exactly where it is (full).
    Nothing,
    /// Consumption only this bucket remembers: recreated, the key starts full again.
    Consumption,
    /// Consumption not yet replicated to peers (cluster mode): they never learn of it.
    Unreplicated,
}

/// A sampled search for an eviction victim: the first bucket that loses nothing, else the
/// one that loses least, idle-longest first, of [`EVICT_SAMPLE`] evictable buckets.
#[derive(Default)]
struct Search {
    best: Option<(Cursor, (Loss, u32))>,
    sampled: usize,
}

impl Search {
    /// Looks at the bucket at `c` (`loss` None: never a victim, and not a sample); true
    /// when the search is over.
    fn consider(&mut self, c: Cursor, loss: Option<Loss>, slot: &Slot) -> bool {
        let Some(loss) = loss else {
            return false;
        };
        let rank = (loss, slot.last_used_s);
        if loss == Loss::Nothing {
            self.best = Some((c, rank));
            return true;
        }
        if self.best.is_none_or(|(_, r)| rank < r) {
            self.best = Some((c, rank));
        }
        self.sampled += 1;
        self.sampled == EVICT_SAMPLE
    }
}

/// The eviction rule: what dropping this bucket at `now_ns` would lose, or None if it may
/// not be dropped at all: a concurrency counter below capacity holds the tokens of flows in
/// flight, which would come back to a counter that no longer remembers them (the key would
/// admit its whole capacity again while those flows still run, for as long as they run).
fn eviction_loss(
    engine: &Engine,
    limiter: LimiterId,
    value: &[u8],
    slot: &Slot,
    now_ns: u64,
) -> Option<Loss> {
    let Some(spec) = engine.get_limiter(limiter) else {
        return Some(Loss::Nothing);
    };
    let params = spec.params_for(std::str::from_utf8(value).unwrap_or_default());
    let full = slot.bucket.level(&params, now_ns) >= params.capacity;
    if spec.kind.counts_in_flight() && !full {
        return None;
    }
    Some(if slot.unsynced != 0.0 {
        Loss::Unreplicated
    } else if full {
        Loss::Nothing
    } else {
        Loss::Consumption
    })
}

/// The idle rule: whether the sweep drops this bucket at `now_ns`. At once if its limiter
/// is gone (a reload removed it); otherwise when it has been idle longer than its limiter's
/// `max_idle_time` with nothing left to replicate, except a concurrency counter below
/// capacity, which holds the tokens of flows in flight however long they run.
fn idle_expired(
    engine: &Engine,
    limiter: LimiterId,
    value: &[u8],
    slot: &Slot,
    now_ns: u64,
) -> bool {
    let Some(spec) = engine.get_limiter(limiter) else {
        return true;
    };
    if slot.unsynced != 0.0 {
        return false;
    }
    if spec.kind.counts_in_flight() {
        let params = spec.params_for(std::str::from_utf8(value).unwrap_or_default());
        if slot.bucket.level(&params, now_ns) < params.capacity {
            return false;
        }
    }
    // `last_used_s` is in whole seconds, and the bucket may have been used up to a second
    // after it: idle for its whole `max_idle_time` only once one more second has passed. A
    // time under a second counts as one, never as zero: dropped at every sweep, a bucket
    // would come back full for every key, once a second.
    let max_idle_s = spec.max_idle_ns.div_ceil(1_000_000_000);
    u64::from(seconds(now_ns).saturating_sub(slot.last_used_s)) > max_idle_s.max(1)
}

fn new_slot(engine: &Engine, limiter: LimiterId, key: &str, now_ns: u64) -> Slot {
    let params = engine.limiter(limiter).params_for(key);
    Slot {
        bucket: TokenBucket::new(&params, now_ns),
        last_used_s: seconds(now_ns),
        unsynced: 0.0,
    }
}

impl BucketStore {
    /// An empty store without a cap.
    pub fn new() -> BucketStore {
        BucketStore::with_capacity(0)
    }

    /// An empty store sized for `keys` buckets (with short keys), without a cap.
    pub fn with_capacity(keys: usize) -> BucketStore {
        BucketStore {
            short: Table::with_capacity(keys),
            long: Table::new(),
            hasher: Default::default(),
            track_unsynced: false,
            dirty: Vec::new(),
            max_buckets: usize::MAX,
            sweep_cursor: Cursor::default(),
            hand: Cursor::default(),
            scratch: Slot {
                bucket: TokenBucket::with_level(0.0, 0),
                last_used_s: 0,
                unsynced: 0.0,
            },
            stats: StoreStats::default(),
            live_by_limiter: Vec::new(),
        }
    }

    /// Live buckets of `limiter`.
    pub fn live_of(&self, limiter: LimiterId) -> usize {
        self.live_by_limiter
            .get(limiter.0 as usize)
            .copied()
            .unwrap_or(0)
    }

    fn count_in(&mut self, limiter: LimiterId) {
        let i = limiter.0 as usize;
        if i >= self.live_by_limiter.len() {
            self.live_by_limiter.resize(i + 1, 0);
        }
        if let Some(n) = self.live_by_limiter.get_mut(i) {
            *n += 1;
        }
    }

    /// Start recording consumption for [`BucketStore::drain_unsynced`].
    pub fn track_consumption(&mut self, on: bool) {
        self.track_unsynced = on;
    }

    /// Caps live buckets at `max` (set it before use): beyond it, each new key first
    /// evicts one bucket (see the module docs). 0 refuses every new key.
    pub fn set_max_buckets(&mut self, max: usize) {
        self.max_buckets = max;
    }

    /// The cap on live buckets (`usize::MAX`: none).
    pub fn max_buckets(&self) -> usize {
        self.max_buckets
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
    /// O(segments), so not per request.
    pub fn table_bytes(&self) -> usize {
        self.short.entries.allocation_size() + self.long.entries.allocation_size()
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            live: self.len(),
            max_buckets: self.max_buckets,
            positions: self.short.entries.buckets() + self.long.entries.buckets(),
            ..self.stats
        }
    }

    /// Where a key's bucket is: (long table?, position), if it exists.
    #[inline]
    fn locate(&self, limiter: LimiterId, value: &[u8]) -> Option<Cursor> {
        let hash = hash_key(&self.hasher, limiter, value);
        if fits_inline(limiter, value) {
            self.short
                .find(hash, limiter, value)
                .map(|at| Cursor { long: false, at })
        } else {
            self.long
                .find(hash, limiter, value)
                .map(|at| Cursor { long: true, at })
        }
    }

    fn find(&self, limiter: LimiterId, key: &str) -> Option<&Slot> {
        let c = self.locate(limiter, key.as_bytes())?;
        self.slot_at(c)
    }

    fn find_mut(&mut self, limiter: LimiterId, key: &str) -> Option<&mut Slot> {
        let c = self.locate(limiter, key.as_bytes())?;
        self.slot_at_mut(c)
    }

    #[inline]
    fn slot_at(&self, c: Cursor) -> Option<&Slot> {
        if c.long {
            self.long.slot(c.at)
        } else {
            self.short.slot(c.at)
        }
    }

    #[inline]
    fn slot_at_mut(&mut self, c: Cursor) -> Option<&mut Slot> {
        if c.long {
            self.long.slot_mut(c.at)
        } else {
            self.short.slot_mut(c.at)
        }
    }

    /// A key's bucket, created full if new (evicting one at the cap). A key that gets no
    /// room is given the transient `scratch` bucket, full, which nothing keeps.
    fn slot(&mut self, engine: &Engine, limiter: LimiterId, key: &str, now_ns: u64) -> &mut Slot {
        let found = match self.locate(limiter, key.as_bytes()) {
            Some(c) => Some(c),
            None => self.insert_new(engine, limiter, key, now_ns),
        };
        let slot = match found {
            Some(c) if c.long => self.long.slot_mut(c.at),
            Some(c) => self.short.slot_mut(c.at),
            None => None,
        };
        match slot {
            Some(slot) => slot,
            None => {
                self.scratch = new_slot(engine, limiter, key, now_ns);
                &mut self.scratch
            }
        }
    }

    /// Adds a bucket for a key known to be absent: first makes room at the cap, then
    /// inserts, allocating only fallibly. None (counted in `refused`) if it got no room.
    fn insert_new(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        now_ns: u64,
    ) -> Option<Cursor> {
        let value = key.as_bytes();
        let hash = hash_key(&self.hasher, limiter, value);
        let long = !fits_inline(limiter, value);
        // Two evictions per new key at most: one keeps the store at its cap, the second
        // brings it back down if the cap was lowered under a full store.
        for _ in 0..2 {
            if self.len() < self.max_buckets {
                break;
            }
            if !self.evict_in_segment_of(engine, long, hash, now_ns)
                && !self.evict_one(engine, now_ns)
            {
                break;
            }
        }
        if self.len() >= self.max_buckets {
            self.stats.refused += 1;
            return None;
        }
        let slot = new_slot(engine, limiter, key, now_ns);
        let placed = if !long {
            let key = InlineKey::new(limiter, value);
            self.short
                .insert(&self.hasher, hash, key, slot)
                .map(|at| Cursor { long: false, at })
        } else {
            HeapKey::try_new(limiter, value).and_then(|key| {
                self.long
                    .insert(&self.hasher, hash, key, slot)
                    .map(|at| Cursor { long: true, at })
            })
        };
        match placed {
            Ok(c) => {
                self.count_in(limiter);
                Some(c)
            }
            Err(NoRoom) => {
                self.stats.refused += 1;
                None
            }
        }
    }

    /// The bucket at a cursor, as (limiter, key value, slot).
    #[inline]
    fn bucket_at(&self, c: Cursor) -> Option<(LimiterId, &[u8], &Slot)> {
        if c.long {
            self.long.at(c.at)
        } else {
            self.short.at(c.at)
        }
    }

    fn remove_at(&mut self, c: Cursor) {
        if let Some((limiter, _, _)) = self.bucket_at(c) {
            count_out(&mut self.live_by_limiter, limiter);
        }
        if c.long {
            self.long.entries.remove(c.at);
        } else {
            self.short.entries.remove(c.at);
        }
    }

    /// The position after `c`: the next bucket of its segment, else the first of the next
    /// segment ([`BucketStore::next_segment`]).
    fn next(&self, c: Cursor) -> Cursor {
        let buckets = if c.long {
            self.long.entries.segment_buckets(c.at.segment)
        } else {
            self.short.entries.segment_buckets(c.at.segment)
        };
        if c.at.bucket + 1 < buckets {
            let at = Position {
                bucket: c.at.bucket + 1,
                ..c.at
            };
            return Cursor { at, ..c };
        }
        self.next_segment(c)
    }

    /// The first position of the segment after `c`'s: the next segment of its table; after
    /// the short-key table's last, the long-key table's first; after that, the start again.
    fn next_segment(&self, c: Cursor) -> Cursor {
        let segments = if c.long {
            self.long.entries.segments()
        } else {
            self.short.entries.segments()
        };
        if c.at.segment + 1 < segments {
            let at = Position {
                segment: c.at.segment + 1,
                bucket: 0,
            };
            Cursor { at, ..c }
        } else {
            Cursor {
                long: !c.long,
                at: Position::default(),
            }
        }
    }

    /// Drops one bucket of the segment a new key with `hash` goes to (in the long-key table
    /// if `long`), so that the segment's size stays what it was; false if the bounded search
    /// there found none it may drop (or the segment is empty). The search starts at a
    /// position the hash picks and wraps within the segment, choosing as
    /// [`BucketStore::evict_one`] does.
    ///
    /// Why here and not at a hand over all segments: a hand drains the segment it stands in
    /// while new keys land in every segment, so at the cap one segment after another empties
    /// (and the sweep shrinks it) while the others fill and split. In a flood that churn
    /// swung a shard's table memory by half of itself (docs/performance.md, "Soak at the
    /// bucket cap"); taking the victim where the key lands keeps each segment's size.
    fn evict_in_segment_of(&mut self, engine: &Engine, long: bool, hash: u64, now_ns: u64) -> bool {
        let (segment, buckets, len) = if long {
            segment_of(&self.long.entries, hash)
        } else {
            segment_of(&self.short.entries, hash)
        };
        if buckets == 0 || len == 0 {
            return false;
        }
        // The low hash bits pick the new key's own slot in hashbrown; the start only needs
        // to vary from key to key, so that no part of the segment is always searched first.
        let start = (hash.rotate_right(17) as usize) % buckets;
        let mut search = Search::default();
        for i in 0..buckets.min(EVICT_MAX_POSITIONS) {
            let at = Position {
                segment,
                bucket: (start + i) % buckets,
            };
            let c = Cursor { long, at };
            if let Some((limiter, value, slot)) = self.bucket_at(c) {
                if search.consider(c, eviction_loss(engine, limiter, value, slot, now_ns), slot) {
                    break;
                }
            }
        }
        match search.best {
            Some((victim, (loss, _))) => {
                self.evict(victim, loss);
                true
            }
            None => false,
        }
    }

    /// Drops one bucket to make room for a new key; false if the bounded search found none
    /// it may drop. The hand goes on from where it stopped: the first bucket whose loss
    /// changes no decision is taken at once; otherwise, of [`EVICT_SAMPLE`] buckets, the
    /// one that loses least, idle-longest first.
    fn evict_one(&mut self, engine: &Engine, now_ns: u64) -> bool {
        let mut search = Search::default();
        let mut c = self.hand;
        for _ in 0..EVICT_MAX_POSITIONS {
            if let Some((limiter, value, slot)) = self.bucket_at(c) {
                if search.consider(c, eviction_loss(engine, limiter, value, slot, now_ns), slot) {
                    break;
                }
            }
            c = self.next(c);
        }
        let Some((victim, (loss, _))) = search.best else {
            self.hand = c;
            return false;
        };
        self.evict(victim, loss);
        self.hand = self.next(victim);
        true
    }

    /// Removes the victim of a search and counts it by what it lost.
    fn evict(&mut self, victim: Cursor, loss: Loss) {
        self.remove_at(victim);
        if loss == Loss::Nothing {
            self.stats.evicted_full += 1;
        } else {
            self.stats.evicted_not_full += 1;
        }
    }

    /// One slice of the idle sweep: goes on from where the last call stopped, a segment at
    /// a time, until it has visited `budget` bucket positions (occupied or not), dropping
    /// buckets idle past their limiter's `max_idle_time` (with nothing left to replicate)
    /// and shrinking a segment left mostly empty, so memory returns. (Eviction at the cap
    /// takes its victims in the segment each new key lands in, so at the cap segments keep
    /// their size and there is nothing to shrink; shrinking follows idle expiry.) The work
    /// is bounded by
    /// `budget` plus one segment, and by one shrink (a call stops after one); a pass over
    /// everything takes about `stats().positions / budget` calls, more while segments
    /// shrink.
    pub fn sweep(&mut self, engine: &Engine, now_ns: u64, budget: usize) -> Swept {
        let mut swept = Swept::default();
        while swept.visited < budget && !swept.wrapped {
            let c = self.sweep_cursor;
            let expired = |limiter, value: &[u8], slot: &Slot| {
                idle_expired(engine, limiter, value, slot, now_ns)
            };
            let live = &mut self.live_by_limiter;
            let dropped_one = |limiter| count_out(live, limiter);
            let (visited, dropped) = if c.long {
                self.long.sweep_segment(c.at.segment, expired, dropped_one)
            } else {
                self.short.sweep_segment(c.at.segment, expired, dropped_one)
            };
            let shrank = if c.long {
                self.long.shrink_segment(&self.hasher, c.at.segment)
            } else {
                self.short.shrink_segment(&self.hasher, c.at.segment)
            };
            swept.visited += visited;
            swept.dropped += dropped;
            self.sweep_cursor = self.next_segment(c);
            swept.wrapped = self.sweep_cursor == Cursor::default();
            if shrank {
                // A freed table is memory handed back to the OS, which takes time too:
                // one per call.
                break;
            }
        }
        self.stats.evicted_idle += swept.dropped as u64;
        swept
    }

    /// Drops buckets idle longer than their limiter's `max_idle_time` (and with nothing
    /// left to replicate), in one whole pass. Returns how many were dropped. O(live
    /// buckets): single-threaded callers and tests; the server calls [`BucketStore::sweep`]
    /// a slice at a time.
    pub fn evict_idle(&mut self, engine: &Engine, now_ns: u64) -> usize {
        self.sweep_cursor = Cursor::default();
        let mut dropped = 0;
        loop {
            let swept = self.sweep(engine, now_ns, usize::MAX);
            dropped += swept.dropped;
            if swept.wrapped {
                return dropped;
            }
        }
    }

    /// Where (`limiter`, `key`)'s bucket is looked up, for [`prefetch_batch`]: a batch
    /// computes these for all its keys first (while it plans them) and then prefetches in
    /// short loops. Why apart: the second loop's search waits on each key's control bytes,
    /// and only a loop this short lets the processor have many of them in flight at once;
    /// between two plans of a few hundred instructions each, the misses would be paid one
    /// after another again.
    ///
    /// [`prefetch_batch`]: Self::prefetch_batch
    #[inline]
    pub fn bucket_hash(&self, limiter: LimiterId, key: &str) -> BucketHash {
        let value = key.as_bytes();
        BucketHash {
            hash: hash_key(&self.hasher, limiter, value),
            long: !fits_inline(limiter, value),
        }
    }

    /// Starts loading the buckets at `hashes` ([`bucket_hash`]) into the cache, deciding
    /// nothing. At a million keys a bucket is a DRAM miss (~100+ ns); a batch that
    /// prefetches every check's bucket first and then takes them ([`take`]) pays those
    /// misses overlapped rather than one after another.
    ///
    /// Two short loops. The first prefetches the control bytes where each key's probe
    /// starts. The second, with those arriving, finds each key's first tag match, the entry
    /// a lookup will most likely stop at, and prefetches it. One loop doing both would wait
    /// for each key's control bytes in turn.
    ///
    /// The first loop only prefetches: it loads nothing and branches on nothing, so it
    /// never waits. It used to load the control byte at each probe start and prefetch that
    /// bucket's entry when occupied, a load and a branch on it for every key. The
    /// prefetches cut the server's user time per check ~5% at 1M keys (docs/performance.md,
    /// section:binary-costs item 12).
    ///
    /// The second loop took a batch of 64 at 1M keys from 11.3–11.6 µs to 10.0 µs in one
    /// criterion run, and the server's CPU per decision in `CHECK_BATCH`es down 7% (the same
    /// section).
    ///
    /// [`bucket_hash`]: Self::bucket_hash
    /// [`take`]: Self::take
    pub fn prefetch_batch(&self, hashes: &[BucketHash]) {
        for &at in hashes {
            if at.long {
                self.long.entries.prefetch_control(at.hash);
            } else {
                self.short.entries.prefetch_control(at.hash);
            }
        }
        for &at in hashes {
            if at.long {
                self.long.entries.prefetch_tag_match(at.hash);
            } else {
                self.short.entries.prefetch_tag_match(at.hash);
            }
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
    /// The one way tokens return to a bucket, whichever shard decided the flow. A bucket
    /// that is gone (evicted meanwhile) is not recreated: a new one would be full anyway.
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
        let Some(slot) = self.find_mut(limiter, key) else {
            return;
        };
        slot.bucket.put_back(&params, now_ns, tokens);
        slot.last_used_s = seconds(now_ns);
        self.record_consumption(limiter, key, -tokens.get());
    }

    /// Adds to a bucket's consumption since the last replication drain (cluster mode).
    fn record_consumption(&mut self, limiter: LimiterId, key: &str, tokens: f64) {
        if !self.track_unsynced || tokens == 0.0 {
            return;
        }
        let Some(c) = self.locate(limiter, key.as_bytes()) else {
            return;
        };
        if self.slot_at(c).is_some_and(|slot| slot.unsynced == 0.0) {
            // A record that cannot be allocated leaves this consumption unrecorded (peers
            // over-admit by it) rather than aborting the process.
            let Some(record) = dirty_record(key) else {
                return;
            };
            if self.dirty.try_reserve(1).is_err() {
                return;
            }
            self.dirty.push((limiter, record));
        }
        if let Some(slot) = self.slot_at_mut(c) {
            slot.unsynced += tokens as f32;
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
        for (limiter, value, slot) in self.short.iter().chain(self.long.iter()) {
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

/// One bucket of `limiter` fewer in `live` (per-limiter counts).
/// The segment of `table` a hash goes to, its buckets and its entries.
fn segment_of<T>(table: &SegmentedTable<T>, hash: u64) -> (usize, usize, usize) {
    let segment = table.segment_for(hash);
    (
        segment,
        table.segment_buckets(segment),
        table.segment_len(segment),
    )
}

fn count_out(live: &mut [usize], limiter: LimiterId) {
    if let Some(n) = live.get_mut(limiter.0 as usize) {
        *n = n.saturating_sub(1);
    }
}

fn seconds(now_ns: u64) -> u32 {
    (now_ns / 1_000_000_000).min(u64::from(u32::MAX)) as u32
}

/// A dirty-list record of a key, allocated fallibly.
fn dirty_record(key: &str) -> Option<Box<str>> {
    let mut record = String::new();
    record.try_reserve_exact(key.len()).ok()?;
    record.push_str(key);
    Some(record.into_boxed_str())
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
    fn a_bucket_hash_names_the_table_and_the_hash_its_lookup_uses() {
        let e = engine();
        let id = e.limiters()[0].id;
        let mut s = BucketStore::new();
        let long_key = "a-key-longer-than-thirteen-bytes";
        // Prefetching in a store with no tables yet is a no-op, not a panic.
        s.prefetch_batch(&[s.bucket_hash(id, "short"), s.bucket_hash(id, long_key)]);
        for key in ["short", long_key] {
            s.take(&e, id, key, tk(1.0), 0);
            let at = s.bucket_hash(id, key);
            assert_eq!(at.long, key.len() > INLINE_VALUE_MAX, "{key}");
            assert_eq!(at.hash, hash_key(&s.hasher, id, key.as_bytes()), "{key}");
            // A hint only: prefetching a present or an absent key changes no decision.
            s.prefetch_batch(&[at, s.bucket_hash(id, "absent")]);
            let took = s.take(&e, id, key, tk(1.0), 0);
            let tokens = s.inspect(&e, id, key, 0).map(|v| v.tokens);
            assert_eq!(tokens, Some(1.0), "{key}: {took:?}");
        }
    }

    #[test]
    fn live_buckets_are_counted_per_limiter_through_inserts_evictions_and_sweeps() {
        let policies = parse_policies(
            "policies: [ { policy_name: a, rate_limiter: { bucket_capacity: 3, fill_amount: 0, parameters: { interval: 1s, limit_by_label_key: k, max_idle_time: 10s }, selectors: [ { control_point: c } ] } }, { policy_name: b, rate_limiter: { bucket_capacity: 3, fill_amount: 0, parameters: { interval: 1s, limit_by_label_key: k, max_idle_time: 1000s }, selectors: [ { control_point: c } ] } } ]",
            "t",
        )
        .unwrap();
        let e = Engine::new(&policies);
        let (a, b) = (e.limiters()[0].id, e.limiters()[1].id);
        let mut s = BucketStore::new();
        for i in 0..40 {
            s.take(&e, a, &format!("key-{i}"), tk(1.0), 0);
        }
        for i in 0..10 {
            s.take(&e, b, &format!("key-{i}"), tk(1.0), 0);
        }
        assert_eq!((s.live_of(a), s.live_of(b)), (40, 10));
        // At a cap of 45, five more keys of b evict five buckets (the idle-longest first).
        s.set_max_buckets(45);
        for i in 10..15 {
            s.take(&e, b, &format!("key-{i}"), tk(1.0), 1_000_000_000);
        }
        assert_eq!(s.live_of(a) + s.live_of(b), s.len());
        assert_eq!(s.len(), 45);
        // After 20 s, a's buckets are idle past their 10 s; b's are not.
        while !s.sweep(&e, 20_000_000_000, 1 << 20).wrapped {}
        assert_eq!(s.live_of(a), 0);
        assert_eq!(s.live_of(b), s.len());
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

    fn engine_with(fill_amount: u32, max_idle: &str) -> Engine {
        let policies = parse_policies(
            &format!("policies: [ {{ policy_name: p, rate_limiter: {{ bucket_capacity: 3, fill_amount: {fill_amount}, parameters: {{ interval: 1s, limit_by_label_key: k, max_idle_time: {max_idle} }}, selectors: [ {{ control_point: c }} ] }} }} ]"),
            "t",
        )
        .unwrap();
        Engine::new(&policies)
    }

    const SEC: u64 = 1_000_000_000;

    /// Short and long keys alike (the cap covers both tables).
    fn flood_key(i: usize) -> String {
        if i.is_multiple_of(3) {
            format!("a-long-key-past-the-inline-limit-{i}")
        } else {
            format!("k{i}")
        }
    }

    /// Whether a bucket exists and is below capacity (a missing key reads as full).
    fn drained(s: &BucketStore, e: &Engine, key: &str, now: u64) -> bool {
        s.level(e, LimiterId(0), key, now) < 3.0
    }

    #[test]
    fn a_bucket_is_dropped_only_after_its_whole_idle_time_even_under_a_second() {
        for (max_idle, idle_ns) in [("500ms", SEC / 2), ("1s", SEC), ("1500ms", 3 * SEC / 2)] {
            let e = engine_with(1, max_idle);
            let mut s = BucketStore::new();
            // Used at the very end of a second, then swept as soon as the whole seconds allow.
            let used_at = 10 * SEC - 1;
            assert!(s.take(&e, LimiterId(0), "k", tk(3.0), used_at).accepted);
            let mut now = used_at;
            while s.evict_idle(&e, now) == 0 {
                assert!(
                    drained(&s, &e, "k", now),
                    "{max_idle}: kept, and still drained"
                );
                now += SEC / 10;
            }
            assert!(
                now - used_at >= idle_ns,
                "{max_idle}: dropped after {}ns",
                now - used_at
            );
        }
    }

    #[test]
    fn the_cap_holds_under_a_flood_of_distinct_keys() {
        let e = engine();
        let mut s = BucketStore::new();
        s.set_max_buckets(100);
        for i in 0..10_000 {
            let take = s.take(&e, LimiterId(0), &flood_key(i), tk(1.0), 0);
            assert!(take.accepted, "a new key starts full");
            assert_eq!(s.len(), (i + 1).min(100));
        }
        let stats = s.stats();
        assert_eq!(stats.live, 100);
        assert_eq!(stats.refused, 0);
        assert_eq!(stats.evicted_full + stats.evicted_not_full, 9_900);
        assert_eq!(
            stats.evicted_not_full, 9_900,
            "every bucket had a token taken and never refills"
        );
        // The newest key is live: the one just inserted is never its own victim.
        assert!(drained(&s, &e, &flood_key(9_999), 0));
    }

    #[test]
    fn full_buckets_are_evicted_before_ones_that_hold_consumption() {
        // Fill 3 per second: a bucket that gave a token is full again a second later.
        let e = engine_with(3, "3600s");
        let id = LimiterId(0);
        let mut s = BucketStore::new();
        s.set_max_buckets(60);
        for i in 0..20 {
            // Refilled by t = 5 s: full, so dropping it changes nothing.
            s.take(&e, id, &format!("refilled-{i}"), tk(1.0), 0);
            // Untouched since created: full.
            s.take(&e, id, &format!("untouched-{i}"), tk(0.0), 0);
        }
        for i in 0..20 {
            // Drained at 5 s: still below capacity at 5 s.
            s.take(&e, id, &format!("drained-{i}"), tk(3.0), 5 * SEC);
        }
        assert_eq!(s.len(), 60);
        for i in 0..40 {
            s.take(&e, id, &format!("new-{i}"), tk(0.0), 5 * SEC);
        }
        let stats = s.stats();
        assert_eq!((stats.evicted_full, stats.evicted_not_full), (40, 0));
        for i in 0..20 {
            assert!(
                drained(&s, &e, &format!("drained-{i}"), 5 * SEC),
                "drained-{i} kept"
            );
        }
        // Once every live bucket gave a token none is full: the next key costs an
        // over-admission. (Which full buckets the new keys evicted, older ones or new keys
        // before them, depends on where each landed: every live key gives one.)
        let live: Vec<String> = s
            .short
            .iter()
            .chain(s.long.iter())
            .map(|(_, value, _)| String::from_utf8_lossy(value).into_owned())
            .collect();
        assert_eq!(live.len(), 60);
        for key in &live {
            s.take(&e, id, key, tk(1.0), 5 * SEC);
        }
        assert_eq!(s.stats().evicted_full + s.stats().evicted_not_full, 40);
        s.take(&e, id, "one-more", tk(0.0), 5 * SEC);
        assert_eq!(s.stats().evicted_not_full, 1);
        assert_eq!(s.len(), 60);
    }

    #[test]
    fn without_full_buckets_the_idle_longest_goes_first() {
        let e = engine(); // fill 0: nothing refills
        let id = LimiterId(0);
        let mut s = BucketStore::new();
        s.set_max_buckets(8); // fewer than EVICT_SAMPLE: every bucket is a candidate
        for i in 0..8u64 {
            s.take(&e, id, &format!("k{i}"), tk(1.0), i * SEC);
        }
        s.take(&e, id, "k0", tk(1.0), 10 * SEC); // k0 is now the most recent
        s.take(&e, id, "new-a", tk(1.0), 11 * SEC);
        s.take(&e, id, "new-b", tk(1.0), 12 * SEC);
        assert!(
            !drained(&s, &e, "k1", 12 * SEC),
            "k1 (last used at 1 s) evicted"
        );
        assert!(
            !drained(&s, &e, "k2", 12 * SEC),
            "k2 (last used at 2 s) evicted"
        );
        for key in ["k0", "k3", "k4", "k5", "k6", "k7", "new-a", "new-b"] {
            assert!(drained(&s, &e, key, 12 * SEC), "{key} kept");
        }
        assert_eq!(s.stats().evicted_not_full, 2);
    }

    #[test]
    fn unreplicated_consumption_is_evicted_last() {
        let e = engine();
        let id = LimiterId(0);
        let mut s = BucketStore::new();
        s.track_consumption(true);
        s.set_max_buckets(4); // fewer than EVICT_SAMPLE: every bucket is a candidate
        for key in ["b", "c", "d"] {
            s.take(&e, id, key, tk(1.0), 0);
        }
        s.drain_unsynced(|_| {}); // b, c, d replicated
        s.take(&e, id, "unsynced", tk(1.0), 0); // same age, not replicated yet
        for key in ["new-1", "new-2", "new-3"] {
            s.take(&e, id, key, tk(1.0), 0);
        }
        assert!(
            drained(&s, &e, "unsynced", 0),
            "kept: peers have not seen its consumption"
        );
        for key in ["b", "c", "d"] {
            assert!(!drained(&s, &e, key, 0), "{key} evicted first");
        }
        assert_eq!(s.stats().evicted_not_full, 3);
    }

    #[test]
    fn a_key_without_room_is_decided_on_a_full_bucket_it_does_not_keep() {
        let e = engine();
        let mut s = BucketStore::new();
        s.set_max_buckets(0);
        for _ in 0..5 {
            let take = s.take(&e, LimiterId(0), "k", tk(3.0), 0);
            assert!(take.accepted, "decided as a new, full bucket each time");
        }
        assert_eq!(s.len(), 0);
        assert_eq!(s.stats().refused, 5);
    }

    #[test]
    fn a_sweep_call_visits_a_bounded_slice_and_a_pass_visits_everything() {
        let e = engine_with(0, "10s");
        let id = LimiterId(0);
        let mut s = BucketStore::new();
        for i in 0..50_000 {
            let now = if i % 2 == 0 { 0 } else { 8 * SEC };
            s.take(&e, id, &flood_key(i), tk(1.0), now);
        }
        let positions = s.stats().positions;
        let budget = 1_000;
        let (mut visited, mut dropped, mut calls) = (0, 0, 0);
        loop {
            // 12 s: the half used at 0 s is past its 10 s max_idle_time.
            let swept = s.sweep(&e, 12 * SEC, budget);
            assert!(swept.visited >= 1);
            assert!(
                swept.visited < budget + segments::SEGMENT_BUCKETS,
                "a call stops within one segment past its budget: {}",
                swept.visited
            );
            visited += swept.visited;
            dropped += swept.dropped;
            calls += 1;
            if swept.wrapped {
                break;
            }
        }
        assert_eq!(visited, positions, "a pass visits every position once");
        assert!(calls >= positions / (budget + segments::SEGMENT_BUCKETS));
        assert_eq!(dropped, 25_000);
        assert_eq!(s.len(), 25_000);
        assert_eq!(s.stats().evicted_idle, 25_000);
    }

    /// The soak's flood on a virtual clock: new keys at 30,000 a second, each taking a token
    /// it gets back within 0.1 s (so every victim is full: nothing lost), the sweep running
    /// every 1,000 keys as a shard's does. Once the cap is reached, no segment splits,
    /// empties or grows past its size, and the tables' bytes stay within 10% of what they
    /// were when the cap filled, for ten times the cap in new keys.
    #[test]
    fn a_flood_at_the_cap_keeps_the_tables_footprint_flat() {
        let e = engine_with(10, "3600s");
        let id = LimiterId(0);
        let cap = 40_000;
        let mut s = BucketStore::new();
        s.set_max_buckets(cap);
        let at = |i: usize| i as u64 * SEC / 30_000;
        let mut at_cap = None;
        let (mut min, mut max) = (usize::MAX, 0);
        for i in 0..11 * cap {
            assert!(s.take(&e, id, &flood_key(i), tk(1.0), at(i)).accepted);
            if i % 1_000 == 999 {
                s.sweep(&e, at(i), SWEEP_BUDGET);
            }
            if i + 1 == cap {
                at_cap = Some((s.table_bytes(), s.stats().positions));
            }
            if i >= cap && i % 1_000 == 999 {
                min = min.min(s.table_bytes());
                max = max.max(s.table_bytes());
            }
        }
        let (bytes, positions) = at_cap.expect("the cap filled");
        let stats = s.stats();
        assert_eq!(stats.live, cap);
        assert_eq!(stats.evicted_full + stats.evicted_not_full, 10 * cap as u64);
        // A victim is full again unless every bucket sampled was taken within 0.1 s.
        assert!(
            stats.evicted_not_full * 10_000 <= 10 * cap as u64,
            "{stats:?}"
        );
        assert_eq!(stats.refused, 0);
        assert!(
            max * 10 <= bytes * 11 && min * 10 >= bytes * 9,
            "table bytes {min}..{max} after the cap, {bytes} when it filled"
        );
        assert!(
            stats.positions * 10 <= positions * 11,
            "{} bucket positions after the flood, {positions} when the cap filled",
            stats.positions
        );
        assert!(s.short.entries.segments() > 1 && s.long.entries.segments() > 1);
        for seg in 0..s.short.entries.segments() {
            assert!(s.short.entries.segment_buckets(seg) <= segments::SEGMENT_BUCKETS);
        }
        for seg in 0..s.long.entries.segments() {
            assert!(s.long.entries.segment_buckets(seg) <= segments::SEGMENT_BUCKETS);
        }
    }

    #[test]
    fn memory_returns_once_buckets_are_swept() {
        let e = engine_with(0, "10s");
        let mut s = BucketStore::new();
        for i in 0..50_000 {
            s.take(&e, LimiterId(0), &flood_key(i), tk(1.0), 0);
        }
        let full = s.table_bytes();
        assert_eq!(s.evict_idle(&e, 20 * SEC), 50_000);
        assert!(
            s.table_bytes() * 20 < full,
            "tables shrink with their buckets: {} bytes after, {full} before",
            s.table_bytes()
        );
        // And they grow back.
        for i in 0..1_000 {
            s.take(&e, LimiterId(0), &flood_key(i), tk(1.0), 30 * SEC);
        }
        assert_eq!(s.len(), 1_000);
    }

    /// Limiter 0: a concurrency limiter of 2 per key; limiter 1: a rate limiter of 3 per
    /// key that never refills. Both idle out after 10 s.
    fn concurrency_engine() -> Engine {
        let policies = parse_policies(
            "policies: [ { policy_name: c, concurrency_limiter: { max_concurrency: 2, parameters: { limit_by_label_key: k, max_inflight_duration: 60s, max_idle_time: 10s }, selectors: [ { control_point: c } ] } }, { policy_name: r, rate_limiter: { bucket_capacity: 3, fill_amount: 0, parameters: { interval: 1s, limit_by_label_key: k, max_idle_time: 10s }, selectors: [ { control_point: c } ] } } ]",
            "t",
        )
        .unwrap();
        let e = Engine::new(&policies);
        assert!(e.limiter(LimiterId(0)).kind.counts_in_flight());
        assert!(!e.limiter(LimiterId(1)).kind.counts_in_flight());
        e
    }

    #[test]
    fn the_cap_never_evicts_a_concurrency_counter_with_flows_in_flight() {
        let e = concurrency_engine();
        let (conc, rate) = (LimiterId(0), LimiterId(1));
        let mut s = BucketStore::new();
        s.set_max_buckets(8); // fewer than EVICT_SAMPLE: every bucket is a candidate
                              // Four counters with a flow in flight each, used first (idle-longest).
        for i in 0..4 {
            assert!(s.take(&e, conc, &format!("busy-{i}"), tk(1.0), 0).accepted);
        }
        // Four rate buckets with consumption, used later.
        for i in 0..4 {
            s.take(&e, rate, &format!("r-{i}"), tk(1.0), SEC);
        }
        // Eight new keys: only the rate buckets may go, though the counters are older.
        for i in 0..4 {
            s.take(&e, rate, &format!("new-{i}"), tk(1.0), 2 * SEC);
        }
        for i in 0..4 {
            assert_eq!(
                s.level(&e, conc, &format!("busy-{i}"), 2 * SEC),
                1.0,
                "busy-{i} still holds its flow's token"
            );
            assert_eq!(
                s.level(&e, rate, &format!("r-{i}"), 2 * SEC),
                3.0,
                "r-{i} evicted"
            );
        }
        assert_eq!(s.stats().evicted_not_full, 4);
    }

    #[test]
    fn at_the_cap_with_only_busy_counters_a_new_key_is_refused() {
        let e = concurrency_engine();
        let (conc, rate) = (LimiterId(0), LimiterId(1));
        let mut s = BucketStore::new();
        s.set_max_buckets(4);
        for i in 0..4 {
            assert!(s.take(&e, conc, &format!("busy-{i}"), tk(1.0), 0).accepted);
        }
        let take = s.take(&e, rate, "refused", tk(1.0), SEC);
        assert!(take.accepted, "decided on a transient full bucket");
        assert_eq!((s.len(), s.stats().refused), (4, 1));
        for i in 0..4 {
            assert_eq!(
                s.level(&e, conc, &format!("busy-{i}"), SEC),
                1.0,
                "busy-{i} kept"
            );
        }
        // Once its flow ends, a counter is full again and the first choice.
        s.give_back(&e, conc, "busy-2", tk(1.0), 2 * SEC);
        s.take(&e, rate, "fits", tk(1.0), 2 * SEC);
        assert_eq!(
            s.level(&e, conc, "busy-2", 2 * SEC),
            2.0,
            "busy-2 evicted (full)"
        );
        assert_eq!(s.level(&e, rate, "fits", 2 * SEC), 2.0, "fits got a bucket");
        let stats = s.stats();
        assert_eq!(
            (stats.evicted_full, stats.evicted_not_full, stats.refused),
            (1, 0, 1)
        );
    }

    #[test]
    fn the_sweep_keeps_a_concurrency_counter_with_flows_in_flight_however_idle() {
        let e = concurrency_engine();
        let (conc, rate) = (LimiterId(0), LimiterId(1));
        let mut s = BucketStore::new();
        assert!(s.take(&e, conc, "busy", tk(2.0), 0).accepted);
        assert!(s.take(&e, conc, "ended", tk(1.0), 0).accepted);
        s.give_back(&e, conc, "ended", tk(1.0), 0);
        s.take(&e, rate, "drained", tk(3.0), 0);
        // An hour later, far past the 10 s max_idle_time.
        assert_eq!(
            s.evict_idle(&e, 3600 * SEC),
            2,
            "ended and drained are swept"
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.level(&e, conc, "busy", 3600 * SEC),
            0.0,
            "busy kept both tokens"
        );
        // The flows end: the counter is full and goes on the next pass.
        s.give_back(&e, conc, "busy", tk(2.0), 3600 * SEC);
        assert_eq!(s.evict_idle(&e, 3700 * SEC), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn evictions_at_the_cap_are_counted_by_kind_and_the_idle_sweep_apart() {
        let e = engine_with(3, "10s"); // refills 3 a second
        let id = LimiterId(0);
        let mut s = BucketStore::new();
        s.set_max_buckets(4);
        for key in ["a", "b", "c", "d"] {
            s.take(&e, id, key, tk(3.0), 0);
        }
        s.take(&e, id, "e", tk(1.0), 0); // all four drained: one over-admission
        s.take(&e, id, "f", tk(1.0), 2 * SEC); // refilled by now: a full one goes
        let stats = s.stats();
        assert_eq!(
            (
                stats.evicted_full,
                stats.evicted_not_full,
                stats.evicted_idle,
                stats.refused
            ),
            (1, 1, 0, 0)
        );
        assert_eq!(s.evict_idle(&e, 20 * SEC), 4);
        let stats = s.stats();
        assert_eq!((stats.live, stats.evicted_idle), (0, 4));
        assert_eq!(stats.max_buckets, 4);
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
