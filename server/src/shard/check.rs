//! One check's orchestration across stages and shards, and the one path by which tokens go
//! back (see the module docs of [`crate::shard`] for the whole path).
//!
//! [`Shard::decide_now`] decides synchronously whatever it can on the shard where the check
//! arrived; a check that needs another shard, or must wait in a queue, becomes a
//! [`PendingCheck`], whose [`PendingCheck::decide`] finishes it. A `PendingCheck` is a drop
//! guard: however it ends before answering (dropped unanswered, or its future cancelled at
//! any await), every token it took goes back.

use super::scheduler::Queued;
use super::{Awaiting, MeshMsg, OwnedTake, Shard};
use crate::clock;
use futures::channel::oneshot;
use smallvec::{smallvec, SmallVec};
use std::rc::Rc;
use tollgate_policy::{
    BucketHash, ComponentKind, Decision, FlowError, FlowId, Labels, LimiterId, LimiterOutcome,
    OutcomeKind, Outcomes, Plan, PlannedTake, Refusal, Stage, Tokens,
};

/// The scheduler stages, in the order a check meets them.
const SCHEDULER_STAGES: [Stage; 2] = [Stage::ConcurrencyScheduler, Stage::QuotaScheduler];

/// Per-component outcomes of a check in progress, in policy order (None: not decided, or
/// never ran).
type Slots = SmallVec<[Option<LimiterOutcome>; 4]>;

/// The result of planning a check where it arrived.
pub enum Planned {
    /// Decided already (every component it met was owned here and answered at once).
    Decided(Decision),
    /// Needs another shard or waits in a queue: await [`PendingCheck::decide`].
    Pending(Box<PendingCheck>),
}

/// A check that could not be decided at once: owned, so it outlives the request buffer.
/// Dropping it (or the future of [`PendingCheck::decide`]) before it answers hands back
/// every token it took.
pub struct PendingCheck {
    shard: Rc<Shard>,
    /// The components, in policy order.
    takes: Vec<OwnedTake>,
    /// The shard that owns each component's bucket.
    owners: SmallVec<[usize; 4]>,
    /// What each component said so far.
    slots: Slots,
    /// The client's deadline (absolute, [`clock::now_ns`]); None: it brought none.
    deadline: Option<u64>,
    /// The immediate components have been taken (and all accepted).
    immediate_done: bool,
    /// A scheduler component (its index) queued on this shard when the check was planned.
    queued: Option<(usize, Queued)>,
    /// Answered: nothing to hand back on drop.
    answered: bool,
}

/// A token return: end a flow (concurrency components), or put tokens back in a bucket.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Return<'a> {
    pub(crate) limiter: LimiterId,
    pub(crate) key: Option<&'a str>,
    pub(crate) tokens: Tokens,
    pub(crate) flow: Option<FlowId>,
}

impl<'a> From<&'a OwnedTake> for Return<'a> {
    fn from(t: &'a OwnedTake) -> Return<'a> {
        Return {
            limiter: t.limiter,
            key: t.key.as_deref(),
            tokens: t.tokens,
            flow: t.flow,
        }
    }
}

/// A planned or owned take, for code that serves both.
pub(crate) trait TakeParts {
    fn limiter(&self) -> LimiterId;
    fn key(&self) -> Option<&str>;
    fn tokens(&self) -> Tokens;
    fn to_owned_take(&self) -> OwnedTake;
}

impl TakeParts for PlannedTake<'_> {
    fn limiter(&self) -> LimiterId {
        self.limiter
    }
    fn key(&self) -> Option<&str> {
        self.key
    }
    fn tokens(&self) -> Tokens {
        self.tokens
    }
    fn to_owned_take(&self) -> OwnedTake {
        OwnedTake::from_planned(self)
    }
}

impl TakeParts for OwnedTake {
    fn limiter(&self) -> LimiterId {
        self.limiter
    }
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    fn tokens(&self) -> Tokens {
        self.tokens
    }
    fn to_owned_take(&self) -> OwnedTake {
        self.clone()
    }
}

impl Shard {
    /// The first pass over checks decided together (a batch, or a run of pipelined `CHECK`
    /// frames): the buckets a planned check will take from on this shard (rate limiters
    /// whose key this shard owns), their [`BucketHash`]es added to `out` for
    /// [`Shard::prefetch_buckets`]. Decides nothing, records nothing.
    ///
    /// Returns whether this shard owns every take of the plan: then the check may be decided
    /// by [`Shard::decide_owned_here`], which does not hash each key for its owner again.
    pub fn planned_bucket_hashes(
        &self,
        plan: &[PlannedTake<'_>],
        out: &mut Vec<BucketHash>,
    ) -> bool {
        let state = self.state.borrow();
        let mut owned_here = true;
        for take in plan {
            if let Some(key) = take.key {
                if self.node.owner_of(key) != self.id {
                    owned_here = false;
                } else if take.kind == ComponentKind::RateLimiter {
                    out.push(state.store().bucket_hash(take.limiter, key));
                }
            }
        }
        owned_here
    }

    /// Starts loading the buckets at `hashes` into the cache (see
    /// [`tollgate_policy::BucketStore::bucket_hash`] for why in a loop of its own).
    pub fn prefetch_buckets(&self, hashes: &[BucketHash]) {
        self.state.borrow().store().prefetch_batch(hashes);
    }

    /// Plans a check where it arrived and decides as much as it can at once (see the
    /// module docs of [`crate::shard`]). `deadline_ns` is the client's absolute deadline
    /// (`Some(now_ns)`: decide at once; `None`: the client brought none).
    pub fn decide_now<L: Labels + ?Sized>(
        self: &Rc<Self>,
        control_point: &str,
        labels: &L,
        tokens: Option<Tokens>,
        deadline_ns: Option<u64>,
        now_ns: u64,
    ) -> Result<Planned, FlowError> {
        let mut plan = Plan::new();
        self.plan_check(&self.engine(), control_point, labels, tokens, &mut plan)?;
        Ok(self.decide_planned(&plan, deadline_ns, now_ns))
    }

    /// Plans a check with `engine` (the shard's, as of now) into `plan` (emptied first); a
    /// check that cannot be planned is counted in the metrics and its error returned.
    pub fn plan_check<'a, L: Labels + ?Sized>(
        &self,
        engine: &tollgate_policy::Engine,
        control_point: &str,
        labels: &'a L,
        tokens: Option<Tokens>,
        plan: &mut Plan<'a>,
    ) -> Result<(), FlowError> {
        engine
            .plan_into(control_point, labels, tokens, plan)
            .inspect_err(|e| self.metrics().flow_error(engine, e))
    }

    /// [`Shard::decide_now`] of a check already planned ([`Shard::plan_check`], with no
    /// await between the two: a reload could otherwise have replaced the engine).
    pub fn decide_planned(
        self: &Rc<Self>,
        plan: &[PlannedTake<'_>],
        deadline_ns: Option<u64>,
        now_ns: u64,
    ) -> Planned {
        let owners: SmallVec<[usize; 4]> = plan
            .iter()
            .map(|take| take.key.map_or(self.id, |key| self.node.owner_of(key)))
            .collect();
        if owners.iter().any(|&owner| owner != self.id) {
            return Planned::Pending(Box::new(PendingCheck {
                shard: self.clone(),
                takes: plan.iter().map(OwnedTake::from_planned).collect(),
                slots: smallvec![None; plan.len()],
                owners,
                deadline: deadline_ns,
                immediate_done: false,
                queued: None,
                answered: false,
            }));
        }
        self.decide_owned_here(plan, deadline_ns, now_ns)
    }

    /// [`Shard::decide_planned`] of a plan whose every take this shard owns (the caller
    /// knows: [`Shard::planned_bucket_hashes`] said so). Why apart: finding a key's owner
    /// hashes the key, which the first pass over a run of checks has done already.
    pub fn decide_owned_here(
        self: &Rc<Self>,
        plan: &[PlannedTake<'_>],
        deadline_ns: Option<u64>,
        now_ns: u64,
    ) -> Planned {
        let schedulers = plan.iter().any(|take| take.stage() != Stage::Immediate);
        if !schedulers {
            // The fast path: one group, taken (or refused and handed back) at once.
            let outcomes = self.take_here(plan, now_ns);
            self.metrics().decided(plan, &outcomes, now_ns);
            return Planned::Decided(Decision::from_outcomes(outcomes));
        }
        let owners: SmallVec<[usize; 4]> = smallvec![self.id; plan.len()];
        let mut slots: Slots = smallvec![None; plan.len()];
        let immediate: SmallVec<[PlannedTake<'_>; 4]> = plan
            .iter()
            .filter(|t| t.stage() == Stage::Immediate)
            .copied()
            .collect();
        if !immediate.is_empty() {
            let mut taken = self.take_here(&immediate, now_ns).into_iter();
            for (slot, t) in slots.iter_mut().zip(plan) {
                if t.stage() == Stage::Immediate {
                    *slot = taken.next();
                }
            }
            if refused(&slots) {
                // take_group already handed the group's tokens back.
                return self.decided_here(plan, &slots, now_ns);
            }
        }
        for stage in SCHEDULER_STAGES {
            for i in 0..plan.len() {
                if plan[i].stage() != stage {
                    continue;
                }
                match self.offer_local(&plan[i], deadline_ns, now_ns) {
                    Ok(outcome) => {
                        slots[i] = Some(outcome);
                        if outcome.kind == OutcomeKind::Rejected {
                            self.return_accepted(plan, &owners, &mut slots);
                            return self.decided_here(plan, &slots, now_ns);
                        }
                    }
                    Err(queued) => {
                        return Planned::Pending(Box::new(PendingCheck {
                            shard: self.clone(),
                            takes: plan.iter().map(OwnedTake::from_planned).collect(),
                            owners,
                            slots,
                            deadline: deadline_ns,
                            immediate_done: true,
                            queued: Some((i, queued)),
                            answered: false,
                        }));
                    }
                }
            }
        }
        self.decided_here(plan, &slots, now_ns)
    }

    /// A check decided where it arrived, from its components' outcomes: recorded, answered.
    fn decided_here(
        &self,
        plan: &[PlannedTake<'_>],
        slots: &[Option<LimiterOutcome>],
        now_ns: u64,
    ) -> Planned {
        let decision = decision(slots);
        self.metrics().decided(plan, &decision.limiters, now_ns);
        Planned::Decided(decision)
    }

    /// Decides a check: [`Shard::decide_now`], then [`PendingCheck::decide`] if needed.
    pub async fn decide<L: Labels + ?Sized>(
        self: &Rc<Self>,
        control_point: &str,
        labels: &L,
        tokens: Option<Tokens>,
        deadline_ns: Option<u64>,
    ) -> Result<Decision, FlowError> {
        match self.decide_now(control_point, labels, tokens, deadline_ns, clock::now_ns())? {
            Planned::Decided(d) => Ok(d),
            Planned::Pending(p) => Ok(p.decide().await),
        }
    }

    /// Takes a group of immediate components owned here, at once (see
    /// [`tollgate_policy::ShardState::take_group`]).
    pub(crate) fn take_here(&self, takes: &[PlannedTake<'_>], now_ns: u64) -> Outcomes {
        let outcomes = self
            .state
            .borrow_mut()
            .take_group(&self.engine(), takes, now_ns);
        if outcomes.iter().any(|o| o.flow.is_some()) {
            // A flow in flight expires: the scheduler must wake for it.
            self.wake_if_sooner();
        }
        outcomes
    }

    /// Hands back every accepted component of a check that will not run: marks each
    /// `Returned` and returns its tokens (or ends its flow) on the shard that owns it.
    pub(crate) fn return_accepted<T: TakeParts>(
        &self,
        takes: &[T],
        owners: &[usize],
        slots: &mut [Option<LimiterOutcome>],
    ) {
        let engine = self.engine();
        let engine: &tollgate_policy::Engine = &engine;
        let mut local: SmallVec<[Return<'_>; 4]> = SmallVec::new();
        let mut remote: SmallVec<[(usize, Vec<OwnedTake>); 2]> = SmallVec::new();
        for ((slot, t), &owner) in slots.iter_mut().zip(takes).zip(owners) {
            let (Some(o), Some(key)) = (slot.as_mut(), t.key()) else {
                continue;
            };
            if o.kind != OutcomeKind::Accepted {
                continue;
            }
            // The limiter may be gone if a reload reached this shard while the check hopped.
            if let Some(spec) = engine.get_limiter(t.limiter()) {
                o.mark_returned(spec.params_for(key).capacity);
            }
            if owner == self.id {
                local.push(Return {
                    limiter: t.limiter(),
                    key: Some(key),
                    tokens: t.tokens(),
                    flow: o.flow,
                });
            } else {
                let back = OwnedTake {
                    flow: o.flow,
                    ..t.to_owned_take()
                };
                match remote.iter_mut().find(|(d, _)| *d == owner) {
                    Some((_, list)) => list.push(back),
                    None => remote.push((owner, vec![back])),
                }
            }
        }
        self.apply_give_back(local);
        for (owner, takes) in remote {
            self.give_back(owner, takes);
        }
    }

    /// Hands `takes` back to the buckets of `owner` (this shard or another).
    pub(crate) fn give_back(&self, owner: usize, takes: Vec<OwnedTake>) {
        if takes.is_empty() {
            return;
        }
        if owner == self.id {
            self.apply_give_back(takes.iter().map(Into::into));
        } else {
            self.send(owner, MeshMsg::GiveBack { takes });
        }
    }

    /// Returns tokens to buckets this shard owns: the one place tokens go back, whether a
    /// later component refused the flow here or on another shard, or its check is gone.
    /// A concurrency component's tokens go back by ending the flow that holds them.
    pub(crate) fn apply_give_back<'a>(&self, returns: impl IntoIterator<Item = Return<'a>>) {
        let engine = self.engine();
        let engine: &tollgate_policy::Engine = &engine;
        let now = clock::now_ns();
        let mut any = false;
        {
            let mut state = self.state.borrow_mut();
            for r in returns {
                match (r.flow, r.key) {
                    (Some(flow), _) => {
                        state.end_flow(engine, flow, now);
                    }
                    (None, Some(key)) => {
                        state.give_back(engine, r.limiter, key, r.tokens, None, now)
                    }
                    (None, None) => continue,
                }
                any = true;
            }
        }
        if any {
            // Tokens came back: a queue of these buckets may admit its head.
            self.wake_if_sooner();
        }
    }

    /// Takes a group of immediate components on another shard.
    fn take_remote(&self, owner: usize, takes: Vec<OwnedTake>) -> oneshot::Receiver<Outcomes> {
        let (reply, answer) = oneshot::channel();
        let ticket = self.ticket();
        self.pending
            .borrow_mut()
            .insert(ticket, Awaiting::Taken(reply));
        self.send(owner, MeshMsg::Take { ticket, takes });
        answer
    }
}

impl PendingCheck {
    /// Finishes the check: takes the immediate components on their owners, then offers
    /// each scheduler component to its owner in stage order, waiting as long as it queues;
    /// hands back what was taken when a component refuses.
    pub async fn decide(mut self: Box<Self>) -> Decision {
        let shard = self.shard.clone();
        if !self.immediate_done {
            self.take_immediates().await;
            self.immediate_done = true;
            if refused(&self.slots) {
                shard.return_accepted(&self.takes, &self.owners, &mut self.slots);
                return self.answer();
            }
        }
        if let Some((i, mut queued)) = self.queued.take() {
            let outcome = queued
                .outcome()
                .await
                .unwrap_or_else(|| unavailable(&self.takes[i]));
            self.slots[i] = Some(outcome);
            if outcome.kind == OutcomeKind::Rejected {
                shard.return_accepted(&self.takes, &self.owners, &mut self.slots);
                return self.answer();
            }
        }
        for stage in SCHEDULER_STAGES {
            for i in 0..self.takes.len() {
                if self.takes[i].stage() != stage || self.slots[i].is_some() {
                    continue;
                }
                let outcome = if self.owners[i] == shard.id {
                    let offered =
                        shard.offer_local(&self.takes[i].planned(), self.deadline, clock::now_ns());
                    match offered {
                        Ok(outcome) => outcome,
                        Err(mut queued) => queued
                            .outcome()
                            .await
                            .unwrap_or_else(|| unavailable(&self.takes[i])),
                    }
                } else {
                    shard
                        .offer_remote(self.owners[i], self.takes[i].clone(), self.deadline)
                        .await
                };
                self.slots[i] = Some(outcome);
                if outcome.kind == OutcomeKind::Rejected {
                    shard.return_accepted(&self.takes, &self.owners, &mut self.slots);
                    return self.answer();
                }
            }
        }
        self.answer()
    }

    /// Takes every immediate component on its owner: remote groups first (so they run
    /// together), then the local one, then awaits the remote answers.
    async fn take_immediates(&mut self) {
        let shard = self.shard.clone();
        let mut groups: SmallVec<[(usize, SmallVec<[usize; 4]>); 2]> = SmallVec::new();
        for (i, t) in self.takes.iter().enumerate() {
            if t.stage() != Stage::Immediate {
                continue;
            }
            let owner = self.owners[i];
            match groups.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, members)) => members.push(i),
                None => groups.push((owner, smallvec![i])),
            }
        }
        let mut waiting: SmallVec<[(usize, oneshot::Receiver<Outcomes>); 2]> = SmallVec::new();
        for (g, (owner, members)) in groups.iter().enumerate() {
            if *owner != shard.id {
                let takes = members.iter().map(|&i| self.takes[i].clone()).collect();
                waiting.push((g, shard.take_remote(*owner, takes)));
            }
        }
        if let Some((_, members)) = groups.iter().find(|(o, _)| *o == shard.id) {
            let planned: SmallVec<[PlannedTake<'_>; 4]> =
                members.iter().map(|&i| self.takes[i].planned()).collect();
            let taken = shard.take_here(&planned, clock::now_ns());
            for (&i, o) in members.iter().zip(taken) {
                self.slots[i] = Some(o);
            }
        }
        for (g, answer) in waiting {
            // No answer: the owner shard is gone (shutdown). Admitting without the owner's
            // word could exceed the limit, so its components refuse.
            let outcomes = answer.await.unwrap_or_default();
            for (k, &i) in groups[g].1.iter().enumerate() {
                self.slots[i] = Some(
                    outcomes
                        .get(k)
                        .copied()
                        .unwrap_or_else(|| unavailable(&self.takes[i])),
                );
            }
        }
    }

    /// The decision, in policy order; the check is answered, so nothing goes back on drop.
    fn answer(&mut self) -> Decision {
        self.answered = true;
        let decision = decision(&self.slots);
        let hopped = self.owners.iter().any(|&owner| owner != self.shard.id);
        self.shard
            .metrics()
            .decided_later(&self.takes, &decision.limiters, hopped);
        decision
    }
}

impl Drop for PendingCheck {
    fn drop(&mut self) {
        if !self.answered {
            // Refused OVERLOADED, or its caller went away: what it took goes back. A flow
            // still queued here leaves its queue as `queued` drops; one queued on another
            // shard is handed back when that queue answers (its receiver is gone).
            self.shard
                .return_accepted(&self.takes, &self.owners, &mut self.slots);
        }
    }
}

/// Whether some component refused.
fn refused(slots: &[Option<LimiterOutcome>]) -> bool {
    slots
        .iter()
        .flatten()
        .any(|o| o.kind == OutcomeKind::Rejected)
}

/// The decision of the components that ran, in policy order.
fn decision(slots: &[Option<LimiterOutcome>]) -> Decision {
    Decision::from_outcomes(slots.iter().flatten().copied().collect())
}

/// An outcome for a component whose owner never answered (it shut down): a refusal, since
/// admitting without the owner's word could exceed the limit.
pub(crate) fn unavailable(t: &OwnedTake) -> LimiterOutcome {
    match t.key {
        Some(_) => LimiterOutcome::refused(t.limiter, t.tokens.get(), Refusal::ShuttingDown),
        None => LimiterOutcome::key_not_found(t.limiter, t.tokens.get()),
    }
}
