//! [`LimiterSpec`]: one compiled limiter — its identity, bucket shape, keys and selectors.

use crate::bucket::BucketParams;
use crate::config::PolicyConfig;
use crate::identity::{ComponentKind, Digest, DigestWriter, LimiterId};
use crate::matcher::CompiledSelector;
use crate::status::{StatusCode, TOO_MANY_REQUESTS};

/// Everything known about one limiter once compiled.
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
    pub(crate) selectors: Vec<CompiledSelector>,
}

impl LimiterSpec {
    /// Compiles a validated policy with the given id and position.
    pub(crate) fn compile(p: &PolicyConfig, id: LimiterId, position: u16) -> LimiterSpec {
        let rl = &p.rate_limiter;
        let params = BucketParams {
            capacity: rl.bucket_capacity,
            fill_amount: rl.fill_amount,
            interval_ns: rl.parameters.interval.as_nanos_u64().max(1),
            continuous_fill: rl.parameters.continuous_fill,
            delay_initial_fill: rl.parameters.delay_initial_fill,
        };
        let lazy = &rl.parameters.lazy_sync;
        let mut spec = LimiterSpec {
            id,
            position,
            policy_name: p.policy_name.clone(),
            kind: ComponentKind::RateLimiter,
            digest: Digest(0),
            policy_hash: String::new(),
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
        spec.digest = spec.definition();
        spec.policy_hash = spec.digest.to_string();
        spec
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
    /// selectors, status codes, idle time or sync cadence: those change which flows reach
    /// a bucket or how it is reported, not what its tokens mean, so nodes that differ only
    /// there still share limits.
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
