//! The gRPC runtime: one OS thread per listener the server binary bound
//! (`server.grpc_threads`, default 1; the listeners share the port with SO_REUSEPORT, so the
//! kernel spreads connections over them), each running a current-thread tokio runtime with
//! its own HTTP/2 server ([`crate::transport`]).
//!
//! ```text
//!   [tollgate-grpc-N thread: tokio current_thread], one per listener
//!     transport::serve (hyper HTTP/2, optional TLS, keepalive, grpc-timeout, drain)
//!     HotCalls: Check and ShouldRateLimit straight to their handlers (crate::hot_calls);
//!     every other call, and any hot call that is not plain, through tonic's routes:
//!       ├─ aperture.flowcontrol.check.v1.FlowControlService   (api key) ─┐
//!       ├─ envoy.service.ratelimit.v3.RateLimitService          (api key) ─┼─> DecisionBackend ──> shards
//!       ├─ opentelemetry...TraceService                         (api key)  │   (channel hop, no locks)
//!       ├─ grpc.reflection.v1 / v1alpha                         (api key)  │
//!       └─ grpc.health.v1.Health                                (open)     │
//!     TtlCache behind a Mutex (shared by the threads) <───────────────────┘ cache stage
//! ```
//!
//! The threads share the backend, the cache, the connection cap (one semaphore: the cap is
//! the node's) and the stop signal; each has its own services, health reporter and runtime.
//! One thread serves most nodes: handlers only translate messages and await the backend,
//! and the token buckets live on the shards. More raise the port's ceiling when one core's
//! worth of HTTP/2 is not enough (docs/grpc.md). The three Tollgate services are wrapped in
//! [`InvalidArgumentOnUndecodable`] (inside the API-key check, which is there only when keys
//! are set), so a request message that does not decode is answered `INVALID_ARGUMENT`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::GrpcSettings;
use crate::connections::BoundedIncoming;
use anyhow::Context as _;
use tokio::sync::{watch, Semaphore};
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::auth::ApiKeyCheck;
use crate::backend::DecisionBackend;
use crate::cache::{CacheLimits, TtlCache};
use crate::deadline::MonoClock;
use crate::flowcontrol::FlowControl;
use crate::hot_calls::HotCalls;
use crate::otlp::SpanSink;
use crate::proto;
use crate::proto::aperture::flowcontrol::check::v1::flow_control_service_server::FlowControlServiceServer;
use crate::proto::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use crate::proto::opentelemetry::proto::collector::trace::v1::trace_service_server::TraceServiceServer;
use crate::rls::Rls;
use crate::undecodable::InvalidArgumentOnUndecodable;

/// Server-initiated HTTP/2 PING interval: finds dead clients behind NATs. Client pings (the
/// Python SDK sends one every 10 s) are always answered: hyper's h2 server has no ping-strike
/// policy that could GOAWAY them.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a server PING may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most concurrent streams per HTTP/2 connection: bounds the work one client can queue.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// How long [`GrpcHandle::shutdown`] lets in-flight calls finish before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Health service names reported SERVING: "" (the whole server) and the name Aperture's agent
/// registers, plus the services Tollgate really serves.
pub const HEALTH_SERVICE_NAMES: [&str; 4] = [
    "",
    "aperture.flowcontrol.v1.FlowControlService",
    "aperture.flowcontrol.check.v1.FlowControlService",
    "envoy.service.ratelimit.v3.RateLimitService",
];

/// A running gRPC server. Dropping it shuts it down like [`GrpcHandle::shutdown`].
#[derive(Debug)]
pub struct GrpcHandle {
    /// Address actually bound (port 0 resolved).
    local_addr: SocketAddr,
    /// `true` = stop accepting and drain.
    stop: watch::Sender<bool>,
    /// The runtime threads, one per listener; emptied once joined.
    threads: Vec<JoinHandle<()>>,
    /// OTLP spans received so far.
    spans: Arc<AtomicU64>,
    /// The result/global cache, for [`GrpcObserver`].
    cache: Arc<Mutex<TtlCache>>,
}

/// Reads the port's state from another thread (the admin port's metrics).
#[derive(Clone, Debug)]
pub struct GrpcObserver {
    cache: Arc<Mutex<TtlCache>>,
    spans: Arc<AtomicU64>,
}

/// How full the result/global cache is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// Entries.
    pub entries: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

impl GrpcObserver {
    /// The cache's size now (takes the cache's lock briefly, as a handler does).
    pub fn cache_usage(&self) -> CacheUsage {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        CacheUsage {
            entries: cache.len(),
            bytes: cache.total_bytes(),
        }
    }

    /// OTLP spans received since start.
    pub fn spans_received(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

impl GrpcHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// OTLP spans received since start (the SDKs export one per flow).
    pub fn spans_received(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }

    /// A reader of the port's state that outlives no thread (clone it anywhere).
    pub fn observer(&self) -> GrpcObserver {
        GrpcObserver {
            cache: self.cache.clone(),
            spans: self.spans.clone(),
        }
    }

    /// Graceful stop: stop accepting, let in-flight calls finish (at most [`SHUTDOWN_GRACE`]),
    /// join the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("grpc runtime thread panicked");
            }
        }
    }
}

impl Drop for GrpcHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts the gRPC compat port on `listeners` (already bound by the caller to one address,
/// with SO_REUSEPORT when there are several), one thread for each, with `settings` (API keys,
/// TLS, cache bounds), deciding through `backend`.
///
/// Errors (no listener, unreadable TLS files, runtime creation) are returned before any
/// thread is left running.
pub fn start(
    listeners: Vec<std::net::TcpListener>,
    settings: &GrpcSettings,
    backend: Arc<dyn DecisionBackend>,
) -> anyhow::Result<GrpcHandle> {
    let first = listeners
        .first()
        .context("the grpc port needs at least one listener")?;
    let local_addr = first.local_addr().context("grpc listener address")?;
    let tls = match &settings.tls {
        Some(tls) => Some(
            crate::tls::server_config(tls, "server.tls", &[crate::tls::ALPN_H2])
                .context("TLS on the grpc port")?,
        ),
        None => None,
    };
    let limits = CacheLimits {
        max_entries: settings.cache.max_entries,
        max_total_bytes: settings.cache.max_total_bytes,
        max_entry_bytes: settings.cache.max_entry_bytes,
    };
    let shared = Shared {
        auth: ApiKeyCheck::new(&settings.api_keys),
        tls,
        backend,
        cache: Arc::new(Mutex::new(TtlCache::new(limits))),
        spans: Arc::new(AtomicU64::new(0)),
        permits: BoundedIncoming::permits(&settings.connections),
        handshake_timeout: settings.connections.handshake_timeout.0,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handle = GrpcHandle {
        local_addr,
        stop: stop_tx,
        threads: Vec::with_capacity(listeners.len()),
        spans: shared.spans.clone(),
        cache: shared.cache.clone(),
    };
    let count = listeners.len();
    for (i, listener) in listeners.into_iter().enumerate() {
        // On an error the handle, dropped, stops and joins the threads already started.
        let thread = serve_thread(i, listener, &shared, stop_rx.clone())?;
        handle.threads.push(thread);
    }
    tracing::info!(%local_addr, threads = count, tls = settings.tls.is_some(), api_keys = shared.auth.enabled(), "grpc compat port listening");
    Ok(handle)
}

/// What the port's threads share.
struct Shared {
    auth: ApiKeyCheck,
    tls: Option<Arc<rustls::ServerConfig>>,
    backend: Arc<dyn DecisionBackend>,
    cache: Arc<Mutex<TtlCache>>,
    spans: Arc<AtomicU64>,
    /// The node's connection cap, over all threads.
    permits: Arc<Semaphore>,
    handshake_timeout: Duration,
}

/// Starts thread `index` serving `listener` until `stop` says so; returns once it serves (or
/// with the error that kept it from serving, its thread joined).
fn serve_thread(
    index: usize,
    listener: std::net::TcpListener,
    shared: &Shared,
    stop_rx: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(format!("tollgate-grpc-{index}"))
        .build()
        .context("building the grpc tokio runtime")?;

    let sink = SpanSink {
        spans: shared.spans.clone(),
        backend: shared.backend.clone(),
    };
    let flow_control = FlowControl::new(
        shared.backend.clone(),
        shared.cache.clone(),
        MonoClock::new(),
    );
    let rls = Rls::new(shared.backend.clone());

    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let auth = &shared.auth;
    let routes = Routes::new(health);
    let routes = add_guarded(
        routes,
        InvalidArgumentOnUndecodable::new(FlowControlServiceServer::new(flow_control.clone())),
        auth,
    );
    let routes = add_guarded(
        routes,
        InvalidArgumentOnUndecodable::new(TraceServiceServer::new(sink)),
        auth,
    );
    let routes = add_guarded(
        routes,
        InvalidArgumentOnUndecodable::new(RateLimitServiceServer::new(rls.clone())),
        auth,
    );
    let routes = add_guarded(routes, reflection_v1, auth);
    let routes = add_guarded(routes, reflection_v1alpha, auth);
    let service = HotCalls::new(flow_control, rls, auth.clone(), routes.prepare());
    listener
        .set_nonblocking(true)
        .context("grpc listener non-blocking")?;
    let permits = shared.permits.clone();
    let handshake_timeout = shared.handshake_timeout;
    let tls = shared.tls.clone();

    // Everything that needs the runtime happens on its own thread, so `start` may be called from
    // inside another runtime. Set-up errors come back through `ready`.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name(format!("tollgate-grpc-{index}"))
        .spawn(move || {
            let incoming = {
                let _guard = rt.enter();
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => BoundedIncoming::new(l, permits, handshake_timeout),
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::new(e).context("grpc listener")));
                        return;
                    }
                }
            };
            rt.block_on(async {
                for name in HEALTH_SERVICE_NAMES {
                    health_reporter.set_service_status(name, ServingStatus::Serving).await;
                }
            });
            let _ = ready_tx.send(Ok(()));
            let mut stop_serve = stop_rx.clone();
            let mut stop_grace = stop_rx;
            rt.block_on(async move {
                let reporter = health_reporter.clone();
                let serve = crate::transport::serve(incoming, service, tls, handshake_timeout, async move {
                    // A dropped sender also means stop.
                    let _ = stop_serve.wait_for(|s| *s).await;
                    // Health watchers on open connections learn we are draining.
                    for name in HEALTH_SERVICE_NAMES {
                        reporter.set_service_status(name, ServingStatus::NotServing).await;
                    }
                });
                tokio::select! {
                    () = serve => {}
                    _ = async {
                        let _ = stop_grace.wait_for(|s| *s).await;
                        tokio::time::sleep(SHUTDOWN_GRACE).await;
                    } => {
                        tracing::warn!("grpc shutdown grace of {SHUTDOWN_GRACE:?} elapsed; dropping in-flight calls");
                    }
                }
            });
            tracing::debug!("grpc runtime stopped");
        })
        .context("spawning the grpc thread")?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            anyhow::bail!("grpc thread exited during start-up");
        }
    }
}

/// Adds `service` to `routes` behind the API-key check when keys are configured. Without keys
/// the check accepts every call, and leaving it out spares each call the interceptor's trip
/// (the request taken apart into metadata and extensions and put back together); the handler
/// sees the same request either way.
fn add_guarded<S>(routes: Routes, service: S, auth: &ApiKeyCheck) -> Routes
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    if auth.enabled() {
        routes.add_service(InterceptedService::new(service, auth.clone()))
    } else {
        routes.add_service(service)
    }
}
