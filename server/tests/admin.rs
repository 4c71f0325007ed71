//! The admin HTTP port of a real `tollgate` process: `/metrics` after known traffic (counters
//! asserted exactly), the JSON API and its CLI wrappers, the bearer token, `/readyz`.

mod common;

use common::{
    cli_check, run_cli, start_server, temp_dir, tollgate_bin, RunningServer, READY_TIMEOUT,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;
use tollgate_server::admin::api::{BucketReply, PoliciesReply, TopReply};
use tollgate_server::admin::client::AdminClient;

const TOKEN: &str = "admin-token-for-tests";

/// One shard (so no check hops and every counter has one writer), one policy: three tokens
/// per user, never refilled, so the traffic's outcomes are known exactly.
fn config(extra_server: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: "off", shards: 1{extra_server} }}
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 3
      fill_amount: 0
      parameters: {{ interval: 1s, limit_by_label_key: user }}
      selectors: [{{ control_point: api }}]
      overrides: [{{ label_value: vip, limit_scale_factor: 10 }}]
"#
    )
}

fn admin_addr(server: &RunningServer) -> String {
    server
        .admin
        .expect("admin port in the ready line")
        .to_string()
}

fn client(server: &RunningServer, token: Option<&str>) -> AdminClient {
    AdminClient::new(
        &admin_addr(server),
        token.map(str::to_string),
        Duration::from_secs(10),
    )
}

/// `tollgate check` for `user`: whether it was accepted.
fn check(server: &RunningServer, user: &str) -> bool {
    cli_check(server, "api", user)
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &HashMap<String, f64>, series: &str) -> f64 {
    *all.get(series)
        .unwrap_or_else(|| panic!("no sample {series} in /metrics"))
}

/// Each gRPC service's decisions are counted under its own protocol: two Aperture `Check`s and
/// four Envoy RLS calls on the policy above (3 tokens per user), then the counters exactly.
#[test]
fn grpc_decisions_are_counted_per_service() {
    use tollgate_grpc::proto::aperture::flowcontrol::check::v1 as check;
    use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
        rate_limit_descriptor::Entry, RateLimitDescriptor,
    };
    use tollgate_grpc::proto::envoy::service::ratelimit::v3 as rls;

    let server = start_server(&config("").replace(r#"grpc: "off""#, "grpc: 127.0.0.1:0"));
    let url = format!(
        "http://{}",
        server.grpc.expect("grpc port in the ready line")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (aperture, envoy) = rt.block_on(async {
        let channel = tollgate_grpc::tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut sdk =
            check::flow_control_service_client::FlowControlServiceClient::new(channel.clone());
        let mut aperture = Vec::new();
        for _ in 0..2 {
            let req = check::CheckRequest {
                control_point: "api".into(),
                labels: [("user".to_string(), "carol".to_string())].into(),
                ..Default::default()
            };
            let resp = sdk.check(req).await.expect("check").into_inner();
            aperture.push(resp.decision_type);
        }
        let mut envoy_client = rls::rate_limit_service_client::RateLimitServiceClient::new(channel);
        let mut envoy = Vec::new();
        for _ in 0..4 {
            let req = rls::RateLimitRequest {
                domain: "api".into(),
                descriptors: vec![RateLimitDescriptor {
                    entries: vec![Entry {
                        key: "user".into(),
                        value: "dave".into(),
                    }],
                    limit: None,
                }],
                hits_addend: 1,
            };
            let resp = envoy_client
                .should_rate_limit(req)
                .await
                .expect("rls")
                .into_inner();
            envoy.push(resp.overall_code);
        }
        (aperture, envoy)
    });
    let accepted = check::check_response::DecisionType::Accepted as i32;
    assert_eq!(aperture, [accepted, accepted]);
    let (ok, over) = (
        rls::rate_limit_response::Code::Ok as i32,
        rls::rate_limit_response::Code::OverLimit as i32,
    );
    assert_eq!(envoy, [ok, ok, ok, over]);

    let (status, text) = client(&server, None).get("/metrics").expect("scrape");
    assert_eq!(status, 200, "{text}");
    let all = samples(&text);
    for (protocol, accepted, rejected) in [
        ("binary", 0.0, 0.0),
        ("aperture_grpc", 2.0, 0.0),
        ("envoy_rls", 3.0, 1.0),
    ] {
        for (result, n) in [
            ("accepted", accepted),
            ("rejected", rejected),
            ("error", 0.0),
        ] {
            assert_eq!(
                sample(
                    &all,
                    &format!(
                        "tollgate_checks_total{{protocol=\"{protocol}\",result=\"{result}\"}}"
                    )
                ),
                n,
                "{protocol} {result}"
            );
        }
    }
    for (protocol, n) in [("aperture_grpc", 2.0), ("envoy_rls", 4.0)] {
        assert_eq!(
            sample(
                &all,
                &format!("tollgate_check_duration_seconds_count{{protocol=\"{protocol}\"}}")
            ),
            n,
            "{protocol}"
        );
    }
}

#[test]
fn metrics_api_and_cli_report_known_traffic_exactly() {
    let server = start_server(&config(""));
    let outcomes: Vec<bool> = ["alice", "alice", "alice", "alice", "alice", "bob"]
        .iter()
        .map(|u| check(&server, u))
        .collect();
    assert_eq!(outcomes, [true, true, true, false, false, true]);

    let admin = client(&server, None);
    let (status, text) = admin.get("/metrics").expect("scrape");
    assert_eq!(status, 200, "{text}");
    let all = samples(&text);
    for (outcome, n) in [
        ("accepted", 4.0),
        ("rejected", 2.0),
        ("key_not_found", 0.0),
        ("returned", 0.0),
        ("error", 0.0),
    ] {
        assert_eq!(
            sample(
                &all,
                &format!("tollgate_decisions_total{{policy=\"per_user\",outcome=\"{outcome}\"}}")
            ),
            n,
            "{outcome}"
        );
    }
    for (result, n) in [("accepted", 4.0), ("rejected", 2.0), ("error", 0.0)] {
        assert_eq!(
            sample(
                &all,
                &format!("tollgate_checks_total{{protocol=\"binary\",result=\"{result}\"}}")
            ),
            n,
            "binary {result}"
        );
        assert_eq!(
            sample(
                &all,
                &format!("tollgate_checks_total{{protocol=\"aperture_grpc\",result=\"{result}\"}}")
            ),
            0.0
        );
    }
    assert_eq!(
        sample(
            &all,
            "tollgate_check_duration_seconds_count{protocol=\"binary\"}"
        ),
        6.0
    );
    assert_eq!(
        sample(&all, "tollgate_refusals_total{reason=\"exhausted\"}"),
        2.0
    );
    assert_eq!(sample(&all, "tollgate_buckets{shard=\"0\"}"), 2.0);
    assert_eq!(
        sample(&all, "tollgate_cross_shard_hops_total{shard=\"0\"}"),
        0.0
    );
    assert_eq!(
        sample(&all, "tollgate_overloaded_replies_total{shard=\"0\"}"),
        0.0
    );
    assert_eq!(sample(&all, "tollgate_queue_depth{shard=\"0\"}"), 0.0);
    assert_eq!(sample(&all, "tollgate_flows_in_flight{shard=\"0\"}"), 0.0);
    assert!(sample(&all, "process_resident_memory_bytes") > 0.0);

    let policies: PoliciesReply = admin.policies().expect("policies");
    assert_eq!(policies.policies.len(), 1);
    let per_user = &policies.policies[0];
    assert_eq!(
        (per_user.name.as_str(), per_user.kind.as_str()),
        ("per_user", "rate_limiter")
    );
    assert_eq!(
        (per_user.bucket.capacity, per_user.bucket.fill_amount),
        (3.0, 0.0)
    );
    assert!(!per_user.digest.is_empty() && !policies.digest.is_empty());

    let alice: BucketReply = admin.bucket("per_user", Some("alice")).expect("bucket");
    assert!(alice.exists);
    assert_eq!((alice.tokens, alice.owner_shard), (0.0, 0));
    let carol = admin.bucket("per_user", Some("carol")).expect("bucket");
    assert!(!carol.exists);
    assert_eq!(carol.tokens, 3.0, "a missing bucket reads as full");

    let top: TopReply = admin.top("per_user", 10).expect("top");
    let keys: Vec<(&str, f64)> = top
        .keys
        .iter()
        .map(|k| (k.key.as_str(), k.tokens))
        .collect();
    assert_eq!(keys, [("alice", 3.0), ("bob", 1.0)]);

    // The CLI wrappers print the same documents.
    let addr = admin_addr(&server);
    let (code, out, err) = run_cli(&["policies", "--admin", &addr, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<PoliciesReply>(&out).expect("json"),
        policies
    );
    let (code, out, err) = run_cli(&[
        "bucket", "--admin", &addr, "--policy", "per_user", "--key", "bob", "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let bob: BucketReply = serde_json::from_str(&out).expect("json");
    assert_eq!((bob.key.as_str(), bob.tokens), ("bob", 2.0));
    let (code, out, err) = run_cli(&["top", "--admin", &addr, "--policy", "per_user"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alice") && out.contains("bob"), "{out}");
    let (code, _, err) = run_cli(&["bucket", "--admin", &addr, "--policy", "nope", "--key", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("no policy named \"nope\""), "{err}");
}

#[test]
fn the_admin_token_guards_everything_but_healthz() {
    let server = start_server(&config(&format!(", admin_token: {TOKEN}")));
    let anonymous = client(&server, None);
    let wrong = client(&server, Some("not-the-admin-token-at-all"));
    let right = client(&server, Some(TOKEN));
    assert_eq!(anonymous.get("/healthz").expect("healthz").0, 200);
    for path in ["/readyz", "/metrics", "/api/v1/policies"] {
        assert_eq!(anonymous.get(path).expect(path).0, 401, "{path} anonymous");
        assert_eq!(wrong.get(path).expect(path).0, 401, "{path} wrong token");
        assert_eq!(right.get(path).expect(path).0, 200, "{path} with the token");
    }
    let addr = admin_addr(&server);
    let (code, _, err) = run_cli(&["policies", "--admin", &addr]);
    assert_eq!(code, 2);
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = run_cli(&["policies", "--admin", &addr, "--token", TOKEN]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("per_user"), "{out}");
}

#[test]
fn readyz_is_ready_once_serving_and_not_while_joining_a_cluster() {
    let server = start_server(&config(""));
    let (status, body) = client(&server, None).get("/readyz").expect("readyz");
    assert_eq!((status, body.trim()), (200, "ready"));
    drop(server);

    // A clustered node whose seed never answers waits (join_timeout) before it serves:
    // /readyz says so, while /healthz says the process is alive.
    let dir = temp_dir("admin-join");
    let file = dir.join("node.yaml");
    let unanswered = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let seed = unanswered.local_addr().expect("addr");
    std::fs::write(
        &file,
        format!(
            "{}cluster:\n  gossip: 127.0.0.1:0\n  seeds: [{seed}]\n  secret: a-test-cluster-secret\n  join_timeout: 60s\n",
            config("")
        ),
    )
    .expect("config");
    let mut child = Command::new(tollgate_bin())
        .args(["serve", "--config"])
        .arg(&file)
        .args(["--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let admin = loop {
        let line = rx.recv_timeout(READY_TIMEOUT).expect("admin port line");
        if line.contains("admin port listening") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .expect("admin= field")
                .to_string();
            break AdminClient::new(&addr, None, Duration::from_secs(10));
        }
    };
    // The node logs that it waits for its peers once its shards serve; poll /readyz with a
    // deadline until it reports the join (it reports "starting" before).
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let joining = loop {
        let (status, body) = admin.get("/readyz").expect("readyz");
        assert_eq!(status, 503, "not ready while joining: {body}");
        if body.contains("joining the cluster") {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never joining: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(joining.starts_with("starting"), "{joining}");
    assert_eq!(admin.get("/healthz").expect("healthz").0, 200);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tollgate set-limit` on a running server.
fn set_limit(server: &RunningServer, args: &[&str]) -> (i32, String, String) {
    let addr = admin_addr(server);
    let mut all = vec!["set-limit", "--admin", &addr, "--policy", "per_user"];
    all.extend_from_slice(args);
    run_cli(&all)
}

#[test]
fn a_runtime_limit_change_applies_to_the_next_decision_without_resetting_buckets() {
    let server = start_server(&config(""));
    let admin = client(&server, None);
    // alice has 1 of 3 tokens left.
    assert!(check(&server, "alice") && check(&server, "alice"));

    // Raise the capacity to 5: alice's bucket keeps its 1 token (no reset to 5, and with
    // fill_amount 0 it gains none), a new bucket starts with 5.
    let (code, out, err) = set_limit(&server, &["--capacity", "5", "--json"]);
    assert_eq!(code, 0, "{err}");
    let changed: tollgate_server::admin::api::PolicyInfo =
        serde_json::from_str(&out).expect("policy json");
    assert_eq!(
        (changed.bucket.capacity, changed.bucket.fill_amount),
        (5.0, 0.0)
    );
    let before = admin.policies().expect("policies");
    assert_eq!(before.policies[0].bucket.capacity, 5.0);
    assert_eq!(
        before.policies[0].digest, changed.digest,
        "the same limiter, other limits"
    );
    assert_eq!(
        admin
            .bucket("per_user", Some("alice"))
            .expect("bucket")
            .tokens,
        1.0
    );
    assert!(check(&server, "alice"), "the token alice had left");
    assert!(!check(&server, "alice"), "alice's bucket was not refilled");
    let bob: Vec<bool> = (0..6).map(|_| check(&server, "bob")).collect();
    assert_eq!(
        bob,
        [true, true, true, true, true, false],
        "a new bucket holds 5"
    );

    // Lower it to 1 with a fast fill: bob's empty bucket refills, but to 1 token at most.
    let (code, _, err) = set_limit(&server, &["--capacity", "1", "--fill", "1000000"]);
    assert_eq!(code, 0, "{err}");
    let bucket = admin.bucket("per_user", Some("bob")).expect("bucket");
    assert_eq!(bucket.tokens, 1.0, "capped to the new capacity: {bucket:?}");
    assert!(check(&server, "bob"));

    // Bad values change nothing.
    let (code, _, err) = set_limit(&server, &["--capacity", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("bucket_capacity"), "{err}");
    let (code, _, err) = set_limit(&server, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("nothing to change"), "{err}");
    // Values that would make vip's bucket (10x) infinite, and ones JSON cannot carry.
    let (code, _, err) = set_limit(&server, &["--capacity", "1e308"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("\"vip\"") && err.contains("not a finite number"),
        "{err}"
    );
    for flag in ["--capacity", "--fill"] {
        for value in ["inf", "nan"] {
            let (code, _, err) = set_limit(&server, &[flag, value]);
            assert_eq!(code, 2, "{flag} {value}");
            assert!(err.contains("finite number"), "{flag} {value}: {err}");
        }
    }
    let (status, body) = admin
        .post(
            "/api/v1/limit",
            r#"{"policy":"per_user","bucket_capacity":null,"fill_amount":2}"#.into(),
        )
        .expect("post");
    assert_eq!(status, 400, "null is not left out: {body}");
    assert!(body.contains("bucket_capacity"), "{body}");
    let (status, body) = admin
        .post(
            "/api/v1/limit",
            r#"{"policy":"per_user","capacity":3}"#.into(),
        )
        .expect("post");
    assert_eq!(status, 400, "unknown field: {body}");
    assert_eq!(
        admin.policies().expect("policies").policies[0].bucket,
        tollgate_server::admin::api::BucketInfo {
            capacity: 1.0,
            fill_amount: 1_000_000.0,
            ..before.policies[0].bucket
        }
    );
}

#[test]
fn a_clustered_node_refuses_runtime_limit_changes() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let gossip = udp.local_addr().expect("addr");
    drop(udp);
    let server = start_server(&format!(
        "{}cluster:\n  gossip: {gossip}\n  seeds: [{gossip}]\n  secret: a-test-cluster-secret\n",
        config("")
    ));
    let (code, _, err) = set_limit(&server, &["--capacity", "5"]);
    assert_eq!(code, 2);
    assert!(err.contains("409") && err.contains("clustered"), "{err}");
    let policies = client(&server, None).policies().expect("policies");
    assert_eq!(policies.policies[0].bucket.capacity, 3.0);
}

#[test]
fn reload_through_the_admin_api_keeps_buckets_and_ends_a_runtime_limit_change() {
    let server = start_server(&config(""));
    let admin = client(&server, None);
    let addr = admin_addr(&server);
    let file = server.dir.join("config.yaml");
    assert!(check(&server, "alice") && check(&server, "alice"));

    // A runtime change lasts until the next reload, which applies the file's values.
    let (code, _, err) = set_limit(&server, &["--capacity", "10"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(
        &file,
        config("").replace("bucket_capacity: 3", "bucket_capacity: 5"),
    )
    .expect("rewrite");
    let (code, out, err) = run_cli(&["reload", "--admin", &addr, "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("report");
    assert_eq!(
        report["changed"],
        serde_json::json!(["per_user"]),
        "{report}"
    );
    assert_eq!(
        admin.policies().expect("policies").policies[0]
            .bucket
            .capacity,
        5.0
    );
    assert_eq!(
        admin
            .bucket("per_user", Some("alice"))
            .expect("bucket")
            .tokens,
        1.0,
        "alice's bucket carried over, not reset"
    );

    // An invalid file changes nothing and says why.
    std::fs::write(
        &file,
        config("").replace("bucket_capacity: 3", "bucket_capacity: -1"),
    )
    .expect("rewrite");
    let (code, _, err) = run_cli(&["reload", "--admin", &addr]);
    assert_eq!(code, 2);
    assert!(err.contains("bucket_capacity"), "{err}");
    assert_eq!(
        admin.policies().expect("policies").policies[0]
            .bucket
            .capacity,
        5.0
    );
    assert!(check(&server, "alice"), "the last of alice's tokens");
    assert!(!check(&server, "alice"));
}
