//! The loadgen against real servers for about a second each: Tollgate started in-process
//! (binary port, gRPC port), the loadgen's own echo server, and redis-server (without it, the
//! Redis tests fail under CI and print why they skip elsewhere: `support::require`).
//! Assertions are about consistency (counts add up, percentiles are ordered, accuracy never
//! exceeds what the limit allows on one node), never about throughput.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::{redis_server, require, Redis};
use tollgate_loadgen::accuracy::Limit;
use tollgate_loadgen::drivers::{Conn, ConnSettings, RedisBatch, RedisConn, RedisLimit};
use tollgate_loadgen::keys::Distribution;
use tollgate_loadgen::target::{Protocol, Spread, Target};
use tollgate_loadgen::{run_blocking, Op, Report, RunConfig, Stop};
use tollgate_protocol::client::CheckRequest;

/// The limit of the test policy: 100 tokens, 10 per second.
const POLICY: &str = r#"
policies:
  - policy_name: bench
    rate_limiter:
      bucket_capacity: 100
      fill_amount: 10
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: bench } ]
"#;

const LIMIT: Limit = Limit {
    capacity: 100.0,
    fill_amount: 10.0,
    interval_ns: 1_000_000_000,
};

/// An in-process Tollgate node (2 shards), optionally with its gRPC port.
struct Node {
    server: Option<tollgate_server::runtime::RunningServer>,
    grpc: Option<tollgate_grpc::GrpcHandle>,
    grpc_addr: Option<SocketAddr>,
}

impl Node {
    fn start(with_grpc: bool) -> Node {
        let yaml = format!("server: {{ listen: 127.0.0.1:0, grpc: off, shards: 2 }}\n{POLICY}");
        let config = tollgate_server::config::parse_str(&yaml, "test").expect("test config parses");
        let server = tollgate_server::runtime::start(
            &config,
            tollgate_server::runtime::StartOptions::default(),
        )
        .expect("server starts");
        let (grpc, grpc_addr) = if with_grpc {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind grpc");
            let addr = listener.local_addr().expect("grpc addr");
            let backend = Arc::new(tollgate_server::grpc_backend::ShardBackend::new(
                server.handle.clone(),
                server.node.metrics.clone(),
            ));
            let handle =
                tollgate_grpc::start(vec![listener], &config.server.grpc_settings(), backend)
                    .expect("grpc starts");
            (Some(handle), Some(addr))
        } else {
            (None, None)
        };
        Node {
            server: Some(server),
            grpc,
            grpc_addr,
        }
    }

    fn target(&self) -> Target {
        let listen = self.server.as_ref().map(|s| s.listen).expect("running");
        target(&format!("tollgate://{listen}"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(g) = self.grpc.take() {
            g.shutdown();
        }
        if let Some(s) = self.server.take() {
            let _ = s.shutdown();
        }
    }
}

fn target(url: &str) -> Target {
    url.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// A short run: 300 ms warm-up, 1 s measured.
fn short(targets: Vec<Target>) -> RunConfig {
    let mut cfg = RunConfig::new(targets);
    cfg.warmup = Duration::from_millis(300);
    cfg.stop = Stop::Duration(Duration::from_secs(1));
    cfg.connections = 2;
    cfg.pipeline = 4;
    cfg.threads = 2;
    cfg
}

/// The JSON report is complete and self-consistent.
fn assert_sane(report: &Report) {
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    let num = |path: &[&str]| -> f64 {
        let mut v = &json;
        for p in path {
            v = v
                .get(*p)
                .unwrap_or_else(|| panic!("missing {path:?} in {json}"));
        }
        v.as_f64()
            .unwrap_or_else(|| panic!("{path:?} not a number in {json}"))
    };
    for field in ["target", "mode", "config", "latency_us"] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    let requests = num(&["requests"]);
    assert!(requests > 0.0, "no requests: {json}");
    assert_eq!(
        num(&["accepted"]) + num(&["rejected"]) + num(&["errors"]),
        requests,
        "{json}"
    );
    assert!(num(&["duration_s"]) > 0.0);
    assert!(num(&["decisions_per_sec"]) >= 0.0);
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|q| num(&["latency_us", q]))
        .collect();
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {p:?}"
    );
    assert!(p[0] > 0.0, "{json}");
}

#[test]
fn binary_protocol_run_is_consistent_and_never_over_admits_on_one_node() {
    let node = Node::start(false);
    let mut cfg = short(vec![node.target()]);
    cfg.keys = 5;
    cfg.distribution = Distribution::Zipf(1.1);
    cfg.limit = Some(LIMIT);
    let report = run_blocking(cfg).expect("run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    let acc = report.accuracy.expect("accuracy with a limit");
    assert!(acc.keys_used >= 1 && acc.keys_used <= 5);
    // One exact node: admissions stay within what the limit allows (the window the loadgen
    // uses is never narrower than the server's).
    assert!(acc.worst_ratio <= 1.0 + 1e-6, "{acc:?}");
    assert!(acc.admitted_tokens > 0.0);
}

#[test]
fn batches_and_open_loop_run() {
    let node = Node::start(false);
    let mut cfg = short(vec![node.target()]);
    cfg.batch = 16;
    cfg.keys = 100_000;
    let report = run_blocking(cfg).expect("batch run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    // Every check of a batch is counted (a batch is split over both shards' ports).
    assert_eq!(report.requests % 16, 0, "{}", report.requests);

    // A few hot keys, batched: each admission is recorded against its own key, so one exact
    // node never admits more than the limit allows for any key; a requests stop counts checks.
    let mut cfg = short(vec![node.target()]);
    cfg.batch = 16;
    cfg.keys = 5;
    cfg.limit = Some(LIMIT);
    cfg.stop = Stop::Requests(20_000);
    let report = run_blocking(cfg).expect("hot batch run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert!(report.requests >= 20_000, "{}", report.requests);
    let acc = report.accuracy.expect("accuracy with a limit");
    assert!(acc.keys_used >= 1 && acc.keys_used <= 5, "{acc:?}");
    assert!(acc.worst_ratio <= 1.0 + 1e-6, "{acc:?}");
    assert!(acc.admitted_tokens > 0.0, "{acc:?}");
    assert!(
        report.rejected > 0,
        "5 keys at this rate must hit the limit"
    );

    // Open loop takes the general path (the client library), batches included.
    for batch in [1, 4] {
        let mut cfg = short(vec![node.target()]);
        cfg.rate = Some(2000.0);
        cfg.batch = batch;
        cfg.stop = Stop::Requests(500);
        let report = run_blocking(cfg).expect("open-loop run");
        assert_sane(&report);
        assert_eq!(report.errors, 0, "{:?}", report.first_error);
        assert_eq!(report.mode, "open");
        // Requests mode stops at (about) the number asked for: never fewer.
        assert!(report.requests >= 500, "{}", report.requests);
    }
}

#[test]
fn two_targets_without_sync_show_over_admission_of_a_hot_key() {
    let (a, b) = (Node::start(false), Node::start(false));
    // Key spread: each key lives on one node: exact.
    let mut cfg = short(vec![a.target(), b.target()]);
    cfg.spread = Spread::Key;
    cfg.keys = 10;
    cfg.limit = Some(LIMIT);
    cfg.control_point = "bench".into();
    cfg.stop = Stop::Requests(3000);
    let report = run_blocking(cfg).expect("key-spread run");
    assert_sane(&report);
    let acc = report.accuracy.expect("accuracy");
    assert!(acc.worst_ratio <= 1.0 + 1e-6, "{acc:?}");

    // Round robin of one hot key over two independent nodes: each admits a full bucket, so
    // the pair admits about twice what one limit allows. A different key prefix starts full.
    let mut cfg = short(vec![a.target(), b.target()]);
    cfg.spread = Spread::RoundRobin;
    cfg.distribution = Distribution::Hot;
    cfg.key_prefix = "hot-".into();
    cfg.limit = Some(LIMIT);
    cfg.warmup = Duration::ZERO;
    cfg.stop = Stop::Requests(3000);
    let report = run_blocking(cfg).expect("round-robin run");
    let acc = report.accuracy.expect("accuracy");
    assert!(
        acc.ratio > 1.2,
        "two unsynced nodes should over-admit: {acc:?}"
    );
}

#[test]
fn grpc_target_runs() {
    let node = Node::start(true);
    let addr = node.grpc_addr.expect("grpc enabled");
    let mut cfg = short(vec![target(&format!("grpc://{addr}"))]);
    cfg.limit = Some(LIMIT);
    let report = run_blocking(cfg).expect("grpc run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert!(report.accepted > 0);
}

#[test]
fn ping_and_echo_measure_round_trips() {
    let node = Node::start(false);
    let mut cfg = short(vec![node.target()]);
    cfg.op = Op::Ping;
    cfg.connections = 1;
    cfg.pipeline = 1;
    let report = run_blocking(cfg).expect("ping run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert!(report.accuracy.is_none());

    let echo = start_echo_server();
    let mut cfg = short(vec![target(&format!("echo://{echo}"))]);
    cfg.op = Op::Ping;
    let report = run_blocking(cfg).expect("echo run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
}

#[test]
fn cli_writes_the_json_file() {
    let node = Node::start(false);
    let dir = std::env::temp_dir().join(format!("loadgen-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("out.json");
    let html = dir.join("out.html");
    let status = Command::new(env!("CARGO_BIN_EXE_tollgate-loadgen"))
        .args(["--target", &node.target().to_string()])
        .args([
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "-c",
            "2",
            "-d",
            "2",
            "--quiet",
        ])
        .args([
            "--capacity",
            "100",
            "--fill-amount",
            "10",
            "--interval",
            "1s",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .stdout(Stdio::null())
        .status()
        .expect("run the binary");
    assert!(status.success());
    let text = std::fs::read_to_string(&json).expect("json written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid json");
    assert!(v["requests"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["accuracy"]["ratio"].is_number(), "{v}");
    assert_eq!(v["config"]["connections"], 2);
    // The HTML report: the four charts, self-contained, and the same totals as the JSON.
    let page = std::fs::read_to_string(&html).expect("html written");
    assert!(page.starts_with("<!DOCTYPE html>") && page.trim_end().ends_with("</html>"));
    assert_eq!(page.matches("<svg").count(), 4, "{page}");
    for outside in ["src=", "href=", "@import", "url("] {
        assert!(
            !page.contains(outside),
            "the page fetches something ({outside})"
        );
    }
    let data = page
        .split("<script type=\"application/json\" id=\"loadgen-data\">")
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("embedded data");
    let data: serde_json::Value = serde_json::from_str(data).expect("embedded JSON");
    assert_eq!(data["report"]["requests"], v["requests"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn timeline_and_targets_add_up_to_the_totals() {
    let (a, b) = (Node::start(false), Node::start(false));
    let mut cfg = short(vec![a.target(), b.target()]);
    cfg.spread = Spread::Key;
    cfg.keys = 50;
    cfg.stop = Stop::Duration(Duration::from_millis(2500));
    let report = run_blocking(cfg).expect("run");
    assert_sane(&report);
    let d = &report.detail;
    // Every measured request is in exactly one sample and one target.
    // One sample per second of the measured phase, the last one after every task ended.
    assert!(d.timeline.len() >= 2, "{:?}", d.timeline.len());
    let sum = |f: fn(&tollgate_loadgen::timeline::Figures) -> u64| -> u64 {
        d.timeline.iter().map(|s| f(&s.all)).sum()
    };
    assert_eq!(sum(|f| f.accepted), report.accepted);
    assert_eq!(sum(|f| f.rejected), report.rejected);
    assert_eq!(sum(|f| f.errors), report.errors);
    assert_eq!(d.targets.len(), 2);
    assert_eq!(
        d.targets
            .iter()
            .map(|t| t.accepted + t.rejected + t.errors)
            .sum::<u64>(),
        report.requests
    );
    // Key spread over 50 keys: both targets got traffic.
    assert!(
        d.targets.iter().all(|t| t.accepted + t.rejected > 0),
        "{:?}",
        d.targets
    );
    for s in &d.timeline {
        assert_eq!(
            s.targets.iter().map(|t| t.accepted).sum::<u64>(),
            s.all.accepted
        );
    }
    assert!(d.timeline.windows(2).all(|w| w[0].end_s < w[1].end_s));
    assert_eq!(
        d.histogram.iter().map(|b| b.count).sum::<u64>(),
        report.accepted + report.rejected
    );
    let page = tollgate_loadgen::html::render(&report);
    assert!(page.contains(&a.target().to_string()) && page.contains(&b.target().to_string()));
}

fn start_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let _ = tollgate_loadgen::drivers::echo_server(listener).await;
        });
    });
    addr
}

/// A private redis-server; `None` when the test skips (see [`require`]).
fn start_redis() -> Option<Redis> {
    require("redis-server", redis_server())
}

fn redis_limit(capacity: f64, fill: f64, interval: Duration) -> RedisLimit {
    RedisLimit {
        capacity: capacity.to_string(),
        fill_amount: fill.to_string(),
        interval_us: interval.as_micros().to_string(),
    }
}

fn req(key: &str, tokens: f64) -> CheckRequest {
    CheckRequest::new("bench").label("user", key).tokens(tokens)
}

#[test]
fn redis_lua_token_bucket_semantics() {
    let Some(redis) = start_redis() else { return };
    let addr = redis.addr.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Practically no fill: a new key starts full, 5 takes, then refusals.
        let slow = RedisConn::connect(
            &addr,
            redis_limit(5.0, 1.0, Duration::from_secs(3600)),
            RedisBatch::Pipelined,
        )
        .await
        .expect("connect");
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(slow.check(&req("a", 1.0)).await.expect("check"));
        }
        assert_eq!(got, [true, true, true, true, true, false, false]);

        // A take larger than what is left is refused without taking anything.
        assert_eq!(slow.check(&req("b", 3.0)).await, Ok(true));
        assert_eq!(slow.check(&req("b", 3.0)).await, Ok(false));
        assert_eq!(slow.check(&req("b", 2.0)).await, Ok(true));
        assert_eq!(slow.check(&req("b", 1.0)).await, Ok(false));
        // More than the capacity can never be taken.
        assert_eq!(slow.check(&req("c", 6.0)).await, Ok(false));

        // The bucket expires once it would be full again (here: in ~2 h at most).
        let ttl = slow
            .call(
                {
                    let mut out = Vec::new();
                    tollgate_loadgen::resp::encode_command(&mut out, &[b"PTTL", b"tg:bench:a"]);
                    out
                },
                1,
            )
            .await
            .expect("pttl");
        match ttl.first() {
            Some(tollgate_loadgen::resp::Value::Int(ms)) => {
                assert!(*ms > 0 && *ms <= 5 * 3_600_000, "{ms}")
            }
            other => panic!("PTTL answered {other:?}"),
        }

        // Continuous fill, capped at the capacity: 1 token per 200 ms, capacity 2.
        let fast = RedisConn::connect(
            &addr,
            redis_limit(2.0, 1.0, Duration::from_millis(200)),
            RedisBatch::Pipelined,
        )
        .await
        .expect("connect");
        let drain = fast.check_many(&[req("f", 1.0), req("f", 1.0)]).await;
        assert_eq!(drain, [Ok(true), Ok(true)]);
        // >= 2 tokens' worth of time: refilled to the cap (2), not beyond.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let burst = fast
            .check_many(&[req("f", 1.0), req("f", 1.0), req("f", 1.0)])
            .await;
        assert_eq!(burst, [Ok(true), Ok(true), Ok(false)]);
    });
}

#[test]
fn redis_baseline_run_is_consistent() {
    let Some(redis) = start_redis() else { return };
    let mut cfg = short(vec![target(&format!("redis://{}", redis.addr))]);
    cfg.keys = 3;
    let report = run_blocking(cfg).expect("redis run");
    assert_sane(&report);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    // All targets are Redis: the loadgen sets the limit itself and reports accuracy.
    let acc = report.accuracy.expect("accuracy");
    assert!(acc.worst_ratio <= 1.0 + 1e-6, "{acc:?}");
    assert!(
        report.rejected > 0,
        "3 keys at 100 + 10/s saturate within a second"
    );

    let mut cfg = short(vec![target(&format!("redis://{}", redis.addr))]);
    cfg.op = Op::Ping;
    assert_sane(&run_blocking(cfg).expect("redis ping"));

    // Connection details are exercised through Conn as well.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let t = Target {
            protocol: Protocol::Redis,
            addr: redis.addr.to_string(),
        };
        let settings = ConnSettings {
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            max_in_flight: 16,
            redis_limit: redis_limit(1.0, 1.0, Duration::from_secs(3600)),
            access: Default::default(),
            redis_batch: RedisBatch::Pipelined,
        };
        let conn = Conn::connect(&t, &settings).await.expect("connect");
        assert_eq!(conn.check(&req("conn", 1.0)).await, Ok(true));
        assert_eq!(conn.check(&req("conn", 1.0)).await, Ok(false));
        assert_eq!(conn.ping(b"x").await, Ok(()));
        // The multi-key script: same bucket per key, decided in order within one call.
        let settings = ConnSettings {
            redis_batch: RedisBatch::OneScript,
            ..settings
        };
        let conn = Conn::connect(&t, &settings).await.expect("connect");
        let batch = [
            req("multi-a", 1.0),
            req("multi-b", 1.0),
            req("multi-a", 1.0),
        ];
        assert_eq!(
            conn.check_batch(&batch).await,
            vec![Ok(true), Ok(true), Ok(false)]
        );
    });
}
