//! `policies:` — the list of Aperture-shaped policies, each a name and one component.

use super::concurrency::{ConcurrencyLimiterConfig, ConcurrencySchedulerConfig};
use super::problems::{check_name_len, join, Problems};
use super::quota_scheduler::QuotaSchedulerConfig;
use super::rate_limiter::RateLimiterConfig;
use super::selector::Selector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// Most components one flow can meet (on one control point): a `CHECK_REPLY` carries their
/// outcomes with a one-byte count. Validation refuses a policy set that exceeds it, so a
/// check never takes tokens for a reply that could not be sent.
pub const MAX_COMPONENTS_PER_CONTROL_POINT: usize = 255;

/// Most policies in one config: `HELLO_REPLY` lists their names with a 16-bit count.
pub const MAX_POLICIES: usize = u16::MAX as usize;

/// One Aperture-shaped policy: a name and exactly one component.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique name, reported in every decision; with the component kind it is the
    /// component's identity across nodes and reloads.
    pub policy_name: String,
    /// A rate limiter: a token bucket per label value; answers at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// A quota scheduler: a token bucket whose flows wait, by priority, for tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_scheduler: Option<QuotaSchedulerConfig>,
    /// A concurrency limiter: at most N tokens in flight; refuses at once beyond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limiter: Option<ConcurrencyLimiterConfig>,
    /// A concurrency scheduler: at most N tokens in flight; flows wait, by priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_scheduler: Option<ConcurrencySchedulerConfig>,
}

/// The one component of a policy.
#[derive(Clone, Copy, Debug)]
pub enum ComponentConfig<'a> {
    /// `rate_limiter:`.
    RateLimiter(&'a RateLimiterConfig),
    /// `quota_scheduler:`.
    QuotaScheduler(&'a QuotaSchedulerConfig),
    /// `concurrency_limiter:`.
    ConcurrencyLimiter(&'a ConcurrencyLimiterConfig),
    /// `concurrency_scheduler:`.
    ConcurrencyScheduler(&'a ConcurrencySchedulerConfig),
}

impl<'a> ComponentConfig<'a> {
    /// Its field name in a policy.
    pub fn field(&self) -> &'static str {
        match self {
            ComponentConfig::RateLimiter(_) => "rate_limiter",
            ComponentConfig::QuotaScheduler(_) => "quota_scheduler",
            ComponentConfig::ConcurrencyLimiter(_) => "concurrency_limiter",
            ComponentConfig::ConcurrencyScheduler(_) => "concurrency_scheduler",
        }
    }

    /// Its selectors.
    pub fn selectors(&self) -> &'a [Selector] {
        match self {
            ComponentConfig::RateLimiter(c) => &c.selectors,
            ComponentConfig::QuotaScheduler(c) => &c.selectors,
            ComponentConfig::ConcurrencyLimiter(c) => &c.selectors,
            ComponentConfig::ConcurrencyScheduler(c) => &c.selectors,
        }
    }

    fn validate(&self, at: &str, problems: &mut Problems) {
        match self {
            ComponentConfig::RateLimiter(c) => c.validate(at, problems),
            ComponentConfig::QuotaScheduler(c) => c.validate(at, problems),
            ComponentConfig::ConcurrencyLimiter(c) => c.validate(at, problems),
            ComponentConfig::ConcurrencyScheduler(c) => c.validate(at, problems),
        }
    }
}

impl PolicyConfig {
    /// A policy with one rate limiter.
    pub fn rate_limiter(policy_name: impl Into<String>, rl: RateLimiterConfig) -> PolicyConfig {
        PolicyConfig {
            policy_name: policy_name.into(),
            rate_limiter: Some(rl),
            quota_scheduler: None,
            concurrency_limiter: None,
            concurrency_scheduler: None,
        }
    }

    /// Every component the policy names (a valid policy names exactly one).
    pub fn components(&self) -> impl Iterator<Item = ComponentConfig<'_>> {
        let rl = self.rate_limiter.as_ref().map(ComponentConfig::RateLimiter);
        let qs = self
            .quota_scheduler
            .as_ref()
            .map(ComponentConfig::QuotaScheduler);
        let cl = self
            .concurrency_limiter
            .as_ref()
            .map(ComponentConfig::ConcurrencyLimiter);
        let cs = self
            .concurrency_scheduler
            .as_ref()
            .map(ComponentConfig::ConcurrencyScheduler);
        rl.into_iter().chain(qs).chain(cl).chain(cs)
    }

    /// The policy's component. Call only on a validated policy (exactly one).
    pub fn component(&self) -> Option<ComponentConfig<'_>> {
        self.components().next()
    }
}

/// Checks a list of policies; `path_of(i)` names policy `i` in errors (`policies[3]`, or
/// `policy` in a blueprint values file).
pub fn validate_policies(
    policies: &[PolicyConfig],
    path_of: impl Fn(usize) -> String,
    problems: &mut Problems,
) {
    if policies.len() > MAX_POLICIES {
        problems.at(
            "policies",
            format!(
                "{} policies; at most {MAX_POLICIES} are allowed",
                policies.len()
            ),
        );
    }
    let mut names = HashSet::new();
    let mut per_control_point: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in policies.iter().enumerate() {
        let at = path_of(i);
        if p.policy_name.trim().is_empty() {
            problems.at(join(&at, "policy_name"), "must not be empty");
        } else if !names.insert(p.policy_name.as_str()) {
            problems.at(join(&at, "policy_name"), "duplicate policy name");
        }
        check_name_len(&p.policy_name, || join(&at, "policy_name"), problems);
        let components: Vec<ComponentConfig<'_>> = p.components().collect();
        match components.as_slice() {
            [] => problems.at(
                at.clone(),
                "needs one component: rate_limiter, quota_scheduler, concurrency_limiter or concurrency_scheduler",
            ),
            [one] => {
                one.validate(&join(&at, one.field()), problems);
                let control_points: HashSet<&str> = one
                    .selectors()
                    .iter()
                    .map(|s| s.control_point.as_str())
                    .collect();
                for cp in control_points {
                    *per_control_point.entry(cp).or_default() += 1;
                }
            }
            [_, second, ..] => problems.at(
                join(&at, second.field()),
                "a policy has one component: put this one in a policy of its own",
            ),
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
