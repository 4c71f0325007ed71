//! `concurrency_limiter:` and `concurrency_scheduler:` — at most `max_concurrency` tokens of
//! flows in flight per label value; a flow takes its tokens when it starts and gives them
//! back when it ends (FlowEnd) or after `max_inflight_duration`.

use super::alerter::AlerterConfig;
use super::problems::{check_name_len, join, Problems};
use super::rate_limiter::validate_status;
use super::scheduler::SchedulerConfig;
use super::selector::{validate_selectors, Selector};
use crate::duration::ConfigDuration;
use crate::status::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `concurrency_limiter:` of a policy: refuses at once when the limit is reached
/// (the `concurrency-limiting/base` blueprint's layout).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimiterConfig {
    /// Tokens of flows in flight at most, per label value.
    pub max_concurrency: f64,
    /// Keying and the in-flight bound.
    pub parameters: ConcurrencyLimiterParameters,
    /// How each request is costed and denied.
    #[serde(default)]
    pub request_parameters: ConcurrencyRequestParameters,
    /// Which flows this limiter applies to.
    pub selectors: Vec<Selector>,
    /// Aperture's alert settings: accepted, not used (see [`AlerterConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerter: Option<AlerterConfig>,
}

/// `concurrency_scheduler:` of a policy: flows beyond the limit wait in a weighted fair
/// queue until capacity frees (the `concurrency-scheduling/base` blueprint's layout).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySchedulerConfig {
    /// Tokens of flows in flight at most, per label value.
    pub max_concurrency: f64,
    /// Keying and the in-flight bound.
    pub concurrency_limiter: ConcurrencyLimiterParameters,
    /// Workloads, priorities, fairness and label keys (the scheduler's tokens label is
    /// the flow's cost).
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Which flows this scheduler applies to.
    pub selectors: Vec<Selector>,
    /// Aperture's alert settings: accepted, not used (see [`AlerterConfig`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerter: Option<AlerterConfig>,
}

/// Aperture's `ConcurrencyLimiter.Parameters`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyLimiterParameters {
    /// The label whose value keys the limit. Absent: one limit shared by all flows.
    #[serde(default)]
    pub limit_by_label_key: Option<String>,
    /// A flow not ended within this long is ended for it, so a client that never sends
    /// FlowEnd cannot hold capacity forever (required).
    pub max_inflight_duration: ConfigDuration,
    /// Counters idle this long (with nothing in flight) are dropped. Default 7200s.
    #[serde(default = "default_max_idle")]
    pub max_idle_time: ConfigDuration,
}

fn default_max_idle() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(7200))
}

/// Aperture's `ConcurrencyLimiter.RequestParameters`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencyRequestParameters {
    /// Label holding the flow's token cost. Absent or label missing: 1 token.
    pub tokens_label_key: Option<String>,
    /// HTTP status a refused flow gets. Default 429 Too Many Requests.
    pub denied_response_status_code: Option<StatusCode>,
}

fn validate_max_concurrency(max: f64, at: &str, problems: &mut Problems) {
    if !(max.is_finite() && max > 0.0) {
        problems.at(
            join(at, "max_concurrency"),
            "must be a finite number greater than 0",
        );
    }
}

impl ConcurrencyLimiterParameters {
    /// Checks the parameters at `at`.
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        if self.max_inflight_duration.0.is_zero() {
            problems.at(join(at, "max_inflight_duration"), "must be greater than 0");
        }
        if self.max_idle_time.0.is_zero() {
            problems.at(join(at, "max_idle_time"), "must be greater than 0");
        }
        if self.limit_by_label_key.as_deref() == Some("") {
            problems.at(
                join(at, "limit_by_label_key"),
                "must not be empty (omit it for one shared limit)",
            );
        }
        if let Some(key) = &self.limit_by_label_key {
            check_name_len(key, || join(at, "limit_by_label_key"), problems);
        }
    }
}

impl ConcurrencyLimiterConfig {
    /// Checks the component at `at` (e.g. `policies[0].concurrency_limiter`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        validate_max_concurrency(self.max_concurrency, at, problems);
        self.parameters.validate(&join(at, "parameters"), problems);
        let rp = &self.request_parameters;
        if rp.tokens_label_key.as_deref() == Some("") {
            problems.at(
                join(at, "request_parameters.tokens_label_key"),
                "must not be empty",
            );
        }
        validate_status(
            rp.denied_response_status_code,
            &join(at, "request_parameters.denied_response_status_code"),
            problems,
        );
        validate_selectors(&self.selectors, &join(at, "selectors"), problems);
    }
}

impl ConcurrencySchedulerConfig {
    /// Checks the component at `at` (e.g. `policies[0].concurrency_scheduler`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        validate_max_concurrency(self.max_concurrency, at, problems);
        self.concurrency_limiter
            .validate(&join(at, "concurrency_limiter"), problems);
        self.scheduler.validate(&join(at, "scheduler"), problems);
        validate_selectors(&self.selectors, &join(at, "selectors"), problems);
    }
}
