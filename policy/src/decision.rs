//! What limiters say about a flow, and how their answers combine into one [`Decision`].

use crate::engine::Engine;
use crate::identity::LimiterId;
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
}

impl LimiterOutcome {
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

    /// The HTTP status to deny with: the first rejecting limiter's.
    pub fn denied_status_code(&self, engine: &Engine) -> Option<u16> {
        self.limiters
            .iter()
            .find(|o| o.kind == OutcomeKind::Rejected)
            .and_then(|o| engine.get_limiter(o.limiter))
            .map(|spec| spec.denied_status_code)
    }
}
