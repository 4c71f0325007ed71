//! `selectors:` — which flows a component applies to: a control point plus label conditions.

use super::problems::{check_name_len, join, Problems};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A selector: control point plus optional label matcher.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// The control point a flow must name (required).
    pub control_point: String,
    /// Aperture agent group: absent or `default` (every Tollgate node is one group).
    #[serde(default)]
    pub agent_group: Option<String>,
    /// Aperture service: absent or `any` (Tollgate does not resolve services).
    #[serde(default)]
    pub service: Option<String>,
    /// Label conditions, all of which must hold.
    #[serde(default)]
    pub label_matcher: Option<LabelMatcher>,
}

/// `label_matcher:` — every condition must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LabelMatcher {
    /// Labels that must be present with exactly these values.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based conditions.
    pub match_expressions: Vec<MatchExpression>,
}

/// One `match_expressions` entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MatchExpression {
    /// The label.
    pub key: String,
    /// The test.
    pub operator: Operator,
    /// Values for In / NotIn.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Label matcher operators, as Kubernetes and Aperture spell them.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum Operator {
    /// The label is present with one of `values`.
    In,
    /// The label is absent, or present with none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// Checks a component's `selectors` list (at `at`, e.g. `policies[0].rate_limiter.selectors`).
pub fn validate_selectors(selectors: &[Selector], at: &str, problems: &mut Problems) {
    if selectors.is_empty() {
        problems.at(at, "at least one selector is required");
    }
    for (j, sel) in selectors.iter().enumerate() {
        sel.validate(&format!("{at}[{j}]"), problems);
    }
}

impl Selector {
    fn validate(&self, at: &str, problems: &mut Problems) {
        if self.control_point.is_empty() {
            problems.at(join(at, "control_point"), "must not be empty");
        }
        check_name_len(&self.control_point, || join(at, "control_point"), problems);
        if self.service.as_deref().is_some_and(|s| s != "any") {
            problems.at(
                join(at, "service"),
                "Tollgate does not resolve services: omit it or use `any`, and select with a label matcher",
            );
        }
        if self.agent_group.as_deref().is_some_and(|g| g != "default") {
            problems.at(
                join(at, "agent_group"),
                "Tollgate nodes form one agent group: omit it or use `default`",
            );
        }
        if let Some(m) = &self.label_matcher {
            m.validate(&join(at, "label_matcher"), problems);
        }
    }
}

impl LabelMatcher {
    /// Checks the matcher at `at` (e.g. `...selectors[0].label_matcher`).
    pub fn validate(&self, at: &str, problems: &mut Problems) {
        for (k, e) in self.match_expressions.iter().enumerate() {
            let at = format!("{at}.match_expressions[{k}]");
            if e.key.is_empty() {
                problems.at(join(&at, "key"), "must not be empty");
            }
            match e.operator {
                Operator::In | Operator::NotIn if e.values.is_empty() => {
                    problems.at(join(&at, "values"), "In and NotIn need at least one value")
                }
                Operator::Exists | Operator::DoesNotExist if !e.values.is_empty() => problems.at(
                    join(&at, "values"),
                    "Exists and DoesNotExist take no values",
                ),
                _ => {}
            }
        }
    }
}
