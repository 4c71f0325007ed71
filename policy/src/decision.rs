//! What limiters say about a flow, and how their answers combine into one [`Decision`].

use crate::engine::Engine;
use crate::flow::FlowId;
use crate::identity::{LimiterId, RejectReason};
use smallvec::SmallVec;

/// What one limiter said about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Tokens taken.
    Accepted,
    /// Not enough tokens: this limiter rejects the flow.
    Rejected,
    /// The flow lacks the limit label: accepted, nothing taken.
    KeyNotFound,
    /// Tokens were taken, then handed back because another limiter rejected the flow.
    Returned,
}

/// Why a component refused a flow (finer than [`RejectReason`], for operators and the
/// load generator).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Not enough tokens (or free capacity) now, and the flow could not wait.
    Exhausted,
    /// The flow waited in a scheduler's queue until its deadline or queue timeout.
    TimedOut,
    /// The shard's wait queues were full, so the flow could not wait.
    QueueFull,
    /// The shard's in-flight ledger was full, so the flow could not be tracked.
    TooManyFlows,
    /// The server was shutting down while the flow waited.
    ShuttingDown,
    /// The component that was to decide is gone (a reload removed it while the flow waited).
    Removed,
}

impl Refusal {
    /// A short name for logs, metrics and the load generator.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Exhausted => "exhausted",
            Refusal::TimedOut => "timed_out",
            Refusal::QueueFull => "queue_full",
            Refusal::TooManyFlows => "too_many_flows",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::Removed => "removed",
        }
    }
}

/// One limiter's part of a decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterOutcome {
    /// Which limiter.
    pub limiter: LimiterId,
    /// What it said.
    pub kind: OutcomeKind,
    /// Tokens asked for.
    pub tokens: f64,
    /// Tokens left in the bucket after this decision.
    pub remaining: f64,
    /// Tokens in the bucket before the take.
    pub current: f64,
    /// When rejected: ns until enough tokens exist ([`crate::WAIT_FOREVER`] = never).
    pub wait_ns: u64,
    /// When rejected: why.
    pub refusal: Option<Refusal>,
    /// Concurrency components, when accepted: the flow's handle, which its end returns.
    pub flow: Option<FlowId>,
}

impl LimiterOutcome {
    /// An outcome for a flow that lacks the limit label: accepted, nothing taken.
    pub fn key_not_found(limiter: LimiterId, tokens: f64) -> LimiterOutcome {
        LimiterOutcome {
            limiter,
            kind: OutcomeKind::KeyNotFound,
            tokens,
            remaining: 0.0,
            current: 0.0,
            wait_ns: 0,
            refusal: None,
            flow: None,
        }
    }

    /// A refusal that touched no bucket (queue full, shutting down, removed).
    pub fn refused(limiter: LimiterId, tokens: f64, refusal: Refusal) -> LimiterOutcome {
        LimiterOutcome {
            limiter,
            kind: OutcomeKind::Rejected,
            tokens,
            remaining: 0.0,
            current: 0.0,
            wait_ns: 0,
            refusal: Some(refusal),
            flow: None,
        }
    }

    /// Records that this accepted take was handed back to a bucket of `capacity`: the
    /// bucket holds what it held after the take plus the tokens, capped at its capacity.
    /// The one place an outcome becomes `Returned`, whichever shard held the bucket.
    pub fn mark_returned(&mut self, capacity: f64) {
        debug_assert_eq!(self.kind, OutcomeKind::Accepted);
        self.remaining = (self.remaining + self.tokens).min(capacity);
        self.kind = OutcomeKind::Returned;
    }
}

/// Per-limiter outcomes, inline for the common case.
pub type Outcomes = SmallVec<[LimiterOutcome; 2]>;

/// The answer for a flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// false when any limiter rejected.
    pub accepted: bool,
    /// The largest wait among rejecting limiters; 0 when accepted.
    pub wait_ns: u64,
    /// One entry per matching limiter, in limiter order.
    pub limiters: Outcomes,
}

impl Decision {
    /// Combines outcomes. Callers have already returned the tokens of accepted limiters
    /// when any rejected (see [`Decision::needs_return`]).
    pub fn from_outcomes(limiters: Outcomes) -> Decision {
        let rejected = limiters.iter().filter(|o| o.kind == OutcomeKind::Rejected);
        let wait_ns = rejected.clone().map(|o| o.wait_ns).max().unwrap_or(0);
        let accepted = rejected.count() == 0;
        Decision {
            accepted,
            wait_ns,
            limiters,
        }
    }

    /// Whether any outcome rejects: then every `Accepted` outcome must be handed back.
    pub fn needs_return(outcomes: &[LimiterOutcome]) -> bool {
        outcomes.iter().any(|o| o.kind == OutcomeKind::Rejected)
    }

    /// Why the flow was rejected: the first rejecting limiter's reason (None if accepted).
    pub fn reject_reason(&self, engine: &Engine) -> Option<RejectReason> {
        self.limiters
            .iter()
            .find(|o| o.kind == OutcomeKind::Rejected)
            .map(|o| {
                engine
                    .get_limiter(o.limiter)
                    .map_or(RejectReason::RateLimited, |spec| spec.kind.reject_reason())
            })
    }

    /// The HTTP status to deny with: the first rejecting limiter's.
    pub fn denied_status_code(&self, engine: &Engine) -> Option<u16> {
        self.limiters
            .iter()
            .find(|o| o.kind == OutcomeKind::Rejected)
            .and_then(|o| engine.get_limiter(o.limiter))
            .map(|spec| spec.denied_status_code)
    }
}
