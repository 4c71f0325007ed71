//! How a [`Decision`] becomes the `CheckResponse` Aperture's agent would send.
//!
//! One `LimiterDecision` per component that decided, in policy order, with the details of its
//! kind, as the agent's actuators fill them
//! (`pkg/policies/flowcontrol/actuators/*` in Aperture's repository):
//!
//! | kind | details | reject reason | default status |
//! |---|---|---|---|
//! | rate limiter | `rate_limiter_info { label, tokens_info }` | RATE_LIMITED | 429 |
//! | concurrency limiter | `concurrency_limiter_info { label, tokens_info, request_id }` | RATE_LIMITED | 429 |
//! | concurrency scheduler | `concurrency_scheduler_info { label, workload_index, tokens_info, priority, request_id }` | NO_TOKENS | 503 |
//! | quota scheduler | `quota_scheduler_info { label, workload_index, tokens_info, priority }` | NO_TOKENS | 503 |
//!
//! - `label` names the component's bucket as the agent does: `key:value` of its
//!   `limit_by_label_key` (`user:alice`), `default` when it has none (one shared bucket), and
//!   empty when the flow lacks that label (reason KEY_NOT_FOUND, nothing taken).
//! - `tokens_info`: tokens in the bucket after the decision (`remaining`), before it
//!   (`current`), and taken (`consumed`, 0 unless this component admitted the flow). For the
//!   concurrency kinds the bucket holds the capacity still free.
//! - `request_id`: the flow's [`FlowId`] (16 hex digits), which
//!   `FlowEnd` (or the flow's span) hands back to free the capacity; empty when the component
//!   holds nothing for the flow (rejected, key not found, or handed back because another
//!   component rejected).
//! - `workload_index` and `priority`: the workload the flow's labels pick (the workload label's
//!   value, else the matched workload's name or position, else `default`) and its priority (the
//!   priority label when it is a positive number, else the workload's).
//! - `dropped` for the component that rejected, with its `denied_response_status_code` and
//!   `wait_time` (until enough tokens exist, when the bucket can say).
//!
//! The response is REJECTED when a component rejected, with the first rejecting component's
//! reason and status code and the longest wait.
//!
//! # Flow ids for SDKs that cannot see `request_id`
//!
//! aperture-js 2.5.0 decodes responses with a check.proto older than the concurrency
//! components: it drops `concurrency_limiter_info` and `concurrency_scheduler_info`, so the
//! JSON check response in its span carries no `request_id`, and it sends no `FlowEnd`. When a
//! request does not set `expect_end` (only such SDKs, whose span must end the flow) and the flow
//! holds concurrency tokens, the response's `telemetry_flow_labels` also carry
//! [`FLOW_IDS_LABEL`]: the flow ids, comma-separated. Every SDK keeps that map and writes it
//! into the span's check response, where [`crate::span_flows`] reads it back.

use std::time::Duration;

use tollgate_policy::{
    ComponentKind, Decision, Engine, FlowError, FlowId, Labels, LimiterOutcome, LimiterSpec,
    OutcomeKind, RejectReason,
};

use crate::proto::aperture::flowcontrol::check::v1 as pb;
use pb::limiter_decision::{
    ConcurrencyLimiterInfo, ConcurrencySchedulerInfo, Details, QuotaSchedulerInfo, RateLimiterInfo,
    TokensInfo,
};

/// The telemetry flow label that lists a flow's ids for its span (see the module docs). A
/// request label of this name is overwritten in the telemetry labels of such answers.
pub const FLOW_IDS_LABEL: &str = "tollgate.flow_ids";

/// The bucket label Aperture's agent reports for one of `spec`'s decisions on a flow with
/// `labels` (see the module docs).
pub fn bucket_label<L: Labels + ?Sized>(spec: &LimiterSpec, labels: &L) -> String {
    let parts = BucketLabel::of(spec, labels).parts();
    // Not `format!`: this runs for every decision of every Check answered through tonic.
    let mut label = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| label.push_str(p));
    label
}

/// A bucket label borrowed from the spec and the flow's labels: what [`bucket_label`] makes
/// into a string and [`crate::check_reply`] writes straight into a reply.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BucketLabel<'a> {
    /// No `limit_by_label_key`: one shared bucket, `default`.
    Shared,
    /// `key:value` of the flow's `limit_by_label_key` label.
    Keyed(&'a str, &'a str),
    /// The flow lacks that label: empty (reason KEY_NOT_FOUND).
    Missing,
}

impl<'a> BucketLabel<'a> {
    /// The label of one of `spec`'s decisions on a flow with `labels`.
    pub(crate) fn of<L: Labels + ?Sized>(spec: &'a LimiterSpec, labels: &'a L) -> Self {
        match spec.limit_by_label_key.as_deref() {
            None => BucketLabel::Shared,
            Some(key) => labels
                .get(key)
                .map_or(BucketLabel::Missing, |value| BucketLabel::Keyed(key, value)),
        }
    }

    /// The label's text in pieces, to be joined.
    pub(crate) fn parts(self) -> [&'a str; 3] {
        match self {
            BucketLabel::Shared => ["default", "", ""],
            BucketLabel::Keyed(key, value) => [key, ":", value],
            BucketLabel::Missing => ["", "", ""],
        }
    }
}

/// The workload a scheduler component reports for a flow with `labels` (its
/// `workload_index`) and the flow's priority; empty and 0 for components without a scheduler.
pub(crate) fn workload<'a, L: Labels + ?Sized>(
    spec: &'a LimiterSpec,
    labels: &'a L,
) -> (&'a str, f64) {
    spec.scheduler.as_ref().map_or(("", 0.0), |s| {
        let pick = s.pick(labels);
        (s.name_of(pick.name), pick.priority)
    })
}

/// A protobuf duration from nanoseconds.
pub(crate) fn duration_ns(ns: u64) -> prost_types::Duration {
    let d = Duration::from_nanos(ns);
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The `details` of one decision of `spec` on a flow with `labels`.
fn details<L: Labels + ?Sized>(
    spec: &LimiterSpec,
    labels: &L,
    tokens_info: Option<TokensInfo>,
    request_id: String,
) -> Details {
    let label = bucket_label(spec, labels);
    let (workload_index, priority) = workload(spec, labels);
    let workload_index = workload_index.to_owned();
    match spec.kind {
        ComponentKind::RateLimiter => {
            Details::RateLimiterInfo(RateLimiterInfo { label, tokens_info })
        }
        ComponentKind::ConcurrencyLimiter => {
            Details::ConcurrencyLimiterInfo(ConcurrencyLimiterInfo {
                label,
                tokens_info,
                request_id,
            })
        }
        ComponentKind::ConcurrencyScheduler => {
            Details::ConcurrencySchedulerInfo(ConcurrencySchedulerInfo {
                label,
                workload_index,
                tokens_info,
                priority,
                request_id,
            })
        }
        ComponentKind::QuotaScheduler => Details::QuotaSchedulerInfo(QuotaSchedulerInfo {
            label,
            workload_index,
            tokens_info,
            priority,
        }),
    }
}

/// One `LimiterDecision` for one outcome.
fn limiter_decision<L: Labels + ?Sized>(
    spec: &LimiterSpec,
    labels: &L,
    o: &LimiterOutcome,
) -> pb::LimiterDecision {
    let dropped = o.kind == OutcomeKind::Rejected;
    let admitted = o.kind == OutcomeKind::Accepted;
    let tokens_info = TokensInfo {
        remaining: o.remaining,
        current: o.current,
        consumed: if admitted { o.tokens } else { 0.0 },
    };
    let request_id = match o.flow {
        Some(id) if admitted => id.to_string(),
        _ => String::new(),
    };
    pb::LimiterDecision {
        policy_name: spec.policy_name.clone(),
        policy_hash: spec.policy_hash.clone(),
        component_id: spec.component_id.clone(),
        dropped,
        reason: if o.kind == OutcomeKind::KeyNotFound {
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
        details: Some(details(spec, labels, Some(tokens_info), request_id)),
    }
}

/// One `LimiterDecision` per outcome, in the decision's (policy) order. An outcome whose
/// limiter the engine no longer has (a reload removed it while the flow waited) is left out:
/// there is nothing left to name it by.
pub fn limiter_decisions<L: Labels + ?Sized>(
    engine: &Engine,
    labels: &L,
    decision: &Decision,
) -> Vec<pb::LimiterDecision> {
    decision
        .limiters
        .iter()
        .filter_map(|o| Some(limiter_decision(engine.describe(o.limiter)?, labels, o)))
        .collect()
}

/// What every answer to `req` carries, as the agent fills it: control point and `expect_end`
/// echoed, label keys sorted, labels as telemetry labels; ACCEPTED. The request's strings move
/// into the answer: this runs for every Check.
fn base_response(req: pb::CheckRequest) -> pb::CheckResponse {
    let mut flow_label_keys: Vec<String> = req.labels.keys().cloned().collect();
    flow_label_keys.sort_unstable();
    pb::CheckResponse {
        control_point: req.control_point,
        flow_label_keys,
        telemetry_flow_labels: req.labels,
        expect_end: req.expect_end,
        ..Default::default()
    }
}

/// The status a rejection with `reason` gets when its component does not say (Aperture's
/// defaults).
fn default_status(reason: RejectReason) -> u16 {
    match reason {
        RejectReason::RateLimited => pb::StatusCode::TooManyRequests as u16,
        RejectReason::NoTokens => pb::StatusCode::ServiceUnavailable as u16,
    }
}

/// How a rejected decision is answered.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rejection {
    /// The first rejecting component's reason.
    pub(crate) reason: pb::check_response::RejectReason,
    /// Its `denied_response_status_code`, else the reason's default (Aperture's).
    pub(crate) status: i32,
}

impl Rejection {
    /// How `decision` is answered; `None` when it admits the flow.
    pub(crate) fn of(engine: &Engine, decision: &Decision) -> Option<Rejection> {
        if decision.accepted {
            return None;
        }
        let reason = decision
            .reject_reason(engine)
            .unwrap_or(RejectReason::RateLimited);
        let status = decision
            .denied_status_code(engine)
            .filter(|s| *s != 0)
            .unwrap_or_else(|| default_status(reason));
        Some(Rejection {
            reason: match reason {
                RejectReason::RateLimited => pb::check_response::RejectReason::RateLimited,
                RejectReason::NoTokens => pb::check_response::RejectReason::NoTokens,
            },
            status: i32::from(status),
        })
    }
}

/// The flows `decision` admitted that hold concurrency tokens: what [`FLOW_IDS_LABEL`] lists.
pub(crate) fn flow_ids(decision: &Decision) -> impl Iterator<Item = FlowId> + '_ {
    decision.limiters.iter().filter_map(|o| o.flow)
}

/// The CheckResponse for `decision` (without timestamps and cache stage).
pub fn check_response(
    engine: &Engine,
    req: pb::CheckRequest,
    decision: &Decision,
) -> pb::CheckResponse {
    let mut resp = base_response(req);
    // The request's labels, now the answer's telemetry labels (the flow-ids label is added
    // below, after the bucket labels are read).
    resp.limiter_decisions = limiter_decisions(engine, &resp.telemetry_flow_labels, decision);
    if decision.wait_ns > 0 {
        resp.wait_time = Some(duration_ns(decision.wait_ns));
    }
    if let Some(rejection) = Rejection::of(engine, decision) {
        resp.decision_type = pb::check_response::DecisionType::Rejected as i32;
        resp.reject_reason = rejection.reason as i32;
        resp.denied_response_status_code = rejection.status;
    }
    if !resp.expect_end {
        let ids: Vec<String> = flow_ids(decision).map(|id| id.to_string()).collect();
        if !ids.is_empty() {
            resp.telemetry_flow_labels
                .insert(FLOW_IDS_LABEL.to_owned(), ids.join(","));
        }
    }
    resp
}

/// The CheckResponse (without timestamps) for a request outside the bounds
/// ([`crate::request_bounds`]): REJECTED with status 400 and reason NONE, as a flow that cannot
/// be judged, with no limiter decision (no component was consulted). Labels are not echoed
/// (they may be what is too large); the control point is, when it is within its bound.
pub fn invalid_request_response(req: &pb::CheckRequest) -> pb::CheckResponse {
    let control_point = if req.control_point.len() <= crate::request_bounds::MAX_STRING_BYTES {
        req.control_point.clone()
    } else {
        String::new()
    };
    pb::CheckResponse {
        control_point,
        expect_end: req.expect_end,
        decision_type: pb::check_response::DecisionType::Rejected as i32,
        reject_reason: pb::check_response::RejectReason::None as i32,
        denied_response_status_code: UNJUDGEABLE_STATUS as i32,
        ..Default::default()
    }
}

/// HTTP status of a flow Tollgate cannot judge: the request, not the rate, is the problem.
pub const UNJUDGEABLE_STATUS: pb::StatusCode = pb::StatusCode::BadRequest;

/// The CheckResponse (without timestamps) for a flow that could not be judged because of
/// `error`: REJECTED with status 400 and a dropped `LimiterDecision` for the policy at fault
/// (see [`crate::flowcontrol`]'s module docs). Nothing was taken from any bucket.
pub fn unjudgeable_response(
    engine: &Engine,
    req: pb::CheckRequest,
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
            details: Some(details(spec, &req.labels, None, String::new())),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;
    use tollgate_policy::{LocalLimiter, OwnedFlow};

    /// A policy of each kind, keyed and shared buckets, workloads: shared with
    /// [`crate::check_reply`]'s tests.
    pub(crate) const POLICIES: &str = r#"
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 2
      parameters: { interval: 3600s, limit_by_label_key: user }
      selectors: [ { control_point: api } ]
  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 1
      parameters: { max_inflight_duration: 60s }
      selectors: [ { control_point: api } ]
  - policy_name: llm
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: { interval: 3600s, limit_by_label_key: api_key }
      scheduler:
        workloads:
          - name: premium
            label_matcher: { match_labels: { tier: premium } }
            parameters: { priority: 200 }
        default_workload_parameters: { priority: 50 }
      selectors: [ { control_point: llm } ]
  - policy_name: db
    concurrency_scheduler:
      max_concurrency: 1
      concurrency_limiter: { limit_by_label_key: tenant, max_inflight_duration: 60s }
      scheduler: { denied_response_status_code: TooManyRequests }
      selectors: [ { control_point: db } ]
"#;

    fn limiter() -> (Arc<Engine>, LocalLimiter) {
        let policies = tollgate_policy::parse_policies(POLICIES, "test.yaml").unwrap();
        let engine = Arc::new(Engine::new(&policies));
        (engine.clone(), LocalLimiter::new(engine))
    }

    fn request(cp: &str, labels: &[(&str, &str)]) -> pb::CheckRequest {
        pb::CheckRequest {
            control_point: cp.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn decide(l: &mut LocalLimiter, req: &pb::CheckRequest) -> pb::CheckResponse {
        let mut labels: Vec<(String, String)> = req.labels.clone().into_iter().collect();
        labels.sort();
        let flow = OwnedFlow {
            control_point: req.control_point.clone(),
            labels,
            tokens: None,
        };
        let decision = l.check(&flow, 0).unwrap();
        check_response(l.engine(), req.clone(), &decision)
    }

    #[test]
    fn rate_and_concurrency_limiters_report_their_kind() {
        let (engine, mut l) = limiter();
        let req = request("api", &[("user", "alice")]);
        let resp = decide(&mut l, &req);
        assert_eq!(resp.decision_type, 0);
        let [rate, pool] = &resp.limiter_decisions[..] else {
            panic!("{resp:?}")
        };
        let Some(Details::RateLimiterInfo(info)) = &rate.details else {
            panic!("{rate:?}")
        };
        assert_eq!(info.label, "user:alice");
        assert_eq!(info.tokens_info.unwrap().consumed, 1.0);
        let Some(Details::ConcurrencyLimiterInfo(info)) = &pool.details else {
            panic!("{pool:?}")
        };
        assert_eq!(
            info.label, "default",
            "no limit_by_label_key: one shared bucket"
        );
        let id = tollgate_policy::FlowId::parse(&info.request_id).expect("a flow id");
        assert_eq!(
            resp.telemetry_flow_labels.get(FLOW_IDS_LABEL),
            Some(&info.request_id),
            "no expect_end: the span's labels name the flow"
        );
        assert_eq!(info.tokens_info.unwrap().consumed, 1.0);

        // The pool is full: RATE_LIMITED with 429, the rate limiter's take handed back (no
        // request id, nothing consumed).
        let resp = decide(&mut l, &req);
        assert_eq!(resp.decision_type, 1);
        assert_eq!(
            resp.reject_reason,
            pb::check_response::RejectReason::RateLimited as i32
        );
        assert_eq!(resp.denied_response_status_code, 429);
        let [rate, pool] = &resp.limiter_decisions[..] else {
            panic!("{resp:?}")
        };
        assert!(!rate.dropped && pool.dropped);
        assert_eq!(pool.denied_response_status_code, 429);
        let Some(Details::ConcurrencyLimiterInfo(info)) = &pool.details else {
            panic!("{pool:?}")
        };
        assert_eq!(info.request_id, "");
        let Some(Details::RateLimiterInfo(info)) = &rate.details else {
            panic!("{rate:?}")
        };
        assert_eq!(info.tokens_info.unwrap().consumed, 0.0, "handed back");

        // Ending the flow frees the pool.
        assert!(l.state_mut().end_flow(&engine, id, 0));
        // A request that expects FlowEnd (aperture-py) gets no flow-ids label.
        let mut expecting_end = req.clone();
        expecting_end.expect_end = true;
        let resp = decide(&mut l, &expecting_end);
        assert_eq!(resp.decision_type, 0);
        assert!(!resp.telemetry_flow_labels.contains_key(FLOW_IDS_LABEL));
        // The rate limiter is now empty (2 taken): its rejection is RATE_LIMITED too.
        let resp = decide(&mut l, &req);
        assert_eq!(resp.denied_response_status_code, 429);
        assert!(resp.limiter_decisions[0].dropped);
    }

    #[test]
    fn quota_scheduler_reports_workload_priority_and_no_tokens() {
        let (_, mut l) = limiter();
        let premium = request("llm", &[("api_key", "k1"), ("tier", "premium")]);
        let resp = decide(&mut l, &premium);
        assert_eq!(resp.decision_type, 0);
        let Some(Details::QuotaSchedulerInfo(info)) = &resp.limiter_decisions[0].details else {
            panic!("{resp:?}")
        };
        assert_eq!(info.label, "api_key:k1");
        assert_eq!(info.workload_index, "premium");
        assert_eq!(info.priority, 200.0);
        assert_eq!(info.tokens_info.unwrap().consumed, 1.0);

        // The bucket is empty and a LocalLimiter cannot wait: NO_TOKENS, 503 by default.
        let other = request("llm", &[("api_key", "k1"), ("priority", "7")]);
        let resp = decide(&mut l, &other);
        assert_eq!(resp.decision_type, 1);
        assert_eq!(
            resp.reject_reason,
            pb::check_response::RejectReason::NoTokens as i32
        );
        assert_eq!(resp.denied_response_status_code, 503);
        let d = &resp.limiter_decisions[0];
        assert!(d.dropped);
        let Some(Details::QuotaSchedulerInfo(info)) = &d.details else {
            panic!("{d:?}")
        };
        assert_eq!(info.workload_index, "default");
        assert_eq!(info.priority, 7.0, "the priority label wins");
        assert!(resp.wait_time.is_some_and(|w| w.seconds > 0), "{resp:?}");

        // Without the limit-by label: KEY_NOT_FOUND, empty label, accepted.
        let resp = decide(&mut l, &request("llm", &[]));
        assert_eq!(resp.decision_type, 0);
        let d = &resp.limiter_decisions[0];
        assert_eq!(
            d.reason,
            pb::limiter_decision::LimiterReason::KeyNotFound as i32
        );
        let Some(Details::QuotaSchedulerInfo(info)) = &d.details else {
            panic!("{d:?}")
        };
        assert_eq!(info.label, "");
    }

    #[test]
    fn concurrency_scheduler_reports_request_id_and_its_status() {
        let (_, mut l) = limiter();
        let req = request("db", &[("tenant", "t1"), ("workload", "reports")]);
        let resp = decide(&mut l, &req);
        let Some(Details::ConcurrencySchedulerInfo(info)) = &resp.limiter_decisions[0].details
        else {
            panic!("{resp:?}")
        };
        assert_eq!(info.label, "tenant:t1");
        assert_eq!(
            info.workload_index, "reports",
            "the workload label names it"
        );
        assert!(tollgate_policy::FlowId::parse(&info.request_id).is_some());
        let resp = decide(&mut l, &req);
        assert_eq!(
            resp.reject_reason,
            pb::check_response::RejectReason::NoTokens as i32
        );
        assert_eq!(resp.denied_response_status_code, 429, "configured status");
    }
}
