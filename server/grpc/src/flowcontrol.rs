//! `aperture.flowcontrol.check.v1.FlowControlService`: what Aperture's SDKs call.
//!
//! `Check` follows the agent's stage order (see /work/shared/aperture-compat.md); the backend
//! runs the component stages, this handler the cache stage:
//!
//! ```text
//!   request ──> rate limiters, concurrency limiters ──rejected──> REJECTED, RATE_LIMITED
//!                     │ accepted                                  (default status 429)
//!                     v
//!               concurrency schedulers ─┐  may wait (until the ──rejected──> REJECTED,
//!                     │ accepted        │  gRPC deadline minus            NO_TOKENS
//!                     v                 │  the decision margin)          (default 503)
//!               quota schedulers ───────┘
//!                     │ accepted
//!                     v
//!              result/global cache lookup (only if keys were asked for) ──> ACCEPTED
//! ```
//!
//! The answer describes each component as Aperture's agent does ([`crate::reply`]); a flow
//! admitted by a concurrency component carries its `request_id`. Tollgate looks the cache up
//! after the schedulers, not between them as the agent does (a hit there skips the quota
//! scheduler): the stages are the backend's and run as one decision.
//!
//! `FlowEnd` ends flows by their `request_id` (the `FlowControlService::flow_end` impl says
//! how each reference is answered). Cache RPCs go to the [`TtlCache`].
//!
//! # Deadlines
//!
//! The call's `grpc-timeout` goes to the backend, which answers by then: a scheduler rejects
//! a flow it cannot admit at the deadline minus its `decision_deadline_margin`. The handler
//! does not cut the call short (see [`crate::deadline`]).
//!
//! # A request outside the bounds
//!
//! At most 64 labels, label keys, values and the control point at most 4,096 bytes, the
//! request at most 1 MiB: the binary protocol's bounds ([`crate::request_bounds`]); and at
//! most [`MAX_GLOBAL_KEYS_PER_CALL`] global cache keys to look up, as a `CacheLookup`. Beyond
//! them the answer is REJECTED, status 400, reason NONE, no limiter decision, and the bound
//! broken in the [`REJECT_REASON_HEADER`] header; not an RPC error, for the reason below.
//!
//! # A flow Tollgate cannot judge
//!
//! A flow whose tokens label is not a cost (`-1000`, `NaN`, `inf`, `abc`) cannot be decided.
//! It is **not** answered with an RPC error: every Aperture SDK turns any RPC error into
//! "Unreachable" and runs the flow (fail open), so garbage labels would bypass the limit.
//! [`unjudgeable_response`] answers instead, with nothing
//! taken from any bucket:
//!
//! - `decision_type` REJECTED, `reject_reason` NONE (Aperture's enum has no "invalid request";
//!   RATE_LIMITED would be untrue), `denied_response_status_code` BadRequest (400): the SDKs'
//!   `should_run()` is false and their HTTP status helpers give 400;
//! - one `LimiterDecision` for the policy whose tokens label is bad: `dropped`, status 400, its
//!   bucket label, no `tokens_info` (no bucket was consulted);
//! - response metadata [`REJECT_REASON_HEADER`] (`tollgate-reject-reason`) with the error text,
//!   e.g. `label "tokens" (the tokens label of policy "per_user") must not be negative, got
//!   "-1000"`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tollgate_policy::{Checked, FlowId, OwnedFlow};
use tonic::{Request, Response, Status};

use crate::backend::{DecisionBackend, EndStatus, GrpcService};
use crate::cache::{CacheError, Scope, TtlCache};
use crate::check_reply::{timestamp, CheckAnswer, Decided};
use crate::deadline::{self, MonoClock};
use crate::direct_unary::{DirectMethod, HandlerFuture};
use crate::proto::aperture::flowcontrol::check::v1 as pb;
use crate::reject_header::{reject_reason_value, REJECT_REASON_HEADER};
use crate::reply::{invalid_request_response, unjudgeable_response};
use crate::request_bounds;
use pb::flow_control_service_server::FlowControlService;

/// `TokenReturnStatus.error` for a flow id that holds nothing: never issued here, already
/// ended (by an earlier end, its span, or `max_inflight_duration`), or from before a restart.
/// Harmless, as in Aperture.
pub const FLOW_END_UNKNOWN: &str = "unknown or already ended flow";

/// `TokenReturnStatus.error` for a `request_id` that is not a flow id Tollgate issues (16 hex
/// digits): it cannot name a flow here, so nothing was returned.
pub const FLOW_END_NOT_A_FLOW_ID: &str =
    "request_id is not a Tollgate flow id (16 hex digits): no flow ended";

/// Most `InflightRequestRef`s in one `FlowEnd`. Bounds the work one request can cause; a flow
/// holds one per concurrency component it matched, so real requests carry a handful.
pub const MAX_FLOW_END_REFS: usize = 1024;

/// Most global cache keys looked up, upserted or deleted in one call. Bounds the work one
/// request can cause while holding the cache lock. A `Check` listing more in its
/// `cache_lookup_request` is out of bounds ([`request_bounds`]): refused before the decision.
pub const MAX_GLOBAL_KEYS_PER_CALL: usize = 1024;

/// Most value bytes one cache lookup (`CacheLookup`, or a `Check`'s cache stage) answers with;
/// the keys past it are answered with an error naming the limit. Why: a lookup may
/// name one large value many times, so without a bound a small request would build a reply
/// about [`MAX_GLOBAL_KEYS_PER_CALL`] values large (1 GiB at the default 1 MiB
/// `server.cache.max_entry_bytes`). Why this value: it is tonic's default decoding limit,
/// which clients apply to replies too (grpc-go's, grpc-js's and grpc-python's default is the
/// same): a reply with more value bytes could not reach such a client anyway.
pub const MAX_LOOKUP_REPLY_VALUE_BYTES: usize = 4 << 20;

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

    /// Looks up `req`'s keys, the result cache's under `control_point`: one answer per key,
    /// in the request's order, with at most [`MAX_LOOKUP_REPLY_VALUE_BYTES`] of values. The
    /// caller bounds the number of keys ([`MAX_GLOBAL_KEYS_PER_CALL`]).
    fn lookup(&self, control_point: &str, req: &pb::CacheLookupRequest) -> pb::CacheLookupResponse {
        let now = self.clock.now_ns();
        let cache = self.cache();
        let mut budget_left = MAX_LOOKUP_REPLY_VALUE_BYTES;
        let mut budget_spent = false;
        let mut found = |scope: &Scope, key: &str| {
            // Once a value did not fit, the keys after it are not looked up either: the answer
            // is a prefix of the keys, so a client can ask again from the first refused one.
            if budget_spent {
                return lookup_budget_spent();
            }
            match cache.get(scope, key, now) {
                Some(v) if v.len() > budget_left => {
                    budget_spent = true;
                    lookup_budget_spent()
                }
                Some(v) => {
                    budget_left -= v.len();
                    pb::KeyLookupResponse {
                        value: v.to_vec(),
                        lookup_status: pb::CacheLookupStatus::Hit as i32,
                        operation_status: pb::CacheOperationStatus::Success as i32,
                        error: String::new(),
                    }
                }
                None => pb::KeyLookupResponse {
                    value: Vec::new(),
                    lookup_status: pb::CacheLookupStatus::Miss as i32,
                    operation_status: pb::CacheOperationStatus::Success as i32,
                    error: String::new(),
                },
            }
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
            .map(|k| pb::cache_lookup_response::GlobalCacheResponsesEntry {
                key: k.clone(),
                value: Some(found(&Scope::Global, k)),
            })
            .collect();
        pb::CacheLookupResponse {
            result_cache_response,
            global_cache_responses,
        }
    }
}

/// The answer to a key not looked up because the reply's values reached
/// [`MAX_LOOKUP_REPLY_VALUE_BYTES`]: ERROR, as a failed lookup is answered, naming the limit.
fn lookup_budget_spent() -> pb::KeyLookupResponse {
    pb::KeyLookupResponse {
        value: Vec::new(),
        lookup_status: pb::CacheLookupStatus::Miss as i32,
        operation_status: pb::CacheOperationStatus::Error as i32,
        error: format!(
            "not looked up: the reply's cache values reached the limit of \
             {MAX_LOOKUP_REPLY_VALUE_BYTES} bytes per lookup; look the key up in another call"
        ),
    }
}

fn too_many_keys(n: usize) -> Status {
    Status::invalid_argument(format!(
        "{n} global cache keys in one call; at most {MAX_GLOBAL_KEYS_PER_CALL} are accepted"
    ))
}

/// A cache entry's TTL in nanoseconds: 0 when absent, zero or negative (the cache refuses it
/// as [`CacheError::NonPositiveTtl`]). A `Duration` that is not normalized (see
/// `google.protobuf.Duration`: `nanos` within ±999,999,999, not of the other sign than
/// `seconds`) is refused: [`CacheError::InvalidTtl`].
fn ttl_ns(ttl: Option<&prost_types::Duration>) -> Result<u64, CacheError> {
    const NANOS_PER_SECOND: u32 = 1_000_000_000;
    let Some(d) = ttl else {
        return Ok(0);
    };
    let signs_differ = (d.seconds > 0 && d.nanos < 0) || (d.seconds < 0 && d.nanos > 0);
    if d.nanos.unsigned_abs() >= NANOS_PER_SECOND || signs_differ {
        return Err(CacheError::InvalidTtl {
            seconds: d.seconds,
            nanos: d.nanos,
        });
    }
    let (Ok(secs), Ok(nanos)) = (u64::try_from(d.seconds), u32::try_from(d.nanos)) else {
        return Ok(0); // negative
    };
    Ok(secs
        .saturating_mul(u64::from(NANOS_PER_SECOND))
        .saturating_add(u64::from(nanos)))
}

fn op_status(r: Result<(), CacheError>) -> (i32, String) {
    match r {
        Ok(()) => (pb::CacheOperationStatus::Success as i32, String::new()),
        Err(e) => (pb::CacheOperationStatus::Error as i32, e.to_string()),
    }
}

/// The request's control point and labels, moved (not copied) into a flow; labels as the
/// policy crate takes them, sorted by key. The check hands them back ([`Checked`]) for the
/// answer.
fn owned_flow(req: &mut pb::CheckRequest) -> OwnedFlow {
    let mut labels: Vec<(String, String)> = std::mem::take(&mut req.labels).into_iter().collect();
    // A map's keys are distinct: an unstable sort gives the one order.
    labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    OwnedFlow {
        control_point: std::mem::take(&mut req.control_point),
        labels,
        tokens: None,
    }
}

impl FlowControl {
    /// Decides one `Check`: the answer both the direct path and tonic's send.
    async fn decide(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<CheckAnswer>, Status> {
        let start = SystemTime::now();
        let timeout = deadline::client_timeout(request.metadata());
        let mut req = request.into_inner();
        if let Err(error) = request_bounds::check_request(&req) {
            let resp = invalid_request_response(&req);
            return Ok(undecided(resp, start, &error.to_string()));
        }
        let flow = owned_flow(&mut req);
        let Checked { flow, decision } = deadline::within(timeout, async {
            Ok(self
                .backend
                .check(GrpcService::ApertureCheck, flow, timeout)
                .await)
        })
        .await??;
        let decision = match decision {
            Ok(decision) => decision,
            Err(error) => {
                // Rare: the request gets its strings back for the answer that names them.
                req.control_point = flow.control_point;
                req.labels = flow.labels.into_iter().collect();
                let resp = unjudgeable_response(&self.backend.engine(), req, &error);
                return Ok(undecided(resp, start, &error.to_string()));
            }
        };
        let mut cache_lookup_response = None;
        if let Some(lookup) = req.cache_lookup_request.take() {
            let asks = !lookup.result_cache_key.is_empty() || !lookup.global_cache_keys.is_empty();
            if decision.accepted && asks {
                let cp = if lookup.control_point.is_empty() {
                    &flow.control_point // the request's, echoed
                } else {
                    &lookup.control_point
                };
                // The number of keys was bounded before the decision (request_bounds): no
                // RPC error can come from here, after tokens were taken.
                cache_lookup_response = Some(Box::new(self.lookup(cp, &lookup)));
            }
        }
        Ok(Response::new(CheckAnswer::Decided(Decided {
            control_point: flow.control_point,
            labels: flow.labels,
            expect_end: req.expect_end,
            engine: self.backend.engine(),
            decision,
            cache_lookup_response,
            start,
            end: SystemTime::now(),
        })))
    }
}

/// The answer `resp` to a flow that was not decided, with why in [`REJECT_REASON_HEADER`].
fn undecided(mut resp: pb::CheckResponse, start: SystemTime, why: &str) -> Response<CheckAnswer> {
    resp.start = Some(timestamp(start));
    resp.end = Some(timestamp(SystemTime::now()));
    let mut response = Response::new(CheckAnswer::Built(Box::new(resp)));
    response
        .metadata_mut()
        .insert(REJECT_REASON_HEADER, reject_reason_value(why));
    response
}

/// `Check`, the SDKs' call per flow, is answered without tonic's codec
/// ([`crate::direct_unary`]), its answer encoded straight from the decision
/// ([`crate::check_reply`]); the other methods go through tonic.
impl DirectMethod for FlowControl {
    const PATH: &'static str = "/aperture.flowcontrol.check.v1.FlowControlService/Check";
    type Request = pb::CheckRequest;
    type Reply = CheckAnswer;

    fn call(&self, request: Request<pb::CheckRequest>) -> HandlerFuture<'_, CheckAnswer> {
        Box::pin(self.decide(request))
    }
}

#[tonic::async_trait]
impl FlowControlService for FlowControl {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let answer = self.decide(request).await?;
        Ok(answer.map(CheckAnswer::into_message))
    }

    async fn cache_lookup(
        &self,
        request: Request<pb::CacheLookupRequest>,
    ) -> Result<Response<pb::CacheLookupResponse>, Status> {
        let req = request.into_inner();
        if req.global_cache_keys.len() > MAX_GLOBAL_KEYS_PER_CALL {
            return Err(too_many_keys(req.global_cache_keys.len()));
        }
        Ok(Response::new(self.lookup(&req.control_point, &req)))
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
            let r = ttl_ns(e.ttl.as_ref()).and_then(|ttl| {
                cache.upsert(
                    Scope::Result(req.control_point.clone()),
                    &e.key,
                    e.value,
                    ttl,
                    now,
                )
            });
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
                let r = ttl_ns(e.ttl.as_ref())
                    .and_then(|ttl| cache.upsert(Scope::Global, &k, e.value, ttl, now));
                let (operation_status, error) = op_status(r);
                pb::cache_upsert_response::GlobalCacheResponsesEntry {
                    key: k,
                    value: Some(pb::KeyUpsertResponse {
                        operation_status,
                        error,
                    }),
                }
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
                pb::cache_delete_response::GlobalCacheResponsesEntry {
                    key: k.clone(),
                    value: Some(pb::KeyDeleteResponse::default()),
                }
            })
            .collect();
        Ok(Response::new(pb::CacheDeleteResponse {
            result_cache_response,
            global_cache_responses,
        }))
    }

    /// Ends each referenced flow by its `request_id` (a [`FlowId`]), whatever its policy
    /// name, hash, label or tokens say: the id alone names the flow and the shard holding it.
    /// One `TokenReturnStatus` per reference, in order: `returned` when the flow held tokens
    /// and they went back; else [`FLOW_END_UNKNOWN`] (harmless) or
    /// [`FLOW_END_NOT_A_FLOW_ID`].
    async fn flow_end(
        &self,
        request: Request<pb::FlowEndRequest>,
    ) -> Result<Response<pb::FlowEndResponse>, Status> {
        let req = request.into_inner();
        if req.inflight_requests.len() > MAX_FLOW_END_REFS {
            return Err(Status::invalid_argument(format!(
                "{} inflight requests in one FlowEnd; at most {MAX_FLOW_END_REFS} are accepted",
                req.inflight_requests.len()
            )));
        }
        let ids: Vec<Option<FlowId>> = req
            .inflight_requests
            .iter()
            .map(|r| FlowId::parse(&r.request_id))
            .collect();
        let to_end: Vec<FlowId> = ids.iter().flatten().copied().collect();
        let statuses = if to_end.is_empty() {
            Vec::new()
        } else {
            self.backend.flow_end(to_end).await?
        };
        let mut statuses = statuses.into_iter();
        let token_return_statuses = req
            .inflight_requests
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                let (returned, error) = match id.map(|_| statuses.next()) {
                    None => (false, FLOW_END_NOT_A_FLOW_ID),
                    Some(Some(EndStatus::Ended)) => (true, ""),
                    // A backend that answers fewer statuses than asked ended nothing more.
                    Some(Some(EndStatus::Unknown) | None) => (false, FLOW_END_UNKNOWN),
                };
                pb::TokenReturnStatus {
                    inflight_request_ref: Some(r),
                    returned,
                    error: error.to_owned(),
                }
            })
            .collect();
        Ok(Response::new(pb::FlowEndResponse {
            token_return_statuses,
        }))
    }
}
