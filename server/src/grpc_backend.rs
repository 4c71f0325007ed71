//! The gRPC compat port's view of the shards: [`tollgate_grpc::DecisionBackend`] over a
//! [`DecisionHandle`], so Aperture SDK checks take the same path as binary ones.

use crate::bridge::{BridgeError, DecisionHandle};
use tollgate_grpc::{BackendError, DecisionBackend, DecisionFuture};
use tollgate_policy::{Engine, OwnedFlow};

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

impl DecisionBackend for ShardBackend {
    fn engine(&self) -> &Engine {
        self.handle.engine()
    }

    fn check(&self, flow: OwnedFlow) -> DecisionFuture {
        let handle = self.handle.clone();
        Box::pin(async move {
            // The trait does not pass the gRPC deadline yet: no client deadline, so a
            // scheduler lets the flow wait at most `server.max_queue_wait`.
            handle.check(flow, None).await.map_err(|e| match e {
                BridgeError::Flow(f) => BackendError::Flow(f),
                BridgeError::Unavailable => BackendError::Unavailable(e.to_string()),
            })
        })
    }
}
