//! The gRPC transport floor: a minimal unary gRPC server on the same stack as Tollgate's
//! compat port (tonic 0.14 over hyper/h2, one thread running a current-thread tokio runtime,
//! the same HTTP/2 keepalive and stream settings), answering `ShouldRateLimit` and `Check`
//! with a constant reply and deciding nothing.
//!
//! `benches/grpc_compare.sh` measures it in the same run as Tollgate: what Tollgate adds on
//! top of it (the hop to the shard, the decision, building the real reply) is the ratio.
//!
//! ```text
//! grpc_floor 127.0.0.1:0     # prints "grpc_floor listening ADDR", serves until killed
//! ```

use std::net::SocketAddr;

use anyhow::Context as _;
use tollgate_benches::floor::Constant;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1::flow_control_service_server::FlowControlServiceServer;
use tollgate_grpc::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tollgate_grpc::server::{
    HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS,
};
use tollgate_grpc::tonic::transport::Server;

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()
        .context("the first argument is the address to listen on, e.g. 127.0.0.1:0")?;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    println!("grpc_floor listening {}", listener.local_addr()?);
    // One thread, as Tollgate's port: the runtime runs on the thread that calls `block_on`.
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
