//! What Tollgate's gRPC handlers cost on their own, without HTTP/2 and without the hop to a
//! shard: a request message decoded, handled, and its answer encoded, against the transport
//! floor's handler (`src/bin/grpc_floor.rs`: a constant reply) doing the same in the same run.
//!
//! The Tollgate side decides on an in-process [`LocalLimiter`] behind a backend whose future
//! is ready at once, so the figure is the handler's own work (request into flow, decision into
//! reply, the boxed futures around it) plus one bucket decision; `benches/grpc_compare.sh`
//! measures the whole port, HTTP/2 and hop included.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use pb::flow_control_service_server::FlowControlService;
use prost::Message;
use tollgate_benches::bench_engine;
use tollgate_benches::floor::Constant;
use tollgate_grpc::cache::{CacheLimits, TtlCache};
use tollgate_grpc::deadline::MonoClock;
use tollgate_grpc::flowcontrol::FlowControl;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1 as pb;
use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_grpc::proto::envoy::service::ratelimit::v3::{
    rate_limit_service_server::RateLimitService, RateLimitRequest,
};
use tollgate_grpc::rls::Rls;
use tollgate_grpc::tonic::Request;
use tollgate_grpc::{DecisionBackend, DecisionFuture, EndStatus, FlowEndFuture, GrpcService};
use tollgate_policy::{Checked, Engine, FlowId, LocalLimiter, OwnedFlow};

// The server's allocator, so allocation costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Decides at once on one in-process limiter (the hop to a shard is not measured here).
struct Immediate {
    limiter: Mutex<LocalLimiter>,
    engine: Arc<Engine>,
}

impl DecisionBackend for Immediate {
    fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    fn check(
        &self,
        _service: GrpcService,
        flow: OwnedFlow,
        _deadline: Option<Duration>,
    ) -> DecisionFuture {
        let decision = self.limiter.lock().unwrap().check(&flow, 0);
        Box::pin(async move { Ok(Checked { flow, decision }) })
    }

    fn flow_end(&self, flows: Vec<FlowId>) -> FlowEndFuture {
        let n = flows.len();
        Box::pin(async move { Ok(vec![EndStatus::Unknown; n]) })
    }
}

fn backend() -> Arc<dyn DecisionBackend> {
    let engine = Arc::new(bench_engine());
    Arc::new(Immediate {
        limiter: Mutex::new(LocalLimiter::new(engine.clone())),
        engine,
    })
}

/// The bodies h2load sends in `grpc_compare.sh` (`src/bin/grpc_bodies.rs`), one user.
fn check_body() -> Vec<u8> {
    pb::CheckRequest {
        control_point: "bench".to_owned(),
        labels: [("user".to_owned(), "u42".to_owned())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn rls_body() -> Vec<u8> {
    RateLimitRequest {
        domain: "bench".to_owned(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".to_owned(),
                value: "u42".to_owned(),
            }],
            limit: None,
        }],
        hits_addend: 0,
    }
    .encode_to_vec()
}

/// One call as the port makes it: the request message decoded, the handler awaited, the
/// answer encoded into `out`.
fn check_call(
    rt: &tokio::runtime::Runtime,
    service: &impl FlowControlService,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    let req = pb::CheckRequest::decode(body).unwrap();
    let resp = rt.block_on(service.check(Request::new(req))).unwrap();
    resp.into_inner().encode(out).unwrap();
}

fn rls_call(
    rt: &tokio::runtime::Runtime,
    service: &impl RateLimitService,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    let req = RateLimitRequest::decode(body).unwrap();
    let resp = rt
        .block_on(service.should_rate_limit(Request::new(req)))
        .unwrap();
    resp.into_inner().encode(out).unwrap();
}

fn handlers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The bench's checks ask for no cache lookups: the cache only has to exist.
    let limits = CacheLimits {
        max_entries: 16,
        max_total_bytes: 1 << 16,
        max_entry_bytes: 1 << 12,
    };
    let cache = Arc::new(Mutex::new(TtlCache::new(limits)));
    let flow_control = FlowControl::new(backend(), cache, MonoClock::new());
    let rls = Rls::new(backend());
    let (check, envoy) = (check_body(), rls_body());
    let mut out = Vec::with_capacity(1024);

    let mut g = c.benchmark_group("grpc_handler");
    g.bench_function("check_floor", |b| {
        b.iter(|| check_call(&rt, &Constant, &check, &mut out))
    });
    g.bench_function("check", |b| {
        b.iter(|| check_call(&rt, &flow_control, &check, &mut out))
    });
    g.bench_function("rls_floor", |b| {
        b.iter(|| rls_call(&rt, &Constant, &envoy, &mut out))
    });
    g.bench_function("rls", |b| b.iter(|| rls_call(&rt, &rls, &envoy, &mut out)));
    g.finish();
}

criterion_group!(benches, handlers);
criterion_main!(benches);
