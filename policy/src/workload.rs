//! A scheduler's workloads compiled, and how a flow's labels pick its workload, priority,
//! fairness key and queue timeout (Aperture's `Scheduler` semantics).
//!
//! - Workload: the first of `workloads` whose label matcher matches, else the default.
//! - Priority: the priority label's value when it is a positive number, else the
//!   workload's priority (a missing, non-numeric or non-positive value falls back, as
//!   Aperture's scheduler does).
//! - Tokens: decided by the engine (explicit tokens, else the tokens label, else the
//!   workload's tokens, else 1); a tokens label that is not a cost is refused.
//! - Name reported (`workload_index`): the workload label's value if the flow carries it,
//!   else the workload's name (or its position), else `default`.

use crate::config::{SchedulerConfig, WorkloadParameters, DEFAULT_WORKLOAD};
use crate::matcher::CompiledMatcher;
use crate::Labels;

/// One workload's parameters, compiled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkloadParams {
    /// Higher goes first (> 0).
    pub priority: f64,
    /// Tokens a flow costs when no label or explicit cost says otherwise.
    pub tokens: f64,
    /// Longest wait in the queue, if the workload bounds it.
    pub queue_timeout_ns: Option<u64>,
}

impl WorkloadParams {
    fn new(p: &WorkloadParameters) -> WorkloadParams {
        WorkloadParams {
            priority: p.priority,
            tokens: p.tokens,
            queue_timeout_ns: p.queue_timeout.map(|d| d.as_nanos_u64()),
        }
    }
}

#[derive(Clone, Debug)]
struct CompiledWorkload {
    name: String,
    matcher: CompiledMatcher,
    params: WorkloadParams,
}

/// A scheduler block, compiled.
#[derive(Clone, Debug)]
pub struct SchedulerSpec {
    workloads: Vec<CompiledWorkload>,
    default: WorkloadParams,
    /// Taken off a request's deadline so the answer arrives in time.
    pub decision_deadline_margin_ns: u64,
    /// Label overriding a flow's priority.
    pub priority_label_key: Option<String>,
    /// Label naming a flow's workload in decisions.
    pub workload_label_key: Option<String>,
    /// Label splitting a workload's share between its values.
    pub fairness_label_key: Option<String>,
}

/// Which workload a flow belongs to, for reporting (`workload_index`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadName<'a> {
    /// `workloads[i]`.
    Index(u16),
    /// No workload matched.
    Default,
    /// The flow's workload label.
    Label(&'a str),
}

/// What the scheduler makes of one flow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WorkloadPick<'a> {
    /// The workload it is reported under.
    pub name: WorkloadName<'a>,
    /// Which queue class it joins: the matched workload (`None` = default). Flows of one
    /// class and priority share a weighted fair queue's flow.
    pub class: Option<u16>,
    /// Its priority (> 0).
    pub priority: f64,
    /// Its tokens when nothing else says (the workload's).
    pub workload_tokens: f64,
    /// Its queue timeout, if the workload bounds it.
    pub queue_timeout_ns: Option<u64>,
    /// Its fairness key, if the scheduler has a fairness label and the flow carries it.
    pub fairness: Option<&'a str>,
}

impl SchedulerSpec {
    /// Compiles a validated `scheduler:` block.
    pub fn new(c: &SchedulerConfig) -> SchedulerSpec {
        SchedulerSpec {
            workloads: c
                .workloads
                .iter()
                .enumerate()
                .map(|(i, w)| CompiledWorkload {
                    name: w.name.clone().unwrap_or_else(|| i.to_string()),
                    matcher: CompiledMatcher::new(&w.label_matcher),
                    params: WorkloadParams::new(&w.parameters),
                })
                .collect(),
            default: WorkloadParams::new(&c.default_workload_parameters),
            decision_deadline_margin_ns: c.decision_deadline_margin.as_nanos_u64(),
            priority_label_key: c.priority_label_key.clone(),
            workload_label_key: c.workload_label_key.clone(),
            fairness_label_key: c.fairness_label_key.clone(),
        }
    }

    /// The workload, priority and fairness key of a flow.
    pub fn pick<'a, L: Labels + ?Sized>(&self, labels: &'a L) -> WorkloadPick<'a> {
        let matched = self
            .workloads
            .iter()
            .position(|w| w.matcher.matches(labels));
        let (class, params) = match matched {
            Some(i) => (Some(i as u16), self.workloads[i].params),
            None => (None, self.default),
        };
        let name = match self
            .workload_label_key
            .as_deref()
            .and_then(|k| labels.get(k))
        {
            Some(value) => WorkloadName::Label(value),
            None => class.map_or(WorkloadName::Default, WorkloadName::Index),
        };
        let priority = self
            .priority_label_key
            .as_deref()
            .and_then(|k| labels.get(k))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|p| p.is_finite() && *p > 0.0)
            .unwrap_or(params.priority);
        WorkloadPick {
            name,
            class,
            priority,
            workload_tokens: params.tokens,
            queue_timeout_ns: params.queue_timeout_ns,
            fairness: self
                .fairness_label_key
                .as_deref()
                .and_then(|k| labels.get(k)),
        }
    }

    /// The text of a workload name, as decisions report it.
    pub fn name_of<'a>(&'a self, name: WorkloadName<'a>) -> &'a str {
        match name {
            WorkloadName::Index(i) => self
                .workloads
                .get(usize::from(i))
                .map_or(DEFAULT_WORKLOAD, |w| w.name.as_str()),
            WorkloadName::Default => DEFAULT_WORKLOAD,
            WorkloadName::Label(value) => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LabelMatcher, WorkloadConfig};

    fn spec() -> SchedulerSpec {
        let c = SchedulerConfig {
            fairness_label_key: Some("tenant".into()),
            default_workload_parameters: WorkloadParameters {
                priority: 50.0,
                ..WorkloadParameters::default()
            },
            workloads: vec![
                WorkloadConfig {
                    name: Some("premium".into()),
                    label_matcher: LabelMatcher {
                        match_labels: [("tier".to_string(), "premium".to_string())].into(),
                        match_expressions: vec![],
                    },
                    parameters: WorkloadParameters {
                        priority: 200.0,
                        tokens: 3.0,
                        queue_timeout: None,
                    },
                },
                WorkloadConfig {
                    name: None,
                    label_matcher: LabelMatcher {
                        match_labels: [("tier".to_string(), "free".to_string())].into(),
                        match_expressions: vec![],
                    },
                    parameters: WorkloadParameters::default(),
                },
            ],
            ..SchedulerConfig::default()
        };
        SchedulerSpec::new(&c)
    }

    #[test]
    fn first_matching_workload_then_default() {
        let s = spec();
        let premium: &[(&str, &str)] = &[("tier", "premium")];
        let p = s.pick(premium);
        assert_eq!(
            (p.class, p.priority, p.workload_tokens),
            (Some(0), 200.0, 3.0)
        );
        assert_eq!(s.name_of(p.name), "premium");
        let free: &[(&str, &str)] = &[("tier", "free")];
        assert_eq!(s.name_of(s.pick(free).name), "1", "unnamed: its position");
        let other: &[(&str, &str)] = &[("tier", "gold"), ("tenant", "t1")];
        let p = s.pick(other);
        assert_eq!((p.class, p.priority), (None, 50.0));
        assert_eq!(s.name_of(p.name), "default");
        assert_eq!(p.fairness, Some("t1"));
    }

    #[test]
    fn priority_label_overrides_only_with_a_positive_number() {
        let s = spec();
        for (value, want) in [
            ("7", 7.0),
            ("0.5", 0.5),
            ("0", 50.0),
            ("-3", 50.0),
            ("high", 50.0),
            ("NaN", 50.0),
            ("inf", 50.0),
        ] {
            let labels: &[(&str, &str)] = &[("priority", value)];
            assert_eq!(s.pick(labels).priority, want, "{value}");
        }
    }

    #[test]
    fn workload_label_names_the_flow() {
        let s = spec();
        let labels: &[(&str, &str)] = &[("tier", "premium"), ("workload", "batch")];
        let p = s.pick(labels);
        assert_eq!(s.name_of(p.name), "batch");
        assert_eq!(
            p.priority, 200.0,
            "the queue class is still the matched workload"
        );
    }
}
