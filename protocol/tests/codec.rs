//! Property tests of the codec: every frame type round-trips (replies in both protocol versions:
//! version 1 receives exactly what version 1 can carry), every strict prefix of a frame is
//! "need more bytes", random and corrupted bytes never panic, and limits are enforced.

use std::num::NonZeroU64;

use proptest::prelude::*;
use tollgate_protocol::*;

const V1: ProtocolVersion = ProtocolVersion::V1;
const V2: ProtocolVersion = ProtocolVersion::V2;
const V3: ProtocolVersion = ProtocolVersion::V3;

#[derive(Debug, Clone)]
enum OwnedRef {
    Inline(String),
    Interned(u16),
}

impl OwnedRef {
    fn as_ref(&self) -> StrRef<'_> {
        match self {
            OwnedRef::Inline(s) => StrRef::Inline(s),
            OwnedRef::Interned(id) => StrRef::Interned(*id),
        }
    }
}

#[derive(Debug, Clone)]
struct OwnedCheck {
    control_point: OwnedRef,
    tokens: Option<f64>,
    wait_budget_ms: Option<u32>,
    labels: Vec<(OwnedRef, String)>,
}

impl OwnedCheck {
    fn labels(&self) -> Vec<(StrRef<'_>, &str)> {
        self.labels
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect()
    }

    fn spec<'a>(&'a self, labels: &'a [(StrRef<'a>, &'a str)]) -> CheckSpec<'a> {
        CheckSpec {
            control_point: self.control_point.as_ref(),
            tokens: self.tokens,
            wait_budget_ms: self.wait_budget_ms,
            labels,
        }
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9_./-]{0,24}", "\\PC{0,8}", Just(String::new()),]
}

fn str_ref() -> impl Strategy<Value = OwnedRef> {
    prop_oneof![
        text().prop_map(OwnedRef::Inline),
        (0..MAX_INTERNED as u16).prop_map(OwnedRef::Interned),
    ]
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        -1e15f64..1e15,
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO,
    ]
}

fn tokens() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![Just(0.0), Just(1.0), 0.0f64..1e9])
}

fn check() -> impl Strategy<Value = OwnedCheck> {
    (
        str_ref(),
        tokens(),
        prop::option::of(prop_oneof![Just(0u32), Just(u32::MAX), any::<u32>()]),
        prop::collection::vec((str_ref(), text()), 0..6),
    )
        .prop_map(
            |(control_point, tokens, wait_budget_ms, labels)| OwnedCheck {
                control_point,
                tokens,
                wait_budget_ms,
                labels,
            },
        )
}

fn limiter() -> impl Strategy<Value = LimiterResult> {
    (
        (any::<u16>(), 0u8..4, any::<u16>()),
        (finite(), finite(), finite(), any::<u64>()),
        (
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            0u8..7,
        ),
    )
        .prop_map(
            |(
                (limiter_index, o, status_code),
                (tokens, remaining, current, wait_ns),
                (flow, refusal),
            )| LimiterResult {
                limiter_index,
                outcome: LimiterOutcome::from_u8(o).unwrap_or(LimiterOutcome::Accepted),
                status_code,
                tokens,
                remaining,
                current,
                wait_ns,
                flow_id: NonZeroU64::new(flow),
                refusal: Refusal::from_u8(refusal).flatten(),
            },
        )
}

fn check_reply() -> impl Strategy<Value = CheckReply> {
    (
        any::<bool>(),
        0u8..3,
        any::<u64>(),
        prop::collection::vec(limiter(), 0..7),
    )
        .prop_map(|(rejected, reason, wait_ns, limiters)| CheckReply {
            decision: if rejected {
                Decision::Rejected
            } else {
                Decision::Accepted
            },
            reason: DecisionReason::from_u8(reason, V2).unwrap_or(DecisionReason::None),
            wait_ns,
            limiters: limiters.into_iter().collect(),
        })
}

/// What a peer speaking `version` receives for `reply`: version 1 carries no flow ids and no
/// refusals, and `NO_TOKENS` as `RATE_LIMITED`.
fn as_received_in(reply: &CheckReply, version: ProtocolVersion) -> CheckReply {
    match version {
        ProtocolVersion::V2 | ProtocolVersion::V3 => reply.clone(),
        ProtocolVersion::V1 => CheckReply {
            reason: match reply.reason {
                DecisionReason::NoTokens => DecisionReason::RateLimited,
                other => other,
            },
            limiters: reply
                .limiters
                .iter()
                .map(|l| LimiterResult {
                    flow_id: None,
                    refusal: None,
                    ..*l
                })
                .collect(),
            ..reply.clone()
        },
    }
}

fn items_as_received_in(items: &[BatchItem], version: ProtocolVersion) -> Vec<BatchItem> {
    items
        .iter()
        .map(|item| match item {
            BatchItem::Reply(r) => BatchItem::Reply(as_received_in(r, version)),
            BatchItem::Error(e) => BatchItem::Error(e.clone()),
        })
        .collect()
}

fn error_reply() -> impl Strategy<Value = ErrorReply> {
    (any::<u16>(), text()).prop_map(|(code, message)| ErrorReply {
        code: ErrorCode::from_u16(code),
        message,
    })
}

fn hello_reply() -> impl Strategy<Value = HelloReply> {
    (
        (
            prop_oneof![Just(V1), Just(V2), Just(V3)],
            text(),
            any::<u16>(),
            any::<u8>(),
        ),
        prop::option::of(0u16..0xFFFF),
        prop::collection::vec(any::<u16>(), 0..9),
        prop::collection::vec(text(), 0..4),
        prop::collection::vec(text(), 0..4),
        (any::<u32>(), any::<u16>(), any::<u32>()),
        prop::collection::vec((text(), prop::collection::vec(text(), 0..3)), 0..4),
    )
        .prop_map(
            |(
                (version, node_id, shard_count, hash_algo),
                shard_index,
                shard_ports,
                routing_label_keys,
                policy_names,
                (max_frame_len, max_batch, max_in_flight),
                routing,
            )| HelloReply {
                version,
                node_id,
                shard_count,
                hash_algo,
                shard_index,
                shard_ports,
                routing_label_keys,
                policy_names,
                max_frame_len,
                max_batch,
                max_in_flight,
                // Version 1 cannot carry it: generate it empty there, so the value round-trips.
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
            },
        )
}

fn member() -> impl Strategy<Value = Member> {
    (
        text(),
        text(),
        0u8..4,
        any::<u64>(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(
            |(node_id, address, s, last_contact_ms, policy_digest)| Member {
                node_id,
                address,
                state: MemberState::from_u8(s).unwrap_or(MemberState::Alive),
                last_contact_ms,
                policy_digest,
            },
        )
}

/// What a client on a `version` connection decodes of `members`: no digests below version 3.
fn members_as_received_in(members: &[Member], version: ProtocolVersion) -> Vec<Member> {
    members
        .iter()
        .map(|m| Member {
            policy_digest: m.policy_digest.filter(|_| version >= ProtocolVersion::V3),
            ..m.clone()
        })
        .collect()
}

fn decode_one(buf: &[u8]) -> Decoded<'_> {
    match decode_frame(buf, DEFAULT_MAX_FRAME_LEN) {
        Ok(Some(d)) => d,
        other => panic!("expected a frame, got {other:?}"),
    }
}

fn decode_one_reply(buf: &[u8], version: ProtocolVersion) -> DecodedReply {
    match decode_reply(buf, DEFAULT_MAX_FRAME_LEN, version) {
        Ok(Some(d)) => d,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn assert_check_eq(got: &CheckRef<'_>, want: &OwnedCheck) {
    assert_eq!(got.control_point(), want.control_point.as_ref());
    assert_eq!(got.tokens(), want.tokens);
    assert_eq!(got.wait_budget_ms(), want.wait_budget_ms);
    assert_eq!(got.label_count(), want.labels.len());
    assert_eq!(got.labels().collect::<Vec<_>>(), want.labels());
}

/// Every strict prefix of a complete frame must be "need more bytes", never an error or panic.
fn assert_prefixes_incomplete(buf: &[u8]) {
    for cut in 0..buf.len() {
        assert_eq!(
            decode_frame(&buf[..cut], DEFAULT_MAX_FRAME_LEN),
            Ok(None),
            "cut {cut}"
        );
        for version in [V1, V2] {
            assert_eq!(
                decode_reply(&buf[..cut], DEFAULT_MAX_FRAME_LEN, version),
                Ok(None),
                "cut {cut}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn check_round_trips(c in check(), id in any::<u32>()) {
        let mut out = vec![0xAA]; // encoders append; existing bytes are left alone
        let labels = c.labels();
        encode_check(&mut out, id, &c.spec(&labels)).expect("encode");
        prop_assert_eq!(out[0], 0xAA);
        let d = decode_one(&out[1..]);
        prop_assert_eq!(d.request_id, id);
        prop_assert_eq!(d.len, out.len() - 1);
        let Frame::Check(got) = d.frame else { panic!("not a check: {:?}", d.frame) };
        assert_check_eq(&got, &c);
        assert_prefixes_incomplete(&out[1..]);
    }

    #[test]
    fn batch_round_trips(checks in prop::collection::vec(check(), 0..8), id in any::<u32>()) {
        let labels: Vec<_> = checks.iter().map(|c| c.labels()).collect();
        let specs: Vec<_> = checks.iter().zip(&labels).map(|(c, l)| c.spec(l)).collect();
        let mut out = Vec::new();
        encode_check_batch(&mut out, id, &specs).expect("encode");
        let d = decode_one(&out);
        let Frame::CheckBatch(b) = d.frame else { panic!("not a batch") };
        prop_assert_eq!(b.len(), checks.len());
        let got: Vec<_> = b.iter().collect();
        prop_assert_eq!(got.len(), checks.len());
        for (g, w) in got.iter().zip(&checks) {
            assert_check_eq(g, w);
        }
        assert_prefixes_incomplete(&out);
    }

    #[test]
    fn small_requests_round_trip(
        version in any::<u16>(), name in text(), iid in 0..MAX_INTERNED as u16,
        payload in prop::collection::vec(any::<u8>(), 0..64), id in any::<u32>(),
        flow_ids in prop::collection::vec(any::<u64>(), 0..9),
        api_key in prop::option::of("[ -~]{0,256}"),
    ) {
        let mut out = Vec::new();
        encode_hello_with_key(&mut out, id, version, &name, api_key.as_deref()).expect("hello");
        encode_intern(&mut out, id, iid, &name).expect("intern");
        encode_members(&mut out, id).expect("members");
        encode_ping(&mut out, id, &payload).expect("ping");
        encode_flow_end(&mut out, id, &flow_ids).expect("flow end");
        let mut rest = &out[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let d = decode_one(rest);
            prop_assert_eq!(d.request_id, id);
            assert_prefixes_incomplete(&rest[..d.len]);
            frames.push(d.frame);
            rest = &rest[d.len..];
        }
        let Some(Frame::FlowEnd(ends)) = frames.pop() else { panic!("not a FLOW_END") };
        prop_assert_eq!(ends.len(), flow_ids.len());
        prop_assert_eq!(ends.iter().collect::<Vec<_>>(), flow_ids);
        prop_assert_eq!(frames, vec![
            Frame::Hello(HelloRef { version, client_name: &name, api_key: api_key.as_deref() }),
            Frame::Intern { id: iid, value: &name },
            Frame::Members,
            Frame::Ping(&payload),
        ]);
    }

    #[test]
    fn replies_round_trip(
        hello in hello_reply(), reply in check_reply(),
        items in prop::collection::vec(prop_oneof![
            check_reply().prop_map(BatchItem::Reply),
            error_reply().prop_map(BatchItem::Error),
        ], 0..5),
        members in prop::collection::vec(member(), 0..5),
        payload in prop::collection::vec(any::<u8>(), 0..64),
        err in error_reply(),
        ends in prop::collection::vec(any::<bool>(), 0..9),
        id in any::<u32>(),
        version in prop_oneof![Just(V1), Just(V2), Just(V3)],
    ) {
        let ends: Vec<FlowEndStatus> = ends.into_iter().map(FlowEndStatus::from_ended).collect();
        let mut out = Vec::new();
        encode_hello_reply(&mut out, id, &hello).expect("hello");
        encode_check_reply(&mut out, id, &reply, version).expect("check");
        encode_batch_reply(&mut out, id, &items, version).expect("batch");
        encode_members_reply(&mut out, id, &members, version).expect("members");
        encode_pong(&mut out, id, &payload).expect("pong");
        encode_flow_end_reply(&mut out, id, &ends).expect("flow end");
        encode_error(&mut out, id, err.code, &err.message);
        let want = vec![
            Reply::Hello(hello), Reply::Check(as_received_in(&reply, version)),
            Reply::Batch(items_as_received_in(&items, version)),
            Reply::Members(members_as_received_in(&members, version)), Reply::Pong(payload),
            Reply::FlowEnd(ends),
            Reply::Error(err),
        ];
        let mut rest = &out[..];
        let mut got = Vec::new();
        while !rest.is_empty() {
            let d = decode_one_reply(rest, version);
            prop_assert_eq!(d.request_id, id);
            assert_prefixes_incomplete(&rest[..d.len]);
            got.push(d.reply);
            rest = &rest[d.len..];
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn version_1_check_reply_is_the_version_1_layout(reply in check_reply()) {
        // The version-1 bytes are exactly the version-2 bytes without each limiter's flow id and
        // refusal, with NO_TOKENS sent as RATE_LIMITED: old clients parse them unchanged.
        let (mut v1, mut v2) = (Vec::new(), Vec::new());
        encode_check_reply(&mut v1, 5, &reply, V1).expect("v1");
        encode_check_reply(&mut v2, 5, &reply, V2).expect("v2");
        let n = reply.limiters.len();
        prop_assert_eq!(v2.len() - v1.len(), n * 9);
        prop_assert_eq!(&v1[4..11], &v2[4..11]); // opcode .. decision
        prop_assert_eq!(v1[11], if reply.reason == DecisionReason::None { 0 } else { 1 });
        prop_assert_eq!(&v1[12..21], &v2[12..21]); // wait_ns, count
        for i in 0..n {
            prop_assert_eq!(&v1[21 + 37 * i..21 + 37 * (i + 1)], &v2[21 + 46 * i..21 + 46 * i + 37]);
        }
    }

    #[test]
    fn framing_survives_random_bodies(
        op in prop_oneof![Just(1u8), Just(2), Just(3), Just(4), Just(5), Just(6),
                          Just(7), Just(0x81), Just(0x82), Just(0x83), Just(0x85), Just(0x86),
                          Just(0x87), Just(0xFF), any::<u8>()],
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        // A well-formed header around a random body: whatever the body holds, the frame either
        // decodes whole or fails with a skippable body error for its own request id. (The fuzz
        // body `fuzzing::decode_any` runs on the same inputs in the crate's unit tests.)
        let mut frame = ((body.len() + 6) as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&[op, 0, 1, 0, 0, 0]);
        frame.extend_from_slice(&body);
        match decode_frame(&frame, DEFAULT_MAX_FRAME_LEN) {
            Ok(Some(d)) => prop_assert_eq!(d.len, frame.len()),
            Err(e) => {
                prop_assert!(!e.is_fatal());
                prop_assert_eq!(e.request_id(), 1);
            }
            Ok(None) => panic!("complete frame reported incomplete"),
        }
    }
}

#[test]
fn oversize_rejected_from_header_alone() {
    // Only the 4-byte prefix: 2 MiB declared, no body present.
    let header = (2 * 1024 * 1024u32).to_le_bytes();
    let err = decode_frame(&header, DEFAULT_MAX_FRAME_LEN).expect_err("too large");
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert_eq!(frame_len(&header, DEFAULT_MAX_FRAME_LEN), Err(err));
    assert!(decode_reply(&header, DEFAULT_MAX_FRAME_LEN, V2).is_err());
    // u32::MAX and a tiny custom limit.
    assert!(frame_len(&u32::MAX.to_le_bytes(), u32::MAX - 1).is_err());
    assert!(frame_len(&100u32.to_le_bytes(), 99).is_err());
    assert_eq!(frame_len(&99u32.to_le_bytes(), 99), Ok(Some(103)));
    // Below the 6-byte header.
    let err = frame_len(&5u32.to_le_bytes(), DEFAULT_MAX_FRAME_LEN).expect_err("too small");
    assert!(err.is_fatal());
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    // Fewer than 4 bytes: need more.
    assert_eq!(frame_len(&[0xFF, 0xFF, 0xFF], 10), Ok(None));
}

#[test]
fn body_errors_keep_framing() {
    // Unknown opcode, then a valid PING: the first is skippable, the second decodes.
    let mut buf = vec![6, 0, 0, 0, 0x42, 0, 9, 0, 0, 0];
    encode_ping(&mut buf, 10, b"x").expect("ping");
    let err = decode_frame(&buf, DEFAULT_MAX_FRAME_LEN).expect_err("unknown opcode");
    match err {
        DecodeError::Body {
            code,
            request_id,
            frame_len,
            ..
        } => {
            assert_eq!(code, ErrorCode::UnknownOpcode);
            assert_eq!(request_id, 9);
            assert_eq!(frame_len, 10);
            let d = decode_one(&buf[frame_len..]);
            assert_eq!(d.frame, Frame::Ping(b"x"));
        }
        other => panic!("{other:?}"),
    }
    // Reserved header flags.
    let bad = [6, 0, 0, 0, opcode::MEMBERS, 1, 3, 0, 0, 0];
    let err = decode_frame(&bad, DEFAULT_MAX_FRAME_LEN).expect_err("flags");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    assert!(!err.is_fatal());
    // Trailing bytes after a MEMBERS body.
    let bad = [7, 0, 0, 0, opcode::MEMBERS, 0, 3, 0, 0, 0, 0];
    assert_eq!(
        decode_frame(&bad, DEFAULT_MAX_FRAME_LEN).map_err(|e| e.code()),
        Err(ErrorCode::MalformedFrame)
    );
}

fn check_frame(body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 6) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&[opcode::CHECK, 0, 1, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

#[test]
fn check_body_limits() {
    let reason = |body: &[u8]| match decode_frame(&check_frame(body), DEFAULT_MAX_FRAME_LEN) {
        Err(DecodeError::Body { reason, .. }) => reason,
        other => panic!("expected a body error, got {other:?}"),
    };
    // Unknown CHECK flag bits (bits 0 and 1 are tokens and wait budget).
    assert_eq!(
        reason(&[0x04, 0, 0, 0, 0]),
        "unknown CHECK flags bits must be zero"
    );
    assert_eq!(
        reason(&[0x83, 0, 0, 0, 0]),
        "unknown CHECK flags bits must be zero"
    );
    // A wait budget that the frame does not hold.
    assert_eq!(
        reason(&[0x02, 0, 0, 1, 0]),
        "truncated CHECK wait_budget_ms"
    );
    // Negative / NaN tokens.
    let mut b = vec![0x01, 0, 0];
    b.extend_from_slice(&(-1.0f64).to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    assert_eq!(reason(&b), "tokens must be finite and >= 0");
    let mut b = vec![0x01, 0, 0];
    b.extend_from_slice(&f64::NAN.to_le_bytes());
    b.extend_from_slice(&[0, 0]);
    assert_eq!(reason(&b), "tokens must be finite and >= 0");
    // Interned id out of range.
    assert_eq!(reason(&[0, 0x00, 0x90, 0, 0]), "interned id out of range");
    // Inline string length above MAX_STRING_LEN (0x1001 = 4097).
    assert_eq!(
        reason(&[0, 0x01, 0x10]),
        "string longer than MAX_STRING_LEN"
    );
    // Declared string longer than the frame.
    assert_eq!(
        reason(&[0, 0x05, 0x00, b'a']),
        "string runs past the end of the frame"
    );
    // Invalid UTF-8.
    assert_eq!(
        reason(&[0, 0x01, 0x00, 0xFF, 0, 0]),
        "string is not valid UTF-8"
    );
    // Label count above MAX_LABELS.
    assert_eq!(reason(&[0, 0, 0, 65, 0]), "element count exceeds its limit");
    // Label count the body cannot hold.
    assert_eq!(
        reason(&[0, 0, 0, 3, 0, 0, 0, 0, 0]),
        "element count larger than the frame can hold"
    );
}

#[test]
fn encoders_enforce_limits_and_leave_buffer_untouched() {
    let long = "x".repeat(MAX_STRING_LEN + 1);
    let mut out = vec![1, 2, 3];
    let labels: Vec<(StrRef<'_>, &str)> = (0..=MAX_LABELS)
        .map(|_| (StrRef::Inline("k"), "v"))
        .collect();
    let too_many = CheckSpec {
        control_point: StrRef::Inline("cp"),
        tokens: None,
        wait_budget_ms: None,
        labels: &labels,
    };
    assert_eq!(
        encode_check(&mut out, 1, &too_many),
        Err(EncodeError::TooManyLabels { count: 65 })
    );
    let long_value = [(StrRef::Inline("k"), long.as_str())];
    let spec = CheckSpec {
        control_point: StrRef::Inline("cp"),
        tokens: None,
        wait_budget_ms: None,
        labels: &long_value,
    };
    assert_eq!(
        encode_check(&mut out, 1, &spec),
        Err(EncodeError::StringTooLong { len: 4097 })
    );
    let spec = CheckSpec {
        control_point: StrRef::Interned(4096),
        tokens: None,
        wait_budget_ms: None,
        labels: &[],
    };
    assert_eq!(
        encode_check(&mut out, 1, &spec),
        Err(EncodeError::InternedIdOutOfRange { id: 4096 })
    );
    let spec = CheckSpec {
        control_point: StrRef::Inline("cp"),
        tokens: Some(f64::INFINITY),
        wait_budget_ms: None,
        labels: &[],
    };
    assert_eq!(
        encode_check(&mut out, 1, &spec),
        Err(EncodeError::InvalidTokens)
    );
    assert_eq!(
        encode_intern(&mut out, 1, 4096, "x"),
        Err(EncodeError::InternedIdOutOfRange { id: 4096 })
    );
    // A reply with more limiters than a count byte holds is refused whole, counted to the end,
    // in a frame of its own and as a batch item.
    let limiter = LimiterResult {
        limiter_index: 0,
        outcome: LimiterOutcome::Accepted,
        status_code: 429,
        tokens: 1.0,
        remaining: 9.0,
        current: 10.0,
        wait_ns: 0,
        flow_id: None,
        refusal: None,
    };
    let head = ReplyHead {
        decision: Decision::Accepted,
        reason: DecisionReason::None,
        wait_ns: 0,
    };
    let too_many = || std::iter::repeat_n(limiter, MAX_LIMITERS + 2);
    let refused = Err(EncodeError::TooManyItems {
        what: "limiters",
        count: MAX_LIMITERS + 2,
        max: MAX_LIMITERS,
    });
    assert_eq!(
        encode_check_reply_from(&mut out, 1, head, too_many(), V2),
        refused
    );
    assert_eq!(out, vec![1, 2, 3]);
    let mut w = BatchReplyWriter::new(&mut out, 1, 1, V2).expect("writer");
    assert_eq!(w.reply_from(head, too_many()), refused);
    w.abandon();
    assert_eq!(out, vec![1, 2, 3]);
    // The most a count byte holds is encoded and read back.
    let mut full = Vec::new();
    encode_check_reply_from(
        &mut full,
        1,
        head,
        std::iter::repeat_n(limiter, MAX_LIMITERS),
        V2,
    )
    .expect("MAX_LIMITERS limiters");
    let Reply::Check(reply) = decode_one_reply(&full, V2).reply else {
        panic!("not a check reply")
    };
    assert_eq!(reply.limiters.len(), MAX_LIMITERS);
    assert_eq!(reply.head(), head);
    // ERROR messages are cut at a character boundary rather than failing.
    let msg = "é".repeat(MAX_STRING_LEN);
    encode_error(&mut out, 1, ErrorCode::Internal, &msg);
    let d = decode_one_reply(&out[3..], V2);
    let Reply::Error(e) = d.reply else { panic!() };
    assert_eq!(e.message.len(), MAX_STRING_LEN);
    // Batch writer count mismatch removes the frame.
    let mut out = Vec::new();
    let w = BatchReplyWriter::new(&mut out, 1, 2, V2).expect("writer");
    assert_eq!(
        w.finish(),
        Err(EncodeError::BatchCountMismatch {
            declared: 2,
            written: 0
        })
    );
    assert!(out.is_empty());
}

#[test]
fn check_batch_writer_routes_checks_to_two_frames_and_refuses_bad_ones() {
    let labels = [(StrRef::Inline("user"), "u1")];
    let spec = |cp| CheckSpec {
        control_point: StrRef::Inline(cp),
        tokens: Some(1.0),
        wait_budget_ms: None,
        labels: &labels,
    };
    // Two writers open at once on two buffers (the loadgen routes each check to its shard's
    // connection as it draws it): each frame equals the one encode_check_batch makes.
    let (mut a, mut b) = (vec![0xAA], Vec::new());
    {
        let mut wa = CheckBatchWriter::new(&mut a, 7);
        let mut wb = CheckBatchWriter::new(&mut b, 7);
        wa.check(&spec("a1")).expect("a1");
        wb.check(&spec("b1")).expect("b1");
        wa.check(&spec("a2")).expect("a2");
        assert_eq!((wa.len(), wb.len()), (2, 1));
        // A check that does not encode leaves the frame as it was.
        let bad = CheckSpec {
            tokens: Some(f64::NAN),
            ..spec("bad")
        };
        assert_eq!(wa.check(&bad), Err(EncodeError::InvalidTokens));
        wa.finish().expect("finish a");
        wb.finish().expect("finish b");
    }
    let mut want_a = vec![0xAA];
    encode_check_batch(&mut want_a, 7, &[spec("a1"), spec("a2")]).expect("a");
    let mut want_b = Vec::new();
    encode_check_batch(&mut want_b, 7, &[spec("b1")]).expect("b");
    assert_eq!(a, want_a);
    assert_eq!(b, want_b);
    // The 1025th check is refused; the frame of MAX_BATCH still finishes and decodes.
    let mut out = Vec::new();
    let mut w = CheckBatchWriter::new(&mut out, 1);
    for _ in 0..MAX_BATCH {
        w.check(&spec("cp")).expect("within MAX_BATCH");
    }
    assert!(matches!(
        w.check(&spec("cp")),
        Err(EncodeError::TooManyItems { count: 1025, .. })
    ));
    w.finish().expect("finish");
    let Frame::CheckBatch(batch) = decode_one(&out).frame else {
        panic!("not a batch")
    };
    assert_eq!(batch.len(), MAX_BATCH);
    // Abandoned: nothing is left behind.
    let mut out = vec![1, 2];
    let mut w = CheckBatchWriter::new(&mut out, 1);
    w.check(&spec("cp")).expect("check");
    w.abandon();
    assert_eq!(out, vec![1, 2]);
}

#[test]
fn labels_resolve_through_intern_table() {
    let mut out = Vec::new();
    encode_intern(&mut out, 0, 3, "user").expect("intern");
    let labels = [
        (StrRef::Interned(3), "u1"),
        (StrRef::Inline("tenant"), "t1"),
    ];
    encode_check(
        &mut out,
        1,
        &CheckSpec {
            control_point: StrRef::Inline("api"),
            tokens: None,
            wait_budget_ms: None,
            labels: &labels,
        },
    )
    .expect("check");
    let mut table = InternTable::new();
    let d = decode_one(&out);
    let Frame::Intern { id, value } = d.frame else {
        panic!()
    };
    table.bind(id, value).expect("bind");
    let d2 = decode_one(&out[d.len..]);
    let Frame::Check(c) = d2.frame else { panic!() };
    let resolved: Vec<(&str, &str)> = c
        .labels()
        .filter_map(|(k, v)| Some((table.resolve(k)?, v)))
        .collect();
    assert_eq!(resolved, vec![("user", "u1"), ("tenant", "t1")]);
    let keys = vec!["user".to_string()];
    assert_eq!(
        routing::routing_value(&keys, resolved.iter().copied()),
        "u1"
    );
}

/// How the codec now answers inputs `cargo fuzz` found (the fuzz body replays them in
/// `fuzzing::tests::regressions`).
#[test]
fn fuzz_regressions() {
    // INTERN with id 0xFF00: decoded, then failed to re-encode. Now rejected as malformed.
    let crash: &[u8] = &[
        10, 0, 0, 0, 4, 0, 43, 0, 255, 3, 0, 255, 0, 0, 0, 0, 15, 160, 160, 160, 160, 160, 59, 160,
        63, 39, 0, 0, 42,
    ];
    let err = decode_frame(crash, DEFAULT_MAX_FRAME_LEN).expect_err("id out of range");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    assert_eq!(err.reason(), "interned id out of range");
}

fn body_frame(op: u8, body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 6) as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&[op, 0, 1, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

/// A count above the format's limit is `MALFORMED_FRAME` (the decoder refuses it before
/// reading an element); `BAD_REQUEST` is only for a count within the limit that the server
/// advertised lower (`HELLO_REPLY.max_batch`).
#[test]
fn counts_above_the_limits_are_malformed() {
    let body_error = |frame: &[u8]| match decode_frame(frame, DEFAULT_MAX_FRAME_LEN) {
        Err(e @ DecodeError::Body { .. }) => (e.code(), e.reason()),
        other => panic!("expected a body error, got {other:?}"),
    };
    // CHECK_BATCH of 1025 minimal checks.
    let mut body = 1025u16.to_le_bytes().to_vec();
    for _ in 0..1025 {
        body.extend_from_slice(&[0, 0, 0, 0, 0]);
    }
    assert_eq!(
        body_error(&body_frame(opcode::CHECK_BATCH, &body)),
        (ErrorCode::MalformedFrame, "element count exceeds its limit")
    );
    // 1024 of them decode.
    let mut body = 1024u16.to_le_bytes().to_vec();
    for _ in 0..1024 {
        body.extend_from_slice(&[0, 0, 0, 0, 0]);
    }
    let frame = body_frame(opcode::CHECK_BATCH, &body);
    let d = decode_one(&frame);
    assert!(matches!(d.frame, Frame::CheckBatch(b) if b.len() == 1024));
    // FLOW_END: 1025 ids, and a count the frame cannot hold.
    let mut body = 1025u16.to_le_bytes().to_vec();
    body.extend_from_slice(&[0u8; 1025 * 8]);
    assert_eq!(
        body_error(&body_frame(opcode::FLOW_END, &body)),
        (ErrorCode::MalformedFrame, "element count exceeds its limit")
    );
    let mut body = 3u16.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 16]);
    assert_eq!(
        body_error(&body_frame(opcode::FLOW_END, &body)),
        (
            ErrorCode::MalformedFrame,
            "element count larger than the frame can hold"
        )
    );
    // Trailing bytes after the ids.
    let mut body = 1u16.to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 9]);
    assert_eq!(
        body_error(&body_frame(opcode::FLOW_END, &body)),
        (ErrorCode::MalformedFrame, "trailing bytes after the body")
    );
    // The encoders refuse the same counts.
    let mut out = Vec::new();
    assert_eq!(
        encode_flow_end(&mut out, 1, &[0; MAX_FLOW_END + 1]),
        Err(EncodeError::TooManyItems {
            what: "FLOW_END",
            count: 1025,
            max: 1024
        })
    );
    assert!(out.is_empty());
}

#[test]
fn version_dependent_reply_values() {
    let reply_frame = |reason: u8, refusal: Option<u8>| {
        let mut body = vec![1, reason];
        body.extend_from_slice(&0u64.to_le_bytes());
        body.push(1);
        body.extend_from_slice(&[0, 0, 1, 0x93, 1]);
        body.extend_from_slice(&[0; 32]);
        if let Some(refusal) = refusal {
            body.extend_from_slice(&7u64.to_le_bytes());
            body.push(refusal);
        }
        body_frame(opcode::CHECK_REPLY, &body)
    };
    let reason = |frame: &[u8], version| match decode_reply(frame, DEFAULT_MAX_FRAME_LEN, version) {
        Err(DecodeError::Body { reason, .. }) => reason,
        other => panic!("expected a body error, got {other:?}"),
    };
    // NO_TOKENS (2) exists from version 2 on.
    assert_eq!(reason(&reply_frame(2, None), V1), "unknown reason");
    let d = decode_one_reply(&reply_frame(2, Some(2)), V2);
    let Reply::Check(r) = d.reply else { panic!() };
    assert_eq!(r.reason, DecisionReason::NoTokens);
    assert_eq!(r.refusal(), Some(Refusal::TimedOut));
    assert_eq!(r.flow_ids().collect::<Vec<_>>(), [7]);
    // A version-2 reply read as version 1 has trailing bytes; the reverse is truncated.
    assert_eq!(
        reason(&reply_frame(1, Some(0)), V1),
        "trailing bytes after the body"
    );
    assert_eq!(
        reason(&reply_frame(1, None), V2),
        "element count larger than the frame can hold"
    );
    // Refusals beyond 6 are unknown.
    assert_eq!(reason(&reply_frame(1, Some(7)), V2), "unknown refusal");
    // FLOW_END_REPLY statuses beyond 1 are unknown.
    let mut body = 1u16.to_le_bytes().to_vec();
    body.push(2);
    assert_eq!(
        reason(&body_frame(opcode::FLOW_END_REPLY, &body), V2),
        "unknown flow end status"
    );
    // A HELLO_REPLY names a version that exists.
    let mut hello = Vec::new();
    encode_hello_reply(
        &mut hello,
        1,
        &HelloReply {
            version: V1,
            node_id: String::new(),
            shard_count: 1,
            hash_algo: 1,
            shard_index: None,
            shard_ports: vec![],
            routing_label_keys: vec![],
            policy_names: vec![],
            max_frame_len: 1,
            max_batch: 1,
            max_in_flight: 1,
            control_point_routing: vec![],
        },
    )
    .expect("hello");
    hello[10] = 4; // one past the latest version
    assert_eq!(reason(&hello, V2), "unknown HELLO_REPLY version");
}

/// The HELLO api_key field is bounded: the encoder refuses a key over `MAX_API_KEY_LEN`, and
/// the decoder rejects one as `MALFORMED_FRAME` without losing the framing.
#[test]
fn hello_api_keys_are_bounded() {
    let longest = "k".repeat(MAX_API_KEY_LEN);
    let mut out = Vec::new();
    encode_hello_with_key(&mut out, 1, 2, "c", Some(&longest)).expect("longest key");
    let d = decode_frame(&out, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("whole");
    assert!(matches!(d.frame, Frame::Hello(h) if h.api_key == Some(longest.as_str())));

    let too_long = "k".repeat(MAX_API_KEY_LEN + 1);
    let mut out = Vec::new();
    assert_eq!(
        encode_hello_with_key(&mut out, 1, 2, "c", Some(&too_long)),
        Err(EncodeError::ApiKeyTooLong {
            len: MAX_API_KEY_LEN + 1
        })
    );
    assert!(out.is_empty(), "a failed encode leaves nothing behind");

    // Hand-built: version 2, name "c", a 257-byte key.
    let mut body = vec![2, 0, 1, 0, b'c'];
    body.extend_from_slice(&((MAX_API_KEY_LEN + 1) as u16).to_le_bytes());
    body.extend_from_slice(too_long.as_bytes());
    let mut frame = ((body.len() + 6) as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&[opcode::HELLO, 0, 5, 0, 0, 0]);
    frame.extend_from_slice(&body);
    match decode_frame(&frame, DEFAULT_MAX_FRAME_LEN) {
        Err(DecodeError::Body {
            code,
            request_id,
            frame_len,
            ..
        }) => {
            assert_eq!(code, ErrorCode::MalformedFrame);
            assert_eq!(request_id, 5);
            assert_eq!(frame_len, frame.len());
        }
        other => panic!("expected MALFORMED_FRAME, got {other:?}"),
    }
    // A HELLO without the field is a HELLO without a key; the Debug of one never shows it.
    let mut out = Vec::new();
    encode_hello_with_key(&mut out, 1, 2, "c", Some("sesame")).expect("key");
    let d = decode_frame(&out, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("whole");
    assert!(!format!("{:?}", d.frame).contains("sesame"));
}
