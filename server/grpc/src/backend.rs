//! The bridge between the gRPC runtime and whatever owns the token buckets.
//!
//! The server crate implements [`DecisionBackend`] by handing each flow to the glommio shard
//! that owns its bucket and awaiting the shard's answer over a channel; tests implement it with
//! a `tollgate_policy::ShardState` of their own. The gRPC side never touches bucket state itself.
//!
//! Two calls:
//! - [`DecisionBackend::check`] decides a flow for one service ([`GrpcService`]: the backend
//!   counts and times each service's decisions, the server in its per-protocol metrics). The
//!   flow may have to **wait**: a quota or concurrency scheduler queues it until tokens (or
//!   capacity) free up. The caller passes the time its client will wait (the gRPC deadline),
//!   and the backend answers by then: a scheduler rejects a flow it cannot admit at
//!   `deadline - decision_deadline_margin` at the latest (or at its workload's
//!   `queue_timeout`), so the answer reaches the client before the client gives up. Dropping
//!   the future gives back whatever the flow was admitted with.
//! - [`DecisionBackend::flow_end`] ends flows that hold concurrency tokens, by the [`FlowId`]
//!   their check returned (Aperture's `request_id`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tollgate_policy::{Checked, Engine, FlowId, OwnedFlow};

/// Which service asked for a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GrpcService {
    /// `aperture.flowcontrol.check.v1.FlowControlService/Check`.
    ApertureCheck,
    /// `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` (one decision per
    /// descriptor).
    EnvoyRateLimit,
}

/// The future a backend returns for one decision: the flow handed back with its decision
/// (or why it could not be judged), or why the backend could not answer.
pub type DecisionFuture = Pin<Box<dyn Future<Output = Result<Checked, BackendError>> + Send>>;

/// The future a backend returns for a batch of flow ends: one [`EndStatus`] per id, in order.
pub type FlowEndFuture = Pin<Box<dyn Future<Output = Result<Vec<EndStatus>, BackendError>> + Send>>;

/// Where decisions are made. Called from the gRPC runtime thread; must not block it.
pub trait DecisionBackend: Send + Sync + 'static {
    /// The engine the backend decides with, as of now: used to describe limiters in
    /// answers (policy name, hash, component id, kind, status code, limit-by key,
    /// workloads). Load it after the decision: a reload may replace it at any time, and
    /// [`Engine::describe`] still knows the limiters the latest reload removed.
    fn engine(&self) -> Arc<Engine>;

    /// Decides `flow` for `service`: takes tokens from every matching component, or none if
    /// one rejects, and hands the flow back with the decision ([`Checked`]): a caller builds
    /// the flow by moving its request's strings in, and takes them back for its answer. A
    /// flow that cannot be judged (e.g. a tokens label that is not a cost; nothing was taken)
    /// comes back with the [`tollgate_policy::FlowError`]: `Check` answers it REJECTED with
    /// status 400 and `ShouldRateLimit` OVER_LIMIT, never with an RPC error (the SDKs and
    /// Envoy let a flow run on RPC errors): see [`crate::reply::unjudgeable_response`]. The
    /// backend may count and time the decision as `service`'s (inside the one
    /// future it returns: a wrapper would box a second future per decision).
    ///
    /// `deadline` is how long from now the caller waits for the answer (its gRPC deadline);
    /// `None` when it set none. A flow that meets a scheduler may wait in its queue, and the
    /// answer comes by `deadline` minus the scheduler's `decision_deadline_margin` (without a
    /// deadline: by the server's longest queue wait). Components that answer at once (rate and
    /// concurrency limiters) ignore it.
    fn check(
        &self,
        service: GrpcService,
        flow: OwnedFlow,
        deadline: Option<Duration>,
    ) -> DecisionFuture;

    /// Ends the flows `flows` (their concurrency tokens go back, and waiters may be admitted).
    /// Answers one [`EndStatus`] per id, in the same order.
    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture;
}

/// What ending one flow did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndStatus {
    /// The flow held tokens; they went back.
    Ended,
    /// No flow with that id holds tokens: it never existed here, it already ended (by an end,
    /// a span, or after `max_inflight_duration`), or the server restarted since. Harmless.
    Unknown,
}

impl EndStatus {
    /// `Ended` for true, as the shards answer.
    pub fn from_ended(ended: bool) -> EndStatus {
        if ended {
            EndStatus::Ended
        } else {
            EndStatus::Unknown
        }
    }
}

/// Why a backend could not answer (a flow it could not judge is an answer: [`Checked`]).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot answer now (shutting down, overloaded). Answered with `UNAVAILABLE`.
    #[error("decision backend unavailable: {0}")]
    Unavailable(String),
}

impl From<BackendError> for tonic::Status {
    fn from(e: BackendError) -> Self {
        tonic::Status::unavailable(e.to_string())
    }
}
