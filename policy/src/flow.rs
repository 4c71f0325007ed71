//! [`FlowId`]: the handle of a flow holding concurrency tokens, which its end (FlowEnd) or
//! expiry returns.
//!
//! The id names the shard whose ledger holds the flow in its top bits, so any shard (or
//! the gRPC thread) can send an end straight to the owner without a lookup:
//!
//! ```text
//!  63        52 51                                        0
//!  +-----------+------------------------------------------+
//!  | shard (12)| sequence (52): a keyed permutation of a   |
//!  |           | counter, unguessable (`crate::flow_ids`)  |
//!  +-----------+------------------------------------------+
//! ```
//!
//! A client cannot guess other clients' ids from its own, and each process draws a new key,
//! so an id from before a restart is (with overwhelming probability) unknown to the new
//! process: ending it is harmless and reported as unknown.

use std::fmt;

/// Bits of a [`FlowId`] that carry the sequence.
pub const SEQUENCE_BITS: u32 = 52;
/// Most shards a flow id can name (the config allows at most 1,024).
pub const MAX_FLOW_SHARDS: usize = 1 << (64 - SEQUENCE_BITS);

/// The handle of a flow holding concurrency tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(u64);

impl FlowId {
    /// The id of sequence `seq` (taken modulo 2^52) on `shard`.
    pub fn new(shard: u16, seq: u64) -> FlowId {
        let shard = u64::from(shard) & ((1 << (64 - SEQUENCE_BITS)) - 1);
        FlowId((shard << SEQUENCE_BITS) | (seq & ((1 << SEQUENCE_BITS) - 1)))
    }

    /// An id as it travels (binary protocol, gRPC `request_id`). Any number is a
    /// well-formed id; an unknown one ends nothing.
    pub fn from_u64(raw: u64) -> FlowId {
        FlowId(raw)
    }

    /// The number on the wire.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The shard whose ledger holds the flow.
    pub fn shard(self) -> usize {
        (self.0 >> SEQUENCE_BITS) as usize
    }

    /// Parses the form [`fmt::Display`] writes (16 hex digits), as gRPC `request_id`s carry it.
    pub fn parse(text: &str) -> Option<FlowId> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(FlowId)
    }
}

impl fmt::Display for FlowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_text_round_trip() {
        let id = FlowId::new(1023, u64::MAX);
        assert_eq!(id.shard(), 1023);
        assert_eq!(FlowId::parse(&id.to_string()), Some(id));
        assert_eq!(FlowId::new(3, 7).shard(), 3);
        assert_eq!(FlowId::parse("xyz"), None);
        assert_eq!(FlowId::parse("00000000000000001"), None, "17 digits");
    }
}
