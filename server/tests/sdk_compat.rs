//! Aperture SDK and Envoy RLS compatibility of the real `tollgate` binary's gRPC compat port.
//!
//! - `envoy_rls_ok_then_over_limit`: a Rust tonic client speaking Envoy's RLS; always runs.
//! - `aperture_*`: the real SDKs (aperture-py 2.26.0, @fluxninja/aperture-js 2.5.0) driven by the
//!   scripts in tests/sdk/. They need `scripts/setup-sdk.sh` (installs into .sdk/); without it
//!   they fail under CI and print why they skip elsewhere (`common::deps::require`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::deps::{aperture_sdks, repo_root, require, self_signed_cert};
use common::{start_server, RunningServer};
use serde_json::Value;
use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_grpc::proto::envoy::service::ratelimit::v3 as rls;

/// Capacity 5 per user, refilled 5 per hour: no visible refill during a test. The label
/// `tokens` sets a flow's cost.
const POLICY: &str = r#"
server: { listen: 127.0.0.1:0, grpc: 127.0.0.1:0, shards: 2 }
policies:
  - policy_name: five_per_user
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 5
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: tokens }
      selectors: [ { control_point: checkout } ]
"#;

/// Bound on one SDK script run (they finish in a second or two; this only bounds a hang).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    repo_root()
}

/// The SDK install dir; `None` when the test skips (see [`require`]).
fn sdk_dir() -> Option<PathBuf> {
    require("the Aperture SDKs", aperture_sdks())
}

fn grpc_addr(server: &RunningServer) -> std::net::SocketAddr {
    server.grpc.expect("grpc port enabled in the config")
}

/// Runs `cmd` within [`SCRIPT_TIMEOUT`]: (JSON lines of stdout, stderr).
fn run(cmd: Command) -> (Vec<Value>, String) {
    common::script::run_json_lines(cmd, SCRIPT_TIMEOUT)
}

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == kind).collect()
}

fn python(sdk: &Path) -> Command {
    let mut c = Command::new(sdk.join("py/bin/python"));
    c.arg(root().join("tests/sdk/aperture_py.py"));
    c
}

/// Server log lines so far (after the ready line).
fn drain_logs(server: &RunningServer) -> Vec<String> {
    server.logs.try_iter().collect()
}

fn assert_no_server_errors(logs: &[String]) {
    let bad: Vec<_> = logs
        .iter()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(bad.is_empty(), "server logged problems:\n{bad:#?}");
}

/// Waits up to 10 s for a log line containing `needle`, keeping what it read in `seen`.
fn wait_for_log(server: &RunningServer, seen: &mut Vec<String>, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match server.logs.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => return false,
        }
    }
    true
}

#[test]
fn envoy_rls_ok_then_over_limit() {
    let server = start_server(POLICY);
    let url = format!("http://{}", grpc_addr(&server));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let channel = tollgate_grpc::tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut c = rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
        let req = |user: &str, hits: u32| rls::RateLimitRequest {
            domain: "checkout".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "user".into(),
                    value: user.into(),
                }],
                limit: None,
            }],
            hits_addend: hits,
        };
        let ok = rls::rate_limit_response::Code::Ok as i32;
        let over = rls::rate_limit_response::Code::OverLimit as i32;

        // hits_addend 0 means 1.
        let r = c
            .should_rate_limit(req("envoy-user", 0))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(r.overall_code, ok, "{r:?}");
        let s = &r.statuses[0];
        assert_eq!((s.code, s.limit_remaining), (ok, 4), "{s:?}");
        let limit = s.current_limit.as_ref().expect("current_limit");
        assert_eq!(limit.requests_per_unit, 5);
        assert_eq!(
            limit.unit,
            rls::rate_limit_response::rate_limit::Unit::Hour as i32
        );
        let reset = s.duration_until_reset.expect("reset");
        assert!(
            (719..=720).contains(&reset.seconds),
            "1 of 5 tokens at 5/hour: ~720 s, got {reset:?}"
        );

        let r = c
            .should_rate_limit(req("envoy-user", 4))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (ok, 0),
            "{r:?}"
        );

        let r = c
            .should_rate_limit(req("envoy-user", 1))
            .await
            .expect("rls")
            .into_inner();
        assert_eq!(r.overall_code, over, "{r:?}");
        let s = &r.statuses[0];
        assert_eq!((s.code, s.limit_remaining), (over, 0));
        let reset = s.duration_until_reset.expect("reset");
        assert!(
            reset.seconds > 0 && reset.seconds <= 720,
            "wait for one token at 5/hour: {reset:?}"
        );

        // Another user is unaffected; one status per descriptor.
        let mut two = req("envoy-user", 1);
        two.descriptors.push(RateLimitDescriptor {
            entries: vec![Entry {
                key: "user".into(),
                value: "other".into(),
            }],
            limit: None,
        });
        let r = c.should_rate_limit(two).await.expect("rls").into_inner();
        assert_eq!(r.overall_code, over);
        assert_eq!((r.statuses[0].code, r.statuses[1].code), (over, ok));
    });
    assert_no_server_errors(&drain_logs(&server));
}

#[test]
fn aperture_py_flows_end_cache_and_spans() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(POLICY);
    let addr = grpc_addr(&server).to_string();

    let (lines, stderr) = run({
        let mut c = python(&sdk);
        c.args([&addr, "flows", "--count", "8", "--label", "user=alice"]);
        c
    });
    let flows = events(&lines, "flow");
    assert_eq!(flows.len(), 8, "{lines:#?}");
    assert_eq!(
        flows.iter().filter(|f| f["should_run"] == true).count(),
        5,
        "exactly 5 of 8: {lines:#?}"
    );
    for (i, f) in flows.iter().enumerate() {
        let accepted = f["should_run"] == true;
        assert_eq!(accepted, i < 5, "flows run in order: {f}");
        if accepted {
            assert_eq!(f["decision_type"], "DECISION_TYPE_ACCEPTED", "{f}");
        } else {
            assert_eq!(f["decision_type"], "DECISION_TYPE_REJECTED", "{f}");
            assert_eq!(f["reject_reason"], "REJECT_REASON_RATE_LIMITED", "{f}");
            assert_eq!(f["http_code"], 429, "{f}");
            assert_eq!(f["limiters"][0]["dropped"], true, "{f}");
        }
        // The bucket label as Aperture's agent reports it: `key:value` of limit_by_label_key.
        assert_eq!(f["limiters"][0]["label"], "user:alice", "{f}");
        assert_eq!(f["limiters"][0]["policy_name"], "five_per_user", "{f}");
        assert!(f["end_error"].is_null(), "end() failed: {f}");
    }
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("Failed to export"),
        "aperture-py logged errors:\n{stderr}"
    );

    let (lines, stderr) = run({
        let mut c = python(&sdk);
        c.args([
            &addr,
            "cache",
            "--label",
            "user=bob",
            "--key",
            "report-42",
            "--value",
            "cached report",
        ]);
        c
    });
    let cache = events(&lines, "cache");
    assert_eq!(cache.len(), 1, "{lines:#?}");
    let c = cache[0];
    assert_eq!(c["first_should_run"], true, "{c}");
    assert_eq!(c["before_status"], "MISS", "{c}");
    assert!(c["set_error"].is_null(), "{c}");
    assert_eq!(c["after_status"], "HIT", "{c}");
    assert_eq!(c["after_value"], "cached report", "{c}");
    assert!(c["after_error"].is_null(), "{c}");
    assert!(
        !stderr.contains("ERROR"),
        "aperture-py logged errors:\n{stderr}"
    );

    // The SDK exported its "Aperture Check" spans to the same port and the server took them.
    let mut logs = Vec::new();
    assert!(
        wait_for_log(&server, &mut logs, "first OTLP trace export accepted"),
        "server never saw the SDK's spans; logs:\n{logs:#?}"
    );
    logs.extend(drain_logs(&server));
    assert_no_server_errors(&logs);
}

/// A flow the server cannot judge (tokens label `-1000`, `NaN`, `abc`, `inf`) must not run:
/// the answer is a REJECTED decision with status 400, not an RPC error (which aperture-py
/// turns into "Unreachable" and runs the flow). And the bucket, exhausted first, stays
/// exhausted: a negative cost does not refill it.
#[test]
fn aperture_py_unjudgeable_tokens_label_does_not_run_or_refill() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(POLICY);
    let addr = grpc_addr(&server).to_string();
    let plain = serde_json::json!({ "user": "gail" });
    let bad = ["-1000", "NaN", "abc", "inf"];
    let mut flows = vec![plain.clone(); 5];
    flows.extend(bad.map(|t| serde_json::json!({ "user": "gail", "tokens": t })));
    flows.push(plain);
    let (lines, stderr) = run({
        let mut c = python(&sdk);
        c.args([
            &addr,
            "labelled",
            "--flows",
            &Value::Array(flows).to_string(),
        ]);
        c
    });
    let flows = events(&lines, "flow");
    assert_eq!(flows.len(), 10, "{lines:#?}\n{stderr}");
    for f in &flows[..5] {
        assert_eq!(f["should_run"], true, "the bucket holds 5: {f}");
    }
    for (f, tokens) in flows[5..9].iter().zip(bad) {
        assert_eq!(f["labels"]["tokens"], tokens, "{f}");
        assert_eq!(f["should_run"], false, "tokens={tokens} must not run: {f}");
        assert!(
            f["error_code"].is_null(),
            "an answer, not an RPC error: {f}"
        );
        assert_eq!(f["decision"], "Rejected", "{f}");
        assert_eq!(f["decision_type"], "DECISION_TYPE_REJECTED", "{f}");
        assert_eq!(f["http_code"], 400, "{f}");
        assert_eq!(f["limiters"][0]["policy_name"], "five_per_user", "{f}");
        assert_eq!(f["limiters"][0]["dropped"], true, "{f}");
        assert!(f["end_error"].is_null(), "end() failed: {f}");
    }
    let last = flows[9];
    assert_eq!(last["should_run"], false, "still exhausted: {last}");
    assert_eq!(last["http_code"], 429, "rate limited, as before: {last}");
    assert!(
        !stderr.contains("ERROR"),
        "aperture-py logged errors:\n{stderr}"
    );
}

#[test]
fn aperture_py_api_key_over_tls() {
    let Some(sdk) = sdk_dir() else { return };
    let dir = common::temp_dir("sdk-tls");
    let Some((cert, key)) = require("openssl", self_signed_cert(&dir)) else {
        return;
    };
    // The SDKs send x-api-key as gRPC call credentials, which gRPC only attaches over TLS.
    let yaml = POLICY.replace(
        "shards: 2 }",
        &format!(
            "shards: 2, api_keys: [sesame], tls: {{ cert: {}, key: {} }} }}",
            cert.display(),
            key.display()
        ),
    );
    let server = start_server(&yaml);
    let addr = format!("localhost:{}", grpc_addr(&server).port());
    let auth = |api_key: &str| {
        let mut c = python(&sdk);
        c.args([
            &addr,
            "auth",
            "--label",
            "user=dan",
            "--api-key",
            api_key,
            "--ca",
        ])
        .arg(&cert);
        c
    };

    let (lines, stderr) = run(auth("sesame"));
    let rec = events(&lines, "auth")[0];
    assert_eq!(
        rec["decision_type"], "DECISION_TYPE_ACCEPTED",
        "{rec}\n{stderr}"
    );
    assert!(
        !stderr.contains("ERROR"),
        "aperture-py logged errors with the right key:\n{stderr}"
    );

    let (lines, _) = run(auth("wrong-key"));
    let rec = events(&lines, "auth")[0];
    assert_eq!(
        rec["error_code"], "UNAUTHENTICATED",
        "wrong key must be refused: {rec}"
    );
    // The SDK fails open on errors: that is the client's policy, not the server's answer.
    assert_eq!(rec["decision"], "Unreachable", "{rec}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn aperture_js_flows() {
    let Some(sdk) = sdk_dir() else { return };
    let server = start_server(POLICY);
    let addr = grpc_addr(&server).to_string();
    let (lines, stderr) = run({
        let mut c = Command::new("node");
        c.arg(root().join("tests/sdk/aperture_js.mjs"))
            .arg(sdk.join("js"))
            .args([&addr, "8", "checkout", "user=carol"]);
        c
    });
    let flows = events(&lines, "flow");
    assert_eq!(flows.len(), 8, "{lines:#?}\n{stderr}");
    assert_eq!(
        flows.iter().filter(|f| f["should_run"] == true).count(),
        5,
        "exactly 5 of 8: {lines:#?}"
    );
    for (i, f) in flows.iter().enumerate() {
        assert_eq!(f["should_run"] == true, i < 5, "{f}");
        assert!(f["error"].is_null(), "{f}");
        if i >= 5 {
            assert_eq!(f["http_code"], 429, "{f}");
        }
    }
    assert!(
        !stderr.to_lowercase().contains("error"),
        "aperture-js logged errors:\n{stderr}"
    );
    let mut logs = Vec::new();
    assert!(
        wait_for_log(&server, &mut logs, "first OTLP trace export accepted"),
        "server never saw aperture-js spans; logs:\n{logs:#?}"
    );
}
