//! How threads that are not shards (the gRPC runtime, the gossip task) reach the shards:
//! one bounded inbox per shard ([`inbox`]), drained by a task on that shard.
//!
//! A check from outside goes straight to the shard that owns its routing label's bucket
//! (the same routing function as the binary client), so the usual case costs one hop.
//!
//! # The API the gRPC port uses ([`DecisionHandle`])
//! - [`DecisionHandle::check`]`(flow, deadline).await`: decides a flow, and hands it back
//!   with its decision ([`Checked`]), so the caller reuses its strings. `deadline` is the
//!   time the client still waits (the gRPC deadline), `None` when it brought none. A
//!   scheduler component lets the flow wait for tokens or capacity up to that deadline
//!   (less its `decision_deadline_margin`; without one, up to `server.max_queue_wait`),
//!   so the answer arrives in time. Dropping the returned future (the call was cancelled)
//!   hands back whatever the flow was given.
//! - [`DecisionHandle::end_flows`]`(ids).await`: ends flows by their [`FlowId`]s (gRPC
//!   `FlowEnd`, OTLP spans): each id goes to the shard whose ledger holds it; one answer
//!   per id, in order: true = it was in flight and its tokens went back, false = unknown
//!   or already ended (harmless).

use crate::clock;
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tollgate_cluster::{Op, Replica};
use tollgate_policy::{Checked, Consumed, Engine, FlowId, OwnedFlow};
use tollgate_protocol::routing;

pub mod check_batch;
pub use check_batch::{AnsweredChecks, QueuedCheck};

/// Messages into a shard from other threads.
pub enum Inbound {
    /// Decide these flows, in order ([`check_batch`]): the decisions given at once go back
    /// together on `answered`; a flow that must wait is answered alone on its own reply
    /// sender when it is decided.
    CheckBatch {
        /// The flows, their deadlines and reply senders.
        checks: Vec<QueuedCheck>,
        /// Where the decisions given at once go.
        answered: tokio::sync::oneshot::Sender<AnsweredChecks>,
    },
    /// End these flows (all held by the receiving shard's ledger) and answer whether each
    /// was in flight.
    EndFlows {
        /// The flows.
        ids: Vec<FlowId>,
        /// One answer per id.
        reply: tokio::sync::oneshot::Sender<Vec<bool>>,
    },
    /// Apply a peer node's entries: debit each ([`Op::Debit`]) or lower it to the level
    /// ([`Op::Lower`], state transfer). The gossip thread sends each shard only the entries
    /// whose buckets it owns ([`DecisionHandle::owner_of`]).
    Replica {
        /// What to do with each entry.
        op: Op,
        /// The boot nonce of the peer process that sent them.
        peer: u64,
        /// Entries whose limiters the node's engine resolved.
        entries: Vec<Replica>,
    },
    /// The peer process with this boot nonce is gone for good (left, down past the grace,
    /// restarted): hand back what its flows in flight held of this shard's buckets.
    PeerGone {
        /// Its boot nonce.
        peer: u64,
    },
    /// Hand over consumption since the last call (replication).
    DrainConsumed(tokio::sync::oneshot::Sender<Vec<Consumed>>),
    /// Hand over every bucket's level (a peer joined).
    Snapshot(tokio::sync::oneshot::Sender<Vec<Replica>>),
    /// A read for the admin API (gauges, one bucket, top keys), answered on the shard.
    Admin(crate::admin::shard_query::AdminQuery),
    /// Decide with these policies from now on (a reload), then answer on `done`.
    Reload {
        /// The node's new engine (already stored in the node's policies).
        engine: Arc<Engine>,
        /// Signalled once the shard has switched.
        done: flume::Sender<usize>,
    },
    /// Stop accepting and drain connections.
    Stop,
    /// Every shard has drained: exit.
    Exit,
}

/// Queue depth per shard inbox. Deep enough to absorb a burst from the gRPC runtime;
/// bounded so a stalled shard pushes back on callers instead of growing memory.
pub const INBOX_DEPTH: usize = 65_536;

/// The sending side of a shard's inbox (any thread; held by [`DecisionHandle`]).
pub type InboxSender = tokio::sync::mpsc::Sender<Inbound>;

/// The receiving side of a shard's inbox, drained by a task on that shard.
pub type InboxReceiver = tokio::sync::mpsc::Receiver<Inbound>;

/// A shard's inbox, [`INBOX_DEPTH`] deep.
///
/// Why tokio's channel: a send claims its permit and its slot with atomic operations (it
/// takes a lock only to wait when the inbox is full), the shard's receive takes none, and
/// any executor can await it (tokio's channels need no tokio runtime). flume,
/// used before, guards its queue with a mutex: a shard draining its inbox while the gRPC
/// thread pushed a batch slept on that mutex's futex, a context switch each time, and the
/// gRPC thread paid a futex wake (docs/performance.md, gRPC section).
pub fn inbox() -> (InboxSender, InboxReceiver) {
    tokio::sync::mpsc::channel(INBOX_DEPTH)
}

/// Why a request could not reach a shard.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The shard is gone (the server is shutting down).
    #[error("the server is shutting down")]
    Unavailable,
}

/// What [`DecisionHandle::update_policies`] did.
#[derive(Debug)]
pub struct PolicyUpdate {
    /// The policies it replaced.
    pub old: Arc<Engine>,
    /// The policies in force now.
    pub new: Arc<Engine>,
    /// Shards that did not confirm the switch in time (empty: all switched).
    pub silent: Vec<usize>,
}

/// A cloneable, thread-safe handle to the shards.
#[derive(Clone)]
pub struct DecisionHandle {
    policies: Arc<ArcSwap<Engine>>,
    /// One change of the policies at a time ([`DecisionHandle::update_policies`]).
    updating: Arc<std::sync::Mutex<()>>,
    inboxes: Arc<Vec<InboxSender>>,
    /// Checks gathered per tokio turn ([`check_batch`]).
    outbox: check_batch::Outbox,
}

impl DecisionHandle {
    /// A handle over these inboxes (index = shard), sharing the node's policies.
    pub fn new(policies: Arc<ArcSwap<Engine>>, inboxes: Vec<InboxSender>) -> DecisionHandle {
        DecisionHandle {
            policies,
            updating: Arc::default(),
            inboxes: Arc::new(inboxes),
            outbox: check_batch::Outbox::default(),
        }
    }

    /// The compiled policies as of now (a reload may replace them at any time; a caller
    /// describing a decision loads them after the decision, so they are at least as new as
    /// the shard's — see [`Engine::describe`]).
    pub fn engine(&self) -> Arc<Engine> {
        self.policies.load_full()
    }

    /// The node's policies, for the reload that replaces them.
    pub fn policies(&self) -> &Arc<ArcSwap<Engine>> {
        &self.policies
    }

    /// Changes the node's policies: `change` makes the successor of the policies in force,
    /// which every shard then decides with (`install_policies`). One change
    /// at a time, from reading the policies to the last shard's switch: reloads and runtime
    /// limit changes all come here, so none is built from policies another one is
    /// replacing (a limit change racing a reload would otherwise undo it). Blocks: call it
    /// from a plain thread or `spawn_blocking`.
    pub fn update_policies<E>(
        &self,
        change: impl FnOnce(&Engine) -> Result<Engine, E>,
        timeout: Duration,
    ) -> Result<PolicyUpdate, E> {
        let _one_at_a_time = self.updating.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.engine();
        let new = Arc::new(change(&old)?);
        let silent = self.install_policies(&new, timeout);
        Ok(PolicyUpdate { old, new, silent })
    }

    /// Makes the node decide with `engine`: stores it for the other threads first, then
    /// switches every shard between two of its messages ([`Inbound::Reload`]). Returns the
    /// shards that did not confirm within `timeout` (empty: all switched).
    fn install_policies(&self, engine: &Arc<Engine>, timeout: Duration) -> Vec<usize> {
        self.policies.store(engine.clone());
        let shards = self.inboxes.len();
        let (done, switched) = flume::bounded(shards);
        let mut confirmed = vec![false; shards];
        let mut sent = 0;
        for shard in 0..shards {
            let msg = Inbound::Reload {
                engine: engine.clone(),
                done: done.clone(),
            };
            if self.send_blocking(shard, msg).is_ok() {
                sent += 1;
            }
        }
        drop(done);
        let deadline = std::time::Instant::now() + timeout;
        for _ in 0..sent {
            match switched.recv_deadline(deadline) {
                Ok(shard) => {
                    if let Some(c) = confirmed.get_mut(shard) {
                        *c = true;
                    }
                }
                Err(_) => break,
            }
        }
        (0..shards).filter(|&s| !confirmed[s]).collect()
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.inboxes.len()
    }

    /// The shard that owns the bucket keyed by `key`: the routing rule of checks
    /// (`Node::owner_of`), for entries that enter from another thread.
    pub fn owner_of(&self, key: &str) -> usize {
        routing::shard_for(routing::routing_hash(key.as_bytes()), self.inboxes.len())
    }

    /// Decides a flow on the shard that owns its routing label, and hands the flow back with
    /// its decision. `deadline` is how long the client still waits for the answer (None: it
    /// brought no deadline); schedulers let the flow wait for tokens within it. Called on a
    /// tokio runtime, the checks of one turn travel to each shard, and their decisions back,
    /// together ([`check_batch`]). An error: the flow never reached a shard that could
    /// answer (shutting down), and is gone.
    pub async fn check(
        &self,
        flow: OwnedFlow,
        deadline: Option<Duration>,
    ) -> Result<Checked, BridgeError> {
        let deadline = deadline.map(|left| {
            clock::now_ns().saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
        });
        let shard = routing::shard_for_labels(
            self.policies.load().routing_label_keys(),
            flow.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.inboxes.len(),
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        let check = QueuedCheck {
            flow,
            deadline,
            reply,
        };
        self.outbox.push(self, shard, check).await?;
        answer.await.map_err(|_| BridgeError::Unavailable)
    }

    /// Ends flows, each on the shard whose ledger holds it ([`FlowId::shard`]). One answer
    /// per id, in order: true when the flow was in flight (its tokens went back), false
    /// when it is unknown, already ended, or its shard is gone (shutting down ends every
    /// flow anyway).
    pub async fn end_flows(&self, ids: Vec<FlowId>) -> Vec<bool> {
        let mut ended = vec![false; ids.len()];
        let mut by_shard: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let shard = id.shard();
            if shard >= self.inboxes.len() {
                continue; // no such shard here: unknown
            }
            match by_shard.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, members)) => members.push(i),
                None => by_shard.push((shard, vec![i])),
            }
        }
        let mut answers = Vec::with_capacity(by_shard.len());
        for (shard, members) in &by_shard {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let ids = members.iter().map(|&i| ids[i]).collect();
            if self
                .send(*shard, Inbound::EndFlows { ids, reply })
                .await
                .is_ok()
            {
                answers.push((members, answer));
            }
        }
        for (members, answer) in answers {
            let answer = answer.await.unwrap_or_default();
            for (k, &i) in members.iter().enumerate() {
                ended[i] = answer.get(k).copied().unwrap_or(false);
            }
        }
        ended
    }

    /// Sends a message to one shard, waiting if its inbox is full.
    pub async fn send(&self, shard: usize, msg: Inbound) -> Result<(), BridgeError> {
        let inbox = self.inboxes.get(shard).ok_or(BridgeError::Unavailable)?;
        inbox.send(msg).await.map_err(|_| BridgeError::Unavailable)
    }

    /// Sends a message to one shard from a plain thread, blocking if its inbox is full.
    pub fn send_blocking(&self, shard: usize, msg: Inbound) -> Result<(), BridgeError> {
        let inbox = self.inboxes.get(shard).ok_or(BridgeError::Unavailable)?;
        // Not tokio's `blocking_send`, which panics when its caller runs inside an
        // asynchronous context; this blocks any thread that may block, as flume's send did.
        futures::executor::block_on(inbox.send(msg)).map_err(|_| BridgeError::Unavailable)
    }
}
