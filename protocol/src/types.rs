//! Owned reply types (server → client). The server builds them from its own decision type and
//! encodes them with [`crate::encode`]; the client gets them back from [`crate::decode_reply`].
//!
//! The types carry everything version 2 can say; encoding for a version-1 connection drops
//! what version 1 cannot carry (flow ids, refusals, per-control-point routing keys) and sends
//! [`DecisionReason::NoTokens`] as `RATE_LIMITED`.

use std::num::NonZeroU64;

use smallvec::SmallVec;

use crate::frame::ErrorCode;
use crate::version::ProtocolVersion;

/// The overall decision of a check. A value, never an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// 0: every matching limiter accepted.
    Accepted,
    /// 1: at least one limiter rejected; tokens taken by the others were handed back.
    Rejected,
}

impl Decision {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Rejected => 1,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Accepted),
            1 => Some(Self::Rejected),
            _ => None,
        }
    }
}

/// Why a check was decided as it was (Aperture's reject reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionReason {
    /// 0: no particular reason (accepted).
    None,
    /// 1: a rate limiter or a concurrency limiter said no.
    RateLimited,
    /// 2 (version 2; sent as 1 to a version-1 connection): a quota or concurrency scheduler
    /// could not admit the flow in time.
    NoTokens,
}

impl DecisionReason {
    /// The wire value in `version`: version 1 has no `NO_TOKENS` and gets `RATE_LIMITED`.
    pub const fn as_u8(self, version: ProtocolVersion) -> u8 {
        match (self, version) {
            (Self::None, _) => 0,
            (Self::RateLimited, _) | (Self::NoTokens, ProtocolVersion::V1) => 1,
            (Self::NoTokens, ProtocolVersion::V2 | ProtocolVersion::V3) => 2,
        }
    }

    /// Parses a wire value of `version`.
    pub const fn from_u8(v: u8, version: ProtocolVersion) -> Option<Self> {
        match (v, version) {
            (0, _) => Some(Self::None),
            (1, _) => Some(Self::RateLimited),
            (2, ProtocolVersion::V2 | ProtocolVersion::V3) => Some(Self::NoTokens),
            _ => None,
        }
    }

    /// The lower-case name used by the CLI and logs (`none`, `rate_limited`, `no_tokens`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::RateLimited => "rate_limited",
            Self::NoTokens => "no_tokens",
        }
    }
}

/// Why a component refused a flow (version 2), finer than [`DecisionReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// 1: not enough tokens (or free capacity) now, and the flow could not wait.
    Exhausted,
    /// 2: the flow waited in a scheduler's queue until its deadline or queue timeout.
    TimedOut,
    /// 3: the shard's wait queues were full, so the flow could not wait.
    QueueFull,
    /// 4: the shard's in-flight ledger was full, so the flow could not be tracked.
    TooManyFlows,
    /// 5: the server was shutting down while the flow waited.
    ShuttingDown,
    /// 6: the component that was to decide is gone (a reload removed it while the flow waited).
    Removed,
}

impl Refusal {
    /// The wire value (0 on the wire means "no refusal").
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Exhausted => 1,
            Self::TimedOut => 2,
            Self::QueueFull => 3,
            Self::TooManyFlows => 4,
            Self::ShuttingDown => 5,
            Self::Removed => 6,
        }
    }

    /// Parses a wire value: `Some(None)` for 0, `None` for a value no version defines.
    pub const fn from_u8(v: u8) -> Option<Option<Self>> {
        match v {
            0 => Some(None),
            1 => Some(Some(Self::Exhausted)),
            2 => Some(Some(Self::TimedOut)),
            3 => Some(Some(Self::QueueFull)),
            4 => Some(Some(Self::TooManyFlows)),
            5 => Some(Some(Self::ShuttingDown)),
            6 => Some(Some(Self::Removed)),
            _ => None,
        }
    }

    /// The lower-case name used by the CLI, logs and the load generator.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "exhausted",
            Self::TimedOut => "timed_out",
            Self::QueueFull => "queue_full",
            Self::TooManyFlows => "too_many_flows",
            Self::ShuttingDown => "shutting_down",
            Self::Removed => "removed",
        }
    }
}

/// What one limiter did with a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimiterOutcome {
    /// 0: tokens taken.
    Accepted,
    /// 1: not enough tokens.
    Rejected,
    /// 2: the flow lacked the limiter's `limit_by_label_key` label.
    KeyNotFound,
    /// 3: accepted, then handed back because another limiter rejected the check.
    Returned,
}

impl LimiterOutcome {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Rejected => 1,
            Self::KeyNotFound => 2,
            Self::Returned => 3,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Accepted),
            1 => Some(Self::Rejected),
            2 => Some(Self::KeyNotFound),
            3 => Some(Self::Returned),
            _ => None,
        }
    }
}

/// One limiter's part in a [`CheckReply`]. 37 bytes on the wire in version 1, 46 in version 2
/// (which adds `flow_id` and `refusal`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterResult {
    /// Index into `HELLO_REPLY.policy_names`: which policy this is.
    pub limiter_index: u16,
    /// What the limiter did.
    pub outcome: LimiterOutcome,
    /// The HTTP status a proxy should deny with when this limiter rejects (e.g. 429).
    pub status_code: u16,
    /// Tokens this check asked of the limiter.
    pub tokens: f64,
    /// Tokens left in the bucket after the check.
    pub remaining: f64,
    /// Tokens in the bucket before the check.
    pub current: f64,
    /// Nanoseconds until `tokens` would be available (0 when accepted; `u64::MAX` = never,
    /// e.g. more tokens than the bucket's capacity).
    pub wait_ns: u64,
    /// Version 2: a concurrency component that accepted gives the flow's id, which a
    /// `FLOW_END` returns. `None` (0 on the wire) otherwise, and always in version 1.
    pub flow_id: Option<NonZeroU64>,
    /// Version 2: why this limiter refused the flow. `None` when it did not refuse, and always
    /// in version 1.
    pub refusal: Option<Refusal>,
}

impl LimiterResult {
    /// The flow id as a number, for [`crate::encode_flow_end`] (`None` when there is none).
    pub fn flow_id(&self) -> Option<u64> {
        self.flow_id.map(NonZeroU64::get)
    }
}

/// The limiter results of a reply. Four inline covers the common case without touching the
/// heap on the server's hot path.
pub type Limiters = SmallVec<[LimiterResult; 4]>;

/// What a [`CheckReply`] says before its per-limiter detail. An encoder that makes the detail
/// as it writes ([`crate::encode_check_reply_from`], [`crate::BatchReplyWriter::reply_from`])
/// takes this and an iterator of [`LimiterResult`], so no reply struct is built per check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplyHead {
    /// Accepted or rejected.
    pub decision: Decision,
    /// Why.
    pub reason: DecisionReason,
    /// Largest wait among the limiters; 0 when accepted.
    pub wait_ns: u64,
}

/// The answer to one check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReply {
    /// Accepted or rejected.
    pub decision: Decision,
    /// Why.
    pub reason: DecisionReason,
    /// Largest wait among the limiters; 0 when accepted.
    pub wait_ns: u64,
    /// Per-limiter detail, in the server's evaluation order; at most [`crate::MAX_LIMITERS`].
    pub limiters: Limiters,
}

impl CheckReply {
    /// The reply's fields before its limiters.
    pub fn head(&self) -> ReplyHead {
        ReplyHead {
            decision: self.decision,
            reason: self.reason,
            wait_ns: self.wait_ns,
        }
    }

    /// True if the check was accepted.
    pub fn accepted(&self) -> bool {
        self.decision == Decision::Accepted
    }

    /// The ids of the flows this check holds in concurrency components (version 2), in
    /// limiter order: end each with `FLOW_END` when the work is done.
    pub fn flow_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.limiters.iter().filter_map(LimiterResult::flow_id)
    }

    /// The refusal of the first limiter that refused the flow (version 2).
    pub fn refusal(&self) -> Option<Refusal> {
        self.limiters.iter().find_map(|l| l.refusal)
    }
}

/// An `ERROR` frame's content, also used for a failed item of a `BATCH_REPLY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail; at most [`crate::MAX_STRING_LEN`] bytes on the wire.
    pub message: String,
}

/// One item of a `BATCH_REPLY`, in request order.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchItem {
    /// Tag 0: the check was decided.
    Reply(CheckReply),
    /// Tag 1: this check failed (e.g. `UNKNOWN_INTERNED_ID`); the others were still decided.
    Error(ErrorReply),
}

/// Version 2: the label keys that route the checks of one control point, in priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPointRouting {
    /// The control point.
    pub control_point: String,
    /// The distinct `limit_by_label_key`s of the limiters on it, in policy order (empty when
    /// none is keyed: every bucket it uses is the shared one, `""`).
    pub routing_label_keys: Vec<String>,
}

/// The outcome of ending one flow (`FLOW_END_REPLY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowEndStatus {
    /// 0: the flow was in flight; its tokens are back.
    Ended,
    /// 1: no such flow: never started here, already ended (by an earlier `FLOW_END` or by
    /// expiry after `max_inflight_duration`), or started before the server restarted. Harmless.
    Unknown,
}

impl FlowEndStatus {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Ended => 0,
            Self::Unknown => 1,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Ended),
            1 => Some(Self::Unknown),
            _ => None,
        }
    }

    /// `true` → [`FlowEndStatus::Ended`]: what the server's end call says.
    pub const fn from_ended(ended: bool) -> Self {
        if ended {
            Self::Ended
        } else {
            Self::Unknown
        }
    }

    /// The lower-case name the CLI prints (`ended`, `unknown`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ended => "ended",
            Self::Unknown => "unknown",
        }
    }
}

/// The server's handshake answer: everything a shard-aware client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// The version the connection speaks from this reply on: `min(HELLO.version, server's)`.
    /// It also decides this reply's own layout.
    pub version: ProtocolVersion,
    /// The cluster node's id.
    pub node_id: String,
    /// Number of shards (cores) serving buckets: the `nr_shards` of
    /// [`crate::routing::shard_for`].
    pub shard_count: u16,
    /// [`crate::routing::HASH_FNV1A_64`] (1) in version 1.
    pub hash_algo: u8,
    /// The shard this connection landed on; `None` (0xFFFF on the wire) on the shared port.
    pub shard_index: Option<u16>,
    /// Shard-aware ports, indexed by shard; empty if the server only has a shared port.
    pub shard_ports: Vec<u16>,
    /// Label keys that decide routing, in priority order, whatever the control point (see
    /// [`crate::routing::routing_value`]): the version-1 routing rule.
    pub routing_label_keys: Vec<String>,
    /// Policy names: `LimiterResult.limiter_index` indexes this list.
    pub policy_names: Vec<String>,
    /// Largest frame `len` the server accepts.
    pub max_frame_len: u32,
    /// Most checks per `CHECK_BATCH` the server accepts.
    pub max_batch: u16,
    /// Most requests pending per connection (hopped or waiting checks) before the server
    /// answers `OVERLOADED`.
    pub max_in_flight: u32,
    /// Version 2: the routing keys of each control point that has a limiter (see
    /// [`crate::routing::RoutingKeys`]). Not sent in version 1 (decoded as empty).
    pub control_point_routing: Vec<ControlPointRouting>,
}

/// Cluster membership state of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// 0: answering probes.
    Alive,
    /// 1: missed probes, not yet declared down.
    Suspect,
    /// 2: declared down.
    Down,
    /// 3: left the cluster deliberately.
    Left,
}

impl MemberState {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Alive => 0,
            Self::Suspect => 1,
            Self::Down => 2,
            Self::Left => 3,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Alive),
            1 => Some(Self::Suspect),
            2 => Some(Self::Down),
            3 => Some(Self::Left),
            _ => None,
        }
    }
}

/// One node of the cluster as the answering server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's id.
    pub node_id: String,
    /// Its address (`host:port`).
    pub address: String,
    /// Its state.
    pub state: MemberState,
    /// Milliseconds since the answering server last heard from it.
    pub last_contact_ms: u64,
    /// The digest of the member's policy set (the `digest` of its `/api/v1/policies`), as
    /// far as the answering server knows it: `None` when it has not heard it yet (or the
    /// member runs a version that does not announce it), and always `None` on a
    /// connection below version 3.
    pub policy_digest: Option<u64>,
}

/// A decoded server → client frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `HELLO_REPLY`.
    Hello(HelloReply),
    /// `CHECK_REPLY`.
    Check(CheckReply),
    /// `BATCH_REPLY`.
    Batch(Vec<BatchItem>),
    /// `MEMBERS_REPLY`.
    Members(Vec<Member>),
    /// `PONG` with the echoed payload.
    Pong(Vec<u8>),
    /// `FLOW_END_REPLY`: one status per flow id, in request order.
    FlowEnd(Vec<FlowEndStatus>),
    /// `ERROR`.
    Error(ErrorReply),
}
