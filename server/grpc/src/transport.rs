//! The port's HTTP/2 server: hyper's, on the connections [`BoundedIncoming`] accepts, with
//! optional TLS, keepalive, the stream limit, the client's `grpc-timeout`, and a graceful
//! drain.
//!
//! tonic's own server is this same hyper server wrapped in layers the port does not use
//! (HTTP/1 detection, a trace hook, error recovery, boxed bodies in and out). At 8 connections
//! × 64 streams they cost more than a tenth of the floor's throughput: hyper over tonic's
//! routes without tonic's server served 1.12–1.19x the floor's requests per second in
//! interleaved runs (benches/grpc_compare_notes.md, the round of 2026-12-01 15:15–16:45
//! UTC). So the port runs hyper directly and keeps what tonic's server did for it:
//!
//! - HTTP/2 only, [`MAX_CONCURRENT_STREAMS`], and a PING every [`HTTP2_KEEPALIVE_INTERVAL`]
//!   that must be answered within [`HTTP2_KEEPALIVE_TIMEOUT`];
//! - TLS by rustls, offering `h2` by ALPN, the handshake in the connection's own task (a slow
//!   client does not hold up the accept loop) and done within the port's `handshake_timeout`
//!   of the accept, or the connection is closed;
//! - the client's `grpc-timeout` on every call (`Deadline`): a call still running then is
//!   answered `CANCELLED` "Timeout expired", as tonic's server answered it (the hot calls'
//!   handlers answer `DEADLINE_EXCEEDED` at the same instant, [`crate::deadline`]);
//! - on stop, no new connections, a GOAWAY on each open one, and the calls in flight finish
//!   (the caller bounds how long: [`crate::server::SHUTDOWN_GRACE`]).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt as _;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;

use crate::connections::BoundedIncoming;
use crate::deadline::parse_grpc_timeout;
use crate::direct_unary::CallFuture;
use crate::hot_calls::{HotCalls, Rest};
use crate::server::{HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS};

/// How long the accept loop waits after a failed accept (out of file descriptors, say)
/// before the next: a failure that repeats must not spin the thread.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Serves `service` on every connection `incoming` accepts (over TLS with `tls`, each
/// handshake done within `handshake_timeout`) until `stop` completes, then drains: closes the
/// listener, sends each connection a GOAWAY and returns once their calls have finished.
pub async fn serve<R: Rest>(
    mut incoming: BoundedIncoming,
    service: HotCalls<R>,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // No `date` header: gRPC's response headers carry none (grpc-go and grpc-java send
        // none, no SDK reads it), and hyper reads the wall clock for it on every response.
        .auto_date_header(false);
    let tls = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let connection = tokio::select! {
            () = &mut stop => break,
            next = incoming.next() => match next {
                Some(Ok(connection)) => connection,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "grpc port: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
                None => break,
            },
        };
        let service = Deadline(service.clone());
        let http2 = http2.clone();
        // Taken before the task starts, so a stop that comes during a TLS handshake still
        // waits for (and GOAWAYs) the connection that handshake opens.
        let watcher = graceful.watcher();
        match &tls {
            None => {
                tokio::spawn(serve_connection(http2, connection, service, watcher));
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        tls.accept(connection),
                    )
                    .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "grpc connection: TLS handshake failed");
                            return;
                        }
                        // Dropping the handshake closes the socket.
                        Err(_) => {
                            tracing::debug!(
                                ?handshake_timeout,
                                "grpc connection: TLS handshake not done in time"
                            );
                            return;
                        }
                    };
                    serve_connection(http2, stream, service, watcher).await;
                });
            }
        }
    }
    // Dropping the listener refuses new connections while the open ones drain.
    drop(incoming);
    graceful.shutdown().await;
}

/// Serves HTTP/2 on `io` (a TCP or TLS stream) until the client closes it or the drain that
/// `watcher` follows ends it with a GOAWAY.
async fn serve_connection<I, R: Rest>(
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    io: I,
    service: Deadline<R>,
    watcher: Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let served = watcher.watch(http2.serve_connection(TokioIo::new(io), service));
    if let Err(e) = served.await {
        tracing::debug!(error = %e, "grpc connection ended with an error");
    }
}

/// The port's service as hyper calls it: the request body in tonic's body type, and the
/// call answered `CANCELLED` "Timeout expired" if it outlives the client's `grpc-timeout`.
struct Deadline<R>(HotCalls<R>);

impl<R: Rest> hyper::service::Service<http::Request<Incoming>> for Deadline<R> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn call(&self, request: http::Request<Incoming>) -> CallFuture {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let call = self.0.call(request.map(Body::new));
        match timeout {
            None => call,
            Some(timeout) => Box::pin(async move {
                tokio::time::timeout(timeout, call)
                    .await
                    .unwrap_or_else(|_| Ok(Status::cancelled("Timeout expired").into_http()))
            }),
        }
    }
}
