//! Golden frames: exact bytes for representative frames. The same hex strings are printed in
//! `docs/protocol.md` ("Golden frames"); this test fails if the doc and the codec drift apart.
//! The version-1 frames are those of the version-1 spec, unchanged: version-1 clients keep
//! working byte for byte.

use std::num::NonZeroU64;

use tollgate_protocol::*;

const V1: ProtocolVersion = ProtocolVersion::V1;
const V2: ProtocolVersion = ProtocolVersion::V2;

const DOC: &str = include_str!("../../docs/protocol.md");

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts `bytes` encode to `want` (space-separated hex), that the doc contains `want`
/// verbatim, and returns the bytes for further checks.
fn golden(name: &str, bytes: Vec<u8>, want: &str) -> Vec<u8> {
    assert_eq!(hex(&bytes), want, "{name}: encoding changed");
    assert!(
        DOC.contains(want),
        "{name}: docs/protocol.md lacks the golden hex {want}"
    );
    bytes
}

#[test]
fn hello() {
    let mut out = Vec::new();
    encode_hello(&mut out, 1, 1, "rust").expect("encode");
    let b = golden("HELLO", out, GOLDEN_HELLO);
    let d = decode_frame(&b, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("complete");
    assert_eq!(
        d.frame,
        Frame::Hello(HelloRef {
            version: 1,
            client_name: "rust",
            api_key: None,
        })
    );
}

#[test]
fn hello_with_api_key() {
    let mut out = Vec::new();
    encode_hello_with_key(&mut out, 1, 2, "rust", Some("sesame")).expect("encode");
    let b = golden("HELLO with key", out, GOLDEN_HELLO_WITH_KEY);
    let d = decode_frame(&b, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("complete");
    assert_eq!(
        d.frame,
        Frame::Hello(HelloRef {
            version: 2,
            client_name: "rust",
            api_key: Some("sesame"),
        })
    );
}

#[test]
fn error_unauthenticated() {
    let mut out = Vec::new();
    encode_error(&mut out, 2, ErrorCode::Unauthenticated, "invalid API key");
    let b = golden("ERROR UNAUTHENTICATED", out, GOLDEN_ERROR_UNAUTHENTICATED);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V2)
        .expect("ok")
        .expect("complete");
    assert_eq!(
        d.reply,
        Reply::Error(ErrorReply {
            code: ErrorCode::Unauthenticated,
            message: "invalid API key".into(),
        })
    );
    assert_eq!(ErrorCode::Unauthenticated.as_u16(), 10);
    assert!(ErrorCode::Unauthenticated.closes_connection());
}

#[test]
fn check_inline() {
    let mut out = Vec::new();
    let labels = [(StrRef::Inline("user"), "u1")];
    encode_check(
        &mut out,
        2,
        &CheckSpec {
            control_point: StrRef::Inline("api"),
            tokens: None,
            wait_budget_ms: None,
            labels: &labels,
        },
    )
    .expect("encode");
    golden("CHECK inline", out, GOLDEN_CHECK_INLINE);
}

#[test]
fn check_interned() {
    let mut out = Vec::new();
    encode_intern(&mut out, 3, 0, "user").expect("intern");
    encode_intern(&mut out, 3, 1, "api").expect("intern");
    golden("INTERN x2", out, GOLDEN_INTERNS);
    let mut out = Vec::new();
    let labels = [(StrRef::Interned(0), "u1")];
    encode_check(
        &mut out,
        3,
        &CheckSpec {
            control_point: StrRef::Interned(1),
            tokens: Some(2.0),
            wait_budget_ms: None,
            labels: &labels,
        },
    )
    .expect("encode");
    golden("CHECK interned", out, GOLDEN_CHECK_INTERNED);
}

#[test]
fn check_reply() {
    let reply = CheckReply {
        decision: Decision::Rejected,
        reason: DecisionReason::RateLimited,
        wait_ns: 250_000_000,
        limiters: [LimiterResult {
            limiter_index: 0,
            outcome: LimiterOutcome::Rejected,
            status_code: 429,
            tokens: 1.0,
            remaining: 0.0,
            current: 0.5,
            wait_ns: 250_000_000,
            flow_id: None,
            refusal: None,
        }]
        .into_iter()
        .collect(),
    };
    let mut out = Vec::new();
    encode_check_reply(&mut out, 2, &reply, V1).expect("encode");
    let b = golden("CHECK_REPLY", out, GOLDEN_CHECK_REPLY);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V1)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Check(reply));
}

#[test]
fn hello_v2() {
    let mut out = Vec::new();
    encode_hello(&mut out, 1, 2, "rust").expect("encode");
    golden("HELLO v2", out, GOLDEN_HELLO_V2);
}

#[test]
fn check_with_wait_budget() {
    let mut out = Vec::new();
    let labels = [(StrRef::Inline("tenant"), "t1")];
    encode_check(
        &mut out,
        4,
        &CheckSpec {
            control_point: StrRef::Inline("db"),
            tokens: None,
            wait_budget_ms: Some(2000),
            labels: &labels,
        },
    )
    .expect("encode");
    let b = golden("CHECK with wait budget", out, GOLDEN_CHECK_WAIT);
    let d = decode_frame(&b, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("complete");
    let Frame::Check(c) = d.frame else {
        panic!("not a check")
    };
    assert_eq!(c.wait_budget_ms(), Some(2000));
    assert_eq!(c.tokens(), None);
}

/// The flow id of sequence 7 on shard 1: the shard in the top 12 bits.
const FLOW_1_7: u64 = (1 << 52) | 7;

fn concurrency_accepted() -> CheckReply {
    CheckReply {
        decision: Decision::Accepted,
        reason: DecisionReason::None,
        wait_ns: 0,
        limiters: [LimiterResult {
            limiter_index: 1,
            outcome: LimiterOutcome::Accepted,
            status_code: 429,
            tokens: 1.0,
            remaining: 19.0,
            current: 20.0,
            wait_ns: 0,
            flow_id: NonZeroU64::new(FLOW_1_7),
            refusal: None,
        }]
        .into_iter()
        .collect(),
    }
}

fn scheduler_timed_out() -> CheckReply {
    CheckReply {
        decision: Decision::Rejected,
        reason: DecisionReason::NoTokens,
        wait_ns: 1_000_000_000,
        limiters: [LimiterResult {
            limiter_index: 0,
            outcome: LimiterOutcome::Rejected,
            status_code: 503,
            tokens: 1.0,
            remaining: 0.0,
            current: 0.0,
            wait_ns: 1_000_000_000,
            flow_id: None,
            refusal: Some(Refusal::TimedOut),
        }]
        .into_iter()
        .collect(),
    }
}

#[test]
fn check_reply_v2() {
    let reply = concurrency_accepted();
    let mut out = Vec::new();
    encode_check_reply(&mut out, 4, &reply, V2).expect("encode");
    let b = golden("CHECK_REPLY v2 flow", out, GOLDEN_CHECK_REPLY_V2_FLOW);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V2)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Check(reply));

    let reply = scheduler_timed_out();
    let mut out = Vec::new();
    encode_check_reply(&mut out, 5, &reply, V2).expect("encode");
    let b = golden(
        "CHECK_REPLY v2 no_tokens",
        out,
        GOLDEN_CHECK_REPLY_V2_NO_TOKENS,
    );
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V2)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Check(reply.clone()));
    // The same decision on a version-1 connection: RATE_LIMITED, no flow id, no refusal.
    let mut out = Vec::new();
    encode_check_reply(&mut out, 5, &reply, V1).expect("encode");
    golden(
        "CHECK_REPLY v1 of no_tokens",
        out,
        GOLDEN_CHECK_REPLY_V1_NO_TOKENS,
    );
}

#[test]
fn batch_reply_v2() {
    let items = [
        BatchItem::Reply(concurrency_accepted()),
        BatchItem::Error(ErrorReply {
            code: ErrorCode::BadRequest,
            message: "x".into(),
        }),
    ];
    let mut out = Vec::new();
    encode_batch_reply(&mut out, 6, &items, V2).expect("encode");
    let b = golden("BATCH_REPLY v2", out, GOLDEN_BATCH_REPLY_V2);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V2)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Batch(items.to_vec()));
}

#[test]
fn flow_end() {
    let mut out = Vec::new();
    encode_flow_end(&mut out, 7, &[FLOW_1_7, 42]).expect("encode");
    let b = golden("FLOW_END", out, GOLDEN_FLOW_END);
    let d = decode_frame(&b, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("complete");
    let Frame::FlowEnd(ids) = d.frame else {
        panic!("not a FLOW_END")
    };
    assert_eq!(ids.iter().collect::<Vec<_>>(), [FLOW_1_7, 42]);
    assert_eq!(routing::shard_of_flow(FLOW_1_7), 1);

    let statuses = [FlowEndStatus::Ended, FlowEndStatus::Unknown];
    let mut out = Vec::new();
    encode_flow_end_reply(&mut out, 7, &statuses).expect("encode");
    let b = golden("FLOW_END_REPLY", out, GOLDEN_FLOW_END_REPLY);
    for version in [V1, V2] {
        let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, version)
            .expect("ok")
            .expect("complete");
        assert_eq!(d.reply, Reply::FlowEnd(statuses.to_vec()));
    }
}

#[test]
fn hello_reply_v2() {
    let hello = HelloReply {
        version: V2,
        control_point_routing: vec![ControlPointRouting {
            control_point: "api".into(),
            routing_label_keys: vec!["user".into()],
        }],
        ..hello_reply_v1()
    };
    let mut out = Vec::new();
    encode_hello_reply(&mut out, 1, &hello).expect("encode");
    let b = golden("HELLO_REPLY v2", out, GOLDEN_HELLO_REPLY_V2);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V1)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Hello(hello));
}

fn hello_reply_v1() -> HelloReply {
    HelloReply {
        version: V1,
        node_id: "n1".into(),
        shard_count: 2,
        hash_algo: routing::HASH_FNV1A_64,
        shard_index: None,
        shard_ports: vec![7001, 7002],
        routing_label_keys: vec!["user".into()],
        policy_names: vec!["per-user".into()],
        max_frame_len: DEFAULT_MAX_FRAME_LEN,
        max_batch: MAX_BATCH as u16,
        max_in_flight: 1024,
        control_point_routing: vec![],
    }
}

#[test]
fn hello_reply() {
    let hello = hello_reply_v1();
    let mut out = Vec::new();
    encode_hello_reply(&mut out, 1, &hello).expect("encode");
    let b = golden("HELLO_REPLY", out, GOLDEN_HELLO_REPLY);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, V1)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Hello(hello));
}

#[test]
fn error() {
    let mut out = Vec::new();
    encode_error(&mut out, 3, ErrorCode::UnknownInternedId, "id 7");
    golden("ERROR", out, GOLDEN_ERROR);
}

const GOLDEN_HELLO: &str = "0e 00 00 00 01 00 01 00 00 00 01 00 04 00 72 75 73 74";
const GOLDEN_CHECK_INLINE: &str =
    "18 00 00 00 02 00 02 00 00 00 00 03 00 61 70 69 01 00 04 00 75 73 65 72 02 00 75 31";
const GOLDEN_INTERNS: &str = "0e 00 00 00 04 00 03 00 00 00 00 00 04 00 75 73 65 72 0d 00 00 00 04 00 03 00 00 00 01 00 03 00 61 70 69";
const GOLDEN_CHECK_INTERNED: &str =
    "19 00 00 00 02 00 03 00 00 00 01 01 80 00 00 00 00 00 00 00 40 01 00 00 80 02 00 75 31";
const GOLDEN_CHECK_REPLY: &str = "36 00 00 00 82 00 02 00 00 00 01 01 80 b2 e6 0e 00 00 00 00 01 00 00 01 ad 01 00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 e0 3f 80 b2 e6 0e 00 00 00 00";
const GOLDEN_HELLO_REPLY: &str = "35 00 00 00 81 00 01 00 00 00 01 00 02 00 6e 31 02 00 01 ff ff 02 00 59 1b 5a 1b 01 00 04 00 75 73 65 72 01 00 08 00 70 65 72 2d 75 73 65 72 00 00 10 00 00 04 00 04 00 00";
const GOLDEN_ERROR: &str = "0e 00 00 00 ff 00 03 00 00 00 05 00 04 00 69 64 20 37";
const GOLDEN_HELLO_V2: &str = "0e 00 00 00 01 00 01 00 00 00 02 00 04 00 72 75 73 74";
const GOLDEN_CHECK_WAIT: &str = "1d 00 00 00 02 00 04 00 00 00 02 02 00 64 62 d0 07 00 00 01 00 06 00 74 65 6e 61 6e 74 02 00 74 31";
const GOLDEN_CHECK_REPLY_V2_FLOW: &str = "3f 00 00 00 82 00 04 00 00 00 00 00 00 00 00 00 00 00 00 00 01 01 00 00 ad 01 00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 33 40 00 00 00 00 00 00 34 40 00 00 00 00 00 00 00 00 07 00 00 00 00 00 10 00 00";
const GOLDEN_CHECK_REPLY_V2_NO_TOKENS: &str = "3f 00 00 00 82 00 05 00 00 00 01 02 00 ca 9a 3b 00 00 00 00 01 00 00 01 f7 01 00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ca 9a 3b 00 00 00 00 00 00 00 00 00 00 00 00 02";
const GOLDEN_CHECK_REPLY_V1_NO_TOKENS: &str = "36 00 00 00 82 00 05 00 00 00 01 01 00 ca 9a 3b 00 00 00 00 01 00 00 01 f7 01 00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 ca 9a 3b 00 00 00 00";
const GOLDEN_BATCH_REPLY_V2: &str = "48 00 00 00 83 00 06 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00 01 01 00 00 ad 01 00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 33 40 00 00 00 00 00 00 34 40 00 00 00 00 00 00 00 00 07 00 00 00 00 00 10 00 00 01 06 00 01 00 78";
const GOLDEN_FLOW_END: &str =
    "18 00 00 00 07 00 07 00 00 00 02 00 07 00 00 00 00 00 10 00 2a 00 00 00 00 00 00 00";
const GOLDEN_FLOW_END_REPLY: &str = "0a 00 00 00 87 00 07 00 00 00 02 00 00 01";
const GOLDEN_HELLO_REPLY_V2: &str = "44 00 00 00 81 00 01 00 00 00 02 00 02 00 6e 31 02 00 01 ff ff 02 00 59 1b 5a 1b 01 00 04 00 75 73 65 72 01 00 08 00 70 65 72 2d 75 73 65 72 00 00 10 00 00 04 00 04 00 00 01 00 03 00 61 70 69 01 00 04 00 75 73 65 72";
const GOLDEN_HELLO_WITH_KEY: &str =
    "16 00 00 00 01 00 01 00 00 00 02 00 04 00 72 75 73 74 06 00 73 65 73 61 6d 65";
const GOLDEN_ERROR_UNAUTHENTICATED: &str =
    "19 00 00 00 ff 00 02 00 00 00 0a 00 0f 00 69 6e 76 61 6c 69 64 20 41 50 49 20 6b 65 79";

/// Two members: `n1` alive, heard from just now, policy digest `0x0123456789abcdef`; `n2`
/// suspect, heard from 1.5 s ago, digest unknown.
fn members() -> Vec<Member> {
    vec![
        Member {
            node_id: "n1".into(),
            address: "10.0.0.1:7946".into(),
            state: MemberState::Alive,
            last_contact_ms: 0,
            policy_digest: Some(0x0123_4567_89ab_cdef),
        },
        Member {
            node_id: "n2".into(),
            address: "10.0.0.2:7946".into(),
            state: MemberState::Suspect,
            last_contact_ms: 1500,
            policy_digest: None,
        },
    ]
}

#[test]
fn members_reply_v3() {
    let mut out = Vec::new();
    encode_members_reply(&mut out, 8, &members(), ProtocolVersion::V3).expect("encode");
    let b = golden("MEMBERS_REPLY v3", out, GOLDEN_MEMBERS_REPLY_V3);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, ProtocolVersion::V3)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Members(members()));
}

/// Versions 1 and 2 have no digests: the same members, byte for byte as before version 3.
#[test]
fn members_reply_v1_and_v2() {
    let without_digests: Vec<Member> = members()
        .into_iter()
        .map(|m| Member {
            policy_digest: None,
            ..m
        })
        .collect();
    for version in [V1, V2] {
        let mut out = Vec::new();
        encode_members_reply(&mut out, 8, &members(), version).expect("encode");
        let b = golden("MEMBERS_REPLY", out, GOLDEN_MEMBERS_REPLY);
        let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN, version)
            .expect("ok")
            .expect("complete");
        assert_eq!(d.reply, Reply::Members(without_digests.clone()));
    }
}

const GOLDEN_MEMBERS_REPLY: &str = "40 00 00 00 85 00 08 00 00 00 02 00 02 00 6e 31 0d 00 31 30 2e 30 2e 30 2e 31 3a 37 39 34 36 00 00 00 00 00 00 00 00 00 02 00 6e 32 0d 00 31 30 2e 30 2e 30 2e 32 3a 37 39 34 36 01 dc 05 00 00 00 00 00 00";
const GOLDEN_MEMBERS_REPLY_V3: &str = "52 00 00 00 85 00 08 00 00 00 02 00 02 00 6e 31 0d 00 31 30 2e 30 2e 30 2e 31 3a 37 39 34 36 00 00 00 00 00 00 00 00 00 01 ef cd ab 89 67 45 23 01 02 00 6e 32 0d 00 31 30 2e 30 2e 30 2e 32 3a 37 39 34 36 01 dc 05 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";
