//! Bounded primitive reads and writes shared by the decoders and encoders.
//!
//! [`Reader`] walks a borrowed slice. Every read checks what remains first and fails with a
//! static reason instead of panicking; nothing here indexes, slices unchecked or allocates.

use crate::frame::{MAX_INTERNED, MAX_STRING_LEN, STR_REF_INTERNED_BIT};
use crate::StrRef;

/// A static description of why bytes failed to decode.
pub(crate) type Reason = &'static str;

/// A cursor over untrusted bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    /// What has not been read yet.
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The unread bytes.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    fn array<const N: usize>(&mut self, what: Reason) -> Result<[u8; N], Reason> {
        let (head, tail) = self.buf.split_first_chunk::<N>().ok_or(what)?;
        self.buf = tail;
        Ok(*head)
    }

    #[inline]
    pub(crate) fn u8(&mut self, what: Reason) -> Result<u8, Reason> {
        let (&b, tail) = self.buf.split_first().ok_or(what)?;
        self.buf = tail;
        Ok(b)
    }

    #[inline]
    pub(crate) fn u16(&mut self, what: Reason) -> Result<u16, Reason> {
        self.array(what).map(u16::from_le_bytes)
    }

    #[inline]
    pub(crate) fn u32(&mut self, what: Reason) -> Result<u32, Reason> {
        self.array(what).map(u32::from_le_bytes)
    }

    #[inline]
    pub(crate) fn u64(&mut self, what: Reason) -> Result<u64, Reason> {
        self.array(what).map(u64::from_le_bytes)
    }

    #[inline]
    pub(crate) fn f64(&mut self, what: Reason) -> Result<f64, Reason> {
        self.array(what).map(f64::from_le_bytes)
    }

    /// `n` bytes, after checking that many remain.
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize, what: Reason) -> Result<&'a [u8], Reason> {
        if n > self.buf.len() {
            return Err(what);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// `len` bytes of UTF-8, `len <= MAX_STRING_LEN`.
    #[inline]
    fn utf8(&mut self, len: usize) -> Result<&'a str, Reason> {
        if len > MAX_STRING_LEN {
            return Err("string longer than MAX_STRING_LEN");
        }
        let raw = self.bytes(len, "string runs past the end of the frame")?;
        utf8(raw)
    }

    /// A plain string: `u16 len` + UTF-8.
    #[inline]
    pub(crate) fn str(&mut self) -> Result<&'a str, Reason> {
        let len = self.u16("truncated string length")?;
        self.utf8(usize::from(len))
    }

    /// A string ref: `u16`; top bit set = interned id in the low 15 bits, else inline length.
    #[inline]
    pub(crate) fn str_ref(&mut self) -> Result<StrRef<'a>, Reason> {
        let tag = self.u16("truncated string ref")?;
        if tag & STR_REF_INTERNED_BIT != 0 {
            let id = tag & !STR_REF_INTERNED_BIT;
            if usize::from(id) >= MAX_INTERNED {
                return Err("interned id out of range");
            }
            Ok(StrRef::Interned(id))
        } else {
            self.utf8(usize::from(tag)).map(StrRef::Inline)
        }
    }

    /// A count of list elements, each at least `min_elem_len` bytes: rejected up front if the
    /// rest of the frame cannot possibly hold that many (so no caller ever reserves memory for a
    /// count the bytes do not back) or if it exceeds `max`.
    pub(crate) fn count_u16(
        &mut self,
        min_elem_len: usize,
        max: usize,
        what: Reason,
    ) -> Result<usize, Reason> {
        let count = usize::from(self.u16(what)?);
        self.check_count(count, min_elem_len, max)
    }

    pub(crate) fn check_count(
        &self,
        count: usize,
        min_elem_len: usize,
        max: usize,
    ) -> Result<usize, Reason> {
        if count > max {
            return Err("element count exceeds its limit");
        }
        match count.checked_mul(min_elem_len) {
            Some(need) if need <= self.buf.len() => Ok(count),
            _ => Err("element count larger than the frame can hold"),
        }
    }

    /// Fails if bytes are left over: every body must be consumed exactly.
    pub(crate) fn finish(&self) -> Result<(), Reason> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes after the body")
        }
    }
}

/// Validates UTF-8, fast for the common all-ASCII identifier.
///
/// `std::str::from_utf8` costs ~10 ns per call on short strings (its setup dominates), which
/// would be half of a `CHECK`'s decode budget; an inlined ASCII scan is a few cycles.
#[inline]
pub(crate) fn utf8(raw: &[u8]) -> Result<&str, Reason> {
    if raw.is_ascii() {
        // SAFETY: every byte is < 0x80 (just checked), and any sequence of ASCII bytes is valid
        // UTF-8. The proof is local to these two lines; it relies on no invariant elsewhere.
        Ok(unsafe { std::str::from_utf8_unchecked(raw) })
    } else {
        std::str::from_utf8(raw).map_err(|_| "string is not valid UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_fast_path_agrees_with_std() {
        let cases: [&[u8]; 8] = [
            b"",
            b"user-42",
            "é".as_bytes(),
            b"\xff",
            b"a\x80",
            b"\x7f",
            "\u{10FFFF}".as_bytes(),
            b"\xed\xa0\x80", // a UTF-16 surrogate: invalid
        ];
        for raw in cases {
            assert_eq!(utf8(raw).ok(), std::str::from_utf8(raw).ok(), "{raw:?}");
        }
    }
}
