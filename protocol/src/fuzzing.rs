//! The body of the fuzz target (`fuzz/fuzz_targets/decode_any.rs`), kept here as a plain
//! function so `cargo test` drives it with random bytes on the stable toolchain too.
//!
//! Properties checked, for any input:
//! 1. no decoder panics (the target panicking *is* the failure);
//! 2. decoding walks the input frame by frame, skipping bodies that fail with
//!    [`DecodeError::Body`], and stops at `Ok(None)` or a [`DecodeError::Framing`];
//! 3. every frame that decodes re-encodes to exactly its original bytes (the encoding is
//!    canonical), in both directions and, for replies, in every protocol version;
//! 4. interned ids bound by `INTERN` frames resolve through a bounded [`InternTable`];
//! 5. [`decode_verdict`] gives the same answer as [`decode_reply`] for every frame: the same
//!    error, or the same length, request id and decisions.

use crate::decode::{decode_frame, decode_reply, frame_len, Frame, StrRef};
use crate::encode::{self, CheckSpec};
use crate::error::DecodeError;
use crate::frame::DEFAULT_MAX_FRAME_LEN;
use crate::intern::InternTable;
use crate::types::{BatchItem, Reply};
use crate::verdict::{decode_verdict, ErrorRef, Verdict};
use crate::version::ProtocolVersion;

/// Decodes `data` as a stream of client frames and, separately, as a stream of server frames
/// in each protocol version, asserting the properties above. Panics only if a property is
/// violated.
pub fn decode_any(data: &[u8]) {
    // A small limit exercises the early FRAME_TOO_LARGE path.
    let _ = frame_len(data, 64);
    requests(data);
    replies(data, ProtocolVersion::V1);
    replies(data, ProtocolVersion::V2);
    replies(data, ProtocolVersion::V3);
}

fn requests(mut data: &[u8]) {
    let mut interns = InternTable::new();
    let mut out = Vec::new();
    loop {
        let consumed = match decode_frame(data, DEFAULT_MAX_FRAME_LEN) {
            Ok(None) | Err(DecodeError::Framing { .. }) => return,
            Err(DecodeError::Body { frame_len, .. }) => frame_len,
            Ok(Some(d)) => {
                out.clear();
                reencode_request(&mut out, d.request_id, &d.frame, &mut interns);
                let original = data.get(..d.len);
                assert_eq!(
                    Some(out.as_slice()),
                    original,
                    "request re-encoding differs"
                );
                d.len
            }
        };
        data = data.get(consumed..).unwrap_or(&[]);
    }
}

fn reencode_request(out: &mut Vec<u8>, id: u32, frame: &Frame<'_>, interns: &mut InternTable) {
    let res = match *frame {
        Frame::Hello(h) => {
            encode::encode_hello_with_key(out, id, h.version, h.client_name, h.api_key)
        }
        Frame::Check(c) => {
            let labels: Vec<(StrRef<'_>, &str)> = c.labels().collect();
            assert_eq!(labels.len(), c.label_count());
            for (k, _) in &labels {
                let _ = interns.resolve(*k);
            }
            encode::encode_check(
                out,
                id,
                &CheckSpec {
                    control_point: c.control_point(),
                    tokens: c.tokens(),
                    wait_budget_ms: c.wait_budget_ms(),
                    labels: &labels,
                },
            )
        }
        Frame::CheckBatch(b) => {
            let items: Vec<Vec<(StrRef<'_>, &str)>> =
                b.iter().map(|c| c.labels().collect()).collect();
            assert_eq!(items.len(), b.len());
            let specs: Vec<CheckSpec<'_>> = b
                .iter()
                .zip(&items)
                .map(|(c, labels)| CheckSpec {
                    control_point: c.control_point(),
                    tokens: c.tokens(),
                    wait_budget_ms: c.wait_budget_ms(),
                    labels,
                })
                .collect();
            encode::encode_check_batch(out, id, &specs)
        }
        Frame::Intern { id: iid, value } => {
            if interns.bind(iid, value).is_ok() {
                assert_eq!(interns.get(iid), Some(value));
            }
            encode::encode_intern(out, id, iid, value)
        }
        Frame::Members => encode::encode_members(out, id),
        Frame::Ping(p) => encode::encode_ping(out, id, p),
        Frame::FlowEnd(ids) => {
            let ids: Vec<u64> = ids.iter().collect();
            encode::encode_flow_end(out, id, &ids)
        }
    };
    assert!(
        res.is_ok(),
        "a decoded request failed to re-encode: {res:?}"
    );
}

fn replies(mut data: &[u8], version: ProtocolVersion) {
    let mut out = Vec::new();
    loop {
        let reply = decode_reply(data, DEFAULT_MAX_FRAME_LEN, version);
        verdict_agrees(data, version, &reply);
        let consumed = match reply {
            Ok(None) | Err(DecodeError::Framing { .. }) => return,
            Err(DecodeError::Body { frame_len, .. }) => frame_len,
            Ok(Some(d)) => {
                out.clear();
                let id = d.request_id;
                let res = match &d.reply {
                    Reply::Hello(h) => encode::encode_hello_reply(&mut out, id, h),
                    Reply::Check(c) => encode::encode_check_reply(&mut out, id, c, version),
                    Reply::Batch(items) => encode::encode_batch_reply(&mut out, id, items, version),
                    Reply::FlowEnd(s) => encode::encode_flow_end_reply(&mut out, id, s),
                    Reply::Members(m) => encode::encode_members_reply(&mut out, id, m, version),
                    Reply::Pong(p) => encode::encode_pong(&mut out, id, p),
                    Reply::Error(e) => {
                        encode::encode_error(&mut out, id, e.code, &e.message);
                        Ok(())
                    }
                };
                assert!(res.is_ok(), "a decoded reply failed to re-encode: {res:?}");
                assert_eq!(
                    Some(out.as_slice()),
                    data.get(..d.len),
                    "reply re-encoding differs"
                );
                d.len
            }
        };
        data = data.get(consumed..).unwrap_or(&[]);
    }
}

/// Property 5: `decode_verdict` on the bytes `decode_reply` answered `reply` for.
fn verdict_agrees(
    data: &[u8],
    version: ProtocolVersion,
    reply: &Result<Option<crate::DecodedReply>, DecodeError>,
) {
    let verdict = decode_verdict(data, DEFAULT_MAX_FRAME_LEN, version);
    let (d, v) = match (reply, verdict) {
        (Ok(Some(d)), Ok(Some(v))) => (d, v),
        (Ok(None), Ok(None)) => return,
        (Err(a), Err(b)) => {
            assert_eq!(*a, b, "decode_verdict fails differently from decode_reply");
            return;
        }
        (a, b) => panic!("decode_reply gave {a:?}, decode_verdict {b:?}"),
    };
    assert_eq!((d.request_id, d.len), (v.request_id, v.len));
    fn error(e: &crate::ErrorReply) -> ErrorRef<'_> {
        ErrorRef {
            code: e.code,
            message: &e.message,
        }
    }
    match (&d.reply, v.verdict) {
        (Reply::Check(c), Verdict::Check(accepted)) => assert_eq!(c.accepted(), accepted),
        (Reply::Batch(items), Verdict::Batch(verdicts)) => {
            assert_eq!(items.len(), verdicts.len());
            assert_eq!(verdicts.iter().len(), items.len());
            for (item, verdict) in items.iter().zip(verdicts) {
                let expected = match item {
                    BatchItem::Reply(c) => Ok(c.accepted()),
                    BatchItem::Error(e) => Err(error(e)),
                };
                assert_eq!(expected, verdict);
            }
        }
        (Reply::Pong(p), Verdict::Pong(q)) => assert_eq!(p.as_slice(), q),
        (Reply::Error(e), Verdict::Error(f)) => assert_eq!(error(e), f),
        (Reply::FlowEnd(_), Verdict::Other(crate::opcode::FLOW_END_REPLY))
        | (Reply::Hello(_), Verdict::Other(crate::opcode::HELLO_REPLY))
        | (Reply::Members(_), Verdict::Other(crate::opcode::MEMBERS_REPLY)) => {}
        (r, v) => panic!("decode_reply gave {r:?}, decode_verdict {v:?}"),
    }
}

/// `cargo test` drives the fuzz body with random inputs on stable: raw bytes, well-formed
/// headers around random bodies, and valid frames with one byte corrupted (which reach deep into
/// the body decoders and exercise the re-encoding property far more often than raw bytes).
#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use proptest::prelude::*;

    use super::decode_any;
    use crate::encode::{
        encode_batch_reply, encode_check, encode_check_reply, encode_error, encode_flow_end,
        encode_flow_end_reply, encode_hello_reply, encode_hello_with_key, encode_pong, CheckSpec,
    };
    use crate::types::{
        BatchItem, CheckReply, ControlPointRouting, Decision, DecisionReason, ErrorReply,
        FlowEndStatus, HelloReply, LimiterOutcome, LimiterResult, Refusal,
    };
    use crate::version::ProtocolVersion;
    use crate::ErrorCode;
    use crate::StrRef;

    /// A `CHECK` as owned parts: (control point, tokens, wait budget, labels); `None` strings
    /// are interned ids (the `u16`), so both string encodings are covered.
    type OwnedCheck = (
        (Option<String>, u16),
        Option<f64>,
        Option<u32>,
        Vec<((Option<String>, u16), String)>,
    );

    fn str_ref(s: &(Option<String>, u16)) -> StrRef<'_> {
        match s {
            (Some(inline), _) => StrRef::Inline(inline),
            (None, id) => StrRef::Interned(*id),
        }
    }

    fn owned_str() -> impl Strategy<Value = (Option<String>, u16)> {
        (
            prop::option::of("[a-z0-9_.-]{0,12}"),
            0..crate::MAX_INTERNED as u16,
        )
    }

    fn check() -> impl Strategy<Value = OwnedCheck> {
        (
            owned_str(),
            prop::option::of(prop_oneof![Just(0.0), Just(1.0), 0.0f64..1e9]),
            prop::option::of(any::<u32>()),
            prop::collection::vec((owned_str(), "[a-z0-9-]{0,12}"), 0..5),
        )
    }

    fn version() -> impl Strategy<Value = ProtocolVersion> {
        prop_oneof![
            Just(ProtocolVersion::V1),
            Just(ProtocolVersion::V2),
            Just(ProtocolVersion::V3)
        ]
    }

    fn check_reply() -> impl Strategy<Value = CheckReply> {
        let limiter = (
            (any::<u16>(), 0u8..4, any::<u16>()),
            (-1e15f64..1e15, any::<u64>()),
            (any::<u64>(), 0u8..7),
        )
            .prop_map(
                |((limiter_index, outcome, status_code), (remaining, wait_ns), (flow, refusal))| {
                    LimiterResult {
                        limiter_index,
                        outcome: LimiterOutcome::from_u8(outcome)
                            .unwrap_or(LimiterOutcome::Accepted),
                        status_code,
                        tokens: 1.0,
                        remaining,
                        current: remaining,
                        wait_ns,
                        flow_id: NonZeroU64::new(flow),
                        refusal: Refusal::from_u8(refusal).flatten(),
                    }
                },
            );
        (0u8..3, any::<u64>(), prop::collection::vec(limiter, 0..5)).prop_map(
            |(reason, wait_ns, limiters)| CheckReply {
                decision: if reason == 0 {
                    Decision::Accepted
                } else {
                    Decision::Rejected
                },
                reason: DecisionReason::from_u8(reason, ProtocolVersion::V2)
                    .unwrap_or(DecisionReason::None),
                wait_ns,
                limiters: limiters.into_iter().collect(),
            },
        )
    }

    fn hello_reply() -> impl Strategy<Value = HelloReply> {
        (
            version(),
            prop::collection::vec(
                ("[a-z]{0,6}", prop::collection::vec("[a-z]{0,6}", 0..3)),
                0..3,
            ),
        )
            .prop_map(|(version, routing)| HelloReply {
                version,
                node_id: "n1".into(),
                shard_count: 2,
                hash_algo: crate::routing::HASH_FNV1A_64,
                shard_index: Some(1),
                shard_ports: vec![7071, 7072],
                routing_label_keys: vec!["user".into()],
                policy_names: vec!["p".into()],
                max_frame_len: crate::DEFAULT_MAX_FRAME_LEN,
                max_batch: 1024,
                max_in_flight: 1024,
                control_point_routing: match version {
                    ProtocolVersion::V1 => Vec::new(),
                    ProtocolVersion::V2 | ProtocolVersion::V3 => routing
                        .into_iter()
                        .map(|(control_point, routing_label_keys)| ControlPointRouting {
                            control_point,
                            routing_label_keys,
                        })
                        .collect(),
                },
            })
    }

    /// Inputs `cargo fuzz` found (fuzz/artifacts), replayed on stable.
    #[test]
    fn regressions() {
        // INTERN with id 0xFF00: decoded, then failed to re-encode. Now rejected as malformed.
        decode_any(&[
            10, 0, 0, 0, 4, 0, 43, 0, 255, 3, 0, 255, 0, 0, 0, 0, 15, 160, 160, 160, 160, 160, 59,
            160, 63, 39, 0, 0, 42,
        ]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_any(&data);
        }

        #[test]
        fn random_bodies_and_their_prefixes(
            op in prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(5), Just(6), Just(7),
                              Just(0x81), Just(0x82), Just(0x83), Just(0x85), Just(0x86),
                              Just(0x87), Just(0xFF), any::<u8>()],
            body in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut frame = ((body.len() + 6) as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(&[op, 0, 1, 0, 0, 0]);
            frame.extend_from_slice(&body);
            for cut in 0..=frame.len() {
                decode_any(&frame[..cut]);
            }
        }

        #[test]
        fn corrupted_frames(
            (control_point, tokens, wait_budget_ms, labels) in check(),
            reply in check_reply(),
            hello in hello_reply(),
            reply_version in version(),
            flow_ids in prop::collection::vec(any::<u64>(), 0..4),
            api_key in prop::option::of("[ -~]{0,40}"),
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let labels: Vec<(StrRef<'_>, &str)> =
                labels.iter().map(|(k, v)| (str_ref(k), v.as_str())).collect();
            let spec = CheckSpec {
                control_point: str_ref(&control_point), tokens, wait_budget_ms, labels: &labels,
            };
            let statuses: Vec<FlowEndStatus> =
                flow_ids.iter().map(|id| FlowEndStatus::from_ended(id % 2 == 0)).collect();
            let mut out = Vec::new();
            prop_assert!(
                encode_hello_with_key(&mut out, 6, 2, "fuzz", api_key.as_deref()).is_ok()
            );
            prop_assert!(encode_check(&mut out, 7, &spec).is_ok());
            prop_assert!(encode_flow_end(&mut out, 8, &flow_ids).is_ok());
            prop_assert!(encode_hello_reply(&mut out, 9, &hello).is_ok());
            prop_assert!(encode_check_reply(&mut out, 7, &reply, reply_version).is_ok());
            prop_assert!(encode_flow_end_reply(&mut out, 8, &statuses).is_ok());
            // A batch with both decisions and a failed item, a pong and an error: the
            // replies a verdict decoder reads (property 5).
            let mut flipped = reply.clone();
            flipped.decision = match reply.decision {
                Decision::Accepted => Decision::Rejected,
                Decision::Rejected => Decision::Accepted,
            };
            let failed = ErrorReply { code: ErrorCode::MalformedFrame, message: "bad cost".into() };
            let items = [
                BatchItem::Reply(reply.clone()),
                BatchItem::Error(failed.clone()),
                BatchItem::Reply(flipped),
            ];
            prop_assert!(encode_batch_reply(&mut out, 10, &items, reply_version).is_ok());
            prop_assert!(encode_pong(&mut out, 11, &flow_ids.len().to_le_bytes()).is_ok());
            encode_error(&mut out, 12, failed.code, &failed.message);
            decode_any(&out);
            let i = pos.index(out.len());
            out[i] = byte;
            decode_any(&out);
        }
    }
}
