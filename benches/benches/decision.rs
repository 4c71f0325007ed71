//! A bucket decision: plan (selector) + hash + lookup + update, on a shard map of 10K keys
//! (the table fits in cache: what the code costs) and of 1M keys (about 80 MiB of table: every
//! uniformly random key is a DRAM miss, so this measures the memory system as much as the code).
//! Each size has its baseline in the same run: a bare hashbrown lookup-and-increment on the same
//! keys in the same order.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::sync::Arc;
use tollgate_benches::{bench_engine, key};
use tollgate_policy::{BucketStore, LocalLimiter, Tokens};

/// Table sizes: one that fits in L2/L3, and the 1M keys of the target.
const SIZES: [(usize, &str); 2] = [(10_000, "10K"), (1_000_000, "1M")];

/// Checks per `CHECK_BATCH` in the batch rows: the loadgen's `--batch 64`.
const BATCH: usize = 64;

/// New keys inserted per iteration of the insert bench (reported per key).
const INSERTS: usize = 512;

fn decision(c: &mut Criterion) {
    let engine = Arc::new(bench_engine());
    let id = engine.limiters()[0].id;
    for (n, label) in SIZES {
        let keys: Vec<String> = (0..n).map(key).collect();
        // Visit keys in a scrambled order so the table is not walked sequentially
        // (2654435761 shares no factor with a power of ten, so this is a permutation).
        let order: Vec<usize> = (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761)) % n)
            .collect();
        let mut group = c.benchmark_group(format!("decision_{label}_keys"));
        let mut i = 0usize;
        let mut now = 1u64;

        let mut limiter = LocalLimiter::new(engine.clone());
        for k in &keys {
            limiter
                .check_labels("bench", &[("user", k.as_str())][..], None, 0)
                .unwrap();
        }
        group.bench_function("check (plan + take)", |b| {
            b.iter(|| {
                i = (i + 1) % n;
                now += 100;
                let k = keys[order[i]].as_str();
                black_box(
                    limiter
                        .check_labels("bench", &[("user", k)][..], None, now)
                        .unwrap(),
                );
            })
        });
        drop(limiter);

        let mut store = BucketStore::with_capacity(n);
        for k in &keys {
            store.take(&engine, id, k, Tokens::ONE, 0);
        }
        group.bench_function("store.take (hash + lookup + update)", |b| {
            b.iter(|| {
                i = (i + 1) % n;
                now += 100;
                black_box(store.take(&engine, id, keys[order[i]].as_str(), Tokens::ONE, now));
            })
        });
        // A CHECK_BATCH's decision path as the server runs it: the 64 keys' bucket hashes
        // (the server collects them while it plans), the batch's buckets prefetched, then
        // each taken; and the same 64 takes without the prefetch pass.
        let mut hashes = Vec::with_capacity(64);
        group.bench_function(
            "batch of 64: hashes, store.prefetch_batch, then store.take x64",
            |b| {
                b.iter(|| {
                    now += 100;
                    let batch = next_batch(&mut i, n);
                    hashes.clear();
                    hashes.extend(
                        batch
                            .clone()
                            .map(|j| store.bucket_hash(id, keys[order[j]].as_str())),
                    );
                    store.prefetch_batch(&hashes);
                    for j in batch {
                        black_box(store.take(
                            &engine,
                            id,
                            keys[order[j]].as_str(),
                            Tokens::ONE,
                            now,
                        ));
                    }
                })
            },
        );
        group.bench_function("batch of 64: store.take x64, no prefetch", |b| {
            b.iter(|| {
                now += 100;
                for j in next_batch(&mut i, n) {
                    black_box(store.take(&engine, id, keys[order[j]].as_str(), Tokens::ONE, now));
                }
            })
        });
        drop(store);

        // Baseline: the cheapest possible keyed update on the same keys.
        let mut plain: hashbrown::HashMap<&str, u64, foldhash::fast::RandomState> =
            Default::default();
        for k in &keys {
            plain.insert(k.as_str(), 0);
        }
        group.bench_function("baseline: hashbrown lookup + increment", |b| {
            b.iter(|| {
                i = (i + 1) % n;
                if let Some(v) = plain.get_mut(keys[order[i]].as_str()) {
                    *v += 1;
                }
            })
        });
        group.bench_function("baseline: hashbrown lookup + increment x64", |b| {
            b.iter(|| {
                for j in next_batch(&mut i, n) {
                    if let Some(v) = plain.get_mut(keys[order[j]].as_str()) {
                        *v += 1;
                    }
                }
            })
        });
        group.finish();
    }

    let keys: Vec<String> = (0..INSERTS).map(key).collect();
    let mut group = c.benchmark_group("decision_insert");
    group.throughput(Throughput::Elements(INSERTS as u64));
    group.bench_function("new key (insert path)", |b| {
        b.iter_batched_ref(
            || BucketStore::with_capacity(2 * INSERTS),
            |s| {
                for k in &keys {
                    black_box(s.take(&engine, id, k, Tokens::ONE, 0));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The next [`BATCH`] positions of the key order (wrapping), advancing `i`.
fn next_batch(i: &mut usize, n: usize) -> impl Iterator<Item = usize> + Clone {
    let start = *i;
    *i = (*i + BATCH) % n;
    (0..BATCH).map(move |k| (start + k) % n)
}

criterion_group!(benches, decision);
criterion_main!(benches);
