//! The real Aperture SDKs against the real `tollgate` binary's quota and concurrency
//! components, each server configured by an Aperture blueprint values file
//! (`quota-scheduling/base`, `concurrency-limiting/base`, `concurrency-scheduling/base`).
//!
//! The SDKs are driven by tests/sdk/aperture_py_sched.py and tests/sdk/aperture_js_sched.mjs.
//! They need `scripts/setup-sdk.sh` (installs into .sdk/): without it these tests fail under
//! CI and print why they skip elsewhere (`common::deps::require`).
//!
//! No assertion depends on timing: a flow that must have waited is shown by counts (two flows
//! admitted by a bucket that held one token), a rejection "before the deadline" by the SDK
//! getting an answer at all (past its deadline it would get DEADLINE_EXCEEDED and report
//! "Unreachable"), and priority shares by counting admissions under saturation.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::deps::{aperture_sdks, repo_root, require};
use common::{start_server, RunningServer};
use serde_json::Value;

/// Bound on one SDK script run (they finish in seconds; this only bounds a hang).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

const SERVER: &str = "server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: 2 }\n";

/// One flow in flight per tenant; refused at once beyond.
const CONCURRENCY_LIMITING: &str = r#"
blueprint: concurrency-limiting/base
policy:
  policy_name: db_pool
  components: []
  resources: { flow_control: { classifiers: [] } }
  concurrency_limiter:
    alerter: { alert_name: "Too many inflight requests" }
    max_concurrency: 1
    parameters: { limit_by_label_key: tenant, max_inflight_duration: 60s }
    request_parameters: {}
    selectors: [ { control_point: pool } ]
"#;

/// One flow in flight per tenant; beyond, flows wait in the queue.
const CONCURRENCY_SCHEDULING: &str = r#"
blueprint: concurrency-scheduling/base
policy:
  policy_name: db_queue
  components: []
  concurrency_scheduler:
    alerter: { alert_name: "Too many inflight requests" }
    max_concurrency: 1
    concurrency_limiter: { limit_by_label_key: tenant, max_inflight_duration: 60s }
    scheduler:
      priority_label_key: priority
      tokens_label_key: tokens
      workload_label_key: workload
      decision_deadline_margin: 250ms   # MARGIN
    selectors: [ { control_point: queue } ]
"#;

/// How long before a flow's deadline a scheduler refuses it. Aperture's default (10 ms) is
/// the time the answer has to reach the client; on a loaded 2-core CI machine a Python
/// client's event loop alone can take longer than that, and a late answer makes the SDK fail
/// open ("Unreachable"). These tests are about the decisions, so they leave room.
const MARGIN: &str = "250ms";

/// A quota of one token per api_key, refilled `fill` per second; premium has 4 times free's
/// priority.
fn quota_scheduling(fill: u32) -> String {
    format!(
        r#"
blueprint: quota-scheduling/base
policy:
  policy_name: api_quota
  quota_scheduler:
    alerter: {{ alert_name: "Quota exhausted" }}
    bucket_capacity: 1
    fill_amount: {fill}
    rate_limiter: {{ interval: 1s, limit_by_label_key: api_key }}
    scheduler:
      decision_deadline_margin: {MARGIN}
      workloads:
        - name: premium
          label_matcher: {{ match_labels: {{ tier: premium }} }}
          parameters: {{ priority: 4 }}
        - name: free
          label_matcher: {{ match_labels: {{ tier: free }} }}
          parameters: {{ priority: 1 }}
    selectors: [ {{ control_point: quota }} ]
"#
    )
}

/// The SDK install dir; `None` when the test skips (see [`require`]).
fn sdk_dir() -> Option<PathBuf> {
    require("the Aperture SDKs", aperture_sdks())
}

fn grpc_addr(server: &RunningServer) -> String {
    server
        .grpc
        .expect("grpc port enabled in the config")
        .to_string()
}

/// Runs `cmd` within [`SCRIPT_TIMEOUT`]; the script must finish with its `done` line.
fn run(cmd: Command) -> (Vec<Value>, String) {
    let (lines, stderr) = common::script::run_json_lines(cmd, SCRIPT_TIMEOUT);
    assert!(
        lines.iter().any(|l| l["event"] == "done"),
        "script did not finish:\n{lines:#?}\n{stderr}"
    );
    (lines, stderr)
}

fn python(sdk: &Path, addr: &str, scenario: &str, args: &[&str]) -> (Vec<Value>, String) {
    let mut c = Command::new(sdk.join("py/bin/python"));
    c.arg(repo_root().join("tests/sdk/aperture_py_sched.py"))
        .args([addr, scenario])
        .args(args);
    let (lines, stderr) = run(c);
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("Failed to export"),
        "aperture-py logged errors:\n{stderr}"
    );
    (lines, stderr)
}

fn node(sdk: &Path, addr: &str, scenario: &str, args: &[&str]) -> Vec<Value> {
    let mut c = Command::new("node");
    c.arg(repo_root().join("tests/sdk/aperture_js_sched.mjs"))
        .arg(sdk.join("js"))
        .args([addr, scenario])
        .args(args);
    let (lines, stderr) = run(c);
    assert!(
        !stderr.to_lowercase().contains("error"),
        "aperture-js logged errors:\n{stderr}"
    );
    lines
}

/// The record of event `kind` named `name`.
fn record<'a>(lines: &'a [Value], kind: &str, name: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["event"] == kind && l["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name:?} in {lines:#?}"))
}

fn assert_no_server_errors(server: &RunningServer) {
    let logs: Vec<String> = server.logs.try_iter().collect();
    let bad: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(bad.is_empty(), "server logged problems:\n{bad:#?}");
}

/// aperture-py (sync and async clients) against a concurrency limiter: the first flow holds
/// the only slot and carries a request id, the next is refused at once, and after the first
/// flow's `end()` (FlowEnd) the next is admitted.
#[test]
fn aperture_py_concurrency_limiter_flow_end_frees_the_slot() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(&format!("{SERVER}{CONCURRENCY_LIMITING}"));
    let addr = grpc_addr(&server);
    for (tenant, mode) in [("sync", None), ("async", Some("--async"))] {
        let label = format!("tenant={tenant}");
        let mut args = vec!["--control-point", "pool", "--label", &label];
        args.extend(mode);
        let (lines, _) = python(&sdk, &addr, "hold", &args);
        let a = record(&lines, "flow", "a");
        assert_eq!(a["decision_type"], "DECISION_TYPE_ACCEPTED", "{a}");
        assert_eq!(a["expect_end"], true, "{a}");
        let limiter = &a["limiters"][0];
        assert_eq!(limiter["kind"], "concurrency_limiter_info", "{a}");
        assert_eq!(limiter["label"], format!("tenant:{tenant}"), "{a}");
        let id = limiter["request_id"].as_str().expect("request_id");
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "a flow id: {a}"
        );

        let b = record(&lines, "flow", "b");
        assert_eq!(b["decision"], "Rejected", "{b}");
        assert_eq!(b["reject_reason"], "REJECT_REASON_RATE_LIMITED", "{b}");
        assert_eq!(b["http_code"], 429, "{b}");
        assert_eq!(b["limiters"][0]["request_id"], "", "{b}");

        let end_a = record(&lines, "end", "a");
        assert!(end_a["error"].is_null(), "{end_a}");
        assert_eq!(end_a["statuses"][0]["request_id"], id, "{end_a}");
        assert_eq!(end_a["statuses"][0]["returned"], true, "{end_a}");

        let c = record(&lines, "flow", "c");
        assert_eq!(c["decision_type"], "DECISION_TYPE_ACCEPTED", "freed: {c}");
        assert_ne!(c["limiters"][0]["request_id"], id, "a new flow: {c}");
        let end_c = record(&lines, "end", "c");
        assert_eq!(end_c["statuses"][0]["returned"], true, "{end_c}");
        // b held nothing: its end sends no FlowEnd.
        assert_eq!(
            record(&lines, "end", "b")["statuses"],
            serde_json::json!([])
        );
    }
    assert_no_server_errors(&server);
}

/// Three slots, ten concurrent flows that never end (aperture-py's async client): exactly
/// three run, the other seven are refused at once; the held slots come back after
/// `max_inflight_duration` (5 s here), so a later flow runs again without any `end()`.
#[test]
fn aperture_py_ten_flows_on_three_slots_and_missed_ends_expire() {
    let Some(sdk) = sdk_dir() else { return };
    let policy = CONCURRENCY_LIMITING
        .replace("max_concurrency: 1", "max_concurrency: 3")
        .replace("max_inflight_duration: 60s", "max_inflight_duration: 5s");
    let server = start_server(&format!("{SERVER}{policy}"));
    let addr = grpc_addr(&server);
    let (lines, _) = python(
        &sdk,
        &addr,
        "pile",
        &[
            "--control-point",
            "pool",
            "--label",
            "tenant=t",
            "--count",
            "10",
            "--timeout",
            "5",
            "--expiry-wait",
            "30",
        ],
    );
    let flows: Vec<&Value> = lines.iter().filter(|l| l["event"] == "flow").collect();
    assert_eq!(flows.len(), 10);
    let accepted = flows
        .iter()
        .filter(|f| f["decision_type"] == "DECISION_TYPE_ACCEPTED")
        .count();
    let refused = flows
        .iter()
        .filter(|f| f["reject_reason"] == "REJECT_REASON_RATE_LIMITED")
        .count();
    assert_eq!((accepted, refused), (3, 7), "{flows:#?}");
    let freed = lines
        .iter()
        .find(|l| l["event"] == "freed")
        .unwrap_or_else(|| panic!("the held slots never came back: {lines:#?}"));
    // The first tries, right after the ten, found the three slots still held.
    assert!(
        freed["refused_before"].as_u64().unwrap_or(0) >= 1,
        "{freed}"
    );
    assert_no_server_errors(&server);
}

/// aperture-js 2.5.0 sends no FlowEnd and no expect_end: the span its `end()` exports ends
/// the flow. After the spans are flushed, the slot is free again.
#[test]
fn aperture_js_concurrency_limiter_span_ends_the_flow() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(&format!("{SERVER}{CONCURRENCY_LIMITING}"));
    let addr = grpc_addr(&server);
    let lines = node(&sdk, &addr, "hold", &["pool", "tenant=js"]);
    let a = record(&lines, "flow", "a");
    assert_eq!(a["should_run"], true, "{a}");
    let ids = a["telemetry_flow_labels"]["tollgate.flow_ids"]
        .as_str()
        .unwrap_or_else(|| panic!("the flow's ids ride in its telemetry labels: {a}"));
    assert_eq!(ids.len(), 16, "{a}");
    let b = record(&lines, "flow", "b");
    assert_eq!(b["should_run"], false, "{b}");
    assert_eq!(b["http_code"], 429, "{b}");
    assert!(b["error"].is_null(), "{b}");
    let c = record(&lines, "flow", "c");
    assert_eq!(c["should_run"], true, "a's span ended it: {c}");
    assert_no_server_errors(&server);
}

/// A concurrency scheduler queues a flow beyond the limit; one whose deadline is short is
/// refused with NO_TOKENS (503) in time; after the holder ends, the next flow is admitted.
#[test]
fn aperture_py_concurrency_scheduler_queues_until_the_deadline() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(&format!("{SERVER}{CONCURRENCY_SCHEDULING}"));
    let addr = grpc_addr(&server);
    let (lines, _) = python(
        &sdk,
        &addr,
        "hold",
        &[
            "--control-point",
            "queue",
            "--label",
            "tenant=t1",
            "--second-timeout",
            "0.6",
        ],
    );
    let a = record(&lines, "flow", "a");
    assert_eq!(a["decision_type"], "DECISION_TYPE_ACCEPTED", "{a}");
    assert_eq!(
        a["limiters"][0]["kind"], "concurrency_scheduler_info",
        "{a}"
    );
    assert_eq!(a["limiters"][0]["workload_index"], "default", "{a}");
    assert_eq!(
        a["limiters"][0]["request_id"].as_str().map(str::len),
        Some(16)
    );
    let b = record(&lines, "flow", "b");
    assert_eq!(
        b["decision"], "Rejected",
        "an answer before the deadline, not Unreachable: {b}"
    );
    assert_eq!(b["reject_reason"], "REJECT_REASON_NO_TOKENS", "{b}");
    assert_eq!(b["http_code"], 503, "{b}");
    assert_eq!(record(&lines, "end", "a")["statuses"][0]["returned"], true);
    let c = record(&lines, "flow", "c");
    assert_eq!(c["decision_type"], "DECISION_TYPE_ACCEPTED", "{c}");
    assert_no_server_errors(&server);
}

/// A quota of one token refilled once a second: the first flow takes it; the second, whose
/// check_timeout (5 s) outlasts the refill, waits in the queue and runs (two admissions from
/// a one-token bucket); the third, with 500 ms, cannot get a token in time and is refused
/// with NO_TOKENS before its deadline.
#[test]
fn aperture_py_quota_scheduler_waits_within_the_deadline() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(&format!("{SERVER}{}", quota_scheduling(1)));
    let addr = grpc_addr(&server);
    let (lines, _) = python(
        &sdk,
        &addr,
        "sequence",
        &[
            "--control-point",
            "quota",
            "--label",
            "api_key=k1",
            "--label",
            "tier=premium",
            "--timeouts",
            "5,5,0.5",
        ],
    );
    for name in ["0", "1"] {
        let f = record(&lines, "flow", name);
        assert_eq!(f["decision_type"], "DECISION_TYPE_ACCEPTED", "{f}");
        let info = &f["limiters"][0];
        assert_eq!(info["kind"], "quota_scheduler_info", "{f}");
        assert_eq!(info["workload_index"], "premium", "{f}");
        assert_eq!(info["priority"], 4.0, "{f}");
        assert_eq!(info["label"], "api_key:k1", "{f}");
    }
    let late = record(&lines, "flow", "2");
    assert_eq!(
        late["decision"], "Rejected",
        "answered before its deadline (else Unreachable): {late}"
    );
    assert_eq!(late["reject_reason"], "REJECT_REASON_NO_TOKENS", "{late}");
    assert_eq!(late["http_code"], 503, "{late}");
    assert_no_server_errors(&server);
}

/// Under saturation (80 flows at once against 10 tokens a second, each waiting at most 4 s)
/// the premium workload (priority 4) is admitted about 4 times as often as free (priority 1).
///
/// Only admissions after the last flow was sent are counted: while flows are still arriving
/// (a Python client on a loaded machine can take a second to send 80), the queue holds only
/// the early ones and serves them whatever their priority.
#[test]
fn aperture_py_quota_scheduler_shares_by_priority() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(&format!("{SERVER}{}", quota_scheduling(10)));
    let addr = grpc_addr(&server);
    let groups = serde_json::json!([
        { "name": "premium", "count": 40, "labels": { "api_key": "k", "tier": "premium" } },
        { "name": "free", "count": 40, "labels": { "api_key": "k", "tier": "free" } },
    ]);
    let (lines, _) = python(
        &sdk,
        &addr,
        "crowd",
        &[
            "--control-point",
            "quota",
            "--groups",
            &groups.to_string(),
            "--timeout",
            "4",
        ],
    );
    let flows: Vec<&Value> = lines.iter().filter(|l| l["event"] == "flow").collect();
    assert_eq!(flows.len(), 80, "{lines:#?}");
    for f in flows.iter().filter(|f| f["should_run"] == false) {
        assert_eq!(f["decision"], "Rejected", "answered in time: {f}");
        assert_eq!(f["reject_reason"], "REJECT_REASON_NO_TOKENS", "{f}");
    }
    let admitted = flows.iter().filter(|f| f["should_run"] == true).count();
    assert!(
        admitted < 80,
        "saturated: some flows must be refused: {flows:#?}"
    );
    let all_sent = flows
        .iter()
        .filter_map(|f| f["started_s"].as_f64())
        .fold(0.0, f64::max);
    let after = |name: &str| {
        flows
            .iter()
            .filter(|f| f["name"] == name && f["should_run"] == true)
            .filter(|f| f["done_s"].as_f64().is_some_and(|d| d > all_sent))
            .count()
    };
    let (premium, free) = (after("premium"), after("free"));
    assert!(
        premium + free >= 10,
        "too few admissions after all flows were sent to judge shares (premium {premium}, free {free}, all sent at {all_sent:.2}s)"
    );
    // Expected about 4:1; generous bounds, and free is not starved.
    assert!(free >= 1, "free starved: premium {premium}, free {free}");
    assert!(
        premium >= 2 * free,
        "priority 4 vs 1 should be admitted ~4:1: premium {premium}, free {free}"
    );
    assert_no_server_errors(&server);
}

fn assert_cache_calls(rec: &Value, hit: &str, miss: &str) {
    for scope in ["result", "global"] {
        assert_eq!(rec["before"][scope]["status"], miss, "{scope}: {rec}");
        assert_eq!(rec["after"][scope]["status"], hit, "{scope}: {rec}");
        assert_eq!(
            rec["after"][scope]["value"],
            format!("{scope} value"),
            "{scope}: {rec}"
        );
        assert!(rec["after"][scope]["error"].is_null(), "{scope}: {rec}");
        assert_eq!(
            rec["deleted"][scope]["status"], miss,
            "deleted {scope}: {rec}"
        );
    }
    for call in ["set_result", "set_global", "delete_result", "delete_global"] {
        assert!(rec[call].is_null(), "{call}: {rec}");
    }
}

/// Every cache call of both SDKs: set, look up and delete a result and a global entry
/// (aperture-js's setGlobalCache included).
#[test]
fn sdk_cache_calls() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(&format!("{SERVER}{CONCURRENCY_LIMITING}"));
    let addr = grpc_addr(&server);
    for (cp, mode) in [("py-sync", None), ("py-async", Some("--async"))] {
        let mut args = vec!["--control-point", cp, "--label", "user=u"];
        args.extend(mode);
        let (lines, _) = python(&sdk, &addr, "cache", &args);
        let rec = lines
            .iter()
            .find(|l| l["event"] == "cache")
            .expect("cache record");
        assert_eq!(rec["should_run"], true, "{rec}");
        assert_cache_calls(rec, "HIT", "MISS");
    }
    let lines = node(&sdk, &addr, "cache", &["js-cache", "user=u"]);
    let rec = lines
        .iter()
        .find(|l| l["event"] == "cache")
        .expect("cache record");
    assert_cache_calls(rec, "HIT", "MISS");
    assert_no_server_errors(&server);
}
