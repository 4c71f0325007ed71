//! foca's SWIM messages on the wire: a hand-written codec for [`NodeId`] and foca's
//! headers and members, bounded like every other decoder (the bytes remaining are checked
//! before every read, a node id is at most [`MAX_NODE_ID_LEN`] bytes, unknown tags fail).

use crate::node_id::{NodeId, MAX_NODE_ID_LEN};
use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Message, State};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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

// Property tests with arbitrary datagrams, raw and authentic, are in `crate::fuzzing`: the
// body of the `gossip_datagram` fuzz target, which `cargo test` runs too.
#[cfg(test)]
mod tests {
    use super::*;

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
