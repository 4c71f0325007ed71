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
//! `max_frame_len` (checked from the 4-byte prefix before buffering), pending checks per
//! connection are capped at `max_in_flight` (OVERLOADED beyond), and the reader stops
//! reading while the outbox holds more than `MAX_WRITE_BACKLOG` unsent bytes.

use crate::clock;
use crate::shard::{PendingCheck, Planned, Shard};
use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use tollgate_policy::{Decision, Engine, FlowError, OutcomeKind, Tokens};
use tollgate_protocol::{
    decode_frame, encode_check_reply, encode_error, encode_hello_reply, encode_members_reply,
    encode_pong, frame_len, BatchReplyWriter, CheckRef, CheckReply, DecisionReason, DecodeError,
    ErrorCode, Frame, InternTable, LimiterOutcome, LimiterResult, PROTOCOL_VERSION,
};

/// Initial read buffer. Most frames are under 200 bytes; 64 KiB lets one read take a
/// deep pipeline's worth. It grows (up to `max_frame_len`) only for a larger frame.
const READ_BUF: usize = 64 * 1024;

/// Unsent reply bytes above which the reader stops reading: a client that does not read
/// its replies cannot make the server buffer without bound.
const MAX_WRITE_BACKLOG: usize = 4 * 1024 * 1024;

/// Reply bytes shared by the reader, pending-check tasks and the writer.
struct Outbox {
    bytes: RefCell<Vec<u8>>,
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
}

impl Outbox {
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
        wake,
        in_flight: Cell::new(0),
        gone: gone.shared(),
        breaks: RefCell::new(Some(breaks)),
        settled,
        drained,
        finished: Cell::new(false),
        broken: Cell::new(false),
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
        let mut buf = vec![0u8; READ_BUF];
        let (mut start, mut filled) = (0usize, 0usize);
        loop {
            // Answer every whole frame we have.
            let now = clock::now_ns();
            loop {
                match decode_frame(&buf[start..filled], max_frame_len) {
                    Ok(Some(decoded)) => {
                        start += decoded.len;
                        self.handle(decoded.request_id, decoded.frame, now);
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
                        start += frame_len;
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
            if !self.out.bytes.borrow().is_empty() {
                self.out.notify_writer();
            }
            // Make room: move a partial frame to the front, grow for a large one.
            if start == filled {
                start = 0;
                filled = 0;
            } else if start > 0 {
                buf.copy_within(start..filled, 0);
                filled -= start;
                start = 0;
            }
            if let Ok(Some(total)) = frame_len(&buf[..filled], max_frame_len) {
                if total > buf.len() {
                    buf.resize(total, 0);
                }
            }
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            // Backpressure: let the writer catch up before reading more requests.
            while self.out.bytes.borrow().len() > MAX_WRITE_BACKLOG && !self.out.broken.get() {
                let _ = drained.recv().await;
            }
            if self.out.broken.get() {
                return;
            }
            match self.stream.read(&mut buf[filled..]).await {
                Ok(0) => return,
                Ok(n) => filled += n,
                Err(e) => {
                    tracing::debug!(error = %e, "connection read failed");
                    return;
                }
            }
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
                if hello.version > PROTOCOL_VERSION {
                    let msg = format!(
                        "server speaks protocol version {PROTOCOL_VERSION}, client asked for {}",
                        hello.version
                    );
                    encode_error(&mut out, request_id, ErrorCode::UnsupportedVersion, &msg);
                } else {
                    let reply = self.shard.node.hello(self.shard_index);
                    if let Err(e) = encode_hello_reply(&mut out, request_id, &reply) {
                        encode_error(&mut out, request_id, ErrorCode::Internal, &e.to_string());
                    }
                }
            }
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

    /// Resolves interned strings and plans; Ok(None) means an error reply was written.
    fn plan(&self, check: &CheckRef<'_>, now: u64) -> Result<Planned, (ErrorCode, String)> {
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
        // The client's deadline. CHECK carries no wait budget yet: decided at once.
        let deadline = Some(now);
        self.shard
            .decide_now(cp, labels.as_slice(), tokens, deadline, now)
            .map_err(|e: FlowError| (ErrorCode::BadRequest, e.to_string()))
    }

    /// Whether another pending check fits on this connection; if not, answers OVERLOADED.
    fn admit_pending(&self, request_id: u32) -> bool {
        if self.out.in_flight.get() < self.shard.node.limits.max_in_flight {
            return true;
        }
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
                write_reply(
                    &mut self.out.bytes.borrow_mut(),
                    request_id,
                    self.shard.engine(),
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
                    write_reply(
                        &mut out.bytes.borrow_mut(),
                        request_id,
                        shard.engine(),
                        &decision,
                    );
                });
            }
            Err((code, message)) => {
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
                Ok(Planned::Decided(d)) => results.push(BatchSlot::Done(d)),
                Ok(Planned::Pending(p)) => {
                    pending.push((results.len(), p));
                    results.push(BatchSlot::Pending);
                }
                Err(e) => results.push(BatchSlot::Failed(e.0, e.1)),
            }
        }
        if pending.is_empty() {
            write_batch(
                &mut self.out.bytes.borrow_mut(),
                request_id,
                self.shard.engine(),
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
                results[slot] = BatchSlot::Done(decision);
            }
            write_batch(
                &mut out.bytes.borrow_mut(),
                request_id,
                shard.engine(),
                &results,
            );
        });
    }
}

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

/// The wire form of a decision.
pub fn check_reply(engine: &Engine, d: &Decision) -> CheckReply {
    CheckReply {
        decision: if d.accepted {
            tollgate_protocol::Decision::Accepted
        } else {
            tollgate_protocol::Decision::Rejected
        },
        reason: if d.accepted {
            DecisionReason::None
        } else {
            DecisionReason::RateLimited
        },
        wait_ns: d.wait_ns,
        limiters: d
            .limiters
            .iter()
            .map(|o| LimiterResult {
                limiter_index: engine.limiter(o.limiter).position,
                outcome: match o.kind {
                    OutcomeKind::Accepted => LimiterOutcome::Accepted,
                    OutcomeKind::Rejected => LimiterOutcome::Rejected,
                    OutcomeKind::KeyNotFound => LimiterOutcome::KeyNotFound,
                    OutcomeKind::Returned => LimiterOutcome::Returned,
                },
                status_code: engine.limiter(o.limiter).denied_status_code,
                tokens: o.tokens,
                remaining: o.remaining,
                current: o.current,
                wait_ns: o.wait_ns,
            })
            .collect(),
    }
}

fn write_reply(out: &mut Vec<u8>, request_id: u32, engine: &Engine, d: &Decision) {
    if let Err(e) = encode_check_reply(out, request_id, &check_reply(engine, d)) {
        encode_error(out, request_id, ErrorCode::Internal, &e.to_string());
    }
}

fn write_batch(out: &mut Vec<u8>, request_id: u32, engine: &Engine, results: &[BatchSlot]) {
    let mut writer = match BatchReplyWriter::new(out, request_id, results.len()) {
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
        if let Err(e) = stream.write_all(&sending).await {
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
