//! What the metrics cost a decision: everything a shard records for one answered binary
//! check (its outcome per limiter, the accepted take into the top-keys sketch, the
//! protocol's accepted counter, and a share of the latency histogram write made once per
//! read of 64 frames) after the decision it records (plan + take on a shard holding the
//! same keys), with `server.metrics` on and off, in one run.
//!
//! Why a bench and not only throughput on vs off: the recording is a few nanoseconds inside a
//! pipelined decision that costs the server microseconds of CPU, and the run-to-run noise of an
//! end-to-end run on a shared machine (±6%) is larger than the difference. Here the ratio
//! `on / off` bounds the share of the decision path the metrics take; the server does more
//! per check than plan + take (decode, encode, IO), so the share of pipelined throughput is
//! smaller still.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use tollgate_benches::{bench_engine, key};
use tollgate_policy::{LimiterId, LocalLimiter};
use tollgate_server::clock;
use tollgate_server::metrics::shard::{ShardBlock, ShardMetrics, TakeKey};

/// Table sizes: keys that fit in cache, and the 1M keys of the end-to-end runs (where the
/// top-keys sketch sees a new key on almost every take, its most expensive case).
const SIZES: [(usize, &str); 2] = [(10_000, "10K"), (1_000_000, "1M")];

/// Frames per read: the pipelined shape's depth, over which one latency record is shared.
const FRAMES_PER_READ: usize = 64;

/// One planned take as the shard's recorder sees it.
struct Take<'a> {
    limiter: LimiterId,
    key: &'a str,
}

impl TakeKey for Take<'_> {
    fn limiter_id(&self) -> LimiterId {
        self.limiter
    }
    fn bucket_key(&self) -> Option<&str> {
        Some(self.key)
    }
}

fn metrics(c: &mut Criterion) {
    let engine = Arc::new(bench_engine());
    let limiter_id = engine.limiters()[0].id;
    for (n, label) in SIZES {
        let keys: Vec<String> = (0..n).map(key).collect();
        // A scrambled visiting order (2654435761 shares no factor with a power of ten).
        let order: Vec<usize> = (0..n)
            .map(|i| (i.wrapping_mul(2_654_435_761)) % n)
            .collect();
        let mut limiter = LocalLimiter::new(engine.clone());
        for k in &keys {
            limiter
                .check_labels("bench", &[("user", k.as_str())][..], None, 0)
                .unwrap();
        }
        let mut group = c.benchmark_group(format!("metrics_{label}_keys"));
        let mut i = 0usize;
        let mut now = 1u64;
        for enabled in [false, true] {
            let block = Arc::new(ShardBlock::new(engine.limiters().len()));
            let recorder = ShardMetrics::new(enabled, block);
            let mut read_at = clock::now_ns();
            let name = if enabled {
                "decision + recording, metrics on"
            } else {
                "decision + recording, metrics off"
            };
            group.bench_function(name, |b| {
                b.iter(|| {
                    i = (i + 1) % n;
                    now += 100;
                    let key = keys[order[i]].as_str();
                    let decision = limiter
                        .check_labels("bench", &[("user", key)][..], None, now)
                        .unwrap();
                    let take = Take {
                        limiter: limiter_id,
                        key,
                    };
                    recorder.decided(&[take], &decision.limiters, now);
                    recorder.binary_answered(decision.accepted);
                    if i.is_multiple_of(FRAMES_PER_READ) {
                        recorder.binary_read_done(read_at);
                        read_at = clock::now_ns();
                    }
                    black_box(decision);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, metrics);
criterion_main!(benches);
