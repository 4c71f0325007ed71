//! The gRPC compat port's view of the shards: [`tollgate_grpc::DecisionBackend`] over a
//! [`DecisionHandle`], so Aperture SDK checks take the same path as binary ones.
//!
//! - `check(flow, deadline)`: the flow goes to the shard owning its routing label; a scheduler
//!   there may queue it until the gRPC deadline minus its `decision_deadline_margin` (no
//!   deadline: at most `server.max_queue_wait`).
//! - `flow_end(ids)`: each [`FlowId`] names the shard whose ledger holds the flow
//!   ([`FlowId::shard`]); the handle routes each id there.

use std::sync::Arc;
use std::time::Duration;

use crate::bridge::{BridgeError, DecisionHandle};
use tollgate_grpc::{BackendError, DecisionBackend, DecisionFuture, EndStatus, FlowEndFuture};
use tollgate_policy::{Engine, FlowId, OwnedFlow};

/// Decides gRPC checks on the owning shard.
pub struct ShardBackend {
    handle: DecisionHandle,
}

impl ShardBackend {
    /// Wraps a handle.
    pub fn new(handle: DecisionHandle) -> ShardBackend {
        ShardBackend { handle }
    }
}

fn backend_error(e: BridgeError) -> BackendError {
    match e {
        BridgeError::Flow(f) => BackendError::Flow(f),
        BridgeError::Unavailable => BackendError::Unavailable(e.to_string()),
    }
}

impl DecisionBackend for ShardBackend {
    fn engine(&self) -> Arc<Engine> {
        self.handle.engine()
    }

    fn check(&self, flow: OwnedFlow, deadline: Option<Duration>) -> DecisionFuture {
        let handle = self.handle.clone();
        Box::pin(async move { handle.check(flow, deadline).await.map_err(backend_error) })
    }

    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
        let handle = self.handle.clone();
        Box::pin(async move {
            let ended = handle.end_flows(flows).await;
            Ok(ended.into_iter().map(EndStatus::from_ended).collect())
        })
    }
}
