//! [`LimiterTable`]: one shard's per-limiter counters, indexed by `LimiterId::get()`.
//!
//! Limiter ids are dense (an engine numbers its limiters from 0, and a reload's successor
//! engine continues the numbering), so the table is an array, not a map. It is read by the
//! scraper while its shard writes it, and it must grow when a reload adds limiters — without
//! a lock and without moving counters a reader may be looking at. So it is a fixed array of
//! chunk slots, each set once ([`OnceLock`]) by the owning shard when an id in that chunk is
//! first recorded: growing allocates one chunk on the shard's own thread, and a reader that
//! finds a slot empty knows no id in it has counted anything yet.

use super::counter::Counter;
use std::sync::OnceLock;

/// Limiters per chunk. Why this value: one chunk (64 x 40 bytes) covers every limiter of a
/// typical config, so most shards allocate exactly one.
const CHUNK: usize = 64;

/// Chunk slots. Why this value: 4,096 x 64 = 262,144 limiter ids, far beyond any config
/// plus the ids a long life of reloads hands out, for 64 KiB of empty slots per shard.
/// Ids beyond are counted in [`LimiterTable::untracked`], never out of bounds.
const MAX_CHUNKS: usize = 4096;

/// Ids the table can hold.
pub const MAX_LIMITERS: usize = CHUNK * MAX_CHUNKS;

/// What one limiter said, as counts of outcomes.
#[derive(Debug, Default)]
pub struct LimiterCounters {
    /// Tokens taken.
    pub accepted: Counter,
    /// The limiter rejected the flow.
    pub rejected: Counter,
    /// The flow lacked the limit label: accepted with nothing taken.
    pub key_not_found: Counter,
    /// Tokens taken, then handed back because another limiter rejected the flow.
    pub returned: Counter,
    /// The flow could not be judged against this limiter (e.g. its tokens label was not
    /// a cost); nothing was taken from any bucket.
    pub error: Counter,
}

type Chunk = [LimiterCounters; CHUNK];

/// Per-limiter counters of one shard.
#[derive(Debug)]
pub struct LimiterTable {
    chunks: Box<[OnceLock<Box<Chunk>>]>,
    /// Events for ids at or beyond [`MAX_LIMITERS`] (never expected; counted, not lost).
    pub untracked: Counter,
}

impl LimiterTable {
    /// A table with room allocated for ids below `limiters` (the engine's count at start).
    pub fn new(limiters: usize) -> LimiterTable {
        let table = LimiterTable {
            chunks: (0..MAX_CHUNKS).map(|_| OnceLock::new()).collect(),
            untracked: Counter::default(),
        };
        for id in (0..limiters.min(MAX_LIMITERS)).step_by(CHUNK) {
            table.get_or_grow(id as u32);
        }
        table
    }

    /// The counters of limiter `id`, allocating its chunk if needed. Only the owning shard
    /// calls this (it is the one writer); None for an id beyond [`MAX_LIMITERS`].
    #[inline]
    pub fn get_or_grow(&self, id: u32) -> Option<&LimiterCounters> {
        let id = id as usize;
        let chunk = self.chunks.get(id / CHUNK)?;
        let chunk = chunk.get_or_init(|| Box::new(std::array::from_fn(|_| Default::default())));
        Some(&chunk[id % CHUNK])
    }

    /// The counters of limiter `id`, if any event of its chunk was recorded (scraper).
    pub fn get(&self, id: u32) -> Option<&LimiterCounters> {
        let id = id as usize;
        let chunk = self.chunks.get(id / CHUNK)?.get()?;
        Some(&chunk[id % CHUNK])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_from_the_engine_then_grows_by_chunks() {
        let table = LimiterTable::new(3);
        assert!(table.get(0).is_some() && table.get(63).is_some());
        assert!(table.get(64).is_none(), "no chunk for ids never seen");
        table.get_or_grow(200).expect("in range").accepted.add(2);
        assert_eq!(table.get(200).map(|c| c.accepted.get()), Some(2));
        assert_eq!(table.get(199).map(|c| c.accepted.get()), Some(0));
    }

    #[test]
    fn ids_beyond_the_table_are_refused_not_out_of_bounds() {
        let table = LimiterTable::new(0);
        assert!(table.get_or_grow(MAX_LIMITERS as u32).is_none());
        assert!(table.get(u32::MAX).is_none());
        assert!(table.get_or_grow((MAX_LIMITERS - 1) as u32).is_some());
    }
}
