//! Golden frames: exact bytes for representative frames. The same hex strings are printed in
//! `docs/protocol.md` ("Golden frames"); this test fails if the doc and the codec drift apart.

use tollgate_protocol::*;

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
            client_name: "rust"
        })
    );
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
            labels: &labels,
        },
    )
    .expect("encode");
    golden("CHECK inline", out, GOLDEN_CHECK_INLINE);
}

#[test]
fn check_interned() {
    let mut out = Vec::new();
    encode_intern(&mut out, 0, 0, "user").expect("intern");
    encode_intern(&mut out, 0, 1, "api").expect("intern");
    golden("INTERN x2", out, GOLDEN_INTERNS);
    let mut out = Vec::new();
    let labels = [(StrRef::Interned(0), "u1")];
    encode_check(
        &mut out,
        3,
        &CheckSpec {
            control_point: StrRef::Interned(1),
            tokens: Some(2.0),
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
        }]
        .into_iter()
        .collect(),
    };
    let mut out = Vec::new();
    encode_check_reply(&mut out, 2, &reply).expect("encode");
    let b = golden("CHECK_REPLY", out, GOLDEN_CHECK_REPLY);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN)
        .expect("ok")
        .expect("complete");
    assert_eq!(d.reply, Reply::Check(reply));
}

#[test]
fn hello_reply() {
    let hello = HelloReply {
        version: 1,
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
    };
    let mut out = Vec::new();
    encode_hello_reply(&mut out, 1, &hello).expect("encode");
    let b = golden("HELLO_REPLY", out, GOLDEN_HELLO_REPLY);
    let d = decode_reply(&b, DEFAULT_MAX_FRAME_LEN)
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
const GOLDEN_INTERNS: &str = "0e 00 00 00 04 00 00 00 00 00 00 00 04 00 75 73 65 72 0d 00 00 00 04 00 00 00 00 00 01 00 03 00 61 70 69";
const GOLDEN_CHECK_INTERNED: &str =
    "19 00 00 00 02 00 03 00 00 00 01 01 80 00 00 00 00 00 00 00 40 01 00 00 80 02 00 75 31";
const GOLDEN_CHECK_REPLY: &str = "36 00 00 00 82 00 02 00 00 00 01 01 80 b2 e6 0e 00 00 00 00 01 00 00 01 ad 01 00 00 00 00 00 00 f0 3f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 e0 3f 80 b2 e6 0e 00 00 00 00";
const GOLDEN_HELLO_REPLY: &str = "35 00 00 00 81 00 01 00 00 00 01 00 02 00 6e 31 02 00 01 ff ff 02 00 59 1b 5a 1b 01 00 04 00 75 73 65 72 01 00 08 00 70 65 72 2d 75 73 65 72 00 00 10 00 00 04 00 04 00 00";
const GOLDEN_ERROR: &str = "0e 00 00 00 ff 00 03 00 00 00 05 00 04 00 69 64 20 37";
