//! How threads that are not shards (the gRPC runtime, the gossip task) reach the shards:
//! one bounded flume inbox per shard, drained by a task on that shard.
//!
//! A check from outside goes straight to the shard that owns its routing label's bucket
//! (the same routing function as the binary client), so the usual case costs one hop.

use std::sync::Arc;
use tollgate_cluster::{Op, Replica};
use tollgate_policy::{Consumed, Decision, Engine, FlowError, OwnedFlow};
use tollgate_protocol::routing;

/// Messages into a shard from other threads.
pub enum Inbound {
    /// Decide a flow and answer on `reply`.
    Check {
        /// The flow.
        flow: OwnedFlow,
        /// Where the decision goes.
        reply: tokio::sync::oneshot::Sender<Result<Decision, FlowError>>,
    },
    /// Apply a peer node's entries: debit each ([`Op::Debit`]) or lower it to the level
    /// ([`Op::Lower`], state transfer). The gossip thread sends each shard only the entries
    /// whose buckets it owns ([`DecisionHandle::owner_of`]).
    Replica {
        /// What to do with each entry.
        op: Op,
        /// Entries whose limiters the node's engine resolved.
        entries: Vec<Replica>,
    },
    /// Hand over consumption since the last call (replication).
    DrainConsumed(tokio::sync::oneshot::Sender<Vec<Consumed>>),
    /// Hand over every bucket's level (a peer joined).
    Snapshot(tokio::sync::oneshot::Sender<Vec<Replica>>),
    /// A read for the admin API (gauges, one bucket, top keys), answered on the shard.
    Admin(crate::admin::shard_query::AdminQuery),
    /// Stop accepting and drain connections.
    Stop,
    /// Every shard has drained: exit.
    Exit,
}

/// Queue depth per shard inbox. Deep enough to absorb a burst from the gRPC runtime;
/// bounded so a stalled shard pushes back on callers instead of growing memory.
pub const INBOX_DEPTH: usize = 65_536;

/// Why a request could not reach a shard.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The flow itself is invalid (e.g. a tokens label that is not a number).
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The shard is gone (the server is shutting down).
    #[error("the server is shutting down")]
    Unavailable,
}

/// A cloneable, thread-safe handle to the shards.
#[derive(Clone)]
pub struct DecisionHandle {
    engine: Arc<Engine>,
    inboxes: Arc<Vec<flume::Sender<Inbound>>>,
}

impl DecisionHandle {
    /// A handle over these inboxes (index = shard).
    pub fn new(engine: Arc<Engine>, inboxes: Vec<flume::Sender<Inbound>>) -> DecisionHandle {
        DecisionHandle {
            engine,
            inboxes: Arc::new(inboxes),
        }
    }

    /// The compiled policies.
    pub fn engine(&self) -> &Engine {
        &self.engine
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

    /// Decides a flow on the shard that owns its routing label.
    pub async fn check(&self, flow: OwnedFlow) -> Result<Decision, BridgeError> {
        let shard = routing::shard_for_labels(
            self.engine.routing_label_keys(),
            flow.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            self.inboxes.len(),
        );
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(shard, Inbound::Check { flow, reply }).await?;
        Ok(answer.await.map_err(|_| BridgeError::Unavailable)??)
    }

    /// Sends a message to one shard, waiting if its inbox is full.
    pub async fn send(&self, shard: usize, msg: Inbound) -> Result<(), BridgeError> {
        let inbox = self.inboxes.get(shard).ok_or(BridgeError::Unavailable)?;
        inbox
            .send_async(msg)
            .await
            .map_err(|_| BridgeError::Unavailable)
    }

    /// Sends a message to one shard from a plain thread, blocking if its inbox is full.
    pub fn send_blocking(&self, shard: usize, msg: Inbound) -> Result<(), BridgeError> {
        let inbox = self.inboxes.get(shard).ok_or(BridgeError::Unavailable)?;
        inbox.send(msg).map_err(|_| BridgeError::Unavailable)
    }
}
