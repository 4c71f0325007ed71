//! The transport floor's handlers: a constant reply to every `ShouldRateLimit` and `Check`,
//! deciding nothing. Served by `src/bin/grpc_floor.rs` (the whole port's floor) and called
//! directly by `benches/grpc_handler.rs` (the handler's floor).

use pb::flow_control_service_server::FlowControlService;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1 as pb;
use tollgate_grpc::proto::envoy::service::ratelimit::v3::{
    rate_limit_response::{Code, DescriptorStatus},
    rate_limit_service_server::RateLimitService,
    RateLimitRequest, RateLimitResponse,
};
use tollgate_grpc::tonic::{self, Request, Response, Status};

/// The floor's answer to every `ShouldRateLimit`: OK, with one descriptor's status.
pub fn rls_reply() -> RateLimitResponse {
    RateLimitResponse {
        overall_code: Code::Ok as i32,
        statuses: vec![DescriptorStatus {
            code: Code::Ok as i32,
            ..Default::default()
        }],
    }
}

/// The floor's answer to every `Check`: accepted.
pub fn check_reply() -> pb::CheckResponse {
    pb::CheckResponse {
        control_point: "bench".to_owned(),
        decision_type: pb::check_response::DecisionType::Accepted as i32,
        ..Default::default()
    }
}

/// Answers every call with the same reply, whatever it asked.
pub struct Constant;

#[tonic::async_trait]
impl RateLimitService for Constant {
    async fn should_rate_limit(
        &self,
        _request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        Ok(Response::new(rls_reply()))
    }
}

#[tonic::async_trait]
impl FlowControlService for Constant {
    async fn check(
        &self,
        _request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        Ok(Response::new(check_reply()))
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
