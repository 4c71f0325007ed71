//! The result/global cache's `max_total_bytes` bounds the memory it really holds, measured
//! with a counting allocator: this test binary's own, so it has one test only (a test running
//! beside it would allocate into the count).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tollgate_grpc::cache::{CacheLimits, Scope, TtlCache};

/// The system allocator, counting the bytes live.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (above).
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `GlobalAlloc::realloc`'s caller guarantees, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed).max(0) as usize
}

const S: u64 = 1_000_000_000;

/// Fills a cache of `max_total_bytes` with three times as many entries as fit (`key_len`-byte
/// keys in `scope`, `value_len`-byte values), so it has evicted; answers the heap it then
/// holds and the bytes it counts.
fn fill(max_total_bytes: usize, scope: &Scope, key_len: usize, value_len: usize) -> (usize, usize) {
    let before = live_bytes();
    let mut cache = TtlCache::new(CacheLimits {
        max_entries: usize::MAX,
        max_total_bytes,
        max_entry_bytes: max_total_bytes,
    });
    for i in 0..3 * max_total_bytes / (key_len + value_len + 1) {
        let key = format!("{i:0>key_len$}");
        cache
            .upsert(scope.clone(), &key, vec![7; value_len], 3600 * S, 0)
            .unwrap();
    }
    (live_bytes().saturating_sub(before), cache.total_bytes())
}

/// Long keys (held three times before the key was shared: counted once, 4 KiB keys took
/// three times the budget), long control points (part of a result-cache key), and small
/// entries, where the per-entry overhead is most of the size.
#[test]
fn the_byte_budget_bounds_the_memory_held() {
    let budget = 512 << 10;
    let long_control_point = Scope::Result("c".repeat(2000));
    for (name, scope, key_len, value_len) in [
        ("long keys", &Scope::Global, 4000, 0),
        ("long control point", &long_control_point, 8, 0),
        ("keys and values", &Scope::Global, 1000, 1000),
        ("small entries", &Scope::Global, 8, 0),
        ("small keys, some value", &Scope::Global, 16, 100),
    ] {
        let (held, counted) = fill(budget, scope, key_len, value_len);
        assert!(counted <= budget, "{name}: counted {counted}");
        assert!(
            held <= counted,
            "{name}: the cache holds {held} bytes of heap, counts {counted}"
        );
    }
}
