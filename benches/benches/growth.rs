//! The longest single step of a shard's store while it grows to many millions of keys, the
//! cost of the idle sweep, and whether memory returns once buckets are dropped. Not timed by
//! criterion: what users feel is the worst stall (every check on the shard waits behind
//! it), not a median.
//!
//! `GROWTH_KEYS=100000000 cargo bench -p tollgate-benches --bench growth` (default 10M;
//! `GROWTH_PURGE_DEFAULT=1` keeps mimalloc's delayed purging instead of purging at once;
//! `GROWTH_PREFAULT_MIB=N` faults memory in first, see [`prefault`]).
//!
//! Wall time per step catches everything, including this thread being preempted by others
//! (several ms on a busy machine), so the thread's CPU time is also read every [`WINDOW`]
//! steps: the worst window bounds the worst step's own work (page faults included, as
//! they are part of a step's cost).

use std::fmt::Write as _;
use std::time::{Duration, Instant};
use tollgate_benches::bench_engine;
use tollgate_policy::store::SWEEP_BUDGET;
use tollgate_policy::{BucketStore, Engine, Tokens};

/// The server's allocator (and its settings: no transparent huge pages).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Steps per CPU-time window.
const WINDOW: usize = 4;

/// A clock past every bucket's max_idle_time (the bench policy's default, 7200 s).
const ALL_IDLE_NS: u64 = 10_000 * 1_000_000_000;

fn main() {
    let keys: usize = std::env::var("GROWTH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    if std::env::var_os("GROWTH_PURGE_DEFAULT").is_none() {
        // Free pages go back to the OS at once, so each freed table's cost shows in its own
        // tick. (The server waits 10 ms, `runtime::PURGE_DELAY_MS`, about one of its sweep
        // ticks, which are at least 10 ms apart; this bench runs its ticks back to back.)
        // SAFETY: sets one integer option of the allocator before anything is freed.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if let Some(mib) = std::env::var("GROWTH_PREFAULT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        prefault(mib);
    }
    let engine = bench_engine();
    let id = engine.limiters()[0].id;
    let rss_empty = rss_mib();
    let mut store = BucketStore::new();
    let mut name = String::with_capacity(32);
    let (mut steps, mut windows) = (Worst::default(), Worst::default());
    let mut window_start = thread_cpu();
    let started = Instant::now();
    for i in 0..keys {
        name.clear();
        let _ = write!(name, "user-{i}");
        let t = Instant::now();
        store.take(&engine, id, &name, Tokens::ONE, 0);
        steps.add(t.elapsed(), i);
        if i % WINDOW == WINDOW - 1 {
            let cpu = thread_cpu();
            windows.add(cpu - window_start, i);
            window_start = cpu;
        }
    }
    println!(
        "growth keys={keys} total_s={:.1} worst_step_ms={:.3} at_key={} steps_over_1ms={} worst_{WINDOW}_step_cpu_ms={:.3} at_key={} windows_over_1ms_cpu={} table_mib={:.0} rss_mib={:.0}",
        started.elapsed().as_secs_f64(),
        ms(steps.worst),
        steps.at,
        steps.over_1ms,
        ms(windows.worst),
        windows.at,
        windows.over_1ms,
        mib(store.table_bytes()),
        rss_mib() - rss_empty,
    );

    let t = Instant::now();
    let dropped = store.evict_idle(&engine, 0);
    println!(
        "growth one_pass_sweep_ms={:.1} dropped={dropped}",
        ms(t.elapsed())
    );
    let ticks = sweep_pass(&mut store, &engine, 0);
    println!(
        "growth sweep_tick budget={SWEEP_BUDGET} ticks={} worst_tick_ms={:.3} worst_tick_cpu_ms={:.3} ticks_over_1ms_cpu={} mean_tick_ms={:.3}",
        ticks.count,
        ms(ticks.worst_wall),
        ms(ticks.worst_cpu),
        ticks.over_1ms_cpu,
        ms(ticks.total) / ticks.count.max(1) as f64,
    );

    // SAFETY: as above; prefault() turned purging off.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let (table_before, rss_before) = (store.table_bytes(), rss_mib() - rss_empty);
    let ticks = sweep_pass(&mut store, &engine, ALL_IDLE_NS);
    println!(
        "growth memory_return dropped={} live={} ticks={} worst_tick_ms={:.3} worst_tick_cpu_ms={:.3} ticks_over_1ms_cpu={} table_mib={:.0}->{:.1} rss_mib={:.0}->{:.0}",
        ticks.dropped,
        store.len(),
        ticks.count,
        ms(ticks.worst_wall),
        ms(ticks.worst_cpu),
        ticks.over_1ms_cpu,
        mib(table_before),
        mib(store.table_bytes()),
        rss_before,
        rss_mib() - rss_empty,
    );
}

/// Faults in `mib` MiB of table-sized blocks and frees them with purging off, so the
/// allocator hands the same, resident pages to the store's tables: the steps then show the
/// store's own work without the kernel's page faults (which, under memory pressure, include
/// reclaiming page cache). `GROWTH_PREFAULT_MIB=7000` for 100 M keys.
fn prefault(mib: usize) {
    // SAFETY: sets one integer option of the allocator: never purge (until reset).
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // The size of a full segment's table: 4,096 buckets of 40 bytes plus control bytes.
    const BLOCK: usize = 4096 * 41 + 16;
    let blocks: Vec<Vec<u8>> = (0..(mib << 20) / BLOCK)
        .map(|_| {
            let mut block = vec![0u8; BLOCK];
            for page in block.iter_mut().step_by(4096) {
                *page = 1;
            }
            block
        })
        .collect();
    std::hint::black_box(&blocks);
}

/// The slowest of a series of steps.
#[derive(Default)]
struct Worst {
    worst: Duration,
    at: usize,
    over_1ms: usize,
}

impl Worst {
    fn add(&mut self, took: Duration, at: usize) {
        if took > self.worst {
            self.worst = took;
            self.at = at;
        }
        if took > Duration::from_millis(1) {
            self.over_1ms += 1;
        }
    }
}

/// One whole pass of the incremental sweep, a budget at a time.
#[derive(Default)]
struct Ticks {
    count: usize,
    worst_wall: Duration,
    worst_cpu: Duration,
    /// Ticks that used more than 1 ms of CPU.
    over_1ms_cpu: usize,
    total: Duration,
    dropped: usize,
}

fn sweep_pass(store: &mut BucketStore, engine: &Engine, now_ns: u64) -> Ticks {
    let mut ticks = Ticks::default();
    loop {
        let (t, cpu) = (Instant::now(), thread_cpu());
        let swept = store.sweep(engine, now_ns, SWEEP_BUDGET);
        let (wall, cpu) = (t.elapsed(), thread_cpu() - cpu);
        ticks.count += 1;
        ticks.worst_wall = ticks.worst_wall.max(wall);
        ticks.worst_cpu = ticks.worst_cpu.max(cpu);
        ticks.over_1ms_cpu += usize::from(cpu > Duration::from_millis(1));
        ticks.total += wall;
        ticks.dropped += swept.dropped;
        if swept.wrapped {
            return ticks;
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// CPU time this thread has used (time it was preempted does not count).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// This process's resident set, from /proc (0 where unavailable).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
