//! One binary-protocol connection: bytes -> frames -> checks -> decisions -> reply bytes.
//!
//! Two tasks per connection share an `Outbox`: the reader decodes every complete frame
//! in what it read, answers decisions made at once straight into the outbox, and spawns a
//! task for each check that is pending — it must hop to another shard, or wait in a
//! scheduler's queue (its reply lands in the outbox later, so replies may come out of
//! order — request ids pair them up; a waiting check never holds up the ones behind it).
//! A `CHECK_BATCH` with pending checks gets one task that starts every one at once and
//! writes the `BATCH_REPLY`, in request order, when the last one is decided. The writer
//! sends whatever accumulated, one `write` per batch. If the socket breaks, pending checks
//! are cancelled, which hands back what they took. Bounds: the read buffer never exceeds
//! `max_frame_len` (checked from the 4-byte prefix before buffering) and grows only as a
//! frame's bytes arrive, never on the prefix's word (`read_buf`), pending checks per
//! connection are capped at `max_in_flight` (OVERLOADED beyond), the reader stops
//! reading while the outbox holds more than `MAX_WRITE_BACKLOG` unsent bytes, and a
//! connection that sends no complete frame for `server.idle_timeout` while nothing of it is
//! pending is closed (the reader notes each read that completes a frame in the connection's
//! [`idle::Activity`]; the shard's sweep over its [`registry`] does the closing). Admission
//! (`max_connections`, `max_connections_per_peer`) is [`admission`]'s.
//!
//! Access ([`access`]): with `server.binary_tls` the connection first completes a TLS
//! handshake (within [`tls::handshake_timeout`]); the read and write loops then run over the
//! TLS stream exactly as over plain TCP ([`transport`]). With `server.api_keys` the reader
//! starts unauthenticated and lets nothing through but a `HELLO` carrying a valid key
//! ([`access::gate`]); anything else is answered `UNAUTHENTICATED` and the connection closes
//! with nothing applied. After that it is one bool per frame.
//!
//! Protocol versions: a connection speaks version 1 until a `HELLO` switches it to
//! `min(HELLO.version, 3)`; every reply written after that `HELLO_REPLY` — pending checks'
//! replies too — is encoded in the connection's version of the moment it is written
//! (`Outbox::version`), which is the rule clients decode by; their `limiter_index`es index
//! that `HELLO_REPLY`'s `policy_names`, whatever reloads change meanwhile ([`hello_positions`]). A `CHECK`'s wait budget becomes
//! the client's absolute deadline (`now + budget`), without one the check is decided at once;
//! `FLOW_END` ends flows through [`Shard::end_flows`] (a pending request when an id lives on
//! another shard).

pub mod access;
pub mod admission;
pub mod hello_positions;
pub mod idle;
mod pass_buffers;
mod read_buf;
pub mod refusal_log;
pub mod registry;
pub mod tls;
pub mod transport;

use crate::clock;
use crate::shard::{PendingCheck, Planned, Shard};
use access::Gate;
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use hello_positions::HelloPositions;
use pass_buffers::{recycle, PassBuffers};
use read_buf::ReadBuf;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::ops::Range;
use std::rc::Rc;
use tollgate_policy::{
    Decision, Engine, FlowError, FlowId, OutcomeKind, Plan, Refusal, RejectReason, Tokens,
};
use tollgate_protocol::{
    decode_frame, encode_check_reply_from, encode_error, encode_flow_end_reply, encode_hello_reply,
    encode_members_reply, encode_pong, frame_len, BatchReplyWriter, CheckRef, DecisionReason,
    DecodeError, Decoded, ErrorCode, FlowEndStatus, FlowIdsRef, Frame, InternTable, LimiterOutcome,
    LimiterResult, ProtocolVersion, ReplyHead, PROTOCOL_VERSION,
};

/// Why a request that would wait is refused: the connection holds its most pending requests.
const NO_ROOM: &str = "too many requests in flight on this connection";

/// Unsent reply bytes above which the reader stops reading: a client that does not read
/// its replies cannot make the server buffer without bound.
const MAX_WRITE_BACKLOG: usize = 4 * 1024 * 1024;

/// Checks a `CHECK_BATCH` (or a run of pipelined `CHECK` frames in one read) needs before it
/// is decided in passes (planned, its buckets prefetched, then decided:
/// [`Reader::decide_prefetched`]). Why this value: a few checks overlap few misses, and do
/// not earn back keeping their labels and plans; at 8 and more the misses they overlap cost
/// far more (docs/performance.md, "CHECK_BATCH").
const PREFETCH_MIN_BATCH: usize = 8;

/// Live buckets a shard needs before a `CHECK_BATCH` is decided in passes. Why this value:
/// the passes cost (the checks are collected, their labels and plans kept), which pays only
/// when buckets miss the caches, and a batch's table stays cached between frames (a batch
/// of 64 costs the kernel one small read, not 64 checks' worth of network path). At 10K keys
/// the passes cost batches 7% and 24% of their throughput in two pairs (docs/performance.md,
/// section:binary-costs, item 18); at 500K a shard (1M keys on 2 shards, DRAM) they gained
/// 12% ("CHECK_BATCH").
///
/// A run of pipelined `CHECK` frames has no such threshold: it is decided in passes at any
/// table size. Between two reads of single checks the kernel's network path runs, and a
/// check's code and buckets are cold again; deciding the run a step at a time over all its
/// checks (resolve, plan, prefetch, decide) cost the server less time per check at 1K to
/// 100K keys in 11 of 12 pairs (up to 0.24 µs; the same in the other), and with one hot key
/// less in 4 of 5 pairs (item 18).
const BATCH_PREFETCH_MIN_BUCKETS: usize = 1 << 16;

/// Bytes a read needs before its `CHECK` frames are looked at as a run (about
/// [`PREFETCH_MIN_BATCH`] checks of a shard-aware client: an interned control point, one
/// interned label key and a short value).
const PREFETCH_MIN_READ: usize = PREFETCH_MIN_BATCH * 24;

/// Reply bytes shared by the reader, pending-check tasks and the writer.
struct Outbox {
    bytes: RefCell<Vec<u8>>,
    /// The protocol version replies are encoded in: 1 until a `HELLO` switches it.
    version: Cell<ProtocolVersion>,
    /// What replies' `limiter_index` indexes: the `policy_names` of the last `HELLO_REPLY`
    /// (None until a `HELLO`: the policies' places of the moment).
    positions: RefCell<Option<Rc<HelloPositions>>>,
    /// Wakes the writer (capacity 1: a pending wake covers any number of appends).
    wake: LocalSender<()>,
    /// Pending checks (hops, waits) not yet answered, and when the connection last
    /// completed a frame: what the shard's idle sweep reads.
    activity: Rc<idle::Activity>,
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
}

impl Outbox {
    /// Writes `d` as the `CHECK_REPLY` to `request_id`, in the connection's version and
    /// with its `limiter_index`es.
    fn reply(&self, request_id: u32, engine: &Engine, d: &Decision) {
        let positions = self.positions.borrow();
        let form = ReplyForm {
            version: self.version.get(),
            positions: positions.as_deref(),
        };
        write_reply(&mut self.bytes.borrow_mut(), request_id, engine, form, d);
    }

    /// Writes `results` as the `BATCH_REPLY` to `request_id` (see [`Outbox::reply`]).
    fn batch_reply(&self, request_id: u32, engine: &Engine, results: &[BatchSlot]) {
        let positions = self.positions.borrow();
        let form = ReplyForm {
            version: self.version.get(),
            positions: positions.as_deref(),
        };
        write_batch(
            &mut self.bytes.borrow_mut(),
            request_id,
            engine,
            form,
            results,
        );
    }

    fn notify_writer(&self) {
        let _ = self.wake.try_send(());
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
        self.activity.request_started();
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
/// `shard_index` is Some on a shard-aware port (reported in HELLO). With `server.binary_tls`
/// the TLS handshake comes first. `activity` is the connection's entry in the shard's idle
/// sweep.
pub async fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    shard_index: Option<u16>,
    activity: Rc<idle::Activity>,
) {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok();
    let node = shard.node.clone();
    match node.access.tls() {
        None => serve_on(shard, stream, shard_index, peer, activity).await,
        Some(tls) => {
            let timeout = tls::handshake_timeout(node.limits.idle_timeout);
            match tls.accept(stream, timeout).await {
                Ok(stream) => serve_on(shard, stream, shard_index, peer, activity).await,
                Err(e) => {
                    shard.metrics().tls_handshake_failed();
                    tracing::debug!(peer = ?peer, error = %e, "TLS handshake failed; closing");
                }
            }
        }
    }
}

/// Serves a connection over `stream`, plain or TLS alike.
async fn serve_on<T: transport::Transport>(
    shard: Rc<Shard>,
    stream: T,
    shard_index: Option<u16>,
    peer: Option<SocketAddr>,
    activity: Rc<idle::Activity>,
) {
    let (stream, writer) = match stream.split() {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!(error = %e, "cannot split the connection's stream; closing it");
            return;
        }
    };
    let (wake, woken) = local_channel::new_bounded(1);
    let (settled, settled_rx) = local_channel::new_bounded(1);
    let (drained, drained_rx) = local_channel::new_bounded(1);
    let (breaks, gone) = oneshot::channel();
    let out = Rc::new(Outbox {
        bytes: RefCell::new(Vec::with_capacity(16 * 1024)),
        version: Cell::new(ProtocolVersion::V1),
        positions: RefCell::new(None),
        wake,
        activity,
        gone: gone.shared(),
        breaks: RefCell::new(Some(breaks)),
        settled,
        drained,
        finished: Cell::new(false),
        broken: Cell::new(false),
    });
    let writer_task = glommio::spawn_local(write_loop(out.clone(), writer, woken));
    let authenticated = !shard.node.access.requires_key();
    let mut reader = Reader {
        shard,
        out: out.clone(),
        stream,
        intern: InternTable::new(),
        shard_index,
        authenticated,
        peer,
    };
    reader.run(&drained_rx).await;
    while out.activity.in_flight() > 0 && !out.broken.get() {
        let _ = settled_rx.recv().await;
    }
    out.finished.set(true);
    out.notify_writer();
    writer_task.await;
}

struct Reader<R> {
    shard: Rc<Shard>,
    out: Rc<Outbox>,
    stream: R,
    intern: InternTable,
    shard_index: Option<u16>,
    /// The connection may send requests: it presented a valid API key in `HELLO`, or the
    /// node requires none.
    authenticated: bool,
    /// The peer's address, for the refusal log.
    peer: Option<SocketAddr>,
}

impl<R: futures::io::AsyncRead + Unpin + 'static> Reader<R> {
    async fn run(&mut self, drained: &LocalReceiver<()>) {
        let max_frame_len = self.shard.node.limits.max_frame_len;
        let mut buf = ReadBuf::new();
        loop {
            // Answer every whole frame we have.
            let now = clock::now_ns();
            let may_hold_run = self.authenticated && buf.data().len() >= PREFETCH_MIN_READ;
            let undecoded = buf.data().len();
            loop {
                if !self.authenticated {
                    match self.shard.node.access.gate(buf.data(), max_frame_len) {
                        Gate::Wait => break,
                        Gate::Pass => self.authenticated = true,
                        Gate::Refuse { request_id, reason } => {
                            self.refuse(request_id, reason);
                            return;
                        }
                    }
                }
                if may_hold_run && starts_with_check(buf.data(), max_frame_len) {
                    // A run of CHECK frames is decided in passes, as a batch is.
                    let mut pass = pass_buffers::lend();
                    let mut run = recycle(std::mem::take(&mut pass.run));
                    let run_len = check_run(buf.data(), max_frame_len, &mut run);
                    let answered = run.len() >= PREFETCH_MIN_BATCH;
                    if answered {
                        self.answer_run(&run, &mut pass, now);
                    }
                    pass.run = recycle(run);
                    pass_buffers::give_back(pass);
                    if answered {
                        buf.consume(run_len);
                        continue;
                    }
                }
                match decode_frame(buf.data(), max_frame_len) {
                    Ok(Some(decoded)) => {
                        // The read's time: one clock reading per read, not per frame.
                        let len = decoded.len;
                        self.handle(decoded.request_id, decoded.frame, now);
                        buf.consume(len);
                    }
                    Ok(None) => break,
                    Err(DecodeError::Body {
                        code,
                        reason,
                        request_id,
                        frame_len,
                        ..
                    }) => {
                        encode_error(&mut self.out.bytes.borrow_mut(), request_id, code, reason);
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
            if buf.data().len() < undecoded {
                // Only whole frames are consumed: bytes that complete none leave the
                // connection as idle as it was (`idle`).
                self.out.activity.frame_completed(now);
            }
            self.shard.metrics().binary_read_done(now);
            if !self.out.bytes.borrow().is_empty() {
                self.out.notify_writer();
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
            // End of stream is the client's FIN, a drain, or the idle sweep (`idle`).
            match self.stream.read(buf.spare()).await {
                Ok(0) => return,
                Ok(n) => buf.advance(n),
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return;
                }
            }
        }
    }

    /// Refuses an unauthenticated connection: one `ERROR UNAUTHENTICATED` for `request_id`,
    /// counted and logged at a bounded rate; the caller then closes the connection.
    fn refuse(&self, request_id: u32, reason: &'static str) {
        self.shard.metrics().unauthenticated();
        if let Some(count) = self.shard.node.access.refusals.to_log(clock::now_ns()) {
            tracing::warn!(
                peer = ?self.peer,
                reason,
                refused_since_last_log = count,
                "refusing unauthenticated binary connections"
            );
        }
        encode_error(
            &mut self.out.bytes.borrow_mut(),
            request_id,
            ErrorCode::Unauthenticated,
            reason,
        );
        self.out.notify_writer();
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
                        // One snapshot of the policies for the reply and for what its
                        // list's indexes mean: a reload in between cannot mix two sets.
                        let policies = self.shard.node.policies.load_full();
                        let reply = self.shard.node.hello(&policies, self.shard_index, version);
                        match encode_hello_reply(&mut out, request_id, &reply) {
                            // Every frame written after this reply is in `version`, and
                            // indexes its `policy_names`.
                            Ok(()) => {
                                self.out.version.set(version);
                                *self.out.positions.borrow_mut() =
                                    Some(Rc::new(HelloPositions::of(&policies)));
                            }
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
                let version = self.out.version.get();
                if let Err(e) = encode_members_reply(&mut out, request_id, &members, version) {
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

    /// A check's control point and tokens, and its labels appended to `labels`, with their
    /// interned ids resolved (on an error, some may have been appended). The labels are
    /// filled in place: returned by value they were another few hundred bytes copied per
    /// check.
    fn resolve<'c>(
        &'c self,
        check: &CheckRef<'c>,
        labels: &mut impl Extend<(&'c str, &'c str)>,
    ) -> Result<Resolved<'c>, (ErrorCode, String)> {
        let unknown = |id| {
            (
                ErrorCode::UnknownInternedId,
                format!("interned id {id} is not bound on this connection"),
            )
        };
        let control_point = match self.intern.resolve(check.control_point()) {
            Some(cp) => cp,
            None => return Err(unknown(str_ref_id(check.control_point()))),
        };
        for (key, value) in check.labels() {
            match self.intern.resolve(key) {
                Some(k) => labels.extend([(k, value)]),
                None => return Err(unknown(str_ref_id(key))),
            }
        }
        // The decoder already refused a negative or non-finite tokens field.
        let tokens = match check.tokens().map(Tokens::new).transpose() {
            Ok(t) => t,
            Err(e) => return Err((ErrorCode::BadRequest, format!("tokens {e}"))),
        };
        Ok(Resolved {
            control_point,
            tokens,
        })
    }

    /// Resolves the check's interned strings and decides it as far as this shard can at
    /// once; Err is the error to answer it with.
    fn plan(&self, check: &CheckRef<'_>, now: u64) -> Result<Planned, (ErrorCode, String)> {
        let mut labels = ResolvedLabels::new();
        let Resolved {
            control_point: cp,
            tokens,
        } = self.resolve(check, &mut labels)?;
        self.shard
            .decide_now(
                cp,
                labels.as_slice(),
                tokens,
                Some(deadline(check, now)),
                now,
            )
            .map_err(|e: FlowError| (ErrorCode::BadRequest, e.to_string()))
    }

    /// Whether another pending request fits on this connection (counted as overloaded when
    /// it does not).
    fn room_for_pending(&self) -> bool {
        let room = self.out.activity.in_flight() < self.shard.node.limits.max_in_flight;
        if !room {
            self.shard.metrics().overloaded();
        }
        room
    }

    /// Whether another pending check fits on this connection; if not, answers OVERLOADED.
    fn admit_pending(&self, request_id: u32) -> bool {
        if self.room_for_pending() {
            return true;
        }
        encode_error(
            &mut self.out.bytes.borrow_mut(),
            request_id,
            ErrorCode::Overloaded,
            NO_ROOM,
        );
        false
    }

    fn check(&mut self, request_id: u32, check: CheckRef<'_>, now: u64) {
        let planned = self.plan(&check, now);
        self.answer_check(request_id, planned, now);
    }

    /// Answers the `CHECK` `request_id` as planned: its reply now, or once its hops and waits
    /// end ([`Reader::answer_later`]), or its error. Inlined into the read loop so a decision
    /// is encoded where it was made, not copied through a call (136 bytes).
    #[inline(always)]
    fn answer_check(
        &self,
        request_id: u32,
        planned: Result<Planned, (ErrorCode, String)>,
        now: u64,
    ) {
        match planned {
            Ok(Planned::Decided(decision)) => {
                self.shard.metrics().binary_answered(decision.accepted);
                self.out.reply(request_id, &self.shard.engine(), &decision);
            }
            Ok(Planned::Pending(pending)) => self.answer_later(request_id, pending, now),
            Err((code, message)) => {
                self.shard.metrics().binary_error();
                encode_error(&mut self.out.bytes.borrow_mut(), request_id, code, &message)
            }
        }
    }

    /// Answers the `CHECK` `request_id` once its hops and waits end (counted, OVERLOADED
    /// beyond the connection's limit).
    #[inline(never)]
    fn answer_later(&self, request_id: u32, pending: Box<PendingCheck>, now: u64) {
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
            out.reply(request_id, &shard.engine(), &decision);
        });
    }

    /// Whether this shard holds enough buckets for a `CHECK_BATCH`'s first pass to pay (see
    /// [`BATCH_PREFETCH_MIN_BUCKETS`]).
    fn batch_prefetch_pays(&self) -> bool {
        self.shard.bucket_count() >= BATCH_PREFETCH_MIN_BUCKETS
    }

    /// Answers a run of pipelined `CHECK` frames (`(request id, check)`, in order) the way a
    /// batch is decided ([`Reader::decide_prefetched`]), each with its own reply.
    fn answer_run(&self, run: &[(u32, CheckRef<'_>)], pass: &mut PassBuffers, now: u64) {
        self.decide_prefetched(run, pass, now, &mut |id, planned| {
            self.answer_check(id, planned, now);
        });
    }

    /// Decides `checks` (`(request id, check)`) in order, answering each through `answer`,
    /// in three passes: each check resolved and planned (once: the plans are kept), then
    /// every bucket the plans will take from here prefetched in one short loop, so the DRAM
    /// misses overlap (docs/performance.md, "CHECK_BATCH"), then each check decided from its
    /// plan. The passes' vectors are `pass`'s, emptied and kept for the next run.
    fn decide_prefetched<'a>(
        &self,
        checks: &[(u32, CheckRef<'a>)],
        pass: &mut PassBuffers,
        now: u64,
        answer: &mut impl FnMut(u32, Result<Planned, (ErrorCode, String)>),
    ) {
        let engine = self.shard.engine();
        // Every check's labels in one vector, each check's at its range.
        let mut labels: Vec<(&str, &str)> = recycle(std::mem::take(&mut pass.labels));
        let mut resolved: Vec<ResolvedInRun<'_>> = recycle(std::mem::take(&mut pass.resolved));
        for (_, check) in checks {
            let start = labels.len();
            resolved.push((self.resolve(check, &mut labels), start..labels.len()));
        }
        // The plans apart from what became of them: pushed as a struct of both, each plan was
        // a few hundred bytes built aside and copied in.
        let mut plans: Vec<Plan<'_>> = recycle(std::mem::take(&mut pass.plans));
        let statuses = &mut pass.statuses;
        statuses.clear();
        let hashes = &mut pass.hashes;
        hashes.clear();
        for (r, range) in resolved.drain(..) {
            let check_labels = labels.get(range).unwrap_or_default();
            plans.push(Plan::new());
            let Some(plan) = plans.last_mut() else {
                continue;
            };
            let planning = match r {
                Ok(r) => self
                    .shard
                    .plan_check(&engine, r.control_point, check_labels, r.tokens, plan)
                    .map_err(|e| (ErrorCode::BadRequest, e.to_string())),
                Err(e) => Err(e),
            };
            statuses.push(match planning {
                Ok(()) if self.shard.planned_bucket_hashes(plan, hashes) => PlanStatus::OwnedHere,
                Ok(()) => PlanStatus::Elsewhere,
                Err(e) => {
                    plan.clear();
                    PlanStatus::Failed(e)
                }
            });
        }
        self.shard.prefetch_buckets(hashes);
        let planned = checks.iter().zip(&plans).zip(statuses.drain(..));
        for (((id, check), plan), status) in planned {
            let deadline = Some(deadline(check, now));
            answer(
                *id,
                match status {
                    PlanStatus::Failed(e) => Err(e),
                    PlanStatus::OwnedHere => Ok(self.shard.decide_owned_here(plan, deadline, now)),
                    PlanStatus::Elsewhere => Ok(self.shard.decide_planned(plan, deadline, now)),
                },
            );
        }
        // The plans borrow the labels: recycled first.
        pass.plans = recycle(plans);
        pass.resolved = recycle(resolved);
        pass.labels = recycle(labels);
    }

    fn batch<'a>(
        &mut self,
        request_id: u32,
        checks: impl ExactSizeIterator<Item = CheckRef<'a>>,
        now: u64,
    ) {
        let mut results: Vec<BatchSlot> = Vec::with_capacity(checks.len());
        let mut pending: Vec<(usize, Box<PendingCheck>)> = Vec::new();
        let mut record = |planned: Result<Planned, (ErrorCode, String)>| match planned {
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
        };
        if checks.len() >= PREFETCH_MIN_BATCH && self.batch_prefetch_pays() {
            let mut pass = pass_buffers::lend();
            let mut run = recycle(std::mem::take(&mut pass.run));
            // A batch's checks carry no request ids of their own.
            run.extend(checks.map(|check| (0, check)));
            self.decide_prefetched(&run, &mut pass, now, &mut |_, planned| record(planned));
            pass.run = recycle(run);
            pass_buffers::give_back(pass);
        } else {
            for check in checks {
                record(self.plan(&check, now));
            }
        }
        if pending.is_empty() {
            self.out
                .batch_reply(request_id, &self.shard.engine(), &results);
            return;
        }
        if !self.room_for_pending() {
            // Only the checks that must wait are refused OVERLOADED, each in its slot, and
            // dropping `pending` hands back what they took. The checks decided at once keep
            // their decisions and are answered: the batch is independent checks, and a
            // whole-batch error would hide the flow ids (and the charge) of checks granted.
            for (slot, _) in pending {
                results[slot] = BatchSlot::Failed(ErrorCode::Overloaded, NO_ROOM.into());
            }
            self.out
                .batch_reply(request_id, &self.shard.engine(), &results);
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
            out.batch_reply(request_id, &shard.engine(), &results);
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

/// Whether `data` starts with a whole, decodable `CHECK` frame: a run may start here. Asked
/// before a run's vectors are lent, which costs a few stores, so that other frames (pings)
/// do not pay for it.
fn starts_with_check(data: &[u8], max_frame_len: u32) -> bool {
    matches!(
        decode_frame(data, max_frame_len),
        Ok(Some(Decoded {
            frame: Frame::Check(_),
            ..
        }))
    )
}

/// The whole `CHECK` frames at the start of `data` (a read's buffer), with their request ids,
/// appended to `run`; returns the bytes they take. The run ends at the first frame that is
/// not a whole, decodable `CHECK` (the frame-by-frame loop answers it, in order).
fn check_run<'d>(data: &'d [u8], max_frame_len: u32, run: &mut Vec<(u32, CheckRef<'d>)>) -> usize {
    let mut used = 0;
    while let Some(rest) = data.get(used..) {
        match decode_frame(rest, max_frame_len) {
            Ok(Some(decoded)) => match decoded.frame {
                Frame::Check(check) => {
                    run.push((decoded.request_id, check));
                    used += decoded.len;
                }
                _ => break,
            },
            _ => break,
        }
    }
    used
}

/// The client's absolute deadline for `check`: its wait budget from `now`; without one, `now`
/// (decided at once, never queued).
fn deadline(check: &CheckRef<'_>, now: u64) -> u64 {
    let budget_ns = check
        .wait_budget_ms()
        .map_or(0, |ms| u64::from(ms) * 1_000_000);
    now.saturating_add(budget_ns)
}

/// One check of a run with its interned ids resolved (or the error to answer it with), and
/// where its labels are in the run's label vector ([`Reader::decide_prefetched`]).
type ResolvedInRun<'c> = (Result<Resolved<'c>, (ErrorCode, String)>, Range<usize>);

/// What planning one check of a run came to ([`Reader::decide_prefetched`]).
enum PlanStatus {
    /// This shard owns every take of its plan (see [`Shard::planned_bucket_hashes`]).
    OwnedHere,
    /// Some take belongs to another shard.
    Elsewhere,
    /// It could not be planned: answered with this error.
    Failed((ErrorCode, String)),
}

/// A check's labels with their interned ids resolved ([`Reader::resolve`]).
type ResolvedLabels<'c> = SmallVec<[(&'c str, &'c str); 8]>;

/// A check's control point with its interned id resolved, and its tokens
/// ([`Reader::resolve`]; the labels go to a [`ResolvedLabels`]).
struct Resolved<'c> {
    control_point: &'c str,
    tokens: Option<Tokens>,
}

fn str_ref_id(r: tollgate_protocol::StrRef<'_>) -> u16 {
    match r {
        tollgate_protocol::StrRef::Interned(id) => id,
        tollgate_protocol::StrRef::Inline(_) => 0,
    }
}

fn finish_pending(out: &Outbox) {
    out.activity.request_finished();
    out.notify_writer();
    let _ = out.settled.try_send(());
}

enum BatchSlot {
    Done(Decision),
    Pending,
    Failed(ErrorCode, String),
}

/// The wire form of a decision's verdict: the head of its reply ([`reply_limiters`] is the
/// rest).
fn reply_head(engine: &Engine, d: &Decision) -> ReplyHead {
    ReplyHead {
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
    }
}

/// The wire form of a decision's limiters (everything version 2 carries; the encoder drops
/// what the connection's version cannot), made as the encoder writes them: a reply struct
/// built per check was 216 bytes copied on the hot path (docs/performance.md,
/// section:binary-costs).
fn reply_limiters<'a>(
    engine: &'a Engine,
    positions: Option<&'a HelloPositions>,
    d: &'a Decision,
) -> impl Iterator<Item = LimiterResult> + 'a {
    // Described with the shard's engine at reply time: a limiter a reload removed meanwhile
    // is still described by the predecessor kept for that; one neither knows (two reloads
    // during one check) is left out of the per-limiter results.
    d.limiters
        .iter()
        .filter_map(|o| Some((o, engine.describe(o.limiter)?)))
        .map(move |(o, spec)| LimiterResult {
            limiter_index: positions.map_or(spec.position, |p| p.position(spec.id)),
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
}

/// How a connection's replies are written: its protocol version, and what its
/// `limiter_index`es index.
#[derive(Clone, Copy)]
struct ReplyForm<'a> {
    version: ProtocolVersion,
    positions: Option<&'a HelloPositions>,
}

fn write_reply(
    out: &mut Vec<u8>,
    request_id: u32,
    engine: &Engine,
    form: ReplyForm<'_>,
    d: &Decision,
) {
    let head = reply_head(engine, d);
    let limiters = reply_limiters(engine, form.positions, d);
    if let Err(e) = encode_check_reply_from(out, request_id, head, limiters, form.version) {
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
    form: ReplyForm<'_>,
    results: &[BatchSlot],
) {
    let mut writer = match BatchReplyWriter::new(out, request_id, results.len(), form.version) {
        Ok(w) => w,
        Err(e) => {
            encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
            return;
        }
    };
    for r in results {
        let item = match r {
            BatchSlot::Done(d) => writer.reply_from(
                reply_head(engine, d),
                reply_limiters(engine, form.positions, d),
            ),
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

async fn write_loop<W: futures::io::AsyncWrite + Unpin>(
    out: Rc<Outbox>,
    mut stream: W,
    woken: LocalReceiver<()>,
) {
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
        // The flush pushes out what TLS still buffers (a no-op on plain TCP).
        let written = match stream.write_all(&sending).await {
            Ok(()) => stream.flush().await,
            Err(e) => Err(e),
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::{encode_check, encode_ping, CheckSpec, StrRef};

    fn check_frame(out: &mut Vec<u8>, request_id: u32, user: &str) {
        let labels = [(StrRef::Inline("user"), user)];
        let spec = CheckSpec {
            control_point: StrRef::Inline("api"),
            tokens: None,
            wait_budget_ms: None,
            labels: &labels,
        };
        encode_check(out, request_id, &spec).expect("encodes");
    }

    #[test]
    fn a_check_run_is_the_whole_check_frames_at_the_front_in_order() {
        let users = |data: &[u8]| -> (Vec<(u32, String)>, usize) {
            let mut run = Vec::new();
            let used = check_run(data, 1 << 20, &mut run);
            let run = run
                .iter()
                .map(|(id, c)| (*id, c.labels().map(|(_, v)| v.to_string()).collect()))
                .collect();
            (run, used)
        };
        let mut data = Vec::new();
        check_frame(&mut data, 1, "alice");
        check_frame(&mut data, 2, "bob");
        let two = data.len();
        // Another kind of frame ends the run: it is answered in order after it.
        encode_ping(&mut data, 3, b"x").expect("encodes");
        check_frame(&mut data, 4, "carol");
        let (run, used) = users(&data);
        assert_eq!(run, [(1, "alice".into()), (2, "bob".into())]);
        assert_eq!(used, two);
        // So does a partial frame (the rest is read first).
        let mut partial = data[..two].to_vec();
        check_frame(&mut partial, 5, "dave");
        partial.truncate(two + 5);
        assert_eq!(users(&partial).1, two);
        // And a frame that does not decode (answered with its error).
        let mut bad = vec![0, 0, 0, 5, 0xff, 0, 0, 0, 1];
        check_frame(&mut bad, 6, "erin");
        assert_eq!(users(&bad), (vec![], 0));
    }
}
