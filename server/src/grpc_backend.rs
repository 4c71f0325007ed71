//! The gRPC compat port's view of the shards: [`tollgate_grpc::DecisionBackend`] over a
//! [`DecisionHandle`], so Aperture SDK checks take the same path as binary ones.

use crate::bridge::{BridgeError, DecisionHandle};
use crate::metrics::{CheckResult, Metrics, Protocol};
use std::sync::Arc;
use std::time::Duration;
use tollgate_grpc::{BackendError, DecisionBackend, DecisionFuture, GrpcService};
use tollgate_policy::{Decision, Engine, OwnedFlow};

/// Decides gRPC checks on the owning shard.
pub struct ShardBackend {
    handle: DecisionHandle,
    /// Where each service's checks are counted (None: not counted).
    metrics: Option<Arc<Metrics>>,
}

impl ShardBackend {
    /// Wraps a handle.
    pub fn new(handle: DecisionHandle) -> ShardBackend {
        ShardBackend {
            handle,
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

impl DecisionBackend for ShardBackend {
    fn engine(&self) -> Arc<Engine> {
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
