//! `rate_limiter:` — Aperture's rate limiter component: a token bucket per value of a label.

use super::alerter::AlerterConfig;
use super::problems::{check_name_len, join, Problems};
use super::selector::{validate_selectors, Selector};
use crate::bucket::BucketParams;
use crate::duration::ConfigDuration;
use crate::status::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `rate_limiter:` of a policy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Tokens a bucket holds at most; a new bucket starts full.
    pub bucket_capacity: f64,
    /// Tokens added per `parameters.interval`.
    pub fill_amount: f64,
    /// Bucket keying and fill behaviour.
    pub parameters: RateLimiterParameters,
    /// How each request is costed and denied.
    #[serde(default)]
    pub request_parameters: RequestParameters,
    /// Which flows this limiter applies to (any selector matching is enough).
    pub selectors: Vec<Selector>,
    /// Per label value scaling (Aperture before 2.2): capacity and fill x factor.
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Aperture's alert settings: accepted, not used (see [`AlerterConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerter: Option<AlerterConfig>,
}

/// `rate_limiter.parameters` (Aperture's `RateLimiterParameters`; the quota scheduler
/// uses the same message).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterParameters {
    /// The label whose value keys the bucket. Absent: one bucket shared by all flows.
    #[serde(default)]
    pub limit_by_label_key: Option<String>,
    /// The fill period (required).
    pub interval: ConfigDuration,
    /// Fill continuously (default true) or in whole intervals only.
    #[serde(default = "default_true")]
    pub continuous_fill: bool,
    /// Buckets untouched this long are dropped (they would be full again anyway once
    /// idle longer than a fill time). Default 7200s, as Aperture.
    #[serde(default = "default_max_idle")]
    pub max_idle_time: ConfigDuration,
    /// Replication cadence for this policy when clustered.
    #[serde(default)]
    pub lazy_sync: LazySync,
    /// A new bucket starts full but waits a full fill time before filling. Default false.
    #[serde(default)]
    pub delay_initial_fill: bool,
}

fn default_true() -> bool {
    true
}

fn default_max_idle() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(7200))
}

/// `parameters.lazy_sync`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LazySync {
    /// When true, this policy syncs every `interval / num_sync` instead of the cluster's
    /// `sync_interval`. Default false.
    pub enabled: bool,
    /// Syncs per interval. Default 4, as Aperture.
    pub num_sync: u32,
}

impl Default for LazySync {
    fn default() -> Self {
        LazySync {
            enabled: false,
            num_sync: 4,
        }
    }
}

/// `rate_limiter.request_parameters`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestParameters {
    /// Label holding the request's token cost. Absent or label missing: 1 token.
    pub tokens_label_key: Option<String>,
    /// HTTP status a denied request should get. Default 429 Too Many Requests.
    pub denied_response_status_code: Option<StatusCode>,
}

/// `overrides:` entry: scale a bucket for one label value.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// The limit label's value this applies to.
    pub label_value: String,
    /// Capacity and fill multiplier (> 0).
    pub limit_scale_factor: f64,
}

impl RateLimiterConfig {
    /// Checks the limiter at `at` (e.g. `policies[0].rate_limiter`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        validate_bucket(self.bucket_capacity, self.fill_amount, at, problems);
        self.parameters.validate(&join(at, "parameters"), problems);
        self.request_parameters
            .validate(&join(at, "request_parameters"), problems);
        validate_selectors(&self.selectors, &join(at, "selectors"), problems);
        let bucket_valid = self.bucket_capacity.is_finite()
            && self.bucket_capacity > 0.0
            && self.fill_amount.is_finite()
            && self.fill_amount >= 0.0;
        let mut seen = std::collections::HashSet::new();
        for (j, o) in self.overrides.iter().enumerate() {
            let at = format!("{at}.overrides[{j}]");
            if !(o.limit_scale_factor.is_finite() && o.limit_scale_factor > 0.0) {
                problems.at(
                    join(&at, "limit_scale_factor"),
                    "must be a number greater than 0",
                );
            } else if !bucket_valid {
                // Reported on bucket_capacity / fill_amount already.
            } else if let Some(problem) = self
                .parameters
                .bucket(self.bucket_capacity, self.fill_amount)
                .scale_problem(o.limit_scale_factor)
            {
                problems.at(join(&at, "limit_scale_factor"), problem);
            }
            if !seen.insert(o.label_value.as_str()) {
                problems.at(
                    join(&at, "label_value"),
                    "duplicate override for this label value",
                );
            }
            if self.parameters.limit_by_label_key.is_none() {
                problems.at(
                    at.clone(),
                    "overrides need parameters.limit_by_label_key (there is only one shared bucket)",
                );
            }
        }
    }
}

/// Checks a token bucket's `bucket_capacity` and `fill_amount` at `at`.
pub fn validate_bucket(capacity: f64, fill_amount: f64, at: &str, problems: &mut Problems) {
    if !(capacity.is_finite() && capacity > 0.0) {
        problems.at(
            join(at, "bucket_capacity"),
            "must be a finite number greater than 0",
        );
    }
    if !(fill_amount.is_finite() && fill_amount >= 0.0) {
        problems.at(
            join(at, "fill_amount"),
            "must be a finite number, 0 or more",
        );
    }
}

impl RateLimiterParameters {
    /// The bucket these parameters shape with `capacity` and `fill_amount` (before any
    /// key override).
    pub fn bucket(&self, capacity: f64, fill_amount: f64) -> BucketParams {
        BucketParams {
            capacity,
            fill_amount,
            interval_ns: self.interval.as_nanos_u64().max(1),
            continuous_fill: self.continuous_fill,
            delay_initial_fill: self.delay_initial_fill,
        }
    }

    /// Checks the parameters at `at` (e.g. `policies[0].rate_limiter.parameters`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.interval.0.is_zero() {
            problems.at(join(at, "interval"), "must be greater than 0");
        }
        if self.max_idle_time.0.is_zero() {
            problems.at(join(at, "max_idle_time"), "must be greater than 0");
        }
        if self.lazy_sync.num_sync == 0 {
            problems.at(join(at, "lazy_sync.num_sync"), "must be at least 1");
        }
        if self.limit_by_label_key.as_deref() == Some("") {
            problems.at(
                join(at, "limit_by_label_key"),
                "must not be empty (omit it for one shared bucket)",
            );
        }
        if let Some(key) = &self.limit_by_label_key {
            check_name_len(key, || join(at, "limit_by_label_key"), problems);
        }
    }
}

impl RequestParameters {
    /// Checks the request parameters at `at`.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.tokens_label_key.as_deref() == Some("") {
            problems.at(join(at, "tokens_label_key"), "must not be empty");
        }
        validate_status(
            self.denied_response_status_code,
            &join(at, "denied_response_status_code"),
            problems,
        );
    }
}

/// Checks an optional denied status code at `at`.
pub fn validate_status(code: Option<StatusCode>, at: &str, problems: &mut Problems) {
    if code.is_some_and(|c| !c.is_http_status()) {
        problems.at(at, "must be an HTTP status between 100 and 599");
    }
}
