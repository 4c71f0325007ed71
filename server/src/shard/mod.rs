//! A shard: one pinned glommio executor that owns a slice of the buckets, the flows in
//! flight on them and the queues of flows waiting for them, with no locks.
//!
//! Everything a shard owns is one [`ShardState`] (tollgate-policy's pure state machine); this
//! module is its IO shell: it routes work to the shard that owns it, makes waiting real
//! (timers, channels, replies), and hands tokens back when a check cannot finish.
//!
//! # The API other modules use
//!
//! Checks (the binary connection, the gRPC bridge and CHECK_BATCH all take this path):
//! - [`Shard::decide_now`]`(control point, labels, tokens, deadline, now)` plans the check
//!   where it arrives and decides as much as it can at once. `deadline` is the client's
//!   absolute deadline on [`crate::clock::now_ns`]'s clock (`None`: the client brought none,
//!   so a scheduler lets it wait at most `server.max_queue_wait`; `Some(now)`: decide at
//!   once, never queue). It returns [`Planned::Decided`] (every component owned here and
//!   nothing had to wait: always, for a check of immediate components only with a
//!   shard-aware client — no allocation, no task) or [`Planned::Pending`].
//! - [`PendingCheck::decide`]`().await` finishes a pending check: hops to other shards,
//!   waits in schedulers, and gives tokens back when a later stage refuses. Dropping a
//!   [`PendingCheck`] (or the future of `decide`, e.g. because the caller went away) at any
//!   point hands back every token it took; a flow it left waiting in a queue is handed back
//!   as soon as the queue admits it. So a caller can spawn it, race it against a
//!   cancellation, or refuse it (OVERLOADED) without leaking capacity.
//! - [`Shard::decide`] is both steps in one `async` call.
//!
//! Flows in flight:
//! - [`Shard::end_flows`]`(ids).await` ends flows by their [`FlowId`]s, each on the shard
//!   whose ledger holds it ([`FlowId::shard`]), and says for each whether it was in flight
//!   (`false`: unknown or already ended, which is harmless). [`Shard::end_flow_here`] is the
//!   synchronous form for ids this shard owns.
//!
//! Cluster and lifecycle (called by the runtime and the gossip bridge):
//! [`Shard::apply_replica`], [`Shard::peer_gone`], [`Shard::stop_waiting`],
//! [`Shard::end_all_flows`].
//!
//! # The path of a check
//!
//! A check meets its components in Aperture's stage order ([`Stage`]): first the immediate
//! ones (rate and concurrency limiters), grouped per owning shard and taken at once
//! (locally with [`ShardState::take_group`], or by a `Take` over the mesh); if one
//! refuses, the others' tokens go back and the check is answered. Then each scheduler
//! component, concurrency schedulers before quota schedulers, is *offered* to its owner
//! ([`ShardState::offer`] locally, or an [`MeshMsg::Offer`] carrying the owned take, its
//! workload and the client's deadline), which answers at once or when the flow leaves its
//! queue ([`MeshMsg::Offered`]). If it refuses, everything taken so far goes back —
//! concurrency tokens by ending their flow, others to their buckets — and the check is
//! answered. The decision lists the outcome of every component that ran, in policy order;
//! components of a stage after a refusal never ran and are not listed (as Aperture's
//! engine does).
//!
//! # Waiting
//!
//! A flow queued on this shard is a *waiter*: its ticket (unique on this shard) maps to a
//! oneshot of a check task on this shard, or to the shard that offered it. A scheduler task
//! ([`scheduler`]) sleeps until [`ShardState::next_wake`] or until something wakes it (a
//! new waiter, a flow's end, tokens handed back, a peer's returned tokens), polls, and
//! delivers each answer. A waiter whose check is gone (its receiver dropped: the connection
//! broke, the gRPC call was cancelled) gets its tokens handed back at once.
//!
//! Mesh traffic is batched: each destination has an outbox that a forwarder task drains
//! into one mesh message, so a burst of hops costs one channel send and one wakeup.
//! Replies never block the receive loop (they go through the outbox too), so two shards
//! sending to each other cannot deadlock on full channels.
//!
//! # Layout
//! - this file: [`Shard`], the mesh and its messages, flow ends, the cluster hooks.
//! - [`check`]: a check's orchestration ([`Planned`], [`PendingCheck`]) and the one
//!   give-back path.
//! - [`scheduler`]: waiters, offers, delivery of answers, the per-shard scheduler task.
//! - [`peer_holds`]: what other nodes' flows hold of this shard's concurrency buckets.

pub mod check;
pub mod peer_holds;
pub mod scheduler;

pub use check::{PendingCheck, Planned};

use crate::clock;
use crate::metrics::ShardMetrics;
use crate::node::Node;
use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use hashbrown::HashMap;
use peer_holds::PeerHolds;
use scheduler::Waiter;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use tollgate_cluster::{Op, Replica};
use tollgate_policy::{
    BucketStore, ComponentKind, Engine, FlowId, LimiterId, LimiterOutcome, OutcomeKind, Outcomes,
    PlannedTake, ShardState, Stage, StoreStats, Ticket, Tokens, WorkloadName, WorkloadPick,
};

/// Messages between shards of one node. A mesh message is a `Vec` of these (a batch).
#[derive(Debug)]
pub enum MeshMsg {
    /// Take these buckets now (all owned by the receiver, immediate components) and answer
    /// `Taken { ticket }`.
    Take {
        /// Matches the answer to the waiting request on the sender.
        ticket: u32,
        /// The buckets, in the flow's limiter order.
        takes: Vec<OwnedTake>,
    },
    /// The outcomes of a `Take`, in its order, with its takes (so a sender whose check is
    /// gone can hand accepted ones back).
    Taken {
        /// From the `Take`.
        ticket: u32,
        /// One per take.
        outcomes: Outcomes,
        /// The `Take`'s takes, returned.
        takes: Vec<OwnedTake>,
    },
    /// Hand these tokens back (a later component refused the flow, or its check is gone).
    GiveBack {
        /// Buckets and the tokens to return; a take with a flow ends that flow.
        takes: Vec<OwnedTake>,
    },
    /// Offer a flow to a scheduler component the receiver owns; answered by `Offered`, at
    /// once or when the flow leaves the queue (by its deadline at the latest).
    Offer {
        /// Matches the answer to the waiting request on the sender.
        ticket: u32,
        /// The scheduler component, key, tokens and workload.
        take: OwnedTake,
        /// The client's deadline (absolute, [`clock::now_ns`]); None: it brought none.
        deadline: Option<u64>,
    },
    /// The sender gave up its `Offer` of `ticket` before the answer (its check was refused
    /// OVERLOADED, or its client went away): the flow leaves the queue, and the offer is
    /// answered `Offered` (refused), which clears the sender's record of it.
    Withdraw {
        /// From the `Offer`.
        ticket: u32,
    },
    /// The scheduler's answer to an `Offer`, with its take.
    Offered {
        /// From the `Offer`.
        ticket: u32,
        /// What the scheduler decided.
        outcome: LimiterOutcome,
        /// The `Offer`'s take, returned.
        take: OwnedTake,
    },
    /// End these flows (the receiver's ledger holds them) and answer `FlowsEnded`.
    EndFlows {
        /// Matches the answer to the waiting request on the sender.
        ticket: u32,
        /// The flows.
        ids: Vec<FlowId>,
    },
    /// Whether each flow of an `EndFlows` was in flight, in its order.
    FlowsEnded {
        /// From the `EndFlows`.
        ticket: u32,
        /// One per id.
        ended: Vec<bool>,
    },
}

/// A [`PlannedTake`] with owned strings, to cross threads or outlive the request buffer.
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
    /// Schedulers: what the owner needs of the flow's workload to queue it.
    pub workload: Option<OwnedWorkload>,
}

/// The part of a [`WorkloadPick`] a scheduler's owner needs to queue a flow (its reported
/// name is re-picked from the labels where the decision is reported).
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedWorkload {
    /// The matched workload (None = default): its queue class.
    pub class: Option<u16>,
    /// Its priority (> 0).
    pub priority: f64,
    /// Its queue timeout, if the workload bounds it.
    pub queue_timeout_ns: Option<u64>,
    /// Its fairness key, if any.
    pub fairness: Option<Box<str>>,
}

impl OwnedTake {
    /// An owned copy of a planned take.
    pub fn from_planned(t: &PlannedTake<'_>) -> OwnedTake {
        OwnedTake {
            limiter: t.limiter,
            key: t.key.map(str::to_owned),
            tokens: t.tokens,
            kind: t.kind,
            flow: None,
            workload: t.workload.map(|w| OwnedWorkload {
                class: w.class,
                priority: w.priority,
                queue_timeout_ns: w.queue_timeout_ns,
                fairness: w.fairness.map(Into::into),
            }),
        }
    }

    /// The take as the policy crate plans it.
    pub fn planned(&self) -> PlannedTake<'_> {
        PlannedTake {
            limiter: self.limiter,
            kind: self.kind,
            key: self.key.as_deref(),
            tokens: self.tokens,
            workload: self.workload.as_ref().map(|w| WorkloadPick {
                name: WorkloadName::Default,
                class: w.class,
                priority: w.priority,
                workload_tokens: self.tokens.get(),
                queue_timeout_ns: w.queue_timeout_ns,
                fairness: w.fairness.as_deref(),
            }),
        }
    }

    /// When this take decides within its check.
    pub fn stage(&self) -> Stage {
        self.kind.stage()
    }
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

/// What a request this shard sent to another awaits.
enum Awaiting {
    /// A `Take`'s outcomes.
    Taken(oneshot::Sender<Outcomes>),
    /// An `Offer`'s outcome.
    Offered(oneshot::Sender<LimiterOutcome>),
    /// An `EndFlows`' answers.
    Ended(oneshot::Sender<Vec<bool>>),
}

/// One shard's state. Lives in an `Rc` on its executor; never crosses threads.
pub struct Shard {
    /// This shard's index (its mesh peer id).
    pub id: usize,
    /// Node-wide facts.
    pub node: Arc<Node>,
    /// The buckets, flows in flight and wait queues this shard owns.
    state: RefCell<ShardState>,
    /// Per destination shard (None for self).
    outboxes: Vec<Option<Outbox>>,
    /// Requests sent to other shards, awaiting their answer, by ticket.
    pending: RefCell<HashMap<u32, Awaiting>>,
    next_ticket: Cell<u32>,
    /// Flows queued in this shard's schedulers: who awaits each answer.
    waiters: RefCell<HashMap<Ticket, Waiter>>,
    /// The waiters of other shards' offers: (offering shard, its ticket) -> the wait's
    /// ticket here, so a `Withdraw` finds its flow.
    remote_waits: RefCell<HashMap<(usize, u32), Ticket>>,
    next_wait_ticket: Cell<Ticket>,
    /// Wakes the scheduler task (capacity 1: a pending wake covers any number of events).
    kick: LocalSender<()>,
    /// When the scheduler task's timer fires (`u64::MAX`: none; 0: it is running), so a
    /// new flow's expiry wakes it only when sooner.
    sleeping_until: Cell<u64>,
    /// What other nodes' flows hold of this shard's concurrency buckets.
    peer_holds: RefCell<PeerHolds>,
    /// The shard is stopping: flows no longer wait (they are refused `shutting_down`).
    stopping: Cell<bool>,
    /// What this shard records for `/metrics` and the admin API.
    metrics: ShardMetrics,
    /// The policies this shard decides with: its own handle on the node's engine, so a
    /// check never touches a cross-core reference count; a reload switches it between two
    /// messages ([`Shard::reload`]).
    engine: RefCell<ShardEngine>,
}

/// A shard's handle on the node's engine: cloned per use without atomics.
pub type ShardEngine = Rc<Arc<Engine>>;

impl Shard {
    /// Creates the shard and starts its tasks: mesh forwarders and receivers, and the
    /// scheduler.
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
        let limits = node.limits.shard;
        let (kick, kicked) = local_channel::new_bounded(1);
        let metrics = node.metrics.shard_recorder(id);
        let shard = Rc::new(Shard {
            id,
            state: RefCell::new(ShardState::new(id as u16, limits)),
            engine: RefCell::new(Rc::new(node.policies.load_full())),
            node,
            outboxes,
            pending: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            waiters: RefCell::new(HashMap::new()),
            remote_waits: RefCell::new(HashMap::new()),
            next_wait_ticket: Cell::new(0),
            kick,
            sleeping_until: Cell::new(0),
            peer_holds: RefCell::new(PeerHolds::new(limits.max_flows)),
            stopping: Cell::new(false),
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
        glommio::spawn_local(scheduler::run(shard.clone(), kicked)).detach();
        shard
    }

    /// The policies this shard decides with now. Hold it for one decision: a reload may
    /// switch the shard to new ones between two messages.
    pub fn engine(&self) -> ShardEngine {
        self.engine.borrow().clone()
    }

    /// Decides with `new` from now on (a reload): buckets of unchanged limiters carry on,
    /// concurrency counters keep their flows in flight counted, waiting queues are served
    /// again under the new definitions (a removed scheduler's waiters are refused
    /// `removed`). See `ShardState::reloaded`.
    pub fn reload(&self, new: Arc<Engine>) {
        let old = self.engine.replace(Rc::new(new));
        let new = self.engine();
        self.state
            .borrow_mut()
            .reloaded(&old, &new, clock::now_ns());
        self.wake_if_sooner();
    }

    /// This shard's recorder (metrics hooks).
    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Runs `f` with this shard's state, read-only (admin reads: gauges, one bucket).
    pub fn with_state<R>(&self, f: impl FnOnce(&ShardState, &Engine) -> R) -> R {
        let engine = self.engine();
        f(&self.state.borrow(), &engine)
    }

    /// Live buckets on this shard.
    pub fn bucket_count(&self) -> usize {
        self.state.borrow().store().len()
    }

    /// This shard's bucket counters (for metrics): live buckets, the cap, and evictions at
    /// the cap by kind (`evicted_not_full`: over-admissions), by the idle sweep, refusals.
    /// Counts since the shard started.
    pub fn bucket_stats(&self) -> StoreStats {
        self.state.borrow().store().stats()
    }

    /// Flows waiting in this shard's scheduler queues.
    pub fn waiting(&self) -> usize {
        self.state.borrow().waiting()
    }

    /// Flows holding concurrency tokens on this shard.
    pub fn in_flight(&self) -> usize {
        self.state.borrow().in_flight()
    }

    /// A fresh ticket for a request to another shard.
    fn ticket(&self) -> u32 {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket.wrapping_add(1));
        ticket
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
        match msg {
            MeshMsg::Take { ticket, takes } => {
                let planned: SmallVec<[PlannedTake<'_>; 4]> =
                    takes.iter().map(OwnedTake::planned).collect();
                let outcomes = self.take_here(&planned, clock::now_ns());
                drop(planned);
                self.send(
                    from,
                    MeshMsg::Taken {
                        ticket,
                        outcomes,
                        takes,
                    },
                );
            }
            MeshMsg::GiveBack { takes } => self.apply_give_back(takes.iter().map(Into::into)),
            MeshMsg::Taken {
                ticket,
                outcomes,
                takes,
            } => {
                let Some(Awaiting::Taken(reply)) = self.pending.borrow_mut().remove(&ticket) else {
                    return;
                };
                if let Err(outcomes) = reply.send(outcomes) {
                    // The check is gone: what the owner accepted goes back.
                    let back: Vec<OwnedTake> = takes
                        .into_iter()
                        .zip(&outcomes)
                        .filter(|(_, o)| o.kind == OutcomeKind::Accepted)
                        .map(|(t, o)| OwnedTake { flow: o.flow, ..t })
                        .collect();
                    self.give_back(from, back);
                }
            }
            MeshMsg::Offer {
                ticket,
                take,
                deadline,
            } => self.offer_from(from, ticket, take, deadline),
            MeshMsg::Withdraw { ticket } => self.withdraw_remote(from, ticket),
            MeshMsg::Offered {
                ticket,
                outcome,
                take,
            } => {
                let Some(Awaiting::Offered(reply)) = self.pending.borrow_mut().remove(&ticket)
                else {
                    return;
                };
                if let Err(outcome) = reply.send(outcome) {
                    if outcome.kind == OutcomeKind::Accepted {
                        let back = OwnedTake {
                            flow: outcome.flow,
                            ..take
                        };
                        self.give_back(from, vec![back]);
                    }
                }
            }
            MeshMsg::EndFlows { ticket, ids } => {
                let ended = ids.iter().map(|&id| self.end_flow_here(id)).collect();
                self.send(from, MeshMsg::FlowsEnded { ticket, ended });
            }
            MeshMsg::FlowsEnded { ticket, ended } => {
                if let Some(Awaiting::Ended(reply)) = self.pending.borrow_mut().remove(&ticket) {
                    let _ = reply.send(ended);
                }
            }
        }
    }

    /// Ends a flow this shard's ledger holds: its tokens go back (and its queue may admit a
    /// waiter). False when the flow is not in flight here (unknown, already ended, or
    /// owned by another shard).
    pub fn end_flow_here(&self, id: FlowId) -> bool {
        if id.shard() != self.id {
            return false;
        }
        let ended = self
            .state
            .borrow_mut()
            .end_flow(&self.engine(), id, clock::now_ns());
        if ended {
            self.wake_if_sooner();
        }
        ended
    }

    /// Ends flows, each on the shard that owns it; one answer per id, in order: true when
    /// the flow was in flight, false when it is unknown or already ended (harmless).
    pub async fn end_flows(&self, ids: &[FlowId]) -> Vec<bool> {
        let mut ended = vec![false; ids.len()];
        let mut remote: SmallVec<[(usize, Vec<usize>); 2]> = SmallVec::new();
        for (i, &id) in ids.iter().enumerate() {
            let owner = id.shard();
            if owner == self.id {
                ended[i] = self.end_flow_here(id);
            } else if owner < self.node.nr_shards {
                match remote.iter_mut().find(|(o, _)| *o == owner) {
                    Some((_, members)) => members.push(i),
                    None => remote.push((owner, vec![i])),
                }
            }
            // An id naming a shard this node does not have is unknown: false.
        }
        let answers = futures::future::join_all(remote.iter().map(|(owner, members)| {
            let (reply, answer) = oneshot::channel();
            let ticket = self.ticket();
            self.pending
                .borrow_mut()
                .insert(ticket, Awaiting::Ended(reply));
            let ids = members.iter().map(|&i| ids[i]).collect();
            self.send(*owner, MeshMsg::EndFlows { ticket, ids });
            answer
        }))
        .await;
        for ((_, members), answer) in remote.iter().zip(answers) {
            // No answer: the owner is gone (shutdown), which ended its flows anyway.
            let answer = answer.unwrap_or_default();
            for (k, &i) in members.iter().enumerate() {
                ended[i] = answer.get(k).copied().unwrap_or(false);
            }
        }
        ended
    }

    /// Applies a peer node's entries to buckets this shard owns (the gossip thread routed
    /// them here): debits their consumption or lowers them to their levels. `peer` is the
    /// sending process's boot nonce: what its debits take from concurrency buckets is
    /// remembered, so [`Shard::peer_gone`] can hand it back.
    pub fn apply_replica(&self, op: Op, peer: u64, entries: Vec<Replica>) {
        let engine = self.engine();
        let engine: &Engine = &engine;
        let now = clock::now_ns();
        let mut state = self.state.borrow_mut();
        let mut holds = self.peer_holds.borrow_mut();
        let mut overflowed = false;
        for e in entries {
            debug_assert_eq!(
                self.node.owner_of(&e.key),
                self.id,
                "replica routed to a non-owner"
            );
            // The gossip thread resolved the limiter with this same engine; the check keeps
            // an id from another engine (a future reload) from reaching `Engine::limiter`.
            let Some(spec) = engine.get_limiter(e.limiter) else {
                continue;
            };
            let in_flight = spec.kind.counts_in_flight();
            match op {
                Op::Debit => {
                    let mut tokens = e.value;
                    if in_flight {
                        let debit = holds.debit(peer, e.limiter, &e.key, e.value);
                        overflowed |= debit.first_overflow;
                        tokens = debit.apply;
                    }
                    if tokens != 0.0 {
                        state.debit(engine, e.limiter, &e.key, tokens, now);
                    }
                }
                Op::Lower => {
                    let store = state.store_mut();
                    let before = store.level(engine, e.limiter, &e.key, now);
                    store.lower_to(engine, e.limiter, &e.key, e.value, now);
                    if in_flight {
                        let after = store.level(engine, e.limiter, &e.key, now);
                        let release_at = now
                            .saturating_add(spec.max_inflight_ns.unwrap_or(0))
                            .saturating_add(peer_holds::UNATTRIBUTED_GRACE_NS);
                        overflowed |= holds.lowered(e.limiter, &e.key, before - after, release_at);
                    }
                }
            }
        }
        if overflowed {
            tracing::warn!(
                shard = self.id,
                max = self.node.limits.shard.max_flows,
                "too many peer flows in flight to remember; capacity they hold comes back \
                 only when they end (not if their node dies)"
            );
        }
        drop((state, holds));
        // Negative debits may let waiters in; a new release time may be the next wake.
        self.wake_if_sooner();
    }

    /// The peer process `peer` (boot nonce) is gone for good: hands back what its flows
    /// held of this shard's concurrency buckets, and wakes their queues.
    pub fn peer_gone(&self, peer: u64) {
        let released = self.peer_holds.borrow_mut().peer_gone(peer);
        if released.is_empty() {
            return;
        }
        let engine = self.engine();
        let engine: &Engine = &engine;
        let now = clock::now_ns();
        let tokens: f64 = released.iter().map(|r| r.tokens).sum();
        {
            let mut state = self.state.borrow_mut();
            for r in &released {
                state.debit(engine, r.limiter, &r.key, -r.tokens, now);
            }
        }
        tracing::info!(
            shard = self.id,
            peer,
            buckets = released.len(),
            tokens,
            "a peer node is gone: handed back what its flows in flight held"
        );
        self.wake_if_sooner();
    }

    /// Stops letting flows wait: every waiter is answered `shutting_down` now, and flows
    /// that would wait from now on are refused at once. Decisions continue.
    pub fn stop_waiting(&self) {
        self.stopping.set(true);
        let mut out = Vec::new();
        self.state.borrow_mut().release_waiters(
            &self.engine(),
            tollgate_policy::Refusal::ShuttingDown,
            clock::now_ns(),
            &mut out,
        );
        self.deliver(out);
    }

    /// Ends every flow in flight on this shard (graceful shutdown: the next replication
    /// drain tells peers their tokens came back). Returns how many.
    pub fn end_all_flows(&self) -> usize {
        let n = self
            .state
            .borrow_mut()
            .end_all_flows(&self.engine(), clock::now_ns());
        self.wake_if_sooner();
        n
    }

    /// Runs `f` with this shard's store (replication drains, snapshots, eviction).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut BucketStore, &Engine) -> R) -> R {
        let engine = self.engine();
        f(self.state.borrow_mut().store_mut(), &engine)
    }
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
