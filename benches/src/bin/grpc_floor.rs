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
use pb::flow_control_service_server::{FlowControlService, FlowControlServiceServer};
use tollgate_grpc::proto::aperture::flowcontrol::check::v1 as pb;
use tollgate_grpc::proto::envoy::service::ratelimit::v3::{
    rate_limit_response::{Code, DescriptorStatus},
    rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    RateLimitRequest, RateLimitResponse,
};
use tollgate_grpc::server::{
    HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT, MAX_CONCURRENT_STREAMS,
};
use tollgate_grpc::tonic::{self, transport::Server, Request, Response, Status};

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

/// Answers every call with the same reply, whatever it asked.
struct Constant;

#[tonic::async_trait]
impl RateLimitService for Constant {
    async fn should_rate_limit(
        &self,
        _request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(RateLimitResponse {
            overall_code: Code::Ok as i32,
            statuses: vec![DescriptorStatus {
                code: Code::Ok as i32,
                ..Default::default()
            }],
        }))
    }
}

#[tonic::async_trait]
impl FlowControlService for Constant {
    async fn check(
        &self,
        _request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(pb::CheckResponse {
            control_point: "bench".to_owned(),
            decision_type: pb::check_response::DecisionType::Accepted as i32,
            ..Default::default()
        }))
    }

    async fn cache_lookup(
        &self,
        _request: Request<pb::CacheLookupRequest>,
    ) -> Result<Response<pb::CacheLookupResponse>, Status> {
        Err(Status::unimplemented("the floor serves Check only"))
    }

    async fn cache_upsert(
        &self,
        _request: Request<pb::CacheUpsertRequest>,
    ) -> Result<Response<pb::CacheUpsertResponse>, Status> {
        Err(Status::unimplemented("the floor serves Check only"))
    }

    async fn cache_delete(
        &self,
        _request: Request<pb::CacheDeleteRequest>,
    ) -> Result<Response<pb::CacheDeleteResponse>, Status> {
        Err(Status::unimplemented("the floor serves Check only"))
    }

    async fn flow_end(
        &self,
        _request: Request<pb::FlowEndRequest>,
    ) -> Result<Response<pb::FlowEndResponse>, Status> {
        Err(Status::unimplemented("the floor serves Check only"))
    }
}
