//! The gRPC port's bounds: a `Check` outside the binary protocol's label and size bounds is a
//! REJECTED decision with a reason (not an RPC error), and the port's connection cap and
//! handshake timeout close connections, seen through real sockets.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{start_local, POLICY_YAML};
use tollgate_grpc::flowcontrol::MAX_GLOBAL_KEYS_PER_CALL;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1 as pb;
use tollgate_grpc::proto::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use tollgate_grpc::proto::envoy::service::ratelimit::v3 as rls;
use tollgate_grpc::reject_header::REJECT_REASON_HEADER;
use tollgate_grpc::request_bounds::{MAX_LABELS, MAX_STRING_BYTES};

/// How long a test waits for the server to close a socket (bounds a hang only).
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

fn check_req(labels: Vec<(String, String)>) -> pb::CheckRequest {
    pb::CheckRequest {
        control_point: "checkout".into(),
        labels: labels.into_iter().collect(),
        expect_end: true,
        ..Default::default()
    }
}

fn user(labels: &mut Vec<(String, String)>, name: &str) {
    labels.push(("user".into(), name.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_outside_the_bounds_are_rejected_with_a_reason() {
    let srv = start_local(POLICY_YAML, None);
    let mut c = srv.fcs().await;
    let rejected = pb::check_response::DecisionType::Rejected as i32;

    // At the bounds: accepted, and takes a token.
    let mut at_bounds: Vec<(String, String)> = (1..MAX_LABELS)
        .map(|i| (format!("{i:0>4096}"), "v".repeat(MAX_STRING_BYTES)))
        .collect();
    user(&mut at_bounds, "ann");
    let resp = c.check(check_req(at_bounds)).await.unwrap().into_inner();
    assert_eq!(
        resp.decision_type, 0,
        "64 labels of 4 KiB are within the bounds"
    );

    let mut too_many: Vec<(String, String)> = (0..MAX_LABELS)
        .map(|i| (format!("k{i}"), "v".into()))
        .collect();
    user(&mut too_many, "ann");
    let mut long_key = vec![("k".repeat(MAX_STRING_BYTES + 1), "v".into())];
    user(&mut long_key, "ann");
    let mut long_value = vec![("note".into(), "v".repeat(MAX_STRING_BYTES + 1))];
    user(&mut long_value, "ann");
    let mut too_large = check_req(vec![("user".into(), "ann".into())]);
    too_large.cache_lookup_request = Some(pb::CacheLookupRequest {
        global_cache_keys: vec!["g".repeat(4000); 300],
        ..Default::default()
    });
    let mut long_cp = check_req(vec![("user".into(), "ann".into())]);
    long_cp.control_point = "c".repeat(MAX_STRING_BYTES + 1);
    // Small, but more keys than a cache call may look up: refused before the decision, not
    // with an RPC error after tokens were taken.
    let mut many_cache_keys = check_req(vec![("user".into(), "ann".into())]);
    many_cache_keys.cache_lookup_request = Some(pb::CacheLookupRequest {
        global_cache_keys: vec!["g".into(); MAX_GLOBAL_KEYS_PER_CALL + 1],
        ..Default::default()
    });
    let cases = [
        (
            check_req(too_many),
            "the flow has 65 labels; at most 64 are accepted",
        ),
        (
            check_req(long_key),
            "label key \"kkkk", // quoted start, then the length
        ),
        (
            check_req(long_value),
            "the value of label \"note\" is 4097 bytes; at most 4096 are accepted",
        ),
        (too_large, "at most 1048576 are accepted"),
        (long_cp, "the control point is 4097 bytes"),
        (
            many_cache_keys,
            "cache_lookup_request.global_cache_keys lists 1025 keys; at most 1024 are accepted",
        ),
    ];
    for (req, reason) in cases {
        let answer = c
            .check(req)
            .await
            .unwrap_or_else(|e| panic!("{reason}: an RPC error lets SDKs run the flow: {e}"));
        let header = answer
            .metadata()
            .get(REJECT_REASON_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let resp = answer.into_inner();
        assert_eq!(resp.decision_type, rejected, "{reason}: {resp:?}");
        assert_eq!(
            resp.reject_reason,
            pb::check_response::RejectReason::None as i32
        );
        assert_eq!(
            resp.denied_response_status_code,
            pb::StatusCode::BadRequest as i32
        );
        assert!(resp.limiter_decisions.is_empty(), "{resp:?}");
        assert!(resp.telemetry_flow_labels.is_empty(), "labels not echoed");
        assert!(header.contains(reason), "{header:?} should say {reason:?}");
    }

    // Nothing was taken by the rejected requests: ann has 4 of her 5 tokens left.
    for i in 0..4 {
        let resp = c
            .check(check_req(vec![("user".into(), "ann".into())]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.decision_type, 0, "token {i}");
    }
    let resp = c
        .check(check_req(vec![("user".into(), "ann".into())]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.decision_type, rejected, "the sixth is rate limited");
}

/// An Envoy descriptor outside the label bounds is OVER_LIMIT with its reason; the others in
/// the request are decided as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_descriptors_outside_the_bounds_are_over_limit() {
    let srv = start_local(POLICY_YAML, None);
    let mut c = rls::rate_limit_service_client::RateLimitServiceClient::new(srv.channel().await);
    let entry = |key: String, value: &str| Entry {
        key,
        value: value.into(),
    };
    let mut wide: Vec<Entry> = (0..MAX_LABELS)
        .map(|i| entry(format!("k{i}"), "v"))
        .collect();
    wide.push(entry("user".into(), "dee"));
    let descriptors = vec![
        RateLimitDescriptor {
            entries: wide,
            limit: None,
        },
        RateLimitDescriptor {
            entries: vec![entry("user".into(), &"x".repeat(MAX_STRING_BYTES + 1))],
            limit: None,
        },
        RateLimitDescriptor {
            entries: vec![entry("user".into(), "dee")],
            limit: None,
        },
    ];
    let answer = c
        .should_rate_limit(rls::RateLimitRequest {
            domain: "checkout".into(),
            descriptors,
            hits_addend: 1,
        })
        .await
        .expect("an answer, not an RPC error");
    let header = answer
        .metadata()
        .get(REJECT_REASON_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let r = answer.into_inner();
    let (ok, over) = (
        rls::rate_limit_response::Code::Ok as i32,
        rls::rate_limit_response::Code::OverLimit as i32,
    );
    let codes: Vec<i32> = r.statuses.iter().map(|s| s.code).collect();
    assert_eq!(codes, [over, over, ok], "{r:?}");
    assert_eq!(r.overall_code, over);
    assert_eq!(
        r.statuses[2].limit_remaining, 4,
        "only the valid one took a token"
    );
    assert!(
        header.contains("descriptor 0: the flow has 65 labels")
            && header.contains("descriptor 1: the value of label \"user\" is 4097 bytes"),
        "{header}"
    );
}

/// Reads `s` until the server closes it (end of stream or reset) or [`CLOSE_WITHIN`] passes;
/// true if it closed. Bytes the server sends first (its HTTP/2 SETTINGS) are skipped.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let deadline = Instant::now() + CLOSE_WITHIN;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}

/// True if `s` is still open: reading what the server sent so far ends in "would block",
/// not end of stream.
fn still_open(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    let open = loop {
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
            Err(_) => break false,
        }
    };
    s.set_nonblocking(false).unwrap();
    open
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what a client sends first.
const H2_OPENING: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let yaml = POLICY_YAML.replace(
        "shards: 2 }",
        "shards: 2, grpc_connections: { handshake_timeout: 300ms } }",
    );
    let srv = start_local(&yaml, None);
    let addr = srv.handle.local_addr();
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(H2_OPENING).unwrap();
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.write_all(&H2_OPENING[..10]).unwrap();
    let mut silent = TcpStream::connect(addr).unwrap();

    let closed = tokio::task::spawn_blocking(move || {
        let silent_closed = closed_by_server(&mut silent);
        let partial_closed = closed_by_server(&mut partial);
        (silent_closed, partial_closed, still_open(&mut client))
    })
    .await
    .unwrap();
    assert_eq!(
        closed,
        (true, true, true),
        "(silent closed, 10 bytes closed, full preface still open)"
    );
    // The port still serves.
    let mut c = srv.fcs().await;
    let resp = c
        .check(check_req(vec![("user".into(), "bo".into())]))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().decision_type, 0);
}

/// The start of a TLS ClientHello: a handshake record announcing 512 bytes, of which 25
/// follow (past the 24 opening bytes the connection cap's timer waits for).
const TLS_HELLO_START: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // record: handshake, TLS 1.0 framing, 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // TLS 1.2
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // random, cut short
];

/// With TLS, a client that starts its handshake and stalls is closed when the handshake
/// timeout has passed, like one that sends nothing; a client that completes it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_is_closed_after_the_handshake_timeout() {
    let dir = std::env::temp_dir().join(format!("tollgate-grpc-tls-stall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let yaml = POLICY_YAML.replace(
        "shards: 2 }",
        &format!(
            "shards: 2, grpc_connections: {{ handshake_timeout: 300ms }}, tls: {{ cert: {}, key: {} }} }}",
            cert.display(),
            key.display()
        ),
    );
    let srv = start_local(&yaml, None);
    let addr = srv.handle.local_addr();
    assert!(TLS_HELLO_START.len() > 24);
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.write_all(TLS_HELLO_START).unwrap();
    let started = Instant::now();
    let closed = tokio::task::spawn_blocking(move || closed_by_server(&mut stalled))
        .await
        .unwrap();
    assert!(
        closed,
        "a stalled TLS handshake still open after {CLOSE_WITHIN:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout"
    );

    // A client that completes its handshake is served.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(made.cert.pem()))
        .domain_name("localhost");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut c = pb::flow_control_service_client::FlowControlServiceClient::new(channel);
    let resp = c
        .check(check_req(vec![("user".into(), "tls".into())]))
        .await
        .unwrap();
    assert_eq!(resp.into_inner().decision_type, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed() {
    let yaml = POLICY_YAML.replace(
        "shards: 2 }",
        "shards: 2, grpc_connections: { max_connections: 2, handshake_timeout: 60s } }",
    );
    let srv = start_local(&yaml, None);
    let addr = srv.handle.local_addr();
    let mut first = TcpStream::connect(addr).unwrap();
    first.write_all(H2_OPENING).unwrap();
    let mut second = TcpStream::connect(addr).unwrap();
    second.write_all(H2_OPENING).unwrap();
    let (first, second, third_closed) = tokio::task::spawn_blocking(move || {
        // Each accepted connection gets the server's SETTINGS: both hold a slot now.
        let mut buf = [0u8; 9];
        for s in [&mut first, &mut second] {
            s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
            s.read_exact(&mut buf).unwrap();
        }
        let mut third = TcpStream::connect(addr).unwrap();
        let closed = closed_by_server(&mut third);
        (first, second, closed)
    })
    .await
    .unwrap();
    assert!(third_closed, "the third connection is beyond the cap of 2");

    // A slot frees when a connection closes: a client gets in (polled: the server sees the
    // close asynchronously).
    drop(first);
    let deadline = Instant::now() + CLOSE_WITHIN;
    let served = loop {
        let attempt = async {
            let channel = tonic::transport::Endpoint::from_shared(srv.url())
                .unwrap()
                .connect()
                .await
                .ok()?;
            let mut c = pb::flow_control_service_client::FlowControlServiceClient::new(channel);
            c.check(check_req(vec![("user".into(), "cy".into())]))
                .await
                .ok()
        };
        if let Some(resp) = attempt.await {
            break Some(resp.into_inner());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(served.map(|r| r.decision_type), Some(0));
    drop(second);
}
