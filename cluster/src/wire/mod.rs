//! Gossip datagrams: one authenticated envelope around two payload codecs.
//!
//! Every datagram a node sends or accepts on its gossip port has this shape:
//!
//! ```text
//!  0      2     3      4                                     n-16         n
//!  +------+-----+------+-------------------------------------+------------+
//!  | "TG" | ver | kind | payload (<= MAX_PAYLOAD bytes)      | HMAC tag   |
//!  +------+-----+------+-------------------------------------+------------+
//!                       kind 1 MEMBERSHIP: foca's SWIM message (foca_codec)
//!                       kind 2 BATCH:      rkyv archive of `Batch` (deltas or levels)
//!                       kind 3 ACKS:       rkyv archive of `Acks`
//!                       kind 4 LEAVE:      rkyv archive of `Leave`
//!                       kind 5 POLICIES:   rkyv archive of `Policies` (policy set digest)
//! ```
//!
//! Decoding is bounded: a datagram longer than [`MAX_DATAGRAM`] is refused before it is
//! looked at, the tag is checked before any payload byte is parsed, rkyv archives are
//! validated (bytecheck) and then checked against the documented limits, and the foca codec
//! checks the bytes remaining before every read. Every failure is a [`WireError`] with a
//! static reason; the caller counts it and drops the datagram, and nothing else changes.
//!
//! # Layout
//! - [`envelope`]: magic, version, kind and the HMAC-SHA256 tag ([`Auth`]).
//! - [`payload`]: the archived payloads ([`Batch`], [`Acks`], [`Leave`], [`Policies`]), how
//!   a batch names its limiters ([`LimiterRef`]), their decoders and size bounds.
//! - [`foca_codec`]: foca's SWIM messages and [`crate::NodeId`], hand-written and bounded.

pub mod envelope;
pub mod foca_codec;
pub mod payload;

pub use envelope::{
    Auth, Kind, HEADER_LEN, INSECURE_LOOPBACK_SECRET, MAGIC, MAX_DATAGRAM, MAX_PAYLOAD, TAG_LEN,
    VERSION,
};
pub use foca_codec::{CodecError, FocaCodec};
pub use payload::{
    decode_acks, decode_batch, decode_leave, decode_policies, encode, entry_cost, limiter_cost,
    Acks, Batch, Entry, Leave, LimiterRef, Op, Policies, Serializer, BATCH_OVERHEAD,
    MAX_ACKS_PER_DATAGRAM, MAX_KEY_LEN, MAX_LIMITERS_PER_BATCH, MAX_POLICY_NAME_LEN,
};

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Failed authentication (wrong secret, tampered, truncated): counted as `auth_failed`.
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    /// Authentic but malformed, or of a version this node does not speak: counted as
    /// `invalid`.
    #[error("invalid datagram: {0}")]
    Invalid(&'static str),
    /// Would not fit a datagram (a bug on the sending side, never input).
    #[error("too large for one datagram")]
    TooLarge,
}
