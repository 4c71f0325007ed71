//! The codec's hot path: decode one `CHECK`, walk and resolve its labels, compute its routing
//! value, and encode its `CHECK_REPLY`. Budget: <= 100 ns for the lot, with no heap allocation.
//!
//! The client's side: a 64-check `BATCH_REPLY` counted (admitted or not, per check) through
//! the owned [`decode_reply`] and through [`decode_verdict`], which reads the decisions alone.
//!
//! Run: `cargo bench -p tollgate-protocol --bench codec`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tollgate_protocol::routing::{routing_hash, routing_value, shard_for};
use tollgate_protocol::*;

fn check_frame(interned: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (cp, user) = if interned {
        (StrRef::Interned(0), StrRef::Interned(1))
    } else {
        (StrRef::Inline("checkout-api"), StrRef::Inline("user"))
    };
    let labels = [(user, "user-123456"), (StrRef::Inline("tier"), "gold")];
    encode_check(
        &mut out,
        42,
        &CheckSpec {
            control_point: cp,
            tokens: Some(1.0),
            wait_budget_ms: None,
            labels: &labels,
        },
    )
    .expect("encode");
    out
}

fn reply() -> CheckReply {
    CheckReply {
        decision: Decision::Accepted,
        reason: DecisionReason::None,
        wait_ns: 0,
        limiters: [LimiterResult {
            limiter_index: 0,
            outcome: LimiterOutcome::Accepted,
            status_code: 429,
            tokens: 1.0,
            remaining: 99.0,
            current: 100.0,
            wait_ns: 0,
            flow_id: None,
            refusal: None,
        }]
        .into_iter()
        .collect(),
    }
}

/// Checks in the `BATCH_REPLY` of the client-side rows: the loadgen's batch shape.
const BATCH_REPLY_ITEMS: usize = 64;

/// A `BATCH_REPLY` of [`BATCH_REPLY_ITEMS`] copies of `reply`, every other one rejected.
fn batch_reply_frame(reply: &CheckReply) -> Vec<u8> {
    let items: Vec<BatchItem> = (0..BATCH_REPLY_ITEMS)
        .map(|i| {
            let mut r = reply.clone();
            if i % 2 == 1 {
                r.decision = Decision::Rejected;
            }
            BatchItem::Reply(r)
        })
        .collect();
    let mut out = Vec::new();
    encode_batch_reply(&mut out, 9, &items, ProtocolVersion::LATEST).expect("encode");
    out
}

fn bench(c: &mut Criterion) {
    let mut table = InternTable::new();
    table.bind(0, "checkout-api").expect("bind");
    table.bind(1, "user").expect("bind");
    let keys = vec!["user".to_string()];
    let reply = reply();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    for (name, interned) in [("check_inline", false), ("check_interned", true)] {
        let frame = check_frame(interned);
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("decode+route+encode_reply/{name}"), |b| {
            b.iter(|| {
                out.clear();
                let d = decode_frame(black_box(&frame), DEFAULT_MAX_FRAME_LEN)
                    .expect("ok")
                    .expect("complete");
                let Frame::Check(check) = d.frame else {
                    unreachable!()
                };
                let cp = table.resolve(check.control_point()).expect("cp");
                let labels = check
                    .labels()
                    .filter_map(|(k, v)| Some((table.resolve(k)?, v)));
                let value = routing_value(&keys, labels);
                let shard = shard_for(routing_hash(value.as_bytes()), 8);
                encode_check_reply(
                    &mut out,
                    d.request_id,
                    black_box(&reply),
                    ProtocolVersion::LATEST,
                )
                .expect("encode");
                black_box((cp, shard, out.len()))
            })
        });
        g.bench_function(format!("decode_only/{name}"), |b| {
            b.iter(|| {
                decode_frame(black_box(&frame), DEFAULT_MAX_FRAME_LEN)
                    .expect("ok")
                    .map(|d| d.len)
            })
        });
    }
    let batch = batch_reply_frame(&reply);
    g.throughput(Throughput::Elements(BATCH_REPLY_ITEMS as u64));
    g.bench_function("count_batch_reply_64/decode_reply", |b| {
        b.iter(|| {
            let d = decode_reply(
                black_box(&batch),
                DEFAULT_MAX_FRAME_LEN,
                ProtocolVersion::LATEST,
            )
            .expect("ok")
            .expect("complete");
            let Reply::Batch(items) = d.reply else {
                unreachable!()
            };
            items
                .iter()
                .filter(|i| matches!(i, BatchItem::Reply(c) if c.accepted()))
                .count()
        })
    });
    g.bench_function("count_batch_reply_64/decode_verdict", |b| {
        b.iter(|| {
            let d = decode_verdict(
                black_box(&batch),
                DEFAULT_MAX_FRAME_LEN,
                ProtocolVersion::LATEST,
            )
            .expect("ok")
            .expect("complete");
            let Verdict::Batch(items) = d.verdict else {
                unreachable!()
            };
            items.iter().filter(|i| *i == Ok(true)).count()
        })
    });
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(4096);
    g.bench_function("encode_check_reply", |b| {
        b.iter(|| {
            out.clear();
            encode_check_reply(&mut out, 7, black_box(&reply), ProtocolVersion::LATEST)
                .expect("encode");
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
