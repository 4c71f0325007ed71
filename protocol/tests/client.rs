//! The tokio client against a tiny in-test fake server built from the crate's own codec.
//!
//! The fake server listens on 127.0.0.1:0 (a shared port plus, optionally, one port per shard),
//! negotiates the protocol version per connection like the real one (or, started with
//! [`Speaks::V1Only`], refuses a version above 1 as a version-1 server does), and decides checks
//! deterministically from their labels:
//! * a label value starting with `deny` → rejected (429), else accepted;
//! * `flow=1` → accepted by a "concurrency limiter": the limiter result carries a flow id whose
//!   shard bits name the answering listener (0 on the shared port);
//! * `sched=timeout` → rejected with `NO_TOKENS`, refusal `timed_out`, status 503;
//! * `delay_ms=N` → the reply is sent N ms later (so replies come back shuffled);
//! * `hold=NAME` → the reply is held until the test releases it ([`FakeServer::next_held`]):
//!   the way tests order events without sleeping;
//! * `drop=1` → the server closes the connection without replying;
//! * `fail=1` → `ERROR BAD_REQUEST` (a failed item inside a batch).
//!
//! Each `CHECK_REPLY` carries one limiter whose `limiter_index` is the index of the listener that
//! answered (0xFFFF for the shared port), and the server records `(listener, routing value)`
//! for every check (the value by the routing rule of the connection's version), so tests can see
//! where the client routed. `FLOW_END` answers `ended` for odd ids and `unknown` for even ones,
//! recording `(listener, id)`. [`FakeServer::stop`] returns once every listener and connection
//! is closed.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tollgate_protocol::client::{
    CheckRequest, Client, ClientConfig, ClientError, DecidedBy, FailMode,
};
use tollgate_protocol::routing::{
    routing_hash, shard_for, RoutingKeys, FLOW_ID_SHARD_SHIFT, HASH_FNV1A_64,
};
use tollgate_protocol::*;

const SHARED: u16 = 0xFFFF;

/// Which protocol versions the fake server speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// Versions 1 to the latest, negotiated per connection (like the real server).
    V2,
    /// Version 1 only: a `HELLO` above 1 gets `UNSUPPORTED_VERSION` (like a version-1 server).
    V1Only,
}

/// Bound on waiting for an event the fake server signals: only a hang reaches it.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Stats {
    /// Connections accepted, per listener (last = shared).
    accepted: Mutex<Vec<usize>>,
    /// (listener, routing value) for every check decided.
    routed: Mutex<Vec<(u16, String)>>,
    /// INTERN frames received.
    interns: AtomicUsize,
    /// Request ids of the INTERN frames received.
    intern_ids: Mutex<Vec<u32>>,
    /// (listener, HELLO version, was it the connection's first frame) for every HELLO.
    hellos: Mutex<Vec<(u16, u16, bool)>>,
    /// (listener, API key) for every HELLO.
    hello_keys: Mutex<Vec<(u16, Option<String>)>>,
    /// The wait budget of every check decided, in order.
    waits: Mutex<Vec<Option<u32>>>,
    /// (listener, flow id) for every id of every FLOW_END.
    flow_ends: Mutex<Vec<(u16, u64)>>,
}

/// A reply the server holds back (a check labelled `hold=NAME`) until the test releases it.
struct Held {
    /// The `hold` label's value.
    name: String,
    release: oneshot::Sender<()>,
    /// Fires once the reply is queued on its connection's writer, behind everything the server
    /// answered before and ahead of everything it answers after (or it is dropped with the
    /// connection).
    queued: oneshot::Receiver<()>,
}

impl Held {
    /// Releases the reply and returns once it is queued for writing.
    async fn release(self) {
        let _ = self.release.send(());
        let _ = tokio::time::timeout(SIGNAL_TIMEOUT, self.queued).await;
    }
}

/// What the server's tasks signal the test with. Holding no `Sender` itself, the test's
/// receivers end exactly when every task that could still signal has ended.
#[derive(Clone)]
struct Signals {
    held: mpsc::UnboundedSender<Held>,
    /// Never sent on: each accept loop and connection task holds a clone, so `recv` on the
    /// other end returns `None` once all of them have ended (listeners and sockets closed).
    _alive: mpsc::Sender<()>,
}

struct FakeServer {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    held: tokio::sync::Mutex<mpsc::UnboundedReceiver<Held>>,
    alive: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl FakeServer {
    fn accepted_shared(&self) -> usize {
        self.stats
            .accepted
            .lock()
            .expect("lock")
            .last()
            .copied()
            .unwrap_or(0)
    }

    /// Closes every listener and connection; returns once all of them are closed.
    async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let mut alive = self.alive.lock().await;
        tokio::time::timeout(SIGNAL_TIMEOUT, alive.recv())
            .await
            .expect("the fake server's tasks end after shutdown");
    }

    /// Waits for the next check labelled `hold=...` to reach the server; its reply is sent only
    /// when the returned handle is released.
    async fn next_held(&self, name: &str) -> Held {
        let held = tokio::time::timeout(SIGNAL_TIMEOUT, self.held.lock().await.recv())
            .await
            .expect("a held check reaches the server")
            .expect("server running");
        assert_eq!(held.name, name, "checks were held in another order");
        held
    }
}

fn keys() -> Vec<String> {
    vec!["user".to_string(), "tenant".to_string()]
}

/// Version 2's routing keys: control point `db` is limited by tenant only; `api` by both.
fn control_point_routing() -> Vec<ControlPointRouting> {
    vec![
        ControlPointRouting {
            control_point: "api".into(),
            routing_label_keys: keys(),
        },
        ControlPointRouting {
            control_point: "db".into(),
            routing_label_keys: vec!["tenant".into()],
        },
    ]
}

async fn start_server(nr_shards: usize) -> FakeServer {
    start_server_at(nr_shards, "127.0.0.1:0".parse().expect("addr"), Speaks::V2).await
}

/// A fake server whose shared port is `shared` (port 0: any free port).
async fn start_server_at(nr_shards: usize, shared: SocketAddr, speaks: Speaks) -> FakeServer {
    let (shutdown, rx) = watch::channel(false);
    let (held_tx, held) = mpsc::unbounded_channel();
    let (alive_tx, alive) = mpsc::channel(1);
    let signals = Signals {
        held: held_tx,
        _alive: alive_tx,
    };
    let stats = Arc::new(Stats::default());
    *stats.accepted.lock().expect("lock") = vec![0; nr_shards + 1];
    let mut listeners = Vec::new();
    for _ in 0..nr_shards {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    listeners.push(TcpListener::bind(shared).await.expect("bind shared port"));
    let ports: Vec<u16> = listeners[..nr_shards]
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let addr = listeners[nr_shards].local_addr().expect("addr");
    for (i, listener) in listeners.into_iter().enumerate() {
        let index = if i == nr_shards { SHARED } else { i as u16 };
        let hello = HelloReply {
            version: ProtocolVersion::V1,
            node_id: "fake".into(),
            shard_count: nr_shards.max(1) as u16,
            hash_algo: HASH_FNV1A_64,
            shard_index: (index != SHARED).then_some(index),
            shard_ports: ports.clone(),
            routing_label_keys: keys(),
            policy_names: vec!["p".into()],
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_batch: 4,
            max_in_flight: 64,
            control_point_routing: Vec::new(),
        };
        let listener_cfg = Listener {
            index,
            hello,
            speaks,
        };
        tokio::spawn(accept_loop(
            listener,
            i,
            listener_cfg,
            stats.clone(),
            rx.clone(),
            signals.clone(),
        ));
    }
    FakeServer {
        addr,
        stats,
        shutdown,
        held: tokio::sync::Mutex::new(held),
        alive: tokio::sync::Mutex::new(alive),
    }
}

/// What one listening port of the fake server is.
#[derive(Clone)]
struct Listener {
    /// Shard index, or [`SHARED`].
    index: u16,
    /// Its `HELLO_REPLY` in version 1 (version 2 adds the control point routing).
    hello: HelloReply,
    speaks: Speaks,
}

impl Listener {
    /// The `HELLO_REPLY` for a `HELLO` of `version`, or the error a server of this kind sends.
    fn answer_hello(&self, version: u16) -> Result<HelloReply, String> {
        let negotiated = match (self.speaks, version) {
            (Speaks::V1Only, v) if v > 1 => {
                return Err("server speaks protocol version 1".into());
            }
            (_, v) => ProtocolVersion::negotiate(v).ok_or("no version 0")?,
        };
        Ok(HelloReply {
            version: negotiated,
            control_point_routing: match negotiated {
                ProtocolVersion::V1 => Vec::new(),
                ProtocolVersion::V2 | ProtocolVersion::V3 => control_point_routing(),
            },
            ..self.hello.clone()
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    slot: usize,
    cfg: Listener,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
    signals: Signals,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { break };
                stats.accepted.lock().expect("lock")[slot] += 1;
                tokio::spawn(serve(stream, cfg.clone(), stats.clone(), shutdown.clone(), signals.clone()));
            }
            _ = shutdown.changed() => break,
        }
    }
    // The port is closed before this task counts as ended.
    drop(listener);
    drop(signals);
}

enum Decided {
    Reply(CheckReply),
    Error(ErrorCode, &'static str),
    Drop,
}

/// When to send a reply.
enum Timing {
    Now,
    AfterMs(u64),
    /// When the test releases it (`hold=NAME`).
    Held(String),
}

fn decide(
    check: &CheckRef<'_>,
    table: &InternTable,
    index: u16,
    routing: &RoutingKeys,
    stats: &Stats,
) -> (Decided, Timing) {
    let Some(cp) = table.resolve(check.control_point()) else {
        return (
            Decided::Error(ErrorCode::UnknownInternedId, "control point"),
            Timing::Now,
        );
    };
    let mut labels = Vec::new();
    for (k, v) in check.labels() {
        let Some(k) = table.resolve(k) else {
            return (
                Decided::Error(ErrorCode::UnknownInternedId, "label key"),
                Timing::Now,
            );
        };
        labels.push((k, v));
    }
    let value = routing::routing_value(routing.keys_for(cp), labels.iter().copied()).to_string();
    stats.routed.lock().expect("lock").push((index, value));
    stats
        .waits
        .lock()
        .expect("lock")
        .push(check.wait_budget_ms());
    let get = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if get("drop") == Some("1") {
        return (Decided::Drop, Timing::Now);
    }
    if get("fail") == Some("1") {
        return (
            Decided::Error(ErrorCode::BadRequest, "asked to fail"),
            Timing::Now,
        );
    }
    let timing = match (get("hold"), get("delay_ms").and_then(|d| d.parse().ok())) {
        (Some(name), _) => Timing::Held(name.to_string()),
        (None, Some(ms)) if ms > 0 => Timing::AfterMs(ms),
        _ => Timing::Now,
    };
    let deny = labels.iter().any(|(_, v)| v.starts_with("deny"));
    let timed_out = get("sched") == Some("timeout");
    let rejected = deny || timed_out;
    // Shard bits: the listener's shard (0 on the shared port), then a sequence.
    let shard_bits = if index == SHARED { 0 } else { u64::from(index) };
    let flow_id = (get("flow") == Some("1") && !rejected)
        .then(|| NonZeroU64::new((shard_bits << FLOW_ID_SHARD_SHIFT) | 0x51))
        .flatten();
    let reply = CheckReply {
        decision: if rejected {
            Decision::Rejected
        } else {
            Decision::Accepted
        },
        reason: match (deny, timed_out) {
            (true, _) => DecisionReason::RateLimited,
            (false, true) => DecisionReason::NoTokens,
            (false, false) => DecisionReason::None,
        },
        wait_ns: if rejected { 1_000 } else { 0 },
        limiters: [LimiterResult {
            limiter_index: index,
            outcome: if rejected {
                LimiterOutcome::Rejected
            } else {
                LimiterOutcome::Accepted
            },
            status_code: if timed_out && !deny { 503 } else { 429 },
            tokens: check.tokens().unwrap_or(1.0),
            remaining: 5.0,
            current: 6.0,
            wait_ns: if rejected { 1_000 } else { 0 },
            flow_id,
            refusal: match (deny, timed_out) {
                (true, _) => Some(Refusal::Exhausted),
                (false, true) => Some(Refusal::TimedOut),
                (false, false) => None,
            },
        }]
        .into_iter()
        .collect(),
    };
    (Decided::Reply(reply), timing)
}

async fn serve(
    stream: TcpStream,
    cfg: Listener,
    stats: Arc<Stats>,
    mut shutdown: watch::Receiver<bool>,
    signals: Signals,
) {
    let index = cfg.index;
    // The connection speaks version 1 until a HELLO; replies are encoded in the version in
    // force when they are written (as the real server does).
    let mut version = ProtocolVersion::V1;
    let mut routing = RoutingKeys::from_hello(&cfg.hello);
    let mut first_frame = true;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut table = InternTable::new();
    let mut buf = Vec::new();
    'conn: loop {
        // Decode everything buffered.
        let mut start = 0;
        loop {
            let mut out = Vec::new();
            match decode_frame(&buf[start..], DEFAULT_MAX_FRAME_LEN) {
                Ok(None) => break,
                Err(DecodeError::Body {
                    code,
                    reason,
                    request_id,
                    frame_len,
                    ..
                }) => {
                    encode_error(&mut out, request_id, code, reason);
                    start += frame_len;
                }
                Err(e) => {
                    encode_error(&mut out, 0, e.code(), e.reason());
                    let _ = tx.send(out);
                    break 'conn;
                }
                Ok(Some(d)) => {
                    start += d.len;
                    let id = d.request_id;
                    let first = std::mem::replace(&mut first_frame, false);
                    match d.frame {
                        Frame::Hello(h) => {
                            stats
                                .hellos
                                .lock()
                                .expect("lock")
                                .push((index, h.version, first));
                            stats
                                .hello_keys
                                .lock()
                                .expect("lock")
                                .push((index, h.api_key.map(str::to_owned)));
                            match cfg.answer_hello(h.version) {
                                Ok(hello) => {
                                    encode_hello_reply(&mut out, id, &hello).expect("hello");
                                    version = hello.version;
                                    routing = RoutingKeys::from_hello(&hello);
                                }
                                Err(msg) => {
                                    encode_error(&mut out, id, ErrorCode::UnsupportedVersion, &msg)
                                }
                            }
                        }
                        Frame::FlowEnd(ids) => {
                            let statuses: Vec<FlowEndStatus> = ids
                                .iter()
                                .map(|fid| {
                                    stats.flow_ends.lock().expect("lock").push((index, fid));
                                    FlowEndStatus::from_ended(fid % 2 == 1)
                                })
                                .collect();
                            encode_flow_end_reply(&mut out, id, &statuses).expect("flow end");
                        }
                        Frame::Intern { id: iid, value } => {
                            stats.interns.fetch_add(1, Ordering::Relaxed);
                            stats.intern_ids.lock().expect("lock").push(id);
                            if let Err(e) = table.bind(iid, value) {
                                encode_error(&mut out, id, ErrorCode::BadRequest, &e.to_string());
                            }
                        }
                        Frame::Members => encode_members_reply(
                            &mut out,
                            id,
                            &[Member {
                                node_id: "fake".into(),
                                address: "127.0.0.1:1".into(),
                                state: MemberState::Alive,
                                last_contact_ms: 0,
                                policy_digest: Some(0xfeed),
                            }],
                            version,
                        )
                        .expect("members"),
                        Frame::Ping(p) => encode_pong(&mut out, id, p).expect("pong"),
                        Frame::Check(c) => match decide(&c, &table, index, &routing, &stats) {
                            (Decided::Drop, _) => break 'conn,
                            (Decided::Error(code, msg), _) => encode_error(&mut out, id, code, msg),
                            (Decided::Reply(r), timing) => {
                                encode_check_reply(&mut out, id, &r, version).expect("reply");
                                match timing {
                                    Timing::Now => {}
                                    Timing::AfterMs(ms) => {
                                        let tx = tx.clone();
                                        tokio::spawn(async move {
                                            tokio::time::sleep(Duration::from_millis(ms)).await;
                                            let _ = tx.send(out);
                                        });
                                        continue;
                                    }
                                    Timing::Held(name) => {
                                        hold(name, out, &tx, &signals);
                                        continue;
                                    }
                                }
                            }
                        },
                        Frame::CheckBatch(b) => {
                            let mut w = BatchReplyWriter::new(&mut out, id, b.len(), version)
                                .expect("batch");
                            // A held item holds the whole batch reply, as a waiting check
                            // does on the real server.
                            let mut held = None;
                            for c in b.iter() {
                                let (decided, timing) = decide(&c, &table, index, &routing, &stats);
                                match decided {
                                    Decided::Reply(r) => w.reply(&r).expect("item"),
                                    Decided::Error(code, msg) => w.error(code, msg).expect("item"),
                                    Decided::Drop => break 'conn,
                                }
                                if let Timing::Held(name) = timing {
                                    held.get_or_insert(name);
                                }
                            }
                            w.finish().expect("finish");
                            if let Some(name) = held {
                                hold(name, out, &tx, &signals);
                                continue;
                            }
                        }
                    }
                }
            }
            if !out.is_empty() {
                let _ = tx.send(out);
            }
        }
        buf.drain(..start);
        let mut chunk = [0u8; 4096];
        tokio::select! {
            n = rd.read(&mut chunk) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            },
            _ = shutdown.changed() => break,
        }
    }
    // Closing: drop the write half too, even if delayed replies still hold senders, and only
    // then let `signals` (and with it this task's share of `alive`) go.
    drop(rd);
    writer.abort();
    let _ = writer.await;
    drop(signals);
}

/// Sends `out` on the connection only when the test releases the hold named `name`.
fn hold(name: String, out: Vec<u8>, tx: &mpsc::UnboundedSender<Vec<u8>>, signals: &Signals) {
    let (release, released) = oneshot::channel();
    let (queued_tx, queued) = oneshot::channel();
    let tx = tx.clone();
    tokio::spawn(async move {
        if released.await.is_ok() {
            let _ = tx.send(out);
            let _ = queued_tx.send(());
        }
    });
    let _ = signals.held.send(Held {
        name,
        release,
        queued,
    });
}

fn cfg(server: &FakeServer, mode: FailMode) -> ClientConfig {
    let mut cfg = ClientConfig::new(server.addr.to_string(), mode);
    cfg.request_timeout = Duration::from_secs(2); // generous: CI machines are shared
    cfg.connect_timeout = Duration::from_millis(500);
    cfg
}

fn req(user: &str) -> CheckRequest {
    CheckRequest::new("api").label("user", user)
}

#[tokio::test]
async fn hello_members_ping_over_shared_port_only() {
    let server = start_server(0).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    assert_eq!(client.hello().node_id, "fake");
    assert!(client.hello().shard_ports.is_empty());
    assert_eq!(client.shard_of(&req("u1")), None);
    let members = client.members().await.expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].state, MemberState::Alive);
    // A version-3 connection carries the member's policy digest.
    assert_eq!(members[0].policy_digest, Some(0xfeed));
    client.ping(b"hello").await.expect("ping");
    client.ping(&[]).await.expect("empty ping");
    let r = client.check(&req("u1")).await.expect("check");
    assert!(r.accepted());
    assert_eq!(r.limiters[0].limiter_index, SHARED);
    let r = client.check(&req("deny-me")).await.expect("check");
    assert_eq!(r.decision, Decision::Rejected);
    assert_eq!(r.limiters[0].status_code, 429);
    // Everything went over the single shared connection.
    assert_eq!(server.accepted_shared(), 1);
}

#[tokio::test]
async fn pipelines_and_matches_out_of_order_replies() {
    let server = start_server(0).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    // The first request's reply is held at the server; a second one, sent after the first
    // reached the server, is answered first.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.check(&req("deny-slow").label("hold", "slow")).await })
    };
    let held = server.next_held("slow").await;
    let fast = client.check(&req("fast")).await.expect("fast check");
    assert!(fast.accepted());
    assert!(!slow.is_finished(), "the held reply was not sent");
    held.release().await;
    let slow = slow.await.expect("join").expect("slow check");
    assert!(!slow.accepted(), "each reply went to its own request");
    // Many concurrent requests on one connection, each matched to its own decision.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let user = if i % 3 == 0 {
                format!("deny-{i}")
            } else {
                format!("u{i}")
            };
            let delay = format!("{}", (50 - i) % 7);
            let r = client
                .check(&req(&user).label("delay_ms", delay))
                .await
                .expect("check");
            assert_eq!(r.accepted(), i % 3 != 0, "request {i}");
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(server.accepted_shared(), 1);
    // Control point and label keys were interned once on the connection, not per request.
    assert_eq!(server.stats.interns.load(Ordering::Relaxed), 4); // "api", "user", "hold", "delay_ms"
}

#[tokio::test]
async fn request_timeout_then_connection_still_usable() {
    let server = start_server(0).await;
    let mut c = cfg(&server, FailMode::Closed);
    c.request_timeout = Duration::from_millis(500);
    let client = Client::connect(c).await.expect("connect");
    // The server holds the reply until after the deadline: the request can only time out.
    let err = client
        .check(&req("u1").label("hold", "late"))
        .await
        .expect_err("must time out");
    assert_eq!(err, ClientError::Timeout(Duration::from_millis(500)));
    let late = server.next_held("late").await;
    // The connection keeps working while the reply is outstanding...
    assert!(client.check(&req("u2")).await.expect("check").accepted());
    // ...and after it arrives: the late reply reaches the client ahead of u3's, is dropped,
    // and u3 gets its own decision.
    late.release().await;
    let r = client.check(&req("deny-u3")).await.expect("check");
    assert!(!r.accepted(), "u3 got the late reply instead of its own");
    assert_eq!(server.accepted_shared(), 1);
}

#[tokio::test]
async fn reconnects_after_the_server_drops_the_connection() {
    let server = start_server(0).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    assert!(client.check(&req("u1")).await.expect("check").accepted());
    // An in-flight request on the dropped connection fails with a clear error.
    let pending = {
        let client = client.clone();
        tokio::spawn(async move { client.check(&req("u2").label("hold", "pending")).await })
    };
    let _in_flight = server.next_held("pending").await;
    let err = client
        .check(&req("u3").label("drop", "1"))
        .await
        .expect_err("dropped");
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    let err = pending
        .await
        .expect("join")
        .expect_err("in flight on dead connection");
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    assert!(err.to_string().contains("closed"), "{err}");
    // The next request dials a new connection (and re-interns on it).
    assert!(client
        .check(&req("u4"))
        .await
        .expect("after reconnect")
        .accepted());
    assert_eq!(server.accepted_shared(), 2);
}

#[tokio::test]
async fn fail_open_and_fail_closed_when_nothing_listens() {
    let server = start_server(0).await;
    let open = Client::connect(cfg(&server, FailMode::Open))
        .await
        .expect("connect");
    let closed = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    let v = open.check_with_fail_mode(&req("deny-x")).await;
    assert!(!v.accepted);
    assert!(matches!(v.decided_by, DecidedBy::Server(_)));
    server.stop().await;
    for _ in 0..3 {
        let v = open.check_with_fail_mode(&req("u1")).await;
        assert!(v.accepted, "fail open accepts");
        assert!(
            matches!(
                v.decided_by,
                DecidedBy::FailMode {
                    mode: FailMode::Open,
                    ..
                }
            ),
            "{v:?}"
        );
        let v = closed.check_with_fail_mode(&req("u1")).await;
        assert!(!v.accepted, "fail closed rejects");
        match v.decided_by {
            DecidedBy::FailMode {
                mode: FailMode::Closed,
                error,
            } => {
                assert!(
                    matches!(
                        error,
                        ClientError::Closed { .. } | ClientError::Connect { .. }
                    ),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // Connecting to a port where nothing listens fails with Connect.
    let err = Client::connect(cfg(&server, FailMode::Open))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

/// A client whose server went away keeps failing fast (redials are spaced by the backoff) and
/// picks the server up again once it is back on the same port.
#[tokio::test]
async fn picks_up_a_restarted_server() {
    let server = start_server(0).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    assert!(client.check(&req("u1")).await.expect("check").accepted());
    server.stop().await;
    for _ in 0..3 {
        let err = client.check(&req("u2")).await.expect_err("nothing listens");
        assert!(
            matches!(
                err,
                ClientError::Closed { .. } | ClientError::Connect { .. }
            ),
            "{err}"
        );
    }
    let restarted = start_server_at(0, server.addr, Speaks::V2).await;
    // Each failed dial doubles the wait before the next (capped at 1 s), so the first checks
    // may still be refused without a dial; poll until one goes through.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        match client.check(&req("u3")).await {
            Ok(r) => break r,
            Err(ClientError::Connect { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the restarted server was not picked up: {e}"),
        }
    };
    assert!(r.accepted());
    assert_eq!(restarted.accepted_shared(), 1, "one new connection");
}

#[tokio::test]
async fn shard_aware_routing_sends_each_key_to_its_owner() {
    const N: usize = 4;
    let server = start_server(N).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    assert_eq!(client.hello().shard_ports.len(), N);
    for i in 0..40 {
        let user = format!("user-{i}");
        let want = shard_for(routing_hash(user.as_bytes()), N);
        assert_eq!(client.shard_of(&req(&user)), Some(want));
        let r = client.check(&req(&user)).await.expect("check");
        assert_eq!(r.limiters[0].limiter_index as usize, want, "{user}");
    }
    // The first routing key present wins: tenant only when user is absent.
    let r = client
        .check(&CheckRequest::new("api").label("tenant", "t9"))
        .await
        .expect("check");
    assert_eq!(
        r.limiters[0].limiter_index as usize,
        shard_for(routing_hash(b"t9"), N)
    );
    // No routing label: the shared bucket "" lives on shard_for(hash(""), n).
    let r = client
        .check(&CheckRequest::new("api"))
        .await
        .expect("check");
    assert_eq!(
        r.limiters[0].limiter_index as usize,
        shard_for(routing_hash(b""), N)
    );
    // Every check was seen by the listener that owns its routing value.
    for (listener, value) in server.stats.routed.lock().expect("lock").iter() {
        assert_eq!(
            *listener as usize,
            shard_for(routing_hash(value.as_bytes()), N),
            "{value}"
        );
    }
    // One connection per shard port (opened at connect), one shared.
    let accepted = server.stats.accepted.lock().expect("lock").clone();
    assert_eq!(accepted, vec![1; N + 1]);
}

#[tokio::test]
async fn batch_routes_chunks_and_keeps_request_order() {
    const N: usize = 3;
    let server = start_server(N).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    // 20 checks across 3 shards with max_batch 4: several chunks per shard.
    let reqs: Vec<CheckRequest> = (0..20)
        .map(|i| {
            let user = if i % 4 == 0 {
                format!("deny-{i}")
            } else {
                format!("u{i}")
            };
            let r = req(&user);
            if i == 7 {
                r.label("fail", "1")
            } else {
                r
            }
        })
        .collect();
    let results = client.check_batch(&reqs).await.expect("batch");
    assert_eq!(results.len(), reqs.len());
    for (i, (r, q)) in results.iter().zip(&reqs).enumerate() {
        if i == 7 {
            assert!(
                matches!(
                    r,
                    Err(ClientError::Server {
                        code: ErrorCode::BadRequest,
                        ..
                    })
                ),
                "{r:?}"
            );
            continue;
        }
        let r = r.as_ref().expect("decided");
        assert_eq!(r.accepted(), i % 4 != 0, "item {i}");
        let user = &q.labels[0].1;
        assert_eq!(
            r.limiters[0].limiter_index as usize,
            shard_for(routing_hash(user.as_bytes()), N)
        );
    }
    assert!(client.check_batch(&[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn invalid_requests_fail_locally() {
    let server = start_server(0).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    let err = client
        .check(&req("u1").tokens(f64::NAN))
        .await
        .expect_err("nan");
    assert!(matches!(
        err,
        ClientError::Encode(EncodeError::InvalidTokens)
    ));
    let mut many = req("u1");
    for i in 0..MAX_LABELS {
        many = many.label(format!("k{i}"), "v");
    }
    assert!(matches!(
        client.check(&many).await,
        Err(ClientError::Encode(_))
    ));
    // Still fine afterwards.
    assert!(client
        .check(&req("u1").tokens(3.0))
        .await
        .expect("check")
        .accepted());
}

#[test]
fn blocking_client_works_without_a_runtime() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let server = rt.block_on(start_server(2));
    let client = tollgate_protocol::client::blocking::Client::connect(cfg(&server, FailMode::Open))
        .expect("connect");
    assert_eq!(client.hello().shard_count, 2);
    assert!(client.check(&req("u1")).expect("check").accepted());
    assert!(!client.check_with_fail_mode(&req("deny")).accepted);
    client.ping(b"x").expect("ping");
    assert_eq!(client.version(), ProtocolVersion::LATEST);
    assert_eq!(
        client.flow_end(&[1, 2]).expect("flow end"),
        [FlowEndStatus::Ended, FlowEndStatus::Unknown]
    );
    let results = client
        .check_batch(&[req("a"), req("deny-b")])
        .expect("batch");
    assert!(results[0].as_ref().expect("a").accepted());
    assert!(!results[1].as_ref().expect("b").accepted());
    drop(client);
    rt.block_on(server.stop());
}

#[tokio::test]
async fn negotiates_the_latest_version_on_every_connection() {
    const N: usize = 3;
    let server = start_server(N).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    assert_eq!(client.version(), ProtocolVersion::LATEST);
    assert_eq!(
        client.hello().control_point_routing,
        control_point_routing()
    );
    // The shard connections were opened at connect; a check on each makes sure each one's
    // first frame reached the server.
    for i in 0..40 {
        let _ = client
            .check(&req(&format!("user-{i}")))
            .await
            .expect("check");
    }
    let mut hellos = server.stats.hellos.lock().expect("lock").clone();
    hellos.sort();
    let latest = PROTOCOL_VERSION;
    let mut want: Vec<(u16, u16, bool)> = (0..N as u16).map(|i| (i, latest, true)).collect();
    want.push((SHARED, latest, true));
    assert_eq!(
        hellos, want,
        "one HELLO of the latest version per connection, as its first frame"
    );
    // INTERN frames carry the id of the request they were sent for, never 0.
    let ids = server.stats.intern_ids.lock().expect("lock").clone();
    assert!(!ids.is_empty());
    assert!(ids.iter().all(|&id| id != 0), "{ids:?}");
}

#[tokio::test]
async fn wait_budget_flow_ids_and_refusals() {
    let server = start_server(2).await;
    let mut c = cfg(&server, FailMode::Closed);
    c.request_timeout = Duration::from_millis(100);
    let client = Client::connect(c).await.expect("connect");
    // The budget goes on the wire in whole milliseconds, rounded down.
    let r = client
        .check(
            &req("u1")
                .wait(Duration::from_micros(2_500_900))
                .label("flow", "1"),
        )
        .await
        .expect("check");
    assert!(r.accepted());
    let shard = client.shard_of(&req("u1")).expect("shard-aware");
    let flow = ((shard as u64) << FLOW_ID_SHARD_SHIFT) | 0x51;
    assert_eq!(r.flow_ids().collect::<Vec<_>>(), [flow]);
    assert_eq!(r.limiters[0].flow_id(), Some(flow));
    assert_eq!(client.shard_of_flow(flow), Some(shard));
    // Without a budget: decided at once, no flag on the wire. A huge budget saturates.
    client.check(&req("u2")).await.expect("check");
    client
        .check(&req("u3").wait(Duration::from_secs(100 * 24 * 3600)))
        .await
        .expect("check");
    assert_eq!(
        *server.stats.waits.lock().expect("lock"),
        [Some(2500), None, Some(u32::MAX)]
    );
    // A scheduler that timed out: NO_TOKENS, 503, refusal timed_out, no flow id.
    let r = client
        .check(
            &req("u4")
                .wait(Duration::from_millis(5))
                .label("sched", "timeout"),
        )
        .await
        .expect("check");
    assert!(!r.accepted());
    assert_eq!(r.reason, DecisionReason::NoTokens);
    assert_eq!(r.refusal(), Some(Refusal::TimedOut));
    assert_eq!(r.limiters[0].status_code, 503);
    assert_eq!(r.flow_ids().count(), 0);
    // The client waits for a waiting check's reply for its budget plus request_timeout: a
    // reply the server never sends times out after exactly that.
    let err = client
        .check(
            &req("u5")
                .wait(Duration::from_millis(150))
                .label("hold", "never"),
        )
        .await
        .expect_err("must time out");
    assert_eq!(err, ClientError::Timeout(Duration::from_millis(250)));
    let _never = server.next_held("never").await;
    // A batch's frames all get the longest budget plus request_timeout. (u6 and u7 live on
    // different shards, so they go in different frames and only u7's is held.)
    assert_ne!(client.shard_of(&req("u6")), client.shard_of(&req("u7")));
    let results = client
        .check_batch(&[
            req("u6"),
            req("u7")
                .wait(Duration::from_millis(50))
                .label("hold", "batch"),
        ])
        .await
        .expect("u6 was decided");
    assert!(results[0].as_ref().expect("u6").accepted());
    assert_eq!(
        results[1],
        Err(ClientError::Timeout(Duration::from_millis(150)))
    );
    let _batch = server.next_held("batch").await;
}

#[tokio::test]
async fn flow_end_goes_to_the_shard_in_the_id() {
    const N: usize = 3;
    let server = start_server(N).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    let id = |shard: u64, seq: u64| (shard << FLOW_ID_SHARD_SHIFT) | seq;
    // Odd ids are in flight at the fake server; shard 9 does not exist here (shared port).
    let ids = [id(2, 1), id(0, 2), id(1, 3), id(9, 5), id(2, 4), 0];
    let statuses = client.flow_end(&ids).await.expect("flow end");
    use FlowEndStatus::{Ended, Unknown};
    assert_eq!(statuses, [Ended, Unknown, Ended, Ended, Unknown, Unknown]);
    let mut seen = server.stats.flow_ends.lock().expect("lock").clone();
    seen.sort();
    let mut want = vec![
        (0, id(0, 2)),
        (0, 0),
        (1, id(1, 3)),
        (2, id(2, 1)),
        (2, id(2, 4)),
        (SHARED, id(9, 5)),
    ];
    want.sort();
    assert_eq!(seen, want);
    // More than MAX_FLOW_END ids: several frames, one status per id, in order.
    let many: Vec<u64> = (0..MAX_FLOW_END as u64 + 7).map(|i| id(1, i)).collect();
    let statuses = client.flow_end(&many).await.expect("flow end");
    assert_eq!(statuses.len(), many.len());
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(*s == Ended, i % 2 == 1, "id {i}");
    }
    assert!(client.flow_end(&[]).await.expect("empty").is_empty());
}

#[tokio::test]
async fn routes_by_the_keys_of_the_control_point() {
    const N: usize = 4;
    let server = start_server(N).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    // Find a user and a tenant whose shards differ, so the route tells which key decided.
    let (user, tenant) = (0..)
        .map(|i| (format!("u{i}"), format!("t{i}")))
        .find(|(u, t)| {
            shard_for(routing_hash(u.as_bytes()), N) != shard_for(routing_hash(t.as_bytes()), N)
        })
        .expect("some pair differs");
    let tenant_shard = shard_for(routing_hash(tenant.as_bytes()), N);
    let user_shard = shard_for(routing_hash(user.as_bytes()), N);
    // `db` is limited by tenant: its user label does not route it.
    let db = CheckRequest::new("db")
        .label("user", user.clone())
        .label("tenant", tenant.clone());
    assert_eq!(client.shard_of(&db), Some(tenant_shard));
    let r = client.check(&db).await.expect("check");
    assert_eq!(r.limiters[0].limiter_index as usize, tenant_shard);
    // `api` is limited by user first.
    let api = CheckRequest::new("api")
        .label("tenant", tenant.clone())
        .label("user", user.clone());
    assert_eq!(client.shard_of(&api), Some(user_shard));
    // A control point with no limiter: the shared bucket's shard, whatever the labels.
    let other = CheckRequest::new("other").label("user", user.clone());
    assert_eq!(
        client.shard_of(&other),
        Some(shard_for(routing_hash(b""), N))
    );
}

#[tokio::test]
async fn falls_back_to_version_1_against_a_version_1_server() {
    const N: usize = 2;
    let server = start_server_at(N, "127.0.0.1:0".parse().expect("addr"), Speaks::V1Only).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    assert_eq!(client.version(), ProtocolVersion::V1);
    assert!(client.hello().control_point_routing.is_empty());
    // Version 1 routes by the global keys: user first, even on `db`.
    let db = CheckRequest::new("db")
        .label("user", "u1")
        .label("tenant", "t1");
    assert_eq!(
        client.shard_of(&db),
        Some(shard_for(routing_hash(b"u1"), N))
    );
    // Replies are version 1 (no flow ids); a wait budget is not sent to a version-1 server.
    let r = client
        .check(&req("u1").label("flow", "1").wait(Duration::from_secs(1)))
        .await
        .expect("check");
    assert!(r.accepted());
    assert_eq!(r.flow_ids().count(), 0);
    let r = client
        .check(&req("u2").label("sched", "timeout"))
        .await
        .expect("check");
    assert_eq!(
        r.reason,
        DecisionReason::RateLimited,
        "no NO_TOKENS in version 1"
    );
    assert_eq!(r.refusal(), None);
    assert_eq!(*server.stats.waits.lock().expect("lock"), [None, None]);
    // HELLO of the latest version refused, then HELLO v1, on the shared port only: version
    // 1 needs no HELLO.
    assert_eq!(
        *server.stats.hellos.lock().expect("lock"),
        [(SHARED, PROTOCOL_VERSION, true), (SHARED, 1, false)]
    );
}

#[tokio::test]
async fn a_reconnected_connection_speaks_the_latest_version_again() {
    let server = start_server(0).await;
    let client = Client::connect(cfg(&server, FailMode::Closed))
        .await
        .expect("connect");
    let err = client
        .check(&req("u1").label("drop", "1"))
        .await
        .expect_err("dropped");
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    // The new connection starts with HELLO (latest), so its replies carry flow ids again.
    let r = client
        .check(&req("u2").label("flow", "1"))
        .await
        .expect("after reconnect");
    assert_eq!(r.flow_ids().count(), 1);
    assert_eq!(server.accepted_shared(), 2);
    assert_eq!(
        *server.stats.hellos.lock().expect("lock"),
        [
            (SHARED, PROTOCOL_VERSION, true),
            (SHARED, PROTOCOL_VERSION, true)
        ]
    );
}

/// With an API key, every connection — the shared one, each shard's, and a reconnected one —
/// opens with a `HELLO` carrying it, before anything else.
#[tokio::test]
async fn the_api_key_opens_every_connection() {
    let server = start_server(2).await;
    let mut config = cfg(&server, FailMode::Closed);
    config.api_key = Some(tollgate_protocol::client::ApiKey::new("sesame").expect("key"));
    let client = Client::connect(config).await.expect("connect");
    for user in ["a", "b", "c", "d", "e", "f"] {
        client.check(&req(user)).await.expect("check");
    }
    let err = client
        .check(&req("u1").label("drop", "1"))
        .await
        .expect_err("dropped");
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    client.check(&req("u1")).await.expect("after reconnect");
    let keys = server.stats.hello_keys.lock().expect("lock").clone();
    let hellos = server.stats.hellos.lock().expect("lock").clone();
    let accepted: usize = server.stats.accepted.lock().expect("lock").iter().sum();
    assert_eq!(keys.len(), accepted, "one HELLO per connection: {keys:?}");
    assert!(
        keys.iter().all(|(_, k)| k.as_deref() == Some("sesame")),
        "{keys:?}"
    );
    assert!(hellos.iter().all(|&(_, _, first)| first), "{hellos:?}");
    for listener in [0, 1, SHARED] {
        assert!(
            keys.iter().any(|&(l, _)| l == listener),
            "{listener}: {keys:?}"
        );
    }
}
