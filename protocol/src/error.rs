//! Codec errors. Each says what the peer should do next: a [`DecodeError`] tells whether the
//! framing survived (skip the frame and go on) or not (reply and close).

use crate::frame::ErrorCode;

/// Why bytes failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame's length prefix was valid, its body was not. Framing is intact: the receiver
    /// skips `frame_len` bytes, answers `ERROR { code, reason }` for `request_id`, and keeps
    /// reading the connection.
    #[error("{code} in frame (opcode {opcode:#04x}, request {request_id}): {reason}")]
    Body {
        /// The error code to answer with (`MALFORMED_FRAME` or `UNKNOWN_OPCODE`).
        code: ErrorCode,
        /// What was wrong.
        reason: &'static str,
        /// The request id from the header, so the error can name the failed request.
        request_id: u32,
        /// The opcode from the header.
        opcode: u8,
        /// Bytes to skip, length prefix included, to reach the next frame.
        frame_len: usize,
    },
    /// The length prefix itself is unacceptable (above the receiver's maximum or below the
    /// 6-byte minimum). Nothing after it can be trusted: the receiver answers `ERROR { code }`
    /// with request id 0 and closes the connection.
    #[error("{code}: {reason} (declared len {declared_len}, max {max_frame_len})")]
    Framing {
        /// `FRAME_TOO_LARGE`, or `MALFORMED_FRAME` for a length below the minimum.
        code: ErrorCode,
        /// What was wrong.
        reason: &'static str,
        /// The `len` field as read.
        declared_len: u32,
        /// The receiver's limit.
        max_frame_len: u32,
    },
}

impl DecodeError {
    /// The `ERROR.code` to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Body { code, .. } | Self::Framing { code, .. } => *code,
        }
    }

    /// The static reason, suitable as the `ERROR.message`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Body { reason, .. } | Self::Framing { reason, .. } => reason,
        }
    }

    /// True if the connection must be closed (framing lost).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Framing { .. })
    }

    /// The request id the `ERROR` reply should carry (0 when framing is lost).
    pub fn request_id(&self) -> u32 {
        match self {
            Self::Body { request_id, .. } => *request_id,
            Self::Framing { .. } => 0,
        }
    }
}

/// Why a frame could not be encoded. The output buffer is left as it was before the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string is longer than [`crate::MAX_STRING_LEN`] bytes.
    #[error("string of {len} bytes exceeds MAX_STRING_LEN")]
    StringTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// An API key longer than [`crate::MAX_API_KEY_LEN`] bytes.
    #[error("API key of {len} bytes exceeds MAX_API_KEY_LEN")]
    ApiKeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// More labels than [`crate::MAX_LABELS`].
    #[error("{count} labels exceed MAX_LABELS")]
    TooManyLabels {
        /// How many were given.
        count: usize,
    },
    /// A list has more elements than its count field (or limit) allows.
    #[error("{count} elements exceed the limit of {max} for {what}")]
    TooManyItems {
        /// Which list.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `tokens` must be finite and non-negative.
    #[error("tokens must be finite and >= 0")]
    InvalidTokens,
    /// An interned id at or above [`crate::MAX_INTERNED`].
    #[error("interned id {id} out of range")]
    InternedIdOutOfRange {
        /// The id.
        id: u16,
    },
    /// The frame would exceed `u32::MAX` bytes.
    #[error("frame too large to encode")]
    FrameTooLarge,
    /// A [`crate::BatchReplyWriter`] was finished with a different number of items than it
    /// declared.
    #[error("batch reply declared {declared} items but {written} were written")]
    BatchCountMismatch {
        /// The count given to the writer.
        declared: usize,
        /// The items actually written.
        written: usize,
    },
}

/// Why an `INTERN` could not be applied to an [`crate::InternTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InternError {
    /// The id is at or above [`crate::MAX_INTERNED`]. Table unchanged.
    #[error("interned id {id} out of range (max {})", crate::MAX_INTERNED - 1)]
    IdOutOfRange {
        /// The id.
        id: u16,
    },
    /// Binding would take the connection's interned bytes over [`crate::MAX_INTERNED_BYTES`].
    /// Table unchanged.
    #[error("interning {len} more bytes exceeds MAX_INTERNED_BYTES")]
    BudgetExceeded {
        /// Length of the rejected string.
        len: usize,
    },
}
