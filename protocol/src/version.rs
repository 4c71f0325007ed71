//! Protocol versions and their per-connection negotiation.
//!
//! A connection starts in version 1. A client that sends `HELLO { version: v }` (v >= 1)
//! switches the connection to `min(v, PROTOCOL_VERSION)`: the server answers with a
//! `HELLO_REPLY` in that version, and **every frame the server writes after that
//! `HELLO_REPLY` on the connection** is encoded in it, whichever request it answers. A client
//! therefore decodes each reply in the version of the last `HELLO_REPLY` it read on that
//! connection (version 1 before any).
//!
//! What the version changes is the layout of replies (`HELLO_REPLY`, `CHECK_REPLY`,
//! `BATCH_REPLY`, `MEMBERS_REPLY`); requests decode the same way on every connection.

/// A protocol version this crate speaks. It cannot hold a version that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// Version 1: the original protocol. Spoken by a connection that never sent `HELLO`.
    V1,
    /// Version 2: wait budgets, flow ids, refusals, the `NO_TOKENS` reason, `FLOW_END`, and
    /// per-control-point routing keys in `HELLO_REPLY`.
    V2,
    /// Version 3: each member of `MEMBERS_REPLY` carries the digest of its policy set (as
    /// far as the answering node knows it). Every other frame is laid out as in version 2.
    V3,
}

impl ProtocolVersion {
    /// The newest version this crate speaks ([`crate::PROTOCOL_VERSION`]).
    pub const LATEST: ProtocolVersion = ProtocolVersion::V3;

    /// The wire value.
    pub const fn as_u16(self) -> u16 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }

    /// Exactly this version, if it exists (a `HELLO_REPLY.version`).
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            3 => Some(Self::V3),
            _ => None,
        }
    }

    /// The version a connection speaks after a client's `HELLO { version: client }`:
    /// `min(client, LATEST)`. `None` for 0, which no protocol ever was
    /// (`UNSUPPORTED_VERSION`).
    pub const fn negotiate(client: u16) -> Option<Self> {
        match client {
            0 => None,
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => Some(Self::LATEST),
        }
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_lower_version() {
        assert_eq!(ProtocolVersion::negotiate(0), None);
        assert_eq!(ProtocolVersion::negotiate(1), Some(ProtocolVersion::V1));
        assert_eq!(ProtocolVersion::negotiate(2), Some(ProtocolVersion::V2));
        assert_eq!(ProtocolVersion::negotiate(3), Some(ProtocolVersion::V3));
        assert_eq!(
            ProtocolVersion::negotiate(u16::MAX),
            Some(ProtocolVersion::V3)
        );
        assert_eq!(
            ProtocolVersion::LATEST.as_u16(),
            crate::frame::PROTOCOL_VERSION
        );
        for v in 0..=4 {
            assert_eq!(
                ProtocolVersion::from_u16(v).map(ProtocolVersion::as_u16),
                (1..=3).contains(&v).then_some(v)
            );
        }
    }
}
