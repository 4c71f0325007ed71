//! The tokio client: shard-aware, pipelined, with timeouts, reconnects and a fail mode.
//!
//! [`Client::connect`] dials the server's shared port and sends `HELLO` with
//! [`crate::PROTOCOL_VERSION`] (falling back to version 1 for a server that answers
//! `UNSUPPORTED_VERSION`, as version-1 servers do). The `HELLO_REPLY` says which version the
//! connection speaks and advertises the shard count, one port per shard and the routing label
//! keys (per control point in version 2); every connection the client opens afterwards starts
//! with a `HELLO` of the negotiated version. A shard-aware client (the default) opens one
//! connection per shard port on the same host and sends each check straight to the shard owning
//! its bucket, computed with the crate's routing rule ([`crate::routing::RoutingKeys`], then
//! [`crate::routing::shard_for`]`(`[`crate::routing::routing_hash`]`(value), n)`). Against a
//! server with only a shared port (no `shard_ports`), everything goes over the shared
//! connection and the server forwards internally.
//!
//! Version 2 adds waiting and flow ends: [`CheckRequest::wait`] lets a check wait in a
//! scheduler's queue (its reply then takes up to the wait budget), the reply names the flows it
//! holds in concurrency components ([`crate::CheckReply::flow_ids`]), and [`Client::flow_end`]
//! ends them, each at the shard that holds it.
//!
//! Every connection pipelines: many requests are in flight at once (up to
//! `min(ClientConfig::max_in_flight, HELLO_REPLY.max_in_flight)`), replies are matched to
//! requests by request id in whatever order they come back, each request has its own deadline,
//! and control points and label keys are interned per connection (`INTERN` the first time a
//! string is used, then referred to by id). A connection that drops fails its in-flight requests
//! with [`ClientError::Closed`]; the next request re-dials (with exponential backoff after failed
//! dials). If a shard port cannot be reached, checks fall back to the shared port.
//!
//! Access: with [`ClientConfig::api_key`] every connection (shared and per shard, and again
//! after each reconnect) opens with a `HELLO` carrying the key, as a server with
//! `server.api_keys` requires; a refused key fails the requests with `UNAUTHENTICATED`. With
//! [`ClientConfig::tls`] every connection runs TLS ([`ClientTls`]).
//!
//! [`Client`] is cheap to clone and meant to be shared by many tasks. [`blocking::Client`]
//! wraps it for synchronous callers.

mod auth;
pub mod blocking;
mod conn;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use crate::decode::StrRef;
use crate::encode::{
    encode_check, encode_check_batch, encode_flow_end, encode_hello_with_key, encode_members,
    encode_ping, CheckSpec,
};
use crate::error::EncodeError;
use crate::frame::{
    ErrorCode, DEFAULT_MAX_FRAME_LEN, MAX_BATCH, MAX_FLOW_END, MAX_LABELS, PROTOCOL_VERSION,
};
use crate::routing::{shard_of_flow, RoutingKeys, HASH_FNV1A_64};
use crate::types::{BatchItem, CheckReply, FlowEndStatus, HelloReply, Member, Reply};
use crate::version::ProtocolVersion;
use conn::{Conn, Dialer, State};

pub use auth::{ApiKey, ApiKeyError};
pub use conn::MAX_REPLY_FRAME_LEN;
pub use tls::{ClientTls, TlsError};

/// What the client does when it cannot get an answer from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailMode {
    /// Accept the request: availability over protection.
    Open,
    /// Reject the request: protection over availability.
    Closed,
}

/// Client settings. There is deliberately no `Default`: the fail mode is a product decision the
/// caller must make; use [`ClientConfig::new`], [`ClientConfig::fail_open`] or
/// [`ClientConfig::fail_closed`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the server's shared port.
    pub addr: String,
    /// Open one connection per advertised shard port and route each check to its owner
    /// (default `true`). Saves the server a cross-core hop per check.
    pub shard_aware: bool,
    /// Deadline of one request, from the call until its reply, including waiting for an
    /// in-flight slot and any re-dial (default 200 ms: a rate-limit decision that takes longer
    /// is better replaced by the fail mode). A check with a wait budget
    /// ([`CheckRequest::wait`]) gets `wait budget + request_timeout`: the server may take the
    /// whole budget to decide, and the reply still needs its round trip.
    pub request_timeout: Duration,
    /// Deadline of one dial: the TCP connect and, with [`ClientConfig::tls`], the TLS
    /// handshake (default 1 s).
    pub connect_timeout: Duration,
    /// What [`Client::check_with_fail_mode`] decides when the server cannot answer.
    pub fail_mode: FailMode,
    /// Most requests in flight per connection (default 1024; lowered to the server's
    /// `max_in_flight` after `HELLO`).
    pub max_in_flight: usize,
    /// Name sent in `HELLO`, for the server's logs (default `"tollgate-rust"`).
    pub client_name: String,
    /// API key presented in every connection's `HELLO` (default none). Required by a server
    /// with `server.api_keys`; a server without ignores it.
    pub api_key: Option<ApiKey>,
    /// TLS on every connection, shared and shard ports alike (default none: plaintext). The
    /// server's `server.binary_tls` must be set to match.
    pub tls: Option<ClientTls>,
}

impl ClientConfig {
    /// Settings with the documented defaults and the given address and fail mode.
    pub fn new(addr: impl Into<String>, fail_mode: FailMode) -> Self {
        Self {
            addr: addr.into(),
            shard_aware: true,
            request_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(1),
            fail_mode,
            max_in_flight: 1024,
            client_name: "tollgate-rust".to_string(),
            api_key: None,
            tls: None,
        }
    }

    /// [`ClientConfig::new`] with [`FailMode::Open`].
    pub fn fail_open(addr: impl Into<String>) -> Self {
        Self::new(addr, FailMode::Open)
    }

    /// [`ClientConfig::new`] with [`FailMode::Closed`].
    pub fn fail_closed(addr: impl Into<String>) -> Self {
        Self::new(addr, FailMode::Closed)
    }
}

/// One check to ask the server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CheckRequest {
    /// The control point (service or route) the policies are attached to.
    pub control_point: String,
    /// Flow labels, `(key, value)`; at most [`MAX_LABELS`].
    pub labels: Vec<(String, String)>,
    /// Tokens to take; `None` lets each policy use its tokens label (default 1).
    pub tokens: Option<f64>,
    /// How long the caller will wait for the decision (version 2): a scheduler may queue the
    /// flow for up to this long. `None`: decided at once. Sent in whole milliseconds, rounded
    /// down and capped at `u32::MAX` ms (about 49 days).
    pub wait: Option<Duration>,
}

impl CheckRequest {
    /// A check of `control_point` with no labels and default tokens.
    pub fn new(control_point: impl Into<String>) -> Self {
        Self {
            control_point: control_point.into(),
            ..Self::default()
        }
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// Sets the tokens to take.
    pub fn tokens(mut self, tokens: f64) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Sets the wait budget: the server may keep the flow waiting in a quota or concurrency
    /// scheduler's queue for up to `budget` (less its `decision_deadline_margin`) before it
    /// decides. The client then waits for the reply up to `budget` plus
    /// [`ClientConfig::request_timeout`]. Without it a check is decided at once.
    pub fn wait(mut self, budget: Duration) -> Self {
        self.wait = Some(budget);
        self
    }

    fn label_pairs(&self) -> impl Iterator<Item = (&str, &str)> + Clone {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The budget as it goes on the wire: whole milliseconds, rounded down (so the server
    /// never decides after the caller stopped waiting), capped at `u32::MAX`.
    fn wait_budget_ms(&self) -> Option<u32> {
        self.wait
            .map(|w| u32::try_from(w.as_millis()).unwrap_or(u32::MAX))
    }

    /// How long the client waits for this check's reply.
    fn timeout(&self, request_timeout: Duration) -> Duration {
        match self.wait {
            Some(budget) => budget.saturating_add(request_timeout),
            None => request_timeout,
        }
    }
}

/// Why a request got no decision from the server.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// Dialling failed (or is backing off after failures).
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Address dialled.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// No reply within `request_timeout`.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection dropped while the request was in flight (or was already dead).
    #[error("connection to {addr} closed: {reason}")]
    Closed {
        /// Address of the connection.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// The server answered with `ERROR`.
    #[error("server error {code}: {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server's bytes or answer made no sense (wrong reply type, malformed frame, ...).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request cannot be encoded (too many labels, string too long, bad tokens, ...).
    #[error("invalid request: {0}")]
    Encode(#[from] EncodeError),
}

/// Who decided a [`Verdict`].
#[derive(Debug, Clone, PartialEq)]
pub enum DecidedBy {
    /// The server answered.
    Server(CheckReply),
    /// The server could not be asked; the configured fail mode decided.
    FailMode {
        /// The mode applied.
        mode: FailMode,
        /// Why the server could not decide.
        error: ClientError,
    },
}

/// The outcome of [`Client::check_with_fail_mode`]: always a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether to let the request through.
    pub accepted: bool,
    /// Whether the server or the fail mode decided, with the reply or the error.
    pub decided_by: DecidedBy,
}

/// A shard-aware, pipelined Tollgate client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.cfg.addr)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

struct Inner {
    cfg: ClientConfig,
    hello: HelloReply,
    /// Which label keys route a check, per control point (from `hello`).
    routing: RoutingKeys,
    /// The connection to the shared port (HELLO, MEMBERS, PING, and checks when not routing).
    shared: Conn,
    /// One connection per shard port, indexed by shard; empty when not shard-aware.
    shards: Vec<Conn>,
    /// Checks per `CHECK_BATCH` frame: `min(MAX_BATCH, HELLO_REPLY.max_batch)`, at least 1.
    max_batch: usize,
}

impl Client {
    /// Dials the shared port, exchanges `HELLO`, and (if `shard_aware` and the server advertises
    /// shard ports) opens one connection per shard port on the same host. Shard connections
    /// that fail to open are retried on use; only the shared port must answer.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let dialer = Dialer {
            connect_timeout: cfg.connect_timeout,
            tls: cfg.tls.clone(),
        };
        let shared = Conn::new(
            cfg.addr.clone(),
            cfg.max_in_flight,
            DEFAULT_MAX_FRAME_LEN,
            dialer.clone(),
        );
        let deadline_budget = cfg.connect_timeout.saturating_add(cfg.request_timeout);
        let name = cfg.client_name.clone();
        let api_key = cfg.api_key.clone();
        let hello = |version: u16| {
            let (name, api_key) = (name.clone(), api_key.clone());
            shared.call(deadline_budget, move |_, out, id| {
                let key = api_key.as_ref().map(ApiKey::expose);
                encode_hello_with_key(out, id, version, &name, key).map(|()| 0)
            })
        };
        let reply = match hello(PROTOCOL_VERSION).await {
            // A version-1 server refuses a higher version instead of answering in its own.
            Err(ClientError::Server {
                code: ErrorCode::UnsupportedVersion,
                ..
            }) => hello(ProtocolVersion::V1.as_u16()).await?,
            other => other?,
        };
        let Reply::Hello(hello) = reply else {
            return Err(unexpected("HELLO_REPLY", &reply));
        };
        // A redialled shared connection must speak the same version (and authenticate).
        shared.greet_on_dial(hello.version, &name, api_key.as_ref());
        let max_in_flight = usize::try_from(hello.max_in_flight)
            .unwrap_or(usize::MAX)
            .min(cfg.max_in_flight)
            .max(1);
        shared.apply_limits(max_in_flight, hello.max_frame_len);

        let routable = cfg.shard_aware
            && !hello.shard_ports.is_empty()
            && hello.shard_ports.len() == usize::from(hello.shard_count)
            && hello.hash_algo == HASH_FNV1A_64;
        if cfg.shard_aware && !hello.shard_ports.is_empty() && !routable {
            tracing::warn!(
                shard_count = hello.shard_count,
                ports = hello.shard_ports.len(),
                hash_algo = hello.hash_algo,
                "server's shard ports unusable by this client; routing everything via the shared port"
            );
        }
        let mut shards = Vec::new();
        if routable {
            let host = host_of(&cfg.addr);
            for port in &hello.shard_ports {
                let conn = Conn::new(
                    format!("{host}:{port}"),
                    max_in_flight,
                    hello.max_frame_len,
                    dialer.clone(),
                );
                conn.greet_on_dial(hello.version, &name, api_key.as_ref());
                shards.push(conn);
            }
            for conn in &shards {
                if let Err(e) = conn.warm_up().await {
                    tracing::warn!(addr = conn.addr(), error = %e, "shard connection failed; will retry on use");
                }
            }
        }
        let max_batch = usize::from(hello.max_batch).clamp(1, MAX_BATCH);
        Ok(Client {
            inner: Arc::new(Inner {
                cfg,
                routing: RoutingKeys::from_hello(&hello),
                hello,
                shared,
                shards,
                max_batch,
            }),
        })
    }

    /// The server's handshake answer.
    pub fn hello(&self) -> &HelloReply {
        &self.inner.hello
    }

    /// The protocol version the client and the server agreed on. In version 1 checks cannot
    /// wait (a wait budget is not sent: a version-1 server has no queues) and replies carry no
    /// flow ids.
    pub fn version(&self) -> ProtocolVersion {
        self.inner.hello.version
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The shard that owns `req`'s bucket, if the client routes by shard: the shard of the
    /// first of its control point's routing keys that it carries (see
    /// [`crate::routing::RoutingKeys`]).
    pub fn shard_of(&self, req: &CheckRequest) -> Option<usize> {
        if self.inner.shards.is_empty() {
            return None;
        }
        Some(self.inner.routing.shard_for(
            &req.control_point,
            req.label_pairs(),
            self.inner.shards.len(),
        ))
    }

    /// The shard that holds flow `id` (its top bits), if the client routes by shard and has a
    /// connection to it.
    pub fn shard_of_flow(&self, id: u64) -> Option<usize> {
        let shard = shard_of_flow(id);
        (shard < self.inner.shards.len()).then_some(shard)
    }

    fn conn_for(&self, shard: Option<usize>) -> &Conn {
        shard
            .and_then(|s| self.inner.shards.get(s))
            .unwrap_or(&self.inner.shared)
    }

    /// Asks the server to decide one check, sent to the shard that owns its bucket. With a
    /// wait budget the reply may take up to that budget (plus the request timeout).
    pub async fn check(&self, req: &CheckRequest) -> Result<CheckReply, ClientError> {
        validate(req)?;
        let timeout = req.timeout(self.inner.cfg.request_timeout);
        let shard = self.shard_of(req);
        let result = self.check_on(self.conn_for(shard), req, timeout).await;
        match result {
            // The shard port is unreachable: the shared port's shard forwards to the owner.
            Err(ClientError::Connect { .. }) if shard.is_some() => {
                self.check_on(&self.inner.shared, req, timeout).await
            }
            other => other,
        }
    }

    async fn check_on(
        &self,
        conn: &Conn,
        req: &CheckRequest,
        timeout: Duration,
    ) -> Result<CheckReply, ClientError> {
        let version = self.version();
        let reply = conn
            .call(timeout, |st, out, id| {
                encode_check_interned(st, out, id, req, version)
            })
            .await?;
        match reply {
            Reply::Check(r) => Ok(r),
            other => Err(unexpected("CHECK_REPLY", &other)),
        }
    }

    /// Like [`check`](Self::check) but never fails: if the server cannot answer (dial failure,
    /// timeout, closed connection, server error) the configured [`FailMode`] decides.
    pub async fn check_with_fail_mode(&self, req: &CheckRequest) -> Verdict {
        match self.check(req).await {
            Ok(reply) => Verdict {
                accepted: reply.accepted(),
                decided_by: DecidedBy::Server(reply),
            },
            Err(error) => {
                let mode = self.inner.cfg.fail_mode;
                Verdict {
                    accepted: mode == FailMode::Open,
                    decided_by: DecidedBy::FailMode { mode, error },
                }
            }
        }
    }

    /// Decides many checks. They are grouped by owning shard and sent as `CHECK_BATCH` frames
    /// of at most `HELLO_REPLY.max_batch` checks, all pipelined at once; the results come back
    /// in `reqs` order. An item fails alone (e.g. its own server error, or its group's
    /// connection dropping); the outer `Err` means no item could be decided at all, or `reqs`
    /// holds an invalid request.
    pub async fn check_batch(
        &self,
        reqs: &[CheckRequest],
    ) -> Result<Vec<Result<CheckReply, ClientError>>, ClientError> {
        for r in reqs {
            validate(r)?;
        }
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        // The batch is answered when its slowest check is decided.
        let request_timeout = self.inner.cfg.request_timeout;
        let timeout = reqs
            .iter()
            .map(|r| r.timeout(request_timeout))
            .max()
            .unwrap_or(request_timeout);
        let deadline = Instant::now() + timeout;
        let version = self.version();
        // Group request indices by connection (shard index, or None for the shared port).
        let mut groups: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let shard = self.shard_of(r);
            match groups.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((shard, vec![i])),
            }
        }
        // Send every chunk before awaiting any, so they are all in flight together.
        let mut sent = Vec::new();
        for (shard, idx) in &groups {
            for chunk in idx.chunks(self.inner.max_batch) {
                let conn = self.conn_for(*shard);
                let started = conn
                    .start(deadline, timeout, |st, out, id| {
                        encode_batch_interned(st, out, id, reqs, chunk, version)
                    })
                    .await;
                sent.push((chunk, started));
            }
        }
        let mut results: Vec<Option<Result<CheckReply, ClientError>>> = vec![None; reqs.len()];
        let mut any_decided = false;
        let mut first_err = None;
        for (chunk, started) in sent {
            let outcome = match started {
                Ok(in_flight) => in_flight.wait(deadline, timeout).await,
                Err(e) => Err(e),
            };
            let items = match outcome {
                Ok(Reply::Batch(items)) if items.len() == chunk.len() => items,
                Ok(Reply::Batch(items)) => {
                    let e = ClientError::Protocol(format!(
                        "BATCH_REPLY has {} items for {} checks",
                        items.len(),
                        chunk.len()
                    ));
                    fill(&mut results, chunk, &e);
                    first_err.get_or_insert(e);
                    continue;
                }
                Ok(other) => {
                    let e = unexpected("BATCH_REPLY", &other);
                    fill(&mut results, chunk, &e);
                    first_err.get_or_insert(e);
                    continue;
                }
                Err(e) => {
                    fill(&mut results, chunk, &e);
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            any_decided = true;
            for (&i, item) in chunk.iter().zip(items) {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(match item {
                        BatchItem::Reply(r) => Ok(r),
                        BatchItem::Error(e) => Err(ClientError::Server {
                            code: e.code,
                            message: e.message,
                        }),
                    });
                }
            }
        }
        if !any_decided {
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ClientError::Protocol("batch item lost".into()))))
            .collect())
    }

    /// Ends flows that concurrency components admitted ([`CheckReply::flow_ids`]), giving
    /// their tokens back. Each id goes to the shard port named by its top bits (when
    /// shard-aware; else, or if that port is unreachable, to the shared port, whose shard
    /// forwards it), at most [`MAX_FLOW_END`] ids per frame, all frames pipelined. Returns one
    /// status per id, in order: [`FlowEndStatus::Unknown`] for a flow that was never started,
    /// already ended or expired — harmless. Ending is idempotent, so after an error the whole
    /// call can be retried.
    pub async fn flow_end(&self, ids: &[u64]) -> Result<Vec<FlowEndStatus>, ClientError> {
        let timeout = self.inner.cfg.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut groups: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let shard = self.shard_of_flow(id);
            match groups.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((shard, vec![i])),
            }
        }
        let mut sent = Vec::new();
        for (shard, idx) in &groups {
            for chunk in idx.chunks(MAX_FLOW_END) {
                let chunk_ids: Vec<u64> =
                    chunk.iter().filter_map(|&i| ids.get(i).copied()).collect();
                let build = |_: &mut State, out: &mut Vec<u8>, id: u32| {
                    encode_flow_end(out, id, &chunk_ids).map(|()| 0)
                };
                let started = match self.conn_for(*shard).start(deadline, timeout, build).await {
                    // The shard port is unreachable: the shared port's shard forwards the ends.
                    Err(ClientError::Connect { .. }) if shard.is_some() => {
                        self.inner.shared.start(deadline, timeout, build).await
                    }
                    other => other,
                };
                sent.push((chunk, started));
            }
        }
        let mut statuses = vec![FlowEndStatus::Unknown; ids.len()];
        for (chunk, started) in sent {
            match started?.wait(deadline, timeout).await? {
                Reply::FlowEnd(got) if got.len() == chunk.len() => {
                    for (&i, status) in chunk.iter().zip(got) {
                        if let Some(slot) = statuses.get_mut(i) {
                            *slot = status;
                        }
                    }
                }
                Reply::FlowEnd(got) => {
                    return Err(ClientError::Protocol(format!(
                        "FLOW_END_REPLY has {} statuses for {} flow ids",
                        got.len(),
                        chunk.len()
                    )))
                }
                other => return Err(unexpected("FLOW_END_REPLY", &other)),
            }
        }
        Ok(statuses)
    }

    /// The cluster membership as the server on the shared port sees it.
    pub async fn members(&self) -> Result<Vec<Member>, ClientError> {
        let reply = self
            .inner
            .shared
            .call(self.inner.cfg.request_timeout, |_, out, id| {
                encode_members(out, id).map(|()| 0)
            })
            .await?;
        match reply {
            Reply::Members(m) => Ok(m),
            other => Err(unexpected("MEMBERS_REPLY", &other)),
        }
    }

    /// Round trip of an opaque payload over the shared connection; checks the echo.
    pub async fn ping(&self, payload: &[u8]) -> Result<(), ClientError> {
        let reply = self
            .inner
            .shared
            .call(self.inner.cfg.request_timeout, |_, out, id| {
                encode_ping(out, id, payload).map(|()| 0)
            })
            .await?;
        match reply {
            Reply::Pong(p) if p == payload => Ok(()),
            Reply::Pong(_) => Err(ClientError::Protocol(
                "PONG payload differs from PING".into(),
            )),
            other => Err(unexpected("PONG", &other)),
        }
    }
}

fn fill(results: &mut [Option<Result<CheckReply, ClientError>>], chunk: &[usize], e: &ClientError) {
    for &i in chunk {
        if let Some(slot) = results.get_mut(i) {
            *slot = Some(Err(e.clone()));
        }
    }
}

fn unexpected(wanted: &str, got: &Reply) -> ClientError {
    let got = match got {
        Reply::Hello(_) => "HELLO_REPLY",
        Reply::Check(_) => "CHECK_REPLY",
        Reply::Batch(_) => "BATCH_REPLY",
        Reply::Members(_) => "MEMBERS_REPLY",
        Reply::Pong(_) => "PONG",
        Reply::FlowEnd(_) => "FLOW_END_REPLY",
        Reply::Error(_) => "ERROR",
    };
    ClientError::Protocol(format!("expected {wanted}, got {got}"))
}

/// Checks what the encoder would reject, before anything is interned.
fn validate(req: &CheckRequest) -> Result<(), ClientError> {
    if req.labels.len() > MAX_LABELS {
        return Err(EncodeError::TooManyLabels {
            count: req.labels.len(),
        }
        .into());
    }
    if let Some(t) = req.tokens {
        if !t.is_finite() || t < 0.0 {
            return Err(EncodeError::InvalidTokens.into());
        }
    }
    let too_long = std::iter::once(req.control_point.as_str())
        .chain(
            req.labels
                .iter()
                .flat_map(|(k, v)| [k.as_str(), v.as_str()]),
        )
        .find(|s| s.len() > crate::MAX_STRING_LEN);
    if let Some(s) = too_long {
        return Err(EncodeError::StringTooLong { len: s.len() }.into());
    }
    Ok(())
}

/// Labels of one check, kept on the stack for the common case.
type LabelRefs<'a> = SmallVec<[(StrRef<'a>, &'a str); 8]>;

/// The wire form of `req`, interning its strings (the `INTERN` frames go to `out` first, with
/// the request's id `id`). A wait budget is left out in version 1: a version-1 server has no
/// queues, so it decides at once either way, and would refuse the flag bit.
fn spec_of<'a>(
    st: &mut State,
    out: &mut Vec<u8>,
    req: &'a CheckRequest,
    id: u32,
    version: ProtocolVersion,
) -> CheckSpecParts<'a> {
    let control_point = st.intern(out, &req.control_point, id);
    let labels = req
        .labels
        .iter()
        .map(|(k, v)| (st.intern(out, k, id), v.as_str()))
        .collect();
    let wait_budget_ms = match version {
        ProtocolVersion::V1 => None,
        ProtocolVersion::V2 | ProtocolVersion::V3 => req.wait_budget_ms(),
    };
    CheckSpecParts {
        control_point,
        tokens: req.tokens,
        wait_budget_ms,
        labels,
    }
}

/// A [`CheckSpec`] whose labels are owned here.
struct CheckSpecParts<'a> {
    control_point: StrRef<'a>,
    tokens: Option<f64>,
    wait_budget_ms: Option<u32>,
    labels: LabelRefs<'a>,
}

impl CheckSpecParts<'_> {
    fn spec(&self) -> CheckSpec<'_> {
        CheckSpec {
            control_point: self.control_point,
            tokens: self.tokens,
            wait_budget_ms: self.wait_budget_ms,
            labels: &self.labels,
        }
    }
}

fn encode_check_interned(
    st: &mut State,
    out: &mut Vec<u8>,
    id: u32,
    req: &CheckRequest,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    let parts = spec_of(st, out, req, id, version);
    let at = out.len();
    encode_check(out, id, &parts.spec())?;
    Ok(at)
}

fn encode_batch_interned(
    st: &mut State,
    out: &mut Vec<u8>,
    id: u32,
    reqs: &[CheckRequest],
    chunk: &[usize],
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    let parts: Vec<CheckSpecParts<'_>> = chunk
        .iter()
        .filter_map(|&i| reqs.get(i))
        .map(|req| spec_of(st, out, req, id, version))
        .collect();
    let specs: Vec<CheckSpec<'_>> = parts.iter().map(CheckSpecParts::spec).collect();
    let at = out.len();
    encode_check_batch(out, id, &specs)?;
    Ok(at)
}

/// The host part of `host:port` (`[v6]:port` keeps its brackets).
fn host_of(addr: &str) -> &str {
    if addr.starts_with('[') {
        if let Some(end) = addr.find(']') {
            return addr.get(..=end).unwrap_or(addr);
        }
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parsing() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "[::1]");
        assert_eq!(host_of("localhost:1"), "localhost");
        assert_eq!(host_of("noport"), "noport");
    }
}
