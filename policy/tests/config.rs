#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Policy validation: rules that protect the decision path from a config that passes
//! serde but cannot work.

use tollgate_policy::config::MAX_COMPONENTS_PER_CONTROL_POINT;
use tollgate_policy::parse_policies;

fn errors_of(text: &str) -> Vec<String> {
    parse_policies(text, "test.yaml")
        .unwrap_err()
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect()
}

fn policy(name: &str, control_point: &str) -> String {
    format!(
        "  - policy_name: {name}\n    rate_limiter: {{ bucket_capacity: 1, fill_amount: 1, parameters: {{ interval: 1s }}, selectors: [ {{ control_point: {control_point} }} ] }}\n"
    )
}

#[test]
fn too_many_policies_on_one_control_point_are_refused() {
    let mut yaml = String::from("policies:\n");
    for i in 0..MAX_COMPONENTS_PER_CONTROL_POINT {
        yaml.push_str(&policy(&format!("p{i}"), "busy"));
    }
    assert!(parse_policies(&yaml, "t").is_ok(), "255 fit a reply");
    yaml.push_str(&policy("one_more", "busy"));
    yaml.push_str(&policy("elsewhere", "quiet"));
    assert_eq!(
        errors_of(&yaml),
        vec![
            r#"policies: 256 policies select control point "busy"; at most 255 may (a decision reports each one)"#
        ]
    );
}

#[test]
fn an_override_that_overflows_the_bucket_is_refused() {
    let yaml = r#"
policies:
  - policy_name: huge
    rate_limiter:
      bucket_capacity: 1e308
      fill_amount: 1
      parameters: { interval: 1s, limit_by_label_key: user }
      overrides: [ { label_value: vip, limit_scale_factor: 10 } ]
      selectors: [ { control_point: c } ]
"#;
    assert_eq!(
        errors_of(yaml),
        vec!["policies[0].rate_limiter.overrides[0].limit_scale_factor: bucket_capacity or fill_amount times this factor is not a finite number"]
    );
}

#[test]
fn non_finite_bucket_numbers_are_refused() {
    let yaml = "policies: [ { policy_name: p, rate_limiter: { bucket_capacity: .inf, fill_amount: .nan, parameters: { interval: 1s }, selectors: [ { control_point: c } ] } } ]";
    assert_eq!(
        errors_of(yaml),
        vec![
            "policies[0].rate_limiter.bucket_capacity: must be a finite number greater than 0",
            "policies[0].rate_limiter.fill_amount: must be a finite number, 0 or more",
        ]
    );
}

#[test]
fn an_unknown_top_level_key_is_named() {
    assert_eq!(
        errors_of("polices: []"),
        vec!["polices: unknown field (expected one of `policies`)"]
    );
}

#[test]
fn a_blueprint_values_file_gives_one_policy() {
    let text = r#"
blueprint: rate-limiting/base
uri: github.com/fluxninja/aperture/blueprints@latest
policy:
  policy_name: api_limit
  rate_limiter:
    bucket_capacity: 40
    fill_amount: 2
    parameters:
      interval: 1s
      limit_by_label_key: user_id
    selectors:
      - control_point: api
    request_parameters:
      denied_response_status_code: TooManyRequests
"#;
    let policies = parse_policies(text, "bp").unwrap();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].policy_name, "api_limit");
    assert_eq!(
        policies[0]
            .rate_limiter
            .request_parameters
            .denied_response_status_code
            .map(|c| c.0),
        Some(429)
    );
    let missing = "blueprint: rate-limiting/base\npolicy:\n  policy_name: x\n  rate_limiter:\n    bucket_capacity: 1\n    fill_amount: 1\n    parameters: {}\n    selectors: [ { control_point: a } ]\n";
    assert_eq!(
        errors_of(missing),
        vec!["policy.rate_limiter.parameters.interval: missing"]
    );
}
