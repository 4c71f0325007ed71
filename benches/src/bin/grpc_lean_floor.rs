//! The gRPC transport floor without tonic: the same constant replies as `grpc_floor`
//! ([`tollgate_benches::floor`]), on the same threads (one current-thread tokio runtime per
//! listener), served by a lighter HTTP/2 path: `hyper` (hyper's HTTP/2 server with a plain
//! service function, no tonic layers) or `h2` (the h2 crate's server directly, no hyper).
//!
//! It answers the issue's question of whether a lighter HTTP/2 path than tonic's is worth
//! writing: `benches/grpc_compare.sh` runs it next to `grpc_floor`, and the ratio between the
//! two is the most such a path could gain (docs/performance.md, section:grpc). It serves the
//! two unary calls h2load sends and nothing else: no grpc-timeout, compression, metadata or
//! error mapping, which a real port would need.
//!
//! A third stack, `routes`, is hyper's server over tonic's routes and generated services (tonic
//! without its own server): it splits what tonic costs between its server and the rest.
//!
//! ```text
//! grpc_lean_floor 127.0.0.1:0 h2|hyper|routes [THREADS]   # prints "grpc_lean_floor listening ADDR"
//! ```

use std::convert::Infallible;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use prost::Message;
use tollgate_benches::floor;
use tollgate_benches::floor_threads;
use tollgate_grpc::server::MAX_CONCURRENT_STREAMS;

/// Which lighter path serves the port.
#[derive(Clone, Copy)]
enum Stack {
    /// The h2 crate's server, streams answered in tasks of their own.
    H2,
    /// hyper's HTTP/2 server over a service function.
    Hyper,
    /// hyper's HTTP/2 server over tonic's routes and generated services (no tonic `Server`).
    Routes,
}

/// The two replies, each a whole gRPC message (flag byte, length, body), made once.
#[derive(Clone)]
struct Replies {
    rls: Bytes,
    check: Bytes,
}

impl Replies {
    fn new() -> Replies {
        Replies {
            rls: grpc_message(&floor::rls_reply()),
            check: grpc_message(&floor::check_reply()),
        }
    }

    /// The reply to a call of `path`: Check's for the flow-control service, RLS's otherwise.
    fn for_path(&self, path: &str) -> Bytes {
        if path.ends_with("/Check") {
            self.check.clone()
        } else {
            self.rls.clone()
        }
    }
}

/// `message` framed as gRPC frames a unary message: no compression flag, big-endian length.
fn grpc_message(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    Bytes::from(framed)
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = floor_threads::addr_arg(args.next())?;
    let stack = match args.next().as_deref() {
        Some("h2") => Stack::H2,
        Some("hyper") => Stack::Hyper,
        Some("routes") => Stack::Routes,
        other => bail!("the second argument is the stack, h2, hyper or routes (got {other:?})"),
    };
    let threads = floor_threads::threads_arg(args.next(), "third")?;
    let serve = move |listener| serve(listener, stack);
    floor_threads::serve_on_threads("grpc_lean_floor", addr, threads, serve)
}

/// Serves `listener` on this thread with `stack`, one task per connection.
fn serve(listener: std::net::TcpListener, stack: Stack) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let replies = Replies::new();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (socket, _) = listener.accept().await?;
            socket.set_nodelay(true)?;
            let replies = replies.clone();
            // A connection's end (the client closed it) is no news for a floor.
            match stack {
                Stack::H2 => tokio::spawn(async move {
                    let _ = serve_h2(socket, replies).await;
                }),
                Stack::Hyper => tokio::spawn(async move {
                    let _ = serve_hyper(socket, replies).await;
                }),
                Stack::Routes => tokio::spawn(async move {
                    let _ = serve_routes(socket).await;
                }),
            };
        }
    })
}

async fn serve_h2(socket: tokio::net::TcpStream, replies: Replies) -> anyhow::Result<()> {
    let mut conn = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .handshake::<_, Bytes>(socket)
        .await?;
    while let Some(stream) = conn.accept().await {
        let (request, respond) = stream?;
        let reply = replies.for_path(request.uri().path());
        tokio::spawn(async move {
            let _ = answer_h2(request, respond, reply).await;
        });
    }
    Ok(())
}

/// Reads the request's message and answers it with `reply`.
async fn answer_h2(
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    reply: Bytes,
) -> anyhow::Result<()> {
    let mut body = request.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
    }
    let head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())?;
    let mut send = respond.send_response(head, false)?;
    send.send_data(reply, false)?;
    send.send_trailers(ok_trailers())?;
    Ok(())
}

async fn serve_hyper(socket: tokio::net::TcpStream, replies: Replies) -> anyhow::Result<()> {
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let reply = replies.for_path(request.uri().path());
        async move {
            // The whole request is read before the answer, as a unary gRPC server does.
            let _ = request.into_body().collect().await;
            let body = Full::new(reply).with_trailers(async { Some(Ok(ok_trailers())) });
            let response = Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(body)
                .expect("a constant response head is valid");
            Ok::<_, Infallible>(response)
        }
    });
    http2()
        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
        .await?;
    Ok(())
}

async fn serve_routes(socket: tokio::net::TcpStream) -> anyhow::Result<()> {
    use tollgate_grpc::proto::aperture::flowcontrol::check::v1::flow_control_service_server::FlowControlServiceServer;
    use tollgate_grpc::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
    let routes =
        tollgate_grpc::tonic::service::Routes::new(RateLimitServiceServer::new(floor::Constant))
            .add_service(FlowControlServiceServer::new(floor::Constant))
            .prepare();
    let service = hyper_util::service::TowerToHyperService::new(routes);
    http2()
        .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
        .await?;
    Ok(())
}

/// hyper's HTTP/2 server with the port's stream limit.
fn http2() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http2.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    http2
}
