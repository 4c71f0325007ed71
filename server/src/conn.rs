//! One binary-protocol connection: bytes -> frames -> checks -> decisions -> reply bytes.
//!
//! Two tasks per connection share an `Outbox`: the reader decodes every complete frame
//! in what it read, answers decisions made at once straight into the outbox, and spawns a
//! task for each check that is pending — it must hop to another shard, or wait in a
//! scheduler's queue (its reply lands in the outbox later, so replies may come out of
//! order — request ids pair them up; a waiting check never holds up the ones behind it).
//! A `CHECK_BATCH` with pending checks gets one task that starts every one at once and
//! writes the `BATCH_REPLY`, in request order, when the last one is decided. After each
//! read the reader sends the replies it produced itself, with one `send` that does not wait,
//! when the writer is idle; otherwise (and for what the kernel did not take) the writer
//! sends whatever accumulated, one `write` per batch. If the socket breaks, pending checks
//! are cancelled, which hands back what they took. Bounds: the read buffer never exceeds
//! `max_frame_len` (checked from the 4-byte prefix before buffering) and grows only as a
//! frame's bytes arrive, never on the prefix's word (`read_buf`), pending checks per
//! connection are capped at `max_in_flight` (OVERLOADED beyond), the reader stops
//! reading while the outbox holds more than `MAX_WRITE_BACKLOG` unsent bytes, and a
//! connection that sends no complete frame for `server.idle_timeout` while nothing of it is
//! pending is closed. Admission (`max_connections`, `max_connections_per_peer`) is
//! [`admission`]'s.
//!
//! Protocol versions: a connection speaks version 1 until a `HELLO` switches it to
//! `min(HELLO.version, 2)`; every reply written after that `HELLO_REPLY` — pending checks'
//! replies too — is encoded in the connection's version of the moment it is written
//! (`Outbox::version`), which is the rule clients decode by. A `CHECK`'s wait budget becomes
//! the client's absolute deadline (`now + budget`), without one the check is decided at once;
//! `FLOW_END` ends flows through [`Shard::end_flows`] (a pending request when an id lives on
//! another shard).

pub mod admission;
mod read_buf;

use crate::clock;
use crate::shard::{PendingCheck, Planned, Shard};
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use read_buf::ReadBuf;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tollgate_policy::{
    Decision, Engine, FlowError, FlowId, OutcomeKind, Refusal, RejectReason, Tokens,
};
use tollgate_protocol::{
    decode_frame, encode_check_reply, encode_error, encode_flow_end_reply, encode_hello_reply,
    encode_members_reply, encode_pong, frame_len, BatchReplyWriter, CheckRef, CheckReply,
    DecisionReason, DecodeError, ErrorCode, FlowEndStatus, FlowIdsRef, Frame, InternTable,
    LimiterOutcome, LimiterResult, ProtocolVersion, PROTOCOL_VERSION,
};

/// Unsent reply bytes above which the reader stops reading: a client that does not read
/// its replies cannot make the server buffer without bound.
const MAX_WRITE_BACKLOG: usize = 4 * 1024 * 1024;

/// Checks whose buckets the reader prefetches before deciding them (see `Reader::run`).
/// Why this value: enough misses in flight to cover a DRAM round trip (the CPU tracks a
/// dozen or two outstanding lines), and a window's two lines per bucket (~8 KiB at 64)
/// stay well inside L1/L2 until pass 2 uses them; one `CHECK_BATCH` of the loadgen's 64.
const PREFETCH_WINDOW: usize = 64;

/// Reply bytes shared by the reader, pending-check tasks and the writer.
struct Outbox {
    bytes: RefCell<Vec<u8>>,
    /// The protocol version replies are encoded in: 1 until a `HELLO` switches it.
    version: Cell<ProtocolVersion>,
    /// Wakes the writer (capacity 1: a pending wake covers any number of appends).
    wake: LocalSender<()>,
    /// Pending checks (hops, waits) not yet answered.
    in_flight: Cell<usize>,
    /// Resolves when the socket breaks: pending checks race it, and are dropped (handing
    /// back what they took) when it wins.
    gone: Shared<oneshot::Receiver<()>>,
    /// Dropped when the socket breaks, which resolves `gone`.
    breaks: RefCell<Option<oneshot::Sender<()>>>,
    /// Signalled when a pending check finishes (the reader may be waiting to close).
    settled: LocalSender<()>,
    /// Signalled by the writer after each write (the reader may be waiting on backlog).
    drained: LocalSender<()>,
    /// The reader is done: the writer exits once the bytes are sent.
    finished: Cell<bool>,
    /// The socket failed: stop producing.
    broken: Cell<bool>,
    /// The writer task has bytes in flight (taken from `bytes`, not all sent yet): newer
    /// bytes must wait for it, to keep their order.
    writing: Cell<bool>,
    /// The connection's socket, for [`Outbox::send_now`].
    fd: std::os::fd::RawFd,
}

impl Outbox {
    fn notify_writer(&self) {
        let _ = self.wake.try_send(());
    }

    /// Sends what is pending from the reader itself when the writer is idle: one `send`
    /// that does not wait (MSG_DONTWAIT), instead of waking the writer task for a write
    /// through the ring. At low depth that is most replies, and it saves a task switch
    /// and a ring round trip each. What the kernel does not take at once (a full socket
    /// buffer, an error) is left to the writer, which waits or reports.
    fn send_now(&self) {
        if !self.writing.get() && !self.broken.get() {
            let mut bytes = self.bytes.borrow_mut();
            // SAFETY: `fd` is this connection's socket, open for as long as the connection
            // (the reader owns it); the pointer and length describe `bytes`' initialised
            // contents, which the kernel only reads.
            let sent = unsafe {
                libc::send(
                    self.fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if let Ok(n) = usize::try_from(sent) {
                let pending = bytes.len();
                bytes.drain(..n.min(pending));
            }
            if bytes.is_empty() {
                let _ = self.drained.try_send(());
                return;
            }
        }
        self.notify_writer();
    }

    /// The socket failed: stop producing, and cancel pending checks.
    fn mark_broken(&self) {
        self.broken.set(true);
        self.breaks.borrow_mut().take();
        let _ = self.drained.try_send(());
        let _ = self.settled.try_send(());
    }

    /// Spawns a pending check's task: counted in `in_flight`, cancelled if the socket
    /// breaks, and `finish`ed when done either way.
    fn spawn_pending(self: &Rc<Self>, work: impl std::future::Future<Output = ()> + 'static) {
        self.in_flight.set(self.in_flight.get() + 1);
        let out = self.clone();
        glommio::spawn_local(async move {
            let gone = out.gone.clone();
            futures::pin_mut!(work);
            // Either the work wrote its reply, or the socket broke and dropping the work
            // handed back what its checks took.
            let _ = futures::future::select(work, gone).await;
            finish_pending(&out);
        })
        .detach();
    }
}

/// Serves one accepted connection until EOF, a fatal framing error or a broken socket.
/// `shard_index` is Some on a shard-aware port (reported in HELLO).
pub async fn serve(shard: Rc<Shard>, stream: TcpStream, shard_index: Option<u16>) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket for the writer task: reads and writes proceed
    // independently with no lock between them.
    // SAFETY: dup returns a new descriptor we own; TcpStream closes it on drop.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "dup failed; closing connection");
        return;
    }
    // SAFETY: `dup` is a fresh, open socket descriptor owned by nobody else.
    let writer = unsafe { TcpStream::from_raw_fd(dup) };
    let (wake, woken) = local_channel::new_bounded(1);
    let (settled, settled_rx) = local_channel::new_bounded(1);
    let (drained, drained_rx) = local_channel::new_bounded(1);
    let (breaks, gone) = oneshot::channel();
    let out = Rc::new(Outbox {
        bytes: RefCell::new(Vec::with_capacity(16 * 1024)),
        version: Cell::new(ProtocolVersion::V1),
        wake,
        in_flight: Cell::new(0),
        gone: gone.shared(),
        breaks: RefCell::new(Some(breaks)),
        settled,
        drained,
        finished: Cell::new(false),
        broken: Cell::new(false),
        writing: Cell::new(false),
        fd: stream.as_raw_fd(),
    });
    let writer_task = glommio::spawn_local(write_loop(out.clone(), writer, woken));
    let mut reader = Reader {
        shard,
        out: out.clone(),
        stream,
        intern: InternTable::new(),
        shard_index,
    };
    reader.run(&drained_rx).await;
    while out.in_flight.get() > 0 && !out.broken.get() {
        let _ = settled_rx.recv().await;
    }
    out.finished.set(true);
    out.notify_writer();
    writer_task.await;
}

struct Reader {
    shard: Rc<Shard>,
    out: Rc<Outbox>,
    stream: TcpStream,
    intern: InternTable,
    shard_index: Option<u16>,
}

impl Reader {
    async fn run(&mut self, drained: &LocalReceiver<()>) {
        let max_frame_len = self.shard.node.limits.max_frame_len;
        let idle_timeout = self.shard.node.limits.idle_timeout;
        let mut buf = ReadBuf::new();
        // When the last complete frame came in (or the connection opened).
        let mut last_frame = Instant::now();
        loop {
            // Answer every whole frame we have, a window at a time: first start loading the
            // buckets of the window's checks (pass 1), then decide them (pass 2), so their
            // cache misses overlap instead of being paid one after another.
            let now = clock::now_ns();
            let mut any_frame = false;
            'windows: loop {
                self.prefetch_window(buf.data(), max_frame_len);
                let mut checks = 0;
                loop {
                    match decode_frame(buf.data(), max_frame_len) {
                        Ok(Some(decoded)) => {
                            any_frame = true;
                            let len = decoded.len;
                            checks += checks_in(&decoded.frame);
                            self.handle(decoded.request_id, decoded.frame, now);
                            buf.consume(len);
                            if checks >= PREFETCH_WINDOW {
                                continue 'windows;
                            }
                        }
                        Ok(None) => break 'windows,
                        Err(DecodeError::Body {
                            code,
                            reason,
                            request_id,
                            frame_len,
                            ..
                        }) => {
                            any_frame = true;
                            encode_error(
                                &mut self.out.bytes.borrow_mut(),
                                request_id,
                                code,
                                reason,
                            );
                            buf.consume(frame_len);
                        }
                        Err(e @ DecodeError::Framing { .. }) => {
                            tracing::debug!(error = %e, "closing connection: framing lost");
                            encode_error(
                                &mut self.out.bytes.borrow_mut(),
                                0,
                                e.code(),
                                &e.to_string(),
                            );
                            self.out.notify_writer();
                            return;
                        }
                    }
                }
            }
            if any_frame {
                last_frame = Instant::now();
            }
            self.shard.metrics().binary_read_done(now);
            if !self.out.bytes.borrow().is_empty() {
                self.out.send_now();
            }
            // Make room: move a partial frame to the front; grow only as its bytes arrive.
            let frame_total = frame_len(buf.data(), max_frame_len).ok().flatten();
            buf.make_room(frame_total);
            // Backpressure: let the writer catch up before reading more requests.
            while self.out.bytes.borrow().len() > MAX_WRITE_BACKLOG && !self.out.broken.get() {
                let _ = drained.recv().await;
            }
            if self.out.broken.get() {
                return;
            }
            if let Some(idle) = idle_timeout {
                // Bytes that complete no frame do not count: a peer trickling a frame is
                // closed like a silent one.
                let left = (last_frame + idle).saturating_duration_since(Instant::now());
                let _ = self
                    .stream
                    .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            }
            match self.stream.read(buf.spare()).await {
                Ok(0) => return,
                Ok(n) => buf.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    if self.out.in_flight.get() > 0 {
                        // Its client is waiting for replies, not idle.
                        last_frame = Instant::now();
                        continue;
                    }
                    if Instant::now() >= last_frame + idle_timeout.unwrap_or_default() {
                        tracing::debug!(
                            idle_timeout = ?idle_timeout,
                            "closing connection: no complete frame within server.idle_timeout"
                        );
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return;
                }
            }
        }
    }

    /// Pass 1 of a window: starts loading the buckets of the checks in the next
    /// [`PREFETCH_WINDOW`] checks' worth of complete frames in `data` (see
    /// `Shard::prefetch`). Decides and answers nothing; a frame it cannot read is left to
    /// pass 2 to report. Strings an `INTERN` in the same window binds are not known yet, so
    /// the checks using them are not prefetched (they are decided all the same).
    fn prefetch_window(&self, data: &[u8], max_frame_len: u32) {
        let mut at = 0;
        let mut checks = 0;
        while checks < PREFETCH_WINDOW {
            let Some(rest) = data.get(at..) else { return };
            let Ok(Some(decoded)) = decode_frame(rest, max_frame_len) else {
                return;
            };
            at += decoded.len;
            match decoded.frame {
                Frame::Check(check) => {
                    checks += 1;
                    self.prefetch(&check);
                }
                Frame::CheckBatch(batch) => {
                    for check in batch.iter() {
                        checks += 1;
                        self.prefetch(&check);
                    }
                }
                _ => {}
            }
        }
    }

    fn prefetch(&self, check: &CheckRef<'_>) {
        if let Ok((cp, labels, tokens)) = self.resolve(check) {
            self.shard.prefetch(cp, labels.as_slice(), tokens);
        }
    }

    fn handle(&mut self, request_id: u32, frame: Frame<'_>, now: u64) {
        match frame {
            Frame::Check(check) => self.check(request_id, check, now),
            Frame::CheckBatch(batch) => self.batch(request_id, batch.iter(), now),
            Frame::Intern { id, value } => {
                if let Err(e) = self.intern.bind(id, value) {
                    encode_error(
                        &mut self.out.bytes.borrow_mut(),
                        request_id,
                        ErrorCode::BadRequest,
                        &e.to_string(),
                    );
                }
            }
            Frame::Hello(hello) => {
                let mut out = self.out.bytes.borrow_mut();
                match ProtocolVersion::negotiate(hello.version) {
                    None => {
                        let msg = format!(
                            "protocol version {} does not exist; this server speaks versions 1 \
                             to {PROTOCOL_VERSION}",
                            hello.version
                        );
                        encode_error(&mut out, request_id, ErrorCode::UnsupportedVersion, &msg);
                    }
                    Some(version) => {
                        let reply = self.shard.node.hello(self.shard_index, version);
                        match encode_hello_reply(&mut out, request_id, &reply) {
                            // Every frame written after this reply is in `version`.
                            Ok(()) => self.out.version.set(version),
                            Err(e) => encode_error(
                                &mut out,
                                request_id,
                                ErrorCode::Internal,
                                &e.to_string(),
                            ),
                        }
                    }
                }
            }
            Frame::FlowEnd(ids) => self.flow_end(request_id, ids),
            Frame::Members => {
                let members = self.shard.node.member_list();
                let mut out = self.out.bytes.borrow_mut();
                if let Err(e) = encode_members_reply(&mut out, request_id, &members) {
                    encode_error(&mut out, request_id, ErrorCode::Internal, &e.to_string());
                }
            }
            Frame::Ping(payload) => {
                let mut out = self.out.bytes.borrow_mut();
                if let Err(e) = encode_pong(&mut out, request_id, payload) {
                    encode_error(&mut out, request_id, ErrorCode::Internal, &e.to_string());
                }
            }
        }
    }

    /// A check's control point, labels and tokens with interned strings resolved.
    fn resolve<'s>(&'s self, check: &CheckRef<'s>) -> Result<Resolved<'s>, (ErrorCode, String)> {
        let unknown = |id| {
            (
                ErrorCode::UnknownInternedId,
                format!("interned id {id} is not bound on this connection"),
            )
        };
        let cp = match self.intern.resolve(check.control_point()) {
            Some(cp) => cp,
            None => return Err(unknown(str_ref_id(check.control_point()))),
        };
        let mut labels: SmallVec<[(&str, &str); 8]> = SmallVec::new();
        for (key, value) in check.labels() {
            match self.intern.resolve(key) {
                Some(k) => labels.push((k, value)),
                None => return Err(unknown(str_ref_id(key))),
            }
        }
        // The decoder already refused a negative or non-finite tokens field.
        let tokens = match check.tokens().map(Tokens::new).transpose() {
            Ok(t) => t,
            Err(e) => return Err((ErrorCode::BadRequest, format!("tokens {e}"))),
        };
        Ok((cp, labels, tokens))
    }

    /// Resolves interned strings and plans; Ok(None) means an error reply was written.
    fn plan(&self, check: &CheckRef<'_>, now: u64) -> Result<Planned, (ErrorCode, String)> {
        let (cp, labels, tokens) = self.resolve(check)?;
        // The client's absolute deadline: its wait budget from now; without one, now (decided
        // at once, never queued).
        let budget_ns = check
            .wait_budget_ms()
            .map_or(0, |ms| u64::from(ms) * 1_000_000);
        let deadline = Some(now.saturating_add(budget_ns));
        self.shard
            .decide_now(cp, labels.as_slice(), tokens, deadline, now)
            .map_err(|e: FlowError| (ErrorCode::BadRequest, e.to_string()))
    }

    /// Whether another pending check fits on this connection; if not, answers OVERLOADED.
    fn admit_pending(&self, request_id: u32) -> bool {
        if self.out.in_flight.get() < self.shard.node.limits.max_in_flight {
            return true;
        }
        self.shard.metrics().overloaded();
        encode_error(
            &mut self.out.bytes.borrow_mut(),
            request_id,
            ErrorCode::Overloaded,
            "too many requests in flight on this connection",
        );
        false
    }

    fn check(&mut self, request_id: u32, check: CheckRef<'_>, now: u64) {
        match self.plan(&check, now) {
            Ok(Planned::Decided(decision)) => {
                self.shard.metrics().binary_answered(decision.accepted);
                write_reply(
                    &mut self.out.bytes.borrow_mut(),
                    request_id,
                    &self.shard.engine(),
                    self.out.version.get(),
                    &decision,
                );
            }
            Ok(Planned::Pending(pending)) => {
                // Refused OVERLOADED: dropping `pending` hands back what it took.
                if !self.admit_pending(request_id) {
                    return;
                }
                let (shard, out) = (self.shard.clone(), self.out.clone());
                self.out.spawn_pending(async move {
                    let decision = pending.decide().await;
                    shard
                        .metrics()
                        .binary_answered_later(decision.accepted, now);
                    write_reply(
                        &mut out.bytes.borrow_mut(),
                        request_id,
                        &shard.engine(),
                        out.version.get(),
                        &decision,
                    );
                });
            }
            Err((code, message)) => {
                self.shard.metrics().binary_error();
                encode_error(&mut self.out.bytes.borrow_mut(), request_id, code, &message)
            }
        }
    }

    fn batch<'a>(
        &mut self,
        request_id: u32,
        checks: impl ExactSizeIterator<Item = CheckRef<'a>>,
        now: u64,
    ) {
        let mut results: Vec<BatchSlot> = Vec::with_capacity(checks.len());
        let mut pending: Vec<(usize, Box<PendingCheck>)> = Vec::new();
        for check in checks {
            match self.plan(&check, now) {
                Ok(Planned::Decided(d)) => {
                    self.shard.metrics().binary_answered(d.accepted);
                    results.push(BatchSlot::Done(d))
                }
                Ok(Planned::Pending(p)) => {
                    pending.push((results.len(), p));
                    results.push(BatchSlot::Pending);
                }
                Err(e) => {
                    self.shard.metrics().binary_error();
                    results.push(BatchSlot::Failed(e.0, e.1))
                }
            }
        }
        if pending.is_empty() {
            write_batch(
                &mut self.out.bytes.borrow_mut(),
                request_id,
                &self.shard.engine(),
                self.out.version.get(),
                &results,
            );
            return;
        }
        // Refused OVERLOADED: dropping `pending` hands back what its checks took (the
        // batch's checks decided at once keep theirs, as a batch is independent checks).
        if !self.admit_pending(request_id) {
            return;
        }
        let (shard, out) = (self.shard.clone(), self.out.clone());
        self.out.spawn_pending(async move {
            // Start every pending check before awaiting any: each queues its hops and
            // offers when first polled, so the whole batch is in flight together (one round
            // trip, not one per check) and its waits overlap.
            let decided = futures::future::join_all(
                pending
                    .into_iter()
                    .map(|(slot, p)| async move { (slot, p.decide().await) }),
            )
            .await;
            for (slot, decision) in decided {
                shard
                    .metrics()
                    .binary_answered_later(decision.accepted, now);
                results[slot] = BatchSlot::Done(decision);
            }
            write_batch(
                &mut out.bytes.borrow_mut(),
                request_id,
                &shard.engine(),
                out.version.get(),
                &results,
            );
        });
    }

    /// `FLOW_END`: ends each flow on the shard its id names. Answered at once when every id
    /// is this shard's; otherwise a pending request (counted, OVERLOADED beyond the limit)
    /// whose ends hop.
    fn flow_end(&mut self, request_id: u32, ids: FlowIdsRef<'_>) {
        let ids: Vec<FlowId> = ids.iter().map(FlowId::from_u64).collect();
        if ids.iter().all(|id| id.shard() == self.shard.id) {
            let ended: Vec<bool> = ids.iter().map(|&id| self.shard.end_flow_here(id)).collect();
            write_flow_end(&mut self.out.bytes.borrow_mut(), request_id, &ended);
            return;
        }
        if !self.admit_pending(request_id) {
            return;
        }
        let (shard, out) = (self.shard.clone(), self.out.clone());
        self.out.spawn_pending(async move {
            let ended = shard.end_flows(&ids).await;
            write_flow_end(&mut out.bytes.borrow_mut(), request_id, &ended);
        });
    }
}

/// Checks a frame carries.
fn checks_in(frame: &Frame<'_>) -> usize {
    match frame {
        Frame::Check(_) => 1,
        Frame::CheckBatch(batch) => batch.len(),
        _ => 0,
    }
}

/// A check's control point, labels (keys resolved) and tokens.
type Resolved<'a> = (&'a str, SmallVec<[(&'a str, &'a str); 8]>, Option<Tokens>);

fn str_ref_id(r: tollgate_protocol::StrRef<'_>) -> u16 {
    match r {
        tollgate_protocol::StrRef::Interned(id) => id,
        tollgate_protocol::StrRef::Inline(_) => 0,
    }
}

fn finish_pending(out: &Outbox) {
    out.in_flight.set(out.in_flight.get() - 1);
    out.notify_writer();
    let _ = out.settled.try_send(());
}

enum BatchSlot {
    Done(Decision),
    Pending,
    Failed(ErrorCode, String),
}

/// The wire form of a decision (everything version 2 carries; the encoder drops what the
/// connection's version cannot).
pub fn check_reply(engine: &Engine, d: &Decision) -> CheckReply {
    CheckReply {
        decision: if d.accepted {
            tollgate_protocol::Decision::Accepted
        } else {
            tollgate_protocol::Decision::Rejected
        },
        reason: match d.reject_reason(engine) {
            None => DecisionReason::None,
            Some(RejectReason::RateLimited) => DecisionReason::RateLimited,
            Some(RejectReason::NoTokens) => DecisionReason::NoTokens,
        },
        wait_ns: d.wait_ns,
        // Described with the shard's engine at reply time: a limiter a reload removed
        // meanwhile is still described by the predecessor kept for that; one neither knows
        // (two reloads during one check) is left out of the per-limiter results.
        limiters: d
            .limiters
            .iter()
            .filter_map(|o| Some((o, engine.describe(o.limiter)?)))
            .map(|(o, spec)| LimiterResult {
                limiter_index: spec.position,
                outcome: match o.kind {
                    OutcomeKind::Accepted => LimiterOutcome::Accepted,
                    OutcomeKind::Rejected => LimiterOutcome::Rejected,
                    OutcomeKind::KeyNotFound => LimiterOutcome::KeyNotFound,
                    OutcomeKind::Returned => LimiterOutcome::Returned,
                },
                status_code: spec.denied_status_code,
                tokens: o.tokens,
                remaining: o.remaining,
                current: o.current,
                wait_ns: o.wait_ns,
                // Only a flow that still holds its tokens can be ended; a returned one cannot.
                flow_id: o
                    .flow
                    .filter(|_| o.kind == OutcomeKind::Accepted)
                    .and_then(|f| NonZeroU64::new(f.get())),
                refusal: o.refusal.map(|r| match r {
                    Refusal::Exhausted => tollgate_protocol::Refusal::Exhausted,
                    Refusal::TimedOut => tollgate_protocol::Refusal::TimedOut,
                    Refusal::QueueFull => tollgate_protocol::Refusal::QueueFull,
                    Refusal::TooManyFlows => tollgate_protocol::Refusal::TooManyFlows,
                    Refusal::ShuttingDown => tollgate_protocol::Refusal::ShuttingDown,
                    Refusal::Removed => tollgate_protocol::Refusal::Removed,
                }),
            })
            .collect(),
    }
}

fn write_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    engine: &Engine,
    version: ProtocolVersion,
    d: &Decision,
) {
    if let Err(e) = encode_check_reply(out, request_id, &check_reply(engine, d), version) {
        encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
    }
}

fn write_flow_end(out: &mut Vec<u8>, request_id: u32, ended: &[bool]) {
    let statuses: Vec<FlowEndStatus> = ended
        .iter()
        .map(|&e| FlowEndStatus::from_ended(e))
        .collect();
    if let Err(e) = encode_flow_end_reply(out, request_id, &statuses) {
        encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
    }
}

fn write_batch(
    out: &mut Vec<u8>,
    request_id: u32,
    engine: &Engine,
    version: ProtocolVersion,
    results: &[BatchSlot],
) {
    let mut writer = match BatchReplyWriter::new(out, request_id, results.len(), version) {
        Ok(w) => w,
        Err(e) => {
            encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
            return;
        }
    };
    for r in results {
        let item = match r {
            BatchSlot::Done(d) => writer.reply(&check_reply(engine, d)),
            BatchSlot::Failed(code, msg) => writer.error(*code, msg),
            BatchSlot::Pending => writer.error(ErrorCode::Internal, "check was not decided"),
        };
        if let Err(e) = item {
            writer.abandon();
            encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
            return;
        }
    }
    if let Err(e) = writer.finish() {
        encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
    }
}

async fn write_loop(out: Rc<Outbox>, mut stream: TcpStream, woken: LocalReceiver<()>) {
    let mut sending = Vec::with_capacity(16 * 1024);
    loop {
        std::mem::swap(&mut sending, &mut *out.bytes.borrow_mut());
        if sending.is_empty() {
            if out.finished.get() {
                break;
            }
            if woken.recv().await.is_none() {
                break;
            }
            continue;
        }
        out.writing.set(true);
        let written = stream.write_all(&sending).await;
        out.writing.set(false);
        if let Err(e) = written {
            tracing::debug!(error = %e, "connection write failed");
            out.mark_broken();
            return;
        }
        sending.clear();
        let _ = out.drained.try_send(());
    }
    let _ = stream.flush().await;
    let _ = stream.close().await;
}
