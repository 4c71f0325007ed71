#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Quota scheduling and concurrency control through the server's shell, in process: shards
//! started with `runtime::start`, flows decided through the gRPC bridge
//! ([`DecisionHandle::check`] with a deadline, as the gRPC port calls it), flows ended with
//! [`DecisionHandle::end_flows`].
//!
//! Nothing is ordered by sleeping. A check sent to a shard's inbox is planned (and, if it
//! must wait on that shard, queued) before the next message in that inbox is handled, so
//! an answer to a later check on the same shard proves the earlier one is queued. A flow
//! that waits for capacity held by a flow the test has not ended cannot be admitted before
//! that end, whatever the timing. Waiting is measured only as "answered before its
//! deadline".

use std::time::{Duration, Instant};
use tollgate_policy::{
    Checked, ComponentKind, Decision, FlowId, OutcomeKind, OwnedFlow, Refusal, RejectReason,
};
use tollgate_protocol::routing;
use tollgate_server::bridge::{check_batch, AnsweredChecks, DecisionHandle, Inbound, QueuedCheck};
use tollgate_server::runtime::{self, RunningServer, StartOptions};
use tollgate_server::{clock, config};

/// Bounds a hang only: every answer the tests wait for comes long before.
const HANG: Duration = Duration::from_secs(30);

type Answer = tokio::sync::oneshot::Receiver<Checked>;

/// A node started in process, and a runtime to await its answers with a timeout.
struct Node {
    server: Option<RunningServer>,
    rt: tokio::runtime::Runtime,
}

/// A check sent to a shard, not yet awaited.
struct Sent {
    answer: Answer,
    /// The flow sent, which the answer hands back.
    flow: OwnedFlow,
    /// The decisions the shard gave at once (ours among them unless the flow waits).
    answered: tokio::sync::oneshot::Receiver<AnsweredChecks>,
    sent_at: Instant,
}

impl Node {
    fn start(shards: usize, policies: &str) -> Node {
        Node::start_with(shards, "", policies)
    }

    /// [`Node::start`] with more `server:` settings (`, key: value` each).
    fn start_with(shards: usize, server: &str, policies: &str) -> Node {
        let yaml = format!(
            "server: {{ listen: 127.0.0.1:0, grpc: off, shards: {shards}{server} }}\npolicies:\n{policies}"
        );
        let config = config::parse_str(&yaml, "test").expect("test config parses");
        let server = runtime::start(&config, StartOptions::default()).expect("server starts");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        Node {
            server: Some(server),
            rt,
        }
    }

    fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("running")
    }

    fn handle(&self) -> &DecisionHandle {
        &self.server().handle
    }

    /// Decides a flow through the bridge; `deadline` is the time the client waits.
    fn check(&self, cp: &str, labels: &[(&str, &str)], deadline: Option<Duration>) -> Decision {
        let flow = owned(cp, labels);
        self.rt
            .block_on(async {
                tokio::time::timeout(HANG, self.handle().check(flow, deadline)).await
            })
            .expect("answered")
            .expect("reached its shard")
            .decision
            .expect("decided")
    }

    /// Sends a check to the shard the bridge routes it to, without awaiting it.
    fn send(&self, cp: &str, labels: &[(&str, &str)], deadline: Option<Duration>) -> Sent {
        let handle = self.handle();
        let shard = routing::shard_for_labels(
            handle.engine().routing_label_keys(),
            labels.iter().copied(),
            handle.nr_shards(),
        );
        self.send_to(shard, cp, labels, deadline)
    }

    /// Sends a check to `shard`, without awaiting it.
    fn send_to(
        &self,
        shard: usize,
        cp: &str,
        labels: &[(&str, &str)],
        deadline: Option<Duration>,
    ) -> Sent {
        let handle = self.handle();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let (answered_tx, answered) = tokio::sync::oneshot::channel();
        let sent_at = Instant::now();
        let deadline = deadline.map(|d| clock::now_ns() + d.as_nanos() as u64);
        let flow = owned(cp, labels);
        let check = QueuedCheck {
            flow: flow.clone(),
            deadline,
            reply,
        };
        handle
            .send_blocking(
                shard,
                Inbound::CheckBatch {
                    checks: vec![check],
                    answered: answered_tx,
                },
            )
            .expect("shard inbox");
        Sent {
            answer,
            flow,
            answered,
            sent_at,
        }
    }

    /// The answer to a sent check, and how long after sending it came. The answer hands
    /// back the flow sent, whether it was decided at once or waited.
    fn answer(&self, sent: Sent) -> (Decision, Duration) {
        let checked = self
            .rt
            .block_on(async {
                tokio::time::timeout(HANG, async {
                    // A decision given at once comes in the batch's answers; one that
                    // waited comes alone on its own reply.
                    if let Ok(answers) = sent.answered.await {
                        assert!(check_batch::deliver(answers).is_empty());
                    }
                    sent.answer.await
                })
                .await
            })
            .expect("answered in time")
            .expect("shard alive");
        assert_eq!(
            checked.flow, sent.flow,
            "the flow comes back with its answer"
        );
        (checked.decision.expect("decided"), sent.sent_at.elapsed())
    }

    fn end_flows(&self, ids: &[FlowId]) -> Vec<bool> {
        self.rt
            .block_on(async {
                tokio::time::timeout(HANG, self.handle().end_flows(ids.to_vec())).await
            })
            .expect("answered")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown();
        }
    }
}

fn owned(cp: &str, labels: &[(&str, &str)]) -> OwnedFlow {
    OwnedFlow {
        control_point: cp.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tokens: None,
    }
}

/// The outcome of the component of `kind` in a decision.
fn outcome_of(d: &Decision, node: &Node, kind: ComponentKind) -> tollgate_policy::LimiterOutcome {
    *d.limiters
        .iter()
        .find(|o| node.handle().engine().limiter(o.limiter).kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} outcome in {d:?}"))
}

/// The flow id a decision's concurrency component started.
fn flow_of(d: &Decision) -> FlowId {
    d.limiters
        .iter()
        .find_map(|o| o.flow)
        .unwrap_or_else(|| panic!("no flow in {d:?}"))
}

/// A value of `label` whose bucket lives on `shard` of `shards`.
fn value_on(shard: usize, shards: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|v| routing::shard_for(routing::routing_hash(v.as_bytes()), shards) == shard)
        .unwrap()
}

/// One token per `api_key`, refilled every `interval`; 100 ms deadline margin.
fn quota(interval: &str) -> String {
    format!(
        r#"  - policy_name: quota
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: {{ interval: {interval}, limit_by_label_key: api_key }}
      scheduler: {{ decision_deadline_margin: 100ms }}
      selectors: [ {{ control_point: llm }} ]
"#
    )
}

/// At most one flow per `tenant` in flight at `db`; flows wait for it (200 ms margin).
const POOL_SCHEDULER: &str = r#"  - policy_name: pool
    concurrency_scheduler:
      max_concurrency: 1
      concurrency_limiter: { limit_by_label_key: tenant, max_inflight_duration: 600s }
      scheduler: { decision_deadline_margin: 200ms }
      selectors: [ { control_point: db } ]
"#;

#[test]
fn a_quota_check_waits_for_its_tokens_and_is_admitted_before_its_deadline() {
    let node = Node::start(1, &quota("500ms"));
    let k = [("api_key", "k")];
    assert!(node.check("llm", &k, None).accepted, "the bucket's token");
    // The next token comes within 500 ms: waiting admits it, deciding at once could not.
    let sent = node.send("llm", &k, Some(Duration::from_secs(10)));
    let (d, took) = node.answer(sent);
    assert!(d.accepted, "{d:?}");
    assert!(took < Duration::from_secs(10));
    let o = outcome_of(&d, &node, ComponentKind::QuotaScheduler);
    assert_eq!(o.kind, OutcomeKind::Accepted);
}

#[test]
fn a_deadline_too_short_is_refused_no_tokens_before_it_passes() {
    let policies = format!("{}{POOL_SCHEDULER}", quota("3600s"));
    let node = Node::start(1, &policies);
    let engine = node.handle().engine();
    let k = [("api_key", "k")];
    assert!(node.check("llm", &k, None).accepted);
    // The next token comes in an hour: refused now, not at the deadline.
    let deadline = Duration::from_secs(1);
    let (d, took) = node.answer(node.send("llm", &k, Some(deadline)));
    assert!(!d.accepted);
    assert!(took < deadline, "answered after its deadline: {took:?}");
    assert_eq!(d.reject_reason(&engine), Some(RejectReason::NoTokens));
    assert_eq!(d.denied_status_code(&engine), Some(503));
    assert_eq!(d.limiters[0].refusal, Some(Refusal::TimedOut));

    // Capacity that only an end can free: it waits, and is refused by its deadline.
    let t = [("tenant", "t")];
    assert!(node.check("db", &t, None).accepted, "holds the only slot");
    let (d, took) = node.answer(node.send("db", &t, Some(deadline)));
    assert!(!d.accepted);
    assert!(took < deadline, "answered after its deadline: {took:?}");
    assert_eq!(d.limiters[0].refusal, Some(Refusal::TimedOut));
    assert_eq!(d.reject_reason(&engine), Some(RejectReason::NoTokens));
}

#[test]
fn a_waiting_check_does_not_hold_up_the_checks_behind_it_and_an_end_lets_it_in() {
    let policies = format!(
        "{POOL_SCHEDULER}{}",
        r#"  - policy_name: other
    rate_limiter:
      bucket_capacity: 10
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: tenant }
      selectors: [ { control_point: other } ]
"#
    );
    let node = Node::start(1, &policies);
    let t = [("tenant", "t")];
    let held = flow_of(&node.check("db", &t, None));
    let mut waiting = node.send("db", &t, Some(Duration::from_secs(20)));
    // Behind it on the same shard: answered while it waits.
    assert!(node.check("other", &t, None).accepted);
    assert!(node.check("db", &[("tenant", "u")], None).accepted);
    assert!(
        waiting.answer.try_recv().is_err(),
        "admitted while its slot is held"
    );
    assert_eq!(node.end_flows(&[held]), vec![true]);
    let (d, took) = node.answer(waiting);
    assert!(d.accepted, "{d:?}");
    assert!(took < Duration::from_secs(20));
    let admitted = flow_of(&d);
    assert_ne!(admitted, held);
    assert_eq!(
        node.end_flows(&[held, admitted]),
        vec![false, true],
        "an end is reported once"
    );
}

#[test]
fn queued_checks_are_refused_cleanly_when_the_server_stops_and_flows_end() {
    let policies = format!(
        "{POOL_SCHEDULER}{}",
        r#"  - policy_name: other
    rate_limiter:
      bucket_capacity: 10
      fill_amount: 1
      parameters: { interval: 3600s }
      selectors: [ { control_point: other } ]
"#
    );
    let node = Node::start(1, &policies);
    let t = [("tenant", "t")];
    let held = flow_of(&node.check("db", &t, None));
    // No client deadline: it would wait up to server.max_queue_wait (60 s).
    let waiting = node.send("db", &t, None);
    assert!(node.check("other", &[], None).accepted, "so it is queued");
    let stopped_at = Instant::now();
    node.server().begin_stop();
    let (d, _) = node.answer(waiting);
    assert!(!d.accepted);
    assert_eq!(d.limiters[0].refusal, Some(Refusal::ShuttingDown));
    assert!(stopped_at.elapsed() < Duration::from_secs(30));
    assert!(node.server().wait_drained());
    assert_eq!(
        node.end_flows(&[held]),
        vec![false],
        "the drained shard ended its flows"
    );
    // Until it exits the shard still decides, but nothing waits any more.
    assert!(node.check("db", &t, None).accepted, "the freed slot");
    let (d, _) = node.answer(node.send("db", &t, Some(Duration::from_secs(20))));
    assert_eq!(d.limiters[0].refusal, Some(Refusal::ShuttingDown));
}

#[test]
fn a_flow_waiting_on_another_shard_leaves_the_queue_when_its_check_is_given_up() {
    // One token per key every 40 s (longer than the test may take: no refill shows); each
    // shard queues one flow at most.
    let node = Node::start_with(
        2,
        ", max_waiters_per_shard: 1",
        r#"  - policy_name: tokens
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: { interval: 40s, limit_by_label_key: api_key }
      selectors: [ { control_point: llm } ]
"#,
    );
    let owner = node.handle().owner_of("k");
    let (k, k2) = (
        [("api_key", "k")],
        [("api_key", key_on(&node, owner, "k2"))],
    );
    assert!(node.check("llm", &k, None).accepted, "k's token");
    assert!(node.check("llm", &k2, None).accepted, "k2's token");
    // Whether a flow of k2 (same owner) finds the owner's one queue slot taken.
    let slot_taken = || {
        let d = node.check("llm", &k2, Some(Duration::from_secs(1)));
        assert!(!d.accepted);
        d.limiters[0].refusal == Some(Refusal::QueueFull)
    };
    // A check entering on the other shard offers its flow to the owner, where it waits.
    let given_up = node.send_to(1 - owner, "llm", &k, Some(Duration::from_secs(55)));
    let deadline = Instant::now() + HANG;
    while !slot_taken() {
        assert!(Instant::now() < deadline, "the offer never queued");
    }
    // Its client goes away: the owner is told, and the slot comes free long before the
    // flow's deadline.
    drop(given_up);
    while slot_taken() {
        assert!(
            Instant::now() < deadline,
            "the given-up flow still holds the slot"
        );
    }
}

/// A key that `shard` owns, made from `prefix`.
fn key_on(node: &Node, shard: usize, prefix: &str) -> &'static str {
    let key = (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|key| node.handle().owner_of(key) == shard)
        .expect("some key");
    Box::leak(key.into_boxed_str())
}

#[test]
fn a_concurrency_limiter_admits_exactly_its_limit_and_an_end_frees_a_slot() {
    let node = Node::start(
        2,
        r#"  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 3
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 600s }
      selectors: [ { control_point: db } ]
"#,
    );
    let engine = node.handle().engine();
    let t = [("tenant", "t1")];
    let flows: Vec<FlowId> = (0..3)
        .map(|_| flow_of(&node.check("db", &t, Some(Duration::ZERO))))
        .collect();
    for f in &flows {
        assert_eq!(
            f.shard(),
            node.handle().owner_of("t1"),
            "ids name their shard"
        );
    }
    let d = node.check("db", &t, Some(Duration::from_secs(5)));
    assert!(!d.accepted, "a limiter does not wait");
    assert_eq!(d.reject_reason(&engine), Some(RejectReason::RateLimited));
    assert_eq!(d.denied_status_code(&engine), Some(429));
    let unknown = FlowId::new(flows[0].shard() as u16, flows[0].get().wrapping_add(1_000));
    let no_such_shard = FlowId::new(1000, 1);
    assert_eq!(
        node.end_flows(&[flows[1], unknown, no_such_shard, flows[1]]),
        vec![true, false, false, false]
    );
    assert!(node.check("db", &t, None).accepted, "the ended flow's slot");
    assert!(!node.check("db", &t, None).accepted);
}

#[test]
fn the_ids_next_to_a_clients_own_end_no_other_clients_flows() {
    let node = Node::start(
        1,
        r#"  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 1000
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 600s }
      selectors: [ { control_point: db } ]
"#,
    );
    let others: Vec<FlowId> = (0..500)
        .map(|_| flow_of(&node.check("db", &[("tenant", "victim")], None)))
        .collect();
    let own = flow_of(&node.check("db", &[("tenant", "attacker")], None));
    let more: Vec<FlowId> = (0..499)
        .map(|_| flow_of(&node.check("db", &[("tenant", "victim")], None)))
        .collect();
    // With sequential ids these would be exactly the others' flows.
    let neighbours: Vec<FlowId> = (1..=512u64)
        .flat_map(|d| [own.get().wrapping_sub(d), own.get().wrapping_add(d)])
        .map(FlowId::from_u64)
        .collect();
    for chunk in neighbours.chunks(512) {
        assert!(node.end_flows(chunk).iter().all(|ended| !ended));
    }
    let all: Vec<FlowId> = others.iter().chain(&more).copied().collect();
    assert!(
        node.end_flows(&all).iter().all(|&ended| ended),
        "every flow still held"
    );
}

#[test]
fn a_flow_never_ended_frees_its_slot_after_max_inflight_duration() {
    let node = Node::start(
        1,
        r#"  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 1
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 300ms }
      selectors: [ { control_point: db } ]
"#,
    );
    let t = [("tenant", "t")];
    let forgotten = flow_of(&node.check("db", &t, None));
    assert!(!node.check("db", &t, None).accepted, "its slot is held");
    let deadline = Instant::now() + HANG;
    let admitted = loop {
        let d = node.check("db", &t, None);
        if d.accepted {
            break d;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(flow_of(&admitted), forgotten);
    assert_eq!(node.end_flows(&[forgotten]), vec![false], "it expired");
}

#[test]
fn a_check_hopping_to_a_scheduler_on_another_shard_waits_there_and_gives_back_on_refusal() {
    // Routed by `user` (the first limit key), scheduled by `tenant` on the other shard.
    let policies = format!(
        "{}{POOL_SCHEDULER}",
        r#"  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 3
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: user }
      selectors: [ { control_point: db }, { control_point: rate } ]
"#
    );
    let node = Node::start(2, &policies);
    let (user, tenant) = (value_on(0, 2, "u"), value_on(1, 2, "t"));
    let labels = [("user", user.as_str()), ("tenant", tenant.as_str())];
    let held = node.check("db", &labels, None);
    let held = flow_of(&held);
    assert_eq!(
        held.shard(),
        1,
        "the scheduler's flow lives with its bucket"
    );
    let waiting = node.send("db", &labels, Some(Duration::from_secs(20)));
    // Behind it, with a short deadline: it waits on shard 1 and times out there.
    let deadline = Duration::from_secs(1);
    let (d, took) = node.answer(node.send("db", &labels, Some(deadline)));
    assert!(took < deadline, "answered after its deadline: {took:?}");
    assert_eq!(
        outcome_of(&d, &node, ComponentKind::ConcurrencyScheduler).refusal,
        Some(Refusal::TimedOut)
    );
    assert_eq!(
        outcome_of(&d, &node, ComponentKind::RateLimiter).kind,
        OutcomeKind::Returned,
        "the rate limiter's token went back"
    );
    assert_eq!(node.end_flows(&[held]), vec![true]);
    let (d, _) = node.answer(waiting);
    assert!(d.accepted, "{d:?}");
    assert_eq!(flow_of(&d).shard(), 1);
    // Three tokens: the held flow's, the admitted one's, and the refused one's came back.
    let u = [("user", user.as_str())];
    assert!(node.check("rate", &u, None).accepted);
    assert!(!node.check("rate", &u, None).accepted);
}

#[test]
fn a_later_stage_refusing_gives_back_rate_tokens_and_ends_concurrency_flows() {
    let policies = format!(
        "{}{}",
        r#"  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 2
      fill_amount: 1
      parameters: { interval: 3600s, limit_by_label_key: api_key }
      selectors: [ { control_point: llm }, { control_point: rate } ]
  - policy_name: pool
    concurrency_limiter:
      max_concurrency: 1
      parameters: { limit_by_label_key: api_key, max_inflight_duration: 600s }
      selectors: [ { control_point: llm }, { control_point: pool } ]
"#,
        quota("3600s")
    );
    let node = Node::start(1, &policies);
    let engine = node.handle().engine();
    let k = [("api_key", "k")];
    let first = node.check("llm", &k, None);
    assert!(first.accepted, "{first:?}");
    assert_eq!(node.end_flows(&[flow_of(&first)]), vec![true]);
    // The quota is spent for an hour: its refusal hands back the earlier stages.
    let d = node.check("llm", &k, Some(Duration::ZERO));
    assert!(!d.accepted);
    assert_eq!(d.reject_reason(&engine), Some(RejectReason::NoTokens));
    let kinds: Vec<OutcomeKind> = d.limiters.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            OutcomeKind::Returned,
            OutcomeKind::Returned,
            OutcomeKind::Rejected
        ]
    );
    assert!(node.check("rate", &k, None).accepted, "the returned token");
    assert!(!node.check("rate", &k, None).accepted);
    assert!(node.check("pool", &k, None).accepted, "the flow was ended");
}

#[test]
fn a_waiter_whose_caller_went_away_hands_back_what_it_is_given() {
    let node = Node::start(1, POOL_SCHEDULER);
    let t = [("tenant", "t")];
    let held = flow_of(&node.check("db", &t, None));
    let gone = node.send("db", &t, Some(Duration::from_secs(20)));
    assert!(
        !node.check("db", &t, Some(Duration::ZERO)).accepted,
        "so the first waiter is queued"
    );
    drop(gone); // its caller goes away (a cancelled gRPC call)
    assert_eq!(node.end_flows(&[held]), vec![true]);
    // The slot is admitted to the gone waiter, whose flow ends at once: it comes back
    // long before its 600 s max_inflight_duration.
    let deadline = Instant::now() + HANG;
    while !node.check("db", &t, Some(Duration::ZERO)).accepted {
        assert!(Instant::now() < deadline, "the gone waiter kept the slot");
        std::thread::sleep(Duration::from_millis(20));
    }
}
