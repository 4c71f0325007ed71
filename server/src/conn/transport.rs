//! The byte stream under a connection, plain TCP or TLS, split into the halves its reader and
//! writer tasks own: one read/write loop serves both.
//!
//! Plain TCP: the writer gets a second descriptor on the same socket (`dup`), so reads and
//! writes proceed independently with no lock between them — the hot path as it always was.
//! TLS: one rustls session serves both directions, so the halves share the stream in an
//! `Rc<RefCell<_>>`, each borrowing it only for the length of one poll (both tasks run on the
//! connection's shard thread and never poll at the same time).

use futures::io::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

/// A connection's stream, split for its reader and writer tasks.
pub trait Transport: Sized + 'static {
    /// What the reader task reads from.
    type Reader: AsyncRead + Unpin + 'static;
    /// What the writer task writes to.
    type Writer: AsyncWrite + Unpin + 'static;

    /// The two halves.
    fn split(self) -> io::Result<(Self::Reader, Self::Writer)>;
}

impl Transport for TcpStream {
    type Reader = TcpStream;
    type Writer = TcpStream;

    fn split(self) -> io::Result<(TcpStream, TcpStream)> {
        // SAFETY: dup returns a new descriptor we own; TcpStream closes it on drop.
        let dup = unsafe { libc::dup(self.as_raw_fd()) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh, open socket descriptor owned by nobody else.
        let writer = unsafe { TcpStream::from_raw_fd(dup) };
        Ok((self, writer))
    }
}

impl Transport for TlsStream<TcpStream> {
    type Reader = SharedHalf<TlsStream<TcpStream>>;
    type Writer = SharedHalf<TlsStream<TcpStream>>;

    fn split(self) -> io::Result<(Self::Reader, Self::Writer)> {
        let shared = Rc::new(RefCell::new(self));
        Ok((SharedHalf(shared.clone()), SharedHalf(shared)))
    }
}

/// One half of a stream both tasks use; see the module docs.
pub struct SharedHalf<S>(Rc<RefCell<S>>);

impl<S> SharedHalf<S> {
    /// Runs `poll` on the stream. Never contended (one thread, no nested polls); if it somehow
    /// were, the call fails instead of panicking.
    fn with<T>(&self, poll: impl FnOnce(&mut S) -> Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match self.0.try_borrow_mut() {
            Ok(mut stream) => poll(&mut stream),
            Err(_) => Poll::Ready(Err(io::Error::other("stream busy in another task"))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SharedHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| Pin::new(s).poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SharedHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| Pin::new(s).poll_flush(cx))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| Pin::new(s).poll_close(cx))
    }
}
