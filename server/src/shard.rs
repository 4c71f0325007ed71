//! A shard: one pinned glommio executor that owns a slice of the buckets, with no locks.
//!
//! A bucket lives on `node.owner_of(key)`. A check is planned on the shard where it
//! arrives; if every bucket it needs is local (always, when the client is shard-aware)
//! the decision is made inline ([`Shard::decide_now`]). Otherwise the shard forwards the
//! takes to their owners over the glommio channel mesh and awaits the outcomes
//! ([`Shard::decide_forwarded`]); when any limiter rejects, tokens taken elsewhere are
//! handed back, as on a single shard.
//!
//! Mesh traffic is batched: each destination has an outbox that a forwarder task drains
//! into one mesh message, so a burst of hops costs one channel send and one wakeup.
//! Replies never block the receive loop (they go through the outbox too), so two shards
//! sending to each other cannot deadlock on full channels.

use crate::clock;
use crate::metrics::ShardMetrics;
use crate::node::Node;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use tollgate_cluster::{Op, Replica};
use tollgate_policy::{
    BucketStore, ComponentKind, Decision, Engine, FlowError, FlowId, Labels, LimiterId,
    LimiterOutcome, OutcomeKind, Outcomes, PlannedTake, Refusal, ShardLimits, ShardState, Tokens,
};

/// Messages between shards of one node. A mesh message is a `Vec` of these (a batch).
#[derive(Debug)]
pub enum MeshMsg {
    /// Take these buckets (all owned by the receiver) and answer `Taken { ticket }`.
    Take {
        /// Matches the answer to the waiting request on the sender.
        ticket: u32,
        /// The buckets, in the flow's limiter order.
        takes: Vec<OwnedTake>,
    },
    /// Hand these tokens back (another shard's limiter rejected the flow).
    GiveBack {
        /// Buckets and the tokens to return.
        takes: Vec<OwnedTake>,
    },
    /// The outcomes of a `Take`, in its order.
    Taken {
        /// From the `Take`.
        ticket: u32,
        /// One per take.
        outcomes: Outcomes,
    },
}

/// A [`PlannedTake`] with an owned key, to cross threads.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTake {
    /// Which limiter.
    pub limiter: LimiterId,
    /// Bucket key; None = the flow lacks the limit label.
    pub key: Option<String>,
    /// Tokens.
    pub tokens: Tokens,
    /// The limiter's kind.
    pub kind: ComponentKind,
    /// When handing back a concurrency component's tokens: the flow that holds them.
    pub flow: Option<FlowId>,
}

impl OwnedTake {
    fn planned(&self) -> PlannedTake<'_> {
        PlannedTake {
            limiter: self.limiter,
            kind: self.kind,
            key: self.key.as_deref(),
            tokens: self.tokens,
            workload: None,
        }
    }
}

/// A plan that needs other shards: owned, so it can outlive the read buffer.
#[derive(Debug)]
pub struct ForwardPlan {
    takes: Vec<OwnedTake>,
    owners: SmallVec<[usize; 4]>,
}

/// The result of planning a check where it arrived.
pub enum Planned {
    /// Every bucket is local: decided already.
    Decided(Decision),
    /// Some bucket lives on another shard: await [`Shard::decide_forwarded`].
    Forward(ForwardPlan),
}

/// Mesh batches per peer channel before a sender waits. Each batch is already many
/// messages, so this bounds memory, not throughput.
pub const MESH_CHANNEL_SIZE: usize = 1024;

/// Messages one mesh batch carries at most, so one batch cannot monopolise a receiver.
const MAX_MESH_BATCH: usize = 4096;

/// A destination's outbox, drained by its forwarder task.
struct Outbox {
    queue: RefCell<Vec<MeshMsg>>,
    wake: LocalSender<()>,
}

/// One shard's state. Lives in an `Rc` on its executor; never crosses threads.
pub struct Shard {
    /// This shard's index (its mesh peer id).
    pub id: usize,
    /// Node-wide facts.
    pub node: Arc<Node>,
    /// The buckets this shard owns.
    state: RefCell<ShardState>,
    /// Per destination shard (None for self).
    outboxes: Vec<Option<Outbox>>,
    /// Tickets of forwarded takes awaiting their `Taken`.
    pending: RefCell<HashMap<u32, oneshot::Sender<Outcomes>>>,
    next_ticket: Cell<u32>,
    /// What this shard records for `/metrics` and the admin API.
    metrics: ShardMetrics,
}

impl Shard {
    /// Creates the shard and starts its mesh tasks (forwarders and receivers).
    pub fn start(
        id: usize,
        node: Arc<Node>,
        senders: Senders<Vec<MeshMsg>>,
        mut receivers: Receivers<Vec<MeshMsg>>,
    ) -> Rc<Shard> {
        let senders = Rc::new(senders);
        let mut outboxes = Vec::with_capacity(node.nr_shards);
        let mut wake_receivers = Vec::new();
        for dest in 0..node.nr_shards {
            if dest == id {
                outboxes.push(None);
                continue;
            }
            let (wake, woken) = local_channel::new_bounded(1);
            outboxes.push(Some(Outbox {
                queue: RefCell::new(Vec::new()),
                wake,
            }));
            wake_receivers.push((dest, woken));
        }
        let metrics = node.metrics.shard_recorder(id);
        let shard = Rc::new(Shard {
            id,
            node,
            state: RefCell::new(ShardState::new(
                id as u16,
                ShardLimits::default(),
                flow_seed(id),
            )),
            outboxes,
            pending: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            metrics,
        });
        for (dest, woken) in wake_receivers {
            glommio::spawn_local(forward_loop(shard.clone(), senders.clone(), dest, woken))
                .detach();
        }
        for (from, stream) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(batch) = stream.recv().await {
                    for msg in batch {
                        shard.handle_mesh(from, msg);
                    }
                }
            })
            .detach();
        }
        shard
    }

    /// The compiled policies.
    pub fn engine(&self) -> &Engine {
        &self.node.engine
    }

    /// This shard's recorder (metrics hooks).
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Runs `f` with this shard's state, read-only (admin reads: gauges, one bucket).
    pub fn with_state<R>(&self, f: impl FnOnce(&ShardState, &Engine) -> R) -> R {
        f(&self.state.borrow(), &self.node.engine)
    }

    /// Live buckets on this shard.
    pub fn bucket_count(&self) -> usize {
        self.state.borrow().store().len()
    }

    /// Plans a flow and, when every bucket is local, decides it at once.
    pub fn decide_now<L: Labels + ?Sized>(
        &self,
        control_point: &str,
        labels: &L,
        tokens: Option<Tokens>,
        now_ns: u64,
    ) -> Result<Planned, FlowError> {
        let engine = &*self.node.engine;
        let plan = engine
            .plan(control_point, labels, tokens)
            .inspect_err(|e| self.metrics.flow_error(engine, e))?;
        let mut owners: SmallVec<[usize; 4]> = SmallVec::new();
        let mut all_local = true;
        for take in &plan {
            let owner = match take.key {
                Some(key) => self.node.owner_of(key),
                None => self.id,
            };
            all_local &= owner == self.id;
            owners.push(owner);
        }
        if all_local {
            let outcomes = self.state.borrow_mut().take_group(engine, &plan, now_ns);
            self.metrics.decided(&plan, &outcomes, now_ns);
            return Ok(Planned::Decided(Decision::from_outcomes(outcomes)));
        }
        let takes = plan
            .iter()
            .map(|t| OwnedTake {
                limiter: t.limiter,
                key: t.key.map(str::to_owned),
                tokens: t.tokens,
                kind: t.kind,
                flow: None,
            })
            .collect();
        Ok(Planned::Forward(ForwardPlan { takes, owners }))
    }

    /// Decides a plan whose buckets live on several shards: each owner takes its group;
    /// if any limiter rejects, every group that accepted gets its tokens back.
    pub async fn decide_forwarded(self: &Rc<Self>, plan: ForwardPlan) -> Decision {
        let engine = self.node.engine.clone();
        let mut groups: SmallVec<[(usize, SmallVec<[usize; 4]>); 2]> = SmallVec::new();
        for (i, &owner) in plan.owners.iter().enumerate() {
            match groups.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, members)) => members.push(i),
                None => groups.push((owner, SmallVec::from_slice(&[i]))),
            }
        }
        // Send every remote group first so they run concurrently, then do the local one.
        let mut waiting: SmallVec<[(usize, oneshot::Receiver<Outcomes>); 2]> = SmallVec::new();
        let mut outcomes: Vec<Option<tollgate_policy::LimiterOutcome>> =
            vec![None; plan.takes.len()];
        for (g, (owner, members)) in groups.iter().enumerate() {
            if *owner == self.id {
                continue;
            }
            let takes = members.iter().map(|&i| plan.takes[i].clone()).collect();
            let (tx, rx) = oneshot::channel();
            let ticket = self.next_ticket.get();
            self.next_ticket.set(ticket.wrapping_add(1));
            self.pending.borrow_mut().insert(ticket, tx);
            self.send(*owner, MeshMsg::Take { ticket, takes });
            waiting.push((g, rx));
        }
        if let Some((_, members)) = groups.iter().find(|(o, _)| *o == self.id) {
            let takes: SmallVec<[PlannedTake<'_>; 4]> =
                members.iter().map(|&i| plan.takes[i].planned()).collect();
            let local = self
                .state
                .borrow_mut()
                .take_group(&engine, &takes, clock::now_ns());
            for (&i, o) in members.iter().zip(local) {
                outcomes[i] = Some(o);
            }
        }
        for (g, rx) in waiting {
            let members = &groups[g].1;
            // A dropped sender means the owner shard is gone (shutdown): count it as a
            // rejection-free no-op would over-admit, so the limiter rejects instead.
            let remote = rx.await.unwrap_or_default();
            for (k, &i) in members.iter().enumerate() {
                outcomes[i] = Some(
                    remote
                        .get(k)
                        .copied()
                        .unwrap_or_else(|| unavailable(&plan.takes[i])),
                );
            }
        }
        let mut merged: Outcomes = outcomes
            .into_iter()
            .zip(&plan.takes)
            .map(|(o, t)| o.unwrap_or_else(|| unavailable(t)))
            .collect();
        if Decision::needs_return(&merged) {
            self.return_accepted(&engine, &plan, &groups, &mut merged);
        }
        self.metrics.decided_forwarded(&plan.takes, &merged);
        Decision::from_outcomes(merged)
    }

    /// After a rejection elsewhere, hands back every still-accepted take to its owner.
    fn return_accepted(
        &self,
        engine: &Engine,
        plan: &ForwardPlan,
        groups: &[(usize, SmallVec<[usize; 4]>)],
        merged: &mut Outcomes,
    ) {
        for (owner, members) in groups {
            let mut back = Vec::new();
            for &i in members {
                let (o, t) = (&mut merged[i], &plan.takes[i]);
                if o.kind != OutcomeKind::Accepted {
                    continue;
                }
                if let Some(key) = &t.key {
                    o.mark_returned(engine.limiter(t.limiter).params_for(key).capacity);
                    back.push(OwnedTake {
                        flow: o.flow,
                        ..t.clone()
                    });
                }
            }
            if !back.is_empty() {
                self.give_back(*owner, back);
            }
        }
    }

    /// Hands `takes` back to the buckets of `owner` (this shard or another): the one path
    /// by which a multi-limiter check returns tokens outside its own group.
    fn give_back(&self, owner: usize, takes: Vec<OwnedTake>) {
        if owner == self.id {
            self.apply_give_back(takes);
        } else {
            self.send(owner, MeshMsg::GiveBack { takes });
        }
    }

    /// Returns tokens to buckets this shard owns.
    fn apply_give_back(&self, takes: Vec<OwnedTake>) {
        let engine = &*self.node.engine;
        let now = clock::now_ns();
        let mut state = self.state.borrow_mut();
        for t in takes {
            if let Some(key) = &t.key {
                state.give_back(engine, t.limiter, key, t.tokens, t.flow, now);
            }
        }
    }

    /// Queues a message for another shard and wakes its forwarder.
    pub fn send(&self, dest: usize, msg: MeshMsg) {
        let Some(Some(outbox)) = self.outboxes.get(dest) else {
            tracing::error!(
                shard = self.id,
                dest,
                "mesh message to an unknown shard dropped"
            );
            return;
        };
        outbox.queue.borrow_mut().push(msg);
        // Full means a wakeup is already pending: the forwarder will see this message.
        let _ = outbox.wake.try_send(());
    }

    fn handle_mesh(&self, from: usize, msg: MeshMsg) {
        let engine = &*self.node.engine;
        let now = clock::now_ns();
        match msg {
            MeshMsg::Take { ticket, takes } => {
                let planned: SmallVec<[PlannedTake<'_>; 4]> =
                    takes.iter().map(OwnedTake::planned).collect();
                let outcomes = self.state.borrow_mut().take_group(engine, &planned, now);
                self.send(from, MeshMsg::Taken { ticket, outcomes });
            }
            MeshMsg::GiveBack { takes } => self.apply_give_back(takes),
            MeshMsg::Taken { ticket, outcomes } => {
                if let Some(tx) = self.pending.borrow_mut().remove(&ticket) {
                    let _ = tx.send(outcomes);
                }
            }
        }
    }

    /// Applies a peer node's entries to buckets this shard owns (the gossip thread routed
    /// them here): debits their consumption or lowers them to their levels.
    pub fn apply_replica(&self, op: Op, entries: Vec<Replica>) {
        let engine = &*self.node.engine;
        let now = clock::now_ns();
        let mut state = self.state.borrow_mut();
        for e in entries {
            debug_assert_eq!(
                self.node.owner_of(&e.key),
                self.id,
                "replica routed to a non-owner"
            );
            // The gossip thread resolved the limiter with this same engine; the check keeps
            // an id from another engine (a future reload) from reaching `Engine::limiter`.
            if engine.get_limiter(e.limiter).is_none() {
                continue;
            }
            match op {
                Op::Debit => state.debit(engine, e.limiter, &e.key, e.value, now),
                Op::Lower => state
                    .store_mut()
                    .lower_to(engine, e.limiter, &e.key, e.value, now),
            }
        }
    }

    /// Runs `f` with this shard's store (replication drains, snapshots, eviction).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut BucketStore, &Engine) -> R) -> R {
        f(self.state.borrow_mut().store_mut(), &self.node.engine)
    }
}

/// An outcome for a take whose owner never answered (it shut down): a rejection, since
/// admitting without the owner's word could exceed the limit.
fn unavailable(t: &OwnedTake) -> tollgate_policy::LimiterOutcome {
    match t.key {
        Some(_) => LimiterOutcome::refused(t.limiter, t.tokens.get(), Refusal::ShuttingDown),
        None => LimiterOutcome::key_not_found(t.limiter, t.tokens.get()),
    }
}

/// Where a shard's flow ids start: random enough per process that ids a previous process
/// handed out are unknown here (see `tollgate_policy::flow`).
fn flow_seed(shard: usize) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // splitmix64 of the time, the pid and the shard: distinct per shard and per process.
    let mut z = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ (shard as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Drains one destination's outbox into mesh batches.
async fn forward_loop(
    shard: Rc<Shard>,
    senders: Rc<Senders<Vec<MeshMsg>>>,
    dest: usize,
    woken: LocalReceiver<()>,
) {
    while woken.recv().await.is_some() {
        loop {
            let batch: Vec<MeshMsg> = {
                let Some(Some(outbox)) = shard.outboxes.get(dest) else {
                    return;
                };
                let mut queue = outbox.queue.borrow_mut();
                if queue.is_empty() {
                    break;
                }
                if queue.len() <= MAX_MESH_BATCH {
                    std::mem::take(&mut *queue)
                } else {
                    queue.drain(..MAX_MESH_BATCH).collect()
                }
            };
            if senders.send_to(dest, batch).await.is_err() {
                tracing::debug!(shard = shard.id, dest, "mesh peer closed; dropping batch");
                return;
            }
        }
    }
}
