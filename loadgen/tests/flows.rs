#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `flows` scenarios against an in-process Tollgate node: what they report is bounded by
//! what the policy allows, whatever the timing.

use std::time::Duration;
use tollgate_loadgen::flows::{self, FlowScenario, Kind};

/// An in-process node (2 shards) running `policies`.
struct Node(Option<tollgate_server::runtime::RunningServer>);

impl Node {
    fn start(policies: &str) -> Node {
        let yaml = format!("server: {{ listen: 127.0.0.1:0, grpc: off, shards: 2 }}\n{policies}");
        let config = tollgate_server::config::parse_str(&yaml, "test").expect("config parses");
        let server = tollgate_server::runtime::start(
            &config,
            tollgate_server::runtime::StartOptions::default(),
        )
        .expect("server starts");
        Node(Some(server))
    }

    fn addr(&self) -> String {
        self.0
            .as_ref()
            .map(|s| s.listen.to_string())
            .expect("running")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.shutdown();
        }
    }
}

#[test]
fn a_concurrency_run_never_holds_more_than_the_limit_and_ends_every_flow() {
    let node = Node::start(
        r#"policies:
  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 3
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 60s }
      selectors: [ { control_point: db } ]
"#,
    );
    let scenario = FlowScenario::parse(
        "kind: concurrency\ncontrol_point: db\nrate: 200\nduration: 1s\nwait: 0s\nlimit: 3\n\
         hold: { min: 20ms, max: 50ms }\n\
         workloads: [ { name: t, weight: 1, labels: { tenant: t } } ]\n",
    )
    .unwrap();
    let report = flows::run(&node.addr(), &Default::default(), &scenario, 7).unwrap();
    assert_eq!(report.kind, Kind::Concurrency);
    let w = &report.workloads[0];
    assert!(w.admitted > 0, "{}", report.table());
    assert!(
        w.rejected.get("exhausted").copied().unwrap_or(0) > 0,
        "200/s holding 20-50 ms asks for ~7 slots of 3: {}",
        report.table()
    );
    let max = report.max_in_flight.unwrap();
    assert!((1..=3).contains(&max), "{}", report.table());
    assert_eq!(report.flow_end_unknown, 0, "{}", report.table());
    let hold = report.hold_ms.unwrap();
    assert!(hold[0] >= 20.0, "{}", report.table());
}

#[test]
fn a_quota_run_admits_no_more_than_the_quota_allows() {
    let node = Node::start(
        r#"policies:
  - policy_name: tokens
    quota_scheduler:
      bucket_capacity: 10
      fill_amount: 10
      rate_limiter: { interval: 1s, limit_by_label_key: api_key }
      scheduler: { decision_deadline_margin: 10ms }
      selectors: [ { control_point: llm } ]
"#,
    );
    let scenario = FlowScenario::parse(
        "kind: quota\ncontrol_point: llm\nrate: 60\nduration: 1s\nwait: 200ms\nquota: 10\n\
         workloads:\n  - { name: a, weight: 2, labels: { api_key: k, tier: a } }\n\
         \x20 - { name: b, weight: 1, labels: { api_key: k, tier: b } }\n",
    )
    .unwrap();
    let report = flows::run(&node.addr(), &Default::default(), &scenario, 7).unwrap();
    let admitted: u64 = report.workloads.iter().map(|w| w.admitted).sum();
    let sent: u64 = report.workloads.iter().map(|w| w.sent).sum();
    assert_eq!(sent, 60, "{}", report.table());
    // The burst of 10, plus 10 per second for as long as the run lasted.
    let allowed = 10.0 + 10.0 * report.elapsed_secs;
    assert!(admitted as f64 <= allowed + 1.0, "{}", report.table());
    assert!(admitted >= 10, "the burst at least: {}", report.table());
    assert!(admitted < sent, "60/s against 10/s: {}", report.table());
    let shares: f64 = report
        .workloads
        .iter()
        .map(|w| w.admitted_token_share)
        .sum();
    assert!((shares - 1.0).abs() < 1e-9);
    assert!(report.admitted_over_quota.is_some());
    assert!(report.table().contains("admitted tokens/s"));
    assert!(Duration::from_secs_f64(report.elapsed_secs) >= Duration::from_secs(1));
}
