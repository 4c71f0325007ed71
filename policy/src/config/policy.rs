//! `policies:` — the list of Aperture-shaped policies, each a name and one component.

use super::problems::{join, Problems};
use super::rate_limiter::RateLimiterConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Most components one flow can meet (on one control point): a `CHECK_REPLY` carries their
/// outcomes with a one-byte count. Validation refuses a policy set that exceeds it, so a
/// check never takes tokens for a reply that could not be sent.
pub const MAX_COMPONENTS_PER_CONTROL_POINT: usize = 255;

/// One Aperture-shaped policy: a name and its rate limiter.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name, reported in every decision; with the component kind it is the
    /// component's identity across nodes and reloads.
    pub policy_name: String,
    /// The limiter.
    pub rate_limiter: RateLimiterConfig,
}

/// Checks a list of policies; `path_of(i)` names policy `i` in errors (`policies[3]`, or
/// `policy` in a blueprint values file).
pub fn validate_policies(
    policies: &[PolicyConfig],
    path_of: impl Fn(usize) -> String,
    problems: &mut Problems,
) {
    let mut names = HashSet::new();
    let mut per_control_point: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        let at = path_of(i);
        if p.policy_name.trim().is_empty() {
            problems.at(join(&at, "policy_name"), "must not be empty");
        } else if !names.insert(p.policy_name.as_str()) {
            problems.at(join(&at, "policy_name"), "duplicate policy name");
        }
        p.rate_limiter
            .validate(&join(&at, "rate_limiter"), problems);
        let control_points: HashSet<&str> = p
            .rate_limiter
            .selectors
            .iter()
            .map(|s| s.control_point.as_str())
            .collect();
        for cp in control_points {
            *per_control_point.entry(cp).or_default() += 1;
        }
    }
    for (cp, n) in per_control_point {
        if n > MAX_COMPONENTS_PER_CONTROL_POINT {
            problems.at(
                "policies",
                format!(
                    "{n} policies select control point {cp:?}; at most {MAX_COMPONENTS_PER_CONTROL_POINT} may (a decision reports each one)"
                ),
            );
        }
    }
}
