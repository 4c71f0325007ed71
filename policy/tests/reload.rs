//! A reload on a virtual clock: `Engine::successor` keeps ids by identity, and
//! `ShardState::reloaded` carries each limiter's state over as docs/admin.md says — token
//! buckets capped and refilled at the new rate, concurrency counters keeping their flows,
//! a removed scheduler's waiters refused `removed`, limiters one side of a reload does not
//! know skipped.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use tollgate_policy::{parse_policies, Engine, OutcomeKind, Refusal, ShardLimits, ShardState};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

fn policies(yaml: &str) -> Vec<tollgate_policy::PolicyConfig> {
    parse_policies(yaml, "test").unwrap()
}

fn rate(name: &str, capacity: u32, fill: u32) -> String {
    format!(
        "  - policy_name: {name}\n    rate_limiter: {{ bucket_capacity: {capacity}, fill_amount: {fill}, parameters: {{ interval: 1s, limit_by_label_key: user }}, selectors: [ {{ control_point: api }} ] }}\n"
    )
}

fn concurrency(max: u32) -> String {
    format!(
        "  - policy_name: pool\n    concurrency_limiter: {{ max_concurrency: {max}, parameters: {{ limit_by_label_key: tenant, max_inflight_duration: 60s }}, selectors: [ {{ control_point: db }} ] }}\n"
    )
}

const QUOTA: &str = "  - policy_name: quota\n    quota_scheduler: { bucket_capacity: 1, fill_amount: 1, rate_limiter: { interval: 10s, limit_by_label_key: key }, selectors: [ { control_point: llm } ] }\n";

fn take(
    e: &Engine,
    s: &mut ShardState,
    cp: &str,
    labels: &[(&str, &str)],
    now: u64,
) -> OutcomeKind {
    let plan = e.plan(cp, labels, None).unwrap();
    let o = s.take_group(e, &plan, now);
    assert_eq!(o.len(), plan.len());
    o.first().map_or(OutcomeKind::KeyNotFound, |o| o.kind)
}

#[test]
fn an_unchanged_limiter_keeps_its_bucket_and_a_changed_one_is_not_reset() {
    let before = Engine::new(&policies(&format!(
        "policies:\n{}{}",
        rate("a", 5, 1),
        rate("b", 5, 1)
    )));
    let mut s = ShardState::new(0, ShardLimits::default());
    let alice = [("user", "alice")];
    // Empty both buckets of alice (a and b share the control point: 5 checks take from both).
    for _ in 0..5 {
        assert_eq!(
            take(&before, &mut s, "api", &alice, 0),
            OutcomeKind::Accepted
        );
    }
    assert_eq!(
        take(&before, &mut s, "api", &alice, 0),
        OutcomeKind::Rejected
    );
    // Reload: a unchanged, b doubles its capacity and fill, listed first.
    let after = before.successor(&policies(&format!(
        "policies:\n{}{}",
        rate("b", 10, 2),
        rate("a", 5, 1)
    )));
    s.reloaded(&before, &after, 0);
    // Still exhausted: nothing was reset.
    assert_eq!(
        take(&after, &mut s, "api", &alice, 0),
        OutcomeKind::Rejected
    );
    let a = after.plan("api", &alice, None).unwrap();
    let level = |e: &Engine, s: &ShardState, name: &str, now: u64| {
        let id = e
            .limiters()
            .iter()
            .find(|l| l.policy_name == name)
            .unwrap()
            .id;
        s.store().level(e, id, "alice", now)
    };
    assert_eq!(a.len(), 2);
    // After 500 ms: a has refilled 0.5 tokens at its rate, b 1.0 at its new rate.
    assert!((level(&after, &s, "a", 500 * MS) - 0.5).abs() < 1e-9);
    assert!((level(&after, &s, "b", 500 * MS) - 1.0).abs() < 1e-9);
    // A capacity cut caps a full bucket.
    let cut = after.successor(&policies(&format!(
        "policies:\n{}{}",
        rate("b", 3, 2),
        rate("a", 5, 1)
    )));
    s.reloaded(&after, &cut, 100 * SEC);
    assert!((level(&cut, &s, "b", 100 * SEC + 1) - 3.0).abs() < 1e-9);
}

#[test]
fn a_concurrency_counter_keeps_its_flows_in_flight_counted_across_a_capacity_change() {
    let before = Engine::new(&policies(&format!("policies:\n{}", concurrency(4))));
    let mut s = ShardState::new(0, ShardLimits::default());
    let t = [("tenant", "t1")];
    for _ in 0..3 {
        assert_eq!(take(&before, &mut s, "db", &t, 0), OutcomeKind::Accepted);
    }
    // 3 in flight; the limit drops to 2: nothing more until two end.
    let lower = before.successor(&policies(&format!("policies:\n{}", concurrency(2))));
    s.reloaded(&before, &lower, 0);
    assert_eq!(take(&lower, &mut s, "db", &t, 0), OutcomeKind::Rejected);
    // Up to 5: 3 still in flight, so exactly 2 more fit.
    let higher = lower.successor(&policies(&format!("policies:\n{}", concurrency(5))));
    s.reloaded(&lower, &higher, 0);
    assert_eq!(take(&higher, &mut s, "db", &t, 0), OutcomeKind::Accepted);
    assert_eq!(take(&higher, &mut s, "db", &t, 0), OutcomeKind::Accepted);
    assert_eq!(take(&higher, &mut s, "db", &t, 0), OutcomeKind::Rejected);
    assert_eq!(s.in_flight(), 5);
}

#[test]
fn a_removed_schedulers_waiters_are_refused_removed_and_its_flows_end_harmlessly() {
    let before = Engine::new(&policies(&format!("policies:\n{QUOTA}{}", concurrency(1))));
    let mut s = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    let k = [("key", "k")];
    let plan = before.plan("llm", &k, None).unwrap();
    assert_eq!(
        s.offer(&before, &plan[0], 1, Some(5 * SEC), 0, &mut out)
            .unwrap()
            .kind,
        OutcomeKind::Accepted
    );
    // The next token comes in 10 s, within this flow's 20 s: it waits.
    assert!(s
        .offer(&before, &plan[0], 2, Some(20 * SEC), 0, &mut out)
        .is_none());
    assert!(out.is_empty() && s.waiting() == 1);
    let flow = {
        let plan = before.plan("db", &[("tenant", "t")], None).unwrap();
        s.take_group(&before, &plan, 0)[0].flow.unwrap()
    };
    let after = before.successor(&policies("policies: []\n"));
    s.reloaded(&before, &after, MS);
    s.poll(&after, MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].ticket, out[0].outcome.refusal),
        (2, Some(Refusal::Removed))
    );
    assert_eq!(s.waiting(), 0);
    // Its flow in flight still ends (giving back to nothing), and nothing panics.
    assert!(s.end_flow(&after, flow, 2 * MS));
    // A check planned before the switch, arriving after it, skips the limiter it no longer
    // has; the predecessor still describes it for the reply.
    let id = plan[0].limiter;
    assert_eq!(
        s.take_group(&after, &plan, 2 * MS)[0].kind,
        OutcomeKind::KeyNotFound
    );
    assert!(after.get_limiter(id).is_none());
    assert_eq!(after.describe(id).unwrap().policy_name, "quota");
}
