//! Decoding a server → client frame for its verdicts alone: accepted or not, per check.
//!
//! [`decode_reply`](crate::decode_reply) builds an owned [`Reply`](crate::Reply), and a
//! `CHECK_REPLY` there is a [`CheckReply`](crate::CheckReply) of over 200 bytes with every
//! limiter's detail, moved by value from the decoder to its caller. A caller that only counts
//! admissions (the load generator, at millions of checks a second) pays for that detail on
//! every reply. [`decode_verdict`] reads the same bytes into a borrowed [`Verdict`]: a
//! `CHECK_REPLY` is its decision, a `BATCH_REPLY` a lazy iterator over its items' decisions,
//! an `ERROR` its code and borrowed message. It allocates nothing for those.
//!
//! It accepts and refuses exactly what [`decode_reply`](crate::decode_reply) does, with the
//! same [`DecodeError`]: both walk a body through the same functions of [`crate::decode`], and
//! the fuzz body (`crate::fuzzing`) checks the two agree on any input. Replies a load
//! generator has no use for (`FLOW_END_REPLY`, `HELLO_REPLY`, `MEMBERS_REPLY`) are validated
//! with the owned decoders and reported as [`Verdict::Other`].

use crate::coding::{Reader, Reason};
use crate::decode::{
    check_reply_with, decode_with, error_ref, flow_end_reply_body, hello_reply_body, members_body,
    MIN_BATCH_ITEM_LEN,
};
use crate::error::DecodeError;
use crate::frame::{opcode, ErrorCode, MAX_BATCH};
use crate::types::Decision;
use crate::version::ProtocolVersion;

/// A decoded server → client frame's verdicts and where the frame ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodedVerdict<'a> {
    /// The request this answers (0 for an `ERROR` not tied to a request).
    pub request_id: u32,
    /// What the frame says.
    pub verdict: Verdict<'a>,
    /// Bytes consumed from the input, length prefix included.
    pub len: usize,
}

/// What one server → client frame decided, borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict<'a> {
    /// `CHECK_REPLY`: `true` if the check was accepted.
    Check(bool),
    /// `BATCH_REPLY`: one verdict per check, in request order.
    Batch(BatchVerdicts<'a>),
    /// `PONG` and its payload.
    Pong(&'a [u8]),
    /// `ERROR`.
    Error(ErrorRef<'a>),
    /// Any other reply (`FLOW_END_REPLY`, `HELLO_REPLY`, `MEMBERS_REPLY`), by opcode: valid,
    /// its content not kept.
    Other(u8),
}

/// An `ERROR` frame or a failed batch item, its message borrowed from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRef<'a> {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: &'a str,
}

/// The items of a validated `BATCH_REPLY`: iterate for one `Ok(accepted)` or `Err(error)` per
/// check, in request order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchVerdicts<'a> {
    count: u16,
    /// The items' bytes, validated by [`decode_verdict`].
    raw: &'a [u8],
    version: ProtocolVersion,
}

impl<'a> BatchVerdicts<'a> {
    /// Items in the batch.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True for a batch of no items.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The items' verdicts.
    pub fn iter(&self) -> BatchVerdictIter<'a> {
        BatchVerdictIter {
            left: self.count,
            r: Reader::new(self.raw),
            version: self.version,
        }
    }
}

impl<'a> IntoIterator for BatchVerdicts<'a> {
    type Item = Result<bool, ErrorRef<'a>>;
    type IntoIter = BatchVerdictIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over a [`BatchVerdicts`].
#[derive(Debug, Clone)]
pub struct BatchVerdictIter<'a> {
    left: u16,
    r: Reader<'a>,
    version: ProtocolVersion,
}

impl<'a> Iterator for BatchVerdictIter<'a> {
    type Item = Result<bool, ErrorRef<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        // The bytes were validated when the batch was decoded, so this never fails; if it
        // somehow did, the iterator ends rather than panicking.
        match batch_item(&mut self.r, self.version) {
            Ok(item) => Some(item),
            Err(_) => {
                self.left = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.left);
        (n, Some(n))
    }
}

impl ExactSizeIterator for BatchVerdictIter<'_> {}

/// Decodes one server → client frame from the front of `buf` for its verdicts.
///
/// Same contract, and the same answer for any bytes, as
/// [`decode_reply`](crate::decode_reply) in `version`: `Ok(None)` until `buf` holds a whole
/// frame; [`DecodeError::Body`] to skip the frame; [`DecodeError::Framing`] to close.
pub fn decode_verdict(
    buf: &[u8],
    max_frame_len: u32,
    version: ProtocolVersion,
) -> Result<Option<DecodedVerdict<'_>>, DecodeError> {
    let decoded = decode_with(buf, max_frame_len, |opcode, r| {
        Some(match opcode {
            opcode::CHECK_REPLY => {
                check_reply_with(r, version, drop).map(|(d, _, _)| Verdict::Check(accepted(d)))
            }
            opcode::BATCH_REPLY => batch(r, version).map(Verdict::Batch),
            opcode::FLOW_END_REPLY => flow_end_reply_body(r).map(|_| Verdict::Other(opcode)),
            opcode::HELLO_REPLY => hello_reply_body(r).map(|_| Verdict::Other(opcode)),
            opcode::MEMBERS_REPLY => members_body(r, version).map(|_| Verdict::Other(opcode)),
            opcode::PONG => r.bytes(r.remaining(), "unreachable").map(Verdict::Pong),
            opcode::ERROR => {
                error_ref(r).map(|(code, message)| Verdict::Error(ErrorRef { code, message }))
            }
            _ => return None,
        })
    })?;
    Ok(decoded.map(|(request_id, verdict, len)| DecodedVerdict {
        request_id,
        verdict,
        len,
    }))
}

fn accepted(decision: Decision) -> bool {
    decision == Decision::Accepted
}

/// Validates a `BATCH_REPLY` body (the checks of `decode_reply`'s, in the same order) and
/// keeps its items' bytes for [`BatchVerdictIter`].
fn batch<'a>(r: &mut Reader<'a>, version: ProtocolVersion) -> Result<BatchVerdicts<'a>, Reason> {
    let count = r.count_u16(MIN_BATCH_ITEM_LEN, MAX_BATCH, "truncated batch count")?;
    let raw = r.rest();
    for _ in 0..count {
        // A failed item is a valid item: only the walk's own failure counts here.
        let _item = batch_item(r, version)?;
    }
    Ok(BatchVerdicts {
        // count <= MAX_BATCH < u16::MAX
        count: u16::try_from(count).map_err(|_| "batch count")?,
        raw,
        version,
    })
}

/// One batch item: a check's decision, or a failed item's error.
#[inline]
fn batch_item<'a>(
    r: &mut Reader<'a>,
    version: ProtocolVersion,
) -> Result<Result<bool, ErrorRef<'a>>, Reason> {
    match r.u8("truncated batch item tag")? {
        0 => check_reply_with(r, version, drop).map(|(d, _, _)| Ok(accepted(d))),
        1 => error_ref(r).map(|(code, message)| Err(ErrorRef { code, message })),
        _ => Err("unknown batch item tag"),
    }
}
