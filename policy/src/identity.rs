//! How limiters are named.
//!
//! Two names, for two audiences:
//! - [`LimiterId`]: this process's handle for a limiter. Dense and small, it indexes the
//!   engine's tables and keys bucket state on the hot path. Only an [`Engine`] makes one,
//!   and an engine built from an older one ([`Engine::successor`]) gives a limiter whose
//!   identity is unchanged the same id, so bucket state survives a reload untouched.
//! - The stable identity, for everything that crosses a node boundary: the policy's name
//!   (unique in a config) plus a [`Digest`] of the limiter's definition. Replication
//!   carries it with every delta; a receiver [`Engine::resolve`]s it to a local id or
//!   drops the delta (unknown limiter, or the same name with another definition).
//!
//! Neither is ever a position in the `policies:` list, which a config edit can reorder.
//!
//! [`Engine`]: crate::Engine
//! [`Engine::successor`]: crate::Engine::successor
//! [`Engine::resolve`]: crate::Engine::resolve

use std::fmt;

/// This process's handle for a limiter (see the module docs). Not meaningful on another
/// node or in another process: never put it on a wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimiterId(pub(crate) u32);

impl LimiterId {
    /// The id as a number (metrics labels, dense tables).
    #[inline]
    pub fn get(self) -> u32 {
        self.0
    }
}

/// What kind of component a limiter is. Part of its identity: a policy that changes kind
/// under the same name is a different limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// A token bucket per label value that answers at once.
    RateLimiter,
    /// A token bucket per label value whose flows wait, by priority, for tokens.
    QuotaScheduler,
    /// At most N tokens of flows in flight per label value; answers at once.
    ConcurrencyLimiter,
    /// At most N tokens of flows in flight per label value; flows wait, by priority.
    ConcurrencyScheduler,
}

/// When a component decides within a check, after Aperture's stage order: rate and
/// concurrency limiters answer at once, then concurrency schedulers, then quota schedulers
/// (each stage only if the previous accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Rate limiters and concurrency limiters: a take that succeeds or fails now.
    Immediate,
    /// Concurrency schedulers: wait in a queue for capacity.
    ConcurrencyScheduler,
    /// Quota schedulers: wait in a queue for tokens.
    QuotaScheduler,
}

/// Why a flow was refused, as Aperture's `RejectReason` spells the two Tollgate uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A rate limiter or concurrency limiter said no (default status 429).
    RateLimited,
    /// A scheduler could not admit the flow in time (default status 503).
    NoTokens,
}

impl ComponentKind {
    /// The name used in config files, digests, logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::RateLimiter => "rate_limiter",
            ComponentKind::QuotaScheduler => "quota_scheduler",
            ComponentKind::ConcurrencyLimiter => "concurrency_limiter",
            ComponentKind::ConcurrencyScheduler => "concurrency_scheduler",
        }
    }

    /// When it decides within a check.
    pub fn stage(self) -> Stage {
        match self {
            ComponentKind::RateLimiter | ComponentKind::ConcurrencyLimiter => Stage::Immediate,
            ComponentKind::ConcurrencyScheduler => Stage::ConcurrencyScheduler,
            ComponentKind::QuotaScheduler => Stage::QuotaScheduler,
        }
    }

    /// Whether flows may wait in a queue for it.
    pub fn is_scheduler(self) -> bool {
        self.stage() != Stage::Immediate
    }

    /// Whether it counts flows in flight (tokens come back when the flow ends) rather than
    /// refilling over time.
    pub fn counts_in_flight(self) -> bool {
        matches!(
            self,
            ComponentKind::ConcurrencyLimiter | ComponentKind::ConcurrencyScheduler
        )
    }

    /// The reason a flow it refuses gets.
    pub fn reject_reason(self) -> RejectReason {
        if self.is_scheduler() {
            RejectReason::NoTokens
        } else {
            RejectReason::RateLimited
        }
    }
}

/// FNV-1a 64 of a limiter's canonical definition: its kind and every parameter that shapes
/// its buckets (see `LimiterSpec::definition`). Equal digests mean two nodes' buckets for
/// the same key hold the same kind of tokens, so one node's consumption can be debited on
/// the other's replica.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub u64);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// How a limiter named by a peer (policy name + digest) maps onto this node's engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The same limiter: apply the peer's numbers to this id.
    Local(LimiterId),
    /// No policy of that name here (added or removed on one side of a rolling change).
    Unknown,
    /// A policy of that name with another definition: the numbers do not mean the same.
    DefinitionDiffers {
        /// This node's digest for that policy.
        ours: Digest,
    },
}

/// Builds a [`Digest`] from fields written in a fixed order, each length-prefixed or
/// fixed-width, so no two definitions encode to the same bytes.
pub(crate) struct DigestWriter {
    hash: u64,
}

impl DigestWriter {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> DigestWriter {
        DigestWriter { hash: Self::OFFSET }
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(Self::PRIME);
        }
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes());
        self
    }

    pub(crate) fn f64(&mut self, v: f64) -> &mut Self {
        self.u64(v.to_bits())
    }

    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.bytes(&[u8::from(v)]);
        self
    }

    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
        self
    }

    pub(crate) fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            Some(s) => self.bool(true).str(s),
            None => self.bool(false),
        }
    }

    pub(crate) fn finish(&self) -> Digest {
        Digest(self.hash)
    }
}
