//! The compiled policy set: which limiters a flow meets, with which bucket keys and costs,
//! and how per-limiter outcomes combine into one decision.
//!
//! The engine is immutable once built and shared by every shard. Planning (selectors,
//! keys, token costs) is separate from taking (bucket state, owned by a shard's
//! [`BucketStore`](crate::store::BucketStore)), because the buckets of one flow may live on
//! different shards: the server plans where the request arrives and takes where each
//! bucket lives.

use crate::bucket::BucketParams;
use crate::config::{PolicyConfig, StatusCode};
use crate::matcher::CompiledSelector;
use crate::status::TOO_MANY_REQUESTS;
use crate::Labels;
use hashbrown::HashMap;
use smallvec::SmallVec;

/// Index of a limiter in [`Engine::limiters`]; stable for the engine's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimiterId(pub u32);

/// Everything known about one rate limiter once compiled.
#[derive(Clone, Debug)]
pub struct LimiterSpec {
    /// Its index.
    pub id: LimiterId,
    /// The policy's name.
    pub policy_name: String,
    /// A stable hash of the policy's configuration (hex), as Aperture reports it.
    pub policy_hash: String,
    /// Aperture's component id for the limiter within its policy.
    pub component_id: String,
    /// The label keying buckets; None = one shared bucket.
    pub limit_by_label_key: Option<String>,
    /// The label carrying a request's token cost; None = 1 token.
    pub tokens_label_key: Option<String>,
    /// HTTP status a denied flow should get.
    pub denied_status_code: u16,
    /// Bucket shape for keys without an override.
    pub params: BucketParams,
    /// label value -> scale factor.
    overrides: Vec<(String, f64)>,
    /// Idle buckets older than this are evicted.
    pub max_idle_ns: u64,
    /// `lazy_sync` cadence (interval / num_sync) when enabled.
    pub lazy_sync_interval_ns: Option<u64>,
    /// Any of these must match.
    selectors: Vec<CompiledSelector>,
}

impl LimiterSpec {
    /// Bucket shape for one key, overrides applied.
    pub fn params_for(&self, key: &str) -> BucketParams {
        match self.overrides.iter().find(|(v, _)| v == key) {
            Some(&(_, factor)) => self.params.scaled(factor),
            None => self.params,
        }
    }
}

/// A flow that failed before any bucket was touched.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// The tokens label is not a finite number.
    #[error("label {key:?} (the tokens label of policy {policy:?}) must be a finite number, got {value:?}")]
    BadTokensLabel {
        /// The tokens label key.
        key: String,
        /// What the flow carried.
        value: String,
        /// The policy whose tokens label it is.
        policy: String,
    },
    /// The explicit token count is NaN or infinite.
    #[error("tokens must be a finite number, got {0}")]
    BadTokens(f64),
}

/// One bucket a flow must take from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedTake<'a> {
    /// Which limiter.
    pub limiter: LimiterId,
    /// The bucket key (the limit label's value, "" for a shared bucket); None when the
    /// flow lacks the limit label (accepted with reason key-not-found, nothing taken).
    pub key: Option<&'a str>,
    /// Token cost for this limiter.
    pub tokens: f64,
}

/// The buckets of one flow, in limiter order. Inline for the common 1-4 limiters.
pub type Plan<'a> = SmallVec<[PlannedTake<'a>; 4]>;

/// What one limiter said about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Tokens taken.
    Accepted,
    /// Not enough tokens: this limiter rejects the flow.
    Rejected,
    /// The flow lacks the limit label: accepted, nothing taken.
    KeyNotFound,
    /// Tokens were taken, then handed back because another limiter rejected the flow.
    Returned,
}

/// One limiter's part of a decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimiterOutcome {
    /// Which limiter.
    pub limiter: LimiterId,
    /// What it said.
    pub kind: OutcomeKind,
    /// Tokens asked for.
    pub tokens: f64,
    /// Tokens left in the bucket after this decision.
    pub remaining: f64,
    /// Tokens in the bucket before the take.
    pub current: f64,
    /// When rejected: ns until enough tokens exist ([`crate::WAIT_FOREVER`] = never).
    pub wait_ns: u64,
}

/// Per-limiter outcomes, inline for the common case.
pub type Outcomes = SmallVec<[LimiterOutcome; 2]>;

/// The answer for a flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// false when any limiter rejected.
    pub accepted: bool,
    /// The largest wait among rejecting limiters; 0 when accepted.
    pub wait_ns: u64,
    /// One entry per matching limiter, in limiter order.
    pub limiters: Outcomes,
}

impl Decision {
    /// Combines outcomes. Callers have already returned the tokens of accepted limiters
    /// when any rejected (see [`Decision::needs_return`]).
    pub fn from_outcomes(limiters: Outcomes) -> Decision {
        let rejected = limiters.iter().filter(|o| o.kind == OutcomeKind::Rejected);
        let wait_ns = rejected.clone().map(|o| o.wait_ns).max().unwrap_or(0);
        let accepted = rejected.count() == 0;
        Decision {
            accepted,
            wait_ns,
            limiters,
        }
    }

    /// Whether any outcome rejects: then every `Accepted` outcome must be handed back.
    pub fn needs_return(outcomes: &[LimiterOutcome]) -> bool {
        outcomes.iter().any(|o| o.kind == OutcomeKind::Rejected)
    }

    /// The HTTP status to deny with: the first rejecting limiter's.
    pub fn denied_status_code(&self, engine: &Engine) -> Option<u16> {
        self.limiters
            .iter()
            .find(|o| o.kind == OutcomeKind::Rejected)
            .map(|o| engine.limiter(o.limiter).denied_status_code)
    }
}

/// A flow with owned strings, for callers that cross threads (the gRPC bridge).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedFlow {
    /// The control point.
    pub control_point: String,
    /// Flow labels.
    pub labels: Vec<(String, String)>,
    /// Explicit cost for every limiter; None = each limiter's tokens label, default 1.
    pub tokens: Option<f64>,
}

/// The compiled policy set.
#[derive(Debug, Default)]
pub struct Engine {
    limiters: Vec<LimiterSpec>,
    /// control point -> limiters with a selector on it (each listed once).
    by_control_point: HashMap<String, SmallVec<[LimiterId; 4]>>,
    /// Distinct limit label keys, in policy order: what a shard-aware client hashes.
    routing_label_keys: Vec<String>,
}

impl Engine {
    /// Compiles validated policies (see [`crate::config::parse_str`]).
    pub fn new(policies: &[PolicyConfig]) -> Engine {
        let mut engine = Engine::default();
        for (i, p) in policies.iter().enumerate() {
            let id = LimiterId(i as u32);
            let rl = &p.rate_limiter;
            let params = BucketParams {
                capacity: rl.bucket_capacity,
                fill_amount: rl.fill_amount,
                interval_ns: rl.parameters.interval.as_nanos_u64().max(1),
                continuous_fill: rl.parameters.continuous_fill,
                delay_initial_fill: rl.parameters.delay_initial_fill,
            };
            let lazy = &rl.parameters.lazy_sync;
            let spec = LimiterSpec {
                id,
                policy_name: p.policy_name.clone(),
                policy_hash: policy_hash(p),
                component_id: "root.0".to_string(),
                limit_by_label_key: rl.parameters.limit_by_label_key.clone(),
                tokens_label_key: rl.request_parameters.tokens_label_key.clone(),
                denied_status_code: rl
                    .request_parameters
                    .denied_response_status_code
                    .map_or(TOO_MANY_REQUESTS, |StatusCode(c)| c),
                params,
                overrides: rl
                    .overrides
                    .iter()
                    .map(|o| (o.label_value.clone(), o.limit_scale_factor))
                    .collect(),
                max_idle_ns: rl.parameters.max_idle_time.as_nanos_u64(),
                lazy_sync_interval_ns: lazy
                    .enabled
                    .then(|| (params.interval_ns / u64::from(lazy.num_sync.max(1))).max(1)),
                selectors: rl.selectors.iter().map(CompiledSelector::new).collect(),
            };
            for sel in &spec.selectors {
                let ids = engine
                    .by_control_point
                    .entry(sel.control_point.clone())
                    .or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            if let Some(key) = &spec.limit_by_label_key {
                if !engine.routing_label_keys.contains(key) {
                    engine.routing_label_keys.push(key.clone());
                }
            }
            engine.limiters.push(spec);
        }
        engine
    }

    /// Every limiter, indexed by [`LimiterId`].
    pub fn limiters(&self) -> &[LimiterSpec] {
        &self.limiters
    }

    /// One limiter. Panics on an id from another engine (a programming error, not input).
    pub fn limiter(&self, id: LimiterId) -> &LimiterSpec {
        &self.limiters[id.0 as usize]
    }

    /// One limiter, if the id is in range (ids that arrive over the network).
    pub fn get_limiter(&self, id: LimiterId) -> Option<&LimiterSpec> {
        self.limiters.get(id.0 as usize)
    }

    /// The distinct limit label keys, in policy order. A flow is routed by the value of
    /// the first of these it carries (see the protocol crate's `routing`).
    pub fn routing_label_keys(&self) -> &[String] {
        &self.routing_label_keys
    }

    /// The buckets a flow must take from: every limiter with a selector matching the
    /// control point and labels, in limiter order.
    pub fn plan<'a, L: Labels + ?Sized>(
        &self,
        control_point: &str,
        labels: &'a L,
        tokens: Option<f64>,
    ) -> Result<Plan<'a>, FlowError> {
        let mut plan = Plan::new();
        if let Some(t) = tokens {
            if !t.is_finite() {
                return Err(FlowError::BadTokens(t));
            }
        }
        let Some(ids) = self.by_control_point.get(control_point) else {
            return Ok(plan);
        };
        for &id in ids {
            let spec = self.limiter(id);
            let selected = spec
                .selectors
                .iter()
                .any(|s| s.control_point == control_point && s.matches_labels(labels));
            if !selected {
                continue;
            }
            let key = match &spec.limit_by_label_key {
                Some(k) => labels.get(k),
                None => Some(""),
            };
            let tokens = match tokens {
                Some(t) => t,
                None => token_label(spec, labels)?,
            };
            plan.push(PlannedTake {
                limiter: id,
                key,
                tokens,
            });
        }
        Ok(plan)
    }
}

fn token_label<L: Labels + ?Sized>(spec: &LimiterSpec, labels: &L) -> Result<f64, FlowError> {
    let Some(key) = &spec.tokens_label_key else {
        return Ok(1.0);
    };
    let Some(value) = labels.get(key) else {
        return Ok(1.0);
    };
    match value.trim().parse::<f64>() {
        Ok(t) if t.is_finite() => Ok(t),
        _ => Err(FlowError::BadTokensLabel {
            key: key.clone(),
            value: value.to_string(),
            policy: spec.policy_name.clone(),
        }),
    }
}

/// FNV-1a over the policy's canonical YAML: stable across runs and nodes.
fn policy_hash(p: &PolicyConfig) -> String {
    let text = serde_yaml_ng::to_string(p).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
