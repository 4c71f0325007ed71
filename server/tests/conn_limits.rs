#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Connection bounds against the real binary: a large frame still arrives whole through the
//! growing read buffer, `server.idle_timeout` closes a silent or trickling connection but
//! not one with a request pending, and `server.max_connections_per_peer` /
//! `server.max_connections` refuse with an `ERROR OVERLOADED` frame, then close.
//!
//! Nothing is ordered by sleeping: closes are awaited as end of stream (with a read timeout
//! far above the idle timeout), freed slots are polled for with a deadline.

mod common;

use common::{metric_sum, start_server};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tollgate_protocol::{
    decode_reply, encode_check, encode_ping, CheckSpec, ErrorCode, ProtocolVersion, Reply, StrRef,
};

/// Bounds a hang only.
const HANG: Duration = Duration::from_secs(30);

fn config(server_extra: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: off, shards: 1{server_extra} }}
policies:
  - policy_name: tokens
    quota_scheduler:
      bucket_capacity: 1
      fill_amount: 1
      rate_limiter: {{ interval: 3s, limit_by_label_key: api_key }}
      scheduler: {{ decision_deadline_margin: 100ms }}
      selectors: [ {{ control_point: llm }} ]
"#
    )
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    s
}

/// Reads one reply; None when the server closed the connection first.
fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u32, Reply)> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(d) = decode_reply(buf, 2 << 20, ProtocolVersion::V1).unwrap() {
            buf.drain(..d.len);
            return Some((d.request_id, d.reply));
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn ping(s: &mut TcpStream, id: u32, payload: &[u8]) -> Option<Vec<u8>> {
    let mut frame = Vec::new();
    encode_ping(&mut frame, id, payload).unwrap();
    s.write_all(&frame).ok()?;
    match read_reply(s, &mut Vec::new())? {
        (got, Reply::Pong(p)) if got == id => Some(p),
        other => panic!("expected PONG {id}, got {other:?}"),
    }
}

/// Waits for the server to close `s` (end of stream); panics if it stays open for `HANG`.
fn closed_by_server(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let mut chunk = [0u8; 64];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return started.elapsed(),
            Err(e) => panic!("not closed within {HANG:?}: {e}"),
        }
    }
}

#[test]
fn a_frame_of_almost_max_frame_len_sent_in_pieces_is_answered_whole() {
    let server = start_server(&config(""));
    let mut s = connect(server.listen);
    // Default max_frame_len is 1 MiB; the frame is its 6-byte header plus the payload.
    let payload: Vec<u8> = (0..(1 << 20) - 6).map(|i| (i % 253) as u8).collect();
    let mut frame = Vec::new();
    encode_ping(&mut frame, 3, &payload).unwrap();
    for piece in frame.chunks(4096) {
        s.write_all(piece).unwrap();
    }
    match read_reply(&mut s, &mut Vec::new()) {
        Some((3, Reply::Pong(p))) => assert!(p == payload, "payload changed in transit"),
        other => panic!("expected PONG 3, got {other:?}"),
    }
    // The connection goes on with small frames.
    assert_eq!(ping(&mut s, 4, b"small").as_deref(), Some(&b"small"[..]));
}

#[test]
fn an_idle_or_trickling_connection_is_closed_but_a_waiting_one_is_not() {
    let server = start_server(&config(", idle_timeout: 1s"));

    let mut silent = connect(server.listen);
    assert!(ping(&mut silent, 1, b"hi").is_some(), "served at first");
    let took = closed_by_server(&mut silent);
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );

    // Bytes that never complete a frame do not keep a connection open: a PING frame whose
    // 20-byte payload arrives one byte per 100 ms would take 2.6 s, over the 1 s idle time.
    let mut trickle = connect(server.listen);
    let mut frame = Vec::new();
    encode_ping(&mut frame, 2, &[7u8; 20]).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in &frame[..frame.len() - 1] {
        if trickle.write_all(std::slice::from_ref(byte)).is_err() {
            closed = true;
            break;
        }
        trickle
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut one = [0u8; 1];
        match trickle.read(&mut one) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("no reply expected to a partial frame"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => {} // read timed out: nothing yet, send the next byte
        }
        assert!(started.elapsed() < HANG);
    }
    assert!(closed, "a trickling connection outlived its idle timeout");
    // Both closes are counted (polled: the count lands just after the socket is shut).
    let deadline = Instant::now() + HANG;
    let idle_closes = || metric_sum(&server, "tollgate_binary_idle_closes_total");
    while idle_closes() < 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(idle_closes(), 2.0, "tollgate_binary_idle_closes_total");

    // A check waiting ~3 s for its token keeps its connection (nothing else is sent).
    let mut waiting = connect(server.listen);
    let labels = [(StrRef::Inline("api_key"), "k")];
    let check = |id: u32, wait_budget_ms: Option<u32>| {
        let mut out = Vec::new();
        encode_check(
            &mut out,
            id,
            &CheckSpec {
                control_point: StrRef::Inline("llm"),
                tokens: None,
                wait_budget_ms,
                labels: &labels,
            },
        )
        .unwrap();
        out
    };
    let mut buf = Vec::new();
    waiting.write_all(&check(5, None)).unwrap();
    match read_reply(&mut waiting, &mut buf) {
        Some((5, Reply::Check(r))) => assert!(r.accepted(), "{r:?}"),
        other => panic!("expected reply 5, got {other:?}"),
    }
    let sent = Instant::now();
    waiting.write_all(&check(6, Some(30_000))).unwrap();
    match read_reply(&mut waiting, &mut buf) {
        Some((6, Reply::Check(r))) => assert!(r.accepted(), "{r:?}"),
        other => panic!("expected reply 6, got {other:?}"),
    }
    assert!(
        sent.elapsed() > Duration::from_secs(1),
        "the token refills after ~3 s, so the wait outlasted the idle timeout"
    );
}

fn refused(s: &mut TcpStream, limit: &str) {
    match read_reply(s, &mut Vec::new()) {
        Some((0, Reply::Error(e))) => {
            assert_eq!(e.code, ErrorCode::Overloaded, "{e:?}");
            assert!(e.message.contains(limit), "{e:?}");
        }
        other => panic!("expected ERROR OVERLOADED naming {limit}, got {other:?}"),
    }
    closed_by_server(s);
}

/// Opens connections until one is served, within `HANG`: a closed connection's slot is
/// released shortly after the close.
fn served_again(addr: std::net::SocketAddr) -> TcpStream {
    let deadline = Instant::now() + HANG;
    loop {
        let mut s = connect(addr);
        let mut frame = Vec::new();
        encode_ping(&mut frame, 9, b"again").unwrap();
        if s.write_all(&frame).is_ok() {
            match read_reply(&mut s, &mut Vec::new()) {
                Some((9, Reply::Pong(_))) => return s,
                // Still refused (request id 0), or closed under the ping: try again.
                None | Some((0, Reply::Error(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "the slot was never released");
    }
}

#[test]
fn connections_beyond_the_per_peer_cap_are_told_and_closed() {
    let server = start_server(&config(", max_connections_per_peer: 2"));
    let mut first = connect(server.listen);
    let mut second = connect(server.listen);
    assert!(ping(&mut first, 1, b"a").is_some());
    assert!(ping(&mut second, 1, b"b").is_some());
    for _ in 0..3 {
        refused(
            &mut connect(server.listen),
            "server.max_connections_per_peer",
        );
    }
    assert!(
        ping(&mut first, 2, b"still").is_some(),
        "admitted ones go on"
    );
    drop(second);
    let mut third = served_again(server.listen);
    assert!(ping(&mut third, 10, b"c").is_some());
}

#[test]
fn connections_beyond_the_node_cap_are_told_and_closed() {
    let server = start_server(&config(", max_connections: 1"));
    let mut first = connect(server.listen);
    assert!(ping(&mut first, 1, b"a").is_some());
    refused(&mut connect(server.listen), "server.max_connections");
    drop(first);
    served_again(server.listen);
}
