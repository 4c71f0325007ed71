#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report
//! Who may talk to the binary ports: API keys in HELLO (`server.api_keys`) and TLS
//! (`server.binary_tls`), against the real binary on free ports.

mod common;

use common::certs::self_signed;
use common::{metric_sum, run_cli, start_server, temp_dir, RunningServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tollgate_protocol::client::{
    blocking::Client, ApiKey, CheckRequest, ClientConfig, ClientError, ClientTls, FailMode,
};
use tollgate_protocol::{
    decode_reply, encode_check, encode_hello, encode_hello_with_key, encode_intern, encode_ping,
    routing, CheckSpec, ErrorCode, ProtocolVersion, Reply, StrRef, DEFAULT_MAX_FRAME_LEN,
};

/// Generous per-request timeout: debug builds on a loaded 2-core CI box.
const TIMEOUT: Duration = Duration::from_secs(10);

const KEY: &str = "sesame-0123456789";

/// Two shards, one policy: three tokens per user, never refilled, so a token taken by a
/// refused request would show in the next accepted check's `remaining`.
fn config(extra_server: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0, grpc: "off", shards: 2{extra_server} }}
policies:
  - policy_name: per_user
    rate_limiter:
      bucket_capacity: 3
      fill_amount: 1
      parameters: {{ interval: 3600s, limit_by_label_key: user }}
      selectors: [{{ control_point: api }}]
"#
    )
}

fn check_frame(out: &mut Vec<u8>, request_id: u32, user: &str) {
    let labels = [(StrRef::Inline("user"), user)];
    encode_check(
        out,
        request_id,
        &CheckSpec {
            control_point: StrRef::Inline("api"),
            tokens: None,
            wait_budget_ms: None,
            labels: &labels,
        },
    )
    .unwrap();
}

/// Sends `bytes` on a fresh plain connection to `addr` and reads until the server closes:
/// every frame it wrote, decoded in `version`.
fn exchange(addr: &str, bytes: &[u8], version: ProtocolVersion) -> Vec<(u32, Reply)> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    let mut got = Vec::new();
    // The server closes a refused connection: read to the end, bounded by the timeout.
    let _ = s.read_to_end(&mut got);
    let mut frames = Vec::new();
    let mut rest = &got[..];
    while let Ok(Some(d)) = decode_reply(rest, DEFAULT_MAX_FRAME_LEN, version) {
        frames.push((d.request_id, d.reply));
        rest = &rest[d.len..];
    }
    assert!(
        rest.is_empty(),
        "undecodable bytes from the server: {rest:?}"
    );
    frames
}

/// Reads from `s` until `n` replies have arrived: each decoded in the version the
/// connection speaks at that point (a `HELLO_REPLY` sets it; version 1 before one).
fn read_replies(s: &mut TcpStream, n: usize) -> Vec<(u32, Reply)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut replies = Vec::new();
    while replies.len() < n {
        let read = s.read(&mut buf).unwrap();
        assert!(read > 0, "closed early; got {replies:?}");
        got.extend_from_slice(&buf[..read]);
        let mut version = ProtocolVersion::V1;
        replies.clear();
        let mut rest = &got[..];
        while let Ok(Some(d)) = decode_reply(rest, DEFAULT_MAX_FRAME_LEN, version) {
            if let Reply::Hello(h) = &d.reply {
                version = h.version;
            }
            replies.push((d.request_id, d.reply));
            rest = &rest[d.len..];
        }
    }
    replies
}

fn unauthenticated(frames: &[(u32, Reply)], request_id: u32) {
    assert_eq!(frames.len(), 1, "one error, then the close: {frames:?}");
    match &frames[0] {
        (id, Reply::Error(e)) => {
            assert_eq!(*id, request_id, "{e:?}");
            assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
}

fn client_config(addr: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(addr.to_string(), FailMode::Closed);
    cfg.request_timeout = TIMEOUT;
    cfg.connect_timeout = TIMEOUT;
    cfg
}

fn check(user: &str) -> CheckRequest {
    CheckRequest::new("api").label("user", user)
}

/// `tollgate_binary_unauthenticated_total`, summed over shards.
fn refusals_counted(server: &RunningServer) -> f64 {
    metric_sum(server, "tollgate_binary_unauthenticated_total")
}

#[test]
fn api_keys_refuse_everything_before_a_hello_with_a_valid_key() {
    let server = start_server(&config(&format!(", api_keys: [other-key, {KEY}]")));
    let addr = server.addr();

    // A CHECK without HELLO: refused from its header, nothing taken, connection closed.
    let mut out = Vec::new();
    check_frame(&mut out, 7, "alice");
    unauthenticated(&exchange(&addr, &out, ProtocolVersion::V1), 7);

    // A HELLO without a key, with a wrong key, and then the checks pipelined behind it.
    for key in [None, Some("sesame"), Some("x")] {
        let mut out = Vec::new();
        encode_hello_with_key(&mut out, 3, 2, "test", key).unwrap();
        encode_intern(&mut out, 4, 0, "api").unwrap();
        check_frame(&mut out, 4, "alice");
        unauthenticated(&exchange(&addr, &out, ProtocolVersion::V1), 3);
    }
    // A version-1 client that never sends HELLO, and a PING.
    let mut out = Vec::new();
    encode_ping(&mut out, 9, b"x").unwrap();
    unauthenticated(&exchange(&addr, &out, ProtocolVersion::V1), 9);
    // The shard-aware ports guard the same way.
    for port in &server.shard_ports {
        let mut out = Vec::new();
        check_frame(&mut out, 5, "alice");
        unauthenticated(
            &exchange(&format!("127.0.0.1:{port}"), &out, ProtocolVersion::V1),
            5,
        );
    }
    let refused = 5 + server.shard_ports.len();

    // With the key, pipelined right behind the HELLO: served, and alice's three tokens are
    // all there (none was taken by the refused checks).
    let mut out = Vec::new();
    encode_hello_with_key(&mut out, 1, 2, "test", Some(KEY)).unwrap();
    check_frame(&mut out, 2, "alice");
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(&out).unwrap();
    let frames: Vec<Reply> = read_replies(&mut s, 2)
        .into_iter()
        .map(|(_, reply)| reply)
        .collect();
    assert!(matches!(frames[0], Reply::Hello(_)), "{frames:?}");
    match &frames[1] {
        Reply::Check(r) => {
            assert!(r.accepted(), "{r:?}");
            assert_eq!(r.limiters[0].remaining, 2.0, "no token went to a refusal");
        }
        other => panic!("expected CHECK_REPLY, got {other:?}"),
    }
    drop(s);

    // The Rust client, shard-aware: every shard connection authenticates too.
    let mut cfg = client_config(&addr);
    cfg.api_key = Some(ApiKey::new(KEY).unwrap());
    let c = Client::connect(cfg).expect("connect with the key");
    assert_eq!(c.hello().shard_ports.len(), 2);
    let mut shards_seen = std::collections::HashSet::new();
    for i in 0..16 {
        let user = format!("user-{i}");
        let reply = c.check(&check(&user)).expect("authenticated check");
        assert!(reply.accepted(), "{reply:?}");
        shards_seen.insert(routing::shard_for(
            routing::routing_hash(user.as_bytes()),
            2,
        ));
    }
    assert_eq!(shards_seen.len(), 2, "checks went to both shard ports");

    // Without a key, or with a wrong one, the client is told why.
    for key in [None, Some("wrong-key")] {
        let mut cfg = client_config(&addr);
        cfg.api_key = key.map(|k| ApiKey::new(k).unwrap());
        match Client::connect(cfg) {
            Err(ClientError::Server {
                code: ErrorCode::Unauthenticated,
                ..
            }) => {}
            other => panic!("expected UNAUTHENTICATED, got {other:?}"),
        }
    }

    // The CLI takes the key too.
    let (code, out, err) = run_cli(&[
        "check",
        "--server",
        &addr,
        "--control-point",
        "api",
        "--label",
        "user=bob",
        "--api-key",
        KEY,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_cli(&[
        "check",
        "--server",
        &addr,
        "--control-point",
        "api",
        "--label",
        "user=bob",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("UNAUTHENTICATED"), "{err}");

    assert!(
        refusals_counted(&server) >= (refused + 3) as f64,
        "refusals are counted"
    );
}

#[test]
fn without_api_keys_a_key_in_hello_is_ignored_and_v1_clients_work() {
    let server = start_server(&config(""));
    let addr = server.addr();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut out = Vec::new();
    check_frame(&mut out, 1, "carol");
    encode_hello_with_key(&mut out, 2, 1, "test", Some("anything")).unwrap();
    encode_hello(&mut out, 3, 1, "test").unwrap();
    s.write_all(&out).unwrap();
    let mut replies = read_replies(&mut s, 3);
    // A check that hops to the other shard may be answered after the HELLOs.
    replies.sort_by_key(|(id, _)| *id);
    assert!(
        matches!(replies[0], (1, Reply::Check(ref r)) if r.accepted()),
        "{replies:?}"
    );
    assert!(matches!(replies[1], (2, Reply::Hello(_))), "{replies:?}");
    assert!(matches!(replies[2], (3, Reply::Hello(_))), "{replies:?}");
}

#[test]
fn tls_on_every_binary_port() {
    let dir = temp_dir("binary-tls");
    let pem = self_signed(&dir);
    let server = start_server(&config(&format!(
        ", idle_timeout: 1s, api_keys: [{KEY}], binary_tls: {{ cert: {}, key: {} }}",
        pem.cert.display(),
        pem.key.display()
    )));
    let addr = server.addr();

    // A client trusting the certificate, with the key: every shard connection is TLS.
    let mut cfg = client_config(&addr);
    cfg.api_key = Some(ApiKey::new(KEY).unwrap());
    cfg.tls = Some(ClientTls::from_ca_file(&pem.cert).unwrap());
    let c = Client::connect(cfg).expect("TLS connect");
    let mut shards_seen = std::collections::HashSet::new();
    for i in 0..16 {
        let user = format!("user-{i}");
        assert!(c.check(&check(&user)).expect("check over TLS").accepted());
        shards_seen.insert(routing::shard_for(
            routing::routing_hash(user.as_bytes()),
            2,
        ));
    }
    assert_eq!(shards_seen.len(), 2, "both shard ports spoke TLS");
    // By host name too (the certificate names localhost).
    let mut cfg = client_config(&format!("localhost:{}", server.listen.port()));
    cfg.api_key = Some(ApiKey::new(KEY).unwrap());
    cfg.tls = Some(ClientTls::from_ca_file(&pem.cert).unwrap());
    Client::connect(cfg).expect("TLS by host name");

    // A plaintext client fails cleanly, well before its timeout.
    let mut cfg = client_config(&addr);
    cfg.api_key = Some(ApiKey::new(KEY).unwrap());
    let started = Instant::now();
    let plain = Client::connect(cfg);
    assert!(plain.is_err(), "plaintext to a TLS port must fail");
    assert!(
        started.elapsed() < TIMEOUT,
        "failed at once, not by timeout"
    );

    // A client that trusts another certificate refuses the server's.
    let other = temp_dir("binary-tls-other");
    let other_pem = self_signed(&other);
    let mut cfg = client_config(&addr);
    cfg.tls = Some(ClientTls::from_ca_file(&other_pem.cert).unwrap());
    match Client::connect(cfg) {
        Err(ClientError::Connect { reason, .. }) => {
            assert!(reason.contains("TLS"), "{reason}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }

    // A peer that connects and says nothing is closed once the handshake time (the 1s idle
    // timeout here) is up.
    let mut silent = TcpStream::connect(&addr).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a frame");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < TIMEOUT,
        "closed after {waited:?}"
    );

    // The CLI over TLS, with the key.
    let ca = pem.cert.display().to_string();
    let (code, out, err) = run_cli(&[
        "check",
        "--server",
        &addr,
        "--control-point",
        "api",
        "--label",
        "user=dan",
        "--api-key",
        KEY,
        "--tls-ca",
        &ca,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

#[test]
fn bad_binary_tls_files_stop_the_start_naming_the_field() {
    let dir = temp_dir("binary-tls-bad");
    let yaml = config(", binary_tls: { cert: /nonexistent/cert.pem, key: /nonexistent/key.pem }");
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(common::tollgate_bin())
        .args(["serve", "--admin", "off", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("server.binary_tls.cert") && stderr.contains("/nonexistent/cert.pem"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
