//! The server's one clock: nanoseconds since the process started, from `Instant`.
//!
//! Every shard reads the same epoch, so times carried between shards (and handed to the
//! pure policy code as `now_ns`) are comparable. Monotonic: wall-clock jumps cannot refill
//! or freeze a bucket.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call in this process.
#[inline]
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
