//! A connection's read buffer: it grows as bytes arrive, never ahead of them.
//!
//! A frame's 4-byte length prefix is the peer's claim, not bytes it has sent: sizing the
//! buffer from it would let 4 bytes per connection make the server allocate and zero-fill
//! `max_frame_len` (1 MiB by default). So the buffer only grows when it is full, to at most
//! twice what it holds (capped at the frame being read): memory follows bytes received.
//! After a large frame it shrinks back once empty.

/// Initial (and resting) size. Most frames are under 200 bytes; 64 KiB lets one read take a
/// deep pipeline's worth.
pub(crate) const INITIAL: usize = 64 * 1024;

/// Bytes read from the socket and not yet decoded: `buf[start..filled]`.
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    filled: usize,
}

impl ReadBuf {
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            buf: vec![0; INITIAL],
            start: 0,
            filled: 0,
        }
    }

    /// The bytes not yet decoded.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.filled]
    }

    /// Marks `n` bytes at the front of [`ReadBuf::data`] decoded.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.filled);
    }

    /// Makes room for the next read. `frame_total` is the size of the frame at the front of
    /// [`ReadBuf::data`] as its prefix declares it (already checked against
    /// `max_frame_len`), if 4 bytes of it are here. Moves a partial frame to the front; grows
    /// only a full buffer, to at most twice its bytes and never past `frame_total`.
    pub(crate) fn make_room(&mut self, frame_total: Option<usize>) {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            if self.buf.len() > INITIAL {
                // A large frame is done: give its memory back.
                self.buf = vec![0; INITIAL];
            }
        } else if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.buf.len() {
            let doubled = self.buf.len().saturating_mul(2);
            let target = match frame_total {
                // Full and the frame is longer: grow towards it, no further than doubling.
                Some(total) if total > self.filled => doubled.min(total),
                _ => doubled,
            };
            self.buf.resize(target, 0);
        }
    }

    /// Where the next read goes (never empty after [`ReadBuf::make_room`]).
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }

    /// Records `n` bytes read into [`ReadBuf::spare`].
    pub(crate) fn advance(&mut self, n: usize) {
        self.filled = (self.filled + n).min(self.buf.len());
    }

    /// Bytes allocated (and zero-filled) for reading.
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// Copies `bytes` in as reads would, making room first each time.
    fn receive(b: &mut ReadBuf, mut bytes: &[u8], frame_total: Option<usize>) {
        while !bytes.is_empty() {
            b.make_room(frame_total);
            let spare = b.spare();
            let n = spare.len().min(bytes.len());
            spare[..n].copy_from_slice(&bytes[..n]);
            b.advance(n);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn a_prefix_announcing_a_large_frame_allocates_nothing_more() {
        let mut b = ReadBuf::new();
        let total = MIB + 4;
        let mut header = (MIB as u32).to_le_bytes().to_vec();
        header.extend_from_slice(&[0x06, 0, 1, 0, 0, 0]);
        receive(&mut b, &header, Some(total));
        b.make_room(Some(total));
        assert_eq!(b.allocated(), INITIAL, "no growth on a claim");
        assert_eq!(b.data(), header.as_slice());
    }

    #[test]
    fn the_buffer_grows_with_the_bytes_received_up_to_the_frame() {
        let mut b = ReadBuf::new();
        let total = MIB + 4;
        let frame: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut received = 0;
        for chunk in frame.chunks(10_000) {
            receive(&mut b, chunk, Some(total));
            received += chunk.len();
            assert!(
                b.allocated() <= (2 * received).max(INITIAL),
                "{} allocated for {received} received",
                b.allocated()
            );
            assert!(b.allocated() <= total.max(INITIAL));
        }
        assert_eq!(
            b.data(),
            frame.as_slice(),
            "bytes kept in order across growth"
        );
        b.consume(total);
        b.make_room(None);
        assert_eq!(
            b.allocated(),
            INITIAL,
            "shrinks back once the frame is decoded"
        );
    }

    #[test]
    fn a_partial_frame_moves_to_the_front_without_growing() {
        let mut b = ReadBuf::new();
        let bytes: Vec<u8> = (0..INITIAL).map(|i| i as u8).collect();
        receive(&mut b, &bytes, None);
        b.consume(INITIAL - 10);
        b.make_room(Some(100));
        assert_eq!(b.allocated(), INITIAL);
        assert_eq!(b.data(), &bytes[INITIAL - 10..]);
        assert_eq!(b.spare().len(), INITIAL - 10);
    }
}
