//! Waiting made real: offers to this shard's scheduler components, the waiters they leave
//! in [`ShardState`](tollgate_policy::ShardState)'s queues, and the per-shard task that
//! serves those queues on time and delivers every answer.
//!
//! A waiter is a ticket (unique on this shard) that maps to who awaits the answer: a check
//! task on this shard (a oneshot) or the shard that offered the flow (a mesh reply). The
//! task sleeps until the state's next wake (a queue's tokens or deadline, a flow's expiry)
//! or until it is woken: after anything that may let a waiter in or move the next wake
//! earlier (a new waiter, a new flow, a flow's end, tokens handed back, a peer's returned
//! tokens), [`Shard::wake_if_sooner`] compares the state's next wake with the task's timer
//! and wakes it only when sooner — so a check that frees nothing and waits on nothing
//! costs no wake-up. Then it polls and delivers. An answer whose waiter is gone (the check
//! was dropped: its connection broke, its gRPC call was cancelled) has its admitted tokens
//! handed back at once.

use super::check::{unavailable, Return};
use super::{Awaiting, MeshMsg, OwnedTake, Shard};
use crate::clock;
use futures::channel::oneshot;
use futures::future::Either;
use glommio::channels::local_channel::LocalReceiver;
use std::rc::Rc;
use std::time::Duration;
use tollgate_policy::{
    LimiterOutcome, OutcomeKind, PlannedTake, Refusal, Resolved, Ticket, Tokens,
};

/// Who awaits the answer for a flow queued on this shard.
pub(crate) enum Waiter {
    /// A check task on this shard.
    Local {
        /// Where the answer goes.
        reply: oneshot::Sender<LimiterOutcome>,
        /// The bucket key, to hand admitted tokens back if the check is gone.
        key: Box<str>,
        /// The flow's tokens, likewise.
        tokens: Tokens,
    },
    /// A check on another shard, answered with [`MeshMsg::Offered`].
    Remote {
        /// The shard that offered the flow.
        shard: usize,
        /// Its ticket for the answer.
        ticket: u32,
        /// The offered take, returned with the answer.
        take: OwnedTake,
    },
}

/// A flow waiting in a queue of this shard for a check on this shard: its answer comes
/// through [`Queued::outcome`]. Dropped before that (the check was refused OVERLOADED, or its
/// client went away), it takes the flow out of the queue, so the flow no longer holds a
/// queue slot, or a place others wait behind, until its deadline.
pub(crate) struct Queued {
    shard: Rc<Shard>,
    ticket: Ticket,
    answer: oneshot::Receiver<LimiterOutcome>,
}

impl Queued {
    /// The flow's outcome once its queue answers; None when the shard dropped the waiter
    /// (it stopped).
    pub(crate) async fn outcome(&mut self) -> Option<LimiterOutcome> {
        (&mut self.answer).await.ok()
    }
}

/// An offer sent to another shard and not yet answered: dropped so, it withdraws the offer
/// (`MeshMsg::Withdraw`).
struct OfferInFlight<'a> {
    shard: &'a Shard,
    owner: usize,
    ticket: u32,
    answered: bool,
}

impl Drop for OfferInFlight<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.shard.send(
                self.owner,
                MeshMsg::Withdraw {
                    ticket: self.ticket,
                },
            );
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.shard.withdraw_local(self.ticket);
    }
}

impl Shard {
    /// Offers a scheduler component owned here for a check on this shard. `Ok`: decided
    /// now. `Err`: the flow waits; its answer comes through the [`Queued`].
    pub(crate) fn offer_local(
        self: &Rc<Self>,
        take: &PlannedTake<'_>,
        deadline_ns: Option<u64>,
        now_ns: u64,
    ) -> Result<LimiterOutcome, Queued> {
        let mut out = Vec::new();
        let offered = self.offer_here(take, deadline_ns, now_ns, &mut out);
        let result = match offered {
            Ok(outcome) => Ok(outcome),
            Err(ticket) => {
                let (reply, answer) = oneshot::channel();
                let waiter = Waiter::Local {
                    reply,
                    key: take.key.unwrap_or_default().into(),
                    tokens: take.tokens,
                };
                self.park(ticket, waiter, now_ns, &mut out);
                Err(Queued {
                    shard: self.clone(),
                    ticket,
                    answer,
                })
            }
        };
        self.deliver(out);
        result
    }

    /// Takes a flow that waits in a queue here for a check on this shard out of it,
    /// unanswered ([`Queued`]'s drop). Nothing happens when it was answered already.
    fn withdraw_local(&self, ticket: Ticket) {
        if self.waiters.borrow_mut().remove(&ticket).is_none() {
            return;
        }
        let mut out = Vec::new();
        self.state
            .borrow_mut()
            .withdraw(&self.engine(), ticket, clock::now_ns(), &mut out);
        self.deliver(out);
    }

    /// Another shard gave up its offer `ticket` (`MeshMsg::Withdraw`): the flow leaves its
    /// queue here, and the offer is answered refused, which clears the offering shard's
    /// record of it. Nothing happens when it was answered already (that answer is on its
    /// way and clears the record).
    pub(crate) fn withdraw_remote(&self, from: usize, ticket: u32) {
        let Some(wait) = self.remote_waits.borrow_mut().remove(&(from, ticket)) else {
            return;
        };
        let Some(Waiter::Remote { take, .. }) = self.waiters.borrow_mut().remove(&wait) else {
            return;
        };
        let mut out = Vec::new();
        self.state
            .borrow_mut()
            .withdraw(&self.engine(), wait, clock::now_ns(), &mut out);
        self.deliver(out);
        let outcome = LimiterOutcome::refused(take.limiter, take.tokens.get(), Refusal::TimedOut);
        self.send(
            from,
            MeshMsg::Offered {
                ticket,
                outcome,
                take,
            },
        );
    }

    /// Offers a scheduler component another shard owns, and awaits its answer.
    pub(crate) async fn offer_remote(
        &self,
        owner: usize,
        take: OwnedTake,
        deadline_ns: Option<u64>,
    ) -> LimiterOutcome {
        let if_gone = unavailable(&take);
        let (reply, answer) = oneshot::channel();
        let ticket = self.ticket();
        self.pending
            .borrow_mut()
            .insert(ticket, Awaiting::Offered(reply));
        self.send(
            owner,
            MeshMsg::Offer {
                ticket,
                take,
                deadline: deadline_ns,
            },
        );
        // Dropped before the answer (the check was refused OVERLOADED, or its client went
        // away), the owner is told: the flow must not keep a place in its queue.
        let mut in_flight = OfferInFlight {
            shard: self,
            owner,
            ticket,
            answered: false,
        };
        let outcome = answer.await.unwrap_or(if_gone);
        in_flight.answered = true;
        outcome
    }

    /// Another shard's offer (`MeshMsg::Offer`): answered now or when the flow leaves its
    /// queue.
    pub(crate) fn offer_from(
        &self,
        from: usize,
        ticket: u32,
        take: OwnedTake,
        deadline_ns: Option<u64>,
    ) {
        let now = clock::now_ns();
        let mut out = Vec::new();
        let offered = self.offer_here(&take.planned(), deadline_ns, now, &mut out);
        match offered {
            Ok(outcome) => self.send(
                from,
                MeshMsg::Offered {
                    ticket,
                    outcome,
                    take,
                },
            ),
            Err(wait) => {
                let waiter = Waiter::Remote {
                    shard: from,
                    ticket,
                    take,
                };
                self.park(wait, waiter, now, &mut out);
            }
        }
        self.deliver(out);
    }

    /// Offers a flow to the state machine under a fresh ticket. `Err(ticket)`: it waits,
    /// and the caller must [`Shard::park`] its waiter before delivering `out` (which may
    /// already hold its answer).
    fn offer_here(
        &self,
        take: &PlannedTake<'_>,
        deadline_ns: Option<u64>,
        now_ns: u64,
        out: &mut Vec<Resolved>,
    ) -> Result<LimiterOutcome, Ticket> {
        let ticket = self.next_wait_ticket.get();
        self.next_wait_ticket.set(ticket.wrapping_add(1));
        let decided =
            self.state
                .borrow_mut()
                .offer(&self.engine(), take, ticket, deadline_ns, now_ns, out);
        if decided.is_some_and(|o| o.flow.is_some()) {
            self.wake_if_sooner();
        }
        decided.ok_or(ticket)
    }

    /// Records who awaits a queued flow, and wakes the scheduler (the flow's deadline may
    /// be the next wake). While stopping, nothing waits: the flow is refused at once.
    fn park(&self, ticket: Ticket, waiter: Waiter, now_ns: u64, out: &mut Vec<Resolved>) {
        if let Waiter::Remote {
            shard,
            ticket: theirs,
            ..
        } = &waiter
        {
            self.remote_waits
                .borrow_mut()
                .insert((*shard, *theirs), ticket);
        }
        self.waiters.borrow_mut().insert(ticket, waiter);
        if self.stopping.get() {
            self.state.borrow_mut().release_waiters(
                &self.engine(),
                Refusal::ShuttingDown,
                now_ns,
                out,
            );
        }
        self.wake_if_sooner();
    }

    /// Hands each answer to its waiter; an answer whose waiter is gone has its admitted
    /// tokens handed back.
    pub(crate) fn deliver(&self, resolved: Vec<Resolved>) {
        for r in resolved {
            let waiter = self.waiters.borrow_mut().remove(&r.ticket);
            match waiter {
                Some(Waiter::Local { reply, key, tokens }) => {
                    if let Err(outcome) = reply.send(r.outcome) {
                        if outcome.kind == OutcomeKind::Accepted {
                            self.apply_give_back([Return {
                                limiter: outcome.limiter,
                                key: Some(&key),
                                tokens,
                                flow: outcome.flow,
                            }]);
                        }
                    }
                }
                Some(Waiter::Remote {
                    shard,
                    ticket,
                    take,
                }) => {
                    self.remote_waits.borrow_mut().remove(&(shard, ticket));
                    self.send(
                        shard,
                        MeshMsg::Offered {
                            ticket,
                            outcome: r.outcome,
                            take,
                        },
                    );
                }
                None => tracing::error!(
                    shard = self.id,
                    ticket = r.ticket,
                    "a queue answered a ticket nobody waits for"
                ),
            }
        }
    }

    /// Wakes the scheduler task if the state's next wake is sooner than its timer: a
    /// queue became due (tokens came back, a flow ended), a new waiter's deadline, a new
    /// flow's expiry, a peer's hold due back.
    pub(crate) fn wake_if_sooner(&self) {
        if self
            .next_wake()
            .is_some_and(|at| at < self.sleeping_until.get())
        {
            // Full means a wake is already pending: the task will see this event too.
            let _ = self.kick.try_send(());
        }
    }

    /// Serves what is due at `now_ns`: unattributed peer holds due back, queues whose
    /// tokens or deadlines came, flows past their `max_inflight_duration`.
    fn poll(&self, now_ns: u64) {
        let engine = self.engine();
        let engine: &tollgate_policy::Engine = &engine;
        let released = self.peer_holds.borrow_mut().release_due(now_ns);
        let mut out = Vec::new();
        {
            let mut state = self.state.borrow_mut();
            for r in &released {
                state.debit(engine, r.limiter, &r.key, -r.tokens, now_ns);
            }
            state.poll(engine, now_ns, &mut out);
        }
        if !released.is_empty() {
            tracing::info!(
                shard = self.id,
                buckets = released.len(),
                "handed back concurrency capacity a state transfer held for flows whose ends never came"
            );
        }
        self.deliver(out);
    }

    /// When [`Shard::poll`] next has work, if anything waits on time.
    fn next_wake(&self) -> Option<u64> {
        let state = self.state.borrow_mut().next_wake();
        let holds = self.peer_holds.borrow_mut().next_release();
        match (state, holds) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The scheduler task of one shard: poll, deliver, sleep until the next wake or a kick.
pub(crate) async fn run(shard: Rc<Shard>, kicked: LocalReceiver<()>) {
    loop {
        let now = clock::now_ns();
        shard.poll(now);
        let wake = shard.next_wake();
        // Single-threaded: nothing changes the state between this and the sleep below.
        shard.sleeping_until.set(wake.unwrap_or(u64::MAX));
        let kick = match wake {
            // Due already (answers handed tokens back): serve again, after others ran.
            Some(at) if at <= now => {
                futures_lite::future::yield_now().await;
                Some(())
            }
            Some(at) => {
                let sleep = glommio::timer::sleep(Duration::from_nanos(at - now));
                let kick = kicked.recv();
                futures::pin_mut!(sleep, kick);
                match futures::future::select(sleep, kick).await {
                    Either::Left(_) => Some(()),
                    Either::Right((kick, _)) => kick,
                }
            }
            None => kicked.recv().await,
        };
        shard.sleeping_until.set(0);
        if kick.is_none() {
            return; // the shard is gone
        }
    }
}
