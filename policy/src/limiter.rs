//! [`LimiterSpec`]: one compiled component — its identity, bucket shape, keys, selectors and,
//! for schedulers, workloads.
//!
//! Every kind keeps its state in a [`TokenBucket`](crate::TokenBucket) per label value, so
//! storage, replication and eviction are the same for all:
//! - rate limiters and quota schedulers: the configured bucket (capacity, fill, interval);
//! - concurrency limiters and schedulers: a bucket of `max_concurrency` tokens that never
//!   fills with time — a flow takes its tokens when it starts and puts them back when it
//!   ends, so the level is the capacity still free.

use crate::bucket::BucketParams;
use crate::config::{ComponentConfig, PolicyConfig, RateLimiterParameters, SchedulerConfig};
use crate::identity::{ComponentKind, Digest, DigestWriter, LimiterId};
use crate::matcher::CompiledSelector;
use crate::status::{StatusCode, SERVICE_UNAVAILABLE, TOO_MANY_REQUESTS};
use crate::workload::SchedulerSpec;

/// Everything known about one component once compiled.
#[derive(Clone, Debug)]
pub struct LimiterSpec {
    /// This process's handle for it (stable across reloads while its identity is unchanged).
    pub id: LimiterId,
    /// Its place in the policy list: what the binary protocol's `limiter_index` and
    /// `HELLO_REPLY.policy_names` use. Changes when the list is reordered.
    pub position: u16,
    /// The policy's name: with `kind`, the limiter's identity.
    pub policy_name: String,
    /// What kind of component it is.
    pub kind: ComponentKind,
    /// Digest of the definition (kind + bucket-shaping parameters): peers with another
    /// digest for the same name do not share its buckets.
    pub digest: Digest,
    /// The digest in hex, reported as Aperture's `policy_hash`.
    pub policy_hash: String,
    /// Aperture's component id for the component within its policy.
    pub component_id: String,
    /// The label keying buckets; None = one shared bucket.
    pub limit_by_label_key: Option<String>,
    /// The label carrying a request's token cost; None = the default cost.
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
    /// Concurrency kinds: a flow not ended within this long is ended for it.
    pub max_inflight_ns: Option<u64>,
    /// Scheduler kinds: workloads, label keys, deadline margin.
    pub scheduler: Option<SchedulerSpec>,
    /// Any of these must match.
    pub(crate) selectors: Vec<CompiledSelector>,
    /// The policy it was compiled from, as written: what tells a reload whether anything
    /// about it changed (`digest` covers only what shapes its buckets).
    pub source: PolicyConfig,
}

/// The parts of a component that differ by kind, gathered from its config.
struct Shape<'a> {
    kind: ComponentKind,
    params: BucketParams,
    limit_by_label_key: Option<&'a String>,
    tokens_label_key: Option<&'a String>,
    denied: Option<StatusCode>,
    default_denied: u16,
    max_idle_ns: u64,
    lazy_sync_interval_ns: Option<u64>,
    max_inflight_ns: Option<u64>,
    scheduler: Option<&'a SchedulerConfig>,
    overrides: Vec<(String, f64)>,
}

fn lazy_sync(params: &BucketParams, p: &RateLimiterParameters) -> Option<u64> {
    p.lazy_sync
        .enabled
        .then(|| (params.interval_ns / u64::from(p.lazy_sync.num_sync.max(1))).max(1))
}

/// The bucket of a concurrency component: `max_concurrency` tokens, never filled by time.
fn in_flight_bucket(max_concurrency: f64) -> BucketParams {
    BucketParams {
        capacity: max_concurrency,
        fill_amount: 0.0,
        interval_ns: 1,
        continuous_fill: true,
        delay_initial_fill: false,
    }
}

impl<'a> Shape<'a> {
    fn of(component: ComponentConfig<'a>) -> Shape<'a> {
        match component {
            ComponentConfig::RateLimiter(rl) => {
                let params = rl.parameters.bucket(rl.bucket_capacity, rl.fill_amount);
                Shape {
                    kind: ComponentKind::RateLimiter,
                    lazy_sync_interval_ns: lazy_sync(&params, &rl.parameters),
                    params,
                    limit_by_label_key: rl.parameters.limit_by_label_key.as_ref(),
                    tokens_label_key: rl.request_parameters.tokens_label_key.as_ref(),
                    denied: rl.request_parameters.denied_response_status_code,
                    default_denied: TOO_MANY_REQUESTS,
                    max_idle_ns: rl.parameters.max_idle_time.as_nanos_u64(),
                    max_inflight_ns: None,
                    scheduler: None,
                    overrides: rl
                        .overrides
                        .iter()
                        .map(|o| (o.label_value.clone(), o.limit_scale_factor))
                        .collect(),
                }
            }
            ComponentConfig::QuotaScheduler(qs) => {
                let params = qs.rate_limiter.bucket(qs.bucket_capacity, qs.fill_amount);
                Shape {
                    kind: ComponentKind::QuotaScheduler,
                    lazy_sync_interval_ns: lazy_sync(&params, &qs.rate_limiter),
                    params,
                    limit_by_label_key: qs.rate_limiter.limit_by_label_key.as_ref(),
                    tokens_label_key: qs.scheduler.tokens_label_key.as_ref(),
                    denied: qs.scheduler.denied_response_status_code,
                    default_denied: SERVICE_UNAVAILABLE,
                    max_idle_ns: qs.rate_limiter.max_idle_time.as_nanos_u64(),
                    max_inflight_ns: None,
                    scheduler: Some(&qs.scheduler),
                    overrides: Vec::new(),
                }
            }
            ComponentConfig::ConcurrencyLimiter(cl) => Shape {
                kind: ComponentKind::ConcurrencyLimiter,
                params: in_flight_bucket(cl.max_concurrency),
                limit_by_label_key: cl.parameters.limit_by_label_key.as_ref(),
                tokens_label_key: cl.request_parameters.tokens_label_key.as_ref(),
                denied: cl.request_parameters.denied_response_status_code,
                default_denied: TOO_MANY_REQUESTS,
                max_idle_ns: cl.parameters.max_idle_time.as_nanos_u64(),
                lazy_sync_interval_ns: None,
                max_inflight_ns: Some(cl.parameters.max_inflight_duration.as_nanos_u64()),
                scheduler: None,
                overrides: Vec::new(),
            },
            ComponentConfig::ConcurrencyScheduler(cs) => Shape {
                kind: ComponentKind::ConcurrencyScheduler,
                params: in_flight_bucket(cs.max_concurrency),
                limit_by_label_key: cs.concurrency_limiter.limit_by_label_key.as_ref(),
                tokens_label_key: cs.scheduler.tokens_label_key.as_ref(),
                denied: cs.scheduler.denied_response_status_code,
                default_denied: SERVICE_UNAVAILABLE,
                max_idle_ns: cs.concurrency_limiter.max_idle_time.as_nanos_u64(),
                lazy_sync_interval_ns: None,
                max_inflight_ns: Some(cs.concurrency_limiter.max_inflight_duration.as_nanos_u64()),
                scheduler: Some(&cs.scheduler),
                overrides: Vec::new(),
            },
        }
    }
}

impl LimiterSpec {
    /// Compiles a validated policy with the given id and position. None for a policy
    /// with no component (validation refuses those).
    pub(crate) fn compile(p: &PolicyConfig, id: LimiterId, position: u16) -> Option<LimiterSpec> {
        let component = p.component()?;
        let shape = Shape::of(component);
        let mut spec = LimiterSpec {
            id,
            position,
            policy_name: p.policy_name.clone(),
            kind: shape.kind,
            digest: Digest(0),
            policy_hash: String::new(),
            component_id: "root.0".to_string(),
            limit_by_label_key: shape.limit_by_label_key.cloned(),
            tokens_label_key: shape.tokens_label_key.cloned(),
            denied_status_code: shape.denied.map_or(shape.default_denied, |StatusCode(c)| c),
            params: shape.params,
            overrides: shape.overrides,
            max_idle_ns: shape.max_idle_ns,
            lazy_sync_interval_ns: shape.lazy_sync_interval_ns,
            max_inflight_ns: shape.max_inflight_ns,
            scheduler: shape.scheduler.map(SchedulerSpec::new),
            selectors: component
                .selectors()
                .iter()
                .map(CompiledSelector::new)
                .collect(),
            source: p.clone(),
        };
        spec.digest = spec.definition();
        spec.policy_hash = spec.digest.to_string();
        Some(spec)
    }

    /// The first key override that cannot scale `params` ([`BucketParams::scale_problem`]):
    /// its label value, its factor and why.
    pub fn override_problem(&self, params: &BucketParams) -> Option<(&str, f64, &'static str)> {
        self.overrides.iter().find_map(|(value, factor)| {
            params
                .scale_problem(*factor)
                .map(|problem| (value.as_str(), *factor, problem))
        })
    }

    /// Bucket shape for one key, overrides applied.
    pub fn params_for(&self, key: &str) -> BucketParams {
        match self.overrides.iter().find(|(v, _)| v == key) {
            Some(&(_, factor)) => self.params.scaled(factor),
            None => self.params,
        }
    }

    /// The digest of what shapes this limiter's buckets: kind, name, the key label, the
    /// cost label, capacity, fill, interval, fill mode, initial fill and overrides. Not
    /// selectors, workloads, status codes, idle time, sync cadence or the in-flight bound:
    /// those change which flows reach a bucket, in what order, or how it is reported, not
    /// what its tokens mean, so nodes that differ only there still share limits.
    fn definition(&self) -> Digest {
        let mut w = DigestWriter::new();
        w.str(self.kind.as_str())
            .str(&self.policy_name)
            .opt_str(self.limit_by_label_key.as_deref())
            .opt_str(self.tokens_label_key.as_deref())
            .f64(self.params.capacity)
            .f64(self.params.fill_amount)
            .u64(self.params.interval_ns)
            .bool(self.params.continuous_fill)
            .bool(self.params.delay_initial_fill);
        let mut overrides: Vec<&(String, f64)> = self.overrides.iter().collect();
        overrides.sort_by(|a, b| a.0.cmp(&b.0));
        w.u64(overrides.len() as u64);
        for (value, factor) in overrides {
            w.str(value).f64(*factor);
        }
        w.finish()
    }
}
