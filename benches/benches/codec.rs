//! CHECK decode + CHECK_REPLY encode: the codec work per request on the server.
#![allow(clippy::unwrap_used)] // benchmark set-up: a panic is the failure report

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tollgate_protocol::{
    decode_frame, encode_check, encode_check_reply, frame_len, CheckReply, CheckSpec, Decision,
    DecisionReason, Frame, LimiterOutcome, LimiterResult, StrRef, DEFAULT_MAX_FRAME_LEN,
};

fn codec(c: &mut Criterion) {
    let labels = [
        (StrRef::Interned(1), "user-123456"),
        (StrRef::Inline("tier"), "premium"),
    ];
    let mut frame = Vec::new();
    encode_check(
        &mut frame,
        42,
        &CheckSpec {
            control_point: StrRef::Interned(0),
            tokens: None,
            labels: &labels,
        },
    )
    .unwrap();
    let reply = CheckReply {
        decision: Decision::Accepted,
        reason: DecisionReason::None,
        wait_ns: 0,
        limiters: [LimiterResult {
            limiter_index: 0,
            outcome: LimiterOutcome::Accepted,
            status_code: 429,
            tokens: 1.0,
            remaining: 9.0,
            current: 10.0,
            wait_ns: 0,
        }]
        .into_iter()
        .collect(),
    };
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("codec");
    group.bench_function("decode CHECK + walk labels + encode CHECK_REPLY", |b| {
        b.iter(|| {
            out.clear();
            let decoded = decode_frame(black_box(&frame), DEFAULT_MAX_FRAME_LEN)
                .unwrap()
                .unwrap();
            if let Frame::Check(check) = decoded.frame {
                for l in check.labels() {
                    black_box(l);
                }
            }
            encode_check_reply(&mut out, decoded.request_id, black_box(&reply)).unwrap();
            black_box(&out);
        })
    });
    group.bench_function("baseline: read the length prefix", |b| {
        b.iter(|| black_box(frame_len(black_box(&frame), DEFAULT_MAX_FRAME_LEN).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
