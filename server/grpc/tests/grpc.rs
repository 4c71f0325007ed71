//! End-to-end tests of the gRPC compat port through real tonic clients, with a
//! `LocalLimiter` backend (test-only: behind a std Mutex) on a real clock.

mod support;

use std::time::Duration;

use support::{start_local, POLICY_YAML};
use tollgate_grpc::proto::aperture::flowcontrol::check::v1 as pb;
use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_grpc::proto::envoy::service::ratelimit::v3 as rls;
use tollgate_grpc::proto::opentelemetry::proto::collector::trace::v1 as otlp;
use tollgate_grpc::proto::opentelemetry::proto::trace::v1 as trace;

/// The value of global cache entry `key` in a response's `global_cache_responses`.
macro_rules! global {
    ($entries:expr, $key:expr) => {
        $entries
            .iter()
            .find(|e| e.key == $key)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("no global cache entry {:?}", $key))
    };
}

fn check_req(cp: &str, labels: &[(&str, &str)]) -> pb::CheckRequest {
    pb::CheckRequest {
        control_point: cp.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expect_end: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_five_of_eight_with_aperture_fields() {
    let srv = start_local(POLICY_YAML, None);
    let mut c = srv.fcs().await;
    let mut accepted = 0;
    for i in 0..8 {
        let resp = c
            .check(check_req("checkout", &[("user", "alice"), ("b", "1")]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.control_point, "checkout");
        assert!(resp.expect_end);
        assert_eq!(
            resp.flow_label_keys,
            vec!["b".to_string(), "user".to_string()]
        );
        assert_eq!(
            resp.telemetry_flow_labels.get("user").map(String::as_str),
            Some("alice")
        );
        assert!(resp.start.is_some() && resp.end.is_some());
        assert_eq!(resp.limiter_decisions.len(), 1);
        let d = &resp.limiter_decisions[0];
        assert_eq!(d.policy_name, "five_per_user");
        let Some(pb::limiter_decision::Details::RateLimiterInfo(info)) = &d.details else {
            panic!("{d:?}")
        };
        assert_eq!(
            info.label, "user:alice",
            "Aperture's bucket label: key:value"
        );
        let tokens = info.tokens_info.unwrap();
        if resp.decision_type == pb::check_response::DecisionType::Accepted as i32 {
            accepted += 1;
            assert_eq!(resp.reject_reason, 0);
            assert!(!d.dropped);
            assert_eq!(tokens.consumed, 1.0);
            assert!(
                (tokens.remaining - f64::from(4 - i)).abs() < 0.01,
                "{tokens:?}"
            );
            assert_eq!(resp.denied_response_status_code, 0);
        } else {
            assert!(i >= 5, "flow {i} rejected");
            assert_eq!(
                resp.reject_reason,
                pb::check_response::RejectReason::RateLimited as i32
            );
            assert!(d.dropped);
            assert_eq!(tokens.consumed, 0.0);
            assert_eq!(
                resp.denied_response_status_code,
                pb::StatusCode::TooManyRequests as i32
            );
            assert_eq!(d.denied_response_status_code, 429);
            let wait = resp.wait_time.unwrap();
            assert!(wait.seconds > 0, "{wait:?}");
        }
    }
    assert_eq!(accepted, 5);
    // Another user has their own bucket; a flow without the label is KEY_NOT_FOUND and accepted.
    let resp = c
        .check(check_req("checkout", &[("user", "bob")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, 0);
    let resp = c
        .check(check_req("checkout", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, 0);
    assert_eq!(
        resp.limiter_decisions[0].reason,
        pb::limiter_decision::LimiterReason::KeyNotFound as i32
    );
    // No matching policy: accepted, no decisions.
    let resp = c
        .check(check_req("elsewhere", &[("user", "alice")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, 0);
    assert!(resp.limiter_decisions.is_empty());
    srv.handle.shutdown();
}

/// A tokens label that is not a cost cannot be judged. The answer is a REJECTED decision
/// (status 400, a dropped LimiterDecision for the policy, the reason in the
/// `tollgate-reject-reason` header), never an RPC error, which the SDKs would turn into
/// "Unreachable" and run the flow. Nothing is taken from, or handed to, the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjudgeable_tokens_label_is_rejected_with_400_and_a_reason() {
    let yaml = r#"
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0 }
policies:
  - policy_name: weighted
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 5
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: cost, denied_response_status_code: ServiceUnavailable }
      selectors: [ { control_point: api } ]
"#;
    let srv = start_local(yaml, None);
    let mut c = srv.fcs().await;
    let rejected = pb::check_response::DecisionType::Rejected as i32;
    let resp = c
        .check(check_req("api", &[("user", "ann"), ("cost", "3")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, 0, "{resp:?}");

    for bad in ["-1000", "-1", "NaN", "inf", "-inf", "abc", "lots", ""] {
        let answer = c
            .check(check_req("api", &[("user", "ann"), ("cost", bad)]))
            .await
            .unwrap_or_else(|e| panic!("cost {bad:?}: an RPC error lets SDKs run the flow: {e}"));
        let reason = answer
            .metadata()
            .get(tollgate_grpc::reject_header::REJECT_REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let resp = answer.into_inner();
        assert_eq!(resp.decision_type, rejected, "cost {bad:?}: {resp:?}");
        assert_eq!(
            resp.reject_reason,
            pb::check_response::RejectReason::None as i32,
            "not rate limited: {resp:?}"
        );
        assert_eq!(
            resp.denied_response_status_code,
            pb::StatusCode::BadRequest as i32,
            "{resp:?}"
        );
        assert_eq!(resp.control_point, "api");
        assert_eq!(resp.flow_label_keys, ["cost", "user"]);
        assert!(resp.start.is_some() && resp.end.is_some());
        assert_eq!(resp.limiter_decisions.len(), 1, "{resp:?}");
        let d = &resp.limiter_decisions[0];
        assert_eq!(d.policy_name, "weighted");
        assert!(d.dropped);
        assert_eq!(d.denied_response_status_code, 400);
        let Some(pb::limiter_decision::Details::RateLimiterInfo(info)) = &d.details else {
            panic!("{d:?}")
        };
        assert_eq!(info.label, "user:ann");
        assert!(
            reason.contains("\"cost\"")
                && reason.contains("\"weighted\"")
                && reason.contains(&format!("got {bad:?}")),
            "cost {bad:?}: reason header {reason:?}"
        );
    }

    // Exactly 2 tokens left: the bad flows took none and handed none out.
    let resp = c
        .check(check_req("api", &[("user", "ann"), ("cost", "2")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, 0, "{resp:?}");
    let resp = c
        .check(check_req("api", &[("user", "ann"), ("cost", "1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, rejected);
    assert_eq!(resp.denied_response_status_code, 503, "the policy's status");
}

/// A gRPC client codec that sends and receives message bytes as they are, to put bodies on the
/// wire that no generated client would.
#[derive(Clone, Copy, Debug, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawBytes {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(buf);
        Ok(Some(prost::bytes::Buf::copy_to_bytes(buf, n).to_vec()))
    }
}

/// Sends `body` as the request message of `path`; the answer's message bytes or status.
async fn raw_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("channel ready");
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawBytes,
    )
    .await
    .map(tonic::Response::into_inner)
}

const CHECK_PATH: &str = "/aperture.flowcontrol.check.v1.FlowControlService/Check";

/// Message bodies that decode as none of the four request messages below (field 1 is a
/// string or a message in each), each with why.
const MALFORMED: [(&str, &[u8]); 4] = [
    ("a tag varint that never ends", &[0xff, 0xff, 0xff]),
    ("field 1 claims 16 bytes, 1 follows", &[0x0a, 0x10, b'a']),
    (
        "field 1 is not UTF-8 (or not a message)",
        &[0x0a, 0x02, 0xff, 0xfe],
    ),
    ("field 1 sent as a varint", &[0x08, 0x01]),
];

/// A CheckRequest whose `labels` entry (field 2) holds a key cut short.
const CUT_LABEL: &[u8] = &[0x12, 0x03, 0x0a, 0x05, b'k'];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_messages_are_invalid_argument() {
    use prost::Message as _;
    let srv = start_local(POLICY_YAML, None);
    let channel = srv.channel().await;
    for path in [
        CHECK_PATH,
        "/aperture.flowcontrol.check.v1.FlowControlService/CacheUpsert",
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    ] {
        for (why, body) in MALFORMED {
            let err = raw_call(channel.clone(), path, body.to_vec())
                .await
                .expect_err(why);
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{path}, {why}: {err:?}"
            );
            assert!(
                err.message().starts_with(path) && err.message().contains("does not decode"),
                "{path}, {why}: {}",
                err.message()
            );
        }
    }
    let err = raw_call(channel.clone(), CHECK_PATH, CUT_LABEL.to_vec())
        .await
        .expect_err("cut label");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        srv.handle.spans_received(),
        0,
        "no undecodable export counted"
    );

    // Well-formed bytes through the same wrapper and connection are answered as usual.
    let good = check_req("checkout", &[("user", "raw")]).encode_to_vec();
    let answer = raw_call(channel.clone(), CHECK_PATH, good).await.unwrap();
    let resp = pb::CheckResponse::decode(answer.as_slice()).unwrap();
    assert_eq!(resp.decision_type, 0);
    assert_eq!(resp.limiter_decisions[0].policy_name, "five_per_user");
    // An empty message is a valid (all-default) CheckRequest: no control point, no policy.
    let answer = raw_call(channel, CHECK_PATH, Vec::new()).await.unwrap();
    let resp = pb::CheckResponse::decode(answer.as_slice()).unwrap();
    assert_eq!((resp.decision_type, resp.limiter_decisions.len()), (0, 0));
}

/// A backend that, unlike the server's, takes every flow's cost from its tokens label, even for
/// Envoy descriptors (whose cost is otherwise `hits_addend`): the way a descriptor can be one
/// Tollgate cannot judge.
struct LabelCostBackend {
    limiter: std::sync::Mutex<tollgate_policy::LocalLimiter>,
    engine: std::sync::Arc<tollgate_policy::Engine>,
}

impl tollgate_grpc::DecisionBackend for LabelCostBackend {
    fn engine(&self) -> std::sync::Arc<tollgate_policy::Engine> {
        self.engine.clone()
    }

    fn check(
        &self,
        _service: tollgate_grpc::GrpcService,
        mut flow: tollgate_policy::OwnedFlow,
        _deadline: Option<Duration>,
    ) -> tollgate_grpc::DecisionFuture {
        flow.tokens = None;
        let decision = self.limiter.lock().expect("limiter lock").check(&flow, 0);
        Box::pin(async move { Ok(tollgate_policy::Checked { flow, decision }) })
    }

    fn flow_end(&self, flows: Vec<tollgate_policy::FlowId>) -> tollgate_grpc::FlowEndFuture {
        let mut limiter = self.limiter.lock().expect("limiter lock");
        let statuses = flows
            .into_iter()
            .map(|id| {
                let ended = limiter.state_mut().end_flow(&self.engine, id, 0);
                tollgate_grpc::EndStatus::from_ended(ended)
            })
            .collect();
        Box::pin(async move { Ok(statuses) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_rls_unjudgeable_descriptor_is_over_limit_not_an_error() {
    let policies = tollgate_policy::parse_policies(
        r#"
policies:
  - policy_name: weighted
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 5
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: cost }
      selectors: [ { control_point: edge } ]
"#,
        "test.yaml",
    )
    .unwrap();
    let engine = std::sync::Arc::new(tollgate_policy::Engine::new(&policies));
    let backend = std::sync::Arc::new(LabelCostBackend {
        limiter: std::sync::Mutex::new(tollgate_policy::LocalLimiter::new(engine.clone())),
        engine,
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let handle = tollgate_grpc::start(
        vec![listener],
        &tollgate_grpc::GrpcSettings::default(),
        backend,
    )
    .unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", handle.local_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut c = rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
    let descriptor = |entries: &[(&str, &str)]| RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        limit: None,
    };
    let ok = rls::rate_limit_response::Code::Ok as i32;
    let over = rls::rate_limit_response::Code::OverLimit as i32;
    let answer = c
        .should_rate_limit(rls::RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![
                descriptor(&[("user", "eve"), ("cost", "-1000")]),
                descriptor(&[("user", "fay")]),
            ],
            hits_addend: 1,
        })
        .await
        .expect("an unjudgeable descriptor is an answer, not an RPC error");
    let reason = answer
        .metadata()
        .get(tollgate_grpc::reject_header::REJECT_REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let r = answer.into_inner();
    assert_eq!(r.overall_code, over, "{r:?}");
    assert_eq!(
        (r.statuses[0].code, r.statuses[1].code),
        (over, ok),
        "{r:?}"
    );
    assert!(r.statuses[0].current_limit.is_none(), "no bucket consulted");
    assert_eq!(r.statuses[1].limit_remaining, 4);
    assert!(
        reason.starts_with("descriptor 0: ") && reason.contains("\"-1000\""),
        "{reason:?}"
    );
    // eve's bucket was not touched by the -1000.
    let r = c
        .should_rate_limit(rls::RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![descriptor(&[("user", "eve")])],
            hits_addend: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (ok, 4));
    handle.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_roundtrip_and_limits() {
    let srv = start_local(POLICY_YAML, None);
    let mut c = srv.fcs().await;
    let ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let up = c
        .cache_upsert(pb::CacheUpsertRequest {
            control_point: "checkout".into(),
            result_cache_entry: Some(pb::CacheEntry {
                key: "r".into(),
                value: b"result".to_vec(),
                ttl,
            }),
            global_cache_entries: [(
                "g".to_string(),
                pb::CacheEntry {
                    key: String::new(),
                    value: b"global".to_vec(),
                    ttl,
                },
            )]
            .into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        up.result_cache_response.unwrap().operation_status,
        pb::CacheOperationStatus::Success as i32
    );
    assert_eq!(global!(up.global_cache_responses, "g").operation_status, 0);

    // Through Check: limiter accepts, then the cache stage answers.
    let mut req = check_req("checkout", &[("user", "carol")]);
    req.cache_lookup_request = Some(pb::CacheLookupRequest {
        control_point: String::new(),
        result_cache_key: "r".into(),
        global_cache_keys: vec!["g".into(), "missing".into()],
    });
    let resp = c.check(req.clone()).await.unwrap().into_inner();
    let lookup = resp.cache_lookup_response.unwrap();
    let r = lookup.result_cache_response.unwrap();
    assert_eq!(
        (r.lookup_status, r.value.as_slice()),
        (pb::CacheLookupStatus::Hit as i32, &b"result"[..])
    );
    assert_eq!(global!(lookup.global_cache_responses, "g").value, b"global");
    assert_eq!(
        global!(lookup.global_cache_responses, "missing").lookup_status,
        pb::CacheLookupStatus::Miss as i32
    );
    // The result cache is per control point.
    let other = c
        .cache_lookup(pb::CacheLookupRequest {
            control_point: "other".into(),
            result_cache_key: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        other.result_cache_response.unwrap().lookup_status,
        pb::CacheLookupStatus::Miss as i32
    );

    // Delete, then miss.
    c.cache_delete(pb::CacheDeleteRequest {
        control_point: "checkout".into(),
        result_cache_key: "r".into(),
        global_cache_keys: vec!["g".into()],
    })
    .await
    .unwrap();
    let resp = c.check(req).await.unwrap().into_inner();
    let lookup = resp.cache_lookup_response.unwrap();
    assert_eq!(
        lookup.result_cache_response.unwrap().lookup_status,
        pb::CacheLookupStatus::Miss as i32
    );

    // Oversized value (support sets max_entry_bytes = 1024): ERROR with an explanation.
    let up = c
        .cache_upsert(pb::CacheUpsertRequest {
            control_point: "checkout".into(),
            result_cache_entry: Some(pb::CacheEntry {
                key: "big".into(),
                value: vec![0; 4096],
                ttl,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = up.result_cache_response.unwrap();
    assert_eq!(r.operation_status, pb::CacheOperationStatus::Error as i32);
    assert!(
        r.error.contains("exceeds the limit of 1024 bytes"),
        "{}",
        r.error
    );
}

/// A lookup answers with at most `MAX_LOOKUP_REPLY_VALUE_BYTES` of values: one large value
/// named many times cannot make a reply of a gigabyte. The keys from the first value that does
/// not fit on are answered, in order, with an error that names the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_lookup_answers_at_most_its_budget_of_values() {
    use tollgate_grpc::flowcontrol::MAX_LOOKUP_REPLY_VALUE_BYTES as BUDGET;
    const BIG: usize = 1_000_000;
    // Four big values and a small one fit in the budget; a fifth big one does not.
    const { assert!(4 * BIG < BUDGET && 5 * BIG > BUDGET) };
    let cache = tollgate_grpc::CacheConfig {
        max_entry_bytes: BIG,
        ..Default::default()
    };
    let srv = support::start_local_with_cache(POLICY_YAML, None, cache);
    let mut c = srv.fcs().await;
    let ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let entry = |size: usize| pb::CacheEntry {
        key: String::new(),
        value: vec![b'v'; size],
        ttl,
    };
    c.cache_upsert(pb::CacheUpsertRequest {
        control_point: "checkout".into(),
        result_cache_entry: Some(pb::CacheEntry {
            key: "r".into(),
            ..entry(BIG)
        }),
        global_cache_entries: [("big".to_string(), entry(BIG)), ("small".into(), entry(1))].into(),
    })
    .await
    .unwrap();

    let (ok, error) = (
        pb::CacheOperationStatus::Success as i32,
        pb::CacheOperationStatus::Error as i32,
    );
    let keys: Vec<String> = [
        "small", "big", "big", "big", "big", "big", "small", "missing",
    ]
    .map(String::from)
    .into();
    let answers = |lookup: &pb::CacheLookupResponse| -> Vec<(String, i32, usize)> {
        lookup
            .global_cache_responses
            .iter()
            .map(|e| {
                let v = e.value.clone().unwrap_or_default();
                (e.key.clone(), v.operation_status, v.value.len())
            })
            .collect()
    };
    let lookup = c
        .cache_lookup(pb::CacheLookupRequest {
            global_cache_keys: keys.clone(),
            ..Default::default()
        })
        .await
        .expect("a reply a client with tonic's default limits decodes")
        .into_inner();
    let want = |statuses: &[(i32, usize)]| -> Vec<(String, i32, usize)> {
        keys.iter()
            .zip(statuses)
            .map(|(k, &(status, len))| (k.clone(), status, len))
            .collect()
    };
    assert_eq!(
        answers(&lookup),
        want(&[
            (ok, 1),
            (ok, BIG),
            (ok, BIG),
            (ok, BIG),
            (ok, BIG),
            (error, 0),
            (error, 0),
            (error, 0),
        ])
    );
    let refused = global!(lookup.global_cache_responses, "missing");
    assert!(
        refused.error.contains(&BUDGET.to_string()),
        "{}",
        refused.error
    );

    // Through Check, the result cache's value counts too: one big value fewer fits.
    let mut req = check_req("checkout", &[("user", "dora")]);
    req.cache_lookup_request = Some(pb::CacheLookupRequest {
        control_point: String::new(),
        result_cache_key: "r".into(),
        global_cache_keys: keys.clone(),
    });
    let resp = c.check(req).await.unwrap().into_inner();
    assert_eq!(resp.decision_type, 0);
    let lookup = resp.cache_lookup_response.unwrap();
    let r = lookup.result_cache_response.clone().unwrap();
    assert_eq!((r.operation_status, r.value.len()), (ok, BIG));
    assert_eq!(
        answers(&lookup),
        want(&[
            (ok, 1),
            (ok, BIG),
            (ok, BIG),
            (ok, BIG),
            (error, 0),
            (error, 0),
            (error, 0),
            (error, 0),
        ])
    );
}

/// A TTL is a `google.protobuf.Duration`; one that is not normalized (nanos beyond ±1 s, or
/// of the other sign than seconds) has no one meaning and is refused per entry, naming the
/// field, rather than read as some other TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_ttls_that_are_not_valid_durations_are_refused() {
    let srv = start_local(POLICY_YAML, None);
    let mut c = srv.fcs().await;
    let entry = |seconds: i64, nanos: i32| pb::CacheEntry {
        key: String::new(),
        value: b"v".to_vec(),
        ttl: Some(prost_types::Duration { seconds, nanos }),
    };
    let up = c
        .cache_upsert(pb::CacheUpsertRequest {
            control_point: "checkout".into(),
            result_cache_entry: Some(pb::CacheEntry {
                key: "r".into(),
                ..entry(2, -1)
            }),
            global_cache_entries: [
                ("minus_nanos".to_string(), entry(1, -999_999_999)),
                ("two_seconds_of_nanos".into(), entry(0, 2_000_000_000)),
                ("plus_nanos".into(), entry(-1, 5)),
                ("half_a_second".into(), entry(0, 500_000_000)),
                ("negative".into(), entry(-1, -5)),
            ]
            .into(),
        })
        .await
        .unwrap()
        .into_inner();
    let error = pb::CacheOperationStatus::Error as i32;
    let r = up.result_cache_response.unwrap();
    assert_eq!(r.operation_status, error);
    assert_eq!(
        r.error,
        "ttl {seconds: 2, nanos: -1} is not a valid google.protobuf.Duration: nanos must be \
         within -999999999..=999999999 and not of the other sign than seconds"
    );
    for key in ["minus_nanos", "two_seconds_of_nanos", "plus_nanos"] {
        let answer = global!(up.global_cache_responses, key);
        assert_eq!(answer.operation_status, error, "{key}");
        assert!(
            answer
                .error
                .contains("is not a valid google.protobuf.Duration"),
            "{key}: {}",
            answer.error
        );
    }
    assert_eq!(
        global!(up.global_cache_responses, "half_a_second").operation_status,
        pb::CacheOperationStatus::Success as i32
    );
    assert_eq!(
        global!(up.global_cache_responses, "negative").error,
        "ttl must be greater than zero"
    );

    // Nothing refused was stored.
    let lookup = c
        .cache_lookup(pb::CacheLookupRequest {
            control_point: "checkout".into(),
            result_cache_key: "r".into(),
            global_cache_keys: vec!["minus_nanos".into(), "two_seconds_of_nanos".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let miss = pb::CacheLookupStatus::Miss as i32;
    assert_eq!(lookup.result_cache_response.unwrap().lookup_status, miss);
    for e in &lookup.global_cache_responses {
        assert_eq!(e.value.as_ref().unwrap().lookup_status, miss, "{}", e.key);
    }
}

/// Every global cache entry of a response carries its value on the wire, even an empty one
/// (a successful upsert or delete, a hit on an empty value): protobufjs (aperture-js) fails the
/// whole call on an entry without one, and protobuf-go (Aperture's agent) always writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_cache_entries_carry_empty_values_on_the_wire() {
    use prost::Message as _;
    let srv = start_local(POLICY_YAML, None);
    let channel = srv.channel().await;
    let ttl = Some(prost_types::Duration {
        seconds: 60,
        nanos: 0,
    });
    let upsert = pb::CacheUpsertRequest {
        global_cache_entries: [(
            "k".to_string(),
            pb::CacheEntry {
                key: String::new(),
                value: Vec::new(),
                ttl,
            },
        )]
        .into(),
        ..Default::default()
    };
    // Each answer is one entry: field 2 { key "k" (0a 01 6b), value: empty message (12 00) }.
    let entry_with_empty_value: &[u8] = &[0x12, 0x05, 0x0a, 0x01, b'k', 0x12, 0x00];
    for (path, body) in [
        (
            "/aperture.flowcontrol.check.v1.FlowControlService/CacheUpsert",
            upsert.encode_to_vec(),
        ),
        (
            "/aperture.flowcontrol.check.v1.FlowControlService/CacheLookup",
            pb::CacheLookupRequest {
                global_cache_keys: vec!["k".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/aperture.flowcontrol.check.v1.FlowControlService/CacheDelete",
            pb::CacheDeleteRequest {
                global_cache_keys: vec!["k".into()],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ] {
        let answer = raw_call(channel.clone(), path, body).await.unwrap();
        assert_eq!(answer, entry_with_empty_value, "{path}");
    }
}

/// Two slots, ended by id over `FlowEnd`; each reference answered on its own.
const POOL_YAML: &str = r#"
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0 }
policies:
  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 2
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 60s }
      selectors: [ { control_point: db } ]
"#;

/// The `request_id` of a concurrency limiter decision.
fn request_id(resp: &pb::CheckResponse) -> String {
    match &resp.limiter_decisions[0].details {
        Some(pb::limiter_decision::Details::ConcurrencyLimiterInfo(i)) => i.request_id.clone(),
        other => panic!("not a concurrency limiter decision: {other:?}"),
    }
}

fn flow_end_req(ids: &[&str]) -> pb::FlowEndRequest {
    pb::FlowEndRequest {
        control_point: "db".into(),
        inflight_requests: ids
            .iter()
            .map(|id| pb::InflightRequestRef {
                policy_name: "pool".into(),
                request_id: id.to_string(),
                tokens: 1.0,
                ..Default::default()
            })
            .collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_end_returns_concurrency_tokens_by_request_id() {
    let srv = start_local(POOL_YAML, None);
    let mut c = srv.fcs().await;
    let flow = || check_req("db", &[("tenant", "t1")]);
    let first = c.check(flow()).await.unwrap().into_inner();
    let second = c.check(flow()).await.unwrap().into_inner();
    assert_eq!((first.decision_type, second.decision_type), (0, 0));
    let third = c.check(flow()).await.unwrap().into_inner();
    assert_eq!(third.decision_type, 1, "2 in flight: {third:?}");
    assert_eq!(
        third.reject_reason,
        pb::check_response::RejectReason::RateLimited as i32
    );
    assert_eq!(third.denied_response_status_code, 429);
    assert_eq!(request_id(&third), "", "a rejected flow holds nothing");

    let (a, b) = (request_id(&first), request_id(&second));
    assert_eq!(a.len(), 16, "{a:?}");
    assert_ne!(a, b);
    let resp = c
        .flow_end(flow_end_req(&[&a, "r1", "", &a]))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(bool, &str, &str)> = resp
        .token_return_statuses
        .iter()
        .map(|s| {
            let r = s.inflight_request_ref.as_ref().unwrap();
            (s.returned, s.error.as_str(), r.request_id.as_str())
        })
        .collect();
    assert_eq!(
        got,
        [
            (true, "", a.as_str()),
            (
                false,
                tollgate_grpc::flowcontrol::FLOW_END_NOT_A_FLOW_ID,
                "r1"
            ),
            (
                false,
                tollgate_grpc::flowcontrol::FLOW_END_NOT_A_FLOW_ID,
                ""
            ),
            (
                false,
                tollgate_grpc::flowcontrol::FLOW_END_UNKNOWN,
                a.as_str()
            ),
        ]
    );
    // One slot is free again, and only one.
    assert_eq!(c.check(flow()).await.unwrap().into_inner().decision_type, 0);
    assert_eq!(c.check(flow()).await.unwrap().into_inner().decision_type, 1);
    // Another tenant has its own slots.
    let other = c
        .check(check_req("db", &[("tenant", "t2")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.decision_type, 0);

    let too_many = vec!["0000000000000000"; tollgate_grpc::flowcontrol::MAX_FLOW_END_REFS + 1];
    let err = c.flow_end(flow_end_req(&too_many)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

/// An "Aperture Check" span as aperture-js 2.5.0 exports it: the check response as JSON in
/// `aperture.check_response`, without `expectEnd`.
fn sdk_span(check_response_json: String) -> trace::Span {
    use tollgate_grpc::proto::opentelemetry::proto::common::v1::{any_value, AnyValue, KeyValue};
    let attr = |k: &str, v: String| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }),
    };
    trace::Span {
        name: "Aperture Check".into(),
        attributes: vec![
            attr("aperture.source", "sdk".into()),
            attr("aperture.check_response", check_response_json),
        ],
        ..Default::default()
    }
}

fn export(spans: Vec<trace::Span>) -> otlp::ExportTraceServiceRequest {
    otlp::ExportTraceServiceRequest {
        resource_spans: vec![trace::ResourceSpans {
            scope_spans: vec![trace::ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_spans_are_counted_and_end_flows_that_expect_no_end() {
    let srv = start_local(POOL_YAML, None);
    let mut fcs = srv.fcs().await;
    let mut spans = otlp::trace_service_client::TraceServiceClient::new(srv.channel().await);
    let mut flow = check_req("db", &[("tenant", "js")]);
    flow.expect_end = false;
    let a = request_id(&fcs.check(flow.clone()).await.unwrap().into_inner());
    let b = request_id(&fcs.check(flow.clone()).await.unwrap().into_inner());
    assert_eq!(
        fcs.check(flow.clone())
            .await
            .unwrap()
            .into_inner()
            .decision_type,
        1
    );

    let json = |id: &str, expect_end: &str| {
        format!(
            r#"{{"controlPoint":"db",{expect_end}"limiterDecisions":[{{"policyName":"pool","concurrencyLimiterInfo":{{"label":"tenant:js","requestId":"{id}"}}}}]}}"#
        )
    };
    // expect_end true (aperture-py: it sends FlowEnd itself), a span without the attribute,
    // and one whose JSON is garbage: counted, nothing ended.
    let plain = trace::Span {
        name: "other".into(),
        ..Default::default()
    };
    spans
        .export(export(vec![
            sdk_span(json(&a, r#""expectEnd":true,"#)),
            plain,
            sdk_span("{not json".into()),
        ]))
        .await
        .unwrap();
    assert_eq!(srv.handle.spans_received(), 3);
    assert_eq!(
        fcs.check(flow.clone())
            .await
            .unwrap()
            .into_inner()
            .decision_type,
        1
    );

    // Without expectEnd (aperture-js 2.5.0): the span ends the flow before the export is
    // answered, so the slot is free now.
    spans
        .export(export(vec![sdk_span(json(&a, ""))]))
        .await
        .unwrap();
    assert_eq!(srv.handle.spans_received(), 4);
    let c = fcs.check(flow.clone()).await.unwrap().into_inner();
    assert_eq!(c.decision_type, 0, "{c:?}");
    // The same span again (a retried export) ends nothing more.
    spans
        .export(export(vec![sdk_span(json(&a, ""))]))
        .await
        .unwrap();
    assert_eq!(
        fcs.check(flow.clone())
            .await
            .unwrap()
            .into_inner()
            .decision_type,
        1
    );
    // FlowEnd agrees: b is still held, a is not.
    let resp = fcs
        .flow_end(flow_end_req(&[&b, &a]))
        .await
        .unwrap()
        .into_inner();
    let returned: Vec<bool> = resp
        .token_return_statuses
        .iter()
        .map(|s| s.returned)
        .collect();
    assert_eq!(returned, [true, false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_everything_but_health() {
    let yaml = POLICY_YAML.replace("shards: 2 }", "shards: 2, api_keys: [sesame] }");
    let srv = start_local(&yaml, None);
    let ch = srv.channel().await;
    let mut c = pb::flow_control_service_client::FlowControlServiceClient::new(ch.clone());
    let err = c.check(check_req("checkout", &[])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(check_req("checkout", &[]));
    req.metadata_mut()
        .insert("x-api-key", "wrong".parse().unwrap());
    assert_eq!(
        c.check(req).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut req = tonic::Request::new(check_req("checkout", &[]));
    req.metadata_mut()
        .insert("x-api-key", "sesame".parse().unwrap());
    c.check(req).await.unwrap();

    // ShouldRateLimit, answered past tonic's routes when its key is right
    // (tollgate_grpc::hot_calls), is guarded all the same.
    let mut r = rls::rate_limit_service_client::RateLimitServiceClient::new(ch.clone());
    let rls_req = |key: Option<&str>| {
        let mut req = tonic::Request::new(rls::RateLimitRequest {
            domain: "checkout".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "user".into(),
                    value: "keyed".into(),
                }],
                limit: None,
            }],
            hits_addend: 1,
        });
        if let Some(key) = key {
            req.metadata_mut().insert("x-api-key", key.parse().unwrap());
        }
        req
    };
    for key in [None, Some("wrong"), Some("sesam"), Some("sesame!")] {
        let err = r.should_rate_limit(rls_req(key)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{key:?}");
    }
    let ok = r.should_rate_limit(rls_req(Some("sesame"))).await.unwrap();
    assert_eq!(
        ok.into_inner().overall_code,
        rls::rate_limit_response::Code::Ok as i32
    );

    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    for service in ["", "aperture.flowcontrol.v1.FlowControlService"] {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
}

/// A backend that has not answered when the client's deadline passes: the call ends then
/// (the safety net), not later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_ends_at_the_deadline() {
    let srv = start_local(POLICY_YAML, Some(Duration::from_secs(30)));
    let mut c = srv.fcs().await;
    let mut req = tonic::Request::new(check_req("checkout", &[("user", "alice")]));
    req.set_timeout(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let err = c.check(req).await.unwrap_err();
    // The server's net, tonic's own cancel, or the client's timer: all at the deadline.
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// One flow at a time; a second waits for the first to end, until its deadline.
const ONE_AT_A_TIME_YAML: &str = r#"
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0 }
policies:
  - policy_name: gpu
    concurrency_scheduler:
      max_concurrency: 1
      concurrency_limiter: { max_inflight_duration: 60s }
      scheduler: { decision_deadline_margin: 50ms }
      selectors: [ { control_point: gpu } ]
"#;

/// The handler waits for the backend until the scheduler's answer at the deadline minus its
/// margin: a rejection (NO_TOKENS, 503), not an RPC error that the SDKs would run the flow on.
/// And a waiter admitted when the running flow ends gets its own request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_flow_is_answered_before_its_deadline_not_cut_short() {
    let srv = start_local(ONE_AT_A_TIME_YAML, None);
    let mut c = srv.fcs().await;
    let first = c.check(check_req("gpu", &[])).await.unwrap().into_inner();
    assert_eq!(first.decision_type, 0, "{first:?}");
    let scheduler_request_id = |resp: &pb::CheckResponse| match &resp.limiter_decisions[0].details {
        Some(pb::limiter_decision::Details::ConcurrencySchedulerInfo(i)) => i.clone(),
        other => panic!("{other:?}"),
    };
    let running = scheduler_request_id(&first).request_id;

    let deadline = Duration::from_millis(400);
    let mut req = tonic::Request::new(check_req("gpu", &[("priority", "9")]));
    req.set_timeout(deadline);
    let t = std::time::Instant::now();
    let resp = c
        .check(req)
        .await
        .expect("an answer, not an error")
        .into_inner();
    let took = t.elapsed();
    assert_eq!(resp.decision_type, 1, "{resp:?}");
    assert_eq!(
        resp.reject_reason,
        pb::check_response::RejectReason::NoTokens as i32
    );
    assert_eq!(resp.denied_response_status_code, 503);
    assert!(took < deadline, "answered after its deadline: {took:?}");
    // It waited in the queue: the scheduler answers at deadline - margin (350 ms), not at once.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let info = scheduler_request_id(&resp);
    assert_eq!((info.label.as_str(), info.priority), ("default", 9.0));
    assert_eq!(
        (info.workload_index.as_str(), info.request_id.as_str()),
        ("default", "")
    );

    // A waiter is admitted when the running flow ends.
    let mut c2 = c.clone();
    let waiter = tokio::spawn(async move {
        let mut req = tonic::Request::new(check_req("gpu", &[]));
        req.set_timeout(Duration::from_secs(10));
        c2.check(req).await
    });
    srv.backend.wait_for_waiting(1).await;
    let ended = c
        .flow_end(flow_end_req(&[&running]))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.token_return_statuses[0].returned, "{ended:?}");
    let admitted = waiter.await.unwrap().unwrap().into_inner();
    assert_eq!(admitted.decision_type, 0, "{admitted:?}");
    let id = scheduler_request_id(&admitted).request_id;
    assert!(id.len() == 16 && id != running, "{id:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_rls_ok_then_over_limit() {
    let srv = start_local(POLICY_YAML, None);
    let mut c = rls::rate_limit_service_client::RateLimitServiceClient::new(srv.channel().await);
    let req = |user: &str, hits: u32| rls::RateLimitRequest {
        domain: "checkout".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: user.into(),
            }],
            limit: None,
        }],
        hits_addend: hits,
    };
    let ok = rls::rate_limit_response::Code::Ok as i32;
    let over = rls::rate_limit_response::Code::OverLimit as i32;

    let r = c
        .should_rate_limit(req("dave", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, ok);
    let s = &r.statuses[0];
    assert_eq!(s.code, ok);
    assert_eq!(s.limit_remaining, 4);
    let limit = s.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit),
        (5, rls::rate_limit_response::rate_limit::Unit::Hour as i32)
    );
    assert_eq!(limit.name, "five_per_user");
    // 1 of 5 tokens missing at 5/hour: full again in 720 s.
    let reset = s.duration_until_reset.unwrap();
    assert!((719..=720).contains(&reset.seconds), "{reset:?}");

    let r = c
        .should_rate_limit(req("dave", 4))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (ok, 0));
    let r = c
        .should_rate_limit(req("dave", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.overall_code, over);
    let s = &r.statuses[0];
    assert_eq!((s.code, s.limit_remaining), (over, 0));
    let reset = s.duration_until_reset.unwrap();
    assert!(
        reset.seconds > 0 && reset.seconds <= 3600,
        "{reset:?} {r:?}"
    );

    // Two descriptors: one per status, overall OVER_LIMIT if any is.
    let mut two = req("dave", 1);
    two.descriptors.push(RateLimitDescriptor {
        entries: vec![Entry {
            key: "user".into(),
            value: "erin".into(),
        }],
        limit: None,
    });
    let r = c.should_rate_limit(two).await.unwrap().into_inner();
    assert_eq!(r.overall_code, over);
    assert_eq!((r.statuses[0].code, r.statuses[1].code), (over, ok));

    let err = c
        .should_rate_limit(rls::RateLimitRequest {
            domain: "checkout".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let srv = start_local(POLICY_YAML, None);
    let mut c = ServerReflectionClient::new(srv.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c
        .server_reflection_info(tokio_stream::once(req))
        .await
        .unwrap()
        .into_inner();
    let msg = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "aperture.flowcontrol.check.v1.FlowControlService",
        "envoy.service.ratelimit.v3.RateLimitService",
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
}

/// An answer read off a raw HTTP/2 stream.
struct RawAnswer {
    headers: http::HeaderMap,
    /// The DATA frames' bytes: a framed message, or nothing.
    data: Vec<u8>,
    trailers: Option<http::HeaderMap>,
}

impl RawAnswer {
    /// `grpc-status`, from the trailers or, for a trailers-only answer, the headers.
    fn grpc_status(&self) -> Option<&http::HeaderValue> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
    }
}

/// One unary call of `path` with message `msg` over a raw HTTP/2 connection. With
/// `identity`, the request names the identity encoding (`grpc-encoding: identity`), which
/// changes nothing in the message but takes the call through tonic's own codec, past the
/// port's direct path (`tollgate_grpc::hot_calls`).
async fn raw_h2_call(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    path: &str,
    msg: &[u8],
    identity: bool,
) -> Result<RawAnswer, String> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if identity {
        request = request.header("grpc-encoding", "identity");
    }
    let request = request.body(()).map_err(|e| e.to_string())?;
    // gRPC message framing: uncompressed flag, 4-byte big-endian length, the message.
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(msg);
    let mut ready = send
        .clone()
        .ready()
        .await
        .map_err(|e| format!("ready: {e}"))?;
    let (response, mut stream) = ready
        .send_request(request, false)
        .map_err(|e| format!("send_request: {e}"))?;
    stream
        .send_data(body.into(), true)
        .map_err(|e| format!("send_data: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    if response.status() != 200 {
        return Err(format!("HTTP {}", response.status()));
    }
    let headers = response.headers().clone();
    let mut recv = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(|e| format!("data: {e}"))?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?;
    Ok(RawAnswer {
        headers,
        data,
        trailers,
    })
}

/// One unary `FlowControlService/Check` over a raw HTTP/2 connection; the decoded answer.
async fn raw_check(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
    req: &pb::CheckRequest,
) -> Result<pb::CheckResponse, String> {
    use prost::Message as _;
    let answer = raw_h2_call(send, addr, CHECK_PATH, &req.encode_to_vec(), false).await?;
    let status = answer.grpc_status().map(|v| v.as_bytes().to_vec());
    if status.as_deref() != Some(b"0") {
        return Err(format!("grpc-status {status:?}: {:?}", answer.trailers));
    }
    pb::CheckResponse::decode(answer.data.get(5..).ok_or("short gRPC message")?)
        .map_err(|e| format!("decode: {e}"))
}

/// `Check` and `ShouldRateLimit` skip tonic's routes and codec when the call is plain
/// (`tollgate_grpc::hot_calls`). Each call here is made twice on one connection, plain and
/// through tonic's codec (`grpc-encoding: identity`), and the two answers must agree: the
/// HTTP/2 headers Tollgate sets (content type, `tollgate-reject-reason`), the gRPC status
/// and message, and the decision (its timestamps aside, and the tokens left, which the first
/// call took).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_direct_path_answers_as_tonic_does() {
    use prost::Message as _;
    let yaml = r#"
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0 }
policies:
  - policy_name: weighted
    rate_limiter:
      bucket_capacity: 1000
      fill_amount: 5
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: cost }
      selectors: [ { control_point: api } ]
"#;
    let srv = start_local(yaml, None);
    let addr = srv.handle.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);

    let many: Vec<(String, String)> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let checks = [
        (
            "admitted",
            check_req("api", &[("user", "ann"), ("cost", "2")]),
        ),
        (
            "unjudgeable cost",
            check_req("api", &[("user", "ann"), ("cost", "abc")]),
        ),
        ("over the label bound", check_req("api", &many)),
        ("no policy", check_req("elsewhere", &[("user", "ann")])),
    ];
    let decision = |answer: &RawAnswer| {
        let mut resp = pb::CheckResponse::decode(&answer.data[5..]).expect("a CheckResponse");
        (resp.start, resp.end) = (None, None);
        for d in &mut resp.limiter_decisions {
            if let Some(pb::limiter_decision::Details::RateLimiterInfo(info)) = &mut d.details {
                info.tokens_info = None;
            }
        }
        resp
    };
    let same_head = |why: &str, direct: &RawAnswer, tonic: &RawAnswer| {
        for header in ["content-type", "tollgate-reject-reason", "grpc-message"] {
            assert_eq!(
                direct.headers.get(header),
                tonic.headers.get(header),
                "{why}: header {header}"
            );
        }
        assert_eq!(
            direct.grpc_status(),
            tonic.grpc_status(),
            "{why}: grpc-status"
        );
        let message = |a: &RawAnswer| {
            a.trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .cloned()
        };
        assert_eq!(message(direct), message(tonic), "{why}: grpc-message");
    };
    for (why, req) in &checks {
        let msg = req.encode_to_vec();
        let direct = raw_h2_call(&mut send, addr, CHECK_PATH, &msg, false)
            .await
            .unwrap();
        let tonic = raw_h2_call(&mut send, addr, CHECK_PATH, &msg, true)
            .await
            .unwrap();
        same_head(why, &direct, &tonic);
        assert_eq!(direct.grpc_status().unwrap(), "0", "{why}");
        assert_eq!(decision(&direct), decision(&tonic), "{why}");
    }

    const RLS_PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    let rls_req = |domain: &str, descriptors: usize| rls::RateLimitRequest {
        domain: domain.into(),
        descriptors: (0..descriptors)
            .map(|_| RateLimitDescriptor {
                entries: vec![Entry {
                    key: "user".into(),
                    value: "bob".into(),
                }],
                limit: None,
            })
            .collect(),
        hits_addend: 1,
    };
    let calls = [
        ("admitted", rls_req("api", 1)),
        ("no domain", rls_req("", 1)),
        ("no descriptor", rls_req("api", 0)),
        ("too many descriptors", rls_req("api", 65)),
    ];
    for (why, req) in &calls {
        let msg = req.encode_to_vec();
        let direct = raw_h2_call(&mut send, addr, RLS_PATH, &msg, false)
            .await
            .unwrap();
        let tonic = raw_h2_call(&mut send, addr, RLS_PATH, &msg, true)
            .await
            .unwrap();
        same_head(why, &direct, &tonic);
        let code = |a: &RawAnswer| {
            (!a.data.is_empty()).then(|| {
                let r = rls::RateLimitResponse::decode(&a.data[5..]).expect("a RateLimitResponse");
                (
                    r.overall_code,
                    r.statuses.iter().map(|s| s.code).collect::<Vec<_>>(),
                )
            })
        };
        assert_eq!(code(&direct), code(&tonic), "{why}");
    }
}

/// Clients that ping often must not be sent away. gRPC's own servers answer a client that pings
/// more often than every 5 minutes without data with GOAWAY ENHANCE_YOUR_CALM; aperture-py pings
/// every 10 s. Over one raw HTTP/2 connection (tonic's Channel would silently redial after a
/// GOAWAY, hiding it): a call, then 20 PINGs 50 ms apart with no data in between, each answered
/// by a PONG, then a call on the same connection, which is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_client_pings_are_tolerated() {
    const PINGS: usize = 20;
    let srv = start_local(POLICY_YAML, None);
    let addr = srv.handle.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = conn.ping_pong().expect("first ping_pong");
    let conn = tokio::spawn(conn);
    let req = check_req("checkout", &[("user", "pinger")]);

    let first = raw_check(&mut send, addr, &req).await.expect("first call");
    assert_eq!(first.decision_type, 0, "{first:?}");
    let mut pongs = 0;
    for i in 0..PINGS {
        match pings.ping(h2::Ping::opaque()).await {
            Ok(_) => pongs += 1,
            Err(e) => panic!("PING {i} failed (GOAWAY: {}): {e}", e.is_go_away()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pongs, PINGS);
    let second = raw_check(&mut send, addr, &req)
        .await
        .expect("a call on the same connection after the pings");
    assert_eq!(second.decision_type, 0, "{second:?}");
    assert!(
        !conn.is_finished(),
        "the server closed the connection: {:?}",
        conn.await
    );
}

/// `shutdown` stops accepting, lets an in-flight call finish, and returns well before the grace
/// period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_calls() {
    let srv = start_local(POLICY_YAML, Some(Duration::from_millis(300)));
    let url = srv.url();
    let mut c = srv.fcs().await;
    let call =
        tokio::spawn(async move { c.check(check_req("checkout", &[("user", "late")])).await });
    // The call is in the backend (which takes 300 ms to answer) when shutdown starts.
    srv.entered.wait_for(1).await;
    let t = std::time::Instant::now();
    tokio::task::spawn_blocking(move || srv.handle.shutdown())
        .await
        .unwrap();
    assert!(
        t.elapsed() < tollgate_grpc::server::SHUTDOWN_GRACE,
        "{:?}",
        t.elapsed()
    );
    let resp = call.await.unwrap().expect("in-flight call answered");
    assert_eq!(resp.into_inner().decision_type, 0);
    assert!(
        tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .is_err(),
        "still accepting"
    );
}
