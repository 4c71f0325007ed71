//! The JSON documents of the admin API (docs/admin.md), shared by the server's handlers
//! and the CLI's client so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use tollgate_policy::{BucketParams, ComponentKind, Engine, LimiterSpec};

/// `GET /api/v1/policies`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoliciesReply {
    /// Digest of the whole policy set (equal on nodes that run the same policies).
    pub digest: String,
    /// In the config's order.
    pub policies: Vec<PolicyInfo>,
}

/// One policy's identity and effective parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `policy_name`: with `kind`, the identity replication and reloads go by.
    pub name: String,
    /// `rate_limiter`, `quota_scheduler`, `concurrency_limiter` or `concurrency_scheduler`.
    pub kind: String,
    /// Digest of the definition (Aperture's `policy_hash`).
    pub digest: String,
    /// Place in the `policies:` list (the binary protocol's `limiter_index`).
    pub position: u16,
    /// Aperture's component id.
    pub component_id: String,
    /// The label keying buckets; null = one shared bucket (key "").
    pub limit_by_label_key: Option<String>,
    /// The label carrying a request's cost; null = 1 token.
    pub tokens_label_key: Option<String>,
    /// HTTP status of a denied flow.
    pub denied_status_code: u16,
    /// The bucket of a key without an override.
    pub bucket: BucketInfo,
    /// Idle buckets older than this are evicted.
    pub max_idle_seconds: f64,
    /// Cluster sync cadence (interval / num_sync) when lazy sync is on.
    pub lazy_sync_interval_seconds: Option<f64>,
}

/// A bucket's shape.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketInfo {
    /// Tokens it holds at most (and starts with).
    pub capacity: f64,
    /// Tokens added per interval.
    pub fill_amount: f64,
    /// The fill interval.
    pub interval_seconds: f64,
    /// Fill continuously (true) or in whole intervals.
    pub continuous_fill: bool,
    /// A new bucket waits a full refill time before it starts filling.
    pub delay_initial_fill: bool,
}

impl BucketInfo {
    /// From compiled parameters.
    pub fn of(p: &BucketParams) -> BucketInfo {
        BucketInfo {
            capacity: p.capacity,
            fill_amount: p.fill_amount,
            interval_seconds: seconds(p.interval_ns),
            continuous_fill: p.continuous_fill,
            delay_initial_fill: p.delay_initial_fill,
        }
    }
}

/// `GET /api/v1/bucket?policy=P&key=K`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BucketReply {
    /// The policy asked for.
    pub policy: String,
    /// The bucket key asked for.
    pub key: String,
    /// The shard that owns the bucket.
    pub owner_shard: usize,
    /// Whether a live bucket exists; if not, a take would create it full, and the fields
    /// below that describe a live bucket are null.
    pub exists: bool,
    /// Tokens available now (the capacity when the bucket does not exist).
    pub tokens: f64,
    /// This key's bucket (overrides applied).
    pub bucket: BucketInfo,
    /// Seconds until the next fill is credited (0 while a continuous fill runs; null when
    /// full or never filling).
    pub next_fill_in_seconds: Option<f64>,
    /// Seconds until the bucket is full again (0: full; null: never).
    pub full_in_seconds: Option<f64>,
    /// Whole seconds since the bucket was last taken from.
    pub last_used_seconds_ago: Option<u64>,
}

/// `GET /api/v1/top?policy=P&n=N`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopReply {
    /// The policy asked for.
    pub policy: String,
    /// How far back the counts reach (between one and two minutes once traffic has run
    /// that long: the current one-minute window and the one before).
    pub window_seconds: f64,
    /// Largest consumption first, at most N.
    pub keys: Vec<TopKey>,
    /// Shards that answered (all of them unless one was too busy to answer in time).
    pub shards_answered: usize,
}

/// One key's consumption.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopKey {
    /// The bucket key (the limit label's value).
    pub key: String,
    /// Tokens taken (accepted takes) in the window: at least the true figure.
    pub tokens: f64,
    /// How much of `tokens` may belong to other keys (0 = exact).
    pub error: f64,
}

/// `POST /api/v1/limit`: a policy's new bucket limits (a field left out stays as it is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetLimitRequest {
    /// The policy (policy_name).
    pub policy: String,
    /// The new `bucket_capacity`: finite, > 0 ([`check_capacity`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "capacity_not_null"
    )]
    pub bucket_capacity: Option<f64>,
    /// The new `fill_amount`: finite, >= 0 ([`check_fill_amount`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "fill_amount_not_null"
    )]
    pub fill_amount: Option<f64>,
}

/// Whether `capacity` can be a new `bucket_capacity`: a finite number > 0. The CLI and the
/// server hold a limit change to the same rules.
pub fn check_capacity(capacity: f64) -> Result<f64, String> {
    if capacity.is_finite() && capacity > 0.0 {
        Ok(capacity)
    } else {
        Err(format!(
            "`bucket_capacity` must be a finite number > 0, not {capacity}"
        ))
    }
}

/// Whether `fill` can be a new `fill_amount`: a finite number >= 0.
pub fn check_fill_amount(fill: f64) -> Result<f64, String> {
    if fill.is_finite() && fill >= 0.0 {
        Ok(fill)
    } else {
        Err(format!(
            "`fill_amount` must be a finite number >= 0, not {fill}"
        ))
    }
}

/// A present field must hold a number: `null` is refused, not read as "left out" (JSON
/// writers turn a NaN or an infinity into `null`, which would change nothing silently).
fn number_not_null<'de, D: serde::Deserializer<'de>>(
    field: &str,
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    match Option::<f64>::deserialize(deserializer)? {
        Some(value) => Ok(Some(value)),
        None => Err(serde::de::Error::custom(format!(
            "`{field}` is null: give a number, or leave the field out to keep its value"
        ))),
    }
}

fn capacity_not_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number_not_null("bucket_capacity", d)
}

fn fill_amount_not_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    number_not_null("fill_amount", d)
}

/// Any error: `{"error": "..."}`, with a 4xx/5xx status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, naming the parameter at fault.
    pub error: String,
}

/// The kind's name in the API.
pub fn kind_name(kind: ComponentKind) -> &'static str {
    match kind {
        ComponentKind::RateLimiter => "rate_limiter",
        ComponentKind::QuotaScheduler => "quota_scheduler",
        ComponentKind::ConcurrencyLimiter => "concurrency_limiter",
        ComponentKind::ConcurrencyScheduler => "concurrency_scheduler",
    }
}

/// Every policy of `engine`.
pub fn policies(engine: &Engine) -> PoliciesReply {
    PoliciesReply {
        digest: engine.digest().to_string(),
        policies: engine.limiters().iter().map(policy).collect(),
    }
}

/// One policy's entry.
pub fn policy(spec: &LimiterSpec) -> PolicyInfo {
    PolicyInfo {
        name: spec.policy_name.clone(),
        kind: kind_name(spec.kind).to_string(),
        digest: spec.policy_hash.clone(),
        position: spec.position,
        component_id: spec.component_id.clone(),
        limit_by_label_key: spec.limit_by_label_key.clone(),
        tokens_label_key: spec.tokens_label_key.clone(),
        denied_status_code: spec.denied_status_code,
        bucket: BucketInfo::of(&spec.params),
        max_idle_seconds: seconds(spec.max_idle_ns),
        lazy_sync_interval_seconds: spec.lazy_sync_interval_ns.map(seconds),
    }
}

/// Nanoseconds as seconds.
pub fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}
