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
use crate::metrics::{CheckResult, Metrics, Protocol};
use tollgate_grpc::{
    BackendError, DecisionBackend, DecisionFuture, EndStatus, FlowEndFuture, GrpcService,
};
use tollgate_policy::{Decision, Engine, FlowId, OwnedFlow};

/// Decides gRPC checks on the owning shard.
pub struct ShardBackend {
    /// Shared by the calls in flight: one reference count per check, not one per `Arc` the
    /// handle holds.
    handle: Arc<DecisionHandle>,
    /// Where each service's checks are counted (None: not counted).
    metrics: Option<Arc<Metrics>>,
}

impl ShardBackend {
    /// Wraps a handle.
    pub fn new(handle: DecisionHandle) -> ShardBackend {
        ShardBackend {
            handle: Arc::new(handle),
            metrics: None,
        }
    }

    /// Counts each service's checks in `metrics` (per protocol, with latency).
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> ShardBackend {
        ShardBackend {
            metrics: Some(metrics),
            ..self
        }
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

    fn observe(
        &self,
        service: GrpcService,
        result: &Result<Decision, BackendError>,
        elapsed: Duration,
    ) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let protocol = match service {
            GrpcService::ApertureCheck => Protocol::ApertureGrpc,
            GrpcService::EnvoyRateLimit => Protocol::EnvoyRls,
        };
        let result = match result {
            Ok(d) if d.accepted => CheckResult::Accepted,
            Ok(_) => CheckResult::Rejected,
            Err(_) => CheckResult::Error,
        };
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        metrics.grpc_decided(protocol, result, elapsed_ns);
    }
}
