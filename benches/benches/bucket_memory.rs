//! Bytes per live bucket, counted by a tracking global allocator (not timed).
//!
//! Target: <= 96 bytes per bucket plus the key. Reports the table's share and the key
//! slices' share separately, at 1M keys and at the worst size: one key past a table doubling
//! (hashbrown keeps at most 7/8 of its buckets full, so 2^20 * 7/8 + 1 = 917,505 keys is the
//! first count that needs 2^21 buckets, the emptiest a table ever is per live key).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use tollgate_benches::{bench_engine, key};
use tollgate_policy::{BucketStore, Tokens};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One key more than a 2^20-bucket table holds (7/8 load factor): the table has just doubled.
const WORST_CASE_KEYS: usize = (1 << 20) / 8 * 7 + 1;

fn main() {
    let engine = bench_engine();
    let id = engine.limiters()[0].id;
    for n in [WORST_CASE_KEYS, 1_000_000] {
        let names: Vec<String> = (0..n).map(key).collect();
        let key_bytes: usize = names.iter().map(String::len).sum();
        let before = LIVE.load(Ordering::Relaxed);
        let mut store = BucketStore::new();
        for k in &names {
            store.take(&engine, id, k, Tokens::ONE, 0);
        }
        let used = (LIVE.load(Ordering::Relaxed) - before) as f64;
        let table = store.table_bytes() as f64;
        let per_bucket = used / n as f64;
        let table_per_bucket = table / n as f64;
        let key_heap_per_bucket = (used - table) / n as f64;
        println!(
            "buckets={n} bytes/bucket={per_bucket:.1} (table {table_per_bucket:.1} + long-key heap slices {key_heap_per_bucket:.1}; avg key {:.1} bytes; keys of <= 13 bytes are stored inline)",
            key_bytes as f64 / n as f64
        );
        drop(store);
    }
}
