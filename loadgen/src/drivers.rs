//! One connection to one target, for every protocol the loadgen speaks. A [`Conn`] is cheap to
//! clone and shared by the `--pipeline` tasks of one connection slot; each protocol pipelines
//! their concurrent calls on its own:
//!
//! - `tollgate`: one `tollgate_protocol::client::Client` (its own shared-port connection plus
//!   one connection per shard; requests pipelined and routed to the owning shard).
//! - `grpc`: one tonic `Channel` (one HTTP/2 connection; calls multiplexed as streams).
//! - `redis`: one TCP connection with a writer task that coalesces queued commands into one
//!   write and a reader task that hands replies back in order (the same shape as the Tollgate
//!   client and redis-rs's multiplexed connection, so the baseline is not handicapped).
//! - `echo`: one TCP connection used for one round trip at a time (write, read back), no
//!   tasks in between: the loopback floor.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::access::BinaryAccess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tollgate_proto::aperture::flowcontrol::check::v1 as aperture;
use tollgate_proto::tonic;
use tollgate_protocol::client::{CheckRequest, Client, ClientConfig, FailMode};

use crate::resp::{self, Value};
use crate::target::{Protocol, Target};

/// The Lua token bucket the `redis` target runs (see the file for its contract).
pub const TOKEN_BUCKET_LUA: &str = include_str!("token_bucket.lua");
/// The same bucket for many keys in one call (`--redis-batch one-script`).
pub const TOKEN_BUCKET_MULTI_LUA: &str = include_str!("token_bucket_multi.lua");

/// How a `redis` target decides a `--batch` of checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RedisBatch {
    /// One `EVALSHA` of the single-key script per check, all in one write.
    #[default]
    Pipelined,
    /// One `EVALSHA` of the multi-key script deciding the whole batch: one script run per
    /// batch, as Tollgate decides a `CHECK_BATCH` frame in one go.
    OneScript,
}

/// Bytes of the payload a ping/echo round trip carries: about the size of a check frame.
pub const PING_PAYLOAD_LEN: usize = 32;

/// The writer task coalesces queued Redis commands into one write up to about this many bytes
/// (the Tollgate client does the same, with the same bound).
const REDIS_WRITE_COALESCE: usize = 64 * 1024;
/// Initial read buffer of a Redis connection.
const REDIS_READ_CHUNK: usize = 16 * 1024;

/// An error of one request, as text (the run only counts them and keeps the first).
pub type CallError = String;

/// What a target needs to know about the limit it enforces (Redis takes it per call).
#[derive(Clone, Debug)]
pub struct RedisLimit {
    /// `capacity` argument, formatted once.
    pub capacity: String,
    /// `fill_amount` argument.
    pub fill_amount: String,
    /// `interval` argument in microseconds.
    pub interval_us: String,
}

/// Connection settings common to all protocols.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Deadline of one dial.
    pub connect_timeout: Duration,
    /// Requests the Tollgate client may have in flight per connection.
    pub max_in_flight: usize,
    /// The limit for `redis` targets.
    pub redis_limit: RedisLimit,
    /// API key and TLS of `tollgate` connections.
    pub access: BinaryAccess,
    /// How `redis` targets decide a batch.
    pub redis_batch: RedisBatch,
}

/// The key of a check: by the loadgen's convention the key label (`--label-key`) is the
/// *last* label of every [`CheckRequest`] it builds.
pub fn key_value(req: &CheckRequest) -> &str {
    req.labels.last().map_or("", |(_, v)| v.as_str())
}

/// Tokens a check takes (1 when unset, as the server assumes).
pub fn tokens_of(req: &CheckRequest) -> f64 {
    req.tokens.unwrap_or(1.0)
}

/// A connection to one target.
#[derive(Clone)]
pub enum Conn {
    /// Binary protocol client.
    Tollgate(Client),
    /// Aperture FlowControlService client.
    Grpc(
        aperture::flow_control_service_client::FlowControlServiceClient<tonic::transport::Channel>,
    ),
    /// Redis+Lua.
    Redis(Arc<RedisConn>),
    /// Raw echo.
    Echo(Arc<EchoConn>),
}

impl Conn {
    /// Dials `target`.
    pub async fn connect(target: &Target, s: &ConnSettings) -> Result<Conn, CallError> {
        let dial = async {
            match target.protocol {
                Protocol::Tollgate => {
                    let mut cfg = ClientConfig::new(target.addr.clone(), FailMode::Closed);
                    cfg.request_timeout = s.request_timeout;
                    cfg.connect_timeout = s.connect_timeout;
                    cfg.max_in_flight = s.max_in_flight;
                    cfg.client_name = "tollgate-loadgen".into();
                    s.access.apply(&mut cfg);
                    Client::connect(cfg)
                        .await
                        .map(Conn::Tollgate)
                        .map_err(|e| e.to_string())
                }
                Protocol::Grpc => {
                    let endpoint =
                        tonic::transport::Endpoint::from_shared(format!("http://{}", target.addr))
                            .map_err(|e| e.to_string())?
                            .connect_timeout(s.connect_timeout)
                            .timeout(s.request_timeout)
                            .tcp_nodelay(true);
                    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
                    Ok(Conn::Grpc(
                        aperture::flow_control_service_client::FlowControlServiceClient::new(
                            channel,
                        ),
                    ))
                }
                Protocol::Redis => {
                    RedisConn::connect(&target.addr, s.redis_limit.clone(), s.redis_batch)
                        .await
                        .map(|c| Conn::Redis(Arc::new(c)))
                }
                Protocol::Echo => EchoConn::connect(&target.addr)
                    .await
                    .map(|c| Conn::Echo(Arc::new(c))),
            }
        };
        // The Tollgate client bounds its own dial; this bounds the others (and the HELLO).
        let budget = s.connect_timeout.saturating_add(s.request_timeout);
        tokio::time::timeout(budget, dial)
            .await
            .map_err(|_| format!("connecting to {target} timed out after {budget:?}"))?
    }

    /// Decides one check: `Ok(true)` accepted, `Ok(false)` rejected.
    pub async fn check(&self, req: &CheckRequest) -> Result<bool, CallError> {
        match self {
            Conn::Tollgate(c) => c
                .check(req)
                .await
                .map(|r| r.accepted())
                .map_err(|e| e.to_string()),
            Conn::Grpc(c) => {
                let msg = aperture::CheckRequest {
                    control_point: req.control_point.clone(),
                    labels: req.labels.iter().cloned().collect::<HashMap<_, _>>(),
                    ..Default::default()
                };
                let reply = c
                    .clone()
                    .check(msg)
                    .await
                    .map_err(|s| format!("grpc {:?}: {}", s.code(), s.message()))?;
                Ok(reply.get_ref().decision_type
                    == aperture::check_response::DecisionType::Accepted as i32)
            }
            Conn::Redis(c) => c.check(req).await,
            Conn::Echo(c) => c.round_trip().await.map(|()| true),
        }
    }

    /// Decides several checks with one frame/write where the protocol allows it
    /// (`tollgate`: `CHECK_BATCH`; `redis`: one pipelined write), one by one otherwise.
    pub async fn check_batch(&self, reqs: &[CheckRequest]) -> Vec<Result<bool, CallError>> {
        match self {
            Conn::Tollgate(c) => match c.check_batch(reqs).await {
                Ok(items) => items
                    .into_iter()
                    .map(|i| i.map(|r| r.accepted()).map_err(|e| e.to_string()))
                    .collect(),
                Err(e) => vec![Err(e.to_string()); reqs.len()],
            },
            Conn::Redis(c) => c.check_many(reqs).await,
            _ => {
                let mut out = Vec::with_capacity(reqs.len());
                for r in reqs {
                    out.push(self.check(r).await);
                }
                out
            }
        }
    }

    /// One ping round trip (`tollgate`: PING/PONG on the shared port; `redis`: PING; `echo`:
    /// echo). gRPC has no ping.
    pub async fn ping(&self, payload: &[u8]) -> Result<(), CallError> {
        match self {
            Conn::Tollgate(c) => c.ping(payload).await.map_err(|e| e.to_string()),
            Conn::Redis(c) => match c.call(resp_command(&[b"PING"]), 1).await?.pop() {
                Some(Value::Simple(s)) if s == "PONG" => Ok(()),
                other => Err(format!("unexpected PING reply {other:?}")),
            },
            Conn::Echo(c) => c.round_trip().await,
            Conn::Grpc(_) => Err("grpc targets have no ping; use --mode check".into()),
        }
    }
}

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    resp::encode_command(&mut out, args);
    out
}

/// A pipelined Redis connection running the token-bucket script.
pub struct RedisConn {
    /// Queue to the writer task.
    tx: mpsc::UnboundedSender<Submit>,
    /// SHA1 of the loaded script, from `SCRIPT LOAD`.
    sha: String,
    /// SHA1 of the multi-key script, when batches use it.
    sha_multi: Option<String>,
    /// The limit passed to the script.
    limit: RedisLimit,
}

/// Commands handed to the writer: their bytes, how many replies they produce, and where the
/// replies go.
struct Submit {
    bytes: Vec<u8>,
    replies: usize,
    done: oneshot::Sender<Vec<Value>>,
}

/// What the reader waits for next, in write order.
struct Pending {
    replies: usize,
    done: oneshot::Sender<Vec<Value>>,
}

impl RedisConn {
    /// Dials, starts the writer and reader tasks and loads the script.
    pub async fn connect(
        addr: &str,
        limit: RedisLimit,
        batch: RedisBatch,
    ) -> Result<RedisConn, CallError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to redis at {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ptx, prx) = mpsc::unbounded_channel();
        tokio::spawn(redis_writer(wr, rx, ptx));
        tokio::spawn(redis_reader(rd, prx));
        let mut conn = RedisConn {
            tx,
            sha: String::new(),
            sha_multi: None,
            limit,
        };
        conn.sha = conn.load(TOKEN_BUCKET_LUA).await?;
        if batch == RedisBatch::OneScript {
            conn.sha_multi = Some(conn.load(TOKEN_BUCKET_MULTI_LUA).await?);
        }
        Ok(conn)
    }

    /// `SCRIPT LOAD`s `script`; its SHA1.
    async fn load(&self, script: &str) -> Result<String, CallError> {
        let reply = self
            .call(resp_command(&[b"SCRIPT", b"LOAD", script.as_bytes()]), 1)
            .await?;
        match reply.into_iter().next() {
            Some(Value::Bulk(Some(sha))) => Ok(String::from_utf8_lossy(&sha).into_owned()),
            other => Err(format!("SCRIPT LOAD answered {other:?}")),
        }
    }

    /// Sends raw command bytes producing `replies` replies and waits for them.
    pub async fn call(&self, bytes: Vec<u8>, replies: usize) -> Result<Vec<Value>, CallError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Submit {
                bytes,
                replies,
                done,
            })
            .map_err(|_| "redis connection closed".to_string())?;
        rx.await.map_err(|_| "redis connection closed".to_string())
    }

    fn encode_check(&self, out: &mut Vec<u8>, req: &CheckRequest) {
        encode_evalsha(out, &self.sha, &self.limit, req);
    }

    /// One `EVALSHA` of the token bucket for `req`'s key.
    pub async fn check(&self, req: &CheckRequest) -> Result<bool, CallError> {
        let mut out = Vec::with_capacity(160);
        self.encode_check(&mut out, req);
        let mut replies = self.call(out, 1).await?;
        script_verdict(replies.pop())
    }

    /// Several checks in one write: one `EVALSHA` each, or one of the multi-key script for
    /// all (`RedisBatch::OneScript`).
    pub async fn check_many(&self, reqs: &[CheckRequest]) -> Vec<Result<bool, CallError>> {
        if let Some(sha) = &self.sha_multi {
            return self.check_many_one_script(sha, reqs).await;
        }
        let mut out = Vec::with_capacity(160 * reqs.len());
        for r in reqs {
            self.encode_check(&mut out, r);
        }
        match self.call(out, reqs.len()).await {
            Ok(replies) => replies
                .into_iter()
                .map(|v| script_verdict(Some(v)))
                .collect(),
            Err(e) => vec![Err(e); reqs.len()],
        }
    }
}

impl RedisConn {
    /// One `EVALSHA` of the multi-key script deciding `reqs`.
    async fn check_many_one_script(
        &self,
        sha: &str,
        reqs: &[CheckRequest],
    ) -> Vec<Result<bool, CallError>> {
        let keys: Vec<String> = reqs
            .iter()
            .map(|r| format!("tg:{}:{}", r.control_point, key_value(r)))
            .collect();
        let tokens: Vec<String> = reqs.iter().map(|r| format_tokens(tokens_of(r))).collect();
        let count = reqs.len().to_string();
        let mut args: Vec<&[u8]> = Vec::with_capacity(6 + 2 * reqs.len());
        args.extend([b"EVALSHA".as_slice(), sha.as_bytes(), count.as_bytes()]);
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([
            self.limit.capacity.as_bytes(),
            self.limit.fill_amount.as_bytes(),
            self.limit.interval_us.as_bytes(),
        ]);
        args.extend(tokens.iter().map(|t| t.as_bytes()));
        let mut out = Vec::with_capacity(64 + 40 * reqs.len());
        resp::encode_command(&mut out, &args);
        let reply = match self.call(out, 1).await {
            Ok(mut replies) => replies.pop(),
            Err(e) => return vec![Err(e); reqs.len()],
        };
        match reply {
            Some(Value::Array(Some(items))) if items.len() == reqs.len() => items
                .into_iter()
                .map(|v| match v {
                    Value::Int(1) => Ok(true),
                    Value::Int(0) => Ok(false),
                    other => Err(format!("unexpected verdict {other:?}")),
                })
                .collect(),
            Some(Value::Error(e)) => vec![Err(format!("redis: {e}")); reqs.len()],
            other => vec![Err(format!("unexpected multi-key reply {other:?}")); reqs.len()],
        }
    }
}

/// One `EVALSHA` of the token bucket script `sha` for `req`'s key, appended to `out`.
pub fn encode_evalsha(out: &mut Vec<u8>, sha: &str, limit: &RedisLimit, req: &CheckRequest) {
    let key = format!("tg:{}:{}", req.control_point, key_value(req));
    let tokens = format_tokens(tokens_of(req));
    resp::encode_command(
        out,
        &[
            b"EVALSHA",
            sha.as_bytes(),
            b"1",
            key.as_bytes(),
            limit.capacity.as_bytes(),
            limit.fill_amount.as_bytes(),
            limit.interval_us.as_bytes(),
            tokens.as_bytes(),
        ],
    );
}

/// Tokens as the script's argument: integers without a decimal point.
fn format_tokens(t: f64) -> String {
    if t.fract() == 0.0 && t.abs() < 1e15 {
        format!("{}", t as i64)
    } else {
        format!("{t}")
    }
}

/// Reads the script's `{accepted, remaining, wait}` reply.
pub fn script_verdict(v: Option<Value>) -> Result<bool, CallError> {
    match v {
        Some(Value::Array(Some(items))) => match items.first() {
            Some(Value::Int(1)) => Ok(true),
            Some(Value::Int(0)) => Ok(false),
            other => Err(format!("unexpected script result {other:?}")),
        },
        Some(Value::Error(e)) => Err(format!("redis: {e}")),
        other => Err(format!("unexpected EVALSHA reply {other:?}")),
    }
}

async fn redis_writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Submit>,
    pending: mpsc::UnboundedSender<Pending>,
) {
    let mut buf = Vec::with_capacity(REDIS_WRITE_COALESCE);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut next = Some(first);
        while let Some(s) = next.take() {
            buf.extend_from_slice(&s.bytes);
            // Register before writing, so the reader knows whom a reply belongs to.
            if pending
                .send(Pending {
                    replies: s.replies,
                    done: s.done,
                })
                .is_err()
            {
                return;
            }
            if buf.len() < REDIS_WRITE_COALESCE {
                next = rx.try_recv().ok();
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
}

async fn redis_reader(mut rd: OwnedReadHalf, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut buf: Vec<u8> = Vec::with_capacity(REDIS_READ_CHUNK);
    let mut start = 0;
    let mut current: Option<(Pending, Vec<Value>)> = None;
    loop {
        // Decode every complete reply buffered.
        loop {
            match resp::decode(&buf[start..]) {
                Ok(Some((value, used))) => {
                    start += used;
                    if current.is_none() {
                        let Some(p) = pending.recv().await else {
                            return;
                        };
                        let n = p.replies;
                        current = Some((p, Vec::with_capacity(n)));
                    }
                    if let Some((p, values)) = current.as_mut() {
                        values.push(value);
                        if values.len() >= p.replies {
                            if let Some((p, values)) = current.take() {
                                let _ = p.done.send(values);
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bad reply from redis; closing the connection");
                    return;
                }
            }
        }
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        if buf.capacity() - buf.len() < REDIS_READ_CHUNK / 4 {
            buf.reserve(REDIS_READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A raw TCP echo connection: one round trip at a time.
pub struct EchoConn {
    stream: tokio::sync::Mutex<(TcpStream, [u8; PING_PAYLOAD_LEN])>,
}

impl EchoConn {
    /// Dials an echo server.
    pub async fn connect(addr: &str) -> Result<EchoConn, CallError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to echo server at {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(EchoConn {
            stream: tokio::sync::Mutex::new((stream, [0u8; PING_PAYLOAD_LEN])),
        })
    }

    /// Writes [`PING_PAYLOAD_LEN`] bytes and reads them back.
    pub async fn round_trip(&self) -> Result<(), CallError> {
        let mut guard = self.stream.lock().await;
        let (stream, buf) = &mut *guard;
        let payload = [0x5au8; PING_PAYLOAD_LEN];
        stream
            .write_all(&payload)
            .await
            .map_err(|e| format!("echo write: {e}"))?;
        stream
            .read_exact(buf)
            .await
            .map_err(|e| format!("echo read: {e}"))?;
        if buf[..] != payload[..] {
            return Err("echo returned different bytes".into());
        }
        Ok(())
    }
}

/// Runs a raw TCP echo server on `listener` until the process ends: every byte read is written
/// back on the same connection.
pub async fn echo_server(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let _ = sock.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if sock.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_and_tokens() {
        let ok = Value::Array(Some(vec![
            Value::Int(1),
            Value::Bulk(Some(b"3".to_vec())),
            Value::Int(0),
        ]));
        assert_eq!(script_verdict(Some(ok)), Ok(true));
        let no = Value::Array(Some(vec![Value::Int(0)]));
        assert_eq!(script_verdict(Some(no)), Ok(false));
        assert!(script_verdict(Some(Value::Error("NOSCRIPT".into()))).is_err());
        assert!(script_verdict(None).is_err());
        assert_eq!(format_tokens(1.0), "1");
        assert_eq!(format_tokens(0.5), "0.5");
    }
}
