//! What one shard records, and the calls the decision path makes to record it.
//!
//! [`ShardBlock`] is the shard's counters, shared with the scraper; [`ShardMetrics`] is the
//! shard's own handle on it plus what only the shard reads (its top-keys sketches). Every
//! recording method returns at once when metrics are off (`server.metrics: false`), so
//! turning them off removes their cost, which is how docs/performance.md measures it.

use super::counter::Counter;
use super::per_limiter::LimiterTable;
use super::top_keys::ShardTopKeys;
use super::ProtocolCounters;
use crate::clock;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use tollgate_cluster::Op;
use tollgate_policy::{
    Engine, FlowError, LimiterId, LimiterOutcome, OutcomeKind, PlannedTake, Refusal,
};

/// Every [`Refusal`] reason, in the order of [`ShardBlock::refusals`].
pub const REFUSALS: [Refusal; 6] = [
    Refusal::Exhausted,
    Refusal::TimedOut,
    Refusal::QueueFull,
    Refusal::TooManyFlows,
    Refusal::ShuttingDown,
    Refusal::Removed,
];

fn refusal_index(r: Refusal) -> usize {
    match r {
        Refusal::Exhausted => 0,
        Refusal::TimedOut => 1,
        Refusal::QueueFull => 2,
        Refusal::TooManyFlows => 3,
        Refusal::ShuttingDown => 4,
        Refusal::Removed => 5,
    }
}

/// One shard's counters. Written only by that shard (single-writer [`Counter::add`]), read
/// by the scraper. Aligned to two cache lines so two shards' blocks never share a line
/// (nor a pair the adjacent-line prefetcher pulls together).
#[derive(Debug)]
#[repr(align(128))]
pub struct ShardBlock {
    /// Binary-protocol checks answered on this shard: outcomes and server-side latency.
    pub binary: ProtocolCounters,
    /// Checks that needed a bucket on another shard (one cross-shard round trip or more).
    pub hops: Counter,
    /// Requests answered OVERLOADED (too many in flight on their connection).
    pub overloaded: Counter,
    /// Binary connections refused UNAUTHENTICATED (no or wrong API key in HELLO).
    pub unauthenticated: Counter,
    /// Binary connections whose TLS handshake failed or timed out.
    pub tls_handshake_failed: Counter,
    /// Binary connections closed by `server.idle_timeout`.
    pub idle_closed: Counter,
    /// Rejections by reason, indexed as [`REFUSALS`].
    pub refusals: [Counter; REFUSALS.len()],
    /// Replicated entries applied to this shard's buckets: `[debit, lower]`.
    pub replica_entries: [Counter; 2],
    /// Buckets dropped by the idle sweep.
    pub evicted_idle: Counter,
    /// Outcomes per limiter.
    pub limiters: LimiterTable,
}

impl ShardBlock {
    /// A block with room for `limiters` limiter ids.
    pub fn new(limiters: usize) -> ShardBlock {
        ShardBlock {
            binary: ProtocolCounters::default(),
            hops: Counter::default(),
            overloaded: Counter::default(),
            unauthenticated: Counter::default(),
            tls_handshake_failed: Counter::default(),
            idle_closed: Counter::default(),
            refusals: Default::default(),
            replica_entries: Default::default(),
            evicted_idle: Counter::default(),
            limiters: LimiterTable::new(limiters),
        }
    }
}

/// A take's limiter and bucket key, whichever form the take has.
pub trait TakeKey {
    /// The limiter taken from.
    fn limiter_id(&self) -> LimiterId;
    /// The bucket key; None when the flow lacks the limit label.
    fn bucket_key(&self) -> Option<&str>;
}

impl TakeKey for PlannedTake<'_> {
    fn limiter_id(&self) -> LimiterId {
        self.limiter
    }
    fn bucket_key(&self) -> Option<&str> {
        self.key
    }
}

impl TakeKey for crate::shard::OwnedTake {
    fn limiter_id(&self) -> LimiterId {
        self.limiter
    }
    fn bucket_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// A shard's recorder: lives in the shard, never crosses threads.
#[derive(Debug)]
pub struct ShardMetrics {
    /// `server.metrics`: when false every method returns at once.
    enabled: bool,
    block: Arc<ShardBlock>,
    /// Top keys per limiter, fed from accepted takes; read through the shard's inbox.
    top: RefCell<ShardTopKeys>,
    /// Binary checks answered since the last [`ShardMetrics::binary_read_done`], whose
    /// latency is recorded there, once for the whole read.
    unflushed: Cell<u64>,
}

impl ShardMetrics {
    /// The recorder writing into `block`.
    pub fn new(enabled: bool, block: Arc<ShardBlock>) -> ShardMetrics {
        ShardMetrics {
            enabled,
            block,
            top: RefCell::new(ShardTopKeys::default()),
            unflushed: Cell::new(0),
        }
    }

    /// Whether metrics are recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A check decided: each limiter's outcome, refusal reasons, and accepted takes into
    /// the top keys. `outcomes` holds the components that ran (a subset of `takes`, which
    /// name each limiter once), so each outcome finds its take by limiter.
    #[inline]
    pub fn decided<T: TakeKey>(&self, takes: &[T], outcomes: &[LimiterOutcome], now_ns: u64) {
        if !self.enabled {
            return;
        }
        let block = &*self.block;
        for o in outcomes {
            let id = o.limiter.get();
            let Some(counters) = block.limiters.get_or_grow(id) else {
                block.limiters.untracked.add(1);
                continue;
            };
            match o.kind {
                OutcomeKind::Accepted => {
                    counters.accepted.add(1);
                    self.top.borrow_mut().record_with(id, o.tokens, now_ns, || {
                        let take = takes.iter().find(|t| t.limiter_id() == o.limiter);
                        take.and_then(TakeKey::bucket_key)
                    });
                }
                OutcomeKind::Rejected => {
                    counters.rejected.add(1);
                    if let Some(r) = o.refusal {
                        block.refusals[refusal_index(r)].add(1);
                    }
                }
                OutcomeKind::KeyNotFound => counters.key_not_found.add(1),
                OutcomeKind::Returned => counters.returned.add(1),
            }
        }
    }

    /// A check that could not be decided at once (it hopped to another shard, `hopped`,
    /// or waited in a queue) was decided: counted as [`ShardMetrics::decided`] does.
    #[inline]
    pub fn decided_later<T: TakeKey>(
        &self,
        takes: &[T],
        outcomes: &[LimiterOutcome],
        hopped: bool,
    ) {
        if !self.enabled {
            return;
        }
        if hopped {
            self.block.hops.add(1);
        }
        self.decided(takes, outcomes, clock::now_ns());
    }

    /// A flow could not be judged: counted against the policy the error names.
    pub fn flow_error(&self, engine: &Engine, error: &FlowError) {
        if !self.enabled {
            return;
        }
        let FlowError::BadTokensLabel { policy, .. } = error;
        // Rare (a malformed request), so a scan of the limiters is fine.
        for spec in engine
            .limiters()
            .iter()
            .filter(|s| &s.policy_name == policy)
        {
            match self.block.limiters.get_or_grow(spec.id.get()) {
                Some(c) => c.error.add(1),
                None => self.block.limiters.untracked.add(1),
            }
        }
    }

    /// A binary check answered at once, in the read that started at `read_at_ns`; its
    /// latency is recorded by [`ShardMetrics::binary_read_done`].
    #[inline]
    pub fn binary_answered(&self, accepted: bool) {
        if !self.enabled {
            return;
        }
        let binary = &self.block.binary;
        if accepted {
            binary.accepted.add(1);
        } else {
            binary.rejected.add(1);
        }
        self.unflushed.set(self.unflushed.get() + 1);
    }

    /// A binary request answered with an error (malformed, unknown interned id, a flow
    /// that cannot be judged).
    #[inline]
    pub fn binary_error(&self) {
        if self.enabled {
            self.block.binary.errors.add(1);
        }
    }

    /// Every frame of one read was answered: the checks answered at once since the last
    /// call all took `now - read_at_ns` of server time (their replies leave together), so
    /// one clock read records them all.
    #[inline]
    pub fn binary_read_done(&self, read_at_ns: u64) {
        let n = self.unflushed.get();
        if n == 0 {
            return;
        }
        self.unflushed.set(0);
        let elapsed = clock::now_ns().saturating_sub(read_at_ns);
        self.block.binary.latency.record(elapsed, n);
    }

    /// A binary check that waited (hopped) was answered: outcome and latency since its read.
    pub fn binary_answered_later(&self, accepted: bool, read_at_ns: u64) {
        if !self.enabled {
            return;
        }
        let binary = &self.block.binary;
        if accepted {
            binary.accepted.add(1);
        } else {
            binary.rejected.add(1);
        }
        let elapsed = clock::now_ns().saturating_sub(read_at_ns);
        binary.latency.record(elapsed, 1);
    }

    /// A request was answered OVERLOADED.
    pub fn overloaded(&self) {
        if self.enabled {
            self.block.overloaded.add(1);
        }
    }

    /// A binary connection was refused UNAUTHENTICATED.
    pub fn unauthenticated(&self) {
        if self.enabled {
            self.block.unauthenticated.add(1);
        }
    }

    /// A binary connection's TLS handshake failed (or timed out).
    pub fn tls_handshake_failed(&self) {
        if self.enabled {
            self.block.tls_handshake_failed.add(1);
        }
    }

    /// `n` binary connections were closed by `server.idle_timeout`.
    pub fn idle_closed(&self, n: usize) {
        if self.enabled {
            self.block.idle_closed.add(n as u64);
        }
    }

    /// The idle sweep dropped `n` buckets.
    pub fn evicted_idle(&self, n: usize) {
        if self.enabled {
            self.block.evicted_idle.add(n as u64);
        }
    }

    /// `n` replicated entries were applied with `op`.
    pub fn replica_applied(&self, op: Op, n: usize) {
        if !self.enabled {
            return;
        }
        let i = match op {
            Op::Debit => 0,
            Op::Lower => 1,
        };
        self.block.replica_entries[i].add(n as u64);
    }

    /// The top-keys sketches (read by the admin API through the shard's inbox).
    pub fn top_keys(&self) -> &RefCell<ShardTopKeys> {
        &self.top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::{parse_policies, LocalLimiter, OwnedFlow};

    fn limiter() -> LocalLimiter {
        let policies = parse_policies(
            r#"policies:
  - policy_name: a
    rate_limiter: { bucket_capacity: 3, fill_amount: 0, parameters: { interval: 1s, limit_by_label_key: user }, request_parameters: { tokens_label_key: cost }, selectors: [ { control_point: c } ] }
  - policy_name: b
    rate_limiter: { bucket_capacity: 1, fill_amount: 0, parameters: { interval: 1s, limit_by_label_key: tier }, selectors: [ { control_point: c } ] }
"#,
            "t",
        )
        .expect("policies");
        LocalLimiter::new(Arc::new(Engine::new(&policies)))
    }

    #[test]
    fn outcomes_refusals_and_top_keys_are_recorded_per_limiter() {
        let mut l = limiter();
        let block = Arc::new(ShardBlock::new(l.engine().limiters().len()));
        let m = ShardMetrics::new(true, block.clone());
        let flows = [
            vec![("user", "u1"), ("tier", "t")],
            vec![("user", "u1")],
            vec![("user", "u1"), ("tier", "t")],
        ];
        for labels in flows {
            let plan = l
                .engine()
                .plan("c", labels.as_slice(), None)
                .expect("plan")
                .into_iter()
                .map(|t| (t.limiter, t.key.map(str::to_string)))
                .collect::<Vec<_>>();
            let d = l
                .check_labels("c", labels.as_slice(), None, 5)
                .expect("check");
            let takes: Vec<Key> = plan.into_iter().map(|(id, k)| Key(id, k)).collect();
            m.decided(&takes, &d.limiters, 5);
        }
        let a = block.limiters.get(0).expect("a");
        let b = block.limiters.get(1).expect("b");
        // a: u1 takes 1, 1, 1 (handed back); b: t takes 1, key missing, then refused.
        assert_eq!((a.accepted.get(), a.rejected.get()), (2, 0));
        assert_eq!(
            (b.accepted.get(), b.key_not_found.get(), b.rejected.get()),
            (1, 1, 1)
        );
        assert_eq!(
            (
                a.returned.get(),
                block.refusals[refusal_index(Refusal::Exhausted)].get()
            ),
            (1, 1),
            "the third check's take from a went back when b refused"
        );
        let (top, _) = m.top.borrow_mut().counted(0, 6).expect("a's keys");
        assert_eq!((top[0].key.as_str(), top[0].count), ("u1", 2.0));

        let error = l
            .check(
                &OwnedFlow {
                    control_point: "c".into(),
                    labels: vec![("cost".into(), "-1".into())],
                    tokens: None,
                },
                6,
            )
            .expect_err("bad cost");
        m.flow_error(l.engine(), &error);
        assert_eq!(a.error.get(), 1);
    }

    #[test]
    fn disabled_records_nothing() {
        let block = Arc::new(ShardBlock::new(1));
        let m = ShardMetrics::new(false, block.clone());
        m.binary_answered(true);
        m.binary_read_done(0);
        m.overloaded();
        assert_eq!(block.binary.accepted.get(), 0);
        assert_eq!(block.binary.latency.snapshot().count(), 0);
        assert_eq!(block.overloaded.get(), 0);
    }

    #[test]
    fn one_read_records_every_check_it_answered_at_once() {
        let block = Arc::new(ShardBlock::new(0));
        let m = ShardMetrics::new(true, block.clone());
        let read_at = clock::now_ns();
        for accepted in [true, true, false] {
            m.binary_answered(accepted);
        }
        m.binary_read_done(read_at);
        m.binary_read_done(read_at);
        assert_eq!(block.binary.latency.snapshot().count(), 3);
        assert_eq!(
            (block.binary.accepted.get(), block.binary.rejected.get()),
            (2, 1)
        );
    }

    struct Key(LimiterId, Option<String>);

    impl TakeKey for Key {
        fn limiter_id(&self) -> LimiterId {
            self.0
        }
        fn bucket_key(&self) -> Option<&str> {
            self.1.as_deref()
        }
    }
}
