//! The gRPC port's TCP connections, bounded: at most `max_connections` open at once, and each
//! must send its first [`OPENING_BYTES`] bytes within `handshake_timeout`
//! ([`ConnectionConfig`]).
//!
//! - **Cap.** Each accepted connection holds a permit of a semaphore until it closes. A
//!   connection accepted while none is free is closed at once (the client sees the
//!   connection reset or closed and, for the SDKs, fails open for that call), so a flood of
//!   connections cannot exhaust file descriptors or memory.
//! - **Handshake timeout.** HTTP/2's keepalive pings only start once HTTP/2 runs; a client
//!   that opens a TCP connection and sends nothing would hold its slot forever. A connection
//!   that has not sent [`OPENING_BYTES`] bytes (the length of the HTTP/2 connection preface;
//!   with TLS, the start of the ClientHello) when the timeout passes is closed: its next read
//!   fails with `TimedOut`, which ends it. A TLS client that stalls later in its handshake
//!   is closed when the same timeout has passed since the accept
//!   ([`crate::transport::serve`] bounds the whole handshake).
//!
//! [`BoundedIncoming`] is the accept stream [`crate::transport::serve`] takes connections
//! from.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::config::ConnectionConfig;

/// Bytes a connection must send within the handshake timeout: the HTTP/2 client connection
/// preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is 24.
pub const OPENING_BYTES: usize = 24;

/// Accepts connections on the gRPC port, within the bounds (see the module docs).
pub struct BoundedIncoming {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    handshake_timeout: Duration,
    /// Connections closed because the cap was reached.
    refused: u64,
}

impl BoundedIncoming {
    /// Accepts on `listener`, each connection holding one of `permits` (the node's cap,
    /// shared by every listener of the port: [`BoundedIncoming::permits`]) and given
    /// `handshake_timeout` to send its opening bytes.
    pub fn new(
        listener: TcpListener,
        permits: Arc<Semaphore>,
        handshake_timeout: Duration,
    ) -> BoundedIncoming {
        BoundedIncoming {
            listener,
            permits,
            handshake_timeout,
            refused: 0,
        }
    }

    /// The cap of `config` as a semaphore for [`BoundedIncoming::new`]: one permit per
    /// connection.
    pub fn permits(config: &ConnectionConfig) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(
            config.max_connections.min(Semaphore::MAX_PERMITS),
        ))
    }
}

impl tokio_stream::Stream for BoundedIncoming {
    type Item = io::Result<BoundedConnection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let (stream, peer) = match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                // The transport logs accept errors and asks again after a pause.
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Ok(accepted)) => accepted,
            };
            let Ok(permit) = this.permits.clone().try_acquire_owned() else {
                this.refused += 1;
                // One line per power of two refused: visible, not a log flood.
                if this.refused.is_power_of_two() {
                    tracing::warn!(
                        %peer,
                        refused = this.refused,
                        "grpc connection cap reached (server.grpc_connections.max_connections): closing new connections"
                    );
                }
                drop(stream);
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "grpc connection: TCP_NODELAY not set");
            }
            return Poll::Ready(Some(Ok(BoundedConnection {
                stream,
                _permit: permit,
                opening: Some(Box::pin(tokio::time::sleep(this.handshake_timeout))),
                received: 0,
            })));
        }
    }
}

/// One accepted connection: holds its slot of the cap until dropped, and fails its reads once
/// the handshake timeout passes before [`OPENING_BYTES`] bytes came.
pub struct BoundedConnection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// The handshake timer; None once the opening bytes came.
    opening: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl AsyncRead for BoundedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Some(timer) = this.opening.as_mut() {
            if let Poll::Ready(Ok(())) = read {
                this.received += buf.filled().len() - before;
                if this.received >= OPENING_BYTES {
                    this.opening = None;
                    return read;
                }
            }
            // Polling the timer registers this task to be woken when it fires.
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no handshake within server.grpc_connections.handshake_timeout",
                )));
            }
        }
        read
    }
}

impl AsyncWrite for BoundedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
