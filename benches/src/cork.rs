//! [`Corked`]: a connection's writes held back until its executor has run the other tasks
//! that were ready, then sent in one write.
//!
//! Why: hyper's HTTP/2 server answers each stream from its own task and flushes the
//! connection whenever the connection task runs. On a glommio shard the connection task runs
//! again right after the first stream task of a batch finished, so every response left in its
//! own `send` (measured: 1.0 `sendto` per request at h2load 8 x 64, against 0.016 `writev`
//! on tonic's tokio thread, where the connection task runs after every stream task of the
//! turn). Corked, a flush first yields: the connection task goes to the back of the shard's
//! run queue, the other streams of the batch finish their responses, and the flush sends them
//! together.
//!
//! How:
//! - [`Corked::poll_write`] appends to a buffer of at most [`CORK_LIMIT`] bytes (beyond it, the
//!   buffer is sent first: a write waits for the socket, so memory stays bounded).
//! - [`Corked::poll_flush`] with bytes buffered: if the buffer grew since the last time it
//!   yielded, it wakes its own task and answers `Pending` (at most [`MAX_YIELDS`] times in a
//!   row, which bounds the delay to that many passes of the run queue); once a pass added
//!   nothing, it sends the buffer.
//! - Reads pass through untouched.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held back before a write waits for them to be sent.
pub const CORK_LIMIT: usize = 256 * 1024;

/// Most times in a row a flush yields before it sends whatever is buffered.
pub const MAX_YIELDS: u8 = 8;

/// A stream whose writes are gathered until a flush finds nothing more coming (module docs).
#[derive(Debug)]
pub struct Corked<S> {
    inner: S,
    /// Bytes written by the caller and not yet sent.
    buf: Vec<u8>,
    /// How much of `buf` the socket has taken so far.
    sent: usize,
    /// Times the current flush has yielded.
    yields: u8,
    /// `buf`'s length when the flush last yielded.
    len_at_yield: usize,
}

impl<S> Corked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Corked<S> {
        Corked {
            inner,
            buf: Vec::new(),
            sent: 0,
            yields: 0,
            len_at_yield: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Corked<S> {
    /// Sends the whole buffer to `inner`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        self.yields = 0;
        self.len_at_yield = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= CORK_LIMIT {
            ready!(self.poll_send(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= CORK_LIMIT {
            ready!(self.poll_send(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        // Every slice is copied into the one buffer: hyper may hand over all of them at once.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            if self.yields < MAX_YIELDS && self.buf.len() > self.len_at_yield {
                self.yields += 1;
                self.len_at_yield = self.buf.len();
                // Back of the run queue: the tasks ready now run (and write) first.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_send(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// Counts the wake-ups of the task polling it.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A socket that records each write and takes at most `per_write` bytes of it.
    struct Socket {
        writes: Vec<usize>,
        bytes: Vec<u8>,
        per_write: usize,
        flushes: usize,
    }

    impl Socket {
        fn new(per_write: usize) -> Socket {
            Socket {
                writes: Vec::new(),
                bytes: Vec::new(),
                per_write,
                flushes: 0,
            }
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(self.per_write);
            self.writes.push(n);
            self.bytes.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(c: &mut Corked<Socket>, cx: &mut Context<'_>, data: &[u8]) {
        let written = Pin::new(c).poll_write(cx, data);
        assert!(matches!(written, Poll::Ready(Ok(n)) if n == data.len()));
    }

    fn flush(c: &mut Corked<Socket>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(c).poll_flush(cx)
    }

    #[test]
    fn responses_written_before_a_flush_finds_nothing_new_go_out_in_one_write() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Corked::new(Socket::new(usize::MAX));
        write(&mut c, &mut cx, b"first ");
        // The first flush yields: the task is woken to run again after the others.
        assert!(flush(&mut c, &mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
        assert!(c.inner.writes.is_empty());
        // Another stream's response arrives meanwhile: the flush yields once more.
        write(&mut c, &mut cx, b"second ");
        assert!(flush(&mut c, &mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
        // A pass that added nothing: everything goes out in one write.
        assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(c.inner.writes, vec![13]);
        assert_eq!(c.inner.bytes, b"first second ");
        assert_eq!(c.inner.flushes, 1);
        // The next batch starts over: its first flush yields again.
        write(&mut c, &mut cx, b"third");
        assert!(flush(&mut c, &mut cx).is_pending());
    }

    #[test]
    fn a_flush_yields_at_most_max_yields_times_however_much_keeps_coming() {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut c = Corked::new(Socket::new(usize::MAX));
        for _ in 0..MAX_YIELDS {
            write(&mut c, &mut cx, b"x");
            assert!(flush(&mut c, &mut cx).is_pending());
        }
        write(&mut c, &mut cx, b"x");
        assert!(matches!(flush(&mut c, &mut cx), Poll::Ready(Ok(()))));
        assert_eq!(wakes.0.load(Ordering::Relaxed), usize::from(MAX_YIELDS));
        assert_eq!(c.inner.bytes.len(), usize::from(MAX_YIELDS) + 1);
    }

    #[test]
    fn a_full_buffer_is_sent_before_more_is_taken_and_partial_sends_resume() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        // The socket takes 100 KiB per write: a full buffer needs three.
        let mut c = Corked::new(Socket::new(100 * 1024));
        let chunk = vec![7u8; CORK_LIMIT];
        write(&mut c, &mut cx, &chunk);
        assert!(
            c.inner.writes.is_empty(),
            "up to the limit, nothing is sent"
        );
        write(&mut c, &mut cx, b"tail");
        assert_eq!(c.inner.writes, vec![100 * 1024, 100 * 1024, 56 * 1024]);
        assert_eq!(c.buf, b"tail");
        assert!(Pin::new(&mut c).poll_shutdown(&mut cx).is_ready());
        assert_eq!(c.inner.bytes.len(), CORK_LIMIT + 4);
        assert!(c.inner.bytes.ends_with(b"tail"));
    }

    #[test]
    fn vectored_writes_are_taken_whole_and_in_order() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut c = Corked::new(Socket::new(usize::MAX));
        let parts = [
            IoSlice::new(b"head"),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        let written = Pin::new(&mut c).poll_write_vectored(&mut cx, &parts);
        assert!(matches!(written, Poll::Ready(Ok(8))));
        assert!(flush(&mut c, &mut cx).is_pending());
        assert!(flush(&mut c, &mut cx).is_ready());
        assert_eq!(c.inner.bytes, b"headbody");
    }
}
