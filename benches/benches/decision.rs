//! A bucket decision on a shard map of 1M keys: plan (selector) + hash + lookup + update.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use std::sync::Arc;
use tollgate_benches::{bench_engine, key};
use tollgate_policy::{BucketStore, LimiterId, LocalLimiter};

const KEYS: usize = 1_000_000;

fn decision(c: &mut Criterion) {
    let engine = Arc::new(bench_engine());
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    // Visit keys in a scrambled order so the table is not walked sequentially.
    let order: Vec<usize> = (0..KEYS)
        .map(|i| (i.wrapping_mul(2_654_435_761)) % KEYS)
        .collect();

    let mut limiter = LocalLimiter::new(engine.clone());
    for k in &keys {
        limiter
            .check_labels("bench", &[("user", k.as_str())][..], None, 0)
            .unwrap();
    }
    let mut group = c.benchmark_group("decision_1M_keys");
    let mut i = 0usize;
    let mut now = 1u64;
    group.bench_function("check (plan + take)", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            now += 100;
            let k = keys[order[i]].as_str();
            black_box(
                limiter
                    .check_labels("bench", &[("user", k)][..], None, now)
                    .unwrap(),
            );
        })
    });

    let mut store = BucketStore::with_capacity(KEYS);
    for k in &keys {
        store.take(&engine, LimiterId(0), k, 1.0, 0);
    }
    group.bench_function("store.take (hash + lookup + update)", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            now += 100;
            black_box(store.take(&engine, LimiterId(0), keys[order[i]].as_str(), 1.0, now));
        })
    });

    // Baseline: the cheapest possible keyed update on the same keys.
    let mut plain: hashbrown::HashMap<&str, u64, foldhash::fast::RandomState> = Default::default();
    for k in &keys {
        plain.insert(k.as_str(), 0);
    }
    group.bench_function("baseline: hashbrown lookup + increment", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            if let Some(v) = plain.get_mut(keys[order[i]].as_str()) {
                *v += 1;
            }
        })
    });

    group.bench_function("new key (insert path)", |b| {
        b.iter_batched_ref(
            || BucketStore::with_capacity(1024),
            |s| {
                for k in keys.iter().take(512) {
                    black_box(s.take(&engine, LimiterId(0), k, 1.0, 0));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
