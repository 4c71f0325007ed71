//! The compiled policy set: which limiters a flow meets, with which bucket keys and costs.
//!
//! The engine is immutable once built and shared by every shard. Planning (selectors,
//! keys, token costs) is separate from taking (bucket state, owned by a shard's
//! [`BucketStore`](crate::store::BucketStore)), because the buckets of one flow may live on
//! different shards: the server plans where the request arrives and takes where each
//! bucket lives.

use crate::bucket::BucketParams;
use crate::config::PolicyConfig;
use crate::decision::Decision;
use crate::identity::{ComponentKind, Digest, DigestWriter, LimiterId, Resolution, Stage};
use crate::limiter::LimiterSpec;
use crate::tokens::{Tokens, TokensError};
use crate::workload::WorkloadPick;
use crate::Labels;
use hashbrown::HashMap;
use smallvec::SmallVec;

/// A flow that failed before any bucket was touched.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FlowError {
    /// The tokens label is not a usable cost.
    #[error("label {key:?} (the tokens label of policy {policy:?}) {reason}, got {value:?}")]
    BadTokensLabel {
        /// The tokens label key.
        key: String,
        /// What the flow carried.
        value: String,
        /// The policy whose tokens label it is.
        policy: String,
        /// Why it is not a cost.
        reason: TokensError,
    },
}

/// One bucket a flow must take from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannedTake<'a> {
    /// Which limiter.
    pub limiter: LimiterId,
    /// Its kind (which says its stage, and whether the flow holds its tokens in flight).
    pub kind: ComponentKind,
    /// The bucket key (the limit label's value, "" for a shared bucket); None when the
    /// flow lacks the limit label (accepted with reason key-not-found, nothing taken).
    pub key: Option<&'a str>,
    /// Token cost for this limiter.
    pub tokens: Tokens,
    /// Schedulers: the flow's workload, priority and fairness key.
    pub workload: Option<WorkloadPick<'a>>,
}

impl PlannedTake<'_> {
    /// When this take decides within the check.
    pub fn stage(&self) -> Stage {
        self.kind.stage()
    }
}

/// The buckets of one flow, in limiter order. Inline for the common 1-4 limiters.
pub type Plan<'a> = SmallVec<[PlannedTake<'a>; 4]>;

/// A flow with owned strings, for callers that cross threads (the gRPC bridge).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnedFlow {
    /// The control point.
    pub control_point: String,
    /// Flow labels.
    pub labels: Vec<(String, String)>,
    /// Explicit cost for every limiter; None = each limiter's tokens label, default 1.
    pub tokens: Option<Tokens>,
}

/// An [`OwnedFlow`] after its check: the decision (or why the flow could not be judged),
/// with the flow itself handed back. The caller built the flow by moving its request's
/// strings in; it takes them back for its answer, and frees them on the thread that made
/// them, instead of copying them before the check.
#[derive(Debug)]
pub struct Checked {
    /// The flow, as it was checked.
    pub flow: OwnedFlow,
    /// Its decision, or why it could not be judged (nothing was taken then).
    pub decision: Result<Decision, FlowError>,
}

/// Marks "no limiter" in [`Engine`]'s id -> position table.
const ABSENT: u32 = u32::MAX;

/// The compiled policy set. `Clone` so a shard can hold its own copy (see
/// [`Engine::with_bucket_params`]).
#[derive(Clone, Debug, Default)]
pub struct Engine {
    /// In policy order (a limiter's `position`).
    limiters: Vec<LimiterSpec>,
    /// LimiterId -> position, [`ABSENT`] for ids of limiters this engine does not have.
    position_of: Vec<u32>,
    /// Identity (name, kind) -> id, for successors.
    by_identity: HashMap<(String, ComponentKind), LimiterId>,
    /// Policy name -> id, for peers (names are unique in a config).
    by_name: HashMap<String, LimiterId>,
    /// control point -> limiters with a selector on it (each listed once).
    by_control_point: HashMap<String, SmallVec<[LimiterId; 4]>>,
    /// Distinct limit label keys, in policy order: what a version-1 shard-aware client hashes.
    routing_label_keys: Vec<String>,
    /// control point -> the distinct limit label keys of its limiters, in policy order: what
    /// routes its flows (binary protocol version 2, the gRPC bridge).
    routing_keys_by_control_point: HashMap<String, Vec<String>>,
    /// Digest of the whole set (every limiter's name and digest, in name order).
    digest: Digest,
    /// Limiters the previous engine had and this one does not (a reload removed them), so
    /// a decision made just before the switch can still be described ([`Engine::describe`]).
    retired: HashMap<LimiterId, LimiterSpec>,
}

/// Why [`Engine::with_bucket_params`] refused a limit change.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LimitChangeError {
    /// These policies have no such limiter (a reload removed it).
    #[error("these policies have no limiter {0:?}")]
    NoLimiter(LimiterId),
    /// A key override would make the new limits an infinite or an empty bucket.
    #[error(
        "the override for label value {label_value:?} (limit_scale_factor {factor}): {problem}"
    )]
    Override {
        /// The override's label value.
        label_value: String,
        /// Its limit_scale_factor.
        factor: f64,
        /// Why the scaled bucket is not a bucket.
        problem: &'static str,
    },
}

impl Engine {
    /// Compiles validated policies (see [`crate::config::parse_policies`]).
    pub fn new(policies: &[PolicyConfig]) -> Engine {
        Engine::build(policies, None)
    }

    /// Compiles `policies` as the next version of this engine: a limiter whose identity
    /// (policy name and kind) is unchanged keeps its [`LimiterId`], so its buckets carry
    /// over; new limiters get ids never used by this engine's line.
    pub fn successor(&self, policies: &[PolicyConfig]) -> Engine {
        Engine::build(policies, Some(self))
    }

    /// This engine with limiter `id`'s bucket parameters replaced (a runtime limit
    /// change). Everything else stays: ids, identities, digests, selectors, key overrides
    /// (applied to the new values), so existing buckets, replicas and clients see the same
    /// limiter, now with other limits. Refused when this engine has no limiter `id`, or
    /// when a key override would scale `params` to an infinite or empty bucket (the rule
    /// the policy file is held to).
    pub fn with_bucket_params(
        &self,
        id: LimiterId,
        params: BucketParams,
    ) -> Result<Engine, LimitChangeError> {
        let position = self
            .position_of
            .get(id.0 as usize)
            .copied()
            .filter(|&p| p != ABSENT)
            .ok_or(LimitChangeError::NoLimiter(id))?;
        let spec = &self.limiters[position as usize];
        if let Some((label_value, factor, problem)) = spec.override_problem(&params) {
            return Err(LimitChangeError::Override {
                label_value: label_value.to_owned(),
                factor,
                problem,
            });
        }
        let mut next = self.clone();
        next.limiters[position as usize].params = params;
        Ok(next)
    }

    fn build(policies: &[PolicyConfig], previous: Option<&Engine>) -> Engine {
        let mut engine = Engine::default();
        let mut next_id = previous.map_or(0, |p| p.position_of.len() as u32);
        for (position, p) in policies.iter().enumerate() {
            let position = u16::try_from(position).unwrap_or(u16::MAX);
            // A placeholder id until the identity is known; replaced below.
            let Some(mut spec) = LimiterSpec::compile(p, LimiterId(u32::MAX), position) else {
                continue;
            };
            let identity = (p.policy_name.clone(), spec.kind);
            let id = match previous.and_then(|prev| prev.by_identity.get(&identity)) {
                Some(&id) => id,
                None => {
                    let id = LimiterId(next_id);
                    next_id += 1;
                    id
                }
            };
            spec.id = id;
            for sel in &spec.selectors {
                let ids = engine
                    .by_control_point
                    .entry(sel.control_point.clone())
                    .or_default();
                if !ids.contains(&id) {
                    ids.push(id);
                }
                let keys = engine
                    .routing_keys_by_control_point
                    .entry(sel.control_point.clone())
                    .or_default();
                if let Some(key) = &spec.limit_by_label_key {
                    if !keys.contains(key) {
                        keys.push(key.clone());
                    }
                }
            }
            if let Some(key) = &spec.limit_by_label_key {
                if !engine.routing_label_keys.contains(key) {
                    engine.routing_label_keys.push(key.clone());
                }
            }
            engine.by_identity.insert(identity, id);
            engine.by_name.insert(p.policy_name.clone(), id);
            engine.limiters.push(spec);
        }
        engine.position_of = vec![ABSENT; next_id as usize];
        for (position, spec) in engine.limiters.iter().enumerate() {
            engine.position_of[spec.id.0 as usize] = position as u32;
        }
        let mut named: Vec<(&str, Digest)> = engine
            .limiters
            .iter()
            .map(|l| (l.policy_name.as_str(), l.digest))
            .collect();
        named.sort();
        let mut w = DigestWriter::new();
        for (name, digest) in named {
            w.str(name).u64(digest.0);
        }
        engine.digest = w.finish();
        if let Some(prev) = previous {
            engine.retired = prev
                .limiters
                .iter()
                .filter(|l| engine.get_limiter(l.id).is_none())
                .map(|l| (l.id, l.clone()))
                .collect();
        }
        engine
    }

    /// Every limiter, in policy order.
    pub fn limiters(&self) -> &[LimiterSpec] {
        &self.limiters
    }

    /// One limiter. Panics on an id this engine does not have: use it only with ids from
    /// this engine's own plans; ids that arrive later or from elsewhere go through
    /// [`Engine::get_limiter`].
    pub fn limiter(&self, id: LimiterId) -> &LimiterSpec {
        &self.limiters[self.position_of[id.0 as usize] as usize]
    }

    /// One limiter as this engine or, when a reload has just removed it, its predecessor
    /// defined it: for describing a decision made before the switch (names, status codes,
    /// reply positions). None for ids neither knows.
    pub fn describe(&self, id: LimiterId) -> Option<&LimiterSpec> {
        self.get_limiter(id).or_else(|| self.retired.get(&id))
    }

    /// One limiter, if this engine has it.
    pub fn get_limiter(&self, id: LimiterId) -> Option<&LimiterSpec> {
        let position = *self.position_of.get(id.0 as usize)?;
        self.limiters.get(position as usize)
    }

    /// The limiter a peer names by policy name and definition digest.
    pub fn resolve(&self, policy_name: &str, digest: Digest) -> Resolution {
        let Some(&id) = self.by_name.get(policy_name) else {
            return Resolution::Unknown;
        };
        let ours = self.limiter(id).digest;
        if ours == digest {
            Resolution::Local(id)
        } else {
            Resolution::DefinitionDiffers { ours }
        }
    }

    /// A digest of the whole policy set: equal on nodes that run the same limiters
    /// (whatever the order of their `policies:` lists).
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The distinct limit label keys, in policy order. A flow is routed by the value of
    /// the first of these it carries (see the protocol crate's `routing`).
    pub fn routing_label_keys(&self) -> &[String] {
        &self.routing_label_keys
    }

    /// The label keys that route a flow of `control_point`: the distinct limit label keys of
    /// the limiters selected on it, in policy order (empty for a control point without keyed
    /// limiters, or without limiters). A flow goes to the shard of the first of these it
    /// carries, `""` if none (see the protocol crate's `routing::RoutingKeys`).
    pub fn routing_label_keys_for(&self, control_point: &str) -> &[String] {
        self.routing_keys_by_control_point
            .get(control_point)
            .map_or(&[], Vec::as_slice)
    }

    /// Every control point with a limiter, with [`Engine::routing_label_keys_for`] it, in no
    /// particular order (`HELLO_REPLY.control_point_routing`).
    pub fn control_point_routing(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.routing_keys_by_control_point
            .iter()
            .map(|(cp, keys)| (cp.as_str(), keys.as_slice()))
    }

    /// The buckets a flow must take from: every limiter with a selector matching the
    /// control point and labels, in limiter order.
    pub fn plan<'a, L: Labels + ?Sized>(
        &self,
        control_point: &str,
        labels: &'a L,
        tokens: Option<Tokens>,
    ) -> Result<Plan<'a>, FlowError> {
        let mut plan = Plan::new();
        self.plan_into(control_point, labels, tokens, &mut plan)?;
        Ok(plan)
    }

    /// [`Engine::plan`] into `plan` (emptied first), for the hot paths: a [`Plan`] holds its
    /// takes inline (456 bytes), and returning one by value copied it two or three times per
    /// check on its way into the caller's frame.
    pub fn plan_into<'a, L: Labels + ?Sized>(
        &self,
        control_point: &str,
        labels: &'a L,
        tokens: Option<Tokens>,
        plan: &mut Plan<'a>,
    ) -> Result<(), FlowError> {
        plan.clear();
        let Some(ids) = self.by_control_point.get(control_point) else {
            return Ok(());
        };
        for &id in ids {
            let spec = self.limiter(id);
            let selected = spec
                .selectors
                .iter()
                .any(|s| s.control_point == control_point && s.matches_labels(labels));
            if !selected {
                continue;
            }
            let key = match &spec.limit_by_label_key {
                Some(k) => labels.get(k),
                None => Some(""),
            };
            let workload = spec.scheduler.as_ref().map(|s| s.pick(labels));
            let default = workload.map_or(Tokens::ONE, |w| {
                Tokens::new(w.workload_tokens).unwrap_or(Tokens::ONE)
            });
            let tokens = match tokens {
                Some(t) => t,
                None => token_label(spec, labels)?.unwrap_or(default),
            };
            plan.push(PlannedTake {
                limiter: id,
                kind: spec.kind,
                key,
                tokens,
                workload,
            });
        }
        Ok(())
    }
}

/// The cost the flow's tokens label gives, None when the limiter has no tokens label or
/// the flow does not carry it.
fn token_label<L: Labels + ?Sized>(
    spec: &LimiterSpec,
    labels: &L,
) -> Result<Option<Tokens>, FlowError> {
    let Some(key) = &spec.tokens_label_key else {
        return Ok(None);
    };
    let Some(value) = labels.get(key) else {
        return Ok(None);
    };
    Tokens::parse(value)
        .map(Some)
        .map_err(|reason| FlowError::BadTokensLabel {
            key: key.clone(),
            value: value.to_string(),
            policy: spec.policy_name.clone(),
            reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_policies;

    fn policies(names_and_capacity: &[(&str, f64)]) -> Vec<PolicyConfig> {
        let mut yaml = String::from("policies:\n");
        for (name, capacity) in names_and_capacity {
            yaml.push_str(&format!(
                "  - policy_name: {name}\n    rate_limiter: {{ bucket_capacity: {capacity}, fill_amount: 1, parameters: {{ interval: 1s, limit_by_label_key: user }}, selectors: [ {{ control_point: cp }} ] }}\n"
            ));
        }
        parse_policies(&yaml, "test").expect("valid")
    }

    #[test]
    fn a_limit_change_is_held_to_the_key_overrides_rule() {
        let yaml = "policies:
  - policy_name: p
    rate_limiter: { bucket_capacity: 10, fill_amount: 1, parameters: { interval: 1s, limit_by_label_key: user }, selectors: [ { control_point: cp } ], overrides: [ { label_value: vip, limit_scale_factor: 10 }, { label_value: tiny, limit_scale_factor: 1e-300 } ] }
";
        let engine = Engine::new(&parse_policies(yaml, "test").expect("valid"));
        let id = engine.limiters()[0].id;
        let base = engine.limiter(id).params;
        let huge = BucketParams {
            capacity: 1e308,
            ..base
        };
        assert_eq!(
            engine.with_bucket_params(id, huge).err(),
            Some(LimitChangeError::Override {
                label_value: "vip".into(),
                factor: 10.0,
                problem: "bucket_capacity or fill_amount times this factor is not a finite number",
            })
        );
        let fill = BucketParams {
            fill_amount: 1e308,
            ..base
        };
        assert!(
            engine.with_bucket_params(id, fill).is_err(),
            "an infinite fill"
        );
        let small = BucketParams {
            capacity: 1e-30,
            ..base
        };
        let refused = engine.with_bucket_params(id, small).err();
        assert!(
            matches!(&refused, Some(LimitChangeError::Override { label_value, .. }) if label_value == "tiny"),
            "{refused:?}"
        );
        let fine = BucketParams {
            capacity: 20.0,
            ..base
        };
        let changed = engine
            .with_bucket_params(id, fine)
            .expect("a bucket for every key");
        assert_eq!(changed.limiter(id).params_for("vip").capacity, 200.0);
    }

    #[test]
    fn routing_keys_are_per_control_point() {
        let yaml = "policies:
  - policy_name: per_user
    rate_limiter: { bucket_capacity: 5, fill_amount: 1, parameters: { interval: 1s, limit_by_label_key: user }, selectors: [ { control_point: api } ] }
  - policy_name: per_tenant
    rate_limiter: { bucket_capacity: 5, fill_amount: 1, parameters: { interval: 1s, limit_by_label_key: tenant }, selectors: [ { control_point: db }, { control_point: api } ] }
  - policy_name: shared
    rate_limiter: { bucket_capacity: 5, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: open } ] }
";
        let engine = Engine::new(&parse_policies(yaml, "test").expect("valid"));
        assert_eq!(engine.routing_label_keys(), ["user", "tenant"]);
        assert_eq!(engine.routing_label_keys_for("api"), ["user", "tenant"]);
        assert_eq!(engine.routing_label_keys_for("db"), ["tenant"]);
        assert!(engine.routing_label_keys_for("open").is_empty());
        assert!(engine.routing_label_keys_for("nowhere").is_empty());
        let mut listed: Vec<(&str, &[String])> = engine.control_point_routing().collect();
        listed.sort();
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].0, "api");
        assert_eq!(listed[1], ("db", &["tenant".to_string()][..]));
        assert_eq!(listed[2].0, "open");
    }

    #[test]
    fn plan_into_empties_the_plan_first_and_equals_plan() {
        let engine = Engine::new(&policies(&[("a", 5.0), ("b", 7.0)]));
        let labels = [("user", "u1")];
        let want = engine.plan("cp", &labels[..], None).expect("plans");
        assert_eq!(want.len(), 2);
        // A reused plan holding another check's takes: replaced, not appended to.
        let mut plan = want.clone();
        engine
            .plan_into("cp", &labels[..], None, &mut plan)
            .expect("plans");
        assert_eq!(plan, want);
        engine
            .plan_into("elsewhere", &labels[..], None, &mut plan)
            .expect("plans");
        assert!(plan.is_empty());
    }

    #[test]
    fn new_bucket_params_change_one_limiter_and_nothing_else() {
        let old = Engine::new(&policies(&[("a", 5.0), ("b", 7.0)]));
        let a = old.limiters()[0].id;
        let params = BucketParams {
            capacity: 50.0,
            ..old.limiter(a).params
        };
        let new = old.with_bucket_params(a, params).expect("a exists");
        assert_eq!(new.limiter(a).params.capacity, 50.0);
        assert_eq!(new.limiter(a).digest, old.limiter(a).digest, "same limiter");
        assert_eq!(new.digest(), old.digest());
        assert_eq!(new.limiters()[1].params, old.limiters()[1].params);
        assert_eq!(
            old.limiter(a).params.capacity,
            5.0,
            "the old engine is untouched"
        );
        assert_eq!(
            old.with_bucket_params(LimiterId(99), params).err(),
            Some(LimitChangeError::NoLimiter(LimiterId(99)))
        );
    }

    #[test]
    fn identity_does_not_depend_on_list_order() {
        let ab = Engine::new(&policies(&[("a", 5.0), ("b", 7.0)]));
        let ba = Engine::new(&policies(&[("b", 7.0), ("a", 5.0)]));
        assert_eq!(ab.digest(), ba.digest());
        for spec in ab.limiters() {
            match ba.resolve(&spec.policy_name, spec.digest) {
                Resolution::Local(id) => {
                    assert_eq!(ba.limiter(id).policy_name, spec.policy_name);
                    assert_eq!(ba.limiter(id).params, spec.params);
                }
                other => panic!("{}: {other:?}", spec.policy_name),
            }
        }
    }

    #[test]
    fn a_changed_definition_or_a_missing_policy_does_not_resolve() {
        let ours = Engine::new(&policies(&[("a", 5.0), ("b", 7.0)]));
        let theirs = Engine::new(&policies(&[("a", 6.0), ("c", 7.0)]));
        let a = &theirs.limiters()[0];
        assert_eq!(
            ours.resolve("a", a.digest),
            Resolution::DefinitionDiffers {
                ours: ours.limiters()[0].digest
            }
        );
        assert_eq!(
            ours.resolve("c", theirs.limiters()[1].digest),
            Resolution::Unknown
        );
        assert_ne!(ours.digest(), theirs.digest());
    }

    #[test]
    fn a_successor_keeps_ids_of_unchanged_identities() {
        let first = Engine::new(&policies(&[("a", 5.0), ("b", 7.0)]));
        let next = first.successor(&policies(&[("c", 1.0), ("b", 9.0)]));
        let id = |e: &Engine, name: &str| {
            e.limiters()
                .iter()
                .find(|l| l.policy_name == name)
                .map(|l| l.id)
        };
        assert_eq!(
            id(&first, "b"),
            id(&next, "b"),
            "b keeps its id, new capacity"
        );
        assert_eq!(next.limiter(id(&next, "b").unwrap()).params.capacity, 9.0);
        let a = id(&first, "a").unwrap();
        assert!(next.get_limiter(a).is_none(), "a is gone");
        let c = id(&next, "c").unwrap();
        assert!(c != a && c != id(&first, "b").unwrap(), "c gets a fresh id");
        assert_eq!(next.limiter(c).position, 0);
    }
}
