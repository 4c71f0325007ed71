//! Owned reply types (server → client). The server builds them from its own decision type and
//! encodes them with [`crate::encode`]; the client gets them back from [`crate::decode_reply`].

use smallvec::SmallVec;

use crate::frame::ErrorCode;

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

/// Why a check was decided as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionReason {
    /// 0: no particular reason (accepted).
    None,
    /// 1: a rate limiter ran out of tokens.
    RateLimited,
}

impl DecisionReason {
    /// The wire value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::None => 0,
            Self::RateLimited => 1,
        }
    }

    /// Parses a wire value.
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::RateLimited),
            _ => None,
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

/// One limiter's part in a [`CheckReply`]. 37 bytes on the wire.
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
    /// Nanoseconds until `tokens` would be available (0 when accepted).
    pub wait_ns: u64,
}

/// The limiter results of a reply. Four inline covers the common case without touching the
/// heap on the server's hot path.
pub type Limiters = SmallVec<[LimiterResult; 4]>;

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
    /// True if the check was accepted.
    pub fn accepted(&self) -> bool {
        self.decision == Decision::Accepted
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

/// The server's handshake answer: everything a shard-aware client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloReply {
    /// The server's protocol version.
    pub version: u16,
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
    /// Label keys that decide routing, in priority order (see
    /// [`crate::routing::routing_value`]).
    pub routing_label_keys: Vec<String>,
    /// Policy names: `LimiterResult.limiter_index` indexes this list.
    pub policy_names: Vec<String>,
    /// Largest frame `len` the server accepts.
    pub max_frame_len: u32,
    /// Most checks per `CHECK_BATCH` the server accepts.
    pub max_batch: u16,
    /// Most requests in flight per connection before the server answers `OVERLOADED`.
    pub max_in_flight: u32,
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
    /// `ERROR`.
    Error(ErrorReply),
}
