//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on the same port, so an Envoy
//! `envoy.filters.http.ratelimit` filter can use Tollgate as its rate limit service.
//!
//! Mapping (Envoy semantics: one status per descriptor, the request is over limit if any is):
//! - `domain` is the control point;
//! - each descriptor is evaluated as **its own flow** whose labels are the descriptor's entries
//!   (a repeated key keeps its last value); descriptors are decided one after the other and
//!   tokens taken for an OK descriptor are kept even when a later one is OVER_LIMIT (as Envoy's
//!   reference ratelimit service does);
//! - `hits_addend` is the tokens taken per descriptor (0 means 1);
//! - `overall_code` is OVER_LIMIT if any descriptor is, else OK.
//!
//! Every kind of component applies. A quota or concurrency scheduler may hold a descriptor in
//! its queue until the call's `grpc-timeout` (Envoy's filter `timeout`, default 20 ms) minus its
//! decision margin, each descriptor getting what is left of the deadline. Envoy's protocol has
//! no flow end: tokens a concurrency component took for a descriptor come back only after its
//! `max_inflight_duration`, so concurrency components belong behind the SDKs, not this filter.
//!
//! A descriptor outside the label bounds of [`crate::request_bounds`] (more than 64 entries, a
//! key or value over 4,096 bytes, or a domain over 4,096 bytes) is answered as one Tollgate
//! cannot judge (next paragraph), without a backend decision.
//!
//! A descriptor Tollgate cannot judge (the backend reports a `FlowError`) is OVER_LIMIT, with
//! no `current_limit`, and the reason goes in the response metadata header
//! `tollgate-reject-reason` (`descriptor N: ...`, one entry per such descriptor). It is not an
//! RPC error because Envoy's rate limit filter lets a request through on any RPC error unless
//! `failure_mode_deny` is set. (With the server's backend this does not arise today: the cost is
//! `hits_addend`, always a valid number, not a label; the answer is defined all the same.) Errors
//! that are the server's own (backend unavailable, deadline) stay RPC errors, and Envoy's
//! `failure_mode_deny` decides.
//!
//! Per descriptor status, describing the *binding* limiter (the rejecting one, else the matching
//! limiter with the fewest tokens left; none matched: OK with no limit):
//! - `current_limit`: `name` = policy name; `requests_per_unit`/`unit` from the refill rate
//!   `fill_amount / interval`, see [`current_limit`] for the unit choice;
//! - `limit_remaining`: tokens left after this request, floored;
//! - `duration_until_reset`: OVER_LIMIT: the wait until enough tokens exist for this request;
//!   OK: the time until the bucket refills to capacity (absent if it never refills).

use std::sync::Arc;

use tollgate_policy::{BucketParams, Labels, LimiterOutcome, OutcomeKind, OwnedFlow};
use tonic::{Request, Response, Status};

use crate::backend::{DecisionBackend, GrpcService};
use crate::deadline;
use crate::direct_unary::{DirectMethod, HandlerFuture};
use crate::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use crate::proto::envoy::service::ratelimit::v3::{
    rate_limit_response::{rate_limit::Unit, Code, DescriptorStatus, RateLimit},
    rate_limit_service_server::RateLimitService,
    RateLimitRequest, RateLimitResponse,
};
use crate::reject_header::{reject_reason_value, REJECT_REASON_HEADER};
use crate::reply::duration_ns;
use crate::request_bounds;

/// Most descriptors accepted in one request: each costs one backend decision.
pub const MAX_DESCRIPTORS: usize = 64;

const NS_PER_SEC: f64 = 1e9;

/// Envoy's units, shortest first, with their length in seconds.
const UNITS: [(Unit, f64); 6] = [
    (Unit::Second, 1.0),
    (Unit::Minute, 60.0),
    (Unit::Hour, 3600.0),
    (Unit::Day, 86_400.0),
    (Unit::Month, 30.0 * 86_400.0),
    (Unit::Year, 365.0 * 86_400.0),
];

/// Envoy's view of a bucket: `fill_amount` tokens per `interval`, expressed in the largest unit
/// not longer than the interval (the unit closest to how the policy was written: 5 per 3600 s
/// is 5/HOUR, 10 per 1 s is 10/SECOND, 3 per 90 s is 2/MINUTE), rounded to the nearest whole
/// number; if that rounds to 0 the next longer unit is tried (1 per 5 h is 5/DAY). A bucket that
/// never refills (`fill_amount` 0) reports its capacity with unit UNKNOWN.
pub fn current_limit(name: &str, params: &BucketParams) -> RateLimit {
    let clamp = |x: f64| {
        if x >= f64::from(u32::MAX) {
            u32::MAX
        } else {
            x.max(0.0) as u32
        }
    };
    let interval_s = params.interval_ns as f64 / NS_PER_SEC;
    if params.fill_amount <= 0.0 || interval_s <= 0.0 {
        return RateLimit {
            name: name.to_owned(),
            requests_per_unit: clamp(params.capacity.floor()),
            unit: Unit::Unknown as i32,
        };
    }
    let per_second = params.fill_amount / interval_s;
    let first = UNITS
        .iter()
        .rposition(|(_, secs)| *secs <= interval_s)
        .unwrap_or(0);
    for (unit, secs) in &UNITS[first..] {
        let n = (per_second * secs).round();
        if n >= 1.0 {
            return RateLimit {
                name: name.to_owned(),
                requests_per_unit: clamp(n),
                unit: *unit as i32,
            };
        }
    }
    RateLimit {
        name: name.to_owned(),
        requests_per_unit: 1,
        unit: Unit::Year as i32,
    }
}

/// Nanoseconds until a bucket holding `current` tokens is full again, or `None` if it never
/// refills.
fn until_full_ns(params: &BucketParams, current: f64) -> Option<u64> {
    if params.fill_amount <= 0.0 {
        return None;
    }
    let missing = (params.capacity - current).max(0.0);
    let ns = (missing / params.fill_amount * params.interval_ns as f64).ceil();
    Some(if ns >= u64::MAX as f64 {
        u64::MAX
    } else {
        ns as u64
    })
}

/// A descriptor's entries as a flow's labels, their strings moved (not copied): sorted by
/// key, a repeated key with its last value.
pub(crate) fn descriptor_labels(entries: Vec<Entry>) -> Vec<(String, String)> {
    // Last entry first, then a stable sort: each key's first entry is its last value, the one
    // `dedup_by` keeps.
    let mut labels: Vec<(String, String)> = entries
        .into_iter()
        .rev()
        .map(|e| (e.key, e.value))
        .collect();
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels.dedup_by(|a, b| a.0 == b.0);
    labels
}

/// The value a descriptor's flow `labels` ([`descriptor_labels`]) give `key`, or "" when
/// there is no key or no such label.
fn label_value<'a>(labels: &'a [(String, String)], key: Option<&str>) -> &'a str {
    key.and_then(|k| Labels::get(labels, k)).unwrap_or("")
}

/// The Envoy RLS implementation.
#[derive(Clone)]
pub struct Rls {
    backend: Arc<dyn DecisionBackend>,
}

impl Rls {
    /// An RLS deciding through `backend`.
    pub fn new(backend: Arc<dyn DecisionBackend>) -> Self {
        Self { backend }
    }

    /// The status of one descriptor (its flow's `labels`) given its decision.
    fn status(
        &self,
        labels: &[(String, String)],
        accepted: bool,
        outcomes: &[LimiterOutcome],
    ) -> DescriptorStatus {
        let engine = self.backend.engine();
        let code = if accepted { Code::Ok } else { Code::OverLimit };
        let binding = if accepted {
            outcomes
                .iter()
                .filter(|o| matches!(o.kind, OutcomeKind::Accepted))
                .min_by(|a, b| a.remaining.total_cmp(&b.remaining))
        } else {
            outcomes
                .iter()
                .find(|o| matches!(o.kind, OutcomeKind::Rejected))
        };
        let Some(o) = binding else {
            return DescriptorStatus {
                code: code as i32,
                ..Default::default()
            };
        };
        let Some(spec) = engine.describe(o.limiter) else {
            return DescriptorStatus {
                code: code as i32,
                ..Default::default()
            };
        };
        let params = spec.params_for(label_value(labels, spec.limit_by_label_key.as_deref()));
        let remaining = o.remaining.max(0.0).floor();
        DescriptorStatus {
            code: code as i32,
            current_limit: Some(current_limit(&spec.policy_name, &params)),
            limit_remaining: if remaining >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                remaining as u32
            },
            duration_until_reset: if accepted {
                until_full_ns(&params, o.remaining).map(duration_ns)
            } else {
                Some(duration_ns(o.wait_ns))
            },
        }
    }
}

/// `ShouldRateLimit` is the Envoy filter's one call: answered without tonic's codec
/// ([`crate::direct_unary`]), by the handler below.
impl DirectMethod for Rls {
    const PATH: &'static str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
    type Request = RateLimitRequest;
    type Reply = RateLimitResponse;

    fn call(&self, request: Request<RateLimitRequest>) -> HandlerFuture<'_, RateLimitResponse> {
        self.should_rate_limit(request)
    }
}

#[tonic::async_trait]
impl RateLimitService for Rls {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let timeout = deadline::client_timeout(request.metadata());
        let call_deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut req = request.into_inner();
        if req.domain.is_empty() {
            return Err(Status::invalid_argument(
                "domain (the control point) is empty",
            ));
        }
        if req.descriptors.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit descriptor list must not be empty",
            ));
        }
        if req.descriptors.len() > MAX_DESCRIPTORS {
            return Err(Status::invalid_argument(format!(
                "{} descriptors in one request; at most {MAX_DESCRIPTORS} are accepted",
                req.descriptors.len()
            )));
        }
        // A u32 is always a finite, non-negative cost.
        let tokens = tollgate_policy::Tokens::new(f64::from(req.hits_addend.max(1)))
            .unwrap_or(tollgate_policy::Tokens::ONE);
        // Each descriptor's flow borrows the domain's string and hands it back.
        let mut domain = std::mem::take(&mut req.domain);
        let descriptors = std::mem::take(&mut req.descriptors);
        let (statuses, unjudgeable) = deadline::within(timeout, async {
            let mut statuses = Vec::with_capacity(descriptors.len());
            let mut unjudgeable = Vec::new();
            for (i, d) in descriptors.into_iter().enumerate() {
                let labels = descriptor_labels(d.entries);
                let pairs = labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                if let Err(error) = request_bounds::check_flow(&domain, pairs) {
                    statuses.push(DescriptorStatus {
                        code: Code::OverLimit as i32,
                        ..Default::default()
                    });
                    unjudgeable.push(format!("descriptor {i}: {error}"));
                    continue;
                }
                let flow = OwnedFlow {
                    control_point: domain,
                    labels,
                    tokens: Some(tokens),
                };
                // Each descriptor may wait (a scheduler) for what is left of the deadline.
                let left =
                    call_deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
                let checked = self
                    .backend
                    .check(GrpcService::EnvoyRateLimit, flow, left)
                    .await?;
                domain = checked.flow.control_point;
                match checked.decision {
                    Ok(decision) => statuses.push(self.status(
                        &checked.flow.labels,
                        decision.accepted,
                        &decision.limiters,
                    )),
                    Err(error) => {
                        statuses.push(DescriptorStatus {
                            code: Code::OverLimit as i32,
                            ..Default::default()
                        });
                        unjudgeable.push(format!("descriptor {i}: {error}"));
                    }
                }
            }
            Ok::<_, Status>((statuses, unjudgeable))
        })
        .await?;
        let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
        let overall_code = if over { Code::OverLimit } else { Code::Ok } as i32;
        let mut response = Response::new(RateLimitResponse {
            overall_code,
            statuses,
        });
        if !unjudgeable.is_empty() {
            response.metadata_mut().insert(
                REJECT_REASON_HEADER,
                reject_reason_value(&unjudgeable.join("; ")),
            );
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(capacity: f64, fill_amount: f64, interval_s: f64) -> BucketParams {
        BucketParams {
            capacity,
            fill_amount,
            interval_ns: (interval_s * 1e9) as u64,
            continuous_fill: true,
            delay_initial_fill: false,
        }
    }

    fn lim(p: BucketParams) -> (u32, Unit) {
        let r = current_limit("p", &p);
        (r.requests_per_unit, Unit::try_from(r.unit).unwrap())
    }

    #[test]
    fn closest_unit() {
        assert_eq!(lim(params(5.0, 5.0, 3600.0)), (5, Unit::Hour));
        assert_eq!(lim(params(10.0, 10.0, 1.0)), (10, Unit::Second));
        assert_eq!(lim(params(10.0, 3.0, 90.0)), (2, Unit::Minute));
        assert_eq!(lim(params(10.0, 1.0, 5.0 * 3600.0)), (5, Unit::Day));
        assert_eq!(lim(params(10.0, 100.0, 0.1)), (1000, Unit::Second));
        assert_eq!(lim(params(7.0, 0.0, 60.0)), (7, Unit::Unknown));
    }

    #[test]
    fn a_descriptor_gives_a_repeated_key_its_last_value() {
        let entry = |key: &str, value: &str| Entry {
            key: key.into(),
            value: value.into(),
        };
        let labels = descriptor_labels(vec![
            entry("user", "a"),
            entry("path", "/"),
            entry("user", "b"),
        ]);
        assert_eq!(label_value(&labels, Some("user")), "b");
        assert_eq!(label_value(&labels, Some("path")), "/");
        assert_eq!(label_value(&labels, Some("tenant")), "");
        assert_eq!(label_value(&labels, None), "");
    }

    #[test]
    fn a_descriptor_becomes_sorted_labels_with_each_key_once() {
        let entry = |key: &str, value: &str| Entry {
            key: key.into(),
            value: value.into(),
        };
        let entries = vec![
            entry("user", "a"),
            entry("path", "/"),
            entry("user", "b"),
            entry("method", "GET"),
            entry("user", "c"),
        ];
        let owned = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            descriptor_labels(entries),
            [
                owned("method", "GET"),
                owned("path", "/"),
                owned("user", "c")
            ]
        );
        assert_eq!(descriptor_labels(Vec::new()), []);
    }

    #[test]
    fn time_to_full() {
        let p = params(5.0, 5.0, 3600.0);
        assert_eq!(until_full_ns(&p, 4.0), Some(720 * 1_000_000_000));
        assert_eq!(until_full_ns(&p, 5.0), Some(0));
        assert_eq!(until_full_ns(&params(5.0, 0.0, 1.0), 1.0), None);
    }
}
