//! A hash table that grows one small piece at a time: extendible hashing over hashbrown
//! tables.
//!
//! A single hashbrown table doubles by moving every entry at once: under a flood of new keys
//! that stalled a shard for 3.5 s at 29 M keys and 7.4 s at 59 M, while every check on the
//! shard waited. Here the entries are spread over *segments*, each a hashbrown table of at
//! most [`SEGMENT_BUCKETS`] buckets, picked through a *directory* by the top bits of the key's
//! hash. A segment that is full splits in two by its next hash bit instead of doubling, so a
//! growth step moves at most one segment's entries however large the table. When a segment
//! that splits uses as many hash bits as the directory, the directory doubles first: it
//! holds 4-byte segment numbers, one per few thousand keys, so even that copy is small.
//!
//! ```text
//!   hash: [ 7 bits: hashbrown's tag | directory bits ... | ... low bits: hashbrown's slot ]
//!                                      |
//!   directory (2^depth u32) ------> segment ------> hashbrown table (<= SEGMENT_BUCKETS)
//! ```
//!
//! The directory uses the bits just below hashbrown's 7-bit tag: hashbrown picks a slot from
//! the low bits and a tag from the top 7, so entries of one segment still differ in both.
//!
//! What a step costs is mostly fresh memory: the kernel faults in and zeroes each new page
//! (~5 us per 4 KiB page on the project's VM), so a split reuses the table freed by the
//! previous split for one of its halves, and the segment list grows by fixed chunks rather
//! than by copying itself.
//!
//! Every step that allocates is fallible ([`NoRoom`]): a table that cannot grow refuses the
//! new entry instead of aborting the process. Entries are reached by [`Position`] (segment,
//! bucket) too, so a sweep or an eviction hand can walk the table a bounded slice at a time.

use hashbrown_indexed::HashTable;

/// Buckets of a full segment. Why this value: a split moves at most [`SEGMENT_CAPACITY`]
/// entries into two tables of this many buckets, one of them fresh memory; with 40-byte
/// entries that is ~0.2 ms of moves and ~0.2 ms of page faults (docs/performance.md has
/// the measured worst step). Larger segments lengthen that step; smaller ones only lengthen
/// the directory.
pub(crate) const SEGMENT_BUCKETS: usize = 1 << 12;

/// Entries a segment holds before it splits: hashbrown fills a table to 7/8 of its buckets.
pub(crate) const SEGMENT_CAPACITY: usize = SEGMENT_BUCKETS / 8 * 7;

/// Most hash bits the directory uses: 2^20 segments (a 4 MiB directory), billions of
/// entries. Why a bound: a segment that uses them all (only possible if many keys collided
/// in 27 hash bits) grows as a plain hashbrown table instead of doubling a directory
/// without end.
const MAX_DEPTH: u32 = 20;

/// Segments per chunk of the segment list. Why: the list grows a chunk (~40 KB) at a time
/// instead of copying every segment when a `Vec` would double (megabytes at 100 M keys).
/// Tests use small chunks so that a few thousand keys cross chunk boundaries.
const CHUNK: usize = if cfg!(test) { 8 } else { 1024 };

/// The table could not allocate room for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoRoom;

/// Where an entry sits: its segment and its bucket in that segment's table. Stable until
/// the segment next grows, splits or shrinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Position {
    /// Index into the segment list (not the directory).
    pub segment: usize,
    /// Bucket index inside the segment's hashbrown table.
    pub bucket: usize,
}

/// One segment: a hashbrown table and how many hash bits its keys share.
struct Segment<T> {
    table: HashTable<T>,
    /// Local depth: every key here has the same top `depth` directory bits.
    depth: u32,
    /// The address of the table's control bytes (0: not known, or no table), for
    /// [`SegmentedTable::prefetch_control`] only: never dereferenced. See [`control_address`].
    control: usize,
}

impl<T> Segment<T> {
    fn new(table: HashTable<T>, depth: u32) -> Segment<T> {
        let mut segment = Segment {
            table,
            depth,
            control: 0,
        };
        segment.find_control();
        segment
    }

    /// Learns [`Segment::control`] again after `table` was replaced or grew (from any
    /// occupied bucket: an empty table has nothing to prefetch).
    fn find_control(&mut self) {
        let table = &self.table;
        self.control = table
            .iter_buckets()
            .next()
            .and_then(|bucket| Some(control_address(table.get_bucket(bucket)?, bucket)))
            .unwrap_or(0);
    }
}

/// The segmented table. Entries are `T`; the caller supplies hashes (and a `rehash` that
/// recomputes an entry's hash when a segment is rebuilt).
pub(crate) struct SegmentedTable<T> {
    /// `2^depth` segment numbers, indexed by the top `depth` directory bits of a hash.
    directory: Vec<u32>,
    /// Global depth: how many hash bits the directory uses.
    depth: u32,
    /// The segments, [`CHUNK`] per inner list (each allocated at that capacity).
    chunks: Vec<Vec<Segment<T>>>,
    /// Segments in `chunks`.
    segments: usize,
    /// An empty table of [`SEGMENT_BUCKETS`] buckets left by the last split, for the next.
    spare: Option<HashTable<T>>,
    /// Entries in all segments.
    len: usize,
    /// Buckets (positions) in all segments: the length of a full walk.
    buckets: usize,
}

impl<T> SegmentedTable<T> {
    /// An empty table: one empty segment, no table allocated.
    pub(crate) fn new() -> SegmentedTable<T> {
        SegmentedTable::with_capacity(0)
    }

    /// An empty table with room for `entries` without any growth step: enough segments that
    /// each is at most three quarters full (hashing spreads keys unevenly).
    pub(crate) fn with_capacity(entries: usize) -> SegmentedTable<T> {
        let mut depth = 0;
        while depth < MAX_DEPTH && entries.div_ceil(1 << depth) > SEGMENT_CAPACITY / 4 * 3 {
            depth += 1;
        }
        let per_segment = if depth == 0 {
            entries
        } else {
            SEGMENT_CAPACITY
        };
        let mut table = SegmentedTable {
            directory: (0..1u32 << depth).collect(),
            depth,
            chunks: Vec::new(),
            segments: 0,
            spare: None,
            len: 0,
            buckets: 0,
        };
        for _ in 0..1usize << depth {
            let segment = Segment::new(HashTable::with_capacity(per_segment), depth);
            table.buckets += segment.table.num_buckets();
            if table.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                table.chunks.push(Vec::with_capacity(CHUNK));
            }
            if let Some(chunk) = table.chunks.last_mut() {
                chunk.push(segment);
                table.segments += 1;
            }
        }
        table
    }

    /// Entries in the table.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Buckets in all segments: positions a full walk visits.
    pub(crate) fn buckets(&self) -> usize {
        self.buckets
    }

    /// Segments (a walk goes through `0..segments()`).
    pub(crate) fn segments(&self) -> usize {
        self.segments
    }

    /// Buckets of one segment (0 past the last segment).
    pub(crate) fn segment_buckets(&self, segment: usize) -> usize {
        self.segment(segment).map_or(0, |s| s.table.num_buckets())
    }

    /// Entries of one segment (0 past the last segment).
    pub(crate) fn segment_len(&self, segment: usize) -> usize {
        self.segment(segment).map_or(0, |s| s.table.len())
    }

    /// The segment an entry with this hash goes to (or is in).
    #[inline]
    pub(crate) fn segment_for(&self, hash: u64) -> usize {
        self.segment_of(hash)
    }

    /// Bytes allocated: the segments' tables, the spare, the segment list and the directory.
    pub(crate) fn allocation_size(&self) -> usize {
        let tables: usize = self
            .chunks
            .iter()
            .flatten()
            .map(|s| s.table.allocation_size())
            .sum();
        tables
            + self.spare.as_ref().map_or(0, HashTable::allocation_size)
            + self.chunks.len() * CHUNK * std::mem::size_of::<Segment<T>>()
            + self.directory.capacity() * std::mem::size_of::<u32>()
    }

    #[inline]
    fn segment(&self, segment: usize) -> Option<&Segment<T>> {
        self.chunks.get(segment / CHUNK)?.get(segment % CHUNK)
    }

    #[inline]
    fn segment_mut(&mut self, segment: usize) -> Option<&mut Segment<T>> {
        self.chunks
            .get_mut(segment / CHUNK)?
            .get_mut(segment % CHUNK)
    }

    /// The directory index of a hash: its top `depth` bits below hashbrown's 7 tag bits.
    #[inline]
    fn directory_index(&self, hash: u64) -> usize {
        // Shifting by 63 - depth (never 64) keeps depth 0 well defined.
        (((hash << 7) >> 1) >> (63 - self.depth)) as usize
    }

    /// The segment a hash belongs to.
    #[inline]
    fn segment_of(&self, hash: u64) -> usize {
        self.directory[self.directory_index(hash)] as usize
    }

    /// Where the entry with this hash that satisfies `eq` is, if present.
    #[inline]
    pub(crate) fn find(&self, hash: u64, eq: impl FnMut(&T) -> bool) -> Option<Position> {
        let segment = self.segment_of(hash);
        self.segment(segment)?
            .table
            .find_bucket_index(hash, eq)
            .map(|bucket| Position { segment, bucket })
    }

    /// Starts loading the control bytes a later [`find`](Self::find) of `hash` reads first
    /// (the 16 from its probe start), without waiting for them: two prefetches, no load and
    /// no branch on anything loaded, so a loop of these over a batch's keys never stalls
    /// and has all their misses in flight at once. A batch that calls this for every key
    /// before deciding any overlaps their cache misses instead of paying them one by one.
    /// A hint only: it changes nothing. A segment whose control bytes are not known yet
    /// (no entry since its table was made) is skipped: there is nothing in it to find.
    #[inline]
    pub(crate) fn prefetch_control(&self, hash: u64) {
        let Some(segment) = self.segment(self.segment_of(hash)) else {
            return;
        };
        if segment.control == 0 {
            return;
        }
        let start = (hash as usize) & segment.table.num_buckets().wrapping_sub(1);
        let group = segment.control.wrapping_add(start);
        prefetch_line(std::ptr::without_provenance(group));
        prefetch_line(std::ptr::without_provenance(group.wrapping_add(15)));
    }

    /// The second step of a batch's prefetch, once [`prefetch_control`] of `hash` has
    /// brought its probe start's control bytes in: the first entry along the probe
    /// sequence whose 7-bit tag matches `hash` (the key's own entry, unless another key
    /// shares its tag, 1 in 128) has its lines prefetched. Why: hashbrown puts a key in
    /// any free slot of its 16-slot group, 640 bytes of entries, so the probe start's
    /// entry is the key's only for a few keys in ten. A hint only: it changes nothing.
    ///
    /// [`prefetch_control`]: Self::prefetch_control
    #[inline]
    pub(crate) fn prefetch_tag_match(&self, hash: u64) {
        let Some(segment) = self.segment(self.segment_of(hash)) else {
            return;
        };
        // An `eq` that reads no entry: the search stops at the first tag match, and only
        // that entry's address is used.
        if let Some(entry) = segment.table.find(hash, |_| true) {
            prefetch_entry(entry);
        }
    }

    /// The entry at `position`, if that bucket is occupied.
    #[inline]
    pub(crate) fn get(&self, position: Position) -> Option<&T> {
        self.segment(position.segment)?
            .table
            .get_bucket(position.bucket)
    }

    /// The entry at `position`, if that bucket is occupied.
    #[inline]
    pub(crate) fn get_mut(&mut self, position: Position) -> Option<&mut T> {
        self.segment_mut(position.segment)?
            .table
            .get_bucket_mut(position.bucket)
    }

    /// Removes and returns the entry at `position`, if occupied.
    pub(crate) fn remove(&mut self, position: Position) -> Option<T> {
        let segment = self.segment_mut(position.segment)?;
        let (entry, _) = segment
            .table
            .get_bucket_entry(position.bucket)
            .ok()?
            .remove();
        self.len -= 1;
        Some(entry)
    }

    /// Keeps the entries of one segment for which `keep` is true; returns how many were
    /// removed. Bounded: one segment.
    pub(crate) fn retain_segment(&mut self, segment: usize, keep: impl FnMut(&T) -> bool) -> usize {
        let Some(s) = self.segment_mut(segment) else {
            return 0;
        };
        let mut keep = keep;
        let before = s.table.len();
        s.table.retain(|entry| keep(entry));
        let removed = before - s.table.len();
        self.len -= removed;
        removed
    }

    /// Every entry, in position order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten().flat_map(|s| s.table.iter())
    }

    /// Every entry, to change in place (never its key: positions and hashes stay).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks
            .iter_mut()
            .flatten()
            .flat_map(|s| s.table.iter_mut())
    }

    /// Adds an entry that is not in the table yet (the caller looked it up). Splits its
    /// segment first if it is full. Allocates only fallibly: [`NoRoom`] leaves the table
    /// without the entry (and still consistent).
    pub(crate) fn insert(
        &mut self,
        hash: u64,
        entry: T,
        rehash: impl Fn(&T) -> u64,
    ) -> Result<Position, NoRoom> {
        let mut segment = self.segment_of(hash);
        // One split nearly always makes room; the loop covers keys that all land in one half.
        loop {
            let s = self.segment(segment).ok_or(NoRoom)?;
            if s.table.len() < SEGMENT_CAPACITY || s.depth >= MAX_DEPTH {
                break;
            }
            self.split(segment, hash, &rehash)?;
            segment = self.segment_of(hash);
        }
        let s = self.segment(segment).ok_or(NoRoom)?;
        if s.table.num_buckets() == SEGMENT_BUCKETS
            && s.table.capacity() == s.table.len()
            && s.table.len() < SEGMENT_CAPACITY
        {
            // Not full, yet no room left: removals left tombstones (hashbrown marks most
            // removed buckets of a well-filled table deleted, not empty), and hashbrown would
            // double the table past SEGMENT_BUCKETS to make room. Rebuild it at its size.
            self.rebuild(segment, &rehash)?;
        }
        let s = self.segment_mut(segment).ok_or(NoRoom)?;
        let before = s.table.num_buckets();
        // Grows a segment below SEGMENT_BUCKETS (a bounded step), fallibly.
        s.table.try_reserve(1, &rehash).map_err(|_| NoRoom)?;
        let inserted = s.table.insert_unique(hash, entry, &rehash);
        let bucket = inserted.bucket_index();
        // The table may have moved as it grew.
        s.control = control_address(inserted.get(), bucket);
        let after = s.table.num_buckets();
        self.buckets = self.buckets - before + after;
        self.len += 1;
        Ok(Position { segment, bucket })
    }

    /// Splits a full segment in two by its next hash bit (doubling the directory first if the
    /// segment uses all its bits). `hash` is any hash that maps to the segment.
    fn split(
        &mut self,
        segment: usize,
        hash: u64,
        rehash: &impl Fn(&T) -> u64,
    ) -> Result<(), NoRoom> {
        let local = self.segment(segment).ok_or(NoRoom)?.depth;
        if local == self.depth {
            self.double_directory()?;
        }
        self.reserve_segment()?;
        let mut low = match self.spare.take() {
            Some(spare) => spare,
            None => table_for(SEGMENT_CAPACITY, rehash)?,
        };
        let mut high = match table_for(SEGMENT_CAPACITY, rehash) {
            Ok(table) => table,
            Err(no_room) => {
                self.spare = Some(low);
                return Err(no_room);
            }
        };
        let mut old = match self.segment_mut(segment) {
            Some(s) => std::mem::take(&mut s.table),
            None => return Err(NoRoom),
        };
        let old_buckets = old.num_buckets();
        for entry in old.drain() {
            let h = rehash(&entry);
            // Bit `local` (from the top) of the directory bits: the one this split adds.
            let half = if ((h << 7) >> (63 - local)) & 1 == 1 {
                &mut high
            } else {
                &mut low
            };
            half.insert_unique(h, entry, rehash);
        }
        self.buckets = self.buckets - old_buckets + low.num_buckets() + high.num_buckets();
        if let Some(s) = self.segment_mut(segment) {
            s.table = low;
            s.depth = local + 1;
            s.find_control();
        }
        // `old` is empty now but keeps its buckets: the next split's first half.
        if old_buckets == SEGMENT_BUCKETS {
            self.spare = Some(old);
        }
        let new = self.segments;
        self.push_segment(Segment::new(high, local + 1));
        // The directory entries of the old segment are a run of 2^(depth - local) sharing
        // its `local` top bits; the upper half of the run now has the new bit set.
        let span = 1usize << (self.depth - local);
        let start = self.directory_index(hash) & !(span - 1);
        for slot in &mut self.directory[start + span / 2..start + span] {
            *slot = new as u32;
        }
        Ok(())
    }

    /// Moves a full-size segment's entries into a fresh table of the same size (the spare,
    /// if there is one), which drops its tombstones; the old table becomes the spare. A
    /// bounded step: one segment's entries, as a split.
    fn rebuild(&mut self, segment: usize, rehash: &impl Fn(&T) -> u64) -> Result<(), NoRoom> {
        let mut fresh = match self.spare.take() {
            Some(spare) => spare,
            None => table_for(SEGMENT_CAPACITY, rehash)?,
        };
        let Some(s) = self.segment_mut(segment) else {
            self.spare = Some(fresh);
            return Err(NoRoom);
        };
        let old_buckets = s.table.num_buckets();
        let mut old = std::mem::take(&mut s.table);
        for entry in old.drain() {
            let h = rehash(&entry);
            fresh.insert_unique(h, entry, rehash);
        }
        let new_buckets = fresh.num_buckets();
        s.table = fresh;
        s.find_control();
        self.buckets = self.buckets - old_buckets + new_buckets;
        if old_buckets == SEGMENT_BUCKETS {
            self.spare = Some(old);
        }
        Ok(())
    }

    /// Makes sure one more segment fits in the segment list without reallocating a chunk.
    fn reserve_segment(&mut self) -> Result<(), NoRoom> {
        if self.chunks.last().is_some_and(|c| c.len() < CHUNK) {
            return Ok(());
        }
        let mut chunk = Vec::new();
        chunk.try_reserve_exact(CHUNK).map_err(|_| NoRoom)?;
        self.chunks.try_reserve(1).map_err(|_| NoRoom)?;
        self.chunks.push(chunk);
        Ok(())
    }

    /// Appends a segment; [`SegmentedTable::reserve_segment`] made room for it.
    fn push_segment(&mut self, segment: Segment<T>) {
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(segment);
            self.segments += 1;
        }
    }

    /// Doubles the directory: each entry becomes two (the new lowest directory bit 0 and 1).
    fn double_directory(&mut self) -> Result<(), NoRoom> {
        let mut doubled = Vec::new();
        doubled
            .try_reserve_exact(self.directory.len() * 2)
            .map_err(|_| NoRoom)?;
        for &segment in &self.directory {
            doubled.push(segment);
            doubled.push(segment);
        }
        self.directory = doubled;
        self.depth += 1;
        Ok(())
    }

    /// Rebuilds one segment's table smaller if at most 1/8 of its buckets are in use, so
    /// memory returns after evictions. Bounded: one segment's entries. Returns whether it
    /// shrank (a failed allocation keeps the old table).
    pub(crate) fn shrink_if_sparse(&mut self, segment: usize, rehash: impl Fn(&T) -> u64) -> bool {
        let Some(s) = self.segment_mut(segment) else {
            return false;
        };
        let buckets = s.table.num_buckets();
        if buckets <= 16 || s.table.len() > buckets / 8 {
            return false;
        }
        // Room for twice the entries: the segment can grow back a while before it doubles.
        let Ok(mut smaller) = table_for(s.table.len() * 2, &rehash) else {
            return false;
        };
        for entry in std::mem::take(&mut s.table) {
            let h = rehash(&entry);
            smaller.insert_unique(h, entry, &rehash);
        }
        let after = smaller.num_buckets();
        s.table = smaller;
        s.find_control();
        self.buckets = self.buckets - buckets + after;
        // Memory returning is the point: do not keep a spare table either.
        self.spare = None;
        true
    }
}

/// Where the control bytes of the hashbrown table holding `entry` at `bucket` start, as an
/// address. hashbrown lays a table out as its entries, last bucket first, then the control
/// bytes, so bucket `i`'s entry ends `i` entries before them: the layout of hashbrown's raw
/// table since its first release, though not a documented promise. Used only as a prefetch
/// address, which never faults: were the layout to change, the prefetch would load a wrong
/// line and cost a little, and no lookup would change (the tests check the layout still
/// holds).
fn control_address<T>(entry: &T, bucket: usize) -> usize {
    std::ptr::from_ref(entry).addr().wrapping_add(
        bucket
            .wrapping_add(1)
            .wrapping_mul(std::mem::size_of::<T>()),
    )
}

/// Asks the CPU to load the cache lines of `entry`: its first, and its last, since an entry
/// may straddle two lines.
#[inline(always)]
fn prefetch_entry<T>(entry: &T) {
    let first = std::ptr::from_ref(entry).cast::<u8>();
    prefetch_line(first);
    prefetch_line(first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1)));
}

/// Asks the CPU to load the cache line holding `p`. A hint: it never faults, whatever `p`.
#[inline(always)]
fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 only hints the cache; it reads nothing into the program and
    // cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// An empty hashbrown table with room for `entries`, allocated fallibly (no allocation
/// for 0).
fn table_for<T>(entries: usize, rehash: impl Fn(&T) -> u64) -> Result<HashTable<T>, NoRoom> {
    let mut table = HashTable::new();
    table.try_reserve(entries, rehash).map_err(|_| NoRoom)?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries are (key, hash) so tests can pick hashes.
    type Entry = (u64, u64);

    fn spread(i: u64) -> u64 {
        // A fixed bijective mix: distinct keys, well-spread hash bits.
        let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn insert(t: &mut SegmentedTable<Entry>, key: u64) -> Position {
        let h = spread(key);
        t.insert(h, (key, h), |e| e.1).expect("room")
    }

    fn find(t: &SegmentedTable<Entry>, key: u64) -> Option<Position> {
        t.find(spread(key), |e| e.0 == key)
    }

    /// A table grown from nothing by inserting keys `0..n`.
    fn filled(n: u64) -> SegmentedTable<Entry> {
        let mut t = SegmentedTable::new();
        for key in 0..n {
            insert(&mut t, key);
        }
        t
    }

    /// Every segment's [`Segment::control`] is where [`control_address`] puts the control
    /// bytes from each of its entries: hashbrown still lays a table out as entries counted
    /// back from one address, and every path that replaces or grows a table learned it anew.
    fn assert_control_known(t: &SegmentedTable<Entry>) {
        for s in t.chunks.iter().flatten() {
            for bucket in s.table.iter_buckets() {
                let entry = s.table.get_bucket(bucket).expect("occupied");
                assert_eq!(control_address(entry, bucket), s.control, "bucket {bucket}");
            }
        }
    }

    #[test]
    fn each_segment_knows_where_its_control_bytes_are_through_growth_splits_and_shrinks() {
        // From no table at all: the first segment grows by doubling, then splits.
        let n = 4 * SEGMENT_CAPACITY as u64;
        let mut t = filled(n);
        assert!(t.segments() > 1);
        assert_control_known(&t);
        for key in 0..n {
            if key % 16 != 0 {
                let at = find(&t, key).expect("present");
                t.remove(at);
            }
        }
        for s in 0..t.segments() {
            t.shrink_if_sparse(s, |e: &Entry| e.1);
        }
        assert_control_known(&t);
        // Shrunk tables grow again.
        for key in n..2 * n {
            insert(&mut t, key);
        }
        assert_control_known(&t);
    }

    #[test]
    fn segments_split_instead_of_growing_past_their_size() {
        let n = 3 * CHUNK as u64 * SEGMENT_CAPACITY as u64; // several chunks of segments
        let t = filled(n);
        assert_eq!(t.len(), n as usize);
        assert!(t.segments() > CHUNK, "{} segments", t.segments());
        for s in 0..t.segments() {
            assert!(
                t.segment_buckets(s) <= SEGMENT_BUCKETS,
                "segment {s} grew past its size"
            );
        }
        let walked: usize = (0..t.segments()).map(|s| t.segment_buckets(s)).sum();
        assert_eq!(t.buckets(), walked, "bucket count follows every step");
        for key in 0..n {
            let at = find(&t, key).expect("every key is found after splits");
            assert_eq!(t.get(at).map(|e| e.0), Some(key));
        }
        assert_eq!(find(&t, n + 1), None);
    }

    /// The bound a growth step keeps, checked by what it does rather than how long it
    /// takes: an entry is moved only by being rehashed (a split drains a segment into two
    /// tables, a segment growing below its full size moves its own entries), so the rehash
    /// calls of one insert are the entries that insert moved.
    #[test]
    fn no_insert_moves_more_than_one_segment() {
        let moved = std::cell::Cell::new(0usize);
        let rehash = |e: &Entry| {
            moved.set(moved.get() + 1);
            e.1
        };
        let mut t = SegmentedTable::new();
        let n = 64 * SEGMENT_CAPACITY as u64; // ~230 k entries: many splits and doublings
        let (mut worst, mut splits, mut doublings) = (0, 0, 0);
        for key in 0..n {
            let (segments, depth) = (t.segments(), t.depth);
            moved.set(0);
            let h = spread(key);
            t.insert(h, (key, h), rehash).expect("room");
            worst = worst.max(moved.get());
            splits += t.segments() - segments;
            doublings += (t.depth - depth) as usize;
            assert!(
                t.segments() - segments <= 1 && t.depth - depth <= 1,
                "insert {key} split more than one segment"
            );
        }
        assert!(
            splits > 60 && doublings >= 6,
            "{splits} splits, {doublings} doublings"
        );
        assert!(
            worst <= SEGMENT_CAPACITY,
            "an insert moved {worst} entries (one segment holds {SEGMENT_CAPACITY})"
        );
        assert!(
            worst * 32 < n as usize,
            "a whole-table resize would move all {n}"
        );
        // The directory is the other thing a step copies: 4 bytes per slot, at most a few
        // slots per segment.
        assert!(
            t.directory.len() <= 4 * t.segments(),
            "{} directory slots for {} segments",
            t.directory.len(),
            t.segments()
        );
    }

    /// Removals and inserts at a constant size (what eviction at the cap does to a segment)
    /// leave tombstones; the segment is rebuilt at its size instead of growing past it.
    #[test]
    fn churn_at_a_constant_size_never_grows_a_segment_past_its_size() {
        let n = SEGMENT_CAPACITY as u64 / 8 * 7; // one segment, well past half full
        let mut t = filled(n);
        assert_eq!(t.segments(), 1);
        let mut bytes = None;
        for key in n..n + 20 * SEGMENT_CAPACITY as u64 {
            let victim = key - n; // the oldest key
            let at = find(&t, victim).expect("present");
            assert_eq!(t.remove(at).map(|e| e.0), Some(victim));
            insert(&mut t, key);
            assert_eq!(t.len(), n as usize);
            assert_eq!(t.segments(), 1, "the churn split the segment");
            assert!(
                t.segment_buckets(0) <= SEGMENT_BUCKETS,
                "the segment grew past its size after {} replacements",
                key - n
            );
            // Once a rebuild left a spare, the footprint is the segment and its spare.
            if t.spare.is_some() {
                assert_eq!(
                    *bytes.get_or_insert(t.allocation_size()),
                    t.allocation_size()
                );
            }
        }
        assert!(bytes.is_some(), "the tombstones never called for a rebuild");
        assert_control_known(&t);
        for key in 20 * SEGMENT_CAPACITY as u64..n + 20 * SEGMENT_CAPACITY as u64 {
            assert!(find(&t, key).is_some(), "key {key} survives the rebuilds");
        }
    }

    #[test]
    fn removing_by_position_and_shrinking_returns_memory() {
        let n = 4 * SEGMENT_CAPACITY as u64;
        let mut t = filled(n);
        let before = t.allocation_size();
        for key in 0..n {
            if key % 16 != 0 {
                let at = find(&t, key).expect("present");
                assert_eq!(t.remove(at).map(|e| e.0), Some(key));
            }
        }
        assert_eq!(t.len(), (n / 16) as usize);
        let shrunk = (0..t.segments())
            .filter(|&s| t.shrink_if_sparse(s, |e: &Entry| e.1))
            .count();
        assert_eq!(shrunk, t.segments(), "every segment was 1/16 full");
        assert!(
            t.allocation_size() * 4 < before,
            "{} bytes after, {before} before",
            t.allocation_size()
        );
        for key in (0..n).step_by(16) {
            assert!(
                find(&t, key).is_some(),
                "kept key {key} survives the shrink"
            );
        }
    }

    #[test]
    fn retain_segment_removes_only_from_that_segment() {
        let n = 4 * SEGMENT_CAPACITY as u64;
        let mut t = filled(n);
        let in_first = (0..n)
            .filter(|&k| find(&t, k).unwrap().segment == 0)
            .count();
        assert_eq!(t.retain_segment(0, |_| false), in_first);
        assert_eq!(t.len(), n as usize - in_first);
        for key in 0..n {
            assert_eq!(find(&t, key).is_some(), t.segment_of(spread(key)) != 0);
        }
    }

    #[test]
    fn with_capacity_needs_no_growth_step() {
        let n = 10 * SEGMENT_CAPACITY;
        let mut t = SegmentedTable::with_capacity(n);
        let (segments, buckets) = (t.segments(), t.buckets());
        for key in 0..n as u64 {
            insert(&mut t, key);
        }
        assert_eq!((t.segments(), t.buckets()), (segments, buckets));
    }

    #[test]
    fn colliding_directory_bits_stop_at_max_depth() {
        // Every hash has the same directory bits: splits cannot separate them, so after
        // MAX_DEPTH splits the one segment grows as a plain table.
        let mut t = SegmentedTable::new();
        let n = 2 * SEGMENT_CAPACITY as u64;
        for key in 0..n {
            let h = key & 0xFFFF; // directory bits (below the top 7) all zero
            t.insert(h, (key, h), |e: &Entry| e.1).expect("room");
        }
        assert_eq!(t.len(), n as usize);
        assert_eq!(t.depth, MAX_DEPTH);
        for key in 0..n {
            assert!(t.find(key & 0xFFFF, |e| e.0 == key).is_some());
        }
    }
}
