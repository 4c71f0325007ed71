#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Binary protocol version 2 against the real binary: flow ids and `FLOW_END` with a
//! concurrency limiter, wait budgets with a quota scheduler, pipelining behind a waiting
//! check, version 1 clients unchanged, and the CLI's `check --wait` and `flow-end`.
//!
//! Nothing is ordered by sleeping. A flow that needs capacity held by a flow the test has not
//! ended cannot be admitted before that end; a quota token that refills only after seconds
//! cannot be taken by a check decided at once right after the bucket was emptied. Waits are
//! checked only as "answered before its budget", with budgets far above any scheduling delay.

mod common;

use common::{run_cli, start_server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tollgate_protocol::client::{blocking::Client, CheckRequest, ClientConfig, FailMode};
use tollgate_protocol::{
    decode_reply, encode_check, encode_check_batch, encode_hello, encode_ping, BatchItem,
    CheckSpec, DecisionReason, ErrorCode, FlowEndStatus, ProtocolVersion, Refusal, Reply, StrRef,
};

/// Per-request timeout on top of any wait budget: debug builds on a loaded 2-core box.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One flow per tenant in flight at `db`.
const ONE_PER_TENANT: &str = r#"
server: { listen: 127.0.0.1:0, grpc: off, shards: 2 }
policies:
  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 1
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 600s }
      selectors: [ { control_point: db } ]
"#;

/// One token per api key at `llm`, refilled every `interval`; queued flows are decided
/// `margin` before their client's deadline.
fn quota(interval: &str, margin: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: off, shards: 2 }}
policies:
  - policy_name: tokens
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: {{ interval: {interval}, limit_by_label_key: api_key }}
      scheduler: {{ decision_deadline_margin: {margin} }}
      selectors: [ {{ control_point: llm }} ]
"#
    )
}

fn client(addr: &str, shard_aware: bool) -> Client {
    let mut cfg = ClientConfig::new(addr.to_string(), FailMode::Closed);
    cfg.shard_aware = shard_aware;
    cfg.request_timeout = TIMEOUT;
    cfg.connect_timeout = TIMEOUT;
    Client::connect(cfg).expect("connect")
}

fn db(tenant: &str) -> CheckRequest {
    CheckRequest::new("db").label("tenant", tenant)
}

fn llm(key: &str) -> CheckRequest {
    CheckRequest::new("llm").label("api_key", key)
}

#[test]
fn a_concurrency_flow_gets_an_id_holds_its_slot_until_flow_end_and_any_port_ends_it() {
    let server = start_server(ONE_PER_TENANT);
    let c = client(&server.addr(), true);
    assert_eq!(c.version(), ProtocolVersion::LATEST);

    let first = c.check(&db("t1")).unwrap();
    assert!(first.accepted(), "{first:?}");
    let ids: Vec<u64> = first.flow_ids().collect();
    assert_eq!(ids.len(), 1, "{first:?}");
    assert_ne!(ids[0], 0);

    let second = c.check(&db("t1")).unwrap();
    assert!(!second.accepted(), "the slot is held: {second:?}");
    assert_eq!(second.reason, DecisionReason::RateLimited, "{second:?}");
    assert_eq!(second.refusal(), Some(Refusal::Exhausted), "{second:?}");
    assert_eq!(second.flow_ids().count(), 0, "a refused flow holds nothing");

    // End it through the port of the shard that does NOT own it: the server routes the id
    // by its shard bits.
    let owner = usize::try_from(ids[0] >> 52).unwrap();
    assert!(owner < server.shard_ports.len(), "owner {owner} of {ids:?}");
    let other_port = server.shard_ports[1 - owner];
    let elsewhere = client(&format!("127.0.0.1:{other_port}"), false);
    assert_eq!(elsewhere.flow_end(&ids).unwrap(), [FlowEndStatus::Ended]);
    assert_eq!(
        elsewhere.flow_end(&ids).unwrap(),
        [FlowEndStatus::Unknown],
        "a flow ends once"
    );

    let third = c.check(&db("t1")).unwrap();
    assert!(third.accepted(), "the end freed the slot: {third:?}");
    assert_eq!(third.flow_ids().count(), 1);
    assert_ne!(third.flow_ids().next(), Some(ids[0]), "ids are not reused");
    // Ending on the owner's own connection (the shard-aware client routes it there).
    let third_ids: Vec<u64> = third.flow_ids().collect();
    assert_eq!(c.flow_end(&third_ids).unwrap(), [FlowEndStatus::Ended]);
    // An id naming a shard the server does not have is unknown, not an error.
    assert_eq!(
        c.flow_end(&[(4000u64 << 52) | 7]).unwrap(),
        [FlowEndStatus::Unknown]
    );
}

#[test]
fn a_check_with_a_wait_budget_waits_for_its_token_and_is_admitted() {
    let server = start_server(&quota("3s", "100ms"));
    let c = client(&server.addr(), true);
    assert!(c.check(&llm("k")).unwrap().accepted(), "the bucket's token");
    let at_once = c.check(&llm("k")).unwrap();
    assert!(!at_once.accepted(), "no token for 3s: {at_once:?}");
    assert_eq!(at_once.reason, DecisionReason::NoTokens, "{at_once:?}");
    assert_eq!(at_once.refusal(), Some(Refusal::Exhausted), "{at_once:?}");

    let budget = Duration::from_secs(30);
    let started = Instant::now();
    let waited = c.check(&llm("k").wait(budget)).unwrap();
    assert!(
        waited.accepted(),
        "the refilled token admits it: {waited:?}"
    );
    assert!(started.elapsed() < budget);
}

#[test]
fn a_budget_too_short_for_the_refill_is_refused_no_tokens_before_it_expires() {
    // The next token is a minute away; the scheduler gives up `margin` before the client's
    // deadline, so the client hears NO_TOKENS with time to spare.
    let server = start_server(&quota("60s", "4s"));
    let c = client(&server.addr(), true);
    assert!(c.check(&llm("k")).unwrap().accepted(), "the bucket's token");
    let budget = Duration::from_secs(5);
    let started = Instant::now();
    let refused = c.check(&llm("k").wait(budget)).unwrap();
    let took = started.elapsed();
    assert!(!refused.accepted(), "{refused:?}");
    assert_eq!(refused.reason, DecisionReason::NoTokens, "{refused:?}");
    assert!(
        matches!(
            refused.refusal(),
            Some(Refusal::TimedOut | Refusal::Exhausted)
        ),
        "{refused:?}"
    );
    assert!(took < budget, "answered after its budget: {took:?}");
}

/// A raw connection: frames in, replies out, decoded in the connection's version.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    version: ProtocolVersion,
}

impl Raw {
    fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(TIMEOUT * 4)).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
            version: ProtocolVersion::V1,
        }
    }

    /// Sends `HELLO` asking for `version` and switches to what the server answered.
    fn hello(&mut self, version: u16) -> ProtocolVersion {
        let mut out = Vec::new();
        encode_hello(&mut out, 1, version, "wire-v2-test").unwrap();
        self.stream.write_all(&out).unwrap();
        match self.read() {
            (1, Reply::Hello(h)) => {
                self.version = h.version;
                h.version
            }
            other => panic!("expected HELLO_REPLY, got {other:?}"),
        }
    }

    fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).unwrap();
    }

    fn read(&mut self) -> (u32, Reply) {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(d) = decode_reply(&self.buf, 1 << 20, self.version).unwrap() {
                self.buf.drain(..d.len);
                return (d.request_id, d.reply);
            }
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed before a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn llm_frame(request_id: u32, key: &str, wait_budget_ms: Option<u32>) -> Vec<u8> {
    let labels = [(StrRef::Inline("api_key"), key)];
    let mut out = Vec::new();
    encode_check(
        &mut out,
        request_id,
        &CheckSpec {
            control_point: StrRef::Inline("llm"),
            tokens: None,
            wait_budget_ms,
            labels: &labels,
        },
    )
    .unwrap();
    out
}

#[test]
fn requests_pipelined_behind_a_waiting_check_are_answered_first() {
    let server = start_server(&quota("3s", "100ms"));
    let mut raw = Raw::connect(server.listen);
    assert_eq!(raw.hello(2), ProtocolVersion::V2);
    raw.send(&llm_frame(10, "k", None));
    match raw.read() {
        (10, Reply::Check(r)) => assert!(r.accepted(), "the bucket's token: {r:?}"),
        other => panic!("expected reply 10, got {other:?}"),
    }
    // 11 waits up to 30 s for the token refilled in 3 s; 12, 13 and 14 come after it on
    // the same connection and are answered while it waits.
    let mut pipeline = llm_frame(11, "k", Some(30_000));
    pipeline.extend(llm_frame(12, "k", None));
    pipeline.extend(llm_frame(13, "other", None));
    encode_ping(&mut pipeline, 14, b"still here").unwrap();
    raw.send(&pipeline);
    let mut order = Vec::new();
    for _ in 0..4 {
        let (id, reply) = raw.read();
        match (id, &reply) {
            (11, Reply::Check(r)) => assert!(r.accepted(), "waited for its token: {r:?}"),
            (12, Reply::Check(r)) => {
                assert!(!r.accepted(), "no token, decided at once: {r:?}");
                assert_eq!(r.reason, DecisionReason::NoTokens);
            }
            (13, Reply::Check(r)) => assert!(r.accepted(), "another key's token: {r:?}"),
            (14, Reply::Pong(p)) => assert_eq!(p, b"still here"),
            other => panic!("unexpected reply {other:?}"),
        }
        order.push(id);
    }
    assert_eq!(
        order.last(),
        Some(&11),
        "the waiting check is answered last: {order:?}"
    );
}

/// A one-shard server with one pending request per connection (and `server` more
/// settings), a quota of one token per api key every 20 s at `llm` (and `policies` more),
/// and a version 2 connection that took key k's token.
fn one_pending_per_connection(server: &str, policies: &str) -> (common::RunningServer, Raw) {
    let server = start_server(&format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: off, shards: 1, max_in_flight: 1{server} }}
policies:
  - policy_name: tokens
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: {{ interval: 20s, limit_by_label_key: api_key }}
      selectors: [ {{ control_point: llm }} ]
{policies}"#
    ));
    let mut raw = Raw::connect(server.listen);
    assert_eq!(raw.hello(2), ProtocolVersion::V2);
    raw.send(&llm_frame(10, "k", None));
    assert!(
        matches!(raw.read(), (10, Reply::Check(r)) if r.accepted()),
        "the token"
    );
    (server, raw)
}

#[test]
fn a_batch_on_a_full_connection_refuses_only_its_checks_that_would_wait() {
    let (server, mut raw) = one_pending_per_connection(
        "",
        r#"  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 1
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 600s }
      selectors: [ { control_point: db } ]
"#,
    );
    // 11 waits for the token of 20 s from now (the connection's one pending request); then,
    // read after it in order, a batch of a check decided at once and one that would wait
    // (behind 11: 40 s, within its 50 s).
    let mut pipeline = llm_frame(11, "k", Some(30_000));
    let tenant = [(StrRef::Inline("tenant"), "t1")];
    let api_key = [(StrRef::Inline("api_key"), "k")];
    let spec = |control_point, labels, wait_budget_ms| CheckSpec {
        control_point: StrRef::Inline(control_point),
        tokens: None,
        wait_budget_ms,
        labels,
    };
    encode_check_batch(
        &mut pipeline,
        12,
        &[
            spec("db", &tenant, None),
            spec("llm", &api_key, Some(50_000)),
        ],
    )
    .unwrap();
    raw.send(&pipeline);
    let items = match raw.read() {
        (12, Reply::Batch(items)) => items,
        other => panic!("expected the batch's reply, got {other:?}"),
    };
    let flow = match &items[0] {
        BatchItem::Reply(r) if r.accepted() => r.flow_ids().next().expect("a flow id"),
        other => panic!("the check decided at once keeps its decision: {other:?}"),
    };
    match &items[1] {
        BatchItem::Error(e) => assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}"),
        other => panic!("the check that would wait is refused OVERLOADED: {other:?}"),
    }
    // The granted flow is the client's to end: its slot is held until then.
    let c = client(&server.addr(), false);
    assert!(!c.check(&db("t1")).unwrap().accepted(), "the slot is held");
    assert_eq!(c.flow_end(&[flow]).unwrap(), [FlowEndStatus::Ended]);
    assert!(
        c.check(&db("t1")).unwrap().accepted(),
        "and freed by its end"
    );
}

#[test]
fn a_check_refused_overloaded_leaves_no_waiter_behind() {
    // Two waiters per shard.
    let (server, mut raw) = one_pending_per_connection(", max_waiters_per_shard: 2", "");
    // 11 waits (the connection's one pending request, the shard's first waiter); 12 would
    // wait too, and is refused OVERLOADED.
    let mut pipeline = llm_frame(11, "k", Some(30_000));
    pipeline.extend(llm_frame(12, "k", Some(30_000)));
    raw.send(&pipeline);
    match raw.read() {
        (12, Reply::Error(e)) => assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}"),
        other => panic!("expected 12 refused OVERLOADED, got {other:?}"),
    }
    // The shard's second waiter slot is free: another client's flow may queue (and, unable
    // to get a token within its second, is refused for that, not for a full queue).
    let c = client(&server.addr(), false);
    assert!(c.check(&llm("k2")).unwrap().accepted(), "k2's token");
    let queued = c.check(&llm("k2").wait(Duration::from_secs(1))).unwrap();
    assert!(!queued.accepted(), "{queued:?}");
    assert_ne!(queued.refusal(), Some(Refusal::QueueFull), "{queued:?}");
}

#[test]
fn a_version_1_connection_gets_version_1_replies() {
    let server = start_server(&quota("60s", "100ms"));
    for hello in [None, Some(1u16)] {
        let key = format!("v1-{hello:?}");
        let mut raw = Raw::connect(server.listen);
        if let Some(v) = hello {
            assert_eq!(raw.hello(v), ProtocolVersion::V1);
        }
        raw.send(&llm_frame(5, &key, None));
        match raw.read() {
            (5, Reply::Check(r)) => {
                assert!(r.accepted(), "{r:?}");
                assert_eq!(r.flow_ids().count(), 0);
                assert_eq!(r.refusal(), None);
            }
            other => panic!("expected reply 5, got {other:?}"),
        }
        // A scheduler's refusal: NO_TOKENS is sent to version 1 as RATE_LIMITED (1), and
        // the limiter results have the version 1 layout (the v1 decoder reads them whole).
        raw.send(&llm_frame(6, &key, None));
        match raw.read() {
            (6, Reply::Check(r)) => {
                assert!(!r.accepted(), "{r:?}");
                assert_eq!(r.reason, DecisionReason::RateLimited, "{r:?}");
                assert_eq!(r.refusal(), None, "version 1 has no refusal field");
            }
            other => panic!("expected reply 6, got {other:?}"),
        }
    }
    // Asking for a version above the latest gets the latest.
    let mut raw = Raw::connect(server.listen);
    assert_eq!(raw.hello(9), ProtocolVersion::LATEST);
}

#[test]
fn the_cli_prints_flow_ids_and_ends_them() {
    let server = start_server(ONE_PER_TENANT);
    let addr = server.addr();
    let check = |tenant: &str| {
        run_cli(&[
            "check",
            "--server",
            &addr,
            "--control-point",
            "db",
            "--label",
            &format!("tenant={tenant}"),
            "--wait",
            "2s",
            "--json",
        ])
    };
    let (code, stdout, stderr) = check("cli");
    assert_eq!(code, 0, "{stdout}{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let ids: Vec<String> = json["flow_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("flow_ids in {stdout}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{stdout}");
    assert_eq!(ids[0].len(), 16, "16 hex digits: {stdout}");
    assert_eq!(json["limiters"][0]["flow_id"], ids[0].as_str());

    let (code, stdout, _) = check("cli");
    assert_eq!(code, 1, "the slot is held: {stdout}");
    assert!(stdout.contains(r#""refusal":"exhausted""#), "{stdout}");

    let (code, stdout, stderr) = run_cli(&["flow-end", "--server", &addr, &ids[0]]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), format!("{} ended", ids[0]));
    let (code, stdout, _) = run_cli(&["flow-end", "--server", &addr, &ids[0]]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), format!("{} unknown", ids[0]));

    // Human output names the flow id too.
    let (code, stdout, stderr) = run_cli(&[
        "check",
        "--server",
        &addr,
        "--control-point",
        "db",
        "--label",
        "tenant=cli",
    ]);
    assert_eq!(code, 0, "the end freed the slot: {stdout}{stderr}");
    assert!(stdout.contains("flow_id="), "{stdout}");

    let (code, _, stderr) = run_cli(&["flow-end", "--server", &addr, "xyz"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("16 hex digits"), "{stderr}");
}
