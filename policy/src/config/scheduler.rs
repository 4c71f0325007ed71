//! `scheduler:` — Aperture's `Scheduler` message: workloads, priorities, fairness and the
//! label keys that let a flow say its own priority, tokens and workload. Shared by the
//! quota scheduler and the concurrency scheduler.

use super::problems::{join, Problems};
use super::rate_limiter::validate_status;
use super::selector::LabelMatcher;
use crate::duration::ConfigDuration;
use crate::status::StatusCode;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// The `scheduler:` block of a quota or concurrency scheduler.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Workloads, matched in order: a flow belongs to the first whose label matcher
    /// matches, else to the default workload.
    pub workloads: Vec<WorkloadConfig>,
    /// Parameters of flows that match no workload.
    pub default_workload_parameters: WorkloadParameters,
    /// Time taken off a request's deadline so the answer reaches the client before it
    /// gives up. Default 10ms, as Aperture.
    pub decision_deadline_margin: ConfigDuration,
    /// Label whose value overrides a flow's token cost. Default `tokens`, as the
    /// blueprints' examples; a value that is not a cost (negative, NaN, text) is refused.
    pub tokens_label_key: Option<String>,
    /// Label whose value overrides a flow's priority (a positive number, higher goes
    /// first). Default `priority`. A missing, non-numeric or non-positive value falls back
    /// to the workload's priority, as Aperture does.
    pub priority_label_key: Option<String>,
    /// Label whose value names the flow's workload in decisions and metrics (its queue is
    /// still chosen by the matched workload's priority). Default `workload`.
    pub workload_label_key: Option<String>,
    /// Label whose value splits a workload's share fairly between its values (e.g. a
    /// tenant). Absent: flows of a workload are served first come, first served.
    pub fairness_label_key: Option<String>,
    /// HTTP status a flow refused by the scheduler gets. Default 503 ServiceUnavailable.
    pub denied_response_status_code: Option<StatusCode>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            workloads: Vec::new(),
            default_workload_parameters: WorkloadParameters::default(),
            decision_deadline_margin: ConfigDuration(Duration::from_millis(10)),
            tokens_label_key: Some("tokens".into()),
            priority_label_key: Some("priority".into()),
            workload_label_key: Some("workload".into()),
            fairness_label_key: None,
            denied_response_status_code: None,
        }
    }
}

/// One `workloads:` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Name reported as the flow's `workload_index`. Default: its position in the list.
    #[serde(default)]
    pub name: Option<String>,
    /// Which flows belong to it (required).
    pub label_matcher: LabelMatcher,
    /// Its priority, tokens and queue timeout.
    #[serde(default)]
    pub parameters: WorkloadParameters,
}

/// `parameters:` of a workload.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadParameters {
    /// Any positive number; higher goes first. A flow's place in the queue is its
    /// virtual finish time, `virtual time + tokens / priority`. Default 1.
    pub priority: f64,
    /// Tokens a flow of this workload costs when no tokens label says otherwise.
    /// Default 1.
    pub tokens: f64,
    /// Longest a flow of this workload waits in the queue; the smaller of this and the
    /// request's own deadline applies. 0 = never wait. Absent: the request's deadline.
    pub queue_timeout: Option<ConfigDuration>,
}

impl Default for WorkloadParameters {
    fn default() -> Self {
        WorkloadParameters {
            priority: 1.0,
            tokens: 1.0,
            queue_timeout: None,
        }
    }
}

/// Name of the workload of flows that match none (Aperture's `default`).
pub const DEFAULT_WORKLOAD: &str = "default";

impl SchedulerConfig {
    /// Checks the block at `at` (e.g. `policies[0].quota_scheduler.scheduler`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        let mut names = HashSet::from([DEFAULT_WORKLOAD.to_string()]);
        for (i, w) in self.workloads.iter().enumerate() {
            let at = format!("{at}.workloads[{i}]");
            let name = w.name.clone().unwrap_or_else(|| i.to_string());
            if w.name.as_deref() == Some("") {
                problems.at(
                    join(&at, "name"),
                    "must not be empty (omit it to use the index)",
                );
            } else if !names.insert(name) {
                problems.at(join(&at, "name"), "duplicate workload name");
            }
            w.label_matcher
                .validate(&join(&at, "label_matcher"), problems);
            w.parameters.validate(&join(&at, "parameters"), problems);
        }
        self.default_workload_parameters
            .validate(&join(at, "default_workload_parameters"), problems);
        for (field, key) in [
            ("tokens_label_key", &self.tokens_label_key),
            ("priority_label_key", &self.priority_label_key),
            ("workload_label_key", &self.workload_label_key),
            ("fairness_label_key", &self.fairness_label_key),
        ] {
            if key.as_deref() == Some("") {
                problems.at(
                    join(at, field),
                    "must not be empty (omit it to not use a label)",
                );
            }
        }
        validate_status(
            self.denied_response_status_code,
            &join(at, "denied_response_status_code"),
            problems,
        );
    }
}

impl WorkloadParameters {
    fn validate(&self, at: &str, problems: &mut Problems) {
        if !(self.priority.is_finite() && self.priority > 0.0) {
            problems.at(
                join(at, "priority"),
                "must be a finite number greater than 0",
            );
        }
        if !(self.tokens.is_finite() && self.tokens >= 0.0) {
            problems.at(join(at, "tokens"), "must be a finite number, 0 or more");
        }
    }
}
