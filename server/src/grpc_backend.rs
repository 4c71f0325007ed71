//! The gRPC compat port's view of the shards: [`tollgate_grpc::DecisionBackend`] over a
//! [`DecisionHandle`], so Aperture SDK checks take the same path as binary ones.
//!
//! - `check(flow, deadline)`: the flow goes to the shard owning its routing label; a scheduler
//!   there may queue it until the gRPC deadline minus its `decision_deadline_margin`.
//! - `flow_end(ids)`: each [`FlowId`] names the shard whose ledger holds the flow
//!   ([`FlowId::shard`]); the handle routes each id there.
//!
//! Both go through [`bridge_calls`], the one place that names the handle's methods.

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
    fn engine(&self) -> &Engine {
        self.handle.engine()
    }

    fn check(&self, flow: OwnedFlow, deadline: Option<Duration>) -> DecisionFuture {
        let handle = self.handle.clone();
        Box::pin(async move {
            bridge_calls::check(&handle, flow, deadline)
                .await
                .map_err(backend_error)
        })
    }

    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
        let handle = self.handle.clone();
        Box::pin(async move {
            let ended = bridge_calls::end_flows(&handle, flows).await?;
            Ok(ended.into_iter().map(EndStatus::from_ended).collect())
        })
    }
}

/// The two [`DecisionHandle`] calls this backend makes.
///
/// **Pre-merge adapter.** Phase 2's design gives the handle `check(flow, deadline)` (a
/// scheduler waits until the deadline minus its margin) and `end_flows(ids) -> Vec<bool>`
/// (one per id: whether the flow held tokens). Until the shard shell that provides them is
/// merged, the handle has only `check(flow)`, which decides at once (schedulers admit now or
/// refuse), and no way to end a flow. So here, for now:
/// - `check` ignores `deadline`: the answer comes at once, so within any deadline, but a
///   scheduler never waits;
/// - `end_flows` cannot reach the shards' ledgers and answers `Unavailable`: `FlowEnd` is then
///   an `UNAVAILABLE` error and spans end nothing; flows come back after their
///   `max_inflight_duration` once the shards sweep expired flows.
///
/// After the merge, each body becomes the handle's call: `handle.check(flow, deadline).await`
/// and `handle.end_flows(flows).await` (mapping its error like [`backend_error`]).
mod bridge_calls {
    use super::*;

    /// Why `end_flows` fails before the merge.
    pub(super) const END_FLOWS_NOT_CONNECTED: &str =
        "ending flows is not connected to the shards in this build (the shard shell's end_flows is missing)";

    pub(super) async fn check(
        handle: &DecisionHandle,
        flow: OwnedFlow,
        _deadline: Option<Duration>,
    ) -> Result<tollgate_policy::Decision, BridgeError> {
        handle.check(flow).await
    }

    pub(super) async fn end_flows(
        _handle: &DecisionHandle,
        _flows: Vec<FlowId>,
    ) -> Result<Vec<bool>, BackendError> {
        Err(BackendError::Unavailable(
            END_FLOWS_NOT_CONNECTED.to_owned(),
        ))
    }
}
