//! The gRPC compat port's view of the shards: [`tollgate_grpc::DecisionBackend`] over a
//! [`DecisionHandle`], so Aperture SDK checks take the same path as binary ones.
//!
//! - `check(service, flow, deadline)`: the flow goes to the shard owning its routing label; a
//!   scheduler there may queue it until the gRPC deadline minus its `decision_deadline_margin`
//!   (no deadline: at most `server.max_queue_wait`). The decision is counted and timed in the
//!   node's metrics as `service`'s (`tollgate_checks_total{protocol=...}`).
//! - `flow_end(ids)`: each [`FlowId`] names the shard whose ledger holds the flow
//!   ([`FlowId::shard`]); the handle routes each id there.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bridge::{BridgeError, DecisionHandle};
use crate::metrics::{CheckResult, Metrics, Protocol};
use tollgate_grpc::{
    BackendError, DecisionBackend, DecisionFuture, EndStatus, FlowEndFuture, GrpcService,
};
use tollgate_policy::{Checked, Engine, FlowId, OwnedFlow};

/// Decides gRPC checks on the owning shard.
pub struct ShardBackend {
    /// Shared by the calls in flight: one reference count per check.
    shared: Arc<Shared>,
}

struct Shared {
    handle: DecisionHandle,
    /// Where each service's checks are counted.
    metrics: Arc<Metrics>,
}

impl ShardBackend {
    /// Decides through `handle`, counting each service's checks in `metrics` (per protocol,
    /// with latency).
    pub fn new(handle: DecisionHandle, metrics: Arc<Metrics>) -> ShardBackend {
        ShardBackend {
            shared: Arc::new(Shared { handle, metrics }),
        }
    }
}

fn backend_error(e: BridgeError) -> BackendError {
    BackendError::Unavailable(e.to_string())
}

impl Shared {
    /// Counts one decision `service` asked for, which took `elapsed`.
    fn observe(
        &self,
        service: GrpcService,
        result: &Result<Checked, BackendError>,
        elapsed: Duration,
    ) {
        let protocol = match service {
            GrpcService::ApertureCheck => Protocol::ApertureGrpc,
            GrpcService::EnvoyRateLimit => Protocol::EnvoyRls,
        };
        let result = match result {
            Ok(Checked {
                decision: Ok(d), ..
            }) if d.accepted => CheckResult::Accepted,
            Ok(Checked {
                decision: Ok(_), ..
            }) => CheckResult::Rejected,
            Ok(Checked {
                decision: Err(_), ..
            })
            | Err(_) => CheckResult::Error,
        };
        let elapsed_ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.metrics.grpc_decided(protocol, result, elapsed_ns);
    }
}

impl DecisionBackend for ShardBackend {
    fn engine(&self) -> Arc<Engine> {
        self.shared.handle.engine()
    }

    fn check(
        &self,
        service: GrpcService,
        flow: OwnedFlow,
        deadline: Option<Duration>,
    ) -> DecisionFuture {
        let started = Instant::now();
        let shared = self.shared.clone();
        Box::pin(async move {
            let result = shared
                .handle
                .check(flow, deadline)
                .await
                .map_err(backend_error);
            shared.observe(service, &result, started.elapsed());
            result
        })
    }

    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            let ended = shared.handle.end_flows(flows).await;
            Ok(ended.into_iter().map(EndStatus::from_ended).collect())
        })
    }
}
