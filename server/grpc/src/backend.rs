//! The bridge between the gRPC runtime and whatever owns the token buckets.
//!
//! The server crate implements [`DecisionBackend`] by hashing the flow to its owning glommio shard
//! and awaiting the shard's answer over a channel; tests implement it with a
//! `tollgate_policy::LocalLimiter`. The gRPC side never touches bucket state itself.

use std::future::Future;
use std::pin::Pin;

use tollgate_policy::{Decision, Engine, FlowError, OwnedFlow};

/// The future a backend returns for one decision.
pub type DecisionFuture = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

/// Where decisions are made. Called from the gRPC runtime thread; must not block it.
pub trait DecisionBackend: Send + Sync + 'static {
    /// The engine the backend decides with: used to describe limiters in answers
    /// (policy name, hash, component id, status code, limit-by key, bucket parameters).
    fn engine(&self) -> &Engine;

    /// Decides `flow`: takes tokens from every matching limiter, or none if one rejects.
    fn check(&self, flow: OwnedFlow) -> DecisionFuture;
}

/// Why a backend could not decide.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The flow cannot be judged (e.g. a tokens label that is not a cost); nothing was taken.
    /// `Check` answers it REJECTED with status 400 and `ShouldRateLimit` OVER_LIMIT, never with
    /// an RPC error (the SDKs and Envoy let a flow run on RPC errors): see
    /// [`crate::flowcontrol::unjudgeable_response`]. As a bare [`tonic::Status`] (the `From`
    /// below) it is `INVALID_ARGUMENT`.
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// The backend cannot answer now (shutting down, overloaded). Answered with `UNAVAILABLE`.
    #[error("decision backend unavailable: {0}")]
    Unavailable(String),
}

impl From<BackendError> for tonic::Status {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Flow(e) => tonic::Status::invalid_argument(e.to_string()),
            BackendError::Unavailable(_) => tonic::Status::unavailable(e.to_string()),
        }
    }
}
