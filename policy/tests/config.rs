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
            .as_ref()
            .unwrap()
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

#[test]
fn the_issue_quota_blueprint_loads_as_is() {
    let text = r#"
blueprint: quota-scheduling/base
policy:
  policy_name: llm_quota
  quota_scheduler:
    bucket_capacity: 100          # the global token bucket: the API quota
    fill_amount: 10
    rate_limiter: { interval: 1s, limit_by_label_key: api_key }   # Aperture RateLimiterParameters
    scheduler:                    # Aperture Scheduler
      priority_label_key: priority      # blueprint defaults: priority / tokens / workload
      tokens_label_key: tokens
      workload_label_key: workload
      workloads:
        - label_matcher: { match_labels: { tier: premium } }
          parameters: { priority: 200, queue_timeout: 5s }
      default_workload_parameters: { priority: 50 }
    selectors: [ { control_point: openai } ]
"#;
    let policies = parse_policies(text, "bp").unwrap();
    let qs = policies[0].quota_scheduler.as_ref().unwrap();
    assert_eq!(qs.scheduler.workloads[0].parameters.priority, 200.0);
    assert_eq!(
        qs.scheduler.decision_deadline_margin.0,
        std::time::Duration::from_millis(10),
        "Aperture's default margin"
    );
}

#[test]
fn generated_values_files_of_all_four_blueprints_load() {
    // What `aperturectl blueprints generate` writes, required fields filled in.
    for (blueprint, component) in [
        ("rate-limiting/base", "rate_limiter:\n    alerter: { alert_name: x }\n    bucket_capacity: 1\n    fill_amount: 1\n    parameters: { interval: 1s }\n    request_parameters: {}\n"),
        ("quota-scheduling/base", "quota_scheduler:\n    alerter: { alert_name: x }\n    bucket_capacity: 1\n    fill_amount: 1\n    rate_limiter: { interval: 1s }\n    scheduler: {}\n"),
        ("concurrency-limiting/base", "concurrency_limiter:\n    alerter: { alert_name: x }\n    max_concurrency: 3\n    parameters: { max_inflight_duration: 60s }\n    request_parameters: {}\n"),
        ("concurrency-scheduling/base", "concurrency_scheduler:\n    alerter: { alert_name: x }\n    concurrency_limiter: { max_inflight_duration: 60s }\n    max_concurrency: 20\n    scheduler: {}\n"),
    ] {
        let text = format!(
            "blueprint: {blueprint}\npolicy:\n  components: []\n  policy_name: p\n  resources:\n    flow_control:\n      classifiers: []\n  {component}    selectors:\n      - control_point: cp\n"
        );
        assert!(parse_policies(&text, "bp").is_ok(), "{blueprint}: {:?}", parse_policies(&text, "bp").err());
    }
}

#[test]
fn every_scheduler_field_is_checked_by_name() {
    let yaml = r#"
policies:
  - policy_name: q
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: { interval: 1s }
      scheduler:
        workloads:
          - name: default
            label_matcher: { match_labels: { a: b } }
            parameters: { priority: 0 }
        default_workload_parameters: { tokens: -1 }
        fairness_label_key: ""
        denied_response_status_code: 700
      selectors: [ { control_point: c } ]
"#;
    assert_eq!(
        errors_of(yaml),
        vec![
            "policies[0].quota_scheduler.scheduler.workloads[0].name: duplicate workload name",
            "policies[0].quota_scheduler.scheduler.workloads[0].parameters.priority: must be a finite number greater than 0",
            "policies[0].quota_scheduler.scheduler.default_workload_parameters.tokens: must be a finite number, 0 or more",
            "policies[0].quota_scheduler.scheduler.fairness_label_key: must not be empty (omit it to not use a label)",
            "policies[0].quota_scheduler.scheduler.denied_response_status_code: must be an HTTP status between 100 and 599",
        ]
    );
    let typo = yaml.replace("fairness_label_key", "fairnes_label_key");
    assert!(errors_of(&typo)[0]
        .starts_with("policies[0].quota_scheduler.scheduler.fairnes_label_key: unknown field"));
}

#[test]
fn a_policy_has_exactly_one_component() {
    assert_eq!(
        errors_of("policies: [ { policy_name: p } ]"),
        vec!["policies[0]: needs one component: rate_limiter, quota_scheduler, concurrency_limiter or concurrency_scheduler"]
    );
    let two = "policies: [ { policy_name: p, concurrency_limiter: { max_concurrency: 1, parameters: { max_inflight_duration: 1s }, selectors: [ { control_point: c } ] }, rate_limiter: { bucket_capacity: 1, fill_amount: 1, parameters: { interval: 1s }, selectors: [ { control_point: c } ] } } ]";
    assert_eq!(
        errors_of(two),
        vec!["policies[0].concurrency_limiter: a policy has one component: put this one in a policy of its own"]
    );
    let missing = "policies: [ { policy_name: p, concurrency_limiter: { max_concurrency: 1, parameters: {}, selectors: [ { control_point: c } ] } } ]";
    assert_eq!(
        errors_of(missing),
        vec!["policies[0].concurrency_limiter.parameters.max_inflight_duration: missing"]
    );
}

#[test]
fn names_a_hello_reply_carries_fit_the_binary_protocol() {
    let long = "n".repeat(4097);
    let fits = "n".repeat(4096);
    let yaml = |name: &str, control_point: &str, key: &str| {
        format!(
            "policies:\n  - policy_name: {name}\n    rate_limiter: {{ bucket_capacity: 1, fill_amount: 1, parameters: {{ interval: 1s, limit_by_label_key: {key} }}, selectors: [ {{ control_point: {control_point} }} ] }}\n  - policy_name: pool\n    concurrency_limiter: {{ max_concurrency: 1, parameters: {{ limit_by_label_key: {key}, max_inflight_duration: 60s }}, selectors: [ {{ control_point: db }} ] }}\n"
        )
    };
    assert!(parse_policies(&yaml(&fits, &fits, &fits), "t").is_ok());
    let why = "is 4097 bytes; at most 4096 (the binary protocol's longest string)";
    assert_eq!(
        errors_of(&yaml(&long, &long, &long)),
        vec![
            format!("policies[0].policy_name: {why}"),
            format!("policies[0].rate_limiter.parameters.limit_by_label_key: {why}"),
            format!("policies[0].rate_limiter.selectors[0].control_point: {why}"),
            format!("policies[1].concurrency_limiter.parameters.limit_by_label_key: {why}"),
        ]
    );
}
