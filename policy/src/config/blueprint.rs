//! Aperture blueprint values files (`blueprint: rate-limiting/base`): one policy in
//! Aperture's own layout, accepted as-is.

use super::policy::PolicyConfig;
use super::problems::{deserialize_section, Problems};
use super::rate_limiter::RateLimiterConfig;
use serde::Deserialize;

/// The blueprint Tollgate runs.
pub const RATE_LIMITING_BLUEPRINT: &str = "rate-limiting/base";

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
    /// Aperture's Grafana dashboard settings; Tollgate has none, accepted and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    dashboard: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlueprintPolicy {
    policy_name: String,
    rate_limiter: RateLimiterConfig,
    /// Aperture's extra circuit components; Tollgate runs none of them.
    #[serde(default)]
    components: Option<serde_yaml_ng::Value>,
    /// Aperture's classifiers/flux meters; not supported.
    #[serde(default)]
    resources: Option<serde_yaml_ng::Value>,
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
    if file.blueprint != RATE_LIMITING_BLUEPRINT {
        problems.at(
            "blueprint",
            format!(
                "unsupported blueprint {:?} (Tollgate runs {RATE_LIMITING_BLUEPRINT:?})",
                file.blueprint
            ),
        );
        return None;
    }
    let mut ok = true;
    if file.policy.components.is_some() {
        problems.at(
            "policy.components",
            "not supported: Tollgate runs only the rate limiter",
        );
        ok = false;
    }
    if file.policy.resources.is_some() {
        problems.at(
            "policy.resources",
            "not supported: Tollgate has no classifiers or flux meters",
        );
        ok = false;
    }
    ok.then_some(PolicyConfig {
        policy_name: file.policy.policy_name,
        rate_limiter: file.policy.rate_limiter,
    })
}
