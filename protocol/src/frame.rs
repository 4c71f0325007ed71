//! The frame header, opcodes, flag bits, limits and error codes.
//!
//! Every message in either direction is one frame. All integers are little-endian.
//!
//! ```text
//! +----------------+--------+--------+-------------------+-----------------+
//! | len: u32 LE    | opcode | flags  | request_id: u32 LE| body ...        |
//! +----------------+--------+--------+-------------------+-----------------+
//!   len = number of bytes after the len field (opcode..end of body)
//!   MIN_FRAME_LEN (6) <= len <= max_frame_len
//! ```
//!
//! `flags` is reserved (in versions 1 and 2): it must be zero, and a frame with any bit set is
//! rejected as `MALFORMED_FRAME` (so a later version can give bits a meaning without an old
//! server silently ignoring them). `request_id` is chosen by the client and echoed on the
//! reply; it is what lets replies come back out of order.

/// The newest protocol version this crate speaks. A client sends it in `HELLO`; the connection
/// then speaks `min(client, server)` (see [`crate::ProtocolVersion`]). A client that skips
/// `HELLO` speaks 1.
pub const PROTOCOL_VERSION: u16 = 3;

/// Bytes of the `len` prefix itself.
pub const LEN_PREFIX_LEN: usize = 4;

/// Smallest legal `len`: opcode (1) + flags (1) + request_id (4), i.e. an empty body.
pub const MIN_FRAME_LEN: u32 = 6;

/// Bytes of the whole header: `len` prefix + opcode + flags + request_id. A body starts here.
pub const FRAME_HEADER_LEN: usize = LEN_PREFIX_LEN + MIN_FRAME_LEN as usize;

/// Default bound on a frame's `len`: 1 MiB.
///
/// Why this value: the largest legitimate frame is a full `CHECK_BATCH` ([`MAX_BATCH`] checks of
/// a few dozen bytes each is well under 100 KiB in practice) or a `MEMBERS_REPLY` of a large
/// cluster; 1 MiB leaves an order of magnitude of headroom while capping what one connection can
/// make a peer buffer. Decoders take the bound as a parameter; a frame declaring more is rejected
/// from its 4-byte length prefix, before its body is buffered.
pub const DEFAULT_MAX_FRAME_LEN: u32 = 1024 * 1024;

/// Longest string, in bytes of UTF-8, anywhere in a frame.
///
/// Why this value: control-point names, label keys and label values are identifiers (user ids,
/// tenant names, routes), not documents. 4 KiB fits any sane identifier, and keeps an inline
/// length (< 0x8000) clear of the string-ref "interned" bit.
pub const MAX_STRING_LEN: usize = 4096;

/// Most labels in one check.
///
/// Why this value: real flows carry a handful of labels; 64 bounds the per-check matching work
/// the server does (policies × labels) while leaving room for rich metadata.
pub const MAX_LABELS: usize = 64;

/// Most checks in one `CHECK_BATCH` (and items in its `BATCH_REPLY`).
///
/// Why this value: 1024 amortises the per-frame cost to nothing while keeping one batch's
/// decision time (and thus the head-of-line delay it causes on its shard) well under a
/// millisecond.
pub const MAX_BATCH: usize = 1024;

/// Interned-string ids available per connection: ids are `0..MAX_INTERNED`.
///
/// Why this value: a client interns control points and label keys, a vocabulary of tens to
/// hundreds of names; 4096 slots is ample and bounds the server's per-connection table.
pub const MAX_INTERNED: usize = 4096;

/// Most bytes of interned strings a connection may hold (the sum of the bound strings' lengths).
///
/// Why this value: [`MAX_INTERNED`] × [`MAX_STRING_LEN`] would be 16 MiB per connection, far
/// too much for a server with thousands of connections. 256 KiB still fits 4096 names of 64
/// bytes. A client that would exceed it sends the string inline instead.
pub const MAX_INTERNED_BYTES: usize = 256 * 1024;

/// Most limiter results in one `CHECK_REPLY` (the count is a `u8` on the wire).
pub const MAX_LIMITERS: usize = u8::MAX as usize;

/// Most flow ids in one `FLOW_END` (and statuses in its `FLOW_END_REPLY`).
///
/// Why this value: the same bound as a `CHECK_BATCH` ([`MAX_BATCH`]): ending a flow costs the
/// server about what deciding one does, so one frame's head-of-line delay stays as bounded.
pub const MAX_FLOW_END: usize = MAX_BATCH;

/// Longest API key a `HELLO` may carry, in bytes.
///
/// Why this value: keys are generated tokens (32–64 characters in practice); 256 bytes fits any
/// of them with room to spare, and bounds what a peer that has not authenticated yet can make
/// the server read and compare.
pub const MAX_API_KEY_LEN: usize = 256;

/// Frame opcodes. Requests (client → server) have the top bit clear; replies (server → client)
/// have it set, and a reply to request opcode `op` is `op | 0x80`.
pub mod opcode {
    /// Client → server: the handshake, `version u16, client_name string` and an optional
    /// trailing `api_key string` (required first on every connection when the server has API
    /// keys).
    pub const HELLO: u8 = 0x01;
    /// Client → server: one rate-limit check.
    pub const CHECK: u8 = 0x02;
    /// Client → server: `count u16` checks answered by one `BATCH_REPLY`.
    pub const CHECK_BATCH: u8 = 0x03;
    /// Client → server: bind an interned-string id on this connection. No reply on success.
    pub const INTERN: u8 = 0x04;
    /// Client → server: ask for the cluster membership view (empty body).
    pub const MEMBERS: u8 = 0x05;
    /// Client → server: opaque payload echoed back in `PONG`.
    pub const PING: u8 = 0x06;
    /// Client → server (version 2): `count u16, count × flow_id u64`: end these flows.
    pub const FLOW_END: u8 = 0x07;

    /// Server → client: answer to `HELLO`.
    pub const HELLO_REPLY: u8 = 0x81;
    /// Server → client: answer to `CHECK`.
    pub const CHECK_REPLY: u8 = 0x82;
    /// Server → client: answer to `CHECK_BATCH`.
    pub const BATCH_REPLY: u8 = 0x83;
    /// Server → client: answer to `MEMBERS`.
    pub const MEMBERS_REPLY: u8 = 0x85;
    /// Server → client: answer to `PING`.
    pub const PONG: u8 = 0x86;
    /// Server → client: answer to `FLOW_END`, one status per flow id.
    pub const FLOW_END_REPLY: u8 = 0x87;
    /// Server → client: a request failed; `request_id` names it (0 if unknown).
    pub const ERROR: u8 = 0xFF;
}

/// `CHECK` body flag: a `tokens: f64` follows the control point.
pub const CHECK_FLAG_TOKENS: u8 = 0x01;

/// `CHECK` body flag (version 2): a `wait_budget_ms: u32` follows the tokens field (or the
/// control point when there is no tokens field): how long the client will wait for a decision.
pub const CHECK_FLAG_WAIT: u8 = 0x02;

/// Every `CHECK` flag bit this crate knows; any other bit makes the check malformed.
pub const CHECK_FLAGS_KNOWN: u8 = CHECK_FLAG_TOKENS | CHECK_FLAG_WAIT;

/// Top bit of a string ref: set means "interned id in the low 15 bits", clear means "inline
/// string of this many bytes follows".
pub const STR_REF_INTERNED_BIT: u16 = 0x8000;

/// `HELLO_REPLY.shard_index` on a connection not pinned to a shard (the shared port).
pub const SHARED_PORT_SHARD_INDEX: u16 = 0xFFFF;

/// `ERROR.code`: why a request failed, and what happens to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 1: the frame length was intact but the body did not parse (bad UTF-8, truncated field,
    /// trailing bytes, non-zero reserved flags, limit exceeded). The connection stays usable.
    MalformedFrame,
    /// 2: a frame declared a `len` above the server's `max_frame_len` (or below 6). Framing is
    /// lost: the server sends this error (request_id 0) and closes the connection.
    FrameTooLarge,
    /// 3: `HELLO.version` is higher than the server's; the message names the server's version.
    /// The connection stays open (the client may retry `HELLO` with a lower version).
    UnsupportedVersion,
    /// 4: unknown opcode. The frame is skipped; the connection stays open.
    UnknownOpcode,
    /// 5: a string ref named an id that was never bound by `INTERN` on this connection.
    /// Connection stays open.
    UnknownInternedId,
    /// 6: the frame parsed but the request is invalid (e.g. a tokens label that is not a
    /// number, an INTERN over the byte budget). Connection stays open.
    BadRequest,
    /// 7: too many requests pending on this connection (checks or batches that hop to
    /// another shard or wait in a scheduler queue; requests answered at once never count);
    /// retry later. Connection stays open.
    Overloaded,
    /// 8: reserved for a server that answers requests while draining. This server never
    /// sends it: when it drains it stops reading, answers what it read, and closes (the client
    /// sees the connection close). A client treats it like a closing connection.
    ShuttingDown,
    /// 9: a server bug or an unexpected internal failure. Connection stays open.
    Internal,
    /// 10: the server requires an API key and the connection has not presented a valid one in
    /// `HELLO` before this request (no `HELLO`, a `HELLO` without a key, or a wrong key).
    /// Nothing of the request was applied; the server closes the connection.
    Unauthenticated,
    /// A code this version does not know (kept for forward compatibility).
    Unknown(u16),
}

impl ErrorCode {
    /// The wire value.
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::MalformedFrame => 1,
            Self::FrameTooLarge => 2,
            Self::UnsupportedVersion => 3,
            Self::UnknownOpcode => 4,
            Self::UnknownInternedId => 5,
            Self::BadRequest => 6,
            Self::Overloaded => 7,
            Self::ShuttingDown => 8,
            Self::Internal => 9,
            Self::Unauthenticated => 10,
            Self::Unknown(code) => code,
        }
    }

    /// Parses a wire value; unknown values become [`ErrorCode::Unknown`].
    pub const fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::MalformedFrame,
            2 => Self::FrameTooLarge,
            3 => Self::UnsupportedVersion,
            4 => Self::UnknownOpcode,
            5 => Self::UnknownInternedId,
            6 => Self::BadRequest,
            7 => Self::Overloaded,
            8 => Self::ShuttingDown,
            9 => Self::Internal,
            10 => Self::Unauthenticated,
            other => Self::Unknown(other),
        }
    }

    /// Whether the server closes the connection after sending this error.
    pub const fn closes_connection(self) -> bool {
        matches!(
            self,
            Self::FrameTooLarge | Self::ShuttingDown | Self::Unauthenticated
        )
    }

    /// The upper-snake-case name used in docs and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MalformedFrame => "MALFORMED_FRAME",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::UnknownOpcode => "UNKNOWN_OPCODE",
            Self::UnknownInternedId => "UNKNOWN_INTERNED_ID",
            Self::BadRequest => "BAD_REQUEST",
            Self::Overloaded => "OVERLOADED",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Internal => "INTERNAL",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Unknown(_) => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}({})", self.name(), self.as_u16())
    }
}
