//! The cost of a decision through each component kind when the tokens are there (the path
//! every admitted flow takes), on one shard's state at 10K keys, next to the rate limiter's
//! in the same run:
//! - rate limiter: plan + `take_group`;
//! - quota scheduler: plan + `offer` (the queue is empty, tokens are at hand: admitted at once);
//! - concurrency limiter: plan + `take_group` (records the flow) + `end_flow`;
//! - concurrency scheduler: plan + `offer` + `end_flow`.
//!
//! Concurrency rows include the flow's end, since every admitted flow has one.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tollgate_benches::key;
use tollgate_policy::{parse_policies, Engine, OutcomeKind, ShardLimits, ShardState};

const KEYS: usize = 10_000;

/// One policy per component kind, each on its own control point, never short of tokens.
const POLICIES: &str = r#"
policies:
  - policy_name: rate
    rate_limiter:
      bucket_capacity: 1000000000
      fill_amount: 1000000000
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: rate } ]
  - policy_name: quota
    quota_scheduler:
      bucket_capacity: 1000000000
      fill_amount: 1000000000
      rate_limiter: { interval: 1s, limit_by_label_key: user }
      scheduler:
        workloads:
          - label_matcher: { match_labels: { tier: premium } }
            parameters: { priority: 200 }
      selectors: [ { control_point: quota } ]
  - policy_name: inflight
    concurrency_limiter:
      max_concurrency: 1000000000
      parameters: { limit_by_label_key: user, max_inflight_duration: 60s }
      selectors: [ { control_point: inflight } ]
  - policy_name: inflight_queue
    concurrency_scheduler:
      max_concurrency: 1000000000
      concurrency_limiter: { limit_by_label_key: user, max_inflight_duration: 60s }
      selectors: [ { control_point: inflight_queue } ]
"#;

fn scheduler(c: &mut Criterion) {
    let engine = Engine::new(&parse_policies(POLICIES, "bench").unwrap());
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let order: Vec<usize> = (0..KEYS)
        .map(|i| (i.wrapping_mul(2_654_435_761)) % KEYS)
        .collect();
    let mut state = ShardState::new(0, ShardLimits::default());
    let mut out = Vec::new();
    // Every bucket exists before measuring: the insert path is decision.rs's subject.
    for cp in ["rate", "quota", "inflight", "inflight_queue"] {
        for k in &keys {
            let labels = [("user", k.as_str())];
            let plan = engine.plan(cp, &labels, None).unwrap();
            let o = state.take_group(&engine, &plan, 0);
            if let Some(flow) = o[0].flow {
                state.end_flow(&engine, flow, 0);
            }
        }
    }
    let mut group = c.benchmark_group("decision_by_component_10K_keys");
    let (mut i, mut now, mut ticket) = (0usize, 1u64, 0u64);
    let next = |i: &mut usize, now: &mut u64| {
        *i = (*i + 1) % KEYS;
        *now += 100;
        keys[order[*i]].as_str()
    };
    group.bench_function("rate limiter (plan + take)", |b| {
        b.iter(|| {
            let k = next(&mut i, &mut now);
            let labels = [("user", k)];
            let plan = engine.plan("rate", &labels, None).unwrap();
            black_box(state.take_group(&engine, &plan, now));
        })
    });
    group.bench_function("quota scheduler, tokens at hand (plan + offer)", |b| {
        b.iter(|| {
            let k = next(&mut i, &mut now);
            let labels = [("user", k), ("tier", "premium")];
            let plan = engine.plan("quota", &labels, None).unwrap();
            ticket += 1;
            let o = state.offer(
                &engine,
                &plan[0],
                ticket,
                Some(now + 1_000_000),
                now,
                &mut out,
            );
            debug_assert_eq!(o.map(|o| o.kind), Some(OutcomeKind::Accepted));
            black_box(o);
        })
    });
    group.bench_function("concurrency limiter (plan + take + end)", |b| {
        b.iter(|| {
            let k = next(&mut i, &mut now);
            let labels = [("user", k)];
            let plan = engine.plan("inflight", &labels, None).unwrap();
            let o = state.take_group(&engine, &plan, now);
            if let Some(flow) = o[0].flow {
                black_box(state.end_flow(&engine, flow, now));
            }
        })
    });
    group.bench_function("concurrency scheduler (plan + offer + end)", |b| {
        b.iter(|| {
            let k = next(&mut i, &mut now);
            let labels = [("user", k)];
            let plan = engine.plan("inflight_queue", &labels, None).unwrap();
            ticket += 1;
            let o = state.offer(
                &engine,
                &plan[0],
                ticket,
                Some(now + 1_000_000),
                now,
                &mut out,
            );
            if let Some(flow) = o.and_then(|o| o.flow) {
                black_box(state.end_flow(&engine, flow, now));
            }
        })
    });
    group.finish();
    assert!(
        out.is_empty(),
        "nothing waited: every flow found its tokens"
    );
}

criterion_group!(benches, scheduler);
criterion_main!(benches);
