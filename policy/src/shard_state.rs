//! [`ShardState`]: everything one shard owns, as one pure state machine — its buckets, the
//! flows in flight on its concurrency components, and the wait queues of its schedulers.
//!
//! The server keeps one per shard, touched only by that shard's thread; its IO shell turns
//! requests into calls here and [`Resolved`] answers back into replies, and calls
//! [`ShardState::poll`] at the times [`ShardState::next_wake`] reports. Time is always an
//! argument, so every rule is testable on a virtual clock.
//!
//! A check meets its components in Aperture's stage order ([`crate::Stage`]): the shell
//! takes the immediate ones (rate and concurrency limiters) with
//! [`ShardState::take_group`] on each owning shard; if all accept, it offers each
//! scheduler component to its owner with [`ShardState::offer`], which admits at once when
//! nobody waits and tokens (or capacity) are there, else queues the flow until it is
//! admitted or its deadline passes. When a later stage refuses, the shell hands earlier
//! stages' tokens back with [`ShardState::give_back`].

use crate::bucket::{Take, WAIT_FOREVER};
use crate::decision::{Decision, LimiterOutcome, OutcomeKind, Outcomes, Refusal};
use crate::engine::{Engine, PlannedTake};
use crate::flow::FlowId;
use crate::identity::LimiterId;
use crate::inflight::InFlight;
use crate::store::BucketStore;
use crate::tokens::Tokens;
use crate::wfq::{FlowKey, Served, Shortfall, Ticket, WaitQueue};
use hashbrown::HashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Stale wake-ups tolerated beyond two per waiting queue before the heap is rebuilt.
const STALE_WAKEUP_SLACK: usize = 64;

/// Bounds of one shard's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLimits {
    /// Flows waiting in the shard's scheduler queues at most; beyond it a flow that would
    /// wait is refused at once (`queue_full`).
    pub max_waiters: usize,
    /// Flows holding concurrency tokens at most; beyond it a flow is refused
    /// (`too_many_flows`).
    pub max_flows: usize,
    /// Longest any flow waits in a queue: a flow without a deadline of its own waits this
    /// long at most, and one whose deadline is later is answered by then.
    pub max_wait_ns: u64,
}

impl Default for ShardLimits {
    /// 65,536 waiters (about 10 MB with the server's per-waiter state) and 262,144 flows in
    /// flight (about 30 MB) per shard: far above what a shard serves in one queue timeout
    /// or holds in flight, and small enough that a flood cannot exhaust memory. A flow
    /// without a deadline waits at most 60 s.
    fn default() -> Self {
        ShardLimits {
            max_waiters: 65_536,
            max_flows: 262_144,
            max_wait_ns: 60_000_000_000,
        }
    }
}

/// The answer for a flow that waited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Resolved {
    /// The ticket given to [`ShardState::offer`].
    pub ticket: Ticket,
    /// The scheduler's part of the decision.
    pub outcome: LimiterOutcome,
}

/// A waiter's component, key and cost, to build its outcome.
#[derive(Clone, Debug)]
struct Waiting {
    limiter: LimiterId,
    key: Box<str>,
    tokens: Tokens,
}

/// One shard's buckets, flows in flight and wait queues.
pub struct ShardState {
    store: BucketStore,
    inflight: InFlight,
    queues: HashMap<LimiterId, HashMap<Box<str>, WaitQueue>>,
    waiting: HashMap<Ticket, Waiting>,
    /// When a queue wants serving: (time, limiter, key); stale entries are skipped.
    wakeups: BinaryHeap<Reverse<(u64, LimiterId, Box<str>)>>,
    /// Queues to serve at the next poll (tokens came back, a flow ended).
    due: Vec<(LimiterId, Box<str>)>,
    limits: ShardLimits,
}

impl ShardState {
    /// An empty state for `shard`.
    pub fn new(shard: u16, limits: ShardLimits) -> ShardState {
        ShardState {
            store: BucketStore::new(),
            inflight: InFlight::new(shard, limits.max_flows),
            queues: HashMap::new(),
            waiting: HashMap::new(),
            wakeups: BinaryHeap::new(),
            due: Vec::new(),
            limits,
        }
    }

    /// The buckets.
    pub fn store(&self) -> &BucketStore {
        &self.store
    }

    /// The buckets, to change (replication drains, snapshots, eviction).
    pub fn store_mut(&mut self) -> &mut BucketStore {
        &mut self.store
    }

    /// Flows waiting in this shard's queues.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Flows holding concurrency tokens on this shard.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Takes the components of one group (all owned here) now: rate limiters, concurrency
    /// limiters (recording the flow), and schedulers as "now or never". If any refuses,
    /// the group's accepted takes go back at once and are marked `Returned`.
    pub fn take_group(
        &mut self,
        engine: &Engine,
        takes: &[PlannedTake<'_>],
        now_ns: u64,
    ) -> Outcomes {
        let mut outcomes = Outcomes::new();
        for t in takes {
            outcomes.push(match t.key {
                // A limiter this shard's engine does not have: planned by a shard on the other
                // side of a reload that is reaching the shards one by one. It does not apply
                // here yet (or any more), as for a flow without its label.
                _ if engine.get_limiter(t.limiter).is_none() => {
                    LimiterOutcome::key_not_found(t.limiter, t.tokens.get())
                }
                None => LimiterOutcome::key_not_found(t.limiter, t.tokens.get()),
                Some(key) => self.take_now(engine, t.limiter, key, t.tokens, now_ns),
            });
        }
        if Decision::needs_return(&outcomes) {
            for (t, o) in takes.iter().zip(outcomes.iter_mut()) {
                if o.kind != OutcomeKind::Accepted {
                    continue;
                }
                if let (Some(key), Some(spec)) = (t.key, engine.get_limiter(t.limiter)) {
                    let capacity = spec.params_for(key).capacity;
                    self.give_back(engine, t.limiter, key, t.tokens, o.flow, now_ns);
                    o.mark_returned(capacity);
                }
            }
        }
        outcomes
    }

    /// One take that succeeds or fails now (a concurrency component also records the flow).
    fn take_now(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        now_ns: u64,
    ) -> LimiterOutcome {
        let take = self.store.take(engine, limiter, key, tokens, now_ns);
        let mut outcome = outcome_of(limiter, tokens, take);
        if take.accepted {
            self.start_flow(engine, limiter, key, tokens, now_ns, &mut outcome);
        }
        outcome
    }

    /// Records an accepted flow of a concurrency component; refuses it (and puts its
    /// tokens back) when the ledger is full.
    fn start_flow(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        now_ns: u64,
        outcome: &mut LimiterOutcome,
    ) {
        let Some(max_inflight_ns) = engine.limiter(limiter).max_inflight_ns else {
            return;
        };
        let expires = now_ns.saturating_add(max_inflight_ns);
        match self.inflight.start(limiter, key, tokens, expires) {
            Some(id) => outcome.flow = Some(id),
            None => {
                self.store.give_back(engine, limiter, key, tokens, now_ns);
                *outcome = LimiterOutcome::refused(limiter, tokens.get(), Refusal::TooManyFlows);
            }
        }
    }

    /// Offers a flow to a scheduler component owned here. `deadline_ns` is when the client
    /// stops waiting (None: it brought no deadline). Returns the outcome when decided now;
    /// otherwise the flow waits and its [`Resolved`] comes out of this or a later call
    /// (`out`), at its deadline at the latest.
    pub fn offer(
        &mut self,
        engine: &Engine,
        take: &PlannedTake<'_>,
        ticket: Ticket,
        deadline_ns: Option<u64>,
        now_ns: u64,
        out: &mut Vec<Resolved>,
    ) -> Option<LimiterOutcome> {
        let (limiter, tokens) = (take.limiter, take.tokens);
        let Some(key) = take.key else {
            return Some(LimiterOutcome::key_not_found(limiter, tokens.get()));
        };
        // Unknown here: planned across a reload still reaching the shards (see take_group).
        let Some(spec) = engine.get_limiter(limiter) else {
            return Some(LimiterOutcome::key_not_found(limiter, tokens.get()));
        };
        let margin = spec
            .scheduler
            .as_ref()
            .map_or(0, |s| s.decision_deadline_margin_ns);
        // No flow waits longer than `max_queue_wait`, whatever budget it brought: a budget
        // of u32::MAX ms would hold a queue slot for 49 days.
        let longest = now_ns.saturating_add(self.limits.max_wait_ns);
        let mut deadline = match deadline_ns {
            Some(d) => d.saturating_sub(margin).min(longest),
            None => longest,
        };
        if let Some(timeout) = take.workload.and_then(|w| w.queue_timeout_ns) {
            deadline = deadline.min(now_ns.saturating_add(timeout));
        }
        let queued = self
            .queues
            .get(&limiter)
            .is_some_and(|by_key| by_key.contains_key(key));
        if !queued {
            // Nobody waits: admit now if the tokens are there.
            let now_take = self.store.take(engine, limiter, key, tokens, now_ns);
            let mut outcome = outcome_of(limiter, tokens, now_take);
            if now_take.accepted {
                self.start_flow(engine, limiter, key, tokens, now_ns, &mut outcome);
                return Some(outcome);
            }
            let never = tokens.get() > spec.params_for(key).capacity
                || (now_take.wait_ns == WAIT_FOREVER && !spec.kind.counts_in_flight());
            if never || deadline <= now_ns {
                return Some(outcome);
            }
        } else if deadline <= now_ns {
            let mut outcome = LimiterOutcome::refused(limiter, tokens.get(), Refusal::Exhausted);
            outcome.current = self.store.level(engine, limiter, key, now_ns);
            outcome.remaining = outcome.current;
            return Some(outcome);
        }
        if self.waiting.len() >= self.limits.max_waiters {
            return Some(LimiterOutcome::refused(
                limiter,
                tokens.get(),
                Refusal::QueueFull,
            ));
        }
        let pick = take.workload;
        let priority = pick.map_or(1.0, |w| w.priority);
        let flow = FlowKey::new(
            pick.and_then(|w| w.class),
            priority,
            pick.and_then(|w| w.fairness),
        );
        self.queues
            .entry(limiter)
            .or_default()
            .entry_ref(key)
            .or_default()
            .push(ticket, tokens, priority, flow, deadline);
        self.waiting.insert(
            ticket,
            Waiting {
                limiter,
                key: key.into(),
                tokens,
            },
        );
        // It may be the new head and servable now.
        self.serve(engine, limiter, key, now_ns, out);
        None
    }

    /// Serves every queue that is due at `now_ns` and ends expired flows; answers go to
    /// `out`.
    pub fn poll(&mut self, engine: &Engine, now_ns: u64, out: &mut Vec<Resolved>) {
        let mut expired = Vec::new();
        self.inflight.expire(now_ns, |_, entry| expired.push(entry));
        for entry in expired {
            self.return_tokens(engine, entry.limiter, &entry.key, entry.tokens, now_ns);
        }
        while let Some(Reverse((at, _, _))) = self.wakeups.peek() {
            if *at > now_ns {
                break;
            }
            if let Some(Reverse((_, limiter, key))) = self.wakeups.pop() {
                self.due.push((limiter, key));
            }
        }
        for (limiter, key) in std::mem::take(&mut self.due) {
            self.serve(engine, limiter, &key, now_ns, out);
        }
    }

    /// When [`ShardState::poll`] next has work: a queue's tokens or deadline, or a flow's
    /// expiry. None when nothing waits on time.
    pub fn next_wake(&mut self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(0);
        }
        let queue = self.wakeups.peek().map(|Reverse((at, _, _))| *at);
        let flow = self.inflight.next_expiry();
        match (queue, flow) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends a flow (FlowEnd): its tokens go back. False when it is unknown here or
    /// already ended (harmless).
    pub fn end_flow(&mut self, engine: &Engine, flow: FlowId, now_ns: u64) -> bool {
        match self.inflight.end(flow) {
            Some(entry) => {
                self.return_tokens(engine, entry.limiter, &entry.key, entry.tokens, now_ns);
                true
            }
            None => false,
        }
    }

    /// Hands back tokens a flow took here when a later stage of its check refused it: the
    /// flow's record (concurrency) or the bucket's tokens (rate, quota).
    pub fn give_back(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        flow: Option<FlowId>,
        now_ns: u64,
    ) {
        match flow {
            Some(id) => {
                self.end_flow(engine, id, now_ns);
            }
            None => self.return_tokens(engine, limiter, key, tokens, now_ns),
        }
    }

    /// Applies a peer's consumption (replication). A negative number (the peer's flows
    /// ended, or it handed tokens back) may let waiters in.
    pub fn debit(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: f64,
        now_ns: u64,
    ) {
        if engine.get_limiter(limiter).is_none() {
            return;
        }
        self.store.debit(engine, limiter, key, tokens, now_ns);
        if tokens < 0.0 {
            self.mark_due(limiter, key);
        }
    }

    /// Switches this shard from `old` to `new` (a reload): concurrency counters keep their
    /// flows in flight counted under a changed capacity, and every queue is served at the
    /// next poll under the new definitions — a removed scheduler's waiters are refused
    /// (`removed`), a larger bucket may admit some at once. Buckets of removed limiters are
    /// no longer reached and go at the next idle sweep; flows in flight of a removed
    /// concurrency limiter still end (or expire) normally, giving back to nothing.
    pub fn reloaded(&mut self, old: &Engine, new: &Engine, now_ns: u64) {
        self.store.rebase_in_flight(old, new, now_ns);
        for (limiter, by_key) in &self.queues {
            for key in by_key.keys() {
                self.due.push((*limiter, key.clone()));
            }
        }
    }

    /// Takes a waiting flow out of its queue before it is answered: its client gave up,
    /// or its request was refused (OVERLOADED), so it must not hold a queue slot until its
    /// deadline. Nothing is answered for it; its queue is served, since it may have been
    /// the head that others waited behind (answers go to `out`). False when `ticket` does
    /// not wait here.
    pub fn withdraw(
        &mut self,
        engine: &Engine,
        ticket: Ticket,
        now_ns: u64,
        out: &mut Vec<Resolved>,
    ) -> bool {
        let Some(w) = self.waiting.remove(&ticket) else {
            return false;
        };
        if let Some(queue) = self
            .queues
            .get_mut(&w.limiter)
            .and_then(|q| q.get_mut(&*w.key))
        {
            queue.withdraw(ticket);
        }
        self.serve(engine, w.limiter, &w.key, now_ns, out);
        true
    }

    /// Refuses every waiting flow (shutdown); answers go to `out`.
    pub fn release_waiters(
        &mut self,
        engine: &Engine,
        refusal: Refusal,
        now_ns: u64,
        out: &mut Vec<Resolved>,
    ) {
        let mut served = Vec::new();
        for (_, by_key) in self.queues.drain() {
            for (_, mut queue) in by_key {
                queue.drain(refusal, &mut served);
            }
        }
        for s in served {
            self.resolve(engine, s, now_ns, out);
        }
        self.wakeups.clear();
        self.due.clear();
    }

    /// Ends every flow in flight (graceful shutdown: peers see the tokens come back).
    pub fn end_all_flows(&mut self, engine: &Engine, now_ns: u64) -> usize {
        let mut ended = Vec::new();
        self.inflight.drain(|_, entry| ended.push(entry));
        let n = ended.len();
        for entry in ended {
            self.return_tokens(engine, entry.limiter, &entry.key, entry.tokens, now_ns);
        }
        n
    }

    fn return_tokens(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        tokens: Tokens,
        now_ns: u64,
    ) {
        self.store.give_back(engine, limiter, key, tokens, now_ns);
        self.mark_due(limiter, key);
    }

    fn mark_due(&mut self, limiter: LimiterId, key: &str) {
        if self
            .queues
            .get(&limiter)
            .is_some_and(|by_key| by_key.contains_key(key))
        {
            self.due.push((limiter, key.into()));
        }
    }

    /// Serves one queue and schedules its next wake.
    fn serve(
        &mut self,
        engine: &Engine,
        limiter: LimiterId,
        key: &str,
        now_ns: u64,
        out: &mut Vec<Resolved>,
    ) {
        let Some(queue) = self.queues.get_mut(&limiter).and_then(|q| q.get_mut(key)) else {
            return;
        };
        let mut served = Vec::new();
        match engine.get_limiter(limiter) {
            Some(spec) => {
                let params = spec.params_for(key);
                let counts_in_flight = spec.kind.counts_in_flight();
                let store = &mut self.store;
                let mut source = |tokens: Tokens, now: u64| -> Result<Take, Shortfall> {
                    let take = store.take(engine, limiter, key, tokens, now);
                    if take.accepted {
                        Ok(take)
                    } else if tokens.get() > params.capacity {
                        Err(Shortfall::Never)
                    } else if take.wait_ns != WAIT_FOREVER {
                        Err(Shortfall::In(take.wait_ns))
                    } else if counts_in_flight {
                        Err(Shortfall::Event)
                    } else {
                        Err(Shortfall::Never)
                    }
                };
                queue.serve(now_ns, &mut source, &mut served);
            }
            None => queue.drain(Refusal::Removed, &mut served),
        }
        let wake = queue.next_wake();
        let empty = queue.is_empty();
        if empty {
            if let Some(by_key) = self.queues.get_mut(&limiter) {
                by_key.remove(key);
                if by_key.is_empty() {
                    self.queues.remove(&limiter);
                }
            }
        } else if let Some(at) = wake {
            self.wakeups.push(Reverse((at, limiter, key.into())));
            self.compact_wakeups();
        }
        for s in served {
            self.resolve(engine, s, now_ns, out);
        }
    }

    /// Every serve of a waiting queue pushes its next wake, and an entry stays until its
    /// time comes even when a later one replaced it: many waiters with distant deadlines
    /// would pile them up. Once they outnumber the queues, the heap is rebuilt with each
    /// queue's next wake alone (amortized O(1) a push).
    fn compact_wakeups(&mut self) {
        // Counting the queues walks every limiter's map: only once there may be a pile.
        if self.wakeups.len() <= STALE_WAKEUP_SLACK {
            return;
        }
        let queues: usize = self.queues.values().map(HashMap::len).sum();
        if self.wakeups.len() <= 2 * queues + STALE_WAKEUP_SLACK {
            return;
        }
        let mut fresh = BinaryHeap::with_capacity(queues);
        for (&limiter, by_key) in &mut self.queues {
            for (key, queue) in by_key.iter_mut() {
                if let Some(at) = queue.next_wake() {
                    fresh.push(Reverse((at, limiter, key.clone())));
                }
            }
        }
        self.wakeups = fresh;
    }

    /// Turns a queue's answer into the waiter's outcome (recording a concurrency flow).
    fn resolve(&mut self, engine: &Engine, served: Served, now_ns: u64, out: &mut Vec<Resolved>) {
        let ticket = match served {
            Served::Admitted { ticket, .. } | Served::Refused { ticket, .. } => ticket,
        };
        let Some(w) = self.waiting.remove(&ticket) else {
            return;
        };
        let outcome = match served {
            Served::Admitted { take, .. } => {
                let mut outcome = outcome_of(w.limiter, w.tokens, take);
                if engine.get_limiter(w.limiter).is_some() {
                    self.start_flow(engine, w.limiter, &w.key, w.tokens, now_ns, &mut outcome);
                }
                outcome
            }
            Served::Refused {
                refusal, wait_ns, ..
            } => {
                let mut outcome = LimiterOutcome::refused(w.limiter, w.tokens.get(), refusal);
                outcome.wait_ns = wait_ns;
                if engine.get_limiter(w.limiter).is_some() {
                    outcome.current = self.store.level(engine, w.limiter, &w.key, now_ns);
                    outcome.remaining = outcome.current;
                }
                outcome
            }
        };
        out.push(Resolved { ticket, outcome });
    }
}

/// The outcome of a take that decided now.
fn outcome_of(limiter: LimiterId, tokens: Tokens, take: Take) -> LimiterOutcome {
    LimiterOutcome {
        limiter,
        kind: if take.accepted {
            OutcomeKind::Accepted
        } else {
            OutcomeKind::Rejected
        },
        tokens: tokens.get(),
        remaining: take.remaining,
        current: take.current,
        wait_ns: take.wait_ns,
        refusal: (!take.accepted).then_some(Refusal::Exhausted),
        flow: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_policies;

    #[test]
    fn serving_a_queue_often_leaves_no_pile_of_wakeups() {
        let engine = Engine::new(
            &parse_policies(
                "policies:\n  - policy_name: q\n    quota_scheduler: { bucket_capacity: 1, fill_amount: 1, rate_limiter: { interval: 1s, limit_by_label_key: k }, selectors: [ { control_point: c } ] }\n",
                "t",
            )
            .expect("valid"),
        );
        let mut state = ShardState::new(0, ShardLimits::default());
        let mut out = Vec::new();
        let plan = engine.plan("c", &[("k", "v")], None).expect("planned");
        assert!(state
            .offer(&engine, &plan[0], 0, None, 0, &mut out)
            .is_some());
        // Each new waiter serves the queue, which pushes its next wake again.
        for ticket in 1..20_000 {
            let deadline = Some(50_000_000_000 + ticket);
            assert!(state
                .offer(&engine, &plan[0], ticket, deadline, 0, &mut out)
                .is_none());
        }
        assert_eq!(state.waiting(), 19_999, "all wait");
        assert!(
            state.wakeups.len() <= 2 + STALE_WAKEUP_SLACK,
            "{}",
            state.wakeups.len()
        );
        assert_eq!(state.next_wake().map(|at| at > 0), Some(true));
    }
}
