//! The gRPC transport floor served the thread-per-core way: the same constant handlers as
//! `grpc_floor` ([`tollgate_benches::floor`]), the same tonic services and HTTP/2 stream limit,
//! but hyper's HTTP/2 server driven by one glommio executor per shard (io_uring, no tokio),
//! each accepting on the port with SO_REUSEPORT.
//!
//! It measures what serving the compat port on the shards themselves would start from
//! (docs/performance.md, section:grpc): `benches/grpc_compare.sh` runs it next to `grpc_floor`.
//! Each connection's writes go through [`Corked`] unless `--no-cork` is given (the module docs
//! of [`tollgate_benches::cork`] say why).
//!
//! ```text
//! grpc_shard_floor 127.0.0.1:0 [SHARDS] [--no-cork]   # prints "grpc_shard_floor listening ADDR"
//! ```
//!
//! HTTP/2 keepalive is off (hyper needs a timer for it, and a PING every 30 s costs nothing
//! per request). The sockets are bound as the server binds its shared port
//! (`tollgate_server::listeners::bind_per_shard`: TCP_NODELAY, which accepted sockets inherit).

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use anyhow::{bail, Context as _};
use glommio::{LocalExecutorBuilder, Placement};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tollgate_benches::cork::Corked;
use tollgate_benches::floor::Constant;
use tollgate_grpc::proto::aperture::flowcontrol::check::v1::flow_control_service_server::FlowControlServiceServer;
use tollgate_grpc::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use tollgate_grpc::server::MAX_CONCURRENT_STREAMS;
use tollgate_grpc::tonic::service::Routes;
use tollgate_server::listeners::bind_per_shard;

/// Runs hyper's per-stream tasks on the shard that spawns them.
#[derive(Clone, Copy)]
struct ShardExecutor;

impl<F: Future + 'static> hyper::rt::Executor<F> for ShardExecutor {
    fn execute(&self, fut: F) {
        glommio::spawn_local(async move {
            fut.await;
        })
        .detach();
    }
}

/// Accepts on `listener` and serves each connection on this shard until the process ends.
async fn serve(listener: glommio::net::TcpListener, cork: bool) {
    let routes = Routes::new(RateLimitServiceServer::new(Constant))
        .add_service(FlowControlServiceServer::new(Constant))
        .prepare();
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(routes.clone());
        glommio::spawn_local(async move {
            let mut http2 = hyper::server::conn::http2::Builder::new(ShardExecutor);
            http2.max_concurrent_streams(MAX_CONCURRENT_STREAMS);
            let stream = stream.compat();
            // A connection's end (the client closed it) is no news for a floor.
            let _ = if cork {
                let io = TokioIo::new(Corked::new(stream));
                http2.serve_connection(io, service).await
            } else {
                http2.serve_connection(TokioIo::new(stream), service).await
            };
        })
        .detach();
    }
}

fn main() -> anyhow::Result<()> {
    let mut addr: SocketAddr = "127.0.0.1:0".parse()?;
    let mut shards = 2usize;
    let mut cork = true;
    for (i, arg) in std::env::args().skip(1).enumerate() {
        match (i, arg.as_str()) {
            (_, "--no-cork") => cork = false,
            (0, a) => {
                addr = a
                    .parse()
                    .context("the first argument is the address, e.g. 127.0.0.1:0")?
            }
            (1, s) => {
                shards = s
                    .parse()
                    .context("the second argument is the number of shards")?
            }
            (_, other) => {
                bail!("unexpected argument {other:?}: grpc_shard_floor ADDR [SHARDS] [--no-cork]")
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The server's own binding of its shared port: SO_REUSEPORT, TCP_NODELAY, the same backlog.
    let (addr, listeners) = bind_per_shard(addr, shards)?;
    let mut executors = Vec::with_capacity(shards);
    for (i, listener) in listeners.into_iter().enumerate() {
        let fd = listener.into_raw_fd();
        executors.push(
            LocalExecutorBuilder::new(Placement::Fixed(i % cpus))
                .name(&format!("shard-{i}"))
                // As Tollgate's shards run (`server.coop_taskrun`, on by default).
                .coop_taskrun(true)
                .spawn(move || async move {
                    // SAFETY: `fd` is a bound, listening socket handed over exactly once.
                    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(fd) };
                    serve(listener, cork).await
                })
                .map_err(|e| anyhow::anyhow!("starting shard {i} (glommio needs io_uring): {e}"))?,
        );
    }
    println!("grpc_shard_floor listening {addr} shards={shards} cork={cork}");
    for executor in executors {
        executor
            .join()
            .map_err(|e| anyhow::anyhow!("a shard failed: {e}"))?;
    }
    Ok(())
}
