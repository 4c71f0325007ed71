//! The policy part of Tollgate's configuration: the `policies:` list, or one Aperture
//! blueprint values file, parsed and validated with field paths.
//!
//! A config file has sections with different owners: `policies:` (this crate), `server:`
//! (the server crate) and `cluster:` (the cluster crate). The server crate reads the YAML
//! document once, hands each owner its section, and collects every problem into one
//! [`Problems`] list. Parsing a section is two steps, both reporting the field path and
//! the reason:
//! 1. serde (with `deny_unknown_fields`, so a typo is an error, not a silent default),
//!    tracked by `serde_path_to_error` for the path ([`deserialize_section`]);
//! 2. the section's `validate`, for rules serde cannot express (ranges, required-if,
//!    duplicates).
//!
//! Defaults are documented on each field together with what they assume.
//!
//! # Layout
//! - [`problems`]: [`FieldError`], [`ConfigError`], [`Problems`], section deserialization.
//! - [`policy`]: [`PolicyConfig`] and the rules across policies.
//! - [`rate_limiter`]: the rate limiter component.
//! - [`quota_scheduler`]: the quota scheduler component.
//! - [`concurrency`]: the concurrency limiter and concurrency scheduler components.
//! - [`scheduler`]: the workload scheduler block both schedulers share.
//! - [`alerter`]: Aperture's alerter settings (accepted, not used).
//! - [`selector`]: selectors and label matchers.
//! - [`blueprint`]: Aperture blueprint values files (all four Tollgate runs).

pub mod alerter;
pub mod blueprint;
pub mod concurrency;
pub mod policy;
pub mod problems;
pub mod quota_scheduler;
pub mod rate_limiter;
pub mod scheduler;
pub mod selector;

pub use alerter::AlerterConfig;
pub use concurrency::{
    ConcurrencyLimiterConfig, ConcurrencyLimiterParameters, ConcurrencyRequestParameters,
    ConcurrencySchedulerConfig,
};
pub use policy::{
    validate_policies, ComponentConfig, PolicyConfig, MAX_COMPONENTS_PER_CONTROL_POINT,
    MAX_POLICIES,
};
pub use problems::{deserialize_section, join, ConfigError, FieldError, Problems};
pub use quota_scheduler::QuotaSchedulerConfig;
pub use rate_limiter::{
    LazySync, Override, RateLimiterConfig, RateLimiterParameters, RequestParameters,
};
pub use scheduler::{SchedulerConfig, WorkloadConfig, WorkloadParameters, DEFAULT_WORKLOAD};
pub use selector::{LabelMatcher, MatchExpression, Operator, Selector};

use serde_yaml_ng::{Mapping, Value};

/// Parses YAML text into the mapping at its top (an empty document is an empty mapping).
pub fn yaml_document(text: &str, origin: &str) -> Result<Mapping, ConfigError> {
    let value: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::one(origin, "", format!("not valid YAML: {e}")))?;
    match value {
        Value::Mapping(m) => Ok(m),
        Value::Null => Ok(Mapping::new()),
        _ => Err(ConfigError::one(
            origin,
            "",
            "the file must be a YAML mapping (policies:, server:, cluster:)",
        )),
    }
}

/// Whether a document is an Aperture blueprint values file (it has a `blueprint:` key).
pub fn is_blueprint(document: &Mapping) -> bool {
    document.contains_key("blueprint")
}

/// The policies of a config document whose other sections (named in `other_sections`,
/// e.g. `server`, `cluster`) the caller has already taken out: the `policies:` list, or the
/// one policy of a blueprint values file. Problems go to `problems`, with full paths.
pub fn policies_from_document(
    document: Mapping,
    other_sections: &[&str],
    problems: &mut Problems,
) -> Vec<PolicyConfig> {
    if is_blueprint(&document) {
        let policies: Vec<PolicyConfig> =
            blueprint::blueprint_policy(Value::Mapping(document), problems)
                .into_iter()
                .collect();
        validate_policies(&policies, |_| "policy".to_string(), problems);
        return policies;
    }
    let mut policies_value = None;
    for (key, value) in document {
        match key.as_str() {
            Some("policies") => policies_value = Some(value),
            _ => {
                let expected = std::iter::once("policies")
                    .chain(other_sections.iter().copied())
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let name = key
                    .as_str()
                    .map_or_else(|| format!("{key:?}"), str::to_string);
                problems.at(name, format!("unknown field (expected one of {expected})"));
            }
        }
    }
    let policies: Vec<PolicyConfig> = match policies_value {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => match deserialize_section(v, "policies") {
            Ok(p) => p,
            Err(e) => {
                problems.push(e);
                return Vec::new();
            }
        },
    };
    validate_policies(&policies, |i| format!("policies[{i}]"), problems);
    policies
}

/// Parses a document that holds only policies (`policies:` or a blueprint values file):
/// for tests, benchmarks and embedders that run no server.
pub fn parse_policies(text: &str, origin: &str) -> Result<Vec<PolicyConfig>, ConfigError> {
    let document = yaml_document(text, origin)?;
    let mut problems = Problems::new();
    let policies = policies_from_document(document, &[], &mut problems);
    problems.into_result(origin, policies)
}
