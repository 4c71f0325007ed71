//! Encoders appending whole frames, in either direction, to a `Vec<u8>`.
//!
//! Each encoder writes the length prefix, header and body of exactly one frame. Limits are
//! checked while writing; on any [`EncodeError`] the buffer is truncated back to its length at
//! the call, so a failed encode never leaves half a frame behind. Encoders never panic.
//!
//! The encoders do not know the peer's `max_frame_len`; a client compares the encoded length
//! with `HELLO_REPLY.max_frame_len` before sending.
//!
//! Reply encoders whose layout depends on the protocol version (`CHECK_REPLY`, `BATCH_REPLY`)
//! take the [`ProtocolVersion`] the connection speaks; `HELLO_REPLY` follows its own
//! `version` field.

use crate::decode::{limiter_result_len, StrRef};
use crate::error::EncodeError;
use crate::frame::{
    opcode, ErrorCode, CHECK_FLAG_TOKENS, CHECK_FLAG_WAIT, FRAME_HEADER_LEN, LEN_PREFIX_LEN,
    MAX_API_KEY_LEN, MAX_BATCH, MAX_FLOW_END, MAX_INTERNED, MAX_LABELS, MAX_LIMITERS,
    MAX_STRING_LEN, SHARED_PORT_SHARD_INDEX, STR_REF_INTERNED_BIT,
};
use crate::types::{
    BatchItem, CheckReply, ErrorReply, FlowEndStatus, HelloReply, LimiterResult, Member, Refusal,
    ReplyHead,
};
use crate::version::ProtocolVersion;

/// What to encode as a `CHECK` (or one item of a `CHECK_BATCH`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckSpec<'a> {
    /// The control point, inline or interned.
    pub control_point: StrRef<'a>,
    /// Tokens to take; `None` lets the server use each policy's tokens label (default 1).
    pub tokens: Option<f64>,
    /// How long the client will wait for the decision, in milliseconds (`CHECK` flag bit 1);
    /// `None`: decide at once.
    pub wait_budget_ms: Option<u32>,
    /// `(key, value)` labels; at most [`MAX_LABELS`].
    pub labels: &'a [(StrRef<'a>, &'a str)],
}

/// Runs `body` between a frame header and its length patch; truncates `out` on error.
#[inline]
fn frame(
    out: &mut Vec<u8>,
    op: u8,
    request_id: u32,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, op, 0]);
    out.extend_from_slice(&request_id.to_le_bytes());
    let result = body(out).and_then(|()| patch_len(out, start));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[inline]
fn patch_len(out: &mut [u8], start: usize) -> Result<(), EncodeError> {
    let len = out
        .len()
        .checked_sub(start + LEN_PREFIX_LEN)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or(EncodeError::FrameTooLarge)?;
    let slot = out
        .get_mut(start..start + LEN_PREFIX_LEN)
        .ok_or(EncodeError::FrameTooLarge)?;
    slot.copy_from_slice(&len.to_le_bytes());
    Ok(())
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    let len = checked_str_len(s)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[inline]
fn checked_str_len(s: &str) -> Result<u16, EncodeError> {
    if s.len() > MAX_STRING_LEN {
        return Err(EncodeError::StringTooLong { len: s.len() });
    }
    u16::try_from(s.len()).map_err(|_| EncodeError::StringTooLong { len: s.len() })
}

#[inline]
fn put_str_ref(out: &mut Vec<u8>, r: StrRef<'_>) -> Result<(), EncodeError> {
    match r {
        StrRef::Inline(s) => put_str(out, s),
        StrRef::Interned(id) => {
            if usize::from(id) >= MAX_INTERNED {
                return Err(EncodeError::InternedIdOutOfRange { id });
            }
            out.extend_from_slice(&(id | STR_REF_INTERNED_BIT).to_le_bytes());
            Ok(())
        }
    }
}

fn count_u16(count: usize, max: usize, what: &'static str) -> Result<u16, EncodeError> {
    if count > max {
        return Err(EncodeError::TooManyItems { what, count, max });
    }
    u16::try_from(count).map_err(|_| EncodeError::TooManyItems { what, count, max })
}

fn put_string_list(
    out: &mut Vec<u8>,
    list: &[String],
    what: &'static str,
) -> Result<(), EncodeError> {
    out.extend_from_slice(&count_u16(list.len(), usize::from(u16::MAX), what)?.to_le_bytes());
    for s in list {
        put_str(out, s)?;
    }
    Ok(())
}

/// `HELLO { version u16, client_name string }`, without an API key.
pub fn encode_hello(
    out: &mut Vec<u8>,
    request_id: u32,
    version: u16,
    client_name: &str,
) -> Result<(), EncodeError> {
    encode_hello_with_key(out, request_id, version, client_name, None)
}

/// `HELLO { version u16, client_name string, [api_key string] }`: the key, when given, is the
/// optional trailing field ([`MAX_API_KEY_LEN`] bytes at most).
pub fn encode_hello_with_key(
    out: &mut Vec<u8>,
    request_id: u32,
    version: u16,
    client_name: &str,
    api_key: Option<&str>,
) -> Result<(), EncodeError> {
    frame(out, opcode::HELLO, request_id, |out| {
        out.extend_from_slice(&version.to_le_bytes());
        put_str(out, client_name)?;
        match api_key {
            Some(key) if key.len() > MAX_API_KEY_LEN => {
                Err(EncodeError::ApiKeyTooLong { len: key.len() })
            }
            Some(key) => put_str(out, key),
            None => Ok(()),
        }
    })
}

fn put_check(out: &mut Vec<u8>, check: &CheckSpec<'_>) -> Result<(), EncodeError> {
    if check.labels.len() > MAX_LABELS {
        return Err(EncodeError::TooManyLabels {
            count: check.labels.len(),
        });
    }
    let mut flags = 0;
    match check.tokens {
        Some(t) if !t.is_finite() || t < 0.0 => return Err(EncodeError::InvalidTokens),
        Some(_) => flags |= CHECK_FLAG_TOKENS,
        None => {}
    }
    if check.wait_budget_ms.is_some() {
        flags |= CHECK_FLAG_WAIT;
    }
    out.push(flags);
    put_str_ref(out, check.control_point)?;
    if let Some(t) = check.tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    if let Some(ms) = check.wait_budget_ms {
        out.extend_from_slice(&ms.to_le_bytes());
    }
    // labels.len() <= MAX_LABELS, checked above.
    out.extend_from_slice(&(check.labels.len() as u16).to_le_bytes());
    for (key, value) in check.labels {
        put_str_ref(out, *key)?;
        put_str(out, value)?;
    }
    Ok(())
}

/// `CHECK { flags u8, control_point strref, [tokens f64], [wait_budget_ms u32], count u16,
/// (key strref, value string)* }`.
pub fn encode_check(
    out: &mut Vec<u8>,
    request_id: u32,
    check: &CheckSpec<'_>,
) -> Result<(), EncodeError> {
    frame(out, opcode::CHECK, request_id, |out| put_check(out, check))
}

/// `CHECK_BATCH { count u16, check* }`, at most [`MAX_BATCH`] checks.
pub fn encode_check_batch(
    out: &mut Vec<u8>,
    request_id: u32,
    checks: &[CheckSpec<'_>],
) -> Result<(), EncodeError> {
    count_u16(checks.len(), MAX_BATCH, "CHECK_BATCH")?;
    let mut w = CheckBatchWriter::new(out, request_id);
    for c in checks {
        if let Err(e) = w.check(c) {
            w.abandon();
            return Err(e);
        }
    }
    w.finish()
}

/// Incrementally encodes a `CHECK_BATCH`, one check at a time, so a caller that builds each
/// check in a reused buffer (or routes checks to several connections as it goes) needs no
/// slice of [`CheckSpec`]s. The count is patched by [`finish`](Self::finish).
///
/// Dropping the writer without finishing leaves a half-written frame in the buffer; call
/// [`abandon`](Self::abandon) to remove it.
#[derive(Debug)]
pub struct CheckBatchWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    count: usize,
}

impl<'o> CheckBatchWriter<'o> {
    /// Starts a `CHECK_BATCH` frame at the end of `out`.
    pub fn new(out: &'o mut Vec<u8>, request_id: u32) -> Self {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, opcode::CHECK_BATCH, 0]);
        out.extend_from_slice(&request_id.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        Self {
            out,
            start,
            count: 0,
        }
    }

    /// Appends one check. Fails, leaving the frame as it was, when the batch already holds
    /// [`MAX_BATCH`] checks or the check does not encode.
    pub fn check(&mut self, check: &CheckSpec<'_>) -> Result<(), EncodeError> {
        if self.count >= MAX_BATCH {
            return Err(EncodeError::TooManyItems {
                what: "CHECK_BATCH",
                count: self.count + 1,
                max: MAX_BATCH,
            });
        }
        let mark = self.out.len();
        if let Err(e) = put_check(self.out, check) {
            self.out.truncate(mark);
            return Err(e);
        }
        self.count += 1;
        Ok(())
    }

    /// Checks appended so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no check was appended.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Patches the count and the frame length (removing the frame if it cannot be encoded).
    pub fn finish(self) -> Result<(), EncodeError> {
        let count_at = self.start + FRAME_HEADER_LEN;
        // count <= MAX_BATCH, which fits a u16 (checked by `check`).
        let count = (self.count as u16).to_le_bytes();
        let result = match self.out.get_mut(count_at..count_at + 2) {
            Some(slot) => {
                slot.copy_from_slice(&count);
                patch_len(self.out, self.start)
            }
            None => Err(EncodeError::FrameTooLarge),
        };
        if result.is_err() {
            self.out.truncate(self.start);
        }
        result
    }

    /// Removes the partly written frame from the buffer.
    pub fn abandon(self) {
        self.out.truncate(self.start);
    }
}

/// `INTERN { id u16, value string }`: binds `id` (`< MAX_INTERNED`) on this connection.
pub fn encode_intern(
    out: &mut Vec<u8>,
    request_id: u32,
    id: u16,
    value: &str,
) -> Result<(), EncodeError> {
    if usize::from(id) >= MAX_INTERNED {
        return Err(EncodeError::InternedIdOutOfRange { id });
    }
    frame(out, opcode::INTERN, request_id, |out| {
        out.extend_from_slice(&id.to_le_bytes());
        put_str(out, value)
    })
}

/// `MEMBERS` (empty body).
pub fn encode_members(out: &mut Vec<u8>, request_id: u32) -> Result<(), EncodeError> {
    frame(out, opcode::MEMBERS, request_id, |_| Ok(()))
}

/// `FLOW_END { count u16, flow_id u64* }`: at most [`MAX_FLOW_END`] ids.
pub fn encode_flow_end(
    out: &mut Vec<u8>,
    request_id: u32,
    flow_ids: &[u64],
) -> Result<(), EncodeError> {
    frame(out, opcode::FLOW_END, request_id, |out| {
        let n = count_u16(flow_ids.len(), MAX_FLOW_END, "FLOW_END")?;
        out.extend_from_slice(&n.to_le_bytes());
        for id in flow_ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        Ok(())
    })
}

/// `FLOW_END_REPLY { count u16, status u8* }`: one status per id of the `FLOW_END`, in order.
pub fn encode_flow_end_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    statuses: &[FlowEndStatus],
) -> Result<(), EncodeError> {
    frame(out, opcode::FLOW_END_REPLY, request_id, |out| {
        let n = count_u16(statuses.len(), MAX_FLOW_END, "FLOW_END_REPLY")?;
        out.extend_from_slice(&n.to_le_bytes());
        out.extend(statuses.iter().map(|s| s.as_u8()));
        Ok(())
    })
}

/// `PING { payload bytes* }` (the payload is the rest of the frame).
pub fn encode_ping(out: &mut Vec<u8>, request_id: u32, payload: &[u8]) -> Result<(), EncodeError> {
    frame(out, opcode::PING, request_id, |out| {
        out.extend_from_slice(payload);
        Ok(())
    })
}

/// `HELLO_REPLY`; see [`HelloReply`] for the fields, in wire order. Laid out for
/// `hello.version`: version 2 appends `control_point_routing`, version 1 leaves it out.
pub fn encode_hello_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    hello: &HelloReply,
) -> Result<(), EncodeError> {
    frame(out, opcode::HELLO_REPLY, request_id, |out| {
        out.extend_from_slice(&hello.version.as_u16().to_le_bytes());
        put_str(out, &hello.node_id)?;
        out.extend_from_slice(&hello.shard_count.to_le_bytes());
        out.push(hello.hash_algo);
        let idx = hello.shard_index.unwrap_or(SHARED_PORT_SHARD_INDEX);
        out.extend_from_slice(&idx.to_le_bytes());
        let ports = count_u16(
            hello.shard_ports.len(),
            usize::from(u16::MAX),
            "shard_ports",
        )?;
        out.extend_from_slice(&ports.to_le_bytes());
        for p in &hello.shard_ports {
            out.extend_from_slice(&p.to_le_bytes());
        }
        put_string_list(out, &hello.routing_label_keys, "routing_label_keys")?;
        put_string_list(out, &hello.policy_names, "policy_names")?;
        out.extend_from_slice(&hello.max_frame_len.to_le_bytes());
        out.extend_from_slice(&hello.max_batch.to_le_bytes());
        out.extend_from_slice(&hello.max_in_flight.to_le_bytes());
        if hello.version >= ProtocolVersion::V2 {
            let n = count_u16(
                hello.control_point_routing.len(),
                usize::from(u16::MAX),
                "control_point_routing",
            )?;
            out.extend_from_slice(&n.to_le_bytes());
            for cp in &hello.control_point_routing {
                put_str(out, &cp.control_point)?;
                put_string_list(out, &cp.routing_label_keys, "control point routing keys")?;
            }
        }
        Ok(())
    })
}

#[inline]
fn put_limiter(out: &mut Vec<u8>, l: &LimiterResult, version: ProtocolVersion) {
    out.extend_from_slice(&l.limiter_index.to_le_bytes());
    out.push(l.outcome.as_u8());
    out.extend_from_slice(&l.status_code.to_le_bytes());
    out.extend_from_slice(&l.tokens.to_le_bytes());
    out.extend_from_slice(&l.remaining.to_le_bytes());
    out.extend_from_slice(&l.current.to_le_bytes());
    out.extend_from_slice(&l.wait_ns.to_le_bytes());
    if version >= ProtocolVersion::V2 {
        out.extend_from_slice(&l.flow_id().unwrap_or(0).to_le_bytes());
        out.push(l.refusal.map_or(0, Refusal::as_u8));
    }
}

/// `CHECK_REPLY`'s body: `head`, then the limiters as `limiters` yields them (at most
/// [`MAX_LIMITERS`]; more is an error and nothing is written). The count byte is written
/// last, so the caller's limiters can be made as they are encoded.
#[inline]
fn put_check_reply(
    out: &mut Vec<u8>,
    head: ReplyHead,
    limiters: impl IntoIterator<Item = LimiterResult>,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.reserve(11 + limiter_result_len(version));
    out.push(head.decision.as_u8());
    out.push(head.reason.as_u8(version));
    out.extend_from_slice(&head.wait_ns.to_le_bytes());
    let count_at = out.len();
    out.push(0);
    let mut limiters = limiters.into_iter();
    let mut count = 0;
    for l in limiters.by_ref() {
        if count == MAX_LIMITERS {
            out.truncate(start);
            return Err(EncodeError::TooManyItems {
                what: "limiters",
                count: count + 1 + limiters.count(),
                max: MAX_LIMITERS,
            });
        }
        put_limiter(out, &l, version);
        count += 1;
    }
    if let Some(slot) = out.get_mut(count_at) {
        *slot = count as u8; // <= MAX_LIMITERS == u8::MAX, checked above
    }
    Ok(())
}

/// `CHECK_REPLY { decision u8, reason u8, wait_ns u64, count u8, limiter* }`, laid out for
/// `version` (the connection's): version 1 drops flow ids and refusals and sends `NO_TOKENS`
/// as `RATE_LIMITED`.
#[inline]
pub fn encode_check_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    reply: &CheckReply,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    encode_check_reply_from(
        out,
        request_id,
        reply.head(),
        reply.limiters.iter().copied(),
        version,
    )
}

/// [`encode_check_reply`] of a reply given as its head and its limiters, made as they are
/// written: a server encodes its decision without building a [`CheckReply`] first.
#[inline]
pub fn encode_check_reply_from(
    out: &mut Vec<u8>,
    request_id: u32,
    head: ReplyHead,
    limiters: impl IntoIterator<Item = LimiterResult>,
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    frame(out, opcode::CHECK_REPLY, request_id, |out| {
        put_check_reply(out, head, limiters, version)
    })
}

fn put_error(out: &mut Vec<u8>, code: ErrorCode, message: &str) {
    out.extend_from_slice(&code.as_u16().to_le_bytes());
    let mut end = message.len().min(MAX_STRING_LEN);
    while !message.is_char_boundary(end) {
        end -= 1; // terminates: 0 is a char boundary
    }
    let msg = message.get(..end).unwrap_or("");
    out.extend_from_slice(&(msg.len() as u16).to_le_bytes()); // <= MAX_STRING_LEN
    out.extend_from_slice(msg.as_bytes());
}

/// Incrementally encodes a `BATCH_REPLY` without building a `Vec<BatchItem>`: declare the
/// count, push exactly that many items in request order, then [`finish`](Self::finish).
///
/// Dropping the writer without finishing leaves a half-written frame in the buffer; call
/// [`abandon`](Self::abandon) to remove it.
#[derive(Debug)]
pub struct BatchReplyWriter<'o> {
    out: &'o mut Vec<u8>,
    start: usize,
    declared: usize,
    written: usize,
    version: ProtocolVersion,
}

impl<'o> BatchReplyWriter<'o> {
    /// Starts a `BATCH_REPLY` of `count` items (at most [`MAX_BATCH`]), laid out for `version`
    /// (the connection's).
    pub fn new(
        out: &'o mut Vec<u8>,
        request_id: u32,
        count: usize,
        version: ProtocolVersion,
    ) -> Result<Self, EncodeError> {
        let n = count_u16(count, MAX_BATCH, "BATCH_REPLY")?;
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, opcode::BATCH_REPLY, 0]);
        out.extend_from_slice(&request_id.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        Ok(Self {
            out,
            start,
            declared: count,
            written: 0,
            version,
        })
    }

    /// Appends a decided item (tag 0).
    pub fn reply(&mut self, reply: &CheckReply) -> Result<(), EncodeError> {
        self.reply_from(reply.head(), reply.limiters.iter().copied())
    }

    /// [`BatchReplyWriter::reply`] of a reply given as its head and its limiters (see
    /// [`encode_check_reply_from`]).
    pub fn reply_from(
        &mut self,
        head: ReplyHead,
        limiters: impl IntoIterator<Item = LimiterResult>,
    ) -> Result<(), EncodeError> {
        self.check_room()?;
        let mark = self.out.len();
        self.out.push(0);
        if let Err(e) = put_check_reply(self.out, head, limiters, self.version) {
            self.out.truncate(mark);
            return Err(e);
        }
        self.written += 1;
        Ok(())
    }

    /// Appends a failed item (tag 1); the message is cut to [`MAX_STRING_LEN`] bytes.
    pub fn error(&mut self, code: ErrorCode, message: &str) -> Result<(), EncodeError> {
        self.check_room()?;
        self.out.push(1);
        put_error(self.out, code, message);
        self.written += 1;
        Ok(())
    }

    fn check_room(&self) -> Result<(), EncodeError> {
        if self.written >= self.declared {
            return Err(EncodeError::BatchCountMismatch {
                declared: self.declared,
                written: self.written + 1,
            });
        }
        Ok(())
    }

    /// Patches the frame length. Fails (and removes the frame) if fewer items were written than
    /// declared.
    pub fn finish(self) -> Result<(), EncodeError> {
        let result = if self.written == self.declared {
            patch_len(self.out, self.start)
        } else {
            Err(EncodeError::BatchCountMismatch {
                declared: self.declared,
                written: self.written,
            })
        };
        if result.is_err() {
            self.out.truncate(self.start);
        }
        result
    }

    /// Removes the partly written frame from the buffer.
    pub fn abandon(self) {
        self.out.truncate(self.start);
    }
}

/// `BATCH_REPLY { count u16, (tag u8, CHECK_REPLY body | ERROR body)* }`, laid out for
/// `version`.
pub fn encode_batch_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    items: &[BatchItem],
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    let mut w = BatchReplyWriter::new(out, request_id, items.len(), version)?;
    for item in items {
        let r = match item {
            BatchItem::Reply(reply) => w.reply(reply),
            BatchItem::Error(ErrorReply { code, message }) => w.error(*code, message),
        };
        if let Err(e) = r {
            w.abandon();
            return Err(e);
        }
    }
    w.finish()
}

/// `MEMBERS_REPLY { count u16, (node_id string, address string, state u8, last_contact_ms u64
/// [, digest_known u8, policy_digest u64])* }`, in `version` (the digest fields from version
/// 3 on; a version below drops them).
pub fn encode_members_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    members: &[Member],
    version: ProtocolVersion,
) -> Result<(), EncodeError> {
    frame(out, opcode::MEMBERS_REPLY, request_id, |out| {
        let n = count_u16(members.len(), usize::from(u16::MAX), "members")?;
        out.extend_from_slice(&n.to_le_bytes());
        for m in members {
            put_str(out, &m.node_id)?;
            put_str(out, &m.address)?;
            out.push(m.state.as_u8());
            out.extend_from_slice(&m.last_contact_ms.to_le_bytes());
            if version >= ProtocolVersion::V3 {
                out.push(u8::from(m.policy_digest.is_some()));
                out.extend_from_slice(&m.policy_digest.unwrap_or(0).to_le_bytes());
            }
        }
        Ok(())
    })
}

/// `PONG { payload bytes* }`: echoes a `PING`'s payload.
pub fn encode_pong(out: &mut Vec<u8>, request_id: u32, payload: &[u8]) -> Result<(), EncodeError> {
    frame(out, opcode::PONG, request_id, |out| {
        out.extend_from_slice(payload);
        Ok(())
    })
}

/// `ERROR { code u16, message string }`. Cannot fail: the message is cut (at a character
/// boundary) to [`MAX_STRING_LEN`] bytes.
pub fn encode_error(out: &mut Vec<u8>, request_id: u32, code: ErrorCode, message: &str) {
    // The body is at most 2 + 2 + MAX_STRING_LEN bytes, so the frame cannot be too large.
    let _ = frame(out, opcode::ERROR, request_id, |out| {
        put_error(out, code, message);
        Ok(())
    });
}
