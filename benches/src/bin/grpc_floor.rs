//! The gRPC transport floor: a minimal unary gRPC server on the same stack as Tollgate's
//! compat port (tonic 0.14 over hyper/h2, one thread running a current-thread tokio runtime,
//! the same HTTP/2 keepalive and stream settings), answering `ShouldRateLimit` and `Check`
//! with a constant reply and deciding nothing.
//!
//! `benches/grpc_compare.sh` measures it in the same run as Tollgate: what Tollgate adds on
//! top of it (the hop to the shard, the decision, building the real reply) is the ratio.
//!
//! ```text
//! grpc_floor 127.0.0.1:0 [THREADS]   # prints "grpc_floor listening ADDR", serves until killed
//! ```
//!
//! `THREADS` (default 1) runs that many such threads, each its own runtime and listener on
//! the port with SO_REUSEPORT, as Tollgate's port runs with `server.grpc_threads`.

use anyhow::Context as _;
use tollgate_benches::floor::Constant;
use tollgate_benches::floor_threads;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1::flow_control_service_server::FlowControlServiceServer;
use tollgate_grpc::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tollgate_grpc::server::{
    HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS,
};
use tollgate_grpc::tonic::transport::Server;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = floor_threads::addr_arg(args.next())?;
    let threads = floor_threads::threads_arg(args.next(), "second")?;
    floor_threads::serve_on_threads("grpc_floor", addr, threads, serve)
}

/// Serves `listener` on this thread, as Tollgate's port serves each of its listeners: the
/// runtime runs on the thread that calls `block_on`.
fn serve(listener: std::net::TcpListener) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        Server::builder()
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .add_service(RateLimitServiceServer::new(Constant))
            .add_service(FlowControlServiceServer::new(Constant))
            .serve_with_incoming(incoming)
            .await
            .context("serving")
    })
}
