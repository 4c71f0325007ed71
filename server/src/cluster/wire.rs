//! Gossip datagrams: one authenticated envelope around two payload codecs.
//!
//! Every datagram a node sends or accepts on its gossip port has this shape:
//!
//! ```text
//!  0      2     3      4                                     n-16         n
//!  +------+-----+------+-------------------------------------+------------+
//!  | "TG" | ver | kind | payload (<= MAX_PAYLOAD bytes)      | HMAC tag   |
//!  +------+-----+------+-------------------------------------+------------+
//!                       kind 1 MEMBERSHIP: foca's SWIM message (FocaCodec below)
//!                       kind 2 BATCH:      rkyv archive of `Batch` (deltas or levels)
//!                       kind 3 ACKS:       rkyv archive of `Acks`
//!                       kind 4 LEAVE:      rkyv archive of `Leave`
//! ```
//!
//! The tag is HMAC-SHA256 over bytes `0..n-16` with the cluster secret, truncated to its
//! first 16 bytes (RFC 2104 §5 allows truncation to half the hash; 128 bits cannot be
//! forged by guessing). It is checked in constant time *before* any payload byte is
//! parsed, so an unauthenticated datagram can only cost one HMAC.
//!
//! Decoding is bounded: a datagram longer than [`MAX_DATAGRAM`] is refused before it is
//! looked at, rkyv archives are validated (bytecheck) before use, and the foca codec checks
//! `remaining()` before every read. Every failure is a [`WireError`] with a static reason;
//! the caller counts it and drops the datagram, and nothing else changes.

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, State};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
/// Envelope version; a node drops versions it does not know.
pub const VERSION: u8 = 1;
/// Longest bucket key replicated. Longer label values are not replicated (counted): one
/// entry must fit a datagram with room to spare.
pub const MAX_KEY_LEN: usize = 1024;
/// Longest node id carried in membership messages (config validation enforces it).
pub const MAX_NODE_ID_LEN: usize = 64;
/// Secret used when none is configured. Only allowed on loopback (config validation):
/// it still rejects corrupted datagrams but authenticates nothing.
pub const INSECURE_LOOPBACK_SECRET: &[u8] = b"tollgate-insecure-loopback-only";

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A foca SWIM message.
    Membership = 1,
    /// Replicated deltas or levels ([`Batch`]).
    Batch = 2,
    /// Acknowledged batch sequence numbers ([`Acks`]).
    Acks = 3,
    /// The sender is leaving gracefully ([`Leave`]).
    Leave = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Membership),
            2 => Some(Kind::Batch),
            3 => Some(Kind::Acks),
            4 => Some(Kind::Leave),
            _ => None,
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Failed authentication (wrong secret, tampered, truncated): counted as `auth_failed`.
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    /// Authentic but malformed: counted as `invalid`.
    #[error("invalid datagram: {0}")]
    Invalid(&'static str),
    /// Would not fit a datagram (a bug on the sending side, never input).
    #[error("too large for one datagram")]
    TooLarge,
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

/// What a [`Batch`] asks the receiver to do with its entries.
pub mod op {
    /// Debit `value` tokens (a peer's consumption since its previous batch).
    pub const DEBIT: u8 = 0;
    /// Lower the bucket to at most `value` tokens (state transfer to a joining node).
    pub const LOWER: u8 = 1;
}

/// One bucket's replicated number.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Entry {
    /// Limiter index (both nodes run the same policies; unknown ids are skipped).
    pub limiter: u32,
    /// Bucket key (the limit label's value).
    pub key: String,
    /// Tokens consumed ([`op::DEBIT`]) or the level ([`op::LOWER`]).
    pub value: f64,
}

/// A reliable, acknowledged datagram of entries.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Batch {
    /// The sender's boot nonce: sequence numbers restart with each process.
    pub boot: u64,
    /// Per-boot sequence number, from 1; the receiver applies each (boot, seq) once.
    pub seq: u64,
    /// [`op::DEBIT`] or [`op::LOWER`].
    pub op: u8,
    /// State transfer this batch belongs to (0 = none).
    pub transfer: u32,
    /// Batches in that transfer (0 = none), so the receiver knows when it has them all.
    pub parts: u32,
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Batches received, so the sender stops retransmitting them.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Acks {
    /// The boot of the node whose batches are acknowledged.
    pub boot: u64,
    /// Their sequence numbers.
    pub seqs: Vec<u64>,
}

/// A graceful leave.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct Leave {
    /// The leaving identity's instance (so a replayed LEAVE cannot mark a later instance).
    pub boot: u64,
}

/// Payload bytes a batch header costs, rounded up (measured by a test below).
pub const BATCH_OVERHEAD: usize = 64;
/// Sequence numbers per ACKS datagram: 8 bytes each, well inside [`MAX_PAYLOAD`].
pub const MAX_ACKS_PER_DATAGRAM: usize = 128;

/// Upper bound of the payload bytes one entry adds to a batch archive: the fixed part
/// (limiter 4, string header 8, value 8, padding) plus an out-of-line key.
pub fn entry_cost(key: &str) -> usize {
    32 + key.len()
}

/// The rkyv serializer [`encode`] uses; a payload type is one that implements
/// `for<'a> rkyv::Serialize<Serializer<'a>>` ([`Batch`], [`Acks`], [`Leave`]).
pub type Serializer<'a> = rkyv::api::high::HighSerializer<
    rkyv::util::AlignedVec,
    rkyv::ser::allocator::ArenaHandle<'a>,
    rkyv::rancor::Error,
>;

/// Serializes any of the archived payloads.
pub fn encode<T>(value: &T) -> Result<Vec<u8>, WireError>
where
    T: for<'a> rkyv::Serialize<Serializer<'a>>,
{
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(value).map_err(|_| WireError::TooLarge)?;
    if bytes.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge);
    }
    Ok(bytes.to_vec())
}

/// Copies a payload into an aligned buffer (the archive's root is found from its end).
fn aligned(payload: &[u8]) -> Result<rkyv::util::AlignedVec, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::Invalid("payload longer than MAX_PAYLOAD"));
    }
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
    buf.extend_from_slice(payload);
    Ok(buf)
}

/// Validates and decodes a BATCH payload.
pub fn decode_batch(payload: &[u8]) -> Result<Batch, WireError> {
    let buf = aligned(payload)?;
    let batch: Batch = rkyv::from_bytes::<Batch, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("batch archive"))?;
    if batch.seq == 0 {
        return Err(WireError::Invalid("batch seq 0"));
    }
    if batch.op != op::DEBIT && batch.op != op::LOWER {
        return Err(WireError::Invalid("unknown batch op"));
    }
    if batch
        .entries
        .iter()
        .any(|e| !e.value.is_finite() || e.key.len() > MAX_KEY_LEN)
    {
        return Err(WireError::Invalid("entry value not finite or key too long"));
    }
    if batch.transfer != 0 && (batch.parts == 0 || batch.op != op::LOWER) {
        return Err(WireError::Invalid("transfer without parts"));
    }
    Ok(batch)
}

/// Validates and decodes an ACKS payload.
pub fn decode_acks(payload: &[u8]) -> Result<Acks, WireError> {
    let buf = aligned(payload)?;
    rkyv::from_bytes::<Acks, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("acks archive"))
}

/// Validates and decodes a LEAVE payload.
pub fn decode_leave(payload: &[u8]) -> Result<Leave, WireError> {
    let buf = aligned(payload)?;
    rkyv::from_bytes::<Leave, rkyv::rancor::Error>(&buf)
        .map_err(|_| WireError::Invalid("leave archive"))
}

/// A node's identity in the SWIM membership.
///
/// Two identities with the same gossip address are the same node at different times: the
/// one with the larger `instance` wins (a restart picks a larger one, see
/// [`foca::Identity::win_addr_conflict`]), so a restarted node replaces its old self.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    /// Gossip address (UDP).
    pub addr: SocketAddr,
    /// Starts as the boot nonce; bumped by `renew` when the cluster declared us down and
    /// we rejoin (same process, new identity).
    pub instance: u64,
    /// The process's boot nonce: unchanged by `renew`, so peers can tell a rejoin (state
    /// intact) from a restart (state lost, needs a transfer).
    pub boot: u64,
    /// The configured node id (for `tollgate members`).
    pub name: String,
}

impl NodeId {
    /// An identity known only by address (a seed): enough to announce to it.
    pub fn seed(addr: SocketAddr) -> NodeId {
        NodeId {
            addr,
            instance: 0,
            boot: 0,
            name: String::new(),
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            instance: self.instance.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.instance > adversary.instance
    }
}

/// foca's wire codec for [`NodeId`], hand-written and bounded.
///
/// ```text
/// identity: [ip version 4|6: u8][ip: 4|16][port: u16][instance: u64][boot: u64]
///           [name len: u8][name]
/// member:   identity [incarnation: u16][state: u8 0 alive 1 suspect 2 down]
/// header:   identity(src) [src incarnation: u16] identity(dst) [message tag: u8] [fields]
/// ```
/// All integers big-endian.
#[derive(Clone, Copy, Debug, Default)]
pub struct FocaCodec;

/// A foca codec failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("membership codec: {0}")]
pub struct CodecError(&'static str);

fn need(buf: &impl Buf, n: usize) -> Result<(), CodecError> {
    if buf.remaining() < n {
        Err(CodecError("truncated"))
    } else {
        Ok(())
    }
}

fn room(buf: &impl BufMut, n: usize) -> Result<(), CodecError> {
    if buf.remaining_mut() < n {
        Err(CodecError("buffer full"))
    } else {
        Ok(())
    }
}

fn id_len(id: &NodeId) -> usize {
    let ip = if id.addr.is_ipv4() { 4 } else { 16 };
    1 + ip + 2 + 8 + 8 + 1 + id.name.len().min(MAX_NODE_ID_LEN)
}

fn put_id(id: &NodeId, buf: &mut impl BufMut) -> Result<(), CodecError> {
    room(buf, id_len(id))?;
    match id.addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(id.addr.port());
    buf.put_u64(id.instance);
    buf.put_u64(id.boot);
    let name = &id.name.as_bytes()[..id.name.len().min(MAX_NODE_ID_LEN)];
    buf.put_u8(name.len() as u8);
    buf.put_slice(name);
    Ok(())
}

fn get_id(buf: &mut impl Buf) -> Result<NodeId, CodecError> {
    need(buf, 1)?;
    let ip = match buf.get_u8() {
        4 => {
            need(buf, 4)?;
            let mut o = [0u8; 4];
            buf.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            need(buf, 16)?;
            let mut o = [0u8; 16];
            buf.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(CodecError("bad ip version")),
    };
    need(buf, 2 + 8 + 8 + 1)?;
    let port = buf.get_u16();
    let instance = buf.get_u64();
    let boot = buf.get_u64();
    let len = usize::from(buf.get_u8());
    if len > MAX_NODE_ID_LEN {
        return Err(CodecError("node id too long"));
    }
    need(buf, len)?;
    let mut name = vec![0u8; len];
    buf.copy_to_slice(&mut name);
    let name = String::from_utf8(name).map_err(|_| CodecError("node id not utf-8"))?;
    Ok(NodeId {
        addr: SocketAddr::new(ip, port),
        instance,
        boot,
        name,
    })
}

const MSG_PING: u8 = 0;
const MSG_ACK: u8 = 1;
const MSG_PING_REQ: u8 = 2;
const MSG_INDIRECT_PING: u8 = 3;
const MSG_INDIRECT_ACK: u8 = 4;
const MSG_FORWARDED_ACK: u8 = 5;
const MSG_ANNOUNCE: u8 = 6;
const MSG_FEED: u8 = 7;
const MSG_GOSSIP: u8 = 8;
const MSG_BROADCAST: u8 = 9;
const MSG_TURN_UNDEAD: u8 = 10;

impl Codec<NodeId> for FocaCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeId>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        put_id(&header.src, &mut buf)?;
        room(&buf, 2)?;
        buf.put_u16(header.src_incarnation);
        put_id(&header.dst, &mut buf)?;
        let (tag, id, probe) = match &header.message {
            Message::Ping(p) => (MSG_PING, None, Some(*p)),
            Message::Ack(p) => (MSG_ACK, None, Some(*p)),
            Message::PingReq {
                target,
                probe_number,
            } => (MSG_PING_REQ, Some(target), Some(*probe_number)),
            Message::IndirectPing {
                origin,
                probe_number,
            } => (MSG_INDIRECT_PING, Some(origin), Some(*probe_number)),
            Message::IndirectAck {
                target,
                probe_number,
            } => (MSG_INDIRECT_ACK, Some(target), Some(*probe_number)),
            Message::ForwardedAck {
                origin,
                probe_number,
            } => (MSG_FORWARDED_ACK, Some(origin), Some(*probe_number)),
            Message::Announce => (MSG_ANNOUNCE, None, None),
            Message::Feed => (MSG_FEED, None, None),
            Message::Gossip => (MSG_GOSSIP, None, None),
            Message::Broadcast => (MSG_BROADCAST, None, None),
            Message::TurnUndead => (MSG_TURN_UNDEAD, None, None),
        };
        room(&buf, 1)?;
        buf.put_u8(tag);
        if let Some(id) = id {
            put_id(id, &mut buf)?;
        }
        if let Some(p) = probe {
            room(&buf, 1)?;
            buf.put_u8(p);
        }
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeId>, Self::Error> {
        let src = get_id(&mut buf)?;
        need(&buf, 2)?;
        let src_incarnation = buf.get_u16();
        let dst = get_id(&mut buf)?;
        need(&buf, 1)?;
        let tag = buf.get_u8();
        let probe = |buf: &mut dyn Buf| -> Result<u8, CodecError> {
            if buf.remaining() < 1 {
                return Err(CodecError("truncated"));
            }
            Ok(buf.get_u8())
        };
        let message = match tag {
            MSG_PING => Message::Ping(probe(&mut buf)?),
            MSG_ACK => Message::Ack(probe(&mut buf)?),
            MSG_PING_REQ => {
                let target = get_id(&mut buf)?;
                Message::PingReq {
                    target,
                    probe_number: probe(&mut buf)?,
                }
            }
            MSG_INDIRECT_PING => {
                let origin = get_id(&mut buf)?;
                Message::IndirectPing {
                    origin,
                    probe_number: probe(&mut buf)?,
                }
            }
            MSG_INDIRECT_ACK => {
                let target = get_id(&mut buf)?;
                Message::IndirectAck {
                    target,
                    probe_number: probe(&mut buf)?,
                }
            }
            MSG_FORWARDED_ACK => {
                let origin = get_id(&mut buf)?;
                Message::ForwardedAck {
                    origin,
                    probe_number: probe(&mut buf)?,
                }
            }
            MSG_ANNOUNCE => Message::Announce,
            MSG_FEED => Message::Feed,
            MSG_GOSSIP => Message::Gossip,
            MSG_BROADCAST => Message::Broadcast,
            MSG_TURN_UNDEAD => Message::TurnUndead,
            _ => return Err(CodecError("unknown message tag")),
        };
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        mut buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        room(&buf, id_len(member.id()) + 3)?;
        put_id(member.id(), &mut buf)?;
        buf.put_u16(member.incarnation());
        buf.put_u8(match member.state() {
            State::Alive => 0,
            State::Suspect => 1,
            State::Down => 2,
        });
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeId>, Self::Error> {
        let id = get_id(&mut buf)?;
        need(&buf, 3)?;
        let incarnation = buf.get_u16();
        let state = match buf.get_u8() {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            _ => return Err(CodecError("bad member state")),
        };
        Ok(Member::new(id, incarnation, state))
    }
}

// Property tests with arbitrary datagrams, raw and authentic, are in `super::fuzzing`: the
// body of the `gossip_datagram` fuzz target, which `cargo test` runs too.
#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, key_len: usize) -> Batch {
        Batch {
            boot: u64::MAX,
            seq: u64::MAX,
            op: op::LOWER,
            transfer: u32::MAX,
            parts: u32::MAX,
            entries: (0..n)
                .map(|i| Entry {
                    limiter: i as u32,
                    key: "k".repeat(key_len),
                    value: 1.5,
                })
                .collect(),
        }
    }

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

    #[test]
    fn batch_cost_estimate_is_an_upper_bound() {
        for key_len in [0, 1, 8, 9, 20, 100, 300] {
            for n in [0, 1, 2, 7, 30] {
                let b = batch(n, key_len);
                let len = rkyv::to_bytes::<rkyv::rancor::Error>(&b)
                    .expect("archive")
                    .len();
                let estimate = BATCH_OVERHEAD + n * entry_cost(&"k".repeat(key_len));
                assert!(
                    len <= estimate,
                    "n={n} key_len={key_len}: {len} > {estimate}"
                );
            }
        }
        let acks = Acks {
            boot: 1,
            seqs: vec![u64::MAX; MAX_ACKS_PER_DATAGRAM],
        };
        assert!(encode(&acks).is_ok());
    }

    #[test]
    fn batch_round_trip() {
        let b = batch(3, 12);
        let bytes = encode(&b).expect("encode");
        assert_eq!(decode_batch(&bytes), Ok(b));
    }

    #[test]
    fn non_finite_values_are_invalid() {
        let mut b = batch(1, 3);
        b.entries[0].value = f64::NAN;
        assert!(decode_batch(&encode(&b).expect("encode")).is_err());
    }

    #[test]
    fn foca_codec_round_trip() {
        let id = NodeId {
            addr: "127.0.0.1:7946".parse().expect("addr"),
            instance: 42,
            boot: 41,
            name: "node-a".into(),
        };
        let other = NodeId {
            addr: "[::1]:7947".parse().expect("addr"),
            instance: 7,
            boot: 6,
            name: "b".into(),
        };
        for message in [
            Message::Ping(3),
            Message::PingReq {
                target: other.clone(),
                probe_number: 9,
            },
            Message::ForwardedAck {
                origin: other.clone(),
                probe_number: 1,
            },
            Message::Announce,
            Message::TurnUndead,
        ] {
            let header = Header {
                src: id.clone(),
                src_incarnation: 5,
                dst: other.clone(),
                message,
            };
            let mut buf = Vec::new();
            FocaCodec.encode_header(&header, &mut buf).expect("encode");
            let decoded = FocaCodec.decode_header(&buf[..]).expect("decode");
            assert_eq!(decoded, header);
        }
        let m = Member::new(other, 3, State::Suspect);
        let mut buf = Vec::new();
        FocaCodec.encode_member(&m, &mut buf).expect("encode");
        assert_eq!(FocaCodec.decode_member(&buf[..]).expect("decode"), m);
    }
}
