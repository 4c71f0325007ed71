//! The vectors a run of pipelined checks (or a batch) is decided in
//! ([`super::Reader::decide_prefetched`]), kept from one run to the next: one set per shard
//! thread, lent to whichever connection decides a run ([`lend`], [`give_back`]).
//!
//! Why: allocated afresh for every run they were ~10 KiB a read that mimalloc served from its
//! slow path (docs/performance.md, section:binary-costs). Why per thread and not per
//! connection: a run is decided without an await, so one set serves every connection of a
//! shard, and an idle connection keeps nothing. What they hold borrows each read's buffer, so
//! they are kept empty and [`recycle`]d to the lifetimes of the run at hand.

use super::{PlanStatus, ResolvedInRun};
use std::cell::Cell;
use tollgate_policy::{BucketHash, Plan};
use tollgate_protocol::CheckRef;

/// Checks a kept set may have room for. Why a bound: one huge `CHECK_BATCH` would otherwise
/// leave its shard holding a few hundred bytes per check for good; runs of pipelined checks
/// and the loadgen's batches are well below it.
const KEEP_MAX_CHECKS: usize = 1024;

/// The vectors, all empty between runs.
#[derive(Default)]
pub(super) struct PassBuffers {
    /// The run's frames: `(request id, check)`.
    pub(super) run: Vec<(u32, CheckRef<'static>)>,
    /// Every check's labels, each check's at its range.
    pub(super) labels: Vec<(&'static str, &'static str)>,
    pub(super) resolved: Vec<ResolvedInRun<'static>>,
    pub(super) plans: Vec<Plan<'static>>,
    pub(super) statuses: Vec<PlanStatus>,
    pub(super) hashes: Vec<BucketHash>,
}

thread_local! {
    static KEPT: Cell<PassBuffers> = Cell::new(PassBuffers::default());
}

/// This thread's set (a fresh one if it is lent already).
pub(super) fn lend() -> PassBuffers {
    KEPT.with(Cell::take)
}

/// Keeps `buffers` for the thread's next run, unless one grew past [`KEEP_MAX_CHECKS`].
pub(super) fn give_back(buffers: PassBuffers) {
    if buffers.plans.capacity() <= KEEP_MAX_CHECKS && buffers.run.capacity() <= KEEP_MAX_CHECKS {
        KEPT.with(|kept| kept.set(buffers));
    }
}

/// `v`, emptied, as a vector of `U`, keeping its allocation when `T` and `U` have the same
/// size and alignment, as two instances of one type that differ only in lifetimes do.
///
/// The standard library collects a vector's own `into_iter` back into its allocation when
/// the layouts allow (`tests` checks it still does); were it ever to stop, this would
/// allocate again, and nothing else would change. No `unsafe`: nothing of a `T` survives.
pub(super) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_vector_keeps_its_allocation_across_lifetimes() {
        let mut kept: Vec<(u32, &'static str)> = Vec::new();
        for round in 0..3 {
            let text = format!("round {round}");
            let mut v: Vec<(u32, &str)> = recycle(std::mem::take(&mut kept));
            if round > 0 {
                // Empty, with the capacity of the last round: no allocation this round.
                assert!(v.is_empty());
                assert!(v.capacity() >= 64, "capacity {} was lost", v.capacity());
            }
            v.extend((0..64).map(|i| (i, text.as_str())));
            kept = recycle(v);
        }
    }

    #[test]
    fn a_set_is_kept_for_the_next_run_unless_it_grew_past_the_bound() {
        let mut buffers = lend();
        buffers.hashes.reserve(100);
        give_back(buffers);
        assert!(lend().hashes.capacity() >= 100, "kept");
        // Lent: the thread has none until it is given back.
        assert_eq!(lend().hashes.capacity(), 0);
        let mut huge = PassBuffers::default();
        huge.plans.reserve(KEEP_MAX_CHECKS + 1);
        give_back(huge);
        assert_eq!(lend().plans.capacity(), 0, "dropped");
    }
}
