//! Bounded decoding of frames from untrusted bytes.
//!
//! * [`frame_len`] reads only the 4-byte length prefix, so a server can reject an oversize
//!   frame before buffering its body.
//! * [`decode_frame`] decodes a client → server frame into a borrowed [`Frame`]: strings are
//!   `&str` into the input buffer, and a `CHECK`'s labels are validated once up front, then
//!   iterated lazily by [`Labels`] without allocating.
//! * [`decode_reply`] decodes a server → client frame into an owned [`Reply`] (the client side,
//!   where allocation is fine), in the [`ProtocolVersion`] the connection speaks.
//!
//! All return `Ok(None)` when `buf` does not yet hold a whole frame, and a [`DecodeError`]
//! saying whether framing survived otherwise.
//!
//! ```text
//! +----------------+--------+--------+-------------------+-----------------+
//! | len: u32 LE    | opcode | flags  | request_id: u32 LE| body ...        |
//! +----------------+--------+--------+-------------------+-----------------+
//! ```

use smallvec::SmallVec;

use crate::coding::{Reader, Reason};
use crate::error::DecodeError;
use std::num::NonZeroU64;
use std::time::Duration;

use crate::frame::{
    opcode, ErrorCode, CHECK_FLAGS_KNOWN, CHECK_FLAG_TOKENS, CHECK_FLAG_WAIT, LEN_PREFIX_LEN,
    MAX_API_KEY_LEN, MAX_BATCH, MAX_FLOW_END, MAX_INTERNED, MAX_LABELS, MAX_LIMITERS,
    MIN_FRAME_LEN, SHARED_PORT_SHARD_INDEX,
};
use crate::types::{
    BatchItem, CheckReply, ControlPointRouting, Decision, DecisionReason, ErrorReply,
    FlowEndStatus, HelloReply, LimiterOutcome, LimiterResult, Member, MemberState, Refusal, Reply,
};
use crate::version::ProtocolVersion;

/// A string that is either inline in the frame or an id bound earlier by `INTERN` on the same
/// connection (resolve it with [`crate::InternTable::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrRef<'a> {
    /// The string itself, borrowed from the frame.
    Inline(&'a str),
    /// An interned id, `< MAX_INTERNED`.
    Interned(u16),
}

/// A decoded client → server frame, borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Frame<'a> {
    /// `HELLO`.
    Hello(HelloRef<'a>),
    /// `CHECK`.
    Check(CheckRef<'a>),
    /// `CHECK_BATCH`.
    CheckBatch(CheckBatchRef<'a>),
    /// `INTERN`: bind `id` to `value` on this connection. `id < MAX_INTERNED` is checked by the
    /// decoder; the byte budget is checked by [`crate::InternTable::bind`].
    Intern {
        /// The id, `< MAX_INTERNED`.
        id: u16,
        /// The string.
        value: &'a str,
    },
    /// `MEMBERS`.
    Members,
    /// `PING` with its opaque payload.
    Ping(&'a [u8]),
    /// `FLOW_END` (version 2): end these flows.
    FlowEnd(FlowIdsRef<'a>),
}

/// A decoded `HELLO`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HelloRef<'a> {
    /// The client's protocol version.
    pub version: u16,
    /// Free-form client name, for logs.
    pub client_name: &'a str,
    /// The API key, when the client sent one (the optional trailing field): at most
    /// [`MAX_API_KEY_LEN`] bytes. Never logged: `Debug` shows only whether it is there.
    pub api_key: Option<&'a str>,
}

impl std::fmt::Debug for HelloRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloRef")
            .field("version", &self.version)
            .field("client_name", &self.client_name)
            .field("api_key", &self.api_key.map(|_| "<redacted>"))
            .finish()
    }
}

/// A decoded `CHECK` (or one item of a `CHECK_BATCH`). Its labels were validated when it was
/// decoded; [`CheckRef::labels`] walks them again without allocating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckRef<'a> {
    control_point: StrRef<'a>,
    tokens: Option<f64>,
    wait_budget_ms: Option<u32>,
    label_count: u16,
    /// The encoded `(key string ref, value string)` pairs, exactly `label_count` of them.
    labels_raw: &'a [u8],
}

impl<'a> CheckRef<'a> {
    /// The control point (which service/route the check is for).
    #[inline]
    pub fn control_point(&self) -> StrRef<'a> {
        self.control_point
    }

    /// Tokens requested, if the client set them; otherwise the server uses each policy's tokens
    /// label, default 1. Always finite and `>= 0`.
    #[inline]
    pub fn tokens(&self) -> Option<f64> {
        self.tokens
    }

    /// The wait budget in milliseconds, if the client set one (`CHECK` flag bit 1): how long
    /// the client will wait for the decision. `None` (and `Some(0)`): decide at once.
    #[inline]
    pub fn wait_budget_ms(&self) -> Option<u32> {
        self.wait_budget_ms
    }

    /// [`CheckRef::wait_budget_ms`] as a duration.
    #[inline]
    pub fn wait_budget(&self) -> Option<Duration> {
        self.wait_budget_ms
            .map(|ms| Duration::from_millis(u64::from(ms)))
    }

    /// Number of labels.
    #[inline]
    pub fn label_count(&self) -> usize {
        usize::from(self.label_count)
    }

    /// The labels, in wire order, as `(key, value)`.
    #[inline]
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            reader: Reader::new(self.labels_raw),
            left: self.label_count,
        }
    }
}

/// Iterator over a [`CheckRef`]'s labels. Cheap to clone (two words and a count).
#[derive(Debug, Clone)]
pub struct Labels<'a> {
    reader: Reader<'a>,
    left: u16,
}

impl<'a> Iterator for Labels<'a> {
    type Item = (StrRef<'a>, &'a str);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        // Validated when the CheckRef was decoded, so these cannot fail; if they somehow did,
        // iteration ends instead of panicking.
        let key = self.reader.str_ref().ok()?;
        let value = self.reader.str().ok()?;
        self.left -= 1;
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for Labels<'_> {}

/// A decoded `CHECK_BATCH`: every item was validated up front; [`CheckBatchRef::iter`] yields
/// them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckBatchRef<'a> {
    count: u16,
    raw: &'a [u8],
}

impl<'a> CheckBatchRef<'a> {
    /// Number of checks.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True if the batch holds no check.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The checks, in request order.
    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter {
            reader: Reader::new(self.raw),
            left: self.count,
        }
    }
}

impl<'a> IntoIterator for CheckBatchRef<'a> {
    type Item = CheckRef<'a>;
    type IntoIter = BatchIter<'a>;

    fn into_iter(self) -> BatchIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`CheckBatchRef`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    reader: Reader<'a>,
    left: u16,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = CheckRef<'a>;

    fn next(&mut self) -> Option<CheckRef<'a>> {
        if self.left == 0 {
            return None;
        }
        let check = check_body(&mut self.reader).ok()?;
        self.left -= 1;
        Some(check)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for BatchIter<'_> {}

/// The flow ids of a decoded `FLOW_END` (at most [`MAX_FLOW_END`]), read lazily from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowIdsRef<'a> {
    /// Exactly `count × 8` bytes: checked by the decoder.
    raw: &'a [u8],
}

impl<'a> FlowIdsRef<'a> {
    /// Number of flow ids.
    pub fn len(&self) -> usize {
        self.raw.len() / FLOW_ID_LEN
    }

    /// True if the frame names no flow.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The ids, in request order (0 names no flow: it is reported unknown).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.raw
            .chunks_exact(FLOW_ID_LEN)
            .map(|c| c.try_into().map_or(0, u64::from_le_bytes))
    }
}

/// Bytes of one flow id on the wire.
const FLOW_ID_LEN: usize = 8;

/// A decoded client → server frame and where it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoded<'a> {
    /// The header's request id, to echo on the reply.
    pub request_id: u32,
    /// The frame.
    pub frame: Frame<'a>,
    /// Bytes consumed from the input, length prefix included.
    pub len: usize,
}

/// A decoded server → client frame and where it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedReply {
    /// The request this answers (0 for an `ERROR` not tied to a request).
    pub request_id: u32,
    /// The reply.
    pub reply: Reply,
    /// Bytes consumed from the input, length prefix included.
    pub len: usize,
}

/// Reads the length prefix: `Ok(Some(total))` is the whole frame's size in bytes *including*
/// the 4-byte prefix, `Ok(None)` means fewer than 4 bytes are available.
///
/// Rejects `len > max_frame_len` (`FRAME_TOO_LARGE`) and `len < 6` (`MALFORMED_FRAME`) without
/// looking further: both are [`DecodeError::Framing`], the connection must close.
#[inline]
pub fn frame_len(buf: &[u8], max_frame_len: u32) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix);
    if len > max_frame_len {
        return Err(DecodeError::Framing {
            code: ErrorCode::FrameTooLarge,
            reason: "declared frame length exceeds the maximum",
            declared_len: len,
            max_frame_len,
        });
    }
    if len < MIN_FRAME_LEN {
        return Err(DecodeError::Framing {
            code: ErrorCode::MalformedFrame,
            reason: "declared frame length below the 6-byte header",
            declared_len: len,
            max_frame_len,
        });
    }
    usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(LEN_PREFIX_LEN))
        .map(Some)
        .ok_or(DecodeError::Framing {
            code: ErrorCode::FrameTooLarge,
            reason: "declared frame length does not fit in memory",
            declared_len: len,
            max_frame_len,
        })
}

/// The header fields after the length prefix.
struct Header<'a> {
    opcode: u8,
    flags: u8,
    request_id: u32,
    body: &'a [u8],
    total: usize,
}

#[inline]
fn split_frame(buf: &[u8], max_frame_len: u32) -> Result<Option<Header<'_>>, DecodeError> {
    let Some(total) = frame_len(buf, max_frame_len)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(LEN_PREFIX_LEN..total) else {
        return Ok(None);
    };
    let Some(([opcode, flags, r0, r1, r2, r3], body)) = frame.split_first_chunk::<6>() else {
        // Unreachable: frame_len guarantees len >= 6. Treat as lost framing, never panic.
        return Err(DecodeError::Framing {
            code: ErrorCode::MalformedFrame,
            reason: "frame shorter than its header",
            declared_len: 0,
            max_frame_len,
        });
    };
    Ok(Some(Header {
        opcode: *opcode,
        flags: *flags,
        request_id: u32::from_le_bytes([*r0, *r1, *r2, *r3]),
        body,
        total,
    }))
}

fn body_error(h: &Header<'_>, code: ErrorCode, reason: Reason) -> DecodeError {
    DecodeError::Body {
        code,
        reason,
        request_id: h.request_id,
        opcode: h.opcode,
        frame_len: h.total,
    }
}

/// The frame at the front of `buf`, its body read by `body`: the checks every decoder of this
/// crate makes around a body, in one place. `Ok(None)` until `buf` holds the whole frame; the
/// reserved flags must be zero; `body` gets the opcode and a reader over exactly the body, and
/// answers `None` for an opcode it does not know (`UNKNOWN_OPCODE`) or the body read, which
/// must consume every byte (`MALFORMED_FRAME` otherwise, as for any reason it fails with).
/// Returns the request id, what `body` read, and the frame's length.
#[inline]
pub(crate) fn decode_with<'a, T>(
    buf: &'a [u8],
    max_frame_len: u32,
    body: impl FnOnce(u8, &mut Reader<'a>) -> Option<Result<T, Reason>>,
) -> Result<Option<(u32, T, usize)>, DecodeError> {
    let Some(h) = split_frame(buf, max_frame_len)? else {
        return Ok(None);
    };
    if h.flags != 0 {
        return Err(body_error(
            &h,
            ErrorCode::MalformedFrame,
            "reserved header flags must be zero",
        ));
    }
    let mut r = Reader::new(h.body);
    let Some(read) = body(h.opcode, &mut r) else {
        return Err(body_error(&h, ErrorCode::UnknownOpcode, "unknown opcode"));
    };
    let read = read
        .and_then(|v| r.finish().map(|()| v))
        .map_err(|reason| body_error(&h, ErrorCode::MalformedFrame, reason))?;
    Ok(Some((h.request_id, read, h.total)))
}

/// Decodes one client → server frame from the front of `buf`.
///
/// `Ok(None)`: `buf` does not hold a whole frame yet (read more and call again). On
/// [`DecodeError::Body`] skip `frame_len` bytes and continue; on [`DecodeError::Framing`]
/// close. Performs no heap allocation.
#[inline]
pub fn decode_frame(buf: &[u8], max_frame_len: u32) -> Result<Option<Decoded<'_>>, DecodeError> {
    let decoded = decode_with(buf, max_frame_len, |opcode, r| {
        Some(match opcode {
            opcode::CHECK => check_body(r).map(Frame::Check),
            opcode::CHECK_BATCH => batch_body(r).map(Frame::CheckBatch),
            opcode::INTERN => intern_body(r),
            opcode::HELLO => hello_body(r).map(Frame::Hello),
            opcode::MEMBERS => Ok(Frame::Members),
            opcode::PING => r.bytes(r.remaining(), "unreachable").map(Frame::Ping),
            opcode::FLOW_END => flow_end_body(r).map(Frame::FlowEnd),
            _ => return None,
        })
    })?;
    Ok(decoded.map(|(request_id, frame, len)| Decoded {
        request_id,
        frame,
        len,
    }))
}

fn hello_body<'a>(r: &mut Reader<'a>) -> Result<HelloRef<'a>, Reason> {
    let version = r.u16("truncated HELLO version")?;
    let client_name = r.str()?;
    // The optional trailing field: present iff bytes remain after the client name.
    let api_key = if r.remaining() > 0 {
        let key = r.str()?;
        if key.len() > MAX_API_KEY_LEN {
            return Err("HELLO api_key longer than MAX_API_KEY_LEN");
        }
        Some(key)
    } else {
        None
    };
    Ok(HelloRef {
        version,
        client_name,
        api_key,
    })
}

fn intern_body<'a>(r: &mut Reader<'a>) -> Result<Frame<'a>, Reason> {
    let id = r.u16("truncated INTERN id")?;
    if usize::from(id) >= MAX_INTERNED {
        return Err("interned id out of range");
    }
    let value = r.str()?;
    Ok(Frame::Intern { id, value })
}

/// Smallest encoded check: flags, 2-byte inline empty control point, label count.
const MIN_CHECK_LEN: usize = 1 + 2 + 2;
/// Smallest encoded label: 2-byte key ref + 2-byte value length.
const MIN_LABEL_LEN: usize = 4;

#[inline]
fn check_body<'a>(r: &mut Reader<'a>) -> Result<CheckRef<'a>, Reason> {
    let flags = r.u8("truncated CHECK flags")?;
    if flags & !CHECK_FLAGS_KNOWN != 0 {
        return Err("unknown CHECK flags bits must be zero");
    }
    let control_point = r.str_ref()?;
    let tokens = if flags & CHECK_FLAG_TOKENS != 0 {
        let t = r.f64("truncated CHECK tokens")?;
        if !t.is_finite() || t < 0.0 {
            return Err("tokens must be finite and >= 0");
        }
        Some(t)
    } else {
        None
    };
    let wait_budget_ms = if flags & CHECK_FLAG_WAIT != 0 {
        Some(r.u32("truncated CHECK wait_budget_ms")?)
    } else {
        None
    };
    let count = r.count_u16(MIN_LABEL_LEN, MAX_LABELS, "truncated label count")?;
    let start = r.rest();
    for _ in 0..count {
        r.str_ref()?;
        r.str()?;
    }
    let used = start
        .len()
        .checked_sub(r.remaining())
        .ok_or("unreachable")?;
    let labels_raw = start.get(..used).ok_or("unreachable")?;
    Ok(CheckRef {
        control_point,
        tokens,
        wait_budget_ms,
        // count <= MAX_LABELS < u16::MAX
        label_count: u16::try_from(count).map_err(|_| "label count")?,
        labels_raw,
    })
}

fn flow_end_body<'a>(r: &mut Reader<'a>) -> Result<FlowIdsRef<'a>, Reason> {
    let count = r.count_u16(FLOW_ID_LEN, MAX_FLOW_END, "truncated FLOW_END count")?;
    // count × 8 <= remaining: checked by count_u16.
    let raw = r.bytes(count * FLOW_ID_LEN, "unreachable")?;
    Ok(FlowIdsRef { raw })
}

fn batch_body<'a>(r: &mut Reader<'a>) -> Result<CheckBatchRef<'a>, Reason> {
    let count = r.count_u16(MIN_CHECK_LEN, MAX_BATCH, "truncated batch count")?;
    let raw = r.rest();
    for _ in 0..count {
        check_body(r)?;
    }
    Ok(CheckBatchRef {
        count: u16::try_from(count).map_err(|_| "batch count")?,
        raw,
    })
}

/// Decodes one server → client frame from the front of `buf` into an owned [`Reply`].
///
/// `version` is what the connection speaks: that of the last `HELLO_REPLY` read on it
/// ([`ProtocolVersion::V1`] before any). It decides the layout of `CHECK_REPLY`,
/// `BATCH_REPLY` and `MEMBERS_REPLY`; a `HELLO_REPLY` is laid out by its own `version` field.
///
/// Same contract as [`decode_frame`]. Counts are checked against the bytes that remain before
/// anything is reserved, so a hostile count cannot make the client allocate.
pub fn decode_reply(
    buf: &[u8],
    max_frame_len: u32,
    version: ProtocolVersion,
) -> Result<Option<DecodedReply>, DecodeError> {
    let decoded = decode_with(buf, max_frame_len, |opcode, r| {
        Some(match opcode {
            opcode::CHECK_REPLY => check_reply_body(r, version).map(Reply::Check),
            opcode::BATCH_REPLY => batch_reply_body(r, version).map(Reply::Batch),
            opcode::FLOW_END_REPLY => flow_end_reply_body(r).map(Reply::FlowEnd),
            opcode::HELLO_REPLY => hello_reply_body(r).map(Reply::Hello),
            opcode::MEMBERS_REPLY => members_body(r, version).map(Reply::Members),
            opcode::PONG => r
                .bytes(r.remaining(), "unreachable")
                .map(|p| Reply::Pong(p.to_vec())),
            opcode::ERROR => error_body(r).map(Reply::Error),
            _ => return None,
        })
    })?;
    Ok(decoded.map(|(request_id, reply, len)| DecodedReply {
        request_id,
        reply,
        len,
    }))
}

/// Bytes of one encoded limiter result in `version`: 37 in version 1; version 2 adds
/// `flow_id u64` and `refusal u8`.
pub(crate) const fn limiter_result_len(version: ProtocolVersion) -> usize {
    let v1 = 2 + 1 + 2 + 8 * 4;
    match version {
        ProtocolVersion::V1 => v1,
        ProtocolVersion::V2 | ProtocolVersion::V3 => v1 + 8 + 1,
    }
}

fn check_reply_body(r: &mut Reader<'_>, version: ProtocolVersion) -> Result<CheckReply, Reason> {
    let mut limiters = SmallVec::new();
    let (decision, reason, wait_ns) = check_reply_with(r, version, |limiter| {
        limiters.push(limiter);
    })?;
    Ok(CheckReply {
        decision,
        reason,
        wait_ns,
        limiters,
    })
}

/// Walks one `CHECK_REPLY` body, handing each limiter result to `limiter` as it is read, and
/// returns the decision, its reason and its wait. The one definition of the body's layout and
/// checks: [`decode_reply`] keeps the limiters, [`crate::verdict`] drops them, and both
/// accept and refuse exactly the same bytes.
#[inline]
pub(crate) fn check_reply_with(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
    mut limiter: impl FnMut(LimiterResult),
) -> Result<(Decision, DecisionReason, u64), Reason> {
    let decision = Decision::from_u8(r.u8("truncated decision")?).ok_or("unknown decision")?;
    let reason =
        DecisionReason::from_u8(r.u8("truncated reason")?, version).ok_or("unknown reason")?;
    let wait_ns = r.u64("truncated wait_ns")?;
    let count = usize::from(r.u8("truncated limiter count")?);
    let count = r.check_count(count, limiter_result_len(version), MAX_LIMITERS)?;
    for _ in 0..count {
        let mut result = LimiterResult {
            limiter_index: r.u16("truncated limiter_index")?,
            outcome: LimiterOutcome::from_u8(r.u8("truncated outcome")?)
                .ok_or("unknown limiter outcome")?,
            status_code: r.u16("truncated status_code")?,
            tokens: r.f64("truncated tokens")?,
            remaining: r.f64("truncated remaining")?,
            current: r.f64("truncated current")?,
            wait_ns: r.u64("truncated limiter wait_ns")?,
            flow_id: None,
            refusal: None,
        };
        if version >= ProtocolVersion::V2 {
            result.flow_id = NonZeroU64::new(r.u64("truncated flow_id")?);
            result.refusal =
                Refusal::from_u8(r.u8("truncated refusal")?).ok_or("unknown refusal")?;
        }
        limiter(result);
    }
    Ok((decision, reason, wait_ns))
}

/// Smallest encoded batch item: an error tag with code and empty message (a reply item is at
/// least 12 bytes).
pub(crate) const MIN_BATCH_ITEM_LEN: usize = 1 + 2 + 2;

fn batch_reply_body(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Vec<BatchItem>, Reason> {
    let count = r.count_u16(MIN_BATCH_ITEM_LEN, MAX_BATCH, "truncated batch count")?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(match r.u8("truncated batch item tag")? {
            0 => BatchItem::Reply(check_reply_body(r, version)?),
            1 => BatchItem::Error(error_body(r)?),
            _ => return Err("unknown batch item tag"),
        });
    }
    Ok(items)
}

pub(crate) fn flow_end_reply_body(r: &mut Reader<'_>) -> Result<Vec<FlowEndStatus>, Reason> {
    let count = r.count_u16(1, MAX_FLOW_END, "truncated FLOW_END_REPLY count")?;
    let mut statuses = Vec::with_capacity(count);
    for _ in 0..count {
        statuses.push(
            FlowEndStatus::from_u8(r.u8("truncated flow end status")?)
                .ok_or("unknown flow end status")?,
        );
    }
    Ok(statuses)
}

fn error_body(r: &mut Reader<'_>) -> Result<ErrorReply, Reason> {
    let (code, message) = error_ref(r)?;
    Ok(ErrorReply {
        code,
        message: message.to_owned(),
    })
}

/// An `ERROR` body (or a failed batch item), its message borrowed from the frame.
pub(crate) fn error_ref<'a>(r: &mut Reader<'a>) -> Result<(ErrorCode, &'a str), Reason> {
    let code = ErrorCode::from_u16(r.u16("truncated error code")?);
    Ok((code, r.str()?))
}

/// A list of plain strings: `u16 count` + strings.
fn string_list(r: &mut Reader<'_>, what: Reason) -> Result<Vec<String>, Reason> {
    let count = r.count_u16(2, usize::from(u16::MAX), what)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(r.str()?.to_owned());
    }
    Ok(out)
}

pub(crate) fn hello_reply_body(r: &mut Reader<'_>) -> Result<HelloReply, Reason> {
    let version = ProtocolVersion::from_u16(r.u16("truncated version")?)
        .ok_or("unknown HELLO_REPLY version")?;
    let node_id = r.str()?.to_owned();
    let shard_count = r.u16("truncated shard_count")?;
    let hash_algo = r.u8("truncated hash_algo")?;
    let shard_index = match r.u16("truncated shard_index")? {
        SHARED_PORT_SHARD_INDEX => None,
        i => Some(i),
    };
    let ports = r.count_u16(2, usize::from(u16::MAX), "truncated shard_ports count")?;
    let mut shard_ports = Vec::with_capacity(ports);
    for _ in 0..ports {
        shard_ports.push(r.u16("truncated shard port")?);
    }
    let routing_label_keys = string_list(r, "truncated routing_label_keys count")?;
    let policy_names = string_list(r, "truncated policy_names count")?;
    let max_frame_len = r.u32("truncated max_frame_len")?;
    let max_batch = r.u16("truncated max_batch")?;
    let max_in_flight = r.u32("truncated max_in_flight")?;
    let control_point_routing = match version {
        ProtocolVersion::V1 => Vec::new(),
        ProtocolVersion::V2 | ProtocolVersion::V3 => control_point_routing(r)?,
    };
    Ok(HelloReply {
        version,
        node_id,
        shard_count,
        hash_algo,
        shard_index,
        shard_ports,
        routing_label_keys,
        policy_names,
        max_frame_len,
        max_batch,
        max_in_flight,
        control_point_routing,
    })
}

/// Smallest encoded control point routing entry: an empty name and an empty key list.
const MIN_CONTROL_POINT_ROUTING_LEN: usize = 2 + 2;

fn control_point_routing(r: &mut Reader<'_>) -> Result<Vec<ControlPointRouting>, Reason> {
    let count = r.count_u16(
        MIN_CONTROL_POINT_ROUTING_LEN,
        usize::from(u16::MAX),
        "truncated control_point_routing count",
    )?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(ControlPointRouting {
            control_point: r.str()?.to_owned(),
            routing_label_keys: string_list(r, "truncated control point key count")?,
        });
    }
    Ok(out)
}

/// Smallest encoded member: two empty strings, state, last_contact_ms (version 3 adds 9).
const MIN_MEMBER_LEN: usize = 2 + 2 + 1 + 8;

pub(crate) fn members_body(
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Vec<Member>, Reason> {
    let count = r.count_u16(
        MIN_MEMBER_LEN,
        usize::from(u16::MAX),
        "truncated member count",
    )?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut member = Member {
            node_id: r.str()?.to_owned(),
            address: r.str()?.to_owned(),
            state: MemberState::from_u8(r.u8("truncated member state")?)
                .ok_or("unknown member state")?,
            last_contact_ms: r.u64("truncated last_contact_ms")?,
            policy_digest: None,
        };
        if version >= ProtocolVersion::V3 {
            let known = r.u8("truncated digest_known")?;
            let digest = r.u64("truncated policy_digest")?;
            member.policy_digest = match (known, digest) {
                (1, digest) => Some(digest),
                (0, 0) => None,
                (0, _) => return Err("policy_digest set without digest_known"),
                _ => return Err("unknown digest_known"),
            };
        }
        out.push(member);
    }
    Ok(out)
}
