//! `aperture.flowcontrol.check.v1.FlowControlService`: what Aperture's SDKs call.
//!
//! `Check` follows the agent's stage order (see /work/shared/aperture-compat.md), for the stages
//! Tollgate has:
//!
//! ```text
//!   request ──> rate limiters (backend) ──rejected──> REJECTED, RATE_LIMITED, status of the
//!                     │                               rejecting limiter (default 429), wait_time
//!                  accepted
//!                     v
//!              result/global cache lookup (only if keys were asked for) ──> ACCEPTED
//! ```
//!
//! A result-cache hit answers ACCEPTED at once; with no later stage in Tollgate a miss does too.
//! Cache RPCs go to the [`TtlCache`]; `FlowEnd` answers honestly that no concurrency limiter exists.
//!
//! # A flow Tollgate cannot judge
//!
//! A flow whose tokens label is not a cost (`-1000`, `NaN`, `inf`, `abc`) cannot be decided.
//! It is **not** answered with an RPC error: every Aperture SDK turns any RPC error into
//! "Unreachable" and runs the flow (fail open), so garbage labels would bypass the limit.
//! [`unjudgeable_response`] answers instead, with nothing taken from any bucket:
//!
//! - `decision_type` REJECTED, `reject_reason` NONE (Aperture's enum has no "invalid request";
//!   RATE_LIMITED would be untrue), `denied_response_status_code` BadRequest (400): the SDKs'
//!   `should_run()` is false and their HTTP status helpers give 400;
//! - one `LimiterDecision` for the policy whose tokens label is bad: `dropped`, status 400, its
//!   limit-by label value, no `tokens_info` (no bucket was consulted);
//! - response metadata [`REJECT_REASON_HEADER`] (`tollgate-reject-reason`) with the error text,
//!   e.g. `label "tokens" (the tokens label of policy "per_user") must not be negative, got
//!   "-1000"`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tollgate_policy::{Decision, Engine, FlowError, Labels, OutcomeKind, OwnedFlow};
use tonic::{Request, Response, Status};

use crate::backend::{BackendError, DecisionBackend};
use crate::cache::{CacheError, Scope, TtlCache};
use crate::deadline::{self, MonoClock};
use crate::proto::aperture::flowcontrol::check::v1 as pb;
use crate::reject_header::{reject_reason_value, REJECT_REASON_HEADER};
use pb::flow_control_service_server::FlowControlService;

/// Error string of every `FlowEnd` token return: Tollgate has rate limiters only.
pub const FLOW_END_UNSUPPORTED: &str =
    "concurrency limiting is not supported by Tollgate: no tokens are held for this flow, nothing was returned";

/// Most global cache keys looked up, upserted or deleted in one call. Bounds the work one
/// request can cause while holding the cache lock.
pub const MAX_GLOBAL_KEYS_PER_CALL: usize = 1024;

/// The FlowControlService implementation.
#[derive(Clone)]
pub struct FlowControl {
    backend: Arc<dyn DecisionBackend>,
    /// Uncontended in practice: every handler runs on the single gRPC runtime thread.
    cache: Arc<Mutex<TtlCache>>,
    clock: MonoClock,
}

impl FlowControl {
    /// A service deciding through `backend`, caching in `cache`.
    pub fn new(
        backend: Arc<dyn DecisionBackend>,
        cache: Arc<Mutex<TtlCache>>,
        clock: MonoClock,
    ) -> Self {
        Self {
            backend,
            cache,
            clock,
        }
    }

    fn cache(&self) -> MutexGuard<'_, TtlCache> {
        // A panic while holding the lock leaves the cache consistent enough (each method restores
        // its invariants before returning or panicking on a bug); keep serving.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lookup(
        &self,
        control_point: &str,
        req: &pb::CacheLookupRequest,
    ) -> Result<pb::CacheLookupResponse, Status> {
        if req.global_cache_keys.len() > MAX_GLOBAL_KEYS_PER_CALL {
            return Err(too_many_keys(req.global_cache_keys.len()));
        }
        let now = self.clock.now_ns();
        let cache = self.cache();
        let found = |scope: &Scope, key: &str| match cache.get(scope, key, now) {
            Some(v) => pb::KeyLookupResponse {
                value: v.to_vec(),
                lookup_status: pb::CacheLookupStatus::Hit as i32,
                operation_status: pb::CacheOperationStatus::Success as i32,
                error: String::new(),
            },
            None => pb::KeyLookupResponse {
                value: Vec::new(),
                lookup_status: pb::CacheLookupStatus::Miss as i32,
                operation_status: pb::CacheOperationStatus::Success as i32,
                error: String::new(),
            },
        };
        let result_cache_response = (!req.result_cache_key.is_empty()).then(|| {
            if control_point.is_empty() {
                pb::KeyLookupResponse {
                    lookup_status: pb::CacheLookupStatus::Miss as i32,
                    operation_status: pb::CacheOperationStatus::Error as i32,
                    error: CacheError::EmptyControlPoint.to_string(),
                    ..Default::default()
                }
            } else {
                found(
                    &Scope::Result(control_point.to_owned()),
                    &req.result_cache_key,
                )
            }
        });
        let global_cache_responses = req
            .global_cache_keys
            .iter()
            .map(|k| (k.clone(), found(&Scope::Global, k)))
            .collect();
        Ok(pb::CacheLookupResponse {
            result_cache_response,
            global_cache_responses,
        })
    }
}

fn too_many_keys(n: usize) -> Status {
    Status::invalid_argument(format!(
        "{n} global cache keys in one call; at most {MAX_GLOBAL_KEYS_PER_CALL} are accepted"
    ))
}

fn ttl_ns(ttl: Option<&prost_types::Duration>) -> u64 {
    match ttl {
        Some(d) if d.seconds > 0 || (d.seconds == 0 && d.nanos > 0) => {
            let secs = u64::try_from(d.seconds).unwrap_or(0);
            let nanos = u64::try_from(d.nanos.max(0)).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        _ => 0, // absent, zero or negative: refused by the cache as NonPositiveTtl
    }
}

fn op_status(r: Result<(), CacheError>) -> (i32, String) {
    match r {
        Ok(()) => (pb::CacheOperationStatus::Success as i32, String::new()),
        Err(e) => (pb::CacheOperationStatus::Error as i32, e.to_string()),
    }
}

/// A protobuf duration from nanoseconds.
pub(crate) fn duration_ns(ns: u64) -> prost_types::Duration {
    let d = Duration::from_nanos(ns);
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Labels as the policy crate takes them: sorted by key (a map's keys are unique).
fn owned_flow(
    control_point: &str,
    labels: &std::collections::HashMap<String, String>,
) -> OwnedFlow {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    OwnedFlow {
        control_point: control_point.to_owned(),
        labels: sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        tokens: None,
    }
}

/// The value of label `key` (a limiter's limit-by key), or "" when it has none or the flow
/// lacks it.
pub(crate) fn label_value<'a, L: Labels + ?Sized>(labels: &'a L, key: Option<&str>) -> &'a str {
    key.and_then(|k| labels.get(k)).unwrap_or("")
}

/// One `LimiterDecision` per outcome, in the engine's order.
pub fn limiter_decisions<L: Labels + ?Sized>(
    engine: &Engine,
    labels: &L,
    decision: &Decision,
) -> Vec<pb::LimiterDecision> {
    decision
        .limiters
        .iter()
        .map(|o| {
            let spec = engine.limiter(o.limiter);
            let dropped = matches!(o.kind, OutcomeKind::Rejected);
            pb::LimiterDecision {
                policy_name: spec.policy_name.clone(),
                policy_hash: spec.policy_hash.clone(),
                component_id: spec.component_id.clone(),
                dropped,
                reason: if matches!(o.kind, OutcomeKind::KeyNotFound) {
                    pb::limiter_decision::LimiterReason::KeyNotFound as i32
                } else {
                    pb::limiter_decision::LimiterReason::Unspecified as i32
                },
                denied_response_status_code: if dropped {
                    i32::from(spec.denied_status_code)
                } else {
                    0
                },
                wait_time: (o.wait_ns > 0).then(|| duration_ns(o.wait_ns)),
                details: Some(pb::limiter_decision::Details::RateLimiterInfo(
                    pb::limiter_decision::RateLimiterInfo {
                        label: label_value(labels, spec.limit_by_label_key.as_deref()).to_owned(),
                        tokens_info: Some(pb::limiter_decision::TokensInfo {
                            remaining: o.remaining,
                            current: o.current,
                            consumed: if matches!(o.kind, OutcomeKind::Accepted) {
                                o.tokens
                            } else {
                                0.0
                            },
                        }),
                    },
                )),
            }
        })
        .collect()
}

/// What every answer to `req` carries, as the agent fills it: control point and `expect_end`
/// echoed, label keys sorted, labels as telemetry labels; ACCEPTED.
fn base_response(req: &pb::CheckRequest) -> pb::CheckResponse {
    let mut flow_label_keys: Vec<String> = req.labels.keys().cloned().collect();
    flow_label_keys.sort_unstable();
    pb::CheckResponse {
        control_point: req.control_point.clone(),
        flow_label_keys,
        telemetry_flow_labels: req.labels.clone(),
        expect_end: req.expect_end,
        ..Default::default()
    }
}

/// The CheckResponse for `decision` (without timestamps and cache stage).
pub fn check_response(
    engine: &Engine,
    req: &pb::CheckRequest,
    decision: &Decision,
) -> pb::CheckResponse {
    let mut resp = pb::CheckResponse {
        limiter_decisions: limiter_decisions(engine, &req.labels, decision),
        ..base_response(req)
    };
    if decision.wait_ns > 0 {
        resp.wait_time = Some(duration_ns(decision.wait_ns));
    }
    if !decision.accepted {
        resp.decision_type = pb::check_response::DecisionType::Rejected as i32;
        resp.reject_reason = pb::check_response::RejectReason::RateLimited as i32;
        let status = decision
            .limiters
            .iter()
            .find(|o| matches!(o.kind, OutcomeKind::Rejected))
            .map_or(429, |o| engine.limiter(o.limiter).denied_status_code);
        resp.denied_response_status_code = i32::from(if status == 0 { 429 } else { status });
    }
    resp
}

/// HTTP status of a flow Tollgate cannot judge: the request, not the rate, is the problem.
pub const UNJUDGEABLE_STATUS: pb::StatusCode = pb::StatusCode::BadRequest;

/// The CheckResponse (without timestamps) for a flow that could not be judged because of
/// `error`: REJECTED with status 400 and a dropped `LimiterDecision` for the policy at fault
/// (see the module docs). Nothing was taken from any bucket.
pub fn unjudgeable_response(
    engine: &Engine,
    req: &pb::CheckRequest,
    error: &FlowError,
) -> pb::CheckResponse {
    let status = UNJUDGEABLE_STATUS as i32;
    let FlowError::BadTokensLabel { policy, .. } = error;
    let limiter_decisions = engine
        .limiters()
        .iter()
        .filter(|spec| spec.policy_name == *policy)
        .map(|spec| pb::LimiterDecision {
            policy_name: spec.policy_name.clone(),
            policy_hash: spec.policy_hash.clone(),
            component_id: spec.component_id.clone(),
            dropped: true,
            reason: pb::limiter_decision::LimiterReason::Unspecified as i32,
            denied_response_status_code: status,
            wait_time: None,
            details: Some(pb::limiter_decision::Details::RateLimiterInfo(
                pb::limiter_decision::RateLimiterInfo {
                    label: label_value(&req.labels, spec.limit_by_label_key.as_deref()).to_owned(),
                    tokens_info: None,
                },
            )),
        })
        .collect();
    pb::CheckResponse {
        decision_type: pb::check_response::DecisionType::Rejected as i32,
        reject_reason: pb::check_response::RejectReason::None as i32,
        denied_response_status_code: status,
        limiter_decisions,
        ..base_response(req)
    }
}

#[tonic::async_trait]
impl FlowControlService for FlowControl {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let start = SystemTime::now();
        let budget = deadline::budget(request.metadata());
        let req = request.into_inner();
        let flow = owned_flow(&req.control_point, &req.labels);
        let decided =
            deadline::within(budget, async { Ok(self.backend.check(flow).await) }).await?;
        let decision = match decided {
            Ok(decision) => decision,
            Err(BackendError::Flow(error)) => {
                let mut resp = unjudgeable_response(self.backend.engine(), &req, &error);
                resp.start = Some(timestamp(start));
                resp.end = Some(timestamp(SystemTime::now()));
                let mut response = Response::new(resp);
                response.metadata_mut().insert(
                    REJECT_REASON_HEADER,
                    reject_reason_value(&error.to_string()),
                );
                return Ok(response);
            }
            Err(unavailable @ BackendError::Unavailable(_)) => return Err(unavailable.into()),
        };
        let mut resp = check_response(self.backend.engine(), &req, &decision);
        if decision.accepted {
            if let Some(lookup) = &req.cache_lookup_request {
                if !lookup.result_cache_key.is_empty() || !lookup.global_cache_keys.is_empty() {
                    let cp = if lookup.control_point.is_empty() {
                        &req.control_point
                    } else {
                        &lookup.control_point
                    };
                    resp.cache_lookup_response = Some(self.lookup(cp, lookup)?);
                }
            }
        }
        resp.start = Some(timestamp(start));
        resp.end = Some(timestamp(SystemTime::now()));
        Ok(Response::new(resp))
    }

    async fn cache_lookup(
        &self,
        request: Request<pb::CacheLookupRequest>,
    ) -> Result<Response<pb::CacheLookupResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.lookup(&req.control_point, &req)?))
    }

    async fn cache_upsert(
        &self,
        request: Request<pb::CacheUpsertRequest>,
    ) -> Result<Response<pb::CacheUpsertResponse>, Status> {
        let req = request.into_inner();
        if req.global_cache_entries.len() > MAX_GLOBAL_KEYS_PER_CALL {
            return Err(too_many_keys(req.global_cache_entries.len()));
        }
        let now = self.clock.now_ns();
        let mut cache = self.cache();
        let result_cache_response = req.result_cache_entry.map(|e| {
            let r = cache.upsert(
                Scope::Result(req.control_point.clone()),
                &e.key,
                e.value,
                ttl_ns(e.ttl.as_ref()),
                now,
            );
            let (operation_status, error) = op_status(r);
            pb::KeyUpsertResponse {
                operation_status,
                error,
            }
        });
        let global_cache_responses = req
            .global_cache_entries
            .into_iter()
            .map(|(k, e)| {
                // The map key names the entry; the SDKs leave CacheEntry.key empty here.
                let r = cache.upsert(Scope::Global, &k, e.value, ttl_ns(e.ttl.as_ref()), now);
                let (operation_status, error) = op_status(r);
                (
                    k,
                    pb::KeyUpsertResponse {
                        operation_status,
                        error,
                    },
                )
            })
            .collect();
        Ok(Response::new(pb::CacheUpsertResponse {
            result_cache_response,
            global_cache_responses,
        }))
    }

    async fn cache_delete(
        &self,
        request: Request<pb::CacheDeleteRequest>,
    ) -> Result<Response<pb::CacheDeleteResponse>, Status> {
        let req = request.into_inner();
        if req.global_cache_keys.len() > MAX_GLOBAL_KEYS_PER_CALL {
            return Err(too_many_keys(req.global_cache_keys.len()));
        }
        let now = self.clock.now_ns();
        let mut cache = self.cache();
        // Deleting an absent key succeeds: the caller's goal (no entry) holds.
        let result_cache_response = (!req.result_cache_key.is_empty()).then(|| {
            if req.control_point.is_empty() {
                let (operation_status, error) = op_status(Err(CacheError::EmptyControlPoint));
                pb::KeyDeleteResponse {
                    operation_status,
                    error,
                }
            } else {
                cache.delete(
                    Scope::Result(req.control_point.clone()),
                    &req.result_cache_key,
                    now,
                );
                pb::KeyDeleteResponse::default()
            }
        });
        let global_cache_responses = req
            .global_cache_keys
            .iter()
            .map(|k| {
                cache.delete(Scope::Global, k, now);
                (k.clone(), pb::KeyDeleteResponse::default())
            })
            .collect();
        Ok(Response::new(pb::CacheDeleteResponse {
            result_cache_response,
            global_cache_responses,
        }))
    }

    async fn flow_end(
        &self,
        request: Request<pb::FlowEndRequest>,
    ) -> Result<Response<pb::FlowEndResponse>, Status> {
        let req = request.into_inner();
        let token_return_statuses = req
            .inflight_requests
            .into_iter()
            .map(|r| pb::TokenReturnStatus {
                inflight_request_ref: Some(r),
                returned: false,
                error: FLOW_END_UNSUPPORTED.to_owned(),
            })
            .collect();
        Ok(Response::new(pb::FlowEndResponse {
            token_return_statuses,
        }))
    }
}
