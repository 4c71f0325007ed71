#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
//! The server's behaviour over its binary protocol, against the real binary on free ports.

mod common;

use common::{run_cli, start_server, temp_dir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tollgate_protocol::client::{
    blocking::Client, CheckRequest, ClientConfig, ClientError, FailMode,
};
use tollgate_protocol::{
    decode_reply, encode_check, encode_ping, opcode, routing, CheckSpec, ErrorCode, LimiterOutcome,
    ProtocolVersion, Reply, StrRef,
};

/// Generous per-request timeout: debug builds on a loaded 2-core CI box.
const TIMEOUT: Duration = Duration::from_secs(10);

const POLICIES: &str = r#"
server: { listen: 127.0.0.1:0, grpc: off, shards: 2 }
policies:
  - policy_name: five_per_user
    rate_limiter:
      bucket_capacity: 5
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: cost, denied_response_status_code: 429 }
      overrides: [ { label_value: vip, limit_scale_factor: 2 } ]
      selectors: [ { control_point: checkout } ]
  - policy_name: eu_premium
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { denied_response_status_code: TooManyRequests }
      selectors:
        - control_point: search
          label_matcher:
            match_labels: { region: eu }
            match_expressions: [ { key: tier, operator: In, values: [premium] } ]
"#;

fn client(addr: &str, shard_aware: bool) -> Client {
    let mut cfg = ClientConfig::new(addr.to_string(), FailMode::Closed);
    cfg.shard_aware = shard_aware;
    cfg.request_timeout = TIMEOUT;
    cfg.connect_timeout = TIMEOUT;
    Client::connect(cfg).expect("connect")
}

fn req(cp: &str, labels: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        control_point: cp.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tokens: None,
        wait: None,
    }
}

fn accepted(c: &Client, r: &CheckRequest, n: usize) -> Vec<bool> {
    (0..n)
        .map(|_| c.check(r).expect("check").accepted())
        .collect()
}

#[test]
fn capacity_five_admits_exactly_five_per_user() {
    let server = start_server(POLICIES);
    let c = client(&server.addr(), true);
    let alice = req("checkout", &[("user", "alice")]);
    assert_eq!(
        accepted(&c, &alice, 8),
        [true, true, true, true, true, false, false, false]
    );
    let reply = c.check(&alice).unwrap();
    assert_eq!(reply.limiters.len(), 1);
    assert_eq!(reply.limiters[0].outcome, LimiterOutcome::Rejected);
    assert_eq!(reply.limiters[0].status_code, 429);
    assert!(reply.wait_ns > 0, "rejections report a wait");
    assert!(
        c.check(&req("checkout", &[("user", "bob")]))
            .unwrap()
            .accepted(),
        "bob is unaffected"
    );
    assert!(
        c.check(&req("browse", &[("user", "alice")]))
            .unwrap()
            .accepted(),
        "no policy on browse"
    );
}

#[test]
fn overrides_tokens_label_and_missing_label() {
    let server = start_server(POLICIES);
    let c = client(&server.addr(), true);
    let vip = req("checkout", &[("user", "vip")]);
    assert_eq!(
        accepted(&c, &vip, 12).iter().filter(|a| **a).count(),
        10,
        "override x2"
    );

    let heavy = req("checkout", &[("user", "carol"), ("cost", "4")]);
    let r = c.check(&heavy).unwrap();
    assert!(r.accepted());
    assert_eq!(r.limiters[0].remaining, 1.0);
    assert!(
        !c.check(&heavy).unwrap().accepted(),
        "4 more do not fit in 1"
    );

    let bad = req("checkout", &[("user", "carol"), ("cost", "many")]);
    let err = c.check(&bad).unwrap_err().to_string();
    assert!(
        err.contains("cost"),
        "bad tokens label is a clear error: {err}"
    );

    let anonymous = req("checkout", &[("region", "eu")]);
    for _ in 0..8 {
        let r = c.check(&anonymous).unwrap();
        assert!(r.accepted());
        assert_eq!(r.limiters[0].outcome, LimiterOutcome::KeyNotFound);
    }
}

#[test]
fn label_matchers_select_flows() {
    let server = start_server(POLICIES);
    let c = client(&server.addr(), true);
    let eu_premium = req(
        "search",
        &[("user", "dan"), ("region", "eu"), ("tier", "premium")],
    );
    assert_eq!(accepted(&c, &eu_premium, 3), [true, true, false]);
    let us_premium = req(
        "search",
        &[("user", "dan"), ("region", "us"), ("tier", "premium")],
    );
    let eu_free = req(
        "search",
        &[("user", "dan"), ("region", "eu"), ("tier", "free")],
    );
    for r in [us_premium, eu_free] {
        let reply = c.check(&r).unwrap();
        assert!(
            reply.accepted() && reply.limiters.is_empty(),
            "not selected: {reply:?}"
        );
    }
}

/// Picks a user whose bucket lives on `shard` of `n`.
fn user_on_shard(shard: usize, n: usize) -> String {
    nth_on_shard("user", shard, n, 0)
}

/// The `nth` label value `{prefix}-{i}` whose bucket lives on `shard` of `n`.
fn nth_on_shard(prefix: &str, shard: usize, n: usize, nth: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|v| routing::shard_for(routing::routing_hash(v.as_bytes()), n) == shard)
        .nth(nth)
        .unwrap()
}

#[test]
fn checks_on_a_shard_that_does_not_own_the_key_get_the_same_answers() {
    checks_on_either_shard_see_one_bucket(POLICIES);
}

/// The same with the shards' main rings interrupting them on every completion, as glommio
/// does upstream (`coop_taskrun: false`): the escape hatch serves socket reads and
/// cross-shard hops too.
#[test]
fn checks_on_either_shard_see_one_bucket_without_coop_taskrun() {
    let yaml = POLICIES.replace("shards: 2 }", "shards: 2, coop_taskrun: false }");
    assert_ne!(yaml, POLICIES);
    checks_on_either_shard_see_one_bucket(&yaml);
}

fn checks_on_either_shard_see_one_bucket(yaml: &str) {
    let server = start_server(yaml);
    assert_eq!(server.shard_ports.len(), 2);
    let user = user_on_shard(1, 2);
    // Connect straight to shard 0's own port, not shard-aware: every check hops to shard 1.
    let wrong = client(&format!("127.0.0.1:{}", server.shard_ports[0]), false);
    let right = client(&format!("127.0.0.1:{}", server.shard_ports[1]), false);
    let r = req("checkout", &[("user", user.as_str())]);
    let mut remaining = Vec::new();
    for i in 0..8 {
        // Alternate the entry shard: both see one bucket.
        let c = if i % 2 == 0 { &wrong } else { &right };
        let reply = c.check(&r).unwrap();
        remaining.push((reply.accepted(), reply.limiters[0].remaining.floor()));
    }
    let expected: Vec<(bool, f64)> = vec![
        (true, 4.0),
        (true, 3.0),
        (true, 2.0),
        (true, 1.0),
        (true, 0.0),
        (false, 0.0),
        (false, 0.0),
        (false, 0.0),
    ];
    assert_eq!(remaining, expected);
}

#[test]
fn a_rejection_on_one_shard_returns_tokens_taken_on_another() {
    let yaml = r#"
server: { listen: 127.0.0.1:0, grpc: off, shards: 2 }
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 10
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: user }
      selectors: [ { control_point: api } ]
  - policy_name: per_tenant
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: tenant }
      selectors: [ { control_point: api } ]
"#;
    let server = start_server(yaml);
    let c = client(&server.addr(), true);
    let (user, tenant) = (user_on_shard(0, 2), user_on_shard(1, 2));
    let r = req(
        "api",
        &[("user", user.as_str()), ("tenant", tenant.as_str())],
    );
    assert_eq!(accepted(&c, &r, 3), [true, true, false]);
    let reply = c.check(&r).unwrap();
    assert_eq!(reply.limiters[0].outcome, LimiterOutcome::Returned);
    assert_eq!(reply.limiters[1].outcome, LimiterOutcome::Rejected);
    // per_user kept only the two admitted tokens.
    let user_only = req("api", &[("user", user.as_str())]);
    let r = c.check(&user_only).unwrap();
    assert_eq!(
        r.limiters[0].remaining.round(),
        7.0,
        "10 - 2 admitted - this one"
    );
}

/// Two limiters on one control point, keyed by different labels, so one flow can need
/// buckets on two shards.
const USER_AND_TENANT: &str = r#"
server: { listen: 127.0.0.1:0, grpc: off, shards: 2 }
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 10
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: user }
      selectors: [ { control_point: api } ]
  - policy_name: per_tenant
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: tenant }
      selectors: [ { control_point: api } ]
"#;

/// A client bound to one shard's own port that never re-routes: every check enters on
/// `shard`, whoever owns its buckets.
fn entering_on(server: &common::RunningServer, shard: usize) -> Client {
    client(&format!("127.0.0.1:{}", server.shard_ports[shard]), false)
}

/// Drains the tenant's bucket, then sends a flow for `user` and that tenant through shard 0:
/// the user limiter accepts, the tenant limiter rejects, so the user's token must go back to
/// whichever shard owns the user's bucket. Afterwards that bucket must be full: a check for
/// the whole capacity is accepted.
///
/// Every check enters on shard 0, so a take on another shard travels shard 0's outbox to
/// its owner after the give-back the earlier check queued there: the final check sees the
/// give-back without any waiting.
fn tokens_come_back_to_the_accepting_shard(user_owner: usize, tenant_owner: usize) {
    let server = start_server(USER_AND_TENANT);
    assert_eq!(server.shard_ports.len(), 2);
    let user = nth_on_shard("user", user_owner, 2, 0);
    let tenant = nth_on_shard("tenant", tenant_owner, 2, 0);
    let c = entering_on(&server, 0);
    let tenant_only = req("api", &[("tenant", tenant.as_str())]);
    assert_eq!(accepted(&c, &tenant_only, 3), [true, true, false]);

    let both = req(
        "api",
        &[("user", user.as_str()), ("tenant", tenant.as_str())],
    );
    let reply = c.check(&both).unwrap();
    assert!(!reply.accepted(), "{reply:?}");
    let outcomes: Vec<_> = reply.limiters.iter().map(|l| l.outcome).collect();
    assert_eq!(
        outcomes,
        [LimiterOutcome::Returned, LimiterOutcome::Rejected],
        "per_user accepted then handed back, per_tenant rejected"
    );

    let whole_capacity = CheckRequest {
        tokens: Some(10.0),
        ..req("api", &[("user", user.as_str())])
    };
    let reply = c.check(&whole_capacity).unwrap();
    assert!(
        reply.accepted(),
        "user bucket on shard {user_owner} is not full after the give-back: {reply:?}"
    );
}

#[test]
fn a_rejection_on_the_entry_shard_returns_tokens_taken_on_a_remote_shard() {
    // user's bucket on shard 1 (accepts remotely), tenant's on shard 0 (rejects locally).
    tokens_come_back_to_the_accepting_shard(1, 0);
}

#[test]
fn a_rejection_on_a_remote_shard_returns_tokens_taken_on_the_entry_shard() {
    // user's bucket on shard 0 (accepts locally), tenant's on shard 1 (rejects remotely).
    tokens_come_back_to_the_accepting_shard(0, 1);
}

#[test]
fn a_batch_whose_checks_hop_is_answered_in_request_order() {
    batch_answered_in_request_order(false);
}

/// The same batch on shards that hold enough buckets for a batch to be decided in passes
/// (planned once, its buckets prefetched, then decided from the plans): the same answers.
#[test]
fn a_batch_on_shards_past_the_prefetch_threshold_is_answered_the_same() {
    batch_answered_in_request_order(true);
}

/// Live buckets a shard needs before a batch's buckets are prefetched (the server's
/// `BATCH_PREFETCH_MIN_BUCKETS`).
const BATCH_PREFETCH_MIN_BUCKETS: usize = 1 << 16;

/// Checks distinct users at `control_point` (a limiter keyed by `user`), each on the shard that
/// owns it, until both of the server's 2 shards hold more buckets than the threshold.
fn warm_past_prefetch_threshold(server: &common::RunningServer, control_point: &str) {
    let users: Vec<String> = (0..2 * BATCH_PREFETCH_MIN_BUCKETS + 8_192)
        .map(|i| format!("warm-{i}"))
        .collect();
    for shard in 0..2 {
        let owned = users
            .iter()
            .filter(|u| routing::shard_for(routing::routing_hash(u.as_bytes()), 2) == shard)
            .count();
        assert!(owned > BATCH_PREFETCH_MIN_BUCKETS, "shard {shard}: {owned}");
    }
    let warm = client(&server.listen.to_string(), true);
    for chunk in users.chunks(1024) {
        let reqs: Vec<CheckRequest> = chunk
            .iter()
            .map(|u| req(control_point, &[("user", u.as_str())]))
            .collect();
        let items = warm.check_batch(&reqs).unwrap();
        assert!(items.iter().all(|i| i.as_ref().is_ok_and(|r| r.accepted())));
    }
}

fn batch_answered_in_request_order(past_prefetch_threshold: bool) {
    let yaml = r#"
server: { listen: 127.0.0.1:0, grpc: off, shards: 2 }
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 100
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: user }
      request_parameters: { tokens_label_key: cost }
      selectors: [ { control_point: api } ]
"#;
    let server = start_server(yaml);
    if past_prefetch_threshold {
        warm_past_prefetch_threshold(&server, "api");
    }
    let c = entering_on(&server, 0);
    // Slots alternate between users whose buckets are on shard 1 (the check hops) and on
    // shard 0 (decided where it enters), each with its own cost, so every reply names the
    // request it answers; one slot is invalid; the last four take from one remote bucket
    // (capacity 100, cost 40: two fit).
    let mut reqs = Vec::new();
    let mut expected_cost = Vec::new();
    for slot in 0..8 {
        let owner = if slot % 2 == 0 { 1 } else { 0 };
        let user = nth_on_shard("batch", owner, 2, slot);
        let cost = (slot + 1).to_string();
        reqs.push(req(
            "api",
            &[("user", user.as_str()), ("cost", cost.as_str())],
        ));
        expected_cost.push(Some((slot + 1) as f64));
    }
    reqs.push(req("api", &[("user", "whoever"), ("cost", "-1")]));
    expected_cost.push(None);
    let drained = nth_on_shard("batch", 1, 2, 100);
    for _ in 0..4 {
        reqs.push(req("api", &[("user", drained.as_str()), ("cost", "40")]));
        expected_cost.push(Some(40.0));
    }
    let items = c.check_batch(&reqs).unwrap();
    assert_eq!(items.len(), reqs.len());
    for (slot, (item, cost)) in items.iter().zip(&expected_cost).enumerate() {
        match (item, cost) {
            (Ok(reply), Some(cost)) if slot < 8 => {
                assert!(reply.accepted(), "slot {slot}: {reply:?}");
                assert_eq!(reply.limiters[0].tokens, *cost, "slot {slot}: {reply:?}");
                assert_eq!(
                    reply.limiters[0].remaining.floor(),
                    100.0 - cost,
                    "slot {slot}: its own bucket: {reply:?}"
                );
            }
            (Ok(_), Some(_)) => {}
            (Err(e), None) => assert!(e.to_string().contains("cost"), "slot {slot}: {e}"),
            other => panic!("slot {slot}: {other:?}"),
        }
    }
    let drain: Vec<bool> = items[9..]
        .iter()
        .map(|i| {
            let reply = i.as_ref().unwrap();
            assert_eq!(reply.limiters[0].tokens, 40.0, "{reply:?}");
            reply.accepted()
        })
        .collect();
    assert_eq!(
        drain.iter().filter(|a| **a).count(),
        2,
        "two takes of 40 fit in 100: {drain:?}"
    );
    // The takes hopped to the bucket's owner, not a copy of the bucket where they entered:
    // on its owner, 20 tokens are left, so a third take of 40 is refused.
    let on_owner = entering_on(&server, 1)
        .check(&req("api", &[("user", drained.as_str()), ("cost", "40")]))
        .unwrap();
    assert!(!on_owner.accepted(), "the owner's bucket: {on_owner:?}");
}

#[test]
fn a_bad_tokens_label_is_bad_request_and_takes_nothing() {
    let server = start_server(POLICIES);
    for entry in 0..2 {
        let c = entering_on(&server, entry);
        let user = format!("taker-{entry}");
        let with_cost = |cost: &str| req("checkout", &[("user", user.as_str()), ("cost", cost)]);
        let r = c.check(&with_cost("2")).unwrap();
        assert_eq!(r.limiters[0].remaining.floor(), 3.0, "{r:?}");
        for bad in ["-1000", "-1", "NaN", "inf", "-inf", "abc", ""] {
            match c.check(&with_cost(bad)) {
                Err(ClientError::Server { code, message }) => {
                    assert_eq!(code, ErrorCode::BadRequest, "{bad:?}: {message}");
                    assert!(message.contains("cost"), "{bad:?}: {message}");
                }
                other => panic!("tokens label {bad:?}: expected ERROR BAD_REQUEST, got {other:?}"),
            }
        }
        // Exactly 3 tokens are left: none taken, none handed out by a negative cost.
        let r = c.check(&with_cost("3")).unwrap();
        assert!(r.accepted(), "{r:?}");
        assert_eq!(r.limiters[0].remaining.floor(), 0.0, "{r:?}");
        assert!(!c.check(&with_cost("1")).unwrap().accepted());
    }
}

fn read_frame(s: &mut TcpStream) -> (u32, Reply) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(d)) = decode_reply(&buf, 1 << 20, ProtocolVersion::V1) {
            return (d.request_id, d.reply);
        }
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed before a reply");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn check_frame(request_id: u32, user: &str) -> Vec<u8> {
    let labels = [(StrRef::Inline("user"), user)];
    let mut out = Vec::new();
    encode_check(
        &mut out,
        request_id,
        &CheckSpec {
            control_point: StrRef::Inline("checkout"),
            tokens: None,
            wait_budget_ms: None,
            labels: &labels,
        },
    )
    .unwrap();
    out
}

#[test]
fn a_malformed_frame_gets_an_error_and_the_connection_keeps_working() {
    let server = start_server(POLICIES);
    let mut s = TcpStream::connect(server.listen).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let other = client(&server.addr(), true);

    // A CHECK whose body is garbage: length intact, so framing survives.
    let mut bad = Vec::new();
    bad.extend_from_slice(&9u32.to_le_bytes());
    bad.extend_from_slice(&[opcode::CHECK, 0, 7, 0, 0, 0, 0xff, 0xff, 0xff]);
    s.write_all(&bad).unwrap();
    let (id, reply) = read_frame(&mut s);
    assert_eq!(id, 7);
    match reply {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::MalformedFrame),
        other => panic!("expected ERROR, got {other:?}"),
    }
    // Same connection, valid check: answered.
    s.write_all(&check_frame(8, "erin")).unwrap();
    let (id, reply) = read_frame(&mut s);
    assert_eq!(id, 8);
    assert!(
        matches!(reply, Reply::Check(ref r) if r.accepted()),
        "{reply:?}"
    );
    // Other connections are unaffected.
    assert!(other
        .check(&req("checkout", &[("user", "frank")]))
        .unwrap()
        .accepted());

    // A frame declaring more than max_frame_len: ERROR, then the server closes.
    let mut huge = TcpStream::connect(server.listen).unwrap();
    huge.set_read_timeout(Some(TIMEOUT)).unwrap();
    huge.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
    let (_, reply) = read_frame(&mut huge);
    assert!(
        matches!(reply, Reply::Error(ref e) if e.code == ErrorCode::FrameTooLarge),
        "{reply:?}"
    );
    let mut rest = [0u8; 16];
    assert_eq!(
        huge.read(&mut rest).unwrap_or(0),
        0,
        "closed after FRAME_TOO_LARGE"
    );
    assert!(other
        .check(&req("checkout", &[("user", "frank")]))
        .unwrap()
        .accepted());
}

#[test]
fn pipelined_requests_on_one_connection_are_all_answered() {
    let server = start_server(POLICIES);
    let mut s = TcpStream::connect(server.listen).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut burst = Vec::new();
    for id in 1..=200u32 {
        burst.extend_from_slice(&check_frame(id, &format!("p{}", id % 7)));
    }
    s.write_all(&burst).unwrap();
    let replies = read_replies(&mut s, 200);
    assert!(replies.values().all(|r| matches!(r, Reply::Check(_))));
    let seen: Vec<u32> = replies.into_keys().collect();
    assert_eq!(seen, (1..=200).collect::<Vec<_>>());
}

/// Reads replies from `s` until `n` requests are answered, by request id; a second reply to
/// one request fails the test.
fn read_replies(s: &mut TcpStream, n: usize) -> std::collections::BTreeMap<u32, Reply> {
    let mut replies = std::collections::BTreeMap::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while let Ok(Some(d)) = decode_reply(&buf, 1 << 20, ProtocolVersion::V1) {
            let id = d.request_id;
            assert!(
                replies.insert(id, d.reply).is_none(),
                "a second reply to {id}"
            );
            buf.drain(..d.len);
        }
        if replies.len() >= n {
            return replies;
        }
        let got = s.read(&mut chunk).unwrap();
        assert!(got > 0);
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Pipelined `CHECK` frames that arrive together are decided in runs, at any table size
/// (planned, their buckets prefetched, then decided, as a batch past the prefetch threshold
/// is); the answers are the ones each frame gets alone: every request answered, in its own
/// reply, a run split by a PING, a bad cost refused, and each user's five tokens taken exactly
/// once, on this shard or through a hop.
#[test]
fn pipelined_checks_decided_in_runs_are_answered_as_alone() {
    let server = start_server(POLICIES);
    let mut s = TcpStream::connect(server.listen).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (ping_id, bad_id) = (50u32, 90u32);
    let mut burst = Vec::new();
    let mut users = std::collections::BTreeMap::new();
    for id in 1..=140u32 {
        if id == ping_id {
            encode_ping(&mut burst, id, b"between").unwrap();
        } else if id == bad_id {
            let labels = [
                (StrRef::Inline("user"), "p-bad"),
                (StrRef::Inline("cost"), "abc"),
            ];
            let spec = CheckSpec {
                control_point: StrRef::Inline("checkout"),
                tokens: None,
                wait_budget_ms: None,
                labels: &labels,
            };
            encode_check(&mut burst, id, &spec).unwrap();
        } else {
            let user = format!("p{}", id % 7);
            burst.extend_from_slice(&check_frame(id, &user));
            users.insert(id, user);
        }
    }
    s.write_all(&burst).unwrap();
    let replies = read_replies(&mut s, 140);
    assert!(matches!(&replies[&ping_id], Reply::Pong(p) if p == b"between"));
    match &replies[&bad_id] {
        Reply::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest, "{e:?}"),
        other => panic!("bad cost answered {other:?}"),
    }
    let mut accepted = std::collections::BTreeMap::new();
    for (id, user) in &users {
        match &replies[id] {
            Reply::Check(c) => {
                *accepted.entry(user.clone()).or_insert(0) += usize::from(c.accepted())
            }
            other => panic!("check {id} answered {other:?}"),
        }
    }
    assert_eq!(accepted.len(), 7);
    assert!(accepted.values().all(|&n| n == 5), "{accepted:?}");
}

#[test]
fn bad_config_exits_2_naming_the_field() {
    let dir = temp_dir("badcfg");
    let file = dir.join("bad.yaml");
    std::fs::write(&file, POLICIES.replace("interval: 3600s, limit_by_label_key: user }\n      request_parameters: { tokens_label_key", "limit_by_label_key: user }\n      request_parameters: { tokens_label_key")).unwrap();
    let (code, _, stderr) = run_cli(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("policies[0].rate_limiter.parameters.interval: missing"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.yaml"), "names the file: {stderr}");
    let (code, _, stderr) = run_cli(&["validate", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stderr.contains("policies[0].rate_limiter.parameters.interval: missing"));
    let good = dir.join("good.yaml");
    std::fs::write(&good, POLICIES).unwrap();
    let (code, stdout, _) = run_cli(&["validate", good.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("valid"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cli_check_exit_codes_and_graceful_shutdown() {
    let mut server = start_server(POLICIES);
    let addr = server.addr();
    let args = |user: &'static str| {
        [
            "check",
            "--server",
            &addr,
            "--control-point",
            "checkout",
            "--label",
            user,
            "--timeout",
            "10s",
        ]
        .map(String::from)
    };
    let run = |user| {
        let a = args(user);
        run_cli(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let codes: Vec<i32> = (0..6).map(|_| run("user=gina").0).collect();
    assert_eq!(codes, [0, 0, 0, 0, 0, 1]);
    let (code, stdout, _) = run_cli(&[
        "check",
        "--server",
        &addr,
        "--control-point",
        "checkout",
        "--label",
        "user=gina",
        "--json",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["accepted"], false);
    assert_eq!(v["limiters"][0]["policy"], "five_per_user");
    let (code, _, _) = run_cli(&[
        "check",
        "--server",
        "127.0.0.1:1",
        "--control-point",
        "x",
        "--timeout",
        "2s",
    ]);
    assert_eq!(code, 2, "unreachable server is an error");
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

/// Waits (bounded) for a server log line containing `needle`.
fn wait_for_log(server: &common::RunningServer, needle: &str) -> Result<String, Vec<String>> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match server.logs.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Ok(line),
            Ok(line) => seen.push(line),
            Err(_) => return Err(seen),
        }
    }
}

#[test]
fn sighup_reloads_and_sigusr1_is_logged_and_the_server_keeps_serving() {
    let mut server = start_server(POLICIES);
    let c = client(&server.addr(), true);
    let alice = req("checkout", &[("user", "alice")]);
    assert!(c.check(&alice).unwrap().accepted());
    // SIGHUP reloads the unchanged file (tests/reload.rs covers what a reload changes).
    for (signal, needle, level) in [
        (libc::SIGHUP, "policies reloaded", "INFO"),
        (libc::SIGUSR1, "SIGUSR1 received", "WARN"),
    ] {
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(server.child.id() as i32, signal) }, 0);
        let line = wait_for_log(&server, needle).unwrap_or_else(|seen| {
            let status = server.child.try_wait();
            panic!("no {needle:?} log line (server exit status: {status:?}); saw {seen:#?}")
        });
        assert!(line.contains(level), "{line}");
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "signal {signal} killed the server"
        );
        // Same connection and a new one: both still answered, from the same buckets.
        assert!(c.check(&alice).unwrap().accepted());
        assert!(client(&server.addr(), true)
            .check(&alice)
            .unwrap()
            .accepted());
    }
    // Five checks took alice's five tokens: the signals did not reset any bucket.
    assert!(!c.check(&alice).unwrap().accepted());
    let status = server.terminate();
    assert!(status.success(), "SIGTERM still exits 0: {status:?}");
}

#[test]
fn hello_reports_routing_and_members_lists_the_node() {
    let server = start_server(POLICIES);
    let c = client(&server.addr(), true);
    let hello = c.hello();
    assert_eq!(hello.shard_count, 2);
    assert_eq!(hello.shard_ports, server.shard_ports);
    assert_eq!(hello.routing_label_keys, ["user"]);
    assert_eq!(hello.policy_names, ["five_per_user", "eu_premium"]);
    assert_eq!(hello.hash_algo, routing::HASH_FNV1A_64);
    let members = c.members().unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].address, server.addr());
}
