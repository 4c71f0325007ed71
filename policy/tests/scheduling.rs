//! Quota scheduling and concurrency control on a virtual clock, through the public API the
//! server uses: plan with the engine, then take / offer / poll / end on a `ShardState`.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashMap;
use tollgate_policy::{
    parse_policies, Decision, Engine, LimiterOutcome, OutcomeKind, Refusal, RejectReason, Resolved,
    ShardLimits, ShardState, Stage, Ticket,
};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn engine(yaml: &str) -> Engine {
    Engine::new(&parse_policies(yaml, "test").unwrap())
}

const QUOTA: &str = r#"
blueprint: quota-scheduling/base
policy:
  policy_name: llm_quota
  quota_scheduler:
    bucket_capacity: 10
    fill_amount: 10
    rate_limiter: { interval: 1s, limit_by_label_key: api_key }
    scheduler:
      workloads:
        - name: premium
          label_matcher: { match_labels: { tier: premium } }
          parameters: { priority: 200, queue_timeout: 5s }
      default_workload_parameters: { priority: 50 }
    selectors: [ { control_point: openai } ]
"#;

/// Offers one flow; returns its outcome if decided now.
fn offer(
    e: &Engine,
    s: &mut ShardState,
    labels: &[(&str, &str)],
    ticket: Ticket,
    deadline: Option<u64>,
    now: u64,
    out: &mut Vec<Resolved>,
) -> Option<LimiterOutcome> {
    let plan = e.plan("openai", labels, None).unwrap();
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].stage(), Stage::QuotaScheduler);
    s.offer(e, &plan[0], ticket, deadline, now, out)
}

/// [`QUOTA`] on a shard with `limits`, whose key k's 10 tokens were taken at 0 (tickets 0
/// to 9): the next flow of k waits for the refill.
fn quota_drained(limits: ShardLimits) -> (Engine, ShardState, Vec<Resolved>) {
    let e = engine(QUOTA);
    let mut s = ShardState::new(0, limits);
    let mut out = Vec::new();
    for t in 0..10 {
        offer(&e, &mut s, &[("api_key", "k")], t, None, 0, &mut out).unwrap();
    }
    (e, s, out)
}

#[test]
fn tokens_at_hand_are_taken_at_once_and_waiters_get_them_as_they_fill() {
    let e = engine(QUOTA);
    let mut s = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    let k = [("api_key", "k1")];
    for t in 0..10 {
        let o = offer(&e, &mut s, &k, t, Some(10 * SEC), 0, &mut out).unwrap();
        assert_eq!(o.kind, OutcomeKind::Accepted, "burst of 10");
    }
    // The 11th waits: 10 tokens/s, so its token exists at 100ms.
    assert!(offer(&e, &mut s, &k, 10, Some(10 * SEC), 0, &mut out).is_none());
    assert_eq!(s.waiting(), 1);
    assert_eq!(s.next_wake(), Some(100 * MS));
    s.poll(&e, 99 * MS, &mut out);
    assert!(out.is_empty(), "not before its token");
    s.poll(&e, 100 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].ticket, out[0].outcome.kind),
        (10, OutcomeKind::Accepted)
    );
    assert_eq!(s.waiting(), 0);
}

#[test]
fn a_deadline_too_short_is_refused_with_no_tokens_before_it_passes() {
    let e = engine(QUOTA);
    let mut s = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    let k = [("api_key", "k1")];
    for t in 0..10 {
        offer(&e, &mut s, &k, t, None, 0, &mut out).unwrap();
    }
    // 50ms budget, 10ms margin: its token (100ms) comes too late, so it is refused now.
    let o = offer(&e, &mut s, &k, 10, Some(50 * MS), 0, &mut out);
    let refused = o.or_else(|| out.pop().map(|r| r.outcome)).unwrap();
    assert_eq!(refused.kind, OutcomeKind::Rejected);
    assert_eq!(refused.refusal, Some(Refusal::TimedOut));
    let d = Decision::from_outcomes([refused].into_iter().collect());
    assert_eq!(d.reject_reason(&e), Some(RejectReason::NoTokens));
    assert_eq!(d.denied_status_code(&e), Some(503));
    // No budget at all: refused at once.
    let o = offer(&e, &mut s, &k, 11, Some(0), 0, &mut out).unwrap();
    assert_eq!(o.refusal, Some(Refusal::Exhausted));
}

#[test]
fn waiters_are_answered_by_their_deadline_at_the_latest() {
    let e = engine(QUOTA);
    let mut s = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    let k = [("api_key", "k1")];
    for t in 0..10 {
        offer(&e, &mut s, &k, t, None, 0, &mut out).unwrap();
    }
    // 30 waiters with a 1s deadline (990ms after the margin): 9 or 10 get a token.
    for t in 10..40 {
        assert!(offer(&e, &mut s, &k, t, Some(SEC), 0, &mut out).is_none() || t > 10);
    }
    let mut now = 0;
    let mut answered_at: HashMap<Ticket, (u64, OutcomeKind)> = HashMap::new();
    for r in out.drain(..) {
        answered_at.insert(r.ticket, (0, r.outcome.kind));
    }
    while let Some(t) = s.next_wake() {
        now = t.max(now);
        s.poll(&e, now, &mut out);
        for r in out.drain(..) {
            answered_at.insert(r.ticket, (now, r.outcome.kind));
        }
    }
    assert_eq!(answered_at.len(), 30);
    assert!(answered_at.values().all(|(at, _)| *at <= SEC - 10 * MS));
    let accepted = answered_at
        .values()
        .filter(|(_, k)| *k == OutcomeKind::Accepted)
        .count();
    assert_eq!(accepted, 9, "one token per 100ms up to 990ms");
}

#[test]
fn premium_goes_first_in_a_four_to_one_ratio() {
    let yaml = QUOTA
        .replace("priority: 200, queue_timeout: 5s", "priority: 4")
        .replace("priority: 50", "priority: 1");
    let e = engine(&yaml);
    let mut s = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    // Drain the burst, then 400 premium and 400 free waiters.
    for t in 0..10 {
        offer(&e, &mut s, &[("api_key", "k")], t, None, 0, &mut out).unwrap();
    }
    let premium = [("api_key", "k"), ("tier", "premium")];
    let free = [("api_key", "k"), ("tier", "free")];
    for i in 0..400u64 {
        assert!(offer(
            &e,
            &mut s,
            &premium,
            1000 + 2 * i,
            Some(100 * SEC),
            0,
            &mut out
        )
        .is_none());
        assert!(offer(
            &e,
            &mut s,
            &free,
            1001 + 2 * i,
            Some(100 * SEC),
            0,
            &mut out
        )
        .is_none());
    }
    let mut now = 0;
    let mut admitted = Vec::new();
    while now < 20 * SEC {
        let Some(t) = s.next_wake() else { break };
        now = t.max(now);
        s.poll(&e, now, &mut out);
        admitted.extend(
            out.drain(..)
                .filter(|r| r.outcome.kind == OutcomeKind::Accepted)
                .map(|r| r.ticket),
        );
    }
    let premium_n = admitted.iter().filter(|t| *t % 2 == 0).count() as f64;
    let free_n = admitted.iter().filter(|t| *t % 2 == 1).count() as f64;
    let ratio = premium_n / free_n;
    assert!(
        (3.6..=4.4).contains(&ratio),
        "{premium_n}:{free_n} = {ratio}"
    );
}

#[test]
fn no_flow_waits_longer_than_the_longest_wait_whatever_its_budget() {
    let (e, mut s, mut out) = quota_drained(ShardLimits {
        max_wait_ns: 2 * SEC,
        ..ShardLimits::default()
    });
    let k = [("api_key", "k")];
    // The bucket is empty and fills 1 token / 100ms: a flow wanting more than the
    // capacity's worth of wait still waits, but no longer than 2s.
    let budget_of_49_days = Some(u64::from(u32::MAX) * MS);
    for t in 10..100 {
        let _ = offer(&e, &mut s, &k, t, budget_of_49_days, 0, &mut out);
    }
    out.clear();
    let mut last = 0;
    while let Some(t) = s.next_wake() {
        s.poll(&e, t, &mut out);
        last = t;
    }
    assert_eq!(s.waiting(), 0);
    assert!(last <= 2 * SEC, "the last waiter was answered at {last}ns");
}

#[test]
fn a_withdrawn_waiter_leaves_its_place_and_its_slot_at_once() {
    let (e, mut s, mut out) = quota_drained(ShardLimits {
        max_waiters: 2,
        ..ShardLimits::default()
    });
    let k = [("api_key", "k")];
    // 10 (the head) and 11 wait for the refill; the queue is full.
    for t in 10..12 {
        assert!(offer(&e, &mut s, &k, t, Some(10 * SEC), 0, &mut out).is_none());
    }
    let full = offer(&e, &mut s, &k, 12, Some(10 * SEC), 0, &mut out).unwrap();
    assert_eq!(full.refusal, Some(Refusal::QueueFull));
    // The head's client gives up: its slot is free at once, and 11 is next.
    assert!(s.withdraw(&e, 10, MS, &mut out));
    assert!(!s.withdraw(&e, 10, MS, &mut out), "once");
    assert_eq!(s.waiting(), 1);
    assert!(offer(&e, &mut s, &k, 13, Some(10 * SEC), MS, &mut out).is_none());
    let mut answered = Vec::new();
    while let Some(t) = s.next_wake() {
        s.poll(&e, t, &mut out);
        answered.extend(out.drain(..).map(|r| (r.ticket, r.outcome.kind)));
    }
    assert_eq!(
        answered,
        [(11, OutcomeKind::Accepted), (13, OutcomeKind::Accepted)],
        "the withdrawn head is never answered"
    );
}

#[test]
fn the_queue_is_bounded() {
    let (e, mut s, mut out) = quota_drained(ShardLimits {
        max_waiters: 3,
        ..ShardLimits::default()
    });
    let k = [("api_key", "k")];
    for t in 10..13 {
        assert!(offer(&e, &mut s, &k, t, Some(10 * SEC), 0, &mut out).is_none());
    }
    let o = offer(&e, &mut s, &k, 13, Some(10 * SEC), 0, &mut out).unwrap();
    assert_eq!(o.refusal, Some(Refusal::QueueFull));
    // Shutdown answers every waiter.
    s.release_waiters(&e, Refusal::ShuttingDown, 0, &mut out);
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|r| r.outcome.refusal == Some(Refusal::ShuttingDown)));
    assert_eq!(s.waiting(), 0);
}

#[test]
fn tokens_come_from_the_label_then_the_workload() {
    let yaml = QUOTA.replace("queue_timeout: 5s", "queue_timeout: 5s, tokens: 4");
    let e = engine(&yaml);
    let premium = [("api_key", "k"), ("tier", "premium")];
    assert_eq!(
        e.plan("openai", &premium, None).unwrap()[0].tokens.get(),
        4.0
    );
    let labelled = [("api_key", "k"), ("tier", "premium"), ("tokens", "2.5")];
    assert_eq!(
        e.plan("openai", &labelled, None).unwrap()[0].tokens.get(),
        2.5
    );
    let free = [("api_key", "k")];
    assert_eq!(e.plan("openai", &free, None).unwrap()[0].tokens.get(), 1.0);
    assert!(e
        .plan("openai", &[("api_key", "k"), ("tokens", "-5")], None)
        .is_err());
}

const CONCURRENCY: &str = r#"
policies:
  - policy_name: db_pool
    concurrency_limiter:
      max_concurrency: 3
      parameters: { limit_by_label_key: tenant, max_inflight_duration: 60s }
      selectors: [ { control_point: db } ]
  - policy_name: per_tenant_rate
    rate_limiter:
      bucket_capacity: 100
      fill_amount: 0
      parameters: { interval: 1s, limit_by_label_key: tenant }
      request_parameters: { tokens_label_key: cost }
      selectors: [ { control_point: db, label_matcher: { match_labels: { rate: limited } } } ]
"#;

#[test]
fn a_concurrency_limiter_admits_exactly_up_to_its_limit_and_ends_return_capacity() {
    let e = engine(CONCURRENCY);
    let mut s = ShardState::new(5, ShardLimits::default());
    let t1 = [("tenant", "t1")];
    let mut flows = Vec::new();
    for _ in 0..3 {
        let plan = e.plan("db", &t1, None).unwrap();
        let o = s.take_group(&e, &plan, 0);
        assert_eq!(o[0].kind, OutcomeKind::Accepted);
        let flow = o[0].flow.unwrap();
        assert_eq!(flow.shard(), 5);
        flows.push(flow);
    }
    let plan = e.plan("db", &t1, None).unwrap();
    let o = s.take_group(&e, &plan, 0);
    assert_eq!(o[0].kind, OutcomeKind::Rejected);
    let d = Decision::from_outcomes(o);
    assert_eq!(d.reject_reason(&e), Some(RejectReason::RateLimited));
    assert_eq!(d.denied_status_code(&e), Some(429));
    // Another tenant is independent.
    assert_eq!(
        s.take_group(&e, &e.plan("db", &[("tenant", "t2")], None).unwrap(), 0)[0].kind,
        OutcomeKind::Accepted
    );
    assert!(s.end_flow(&e, flows[0], SEC));
    assert!(
        !s.end_flow(&e, flows[0], SEC),
        "ending twice is harmless and reported"
    );
    assert_eq!(s.take_group(&e, &plan, SEC)[0].kind, OutcomeKind::Accepted);
    assert_eq!(s.in_flight(), 4);
}

#[test]
fn a_flow_never_ended_frees_its_slot_after_max_inflight_duration() {
    let e = engine(CONCURRENCY);
    let mut s = ShardState::new(0, ShardLimits::default());
    let plan = e.plan("db", &[("tenant", "t1")], None).unwrap();
    for _ in 0..3 {
        assert_eq!(s.take_group(&e, &plan, 0)[0].kind, OutcomeKind::Accepted);
    }
    assert_eq!(
        s.take_group(&e, &plan, 59 * SEC)[0].kind,
        OutcomeKind::Rejected
    );
    assert_eq!(s.next_wake(), Some(60 * SEC));
    let mut out = Vec::new();
    s.poll(&e, 60 * SEC, &mut out);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(
        s.take_group(&e, &plan, 60 * SEC)[0].kind,
        OutcomeKind::Accepted
    );
}

#[test]
fn a_rejection_by_another_limiter_ends_the_concurrency_flow() {
    let e = engine(CONCURRENCY);
    let mut s = ShardState::new(0, ShardLimits::default());
    let labels = [("tenant", "t1"), ("rate", "limited")];
    // Drain the rate limiter (100 tokens, no fill) with its cost label.
    let plan = e
        .plan(
            "db",
            &[("tenant", "t1"), ("rate", "limited"), ("cost", "100")],
            None,
        )
        .unwrap();
    let drained = s.take_group(&e, &plan, 0);
    assert!(Decision::from_outcomes(drained.clone()).accepted);
    assert!(s.end_flow(&e, drained[0].flow.unwrap(), 0));
    let plan = e.plan("db", &labels, None).unwrap();
    let o = s.take_group(&e, &plan, 0);
    assert_eq!(
        o[0].kind,
        OutcomeKind::Returned,
        "concurrency took, then gave back"
    );
    assert_eq!(o[1].kind, OutcomeKind::Rejected);
    assert_eq!(s.in_flight(), 0, "its flow was ended");
    assert_eq!(
        s.store().level(&e, o[0].limiter, "t1", 0),
        3.0,
        "all three slots free"
    );
}

const SCHEDULED: &str = r#"
blueprint: concurrency-scheduling/base
policy:
  policy_name: db_pool
  components: []
  concurrency_scheduler:
    alerter: { alert_name: "Too many inflight requests" }
    max_concurrency: 2
    concurrency_limiter: { limit_by_label_key: tenant, max_inflight_duration: 60s }
    scheduler: { priority_label_key: priority, tokens_label_key: tokens, workload_label_key: workload }
    selectors: [ { control_point: db } ]
  resources: { flow_control: { classifiers: [] } }
"#;

#[test]
fn a_concurrency_scheduler_queues_until_a_flow_ends_and_priority_goes_first() {
    let e = engine(SCHEDULED);
    let mut s = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    let mut started = Vec::new();
    for t in 0..2 {
        let plan = e.plan("db", &[("tenant", "t")], None).unwrap();
        let o = s
            .offer(&e, &plan[0], t, Some(10 * SEC), 0, &mut out)
            .unwrap();
        started.push(o.flow.unwrap());
    }
    let low = e
        .plan("db", &[("tenant", "t"), ("priority", "1")], None)
        .unwrap();
    let high = e
        .plan("db", &[("tenant", "t"), ("priority", "10")], None)
        .unwrap();
    assert!(s
        .offer(&e, &low[0], 10, Some(10 * SEC), 0, &mut out)
        .is_none());
    assert!(s
        .offer(&e, &high[0], 11, Some(10 * SEC), 0, &mut out)
        .is_none());
    assert_eq!(
        s.next_wake(),
        Some(10 * SEC - 10 * MS),
        "only deadlines: a flow end wakes it"
    );
    assert!(s.end_flow(&e, started[0], SEC));
    s.poll(&e, SEC, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].ticket, 11, "the high priority waiter goes first");
    assert!(out[0].outcome.flow.is_some());
    out.clear();
    // The low one times out at its deadline (minus the 10ms margin).
    s.poll(&e, 10 * SEC - 10 * MS, &mut out);
    assert_eq!(
        (out[0].ticket, out[0].outcome.refusal),
        (10, Some(Refusal::TimedOut))
    );
}
