//! `quota_scheduler:` — Aperture's quota scheduler: a (global) token bucket per label value
//! whose flows wait in a weighted fair queue for tokens, up to their deadline.

use super::alerter::AlerterConfig;
use super::problems::{join, Problems};
use super::rate_limiter::{validate_bucket, RateLimiterParameters};
use super::scheduler::SchedulerConfig;
use super::selector::{validate_selectors, Selector};
use serde::{Deserialize, Serialize};

/// `quota_scheduler:` of a policy (the `quota-scheduling/base` blueprint's layout).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuotaSchedulerConfig {
    /// Tokens a bucket holds at most: the quota's burst. A new bucket starts full.
    pub bucket_capacity: f64,
    /// Tokens added per `rate_limiter.interval`: the quota's rate.
    pub fill_amount: f64,
    /// Bucket keying and fill behaviour (Aperture's `RateLimiterParameters`).
    pub rate_limiter: RateLimiterParameters,
    /// Workloads, priorities, fairness and label keys.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Which flows this scheduler applies to.
    pub selectors: Vec<Selector>,
    /// Aperture's alert settings: accepted, not used (see [`AlerterConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerter: Option<AlerterConfig>,
}

impl QuotaSchedulerConfig {
    /// Checks the component at `at` (e.g. `policies[0].quota_scheduler`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        validate_bucket(self.bucket_capacity, self.fill_amount, at, problems);
        self.rate_limiter
            .validate(&join(at, "rate_limiter"), problems);
        self.scheduler.validate(&join(at, "scheduler"), problems);
        validate_selectors(&self.selectors, &join(at, "selectors"), problems);
    }
}
