//! One pipelined connection to one server port, reconnecting on demand.
//!
//! ```text
//!  callers ──encode under lock──▶ mpsc ──▶ writer task ──▶ socket
//!     ▲                                                     │
//!     └──── oneshot per request id ◀── reader task ◀────────┘
//! ```
//!
//! A caller takes an in-flight permit, encodes its frame (and any `INTERN` frames it needs)
//! while holding the connection's state lock, registers a oneshot under a fresh request id and
//! hands the bytes to the writer task, all under that lock, so `INTERN` always precedes the
//! first frame that uses its id on the wire. The reader task decodes replies and completes the
//! oneshot matching each reply's request id, in whatever order the server answers. When the
//! socket fails, every pending request fails with the cause, the connection is marked dead, and
//! the next request dials a fresh one (with exponential backoff after failed dials).
//!
//! Protocol version: a server connection speaks version 1 until it reads a `HELLO`. Once the
//! client has negotiated a later version ([`Conn::greet_on_dial`]), every new connection sends
//! `HELLO` as its first frame, pipelined with whatever follows (the server reads frames in
//! order). The reader decodes each reply in the version of the last `HELLO_REPLY` it read on
//! the connection — exactly the rule by which the server encodes them.
//!
//! Access: with an API key, every new connection sends `HELLO` with the key first, whatever
//! the version (a server with `server.api_keys` refuses anything before it); if the server
//! refuses that `HELLO` with `UNAUTHENTICATED`, the requests pipelined behind it fail with that
//! error. With TLS, the dial includes the handshake (both within `connect_timeout`) and the
//! reader and writer tasks share the TLS stream through `tokio::io::split`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{host_of, ApiKey, ClientError, ClientTls};
use crate::decode::{decode_reply, StrRef};
use crate::encode::{encode_hello_with_key, encode_intern};
use crate::error::{DecodeError, EncodeError};
use crate::frame::{ErrorCode, MAX_INTERNED, MAX_INTERNED_BYTES, MAX_STRING_LEN};
use crate::types::Reply;
use crate::version::ProtocolVersion;

/// Largest reply frame the client accepts. Replies are bounded by what the client asked for; a
/// full `BATCH_REPLY` of [`crate::MAX_BATCH`] items with many limiters each can exceed the
/// server's 1 MiB request limit, so the client allows 16 MiB.
pub const MAX_REPLY_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// First delay before re-dialling after a failed dial; doubles per consecutive failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// Cap on the re-dial delay: long enough not to hammer a dead server, short enough that a
/// restarted one is picked up within a second.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The writer coalesces queued frames into one `write_all` up to about this many bytes.
const WRITE_COALESCE: usize = 64 * 1024;
/// Initial read buffer size; it grows to the largest frame seen.
const READ_CHUNK: usize = 16 * 1024;

/// How long to wait before the next dial after `failures` consecutive failed dials:
/// [`BACKOFF_INITIAL`], doubling per failure, capped at [`BACKOFF_MAX`].
fn backoff_after(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_INITIAL.saturating_mul(1 << exp).min(BACKOFF_MAX)
}

/// Result delivered to a waiting request.
type Outcome = Result<Reply, ClientError>;

/// How a connection is dialled: shared by every connection of a client.
#[derive(Clone, Debug)]
pub(crate) struct Dialer {
    /// Deadline of the TCP connect plus the TLS handshake.
    pub(crate) connect_timeout: Duration,
    /// TLS on the connection; None: plaintext.
    pub(crate) tls: Option<ClientTls>,
}

/// The `HELLO` a new connection sends first.
#[derive(Clone, Debug)]
struct Greeting {
    version: ProtocolVersion,
    client_name: String,
    api_key: Option<ApiKey>,
}

/// A connection slot: the address, limits, and the current live connection if any.
pub(crate) struct Conn {
    /// `host:port` dialled.
    addr: String,
    /// Bounds this connection's requests in flight (the server answers `OVERLOADED` beyond its
    /// own limit; waiting here is kinder).
    permits: Arc<Semaphore>,
    /// The server's `max_frame_len` (from `HELLO_REPLY`); requests larger are refused locally.
    max_frame_len: AtomicU32,
    /// Dial timeout and TLS.
    dialer: Dialer,
    /// The `HELLO` every new connection sends first; `None` while the connection speaks
    /// version 1 without an API key (or before the client negotiated).
    greeting: Mutex<Option<Greeting>>,
    /// The live connection and the redial backoff state. A tokio mutex: dialling awaits.
    slot: tokio::sync::Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    live: Option<Arc<Live>>,
    /// Consecutive failed dials.
    failures: u32,
    /// No dial before this instant (set after a failed dial).
    retry_at: Option<Instant>,
}

/// One established TCP connection with its writer and reader tasks.
struct Live {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // The writer ends by itself when `tx` drops; the reader would wait for the peer.
        self.reader.abort();
    }
}

/// State shared by callers and the reader task of one live connection.
struct Shared {
    addr: String,
    /// Set once the connection failed; checked without the lock on the fast path.
    dead: AtomicBool,
    state: Mutex<State>,
}

/// Per-connection protocol state, guarded by one lock so that id allocation, interning and
/// enqueueing happen atomically.
#[derive(Default)]
pub(crate) struct State {
    /// Why the connection died, once it has.
    closed: Option<ClientError>,
    /// Requests awaiting a reply, by request id. Both maps hash with foldhash rather than
    /// the standard SipHash: they are looked up once per check (a batch of 64 checks, 64
    /// times), where SipHash was ~6% of the load generator's time; their keys are this
    /// client's own ids and strings, and each map has its own random seed.
    pending: HashMap<u32, oneshot::Sender<Outcome>, foldhash::fast::RandomState>,
    /// Last request id used (ids are never 0: the server uses 0 for errors not tied to a
    /// request).
    last_id: u32,
    /// Strings bound with `INTERN` on this connection, and their ids (`0..MAX_INTERNED`).
    interned: HashMap<Box<str>, u16, foldhash::fast::RandomState>,
    /// Sum of the interned strings' lengths (the server caps it at `MAX_INTERNED_BYTES`).
    interned_bytes: usize,
    /// Request id of the `HELLO` sent when the connection was dialled: its reply has no
    /// waiting caller.
    greeting_id: Option<u32>,
}

impl State {
    fn next_id(&mut self) -> u32 {
        loop {
            self.last_id = self.last_id.wrapping_add(1);
            if self.last_id != 0 && !self.pending.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }

    /// A string ref for `s`: its interned id if bound, else binds it (appending an `INTERN`
    /// frame to `out`) while the connection's budget lasts, else inline.
    ///
    /// The `INTERN` carries `request_id`, the id of the request it is sent for (never 0): if
    /// the server refused the binding, its `ERROR` fails that request with the cause.
    pub(crate) fn intern<'s>(
        &mut self,
        out: &mut Vec<u8>,
        s: &'s str,
        request_id: u32,
    ) -> StrRef<'s> {
        if let Some(&id) = self.interned.get(s) {
            return StrRef::Interned(id);
        }
        let fits = self.interned.len() < MAX_INTERNED
            && s.len() <= MAX_STRING_LEN
            && self.interned_bytes.saturating_add(s.len()) <= MAX_INTERNED_BYTES;
        // Interning a 1-byte string saves nothing (an id is as long as an inline header).
        if !fits || s.len() <= 1 {
            return StrRef::Inline(s);
        }
        let Ok(id) = u16::try_from(self.interned.len()) else {
            return StrRef::Inline(s);
        };
        if encode_intern(out, request_id, id, s).is_err() {
            return StrRef::Inline(s);
        }
        self.interned.insert(s.into(), id);
        self.interned_bytes += s.len();
        StrRef::Interned(id)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a way that matters
        // more than losing the client; recover the guard instead of propagating the poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the connection dead and fails every pending request with `err`.
    fn fail_all(&self, err: ClientError) {
        self.dead.store(true, Ordering::Release);
        let pending = {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some(err.clone());
            }
            std::mem::take(&mut st.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(Err(err.clone()));
        }
    }

    fn complete(&self, request_id: u32, outcome: Outcome) {
        let (tx, greeting) = {
            let mut st = self.lock();
            let greeting = st.greeting_id == Some(request_id);
            if greeting {
                st.greeting_id = None;
            }
            (st.pending.remove(&request_id), greeting)
        };
        if greeting {
            match outcome {
                // The server closes the connection: the requests pipelined behind the HELLO
                // fail with the cause rather than a bare close.
                Err(
                    e @ ClientError::Server {
                        code: ErrorCode::Unauthenticated,
                        ..
                    },
                ) => {
                    tracing::warn!(addr = %self.addr, error = %e,
                        "server refused this client's API key");
                    self.fail_all(e);
                }
                Err(e) => tracing::warn!(addr = %self.addr, error = %e,
                    "server refused the HELLO of a new connection; it speaks protocol version 1"),
                Ok(_) => {}
            }
            return;
        }
        match tx {
            Some(tx) => {
                let _ = tx.send(outcome);
            }
            None => match outcome {
                Err(e) => tracing::warn!(addr = %self.addr, request_id, error = %e,
                    "server error not tied to a waiting request"),
                Ok(_) => tracing::debug!(addr = %self.addr, request_id,
                    "reply for a request no longer waiting (timed out?)"),
            },
        }
    }
}

/// A request that was sent and awaits its reply.
pub(crate) struct InFlight {
    rx: oneshot::Receiver<Outcome>,
    request_id: u32,
    shared: Arc<Shared>,
    /// Held until the reply arrives or the wait is abandoned.
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    /// Waits for the reply until `deadline`; on timeout the request is forgotten (a late reply
    /// is dropped by the reader).
    pub(crate) async fn wait(self, deadline: Instant, timeout: Duration) -> Outcome {
        match tokio::time::timeout_at(deadline, self.rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ClientError::Closed {
                addr: self.shared.addr.clone(),
                reason: "connection task ended".into(),
            }),
            Err(_) => {
                self.shared.lock().pending.remove(&self.request_id);
                Err(ClientError::Timeout(timeout))
            }
        }
    }
}

impl Conn {
    pub(crate) fn new(
        addr: String,
        max_in_flight: usize,
        max_frame_len: u32,
        dialer: Dialer,
    ) -> Self {
        Self {
            addr,
            permits: Arc::new(Semaphore::new(
                max_in_flight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            max_frame_len: AtomicU32::new(max_frame_len),
            dialer,
            greeting: Mutex::new(None),
            slot: tokio::sync::Mutex::new(Slot::default()),
        }
    }

    /// From the next dial on, opens every connection with `HELLO { version, client_name,
    /// api_key }` (nothing for version 1 without a key: a connection speaks version 1 without
    /// `HELLO`).
    pub(crate) fn greet_on_dial(
        &self,
        version: ProtocolVersion,
        client_name: &str,
        api_key: Option<&ApiKey>,
    ) {
        let greeting = (version > ProtocolVersion::V1 || api_key.is_some()).then(|| Greeting {
            version,
            client_name: client_name.to_owned(),
            api_key: api_key.cloned(),
        });
        *self.greeting.lock().unwrap_or_else(|p| p.into_inner()) = greeting;
    }

    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Adopts the limits the server advertised in `HELLO_REPLY`.
    pub(crate) fn apply_limits(&self, max_in_flight: usize, max_frame_len: u32) {
        self.max_frame_len.store(max_frame_len, Ordering::Relaxed);
        let current = self.permits.available_permits();
        if current > max_in_flight.max(1) {
            self.permits.forget_permits(current - max_in_flight.max(1));
        }
    }

    /// Dials now (used to open shard connections eagerly); errors are returned, not cached
    /// beyond the usual backoff.
    pub(crate) async fn warm_up(&self) -> Result<(), ClientError> {
        self.live().await.map(|_| ())
    }

    /// The live connection, dialling a new one if there is none or it died.
    async fn live(&self) -> Result<Arc<Live>, ClientError> {
        let mut slot = self.slot.lock().await;
        if let Some(live) = &slot.live {
            if !live.shared.dead.load(Ordering::Acquire) {
                return Ok(live.clone());
            }
            slot.live = None;
        }
        if let Some(at) = slot.retry_at {
            if Instant::now() < at {
                return Err(ClientError::Connect {
                    addr: self.addr.clone(),
                    reason: format!(
                        "backing off after {} failed attempts; next dial in {:?}",
                        slot.failures,
                        at.saturating_duration_since(Instant::now())
                    ),
                });
            }
        }
        match self.dial().await {
            Ok(live) => {
                slot.failures = 0;
                slot.retry_at = None;
                slot.live = Some(live.clone());
                Ok(live)
            }
            Err(e) => {
                slot.failures = slot.failures.saturating_add(1);
                slot.retry_at = Some(Instant::now() + backoff_after(slot.failures));
                Err(e)
            }
        }
    }

    async fn dial(&self) -> Result<Arc<Live>, ClientError> {
        let timeout = self.dialer.connect_timeout;
        match tokio::time::timeout(timeout, self.connect()).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Connect {
                addr: self.addr.clone(),
                reason: format!("timed out after {timeout:?}"),
            }),
        }
    }

    /// The TCP connect and, with TLS, the handshake; then the connection's tasks.
    async fn connect(&self) -> Result<Arc<Live>, ClientError> {
        let connect_error = |reason: String| ClientError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let stream = TcpStream::connect(self.addr.as_str())
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        // Requests are small and latency-bound; never wait for Nagle.
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.dialer.tls else {
            let (rd, wr) = stream.into_split();
            return Ok(self.start_tasks(rd, wr));
        };
        let (connector, name) = tls
            .for_host(host_of(&self.addr))
            .map_err(|e| connect_error(e.to_string()))?;
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|e| connect_error(format!("TLS handshake failed: {e}")))?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(self.start_tasks(rd, wr))
    }

    /// Starts the writer and reader tasks of a connection just established, the greeting
    /// first on the wire.
    fn start_tasks<R, W>(&self, rd: R, wr: W) -> Arc<Live>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            addr: self.addr.clone(),
            dead: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let greeting = self
            .greeting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(greeting) = greeting {
            // First on the wire, so the server reads everything after it in `version`, and
            // authenticated.
            let mut st = shared.lock();
            let id = st.next_id();
            let mut hello = Vec::new();
            let key = greeting.api_key.as_ref().map(ApiKey::expose);
            let encoded = encode_hello_with_key(
                &mut hello,
                id,
                greeting.version.as_u16(),
                &greeting.client_name,
                key,
            );
            if encoded.is_ok() {
                st.greeting_id = Some(id);
                let _ = tx.send(hello);
            }
        }
        tokio::spawn(write_loop(wr, rx, shared.clone()));
        let reader = tokio::spawn(read_loop(rd, shared.clone()));
        tracing::debug!(addr = %self.addr, "connected");
        Arc::new(Live { tx, shared, reader })
    }

    /// Takes a permit, encodes with `build(state, out, request_id)` and sends. `build` may
    /// append `INTERN` frames before the request frame; it returns the offset where the request
    /// frame starts so its size can be checked against the server's limit.
    pub(crate) async fn start<F>(
        &self,
        deadline: Instant,
        timeout: Duration,
        build: F,
    ) -> Result<InFlight, ClientError>
    where
        F: FnOnce(&mut State, &mut Vec<u8>, u32) -> Result<usize, EncodeError>,
    {
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(|_| ClientError::Closed {
                addr: self.addr.clone(),
                reason: "client shut down".into(),
            })?;
        let live = tokio::time::timeout_at(deadline, self.live())
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let max_frame_len = self.max_frame_len.load(Ordering::Relaxed);

        let mut st = live.shared.lock();
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        let request_id = st.next_id();
        let mut out = Vec::with_capacity(128);
        let built = build(&mut st, &mut out, request_id);
        let frame_start = match built {
            Ok(at) => at,
            Err(e) => {
                // Keep the INTERN frames already bound in `st`: the server must see them too.
                if !out.is_empty() {
                    let _ = live.tx.send(out);
                }
                return Err(ClientError::Encode(e));
            }
        };
        let frame_len = out.len().saturating_sub(frame_start).saturating_sub(4);
        if frame_len > max_frame_len as usize {
            out.truncate(frame_start);
            if !out.is_empty() {
                let _ = live.tx.send(out);
            }
            return Err(ClientError::Encode(EncodeError::FrameTooLarge));
        }
        let (tx, rx) = oneshot::channel();
        st.pending.insert(request_id, tx);
        if live.tx.send(out).is_err() {
            st.pending.remove(&request_id);
            return Err(ClientError::Closed {
                addr: self.addr.clone(),
                reason: "connection writer stopped".into(),
            });
        }
        drop(st);
        Ok(InFlight {
            rx,
            request_id,
            shared: live.shared.clone(),
            _permit: permit,
        })
    }

    /// [`start`](Self::start) then [`InFlight::wait`].
    pub(crate) async fn call<F>(&self, timeout: Duration, build: F) -> Outcome
    where
        F: FnOnce(&mut State, &mut Vec<u8>, u32) -> Result<usize, EncodeError>,
    {
        let deadline = Instant::now() + timeout;
        self.start(deadline, timeout, build)
            .await?
            .wait(deadline, timeout)
            .await
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    while let Some(mut batch) = rx.recv().await {
        while batch.len() < WRITE_COALESCE {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        // The flush pushes out what TLS still buffers (a no-op on plain TCP).
        let written = match wr.write_all(&batch).await {
            Ok(()) => wr.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            shared.fail_all(ClientError::Closed {
                addr: shared.addr.clone(),
                reason: format!("write failed: {e}"),
            });
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // The server writes every frame after a HELLO_REPLY in that reply's version.
    let mut version = ProtocolVersion::V1;
    let err = loop {
        let mut start = 0;
        let fatal = loop {
            let rest = buf.get(start..).unwrap_or(&[]);
            match decode_reply(rest, MAX_REPLY_FRAME_LEN, version) {
                Ok(None) => break None,
                Ok(Some(d)) => {
                    start += d.len;
                    if let Reply::Hello(hello) = &d.reply {
                        version = hello.version;
                    }
                    let outcome = match d.reply {
                        Reply::Error(e) => Err(ClientError::Server {
                            code: e.code,
                            message: e.message,
                        }),
                        other => Ok(other),
                    };
                    shared.complete(d.request_id, outcome);
                }
                Err(DecodeError::Body {
                    request_id,
                    frame_len,
                    reason,
                    ..
                }) => {
                    start += frame_len;
                    shared.complete(
                        request_id,
                        Err(ClientError::Protocol(format!("malformed reply: {reason}"))),
                    );
                }
                Err(e) => break Some(ClientError::Protocol(e.to_string())),
            }
        };
        if let Some(e) = fatal {
            break e;
        }
        buf.drain(..start.min(buf.len()));
        if buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                break ClientError::Closed {
                    addr: shared.addr.clone(),
                    reason: "server closed the connection".into(),
                }
            }
            Ok(_) => {}
            Err(e) => {
                break ClientError::Closed {
                    addr: shared.addr.clone(),
                    reason: format!("read failed: {e}"),
                }
            }
        }
    };
    tracing::debug!(addr = %shared.addr, error = %err, "connection lost");
    shared.fail_all(err);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
        let delays: Vec<Duration> = (1..=9).map(backoff_after).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [
                ms(10),
                ms(20),
                ms(40),
                ms(80),
                ms(160),
                ms(320),
                ms(640),
                BACKOFF_MAX,
                BACKOFF_MAX
            ]
        );
        // No overflow however long the server stays away.
        assert_eq!(backoff_after(u32::MAX), BACKOFF_MAX);
        // `failures` counts from 1; 0 (never failed) would mean the initial delay.
        assert_eq!(backoff_after(0), BACKOFF_INITIAL);
    }
}
