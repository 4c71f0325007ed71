//! Quick, noise-resistant cost of the CHECK hot path: decode one CHECK, resolve and route its
//! labels, encode its CHECK_REPLY. Reports the *minimum* per-op time over many short batches,
//! which filters out interference from other processes on a shared machine.
//!
//! Run: `cargo run --release -p tollgate-protocol --example codec_cost`.

use std::hint::black_box;
use std::time::Instant;

use tollgate_protocol::routing::{routing_hash, routing_value, shard_for};
use tollgate_protocol::*;

fn min_ns_per_op(mut f: impl FnMut()) -> f64 {
    const BATCH: u32 = 10_000;
    let mut best = f64::MAX;
    for _ in 0..300 {
        let t = Instant::now();
        for _ in 0..BATCH {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
    }
    best
}

fn main() {
    let mut table = InternTable::new();
    table.bind(0, "checkout-api").expect("bind");
    table.bind(1, "user").expect("bind");
    let keys = vec!["user".to_string()];
    let reply = CheckReply {
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
    };
    for interned in [false, true] {
        let (cp, user) = if interned {
            (StrRef::Interned(0), StrRef::Interned(1))
        } else {
            (StrRef::Inline("checkout-api"), StrRef::Inline("user"))
        };
        let labels = [(user, "user-123456"), (StrRef::Inline("tier"), "gold")];
        let mut frame = Vec::new();
        let spec = CheckSpec {
            control_point: cp,
            tokens: Some(1.0),
            wait_budget_ms: None,
            labels: &labels,
        };
        encode_check(&mut frame, 42, &spec).expect("encode");
        let mut out = Vec::with_capacity(4096);
        let decode_only = min_ns_per_op(|| {
            let d = decode_frame(black_box(&frame), DEFAULT_MAX_FRAME_LEN);
            black_box(d.ok().flatten().map(|d| d.len));
        });
        let full = min_ns_per_op(|| {
            out.clear();
            let Ok(Some(d)) = decode_frame(black_box(&frame), DEFAULT_MAX_FRAME_LEN) else {
                return;
            };
            let Frame::Check(check) = d.frame else { return };
            let cp = table.resolve(check.control_point());
            let labels = check
                .labels()
                .filter_map(|(k, v)| Some((table.resolve(k)?, v)));
            let shard = shard_for(routing_hash(routing_value(&keys, labels).as_bytes()), 8);
            let _ = encode_check_reply(
                &mut out,
                d.request_id,
                black_box(&reply),
                ProtocolVersion::LATEST,
            );
            black_box((cp, shard, out.len()));
        });
        let name = if interned { "interned" } else { "inline" };
        println!(
            "CHECK ({name}, 2 labels, {} bytes): decode {decode_only:.1} ns; \
             decode + resolve + route + encode CHECK_REPLY {full:.1} ns",
            frame.len()
        );
    }
}
