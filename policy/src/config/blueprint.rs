//! Aperture blueprint values files (`blueprint: rate-limiting/base`, `quota-scheduling/base`,
//! `concurrency-limiting/base`, `concurrency-scheduling/base`): one policy in Aperture's own
//! layout, accepted as-is — including the `components: []`, `resources:` and `alerter:`
//! entries that `aperturectl blueprints generate` writes.

use super::policy::PolicyConfig;
use super::problems::{deserialize_section, Problems};
use super::{
    ConcurrencyLimiterConfig, ConcurrencySchedulerConfig, QuotaSchedulerConfig, RateLimiterConfig,
};
use serde::Deserialize;

/// The blueprints Tollgate runs, with the component field each one fills.
pub const BLUEPRINTS: [(&str, &str); 4] = [
    ("rate-limiting/base", "rate_limiter"),
    ("quota-scheduling/base", "quota_scheduler"),
    ("concurrency-limiting/base", "concurrency_limiter"),
    ("concurrency-scheduling/base", "concurrency_scheduler"),
];

/// A blueprint values file, without the `server:` and `cluster:` sections (their owners
/// read those).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueprintFile {
    blueprint: String,
    /// Where the blueprint came from; informational.
    #[serde(default)]
    #[allow(dead_code)]
    uri: Option<String>,
    policy: BlueprintPolicy,
    /// Aperture's Grafana dashboard settings; Tollgate ships its own dashboard.
    #[serde(default)]
    #[allow(dead_code)]
    dashboard: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueprintPolicy {
    policy_name: String,
    #[serde(default)]
    rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    quota_scheduler: Option<QuotaSchedulerConfig>,
    #[serde(default)]
    concurrency_limiter: Option<ConcurrencyLimiterConfig>,
    #[serde(default)]
    concurrency_scheduler: Option<ConcurrencySchedulerConfig>,
    /// Aperture's extra circuit components; Tollgate runs none, so only `[]` is accepted.
    #[serde(default)]
    components: Option<Vec<serde_yaml_ng::Value>>,
    /// Aperture's classifiers and flux meters; only the empty default is accepted.
    #[serde(default)]
    resources: Option<Resources>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    #[serde(default)]
    flow_control: Option<FlowControlResources>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowControlResources {
    #[serde(default)]
    classifiers: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    flux_meters: Option<serde_yaml_ng::Value>,
}

/// The policy of a blueprint values file (the document minus other sections), or None
/// with the problems recorded.
pub fn blueprint_policy(
    document: serde_yaml_ng::Value,
    problems: &mut Problems,
) -> Option<PolicyConfig> {
    let file: BlueprintFile = match deserialize_section(document, "") {
        Ok(f) => f,
        Err(e) => {
            problems.push(e);
            return None;
        }
    };
    let Some(&(_, field)) = BLUEPRINTS.iter().find(|(name, _)| *name == file.blueprint) else {
        let known: Vec<&str> = BLUEPRINTS.iter().map(|(n, _)| *n).collect();
        problems.at(
            "blueprint",
            format!(
                "unsupported blueprint {:?} (Tollgate runs {})",
                file.blueprint,
                known.join(", ")
            ),
        );
        return None;
    };
    let p = file.policy;
    let mut ok = true;
    if p.components.as_ref().is_some_and(|c| !c.is_empty()) {
        problems.at(
            "policy.components",
            "not supported: Tollgate runs no extra circuit components (leave it [])",
        );
        ok = false;
    }
    if let Some(fc) = p.resources.and_then(|r| r.flow_control) {
        if !fc.classifiers.is_empty() || fc.flux_meters.is_some() {
            problems.at(
                "policy.resources",
                "not supported: Tollgate has no classifiers or flux meters (pass labels from the SDK)",
            );
            ok = false;
        }
    }
    let policy = PolicyConfig {
        policy_name: p.policy_name,
        rate_limiter: p.rate_limiter,
        quota_scheduler: p.quota_scheduler,
        concurrency_limiter: p.concurrency_limiter,
        concurrency_scheduler: p.concurrency_scheduler,
    };
    let present: Vec<&str> = policy.components().map(|c| c.field()).collect();
    if !present.contains(&field) {
        problems.at(format!("policy.{field}"), "missing");
        ok = false;
    }
    for other in present.iter().filter(|f| **f != field) {
        problems.at(
            format!("policy.{other}"),
            format!("not part of the {} blueprint", file.blueprint),
        );
        ok = false;
    }
    ok.then_some(policy)
}
