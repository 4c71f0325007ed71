//! Bytes per live bucket, counted by a tracking global allocator (not timed).
//!
//! Target: <= 96 bytes per bucket plus the key. Reports the table's share and the key
//! slices' share separately, at 1M keys and at 917,505 keys (with one hashbrown table, the
//! first count past a doubling; the store's segments split one at a time, so today it is an
//! ordinary size), then at 1M keys longer than the 13 bytes stored inline (heap slices).

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

/// One key more than a 2^20-bucket hashbrown table holds (7/8 load factor): the worst size of
/// the single-table store, kept so that figures compare across versions.
const WORST_CASE_KEYS: usize = (1 << 20) / 8 * 7 + 1;

fn main() {
    let engine = bench_engine();
    let id = engine.limiters()[0].id;
    let long = |width: usize| move |i: usize| format!("{:0>width$}", key(i));
    let runs: [(usize, &dyn Fn(usize) -> String); 4] = [
        (WORST_CASE_KEYS, &key),
        (1_000_000, &key),
        (1_000_000, &long(32)),
        (1_000_000, &long(100)),
    ];
    for (n, name_of) in runs {
        let names: Vec<String> = (0..n).map(name_of).collect();
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
