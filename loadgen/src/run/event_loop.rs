//! The closed-loop driver for single checks and pings to one Tollgate or Redis target: one
//! task per connection slot owns that slot's sockets and keeps `--pipeline` requests in
//! flight on them, the way redis-benchmark drives Redis.
//!
//! ```text
//!  slot task:  loop { write what is queued ─ wait until a socket is readable ─ read it all ─
//!                     for each reply: record, queue the next request on its owner's socket }
//! ```
//!
//! Why not the general path (`task`): there each of the `--pipeline` requests is a task that
//! goes through the client library (a lock, a request map, a channel to a writer task, a
//! oneshot back, a timer), so at depth 1 the loadgen spent more CPU per request than the server
//! it measured (docs/performance.md, "Loadgen client cost"). Here a reply costs one decode and
//! the next request one encode into a buffer that is written once per wake-up; a socket is read
//! until the kernel has nothing more, so a wake-up costs one `read`, not a read plus an empty
//! one. What is measured stays the same: the latency of each request from its send to its
//! reply, the accuracy ledger, and the per-target tallies.
//!
//! Tollgate: the server's HELLO (through the client library) gives the shard ports and the
//! routing keys; the slot opens one connection per shard port and sends each check to the shard
//! that owns its key (the client library's rule, `RoutingKeys`), with strings inline (no
//! `INTERN`). Pings go to a shard drawn at random per ping, as uniform keys spread checks, or
//! with `--ping-spread rotate` to the shard ports in turn ([`ping_socket`]). Request ids are
//! the request slot's number + 1, so a reply finds its request whatever order the shards
//! answer in. Redis: one connection, replies in order.
//!
//! `--batch N` (Tollgate): a request slot's N checks are drawn one by one and each is written
//! straight into a `CHECK_BATCH` frame on the socket of the shard that owns it
//! ([`CheckBatchWriter`]), so a batch costs one frame per shard, with no request objects and no
//! per-check allocation; the slot's batch is answered when every frame of it is, and its
//! latency is the slowest frame's, as on the general path.
//!
//! Used when the run is closed loop with one target, to a `tollgate` target (single checks,
//! batches or pings) or a `redis` one (single checks or pings); everything else, Redis batches
//! included, takes the general path.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tollgate_protocol::client::{
    CheckRequest, Client, ClientConfig, FailMode, MAX_REPLY_FRAME_LEN,
};
use tollgate_protocol::routing::{routing_hash, shard_for, RoutingKeys};
use tollgate_protocol::smallvec::SmallVec;
use tollgate_protocol::{
    decode_reply, decode_verdict, encode_check, encode_hello, encode_ping, BatchVerdicts,
    CheckBatchWriter, CheckSpec, ErrorRef, ProtocolVersion, Reply, StrRef, Verdict,
};

use crate::drivers::{encode_evalsha, script_verdict, PING_PAYLOAD_LEN, TOKEN_BUCKET_LUA};
use crate::resp::{self, Value};
use crate::run::plan::{set_key, Plan};
use crate::run::shared::Shared;
use crate::run::{Op, PingSpread, RunConfig, Stop};
use crate::stats::Outcome;
use crate::target::Protocol;

/// Read buffer of one socket at first; it grows to hold the largest reply seen.
const READ_CHUNK: usize = 16 * 1024;
/// The request id of the `HELLO` each shard connection sends first (checks use 1..=depth).
const HELLO_ID: u32 = u32::MAX;

/// Whether this driver runs `cfg` (see the module docs).
pub(super) fn handles(cfg: &RunConfig) -> bool {
    // Its sockets are plain TCP and its shard HELLOs carry no key: TLS and API keys go
    // through the client library's driver.
    cfg.access.api_key.is_none()
        && cfg.access.tls.is_none()
        && cfg.rate.is_none()
        && cfg.targets.len() == 1
        && cfg.targets.iter().all(|t| match t.protocol {
            Protocol::Tollgate => true,
            // Redis batches (pipelined or one script) keep the general path's drivers.
            Protocol::Redis => cfg.batch == 1 || cfg.op == Op::Ping,
            _ => false,
        })
}

/// One socket of a slot, with its buffers.
struct Socket {
    stream: TcpStream,
    /// Bytes read and not yet decoded: `read[read_start..]`.
    read: Vec<u8>,
    read_start: usize,
    /// Requests queued for the next write.
    write: Vec<u8>,
    /// The protocol version replies arrive in (Tollgate: set by the `HELLO_REPLY`).
    version: ProtocolVersion,
    /// Redis: the request slots awaiting a reply, in send order.
    fifo: VecDeque<usize>,
}

impl Socket {
    async fn dial(addr: &str) -> Result<Socket, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Socket {
            stream,
            read: Vec::with_capacity(READ_CHUNK),
            read_start: 0,
            write: Vec::with_capacity(READ_CHUNK),
            version: ProtocolVersion::V1,
            fifo: VecDeque::new(),
        })
    }

    /// Writes everything queued.
    async fn flush(&mut self) -> io::Result<()> {
        if self.write.is_empty() {
            return Ok(());
        }
        // Usually the whole buffer goes at once, without waiting.
        let n = match self.stream.try_write(&self.write) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if n < self.write.len() {
            self.stream.write_all(&self.write[n..]).await?;
        }
        self.write.clear();
        Ok(())
    }

    /// Reads what the kernel has without waiting; `Ok(0)` is end of stream, `WouldBlock`
    /// nothing to read. A read that does not fill the buffer also tells tokio the socket is
    /// drained, so the next wait does not cost an empty `read`.
    fn read_ready(&mut self) -> io::Result<usize> {
        if self.read_start > 0 {
            self.read.drain(..self.read_start);
            self.read_start = 0;
        }
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        let spare = self.read.capacity() - self.read.len();
        let (stream, read) = (&self.stream, &mut self.read);
        let mut got = 0;
        let r = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(read)?;
            got = n;
            if n > 0 && n < spare {
                // Short read: the socket is empty now.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
            other => other,
        }
    }
}

/// One connection slot, dialled.
pub(super) struct Slot {
    sockets: Vec<Socket>,
    protocol: Protocol,
    /// Tollgate: which label keys route a check.
    routing: Option<RoutingKeys>,
    /// Redis: the script's SHA1.
    sha: String,
}

impl Slot {
    /// Dials the slot's connections to `plan`'s one target.
    pub(super) async fn connect(plan: &Plan) -> Result<Slot, String> {
        let target = plan
            .cfg
            .targets
            .first()
            .ok_or_else(|| "no target".to_string())?;
        let budget = plan
            .settings
            .connect_timeout
            .saturating_add(plan.settings.request_timeout);
        let dial = async {
            match target.protocol {
                Protocol::Tollgate => Slot::connect_tollgate(plan, &target.addr).await,
                _ => Slot::connect_redis(plan, &target.addr).await,
            }
        };
        tokio::time::timeout(budget, dial)
            .await
            .map_err(|_| format!("connecting to {target} timed out after {budget:?}"))?
    }

    async fn connect_tollgate(plan: &Plan, addr: &str) -> Result<Slot, String> {
        // The handshake through the client library: version, shard ports, routing keys.
        let mut cfg = ClientConfig::new(addr.to_string(), FailMode::Closed);
        cfg.request_timeout = plan.settings.request_timeout;
        cfg.connect_timeout = plan.settings.connect_timeout;
        cfg.client_name = "tollgate-loadgen".into();
        let client = Client::connect(cfg).await.map_err(|e| e.to_string())?;
        let hello = client.hello().clone();
        drop(client);
        // A slot sends one frame per shard port per batch (its request id names the slot).
        let checks_per_frame = if plan.cfg.op == Op::Check {
            plan.cfg.batch
        } else {
            1
        };
        if checks_per_frame > usize::from(hello.max_batch) {
            return Err(format!(
                "{addr} takes at most {} checks per CHECK_BATCH; --batch {checks_per_frame} is more",
                hello.max_batch
            ));
        }
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host,
            None => addr,
        };
        let routed = !hello.shard_ports.is_empty()
            && hello.shard_ports.len() == usize::from(hello.shard_count);
        let addrs: Vec<String> = if routed {
            hello
                .shard_ports
                .iter()
                .map(|p| format!("{host}:{p}"))
                .collect()
        } else {
            vec![addr.to_string()]
        };
        let mut sockets = Vec::with_capacity(addrs.len());
        for a in &addrs {
            let mut s = Socket::dial(a).await?;
            encode_hello(
                &mut s.write,
                HELLO_ID,
                hello.version.as_u16(),
                "tollgate-loadgen",
            )
            .map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| format!("{a}: {e}"))?;
            // Wait for the HELLO_REPLY: replies after it are in the agreed version.
            loop {
                s.stream.readable().await.map_err(|e| format!("{a}: {e}"))?;
                match s.read_ready() {
                    Ok(0) => return Err(format!("{a}: closed during HELLO")),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(format!("{a}: {e}")),
                }
                match decode_reply(&s.read, MAX_REPLY_FRAME_LEN, ProtocolVersion::V1) {
                    Ok(Some(d)) => {
                        s.read_start = d.len;
                        match d.reply {
                            Reply::Hello(h) => s.version = h.version,
                            other => return Err(format!("{a}: HELLO answered {other:?}")),
                        }
                        break;
                    }
                    Ok(None) => continue,
                    Err(e) => return Err(format!("{a}: {e}")),
                }
            }
            sockets.push(s);
        }
        Ok(Slot {
            sockets,
            protocol: Protocol::Tollgate,
            routing: routed.then(|| RoutingKeys::from_hello(&hello)),
            sha: String::new(),
        })
    }

    async fn connect_redis(plan: &Plan, addr: &str) -> Result<Slot, String> {
        let mut s = Socket::dial(addr).await?;
        let mut sha = String::new();
        if plan.cfg.op == Op::Check {
            resp::encode_command(
                &mut s.write,
                &[b"SCRIPT", b"LOAD", TOKEN_BUCKET_LUA.as_bytes()],
            );
            s.flush().await.map_err(|e| e.to_string())?;
            loop {
                s.stream.readable().await.map_err(|e| e.to_string())?;
                match s.read_ready() {
                    Ok(0) => return Err("redis closed during SCRIPT LOAD".into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e.to_string()),
                }
                match resp::decode(&s.read) {
                    Ok(Some((Value::Bulk(Some(b)), used))) => {
                        s.read_start = used;
                        sha = String::from_utf8_lossy(&b).into_owned();
                        break;
                    }
                    Ok(Some((other, _))) => return Err(format!("SCRIPT LOAD answered {other:?}")),
                    Ok(None) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        Ok(Slot {
            sockets: vec![s],
            protocol: Protocol::Redis,
            routing: None,
            sha,
        })
    }
}

/// A request in flight, by request slot.
#[derive(Clone, Copy, Default)]
struct InFlight {
    sent_ns: u64,
    /// Counted in the measured phase (sent after the warm-up).
    measured: bool,
    /// Sent and not answered yet.
    pending: bool,
    /// Its key (`None` for a ping).
    key: Option<usize>,
    tokens: f64,
}

/// `--batch` above 1: what one request slot's batch waits for.
#[derive(Clone, Default)]
struct BatchSlot {
    /// Per socket: the key and tokens of each check in that socket's frame, in frame order
    /// (the order of its `BATCH_REPLY` items).
    parts: Vec<Vec<(usize, f64)>>,
    /// Frames of the batch sent and not answered yet.
    frames_pending: usize,
    /// The batch's answers so far: accepted, rejected, errors.
    counts: [u64; 3],
}

/// One decoded reply of a socket, before it is recorded.
enum Answer {
    /// A single check's or a ping's result, by request slot.
    One(usize, Result<bool, String>),
    /// A `BATCH_REPLY` (or the error that answered a whole `CHECK_BATCH`), by request slot.
    /// Boxed (one allocation per frame of up to 64 checks) so that an answer to a single
    /// check, written and read once per check, is 32 bytes rather than 64.
    Frame(usize, Box<Result<FrameVerdicts, String>>),
}

/// A `BATCH_REPLY`'s verdicts as kept between decoding and recording, without the replies'
/// limiter detail: one bit per item, set if it was admitted, and the failed items' messages.
struct FrameVerdicts {
    /// Items in the frame.
    len: usize,
    /// Bit `i % 64` of word `i / 64`: item `i` was admitted.
    admitted: SmallVec<[u64; 1]>,
    /// Each failed item's error, in item order.
    errors: Vec<String>,
}

impl FrameVerdicts {
    fn new(batch: BatchVerdicts<'_>) -> FrameVerdicts {
        let len = batch.len();
        let mut admitted: SmallVec<[u64; 1]> = SmallVec::from_elem(0, len.div_ceil(64));
        let mut errors = Vec::new();
        for (i, verdict) in batch.into_iter().enumerate() {
            match verdict {
                Ok(true) => {
                    if let Some(word) = admitted.get_mut(i / 64) {
                        *word |= 1 << (i % 64);
                    }
                }
                Ok(false) => {}
                Err(e) => errors.push(server_error(e)),
            }
        }
        FrameVerdicts {
            len,
            admitted,
            errors,
        }
    }

    /// Whether item `i` was admitted.
    fn admitted(&self, i: usize) -> bool {
        self.admitted
            .get(i / 64)
            .is_some_and(|word| word & (1 << (i % 64)) != 0)
    }
}

fn server_error(e: ErrorRef<'_>) -> String {
    format!("server error {:?}: {}", e.code, e.message)
}

/// The connection (shard port), of `sockets`, that request slot `r` of the connection slot
/// whose first task number is `first_task` pings once the slot has had `n` replies.
///
/// [`PingSpread::Random`] draws it from the slot's `rng`, as a uniform key's hash picks a
/// check's shard: the requests that one read's replies call for go to every shard, so each
/// shard's reads and sends are as full as uniform checks make them.
///
/// [`PingSpread::Rotate`]: `first_task + r` numbers the request slot across the run, so the
/// slots start on different shards; `+ n` moves a slot on to the next shard at every reply (at
/// depth 1, at every ping), so every load thread talks to every shard. But with two shards
/// the requests that one read's replies call for mostly go to one shard together, which
/// checks never get: the rotating floor is the IO of fuller reads and sends than checks find.
fn ping_socket(
    spread: PingSpread,
    rng: &mut impl Rng,
    first_task: usize,
    r: usize,
    n: u64,
    sockets: usize,
) -> usize {
    let sockets = sockets.max(1);
    match spread {
        PingSpread::Random => rng.gen_range(0..sockets),
        PingSpread::Rotate => {
            (first_task % sockets + r % sockets + (n % sockets as u64) as usize) % sockets
        }
    }
}

/// Runs slot `slot` (connection slot number `c`) until the run stops.
pub(super) async fn run(slot: Slot, c: usize, shared: Arc<Shared>, plan: Arc<Plan>) {
    let cfg = &plan.cfg;
    let depth = cfg.pipeline;
    let checks_per_request = if cfg.op == Op::Check { cfg.batch } else { 1 };
    let batches = if checks_per_request > 1 {
        let slot = BatchSlot {
            parts: vec![Vec::with_capacity(checks_per_request); slot.sockets.len()],
            ..BatchSlot::default()
        };
        vec![slot; depth]
    } else {
        Vec::new()
    };
    let singles = (plan.templates.iter())
        .map(|(r, _)| Single::new(r.clone(), slot.routing.as_ref()))
        .collect();
    let mut driver = Driver {
        slot,
        recorder_stripe: c,
        records: Vec::with_capacity(depth),
        first_task: c * depth,
        rng: rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add((c * depth) as u64)),
        singles,
        in_flight: vec![InFlight::default(); depth],
        checks_per_request,
        batches,
        outstanding: 0,
        answered: 0,
        stopping: false,
        shared,
        plan: plan.clone(),
    };
    if let Err(e) = driver.drive().await {
        driver.fail(&e);
    }
}

struct Driver {
    slot: Slot,
    /// The connection slot's number: its recorder stripe. Each slot records into its own
    /// stripe (the slot's first task number, `c × depth`, put every slot of a run at depth 64
    /// on stripe 0, and the load threads took turns on one lock).
    recorder_stripe: usize,
    /// The measured answers of the read being handled, `(outcome, latency, count)`:
    /// recorded together when the read is done ([`Driver::replies`]).
    records: Vec<(Outcome, u64, u64)>,
    /// The slot's first task number (`c × depth`): numbers its request slots across the
    /// run, for the rotating ping spread.
    first_task: usize,
    rng: rand::rngs::StdRng,
    /// The slot's own copies of the request templates, rewritten per request.
    singles: Vec<Single>,
    in_flight: Vec<InFlight>,
    /// Checks per request: `--batch` (1: single `CHECK`s, or pings).
    checks_per_request: usize,
    /// Per request slot, when `checks_per_request` is above 1 (else empty).
    batches: Vec<BatchSlot>,
    /// Requests sent and not yet answered.
    outstanding: usize,
    /// Replies received so far (the watchdog's sign of progress).
    answered: u64,
    /// No more requests are sent; the loop ends when `outstanding` is 0.
    stopping: bool,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
}

impl Driver {
    async fn drive(&mut self) -> Result<(), String> {
        let now = self.shared.now_ns();
        for r in 0..self.in_flight.len() {
            self.issue(r, now)?;
        }
        // One timer for the slot, not one per wait: when it fires with no reply received
        // since it was set, the requests in flight have timed out.
        let timeout = self.plan.settings.request_timeout;
        let mut watchdog = Box::pin(tokio::time::sleep(timeout));
        let mut answered_before = self.answered;
        while self.outstanding > 0 {
            for s in &mut self.slot.sockets {
                s.flush().await.map_err(|e| format!("write: {e}"))?;
            }
            let sockets = &self.slot.sockets;
            let readable = std::future::poll_fn(|cx| {
                if sockets
                    .iter()
                    .any(|s| s.stream.poll_read_ready(cx).is_ready())
                {
                    return std::task::Poll::Ready(true);
                }
                match watchdog.as_mut().poll(cx) {
                    std::task::Poll::Ready(()) => std::task::Poll::Ready(false),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
            .await;
            if !readable {
                if self.answered == answered_before {
                    return Err(format!("no reply within {timeout:?}"));
                }
                answered_before = self.answered;
                watchdog
                    .as_mut()
                    .reset(tokio::time::Instant::now() + timeout);
                continue;
            }
            for i in 0..self.slot.sockets.len() {
                while let Some(s) = self.slot.sockets.get_mut(i) {
                    match s.read_ready() {
                        Ok(0) => return Err("connection closed by the server".into()),
                        Ok(_) => self.replies(i)?,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("read: {e}")),
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles every complete reply buffered on socket `i`: decodes them all first and
    /// prefetches the ledger records of their keys, so the records load in parallel rather
    /// than one miss per reply, then records each and sends its slot's next request.
    ///
    /// One clock reading serves the whole read: it is when its replies arrived and when the
    /// requests they call for were sent. Read per reply and per request, the clock was 8% of
    /// the loadgen's CPU at 8 x 64 (docs/performance.md, section:binary-costs), and the
    /// readings differed only by the loop's own work on the same read.
    fn replies(&mut self, i: usize) -> Result<(), String> {
        let now = self.shared.now_ns();
        let mut answers: SmallVec<[Answer; 64]> = SmallVec::new();
        let decoded = self.decode_replies(i, &mut answers);
        for answer in &answers {
            match answer {
                Answer::One(r, _) => {
                    if let Some(key) = self.in_flight.get(*r).and_then(|f| f.key) {
                        self.shared.ledger.prefetch(key);
                    }
                }
                Answer::Frame(r, _) => {
                    let part = self.batches.get(*r).and_then(|b| b.parts.get(i));
                    for &(key, _) in part.into_iter().flatten() {
                        self.shared.ledger.prefetch(key);
                    }
                }
            }
        }
        let completed = answers.into_iter().try_for_each(|answer| match answer {
            Answer::One(r, result) => self.complete(r, result, now),
            Answer::Frame(r, items) => self.complete_frame(r, i, *items, now),
        });
        // The read's measured answers, under one lock.
        self.shared
            .recorder
            .record_all(self.recorder_stripe, 0, &self.records);
        self.records.clear();
        completed?;
        decoded
    }

    /// Decodes the complete replies buffered on socket `i` into `answers`.
    fn decode_replies(
        &mut self,
        i: usize,
        answers: &mut SmallVec<[Answer; 64]>,
    ) -> Result<(), String> {
        let batched = self.checks_per_request > 1;
        loop {
            let Some(s) = self.slot.sockets.get_mut(i) else {
                return Ok(());
            };
            let buf = s.read.get(s.read_start..).unwrap_or_default();
            let answer = match self.slot.protocol {
                Protocol::Tollgate => {
                    let Some(d) = decode_verdict(buf, MAX_REPLY_FRAME_LEN, s.version)
                        .map_err(|e| format!("bad reply: {e}"))?
                    else {
                        return Ok(());
                    };
                    s.read_start += d.len;
                    let r = (d.request_id as usize).wrapping_sub(1);
                    match (d.verdict, batched) {
                        (Verdict::Check(accepted), false) => Answer::One(r, Ok(accepted)),
                        (Verdict::Pong(p), false) if p.len() == PING_PAYLOAD_LEN => {
                            Answer::One(r, Ok(true))
                        }
                        (Verdict::Batch(items), true) => {
                            Answer::Frame(r, Box::new(Ok(FrameVerdicts::new(items))))
                        }
                        (Verdict::Error(e), true) => {
                            Answer::Frame(r, Box::new(Err(server_error(e))))
                        }
                        (Verdict::Error(e), false) => Answer::One(r, Err(server_error(e))),
                        (other, true) => {
                            Answer::Frame(r, Box::new(Err(format!("unexpected reply {other:?}"))))
                        }
                        (other, false) => {
                            Answer::One(r, Err(format!("unexpected reply {other:?}")))
                        }
                    }
                }
                _ => {
                    let Some((value, used)) =
                        resp::decode(buf).map_err(|e| format!("bad redis reply: {e}"))?
                    else {
                        return Ok(());
                    };
                    s.read_start += used;
                    let r = s.fifo.pop_front().unwrap_or(usize::MAX);
                    let result = match value {
                        Value::Simple(p) if p == "PONG" => Ok(true),
                        v => script_verdict(Some(v)),
                    };
                    Answer::One(r, result)
                }
            };
            answers.push(answer);
        }
    }

    /// Records the frame of request slot `r`'s batch that socket `socket` answered (`items`,
    /// in the frame's order); the batch is done, its latency recorded and the slot's next
    /// request sent, when its last frame is answered.
    fn complete_frame(
        &mut self,
        r: usize,
        socket: usize,
        items: Result<FrameVerdicts, String>,
        done: u64,
    ) -> Result<(), String> {
        let id = r.wrapping_add(1);
        let f = match self.in_flight.get(r) {
            Some(f) if f.pending => *f,
            Some(_) => return Err(format!("a reply to request {id}, which is not in flight")),
            None => return Err(format!("reply to unknown request {id}")),
        };
        let shared = &self.shared;
        let Some(b) = self.batches.get_mut(r) else {
            return Err(format!("reply to unknown request {id}"));
        };
        let Some(part) = b.parts.get_mut(socket).filter(|p| !p.is_empty()) else {
            return Err(format!(
                "a reply to request {id} on a connection it was not sent to"
            ));
        };
        let items = items.and_then(|items| match items.len == part.len() {
            true => Ok(items),
            false => Err(format!(
                "BATCH_REPLY has {} items for {} checks",
                items.len,
                part.len()
            )),
        });
        match items {
            Ok(items) => {
                let mut admitted = 0;
                for (i, &(key, tokens)) in part.iter().enumerate() {
                    let given = items.admitted(i).then_some(tokens);
                    shared.ledger.answered(key, f.sent_ns, given, done);
                    admitted += u64::from(given.is_some());
                }
                for e in &items.errors {
                    shared.note_error(e);
                }
                let failed = items.errors.len() as u64;
                b.counts[0] += admitted;
                b.counts[1] += (part.len() as u64).saturating_sub(admitted + failed);
                b.counts[2] += failed;
            }
            Err(e) => {
                shared.note_error(&e);
                for &(key, _) in part.iter() {
                    shared.ledger.answered(key, f.sent_ns, None, done);
                }
                b.counts[2] += part.len() as u64;
            }
        }
        // Cleared: a second reply to this frame is refused above.
        part.clear();
        self.answered += 1;
        b.frames_pending = b.frames_pending.saturating_sub(1);
        if b.frames_pending > 0 {
            return Ok(());
        }
        self.outstanding -= 1;
        if let Some(slot) = self.in_flight.get_mut(r) {
            slot.pending = false;
        }
        if f.measured {
            let latency = done.saturating_sub(f.sent_ns);
            let outcomes = [Outcome::Accepted, Outcome::Rejected, Outcome::Error];
            for (&outcome, &n) in outcomes.iter().zip(&b.counts) {
                if n > 0 {
                    self.records.push((outcome, latency, n));
                }
            }
        }
        self.issue(r, done)
    }

    /// Records request slot `r`'s answer (arrived at `done`) and sends its next request.
    fn complete(
        &mut self,
        r: usize,
        result: Result<bool, String>,
        done: u64,
    ) -> Result<(), String> {
        let Some(f) = self.in_flight.get(r).copied() else {
            return Err(format!("reply to unknown request {}", r.wrapping_add(1)));
        };
        if !f.pending {
            return Err(format!("a second reply to request {}", r.wrapping_add(1)));
        }
        self.outstanding -= 1;
        self.answered += 1;
        if let Some(slot) = self.in_flight.get_mut(r) {
            slot.pending = false;
        }
        if let Some(key) = f.key {
            let given = matches!(result, Ok(true)).then_some(f.tokens);
            self.shared.ledger.answered(key, f.sent_ns, given, done);
        }
        let outcome = match &result {
            Ok(true) => Outcome::Accepted,
            Ok(false) => Outcome::Rejected,
            Err(e) => {
                self.shared.note_error(e);
                Outcome::Error
            }
        };
        if f.measured {
            self.records
                .push((outcome, done.saturating_sub(f.sent_ns), 1));
        }
        self.issue(r, done)
    }

    /// Queues the next request of request slot `r` (sent at `now`), unless the run is ending.
    fn issue(&mut self, r: usize, now: u64) -> Result<(), String> {
        let shared = &self.shared;
        if self.stopping || shared.stop.load(Ordering::Relaxed) {
            self.stopping = true;
            return Ok(());
        }
        let measured = now >= shared.measure_from_ns;
        if measured {
            if now >= shared.measure_until_ns {
                self.stopping = true;
                return Ok(());
            }
            if let Stop::Requests(limit) = self.plan.cfg.stop {
                let checks = self.checks_per_request as u64;
                if shared.issued.fetch_add(checks, Ordering::Relaxed) >= limit {
                    shared.stop.store(true, Ordering::Relaxed);
                    self.stopping = true;
                    return Ok(());
                }
            }
        }
        let id = u32::try_from(r + 1).map_err(|_| "--pipeline too deep".to_string())?;
        let plan = &self.plan;
        let mut f = InFlight {
            sent_ns: now,
            measured,
            pending: true,
            key: None,
            tokens: 0.0,
        };
        if plan.cfg.op == Op::Ping {
            let socket = ping_socket(
                plan.cfg.ping_spread,
                &mut self.rng,
                self.first_task,
                r,
                self.answered,
                self.slot.sockets.len(),
            );
            let Some(s) = self.slot.sockets.get_mut(socket) else {
                return Err("no connection".into());
            };
            match self.slot.protocol {
                Protocol::Tollgate => encode_ping(&mut s.write, id, &[0x5a; PING_PAYLOAD_LEN])
                    .map_err(|e| e.to_string())?,
                _ => {
                    resp::encode_command(&mut s.write, &[b"PING"]);
                    s.fifo.push_back(r);
                }
            }
        } else if self.checks_per_request > 1 {
            self.queue_batch(r, id)?;
        } else {
            let (mix, key) = draw(&mut self.rng, plan);
            let Some(Single { req, route }) = self.singles.get_mut(mix) else {
                return Err("no request template".into());
            };
            set_key(req, &plan.cfg.key_prefix, key);
            f.key = Some(key);
            f.tokens = plan.templates.get(mix).map_or(1.0, |(_, t)| *t);
            let socket = route.socket(req, self.slot.sockets.len());
            let Some(s) = self.slot.sockets.get_mut(socket) else {
                return Err("no connection".into());
            };
            match self.slot.protocol {
                Protocol::Tollgate => {
                    let mut labels = SpecLabels::new();
                    inline_labels(req, &mut labels);
                    let spec = inline_spec(req, &labels);
                    encode_check(&mut s.write, id, &spec).map_err(|e| e.to_string())?;
                }
                _ => {
                    encode_evalsha(
                        &mut s.write,
                        &self.slot.sha,
                        &plan.settings.redis_limit,
                        req,
                    );
                    s.fifo.push_back(r);
                }
            }
        }
        if let Some(slot) = self.in_flight.get_mut(r) {
            *slot = f;
        }
        self.outstanding += 1;
        Ok(())
    }

    /// Writes request slot `r`'s next batch (request id `id`): each check into the
    /// `CHECK_BATCH` frame of the socket of the shard that owns it, one frame per socket that
    /// gets any.
    fn queue_batch(&mut self, r: usize, id: u32) -> Result<(), String> {
        let plan = &self.plan;
        let Some(b) = self.batches.get_mut(r) else {
            return Err("no batch slot".into());
        };
        b.parts.iter_mut().for_each(Vec::clear);
        b.counts = [0; 3];
        let sockets = self.slot.sockets.len();
        let mut writers: SmallVec<[CheckBatchWriter<'_>; 4]> = self
            .slot
            .sockets
            .iter_mut()
            .map(|s| CheckBatchWriter::new(&mut s.write, id))
            .collect();
        let mut written = Ok(());
        for _ in 0..self.checks_per_request {
            let (mix, key) = draw(&mut self.rng, plan);
            let (Some(Single { req, route }), Some((_, tokens))) =
                (self.singles.get_mut(mix), plan.templates.get(mix))
            else {
                written = Err("no request template".into());
                break;
            };
            set_key(req, &plan.cfg.key_prefix, key);
            let socket = route.socket(req, sockets);
            let (Some(w), Some(part)) = (writers.get_mut(socket), b.parts.get_mut(socket)) else {
                written = Err("no connection".into());
                break;
            };
            let mut labels = SpecLabels::new();
            inline_labels(req, &mut labels);
            if let Err(e) = w.check(&inline_spec(req, &labels)) {
                written = Err(e.to_string());
                break;
            }
            part.push((key, *tokens));
        }
        b.frames_pending = 0;
        for w in writers {
            if written.is_err() || w.is_empty() {
                w.abandon();
            } else {
                w.finish().map_err(|e| e.to_string())?;
                b.frames_pending += 1;
            }
        }
        written
    }

    /// The slot's connection failed: every request in flight counts as an error.
    fn fail(&mut self, e: &str) {
        self.shared.note_error(&e.to_string());
        let now = self.shared.now_ns();
        let checks = self.checks_per_request as u64;
        let shared = &self.shared;
        for (r, f) in self.in_flight.iter().enumerate() {
            if !f.pending {
                continue;
            }
            // Its checks may have reached the server: each opens its key's window, as any
            // answer does (crate::accuracy).
            let batch_keys = (self.batches.get(r).into_iter())
                .flat_map(|b| b.parts.iter().flatten())
                .map(|&(key, _)| key);
            for key in f.key.into_iter().chain(batch_keys) {
                shared.ledger.answered(key, f.sent_ns, None, now);
            }
            if f.measured {
                let latency = now.saturating_sub(f.sent_ns);
                shared
                    .recorder
                    .record(self.recorder_stripe, 0, Outcome::Error, latency, checks);
            }
        }
        self.outstanding = 0;
    }
}

/// The next request's mix and key. Nothing of the key's ledger record is touched when it is
/// sent: the record is updated once, when the answer arrives ([`Ledger::answered`]), after
/// the read's replies have prefetched theirs.
///
/// [`Ledger::answered`]: crate::accuracy::Ledger::answered
fn draw(rng: &mut rand::rngs::StdRng, plan: &Plan) -> (usize, usize) {
    (plan.picker.pick(rng), plan.sampler.sample(rng))
}

/// A slot's copy of a request template (its key label rewritten per request), and how its
/// requests find their shard.
struct Single {
    req: CheckRequest,
    route: Route,
}

impl Single {
    fn new(req: CheckRequest, routing: Option<&RoutingKeys>) -> Single {
        let route = match routing {
            None => Route::OneConnection,
            Some(routing) => {
                match routing.routing_label(
                    &req.control_point,
                    req.labels.iter().map(|(k, _)| k.as_str()),
                ) {
                    Some(label) => Route::Label(label),
                    None => Route::Shared,
                }
            }
        };
        Single { req, route }
    }
}

/// Which shard a template's requests go to. The client library's rule
/// ([`RoutingKeys::shard_for`]), with the routing label found once per template rather than
/// per request: a request changes only its key label's value, never its control point or its
/// label keys, and the search (a map lookup by control point, a string comparison per label)
/// was about a tenth of the loadgen's user time at 8 x 64 over 1M keys (docs/performance.md,
/// section:binary-costs, item 17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// The server gave no shard ports: the slot's one connection.
    OneConnection,
    /// By the value of the label at this index.
    Label(usize),
    /// No routing label among the labels: the shard of `""`, the shared bucket.
    Shared,
}

impl Route {
    /// The socket (shard port) of the shard that owns `req`'s bucket, of `sockets`.
    fn socket(self, req: &CheckRequest, sockets: usize) -> usize {
        let value = match self {
            Route::OneConnection => return 0,
            Route::Label(i) => req.labels.get(i).map_or("", |(_, v)| v.as_str()),
            Route::Shared => "",
        };
        shard_for(routing_hash(value.as_bytes()), sockets)
    }
}

/// A check's labels as the encoder takes them.
type SpecLabels<'a> = SmallVec<[(StrRef<'a>, &'a str); 8]>;

/// `req`'s labels with their keys inline (this driver sends no `INTERN`), into `labels`: made
/// in the caller's frame, since a returned `SmallVec` was a 264-byte copy per check.
fn inline_labels<'a>(req: &'a CheckRequest, labels: &mut SpecLabels<'a>) {
    labels.extend(
        req.labels
            .iter()
            .map(|(k, v)| (StrRef::Inline(k.as_str()), v.as_str())),
    );
}

/// `req` as a check spec with its strings inline (no wait budget: closed-loop checks decide
/// at once).
fn inline_spec<'a>(req: &'a CheckRequest, labels: &'a [(StrRef<'a>, &'a str)]) -> CheckSpec<'a> {
    CheckSpec {
        control_point: StrRef::Inline(&req.control_point),
        tokens: req.tokens,
        wait_budget_ms: None,
        labels,
    }
}

#[cfg(test)]
mod ping_tests {
    use super::ping_socket;
    use crate::run::PingSpread;
    use rand::SeedableRng;

    #[test]
    fn rotating_pings_spread_over_the_shard_ports_at_any_depth() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut at = |first_task, r, n, sockets| {
            ping_socket(PingSpread::Rotate, &mut rng, first_task, r, n, sockets)
        };
        // Depth 1 (first task = connection slot): the connection slots start on alternate shards.
        let depth1: Vec<usize> = (0..4).map(|c| at(c, 0, 0, 2)).collect();
        assert_eq!(depth1, [0, 1, 0, 1]);
        // ... and each moves on to the next shard at every ping: a slot talks to both.
        let slot1: Vec<usize> = (0..4).map(|n| at(1, 0, n, 2)).collect();
        assert_eq!(slot1, [1, 0, 1, 0]);
        let three: Vec<usize> = (0..4).map(|n| at(1, 0, n, 3)).collect();
        assert_eq!(three, [1, 2, 0, 1]);
        // Depth 4: within one connection slot the request slots alternate.
        let depth4: Vec<usize> = (0..4).map(|r| at(4, r, 0, 2)).collect();
        assert_eq!(depth4, [0, 1, 0, 1]);
        // Redis and echo: one connection.
        assert_eq!(at(3, 5, 7, 1), 0);
        assert_eq!(at(3, 5, 7, 0), 0);
        assert_eq!(at(usize::MAX, usize::MAX, u64::MAX, 2), 1);
    }

    #[test]
    fn random_pings_draw_each_shard_as_uniform_keys_do() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // About half of the pings go to each of two shards.
        let first = (0..32_000u64)
            .filter(|&n| {
                ping_socket(PingSpread::Random, &mut rng, 64, (n % 64) as usize, n, 2) == 0
            })
            .count();
        let share = first as f64 / 32_000.0;
        assert!(
            (0.48..=0.52).contains(&share),
            "shard 0 got {share:.3} of the pings"
        );
        // A ping's shard does not follow from its slot and reply count, as the rotating
        // rule's does: the same request slot after the same replies goes to both shards.
        let same_slot: Vec<usize> = (0..64)
            .map(|_| ping_socket(PingSpread::Random, &mut rng, 64, 5, 9, 2))
            .collect();
        assert!(
            same_slot.contains(&0) && same_slot.contains(&1),
            "{same_slot:?}"
        );
        // Three shards: every one is used; one connection: always it.
        let three: Vec<usize> = (0..300)
            .map(|n| ping_socket(PingSpread::Random, &mut rng, 0, 0, n, 3))
            .collect();
        assert!((0..3).all(|s| three.contains(&s)), "{three:?}");
        assert!((0..50).all(|n| ping_socket(PingSpread::Random, &mut rng, 0, 0, n, 1) == 0));
        assert!((0..50).all(|n| ping_socket(PingSpread::Random, &mut rng, 0, 0, n, 0) == 0));
    }
}

#[cfg(test)]
mod frame_verdicts_tests {
    use super::FrameVerdicts;
    use tollgate_protocol::{
        decode_verdict, encode_batch_reply, BatchItem, CheckReply, Decision, DecisionReason,
        ErrorCode, ErrorReply, ProtocolVersion, Verdict, DEFAULT_MAX_FRAME_LEN,
    };

    #[test]
    fn a_batch_reply_keeps_each_items_verdict_across_words() {
        // 70 items (two words of bits): every third admitted, every seventh failed.
        let reply = |decision| CheckReply {
            decision,
            reason: DecisionReason::None,
            wait_ns: 0,
            limiters: Default::default(),
        };
        let items: Vec<BatchItem> = (0..70)
            .map(|i| match (i % 7, i % 3) {
                (0, _) => BatchItem::Error(ErrorReply {
                    code: ErrorCode::MalformedFrame,
                    message: format!("item {i}"),
                }),
                (_, 0) => BatchItem::Reply(reply(Decision::Accepted)),
                _ => BatchItem::Reply(reply(Decision::Rejected)),
            })
            .collect();
        let mut frame = Vec::new();
        encode_batch_reply(&mut frame, 1, &items, ProtocolVersion::LATEST).expect("encode");
        let d = decode_verdict(&frame, DEFAULT_MAX_FRAME_LEN, ProtocolVersion::LATEST)
            .expect("valid")
            .expect("whole");
        let Verdict::Batch(batch) = d.verdict else {
            panic!("not a batch: {:?}", d.verdict);
        };
        let v = FrameVerdicts::new(batch);
        assert_eq!(v.len, 70);
        for i in 0..70 {
            assert_eq!(v.admitted(i), i % 7 != 0 && i % 3 == 0, "item {i}");
        }
        assert!(!v.admitted(70), "past the end");
        let failed: Vec<usize> = (0..70).filter(|i| i % 7 == 0).collect();
        assert_eq!(v.errors.len(), failed.len());
        assert!(v.errors[1].ends_with("item 7"), "{:?}", v.errors[1]);
    }
}

#[cfg(test)]
mod route_tests {
    use super::{set_key, Route, Single};
    use tollgate_protocol::client::CheckRequest;
    use tollgate_protocol::routing::{RoutingKeys, HASH_FNV1A_64};
    use tollgate_protocol::{ControlPointRouting, HelloReply, ProtocolVersion};

    fn routing(version: ProtocolVersion) -> RoutingKeys {
        RoutingKeys::from_hello(&HelloReply {
            version,
            node_id: "n".into(),
            shard_count: 4,
            hash_algo: HASH_FNV1A_64,
            shard_index: None,
            shard_ports: vec![],
            routing_label_keys: vec!["tenant".into(), "user".into()],
            policy_names: vec![],
            max_frame_len: 1,
            max_batch: 1,
            max_in_flight: 1,
            control_point_routing: vec![
                ControlPointRouting {
                    control_point: "bench".into(),
                    routing_label_keys: vec!["user".into()],
                },
                ControlPointRouting {
                    control_point: "shared".into(),
                    routing_label_keys: vec![],
                },
            ],
        })
    }

    fn request(control_point: &str, keys: &[&str]) -> CheckRequest {
        CheckRequest {
            control_point: control_point.into(),
            labels: keys
                .iter()
                .map(|k| (k.to_string(), "v".to_string()))
                .collect(),
            tokens: None,
            wait: None,
        }
    }

    #[test]
    fn a_templates_route_sends_every_key_where_the_client_library_does() {
        let templates = [
            request("bench", &["tenant", "user"]),
            request("bench", &["user"]),
            request("bench", &["tenant"]),
            request("shared", &["user"]),
            request("unknown", &["user"]),
            request("bench", &[]),
        ];
        for version in [ProtocolVersion::V1, ProtocolVersion::V2] {
            let routing = routing(version);
            for template in &templates {
                let Single { mut req, route } = Single::new(template.clone(), Some(&routing));
                for key in 0..500 {
                    set_key(&mut req, "user-", key);
                    for sockets in 1..=4 {
                        let labels = req.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                        let expected = routing.shard_for(&req.control_point, labels, sockets);
                        assert_eq!(
                            route.socket(&req, sockets),
                            expected,
                            "{version:?} {req:?} over {sockets} shards"
                        );
                    }
                }
            }
        }
        // Version 2 routes `bench` by `user` alone, `shared` by nothing.
        let v2 = routing(ProtocolVersion::V2);
        let route = |t: &CheckRequest| Single::new(t.clone(), Some(&v2)).route;
        assert_eq!(route(&templates[0]), Route::Label(1));
        assert_eq!(route(&templates[2]), Route::Shared);
        assert_eq!(route(&templates[3]), Route::Shared);
        // Without shard ports, every request takes the one connection.
        let one = Single::new(templates[0].clone(), None);
        assert_eq!(one.route, Route::OneConnection);
        assert_eq!(one.route.socket(&one.req, 4), 0);
    }
}
