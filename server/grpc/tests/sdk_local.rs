//! Runs the real Aperture SDKs (tests/sdk/*, installed by scripts/setup-sdk.sh into .sdk/) against
//! this crate's server with a `LocalLimiter` backend. The same scripts run against the real
//! binary in server/tests/sdk_compat.rs.
//!
//! Needs `scripts/setup-sdk.sh`: without it these tests fail under CI and print why they skip
//! elsewhere (`support::deps::require`).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::deps::{aperture_sdks, repo_root, require, self_signed_cert};
use support::{start_local, POLICY_YAML};

fn root() -> PathBuf {
    repo_root()
}

/// The SDK install dir; `None` when the test skips (see [`require`]).
fn sdk_dir() -> Option<PathBuf> {
    require("the Aperture SDKs", aperture_sdks())
}

/// Runs `cmd` (bounded by `limit`), returns (JSON lines of stdout, stderr).
fn run(mut cmd: Command, limit: Duration) -> (Vec<Value>, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{cmd:?} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let lines = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aperture_py_and_js_against_local_backend() {
    let Some(sdk) = sdk_dir() else { return };
    let srv = start_local(POLICY_YAML, None);
    let addr = srv.handle.local_addr().to_string();

    let mut py = Command::new(sdk.join("py/bin/python"));
    py.arg(root().join("tests/sdk/aperture_py.py")).args([
        &addr,
        "flows",
        "--count",
        "8",
        "--label",
        "user=alice",
    ]);
    let (lines, stderr) = tokio::task::spawn_blocking(move || run(py, Duration::from_secs(60)))
        .await
        .unwrap();
    let flows = events(&lines, "flow");
    assert_eq!(flows.len(), 8, "{lines:?}");
    assert_eq!(
        flows.iter().filter(|f| f["should_run"] == true).count(),
        5,
        "{lines:?}"
    );
    for f in flows.iter().filter(|f| f["should_run"] == false) {
        assert_eq!(f["reject_reason"], "REJECT_REASON_RATE_LIMITED", "{f}");
        assert_eq!(f["http_code"], 429, "{f}");
    }
    assert!(flows.iter().all(|f| f["end_error"].is_null()), "{lines:?}");
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("Failed to export"),
        "SDK logged errors:\n{stderr}"
    );

    let mut py = Command::new(sdk.join("py/bin/python"));
    py.arg(root().join("tests/sdk/aperture_py.py"))
        .args([&addr, "cache", "--label", "user=bob"]);
    let (lines, stderr) = tokio::task::spawn_blocking(move || run(py, Duration::from_secs(60)))
        .await
        .unwrap();
    let cache = events(&lines, "cache");
    assert_eq!(cache[0]["before_status"], "MISS", "{lines:?}");
    assert!(cache[0]["set_error"].is_null(), "{lines:?}");
    assert_eq!(cache[0]["after_status"], "HIT", "{lines:?}");
    assert_eq!(cache[0]["after_value"], "cached-value", "{lines:?}");
    assert!(!stderr.contains("ERROR"), "SDK logged errors:\n{stderr}");

    let mut js = Command::new("node");
    js.arg(root().join("tests/sdk/aperture_js.mjs"))
        .arg(sdk.join("js"))
        .args([&addr, "8", "checkout", "user=carol"]);
    let (lines, stderr) = tokio::task::spawn_blocking(move || run(js, Duration::from_secs(60)))
        .await
        .unwrap();
    let flows = events(&lines, "flow");
    assert_eq!(flows.len(), 8, "{lines:?}\n{stderr}");
    assert_eq!(
        flows.iter().filter(|f| f["should_run"] == true).count(),
        5,
        "{lines:?}"
    );
    assert!(flows.iter().all(|f| f["error"].is_null()), "{lines:?}");
    assert!(
        !stderr.to_lowercase().contains("error"),
        "SDK logged errors:\n{stderr}"
    );

    // 8 py flows + 2 cache flows + 8 js flows, one span each.
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.handle.spans_received() < 18 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(srv.handle.spans_received(), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aperture_py_api_key_over_tls() {
    let Some(sdk) = sdk_dir() else { return };
    let dir = std::env::temp_dir().join(format!("tollgate-grpc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some((cert, key)) = require("openssl", self_signed_cert(&dir)) else {
        return;
    };
    let yaml = POLICY_YAML.replace(
        "shards: 2 }",
        &format!(
            "shards: 2, api_keys: [sesame], tls: {{ cert: {}, key: {} }} }}",
            cert.display(),
            key.display()
        ),
    );
    let srv = start_local(&yaml, None);
    let addr = format!("localhost:{}", srv.handle.local_addr().port());
    let auth = |api_key: &str| {
        let mut py = Command::new(sdk.join("py/bin/python"));
        py.arg(root().join("tests/sdk/aperture_py.py"))
            .args([
                &addr,
                "auth",
                "--label",
                "user=dan",
                "--api-key",
                api_key,
                "--ca",
            ])
            .arg(&cert);
        py
    };
    let good = auth("sesame");
    let (lines, stderr) = tokio::task::spawn_blocking(move || run(good, Duration::from_secs(60)))
        .await
        .unwrap();
    let rec = events(&lines, "auth")[0].clone();
    assert_eq!(rec["decision"], "Accepted", "{rec}\n{stderr}");
    assert_eq!(rec["decision_type"], "DECISION_TYPE_ACCEPTED", "{rec}");
    assert!(!stderr.contains("ERROR"), "SDK logged errors:\n{stderr}");

    let bad = auth("wrong");
    let (lines, _) = tokio::task::spawn_blocking(move || run(bad, Duration::from_secs(60)))
        .await
        .unwrap();
    let rec = events(&lines, "auth")[0].clone();
    // Refused: the SDK fails open (decision Unreachable) and reports the gRPC error.
    assert_eq!(rec["error_code"], "UNAUTHENTICATED", "{rec}");
    assert_eq!(rec["decision"], "Unreachable", "{rec}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Our check.proto against the descriptors generated into aperture-py: every message, field
/// number, type and enum value must be identical.
#[test]
fn proto_matches_aperture_py_descriptors() {
    let Some(sdk) = sdk_dir() else { return };
    let path = std::env::temp_dir().join(format!("tollgate-grpc-fds-{}.bin", std::process::id()));
    std::fs::write(&path, tollgate_grpc::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut py = Command::new(sdk.join("py/bin/python"));
    py.arg(root().join("tests/sdk/compare_descriptors.py"))
        .arg(&path);
    let (lines, stderr) = run(py, Duration::from_secs(60));
    let _ = std::fs::remove_file(&path);
    let rec = events(&lines, "descriptors")[0];
    assert_eq!(rec["diffs"], serde_json::json!([]), "{rec}\n{stderr}");
    assert_eq!(rec["services_equal"], true, "{rec}");
    assert!(rec["compared"].as_u64().unwrap() >= 39, "{rec}");
}
