//! Engine + store behaviour on a virtual clock: the rules users rely on.

use std::sync::Arc;
use tollgate_policy::{
    parse_policies, Engine, FlowError, LocalLimiter, OutcomeKind, OwnedFlow, Tokens, TokensError,
};

const SEC: u64 = 1_000_000_000;

fn limiter(yaml: &str) -> LocalLimiter {
    let policies = parse_policies(yaml, "test").expect("valid config");
    LocalLimiter::new(Arc::new(Engine::new(&policies)))
}

fn flow(cp: &str, labels: &[(&str, &str)]) -> OwnedFlow {
    OwnedFlow {
        control_point: cp.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tokens: None,
    }
}

const FIVE_PER_USER: &str = r#"
policies:
  - policy_name: five
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 0
      parameters: { interval: 1s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: cost }
      overrides: [ { label_value: admin, limit_scale_factor: 2 } ]
      selectors: [ { control_point: checkout } ]
"#;

#[test]
fn exactly_capacity_admitted_per_key_and_keys_are_independent() {
    let mut l = limiter(FIVE_PER_USER);
    let alice: Vec<bool> = (0..8)
        .map(|_| {
            l.check(&flow("checkout", &[("user", "alice")]), 0)
                .unwrap()
                .accepted
        })
        .collect();
    assert_eq!(alice, [true, true, true, true, true, false, false, false]);
    assert!(
        l.check(&flow("checkout", &[("user", "bob")]), 0)
            .unwrap()
            .accepted
    );
    let d = l.check(&flow("checkout", &[("user", "alice")]), 0).unwrap();
    assert_eq!(d.limiters[0].kind, OutcomeKind::Rejected);
    assert_eq!(d.denied_status_code(l.engine()), Some(429));
}

#[test]
fn override_scales_capacity() {
    let mut l = limiter(FIVE_PER_USER);
    let admitted = (0..30)
        .filter(|_| {
            l.check(&flow("checkout", &[("user", "admin")]), 0)
                .unwrap()
                .accepted
        })
        .count();
    assert_eq!(admitted, 10);
}

#[test]
fn tokens_label_sets_the_cost_and_bad_values_are_errors() {
    let mut l = limiter(FIVE_PER_USER);
    let d = l
        .check(&flow("checkout", &[("user", "carol"), ("cost", "4")]), 0)
        .unwrap();
    assert!(d.accepted);
    assert_eq!(d.limiters[0].remaining, 1.0);
    assert!(
        !l.check(&flow("checkout", &[("user", "carol"), ("cost", "2")]), 0)
            .unwrap()
            .accepted
    );
    assert!(
        l.check(&flow("checkout", &[("user", "carol"), ("cost", "1")]), 0)
            .unwrap()
            .accepted
    );
    let err = l
        .check(&flow("checkout", &[("user", "carol"), ("cost", "lots")]), 0)
        .unwrap_err();
    assert!(matches!(err, FlowError::BadTokensLabel { .. }), "{err}");
}

/// A cost label can only take tokens: a negative, NaN, infinite or non-numeric value is
/// refused before any bucket is touched, so it can never refill an exhausted bucket.
#[test]
fn a_tokens_label_can_never_refill_a_bucket() {
    let mut l = limiter(FIVE_PER_USER);
    let alice = |cost: &str| flow("checkout", &[("user", "alice"), ("cost", cost)]);
    assert!(l.check(&alice("5"), 0).unwrap().accepted, "drain");
    for (bad, reason) in [
        ("-1000", TokensError::Negative),
        ("-1", TokensError::Negative),
        ("NaN", TokensError::NotFinite),
        ("inf", TokensError::NotFinite),
        ("-inf", TokensError::NotFinite),
        ("abc", TokensError::NotANumber),
    ] {
        match l.check(&alice(bad), 0) {
            Err(FlowError::BadTokensLabel { reason: r, .. }) => assert_eq!(r, reason, "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let d = l.check(&alice("1"), 0).unwrap();
    assert!(!d.accepted, "still exhausted");
    assert_eq!(d.limiters[0].current, 0.0);
}

#[test]
fn explicit_tokens_override_the_label() {
    let mut l = limiter(FIVE_PER_USER);
    let mut f = flow("checkout", &[("user", "dave"), ("cost", "1")]);
    f.tokens = Some(Tokens::new(5.0).unwrap());
    assert!(l.check(&f, 0).unwrap().accepted);
    assert!(!l.check(&f, 0).unwrap().accepted);
}

#[test]
fn missing_limit_label_is_accepted_with_key_not_found() {
    let mut l = limiter(FIVE_PER_USER);
    for _ in 0..10 {
        let d = l.check(&flow("checkout", &[("tier", "x")]), 0).unwrap();
        assert!(d.accepted);
        assert_eq!(d.limiters[0].kind, OutcomeKind::KeyNotFound);
    }
}

#[test]
fn other_control_points_are_not_limited() {
    let mut l = limiter(FIVE_PER_USER);
    let d = l.check(&flow("search", &[("user", "alice")]), 0).unwrap();
    assert!(d.accepted && d.limiters.is_empty());
}

#[test]
fn label_matchers_select_flows() {
    let mut l = limiter(
        r#"
policies:
  - policy_name: eu_premium
    rate_limiter:
      bucket_capacity: 1
      fill_amount: 0
      parameters: { interval: 1s }
      selectors:
        - control_point: checkout
          label_matcher:
            match_labels: { region: eu }
            match_expressions: [ { key: tier, operator: In, values: [premium] } ]
"#,
    );
    let eu_premium = flow("checkout", &[("region", "eu"), ("tier", "premium")]);
    let us_premium = flow("checkout", &[("region", "us"), ("tier", "premium")]);
    assert!(l.check(&eu_premium, 0).unwrap().accepted);
    assert!(
        !l.check(&eu_premium, 0).unwrap().accepted,
        "shared bucket of 1"
    );
    for _ in 0..5 {
        let d = l.check(&us_premium, 0).unwrap();
        assert!(d.accepted && d.limiters.is_empty());
    }
}

#[test]
fn first_rejection_wins_and_other_limiters_get_their_tokens_back() {
    let mut l = limiter(
        r#"
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 10
      fill_amount: 0
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: api } ]
  - policy_name: global
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 0
      parameters: { interval: 1s }
      selectors: [ { control_point: api } ]
"#,
    );
    let f = flow("api", &[("user", "erin")]);
    assert!(l.check(&f, 0).unwrap().accepted);
    assert!(l.check(&f, 0).unwrap().accepted);
    let d = l.check(&f, 0).unwrap();
    assert!(!d.accepted);
    assert_eq!(d.limiters[0].kind, OutcomeKind::Returned);
    assert_eq!(d.limiters[1].kind, OutcomeKind::Rejected);
    // per_user spent only the two admitted tokens.
    assert_eq!(d.limiters[0].remaining, 8.0);
}

#[test]
fn refill_on_the_virtual_clock() {
    let mut l = limiter(
        r#"
policies:
  - policy_name: p
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 1
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: cp } ]
"#,
    );
    let f = flow("cp", &[("user", "u")]);
    assert!(l.check(&f, 0).unwrap().accepted);
    assert!(l.check(&f, 0).unwrap().accepted);
    let d = l.check(&f, 0).unwrap();
    assert!(!d.accepted);
    assert_eq!(d.wait_ns, SEC);
    assert!(!l.check(&f, SEC - 1).unwrap().accepted);
    assert!(l.check(&f, SEC).unwrap().accepted);
}

#[test]
fn idle_buckets_are_evicted() {
    let mut l = limiter(
        r#"
policies:
  - policy_name: p
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 1
      parameters: { interval: 1s, limit_by_label_key: user, max_idle_time: 10s }
      selectors: [ { control_point: cp } ]
"#,
    );
    for i in 0..100 {
        l.check(&flow("cp", &[("user", &format!("u{i}"))]), 0)
            .unwrap();
    }
    l.check(&flow("cp", &[("user", "late")]), 8 * SEC).unwrap();
    assert_eq!(l.evict_idle(11 * SEC), 100);
    assert_eq!(l.store_mut().len(), 1, "the recently used bucket stays");
}
