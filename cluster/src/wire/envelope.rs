//! The envelope every gossip datagram travels in: magic, version, kind, payload, tag.
//!
//! ```text
//!  0      2     3      4                                     n-16         n
//!  +------+-----+------+-------------------------------------+------------+
//!  | "TG" | ver | kind | payload (<= MAX_PAYLOAD bytes)      | HMAC tag   |
//!  +------+-----+------+-------------------------------------+------------+
//! ```
//!
//! The tag is HMAC-SHA256 over bytes `0..n-16` with the cluster secret, truncated to its
//! first 16 bytes (RFC 2104 §5 allows truncation to half the hash; 128 bits cannot be
//! forged by guessing). It is checked in constant time *before* any payload byte is
//! parsed, so an unauthenticated datagram can only cost one HMAC.

use super::WireError;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Largest datagram sent or accepted. 1,400 bytes stays under a 1,500-byte Ethernet MTU
/// with IPv6 and UDP headers and some tunnel overhead (RFC 8085 §3.2), so nothing fragments.
pub const MAX_DATAGRAM: usize = 1400;
/// Envelope bytes before the payload: magic (2), version (1), kind (1).
pub const HEADER_LEN: usize = 4;
/// Truncated HMAC-SHA256 tag length.
pub const TAG_LEN: usize = 16;
/// Payload bytes available in one datagram.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN;
/// Envelope magic: rejects stray traffic before the HMAC.
pub const MAGIC: [u8; 2] = *b"TG";
/// Envelope version; a node drops (and counts as `invalid`) versions it does not speak.
///
/// Version 2 names limiters by policy name and definition digest in every batch; version 1
/// named them by their position in the `policies:` list. The two cannot be mixed: a
/// version-1 node and a version-2 node ignore each other entirely (membership included), as
/// if partitioned, so an upgrade is a rolling restart during which each side enforces the
/// limits on its own.
pub const VERSION: u8 = 2;
/// Secret used when none is configured. Only allowed on loopback (config validation):
/// it still rejects corrupted datagrams but authenticates nothing.
pub const INSECURE_LOOPBACK_SECRET: &[u8] = b"tollgate-insecure-loopback-only";

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A foca SWIM message.
    Membership = 1,
    /// Replicated deltas or levels ([`super::Batch`]).
    Batch = 2,
    /// Acknowledged batch sequence numbers ([`super::Acks`]).
    Acks = 3,
    /// The sender is leaving gracefully ([`super::Leave`]).
    Leave = 4,
    /// The digest of the sender's policy set ([`super::Policies`]). Added within version 2:
    /// a node that predates it drops these datagrams (counted `invalid`) and works on,
    /// only without knowing its peers' digests.
    Policies = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Membership),
            2 => Some(Kind::Batch),
            3 => Some(Kind::Acks),
            4 => Some(Kind::Leave),
            5 => Some(Kind::Policies),
            _ => None,
        }
    }
}

/// The keyed HMAC, cloned per datagram (keying once saves the key schedule each time).
#[derive(Clone)]
pub struct Auth {
    mac: Hmac<Sha256>,
}

impl Auth {
    /// Keys the HMAC with the cluster secret (any length; HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Auth {
        let mac = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
            Ok(mac) => mac,
            // HMAC accepts every key length; this arm is unreachable but keeps us panic-free.
            Err(_) => Auth::fallback(),
        };
        Auth { mac }
    }

    fn fallback() -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default());
        mac.update(INSECURE_LOOPBACK_SECRET);
        mac
    }

    /// Frames `payload` as a `kind` datagram.
    pub fn seal(&self, kind: Kind, payload: &[u8]) -> Result<Vec<u8>, WireError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WireError::TooLarge);
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(kind as u8);
        out.extend_from_slice(payload);
        let mut mac = self.mac.clone();
        mac.update(&out);
        let tag = mac.finalize().into_bytes();
        out.extend_from_slice(&tag[..TAG_LEN]);
        Ok(out)
    }

    /// Authenticates a datagram; returns its kind and payload.
    pub fn open<'a>(&self, datagram: &'a [u8]) -> Result<(Kind, &'a [u8]), WireError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(WireError::Auth("longer than MAX_DATAGRAM"));
        }
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return Err(WireError::Auth("shorter than header and tag"));
        }
        if datagram[..2] != MAGIC {
            return Err(WireError::Auth("bad magic"));
        }
        let (body, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = self.mac.clone();
        mac.update(body);
        mac.verify_truncated_left(tag)
            .map_err(|_| WireError::Auth("bad tag"))?;
        if body[2] != VERSION {
            return Err(WireError::Invalid("unknown version"));
        }
        let kind = Kind::from_u8(body[3]).ok_or(WireError::Invalid("unknown kind"))?;
        Ok((kind, &body[HEADER_LEN..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_wrong_secret_fails() {
        let a = Auth::new(b"secret-a");
        let b = Auth::new(b"secret-b");
        let d = a.seal(Kind::Batch, b"hello").expect("seal");
        assert_eq!(d.len(), HEADER_LEN + 5 + TAG_LEN);
        assert_eq!(a.open(&d), Ok((Kind::Batch, &b"hello"[..])));
        assert!(matches!(b.open(&d), Err(WireError::Auth(_))));
        let mut flipped = d.clone();
        flipped[5] ^= 1;
        assert!(matches!(a.open(&flipped), Err(WireError::Auth(_))));
        assert!(matches!(a.open(&d[..10]), Err(WireError::Auth(_))));
        assert_eq!(
            a.seal(Kind::Batch, &[0; MAX_PAYLOAD + 1]),
            Err(WireError::TooLarge)
        );
    }

    /// A node of another wire version (authentic: same secret) is dropped as invalid.
    #[test]
    fn another_version_is_invalid() {
        let auth = Auth::new(b"s");
        let mut body = vec![MAGIC[0], MAGIC[1], VERSION - 1, Kind::Batch as u8, 0];
        let mut mac = auth.mac.clone();
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        assert_eq!(auth.open(&body), Err(WireError::Invalid("unknown version")));
    }
}
