//! Selector and label matching: does a component (or a scheduler workload) apply to this
//! flow?

use crate::config::{LabelMatcher, Operator, Selector};
use crate::Labels;

/// A selector reduced to what matching needs.
#[derive(Clone, Debug)]
pub struct CompiledSelector {
    /// Exact control point.
    pub control_point: String,
    /// Label conditions.
    matcher: CompiledMatcher,
}

/// A label matcher reduced to its conditions, every one of which must hold.
#[derive(Clone, Debug, Default)]
pub struct CompiledMatcher {
    conditions: Vec<Condition>,
}

#[derive(Clone, Debug)]
enum Condition {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl CompiledSelector {
    /// Compiles a config selector.
    pub fn new(selector: &Selector) -> CompiledSelector {
        CompiledSelector {
            control_point: selector.control_point.clone(),
            matcher: selector
                .label_matcher
                .as_ref()
                .map(CompiledMatcher::new)
                .unwrap_or_default(),
        }
    }

    /// Whether the labels satisfy every condition (the control point is matched by the caller's index).
    pub fn matches_labels<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.matcher.matches(labels)
    }
}

impl CompiledMatcher {
    /// Compiles a label matcher.
    pub fn new(m: &LabelMatcher) -> CompiledMatcher {
        let mut conditions = Vec::new();
        for (k, v) in &m.match_labels {
            conditions.push(Condition::Equals(k.clone(), v.clone()));
        }
        for e in &m.match_expressions {
            let key = e.key.clone();
            conditions.push(match e.operator {
                Operator::In => Condition::In(key, e.values.clone()),
                Operator::NotIn => Condition::NotIn(key, e.values.clone()),
                Operator::Exists => Condition::Exists(key),
                Operator::DoesNotExist => Condition::DoesNotExist(key),
            });
        }
        CompiledMatcher { conditions }
    }

    /// Whether the labels satisfy every condition.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.conditions.iter().all(|c| match c {
            Condition::Equals(k, v) => labels.get(k) == Some(v.as_str()),
            Condition::In(k, vs) => labels.get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Condition::NotIn(k, vs) => labels.get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Condition::Exists(k) => labels.get(k).is_some(),
            Condition::DoesNotExist(k) => labels.get(k).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MatchExpression;

    fn selector(labels: &[(&str, &str)], exprs: Vec<MatchExpression>) -> CompiledSelector {
        CompiledSelector::new(&Selector {
            control_point: "cp".into(),
            agent_group: None,
            service: None,
            label_matcher: Some(LabelMatcher {
                match_labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                match_expressions: exprs,
            }),
        })
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> MatchExpression {
        MatchExpression {
            key: key.into(),
            operator,
            values: values.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn operators() {
        let flow: &[(&str, &str)] = &[("region", "eu"), ("tier", "premium")];
        assert!(selector(&[("region", "eu")], vec![]).matches_labels(flow));
        assert!(!selector(&[("region", "us")], vec![]).matches_labels(flow));
        assert!(
            selector(&[], vec![expr("tier", Operator::In, &["gold", "premium"])])
                .matches_labels(flow)
        );
        assert!(
            !selector(&[], vec![expr("tier", Operator::NotIn, &["premium"])]).matches_labels(flow)
        );
        assert!(
            selector(&[], vec![expr("plan", Operator::NotIn, &["x"])]).matches_labels(flow),
            "absent label is NotIn"
        );
        assert!(selector(&[], vec![expr("tier", Operator::Exists, &[])]).matches_labels(flow));
        assert!(
            !selector(&[], vec![expr("tier", Operator::DoesNotExist, &[])]).matches_labels(flow)
        );
        assert!(
            selector(&[], vec![expr("plan", Operator::DoesNotExist, &[])]).matches_labels(flow)
        );
        assert!(!selector(&[], vec![expr("plan", Operator::In, &["x"])]).matches_labels(flow));
    }
}
