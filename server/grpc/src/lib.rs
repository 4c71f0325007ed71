//! Tollgate's gRPC compat port: lets applications written against FluxNinja Aperture's SDKs
//! (aperture-py, @fluxninja/aperture-js, Go, Java) and Envoy's rate limit filter use Tollgate
//! unchanged.
//!
//! This crate owns everything on that port except the generated wire definitions (the
//! `tollgate-proto` crate, re-exported here as [`proto`]): the translation between those
//! messages and `tollgate_policy`'s flows and decisions, the result/global cache, the OTLP span
//! sink, API-key auth, TLS, keepalive, health and reflection, and the small tokio runtime thread
//! that runs it.
//! It owns **no token buckets**: every decision and every flow end goes through a
//! [`DecisionBackend`], which the server crate implements by handing the flow to the glommio
//! shard that owns its bucket (where a scheduler may queue it until the call's deadline).
//!
//! # Layout
//! - [`server`] — [`start`] and [`GrpcHandle`]: runtime threads, the services (health,
//!   reflection, ...) behind [`hot_calls::HotCalls`], start-up errors, shutdown.
//! - [`backend`] — the [`DecisionBackend`] trait the server implements (check for a service
//!   with a deadline, end flows), [`GrpcService`], [`EndStatus`] and [`BackendError`].
//! - [`flowcontrol`] — `aperture.flowcontrol.check.v1.FlowControlService` (Check, cache RPCs,
//!   FlowEnd).
//! - [`reply`] — a decision as Aperture's agent answers it: one `LimiterDecision` per component
//!   with the details of its kind, reject reason and status.
//! - [`check_reply`] — [`check_reply::CheckAnswer`]: the same answer written straight into the
//!   reply's bytes (the direct path), or built as the message (tonic's).
//! - [`request_bounds`] — the bounds a `Check` request must keep (labels, sizes); beyond them
//!   a REJECTED decision, not an RPC error.
//! - [`connections`] — the port's connection cap and handshake timeout.
//! - [`rls`] — `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//! - [`otlp`] — `opentelemetry.proto.collector.trace.v1.TraceService/Export` span sink; a span
//!   that expects no `FlowEnd` ends its flows.
//! - [`span_flows`] — which flows a span's `aperture.check_response` ends (bounded JSON
//!   parsing).
//! - [`cache`] — the bounded TTL cache (sans-IO, time passed in).
//! - [`config`] — [`GrpcSettings`]: TLS and cache bounds from the `server:` section.
//! - [`auth`] — optional `x-api-key` check.
//! - [`reject_header`] — the `tollgate-reject-reason` response header: why a flow could not be
//!   judged.
//! - [`transport`] — the port's HTTP/2 server: hyper's, on the bounded connections, with TLS,
//!   keepalive, the stream limit, `grpc-timeout` and a graceful drain (no tonic server).
//! - [`tls`] — a rustls server configuration from the PEM files of `server.tls` (and of the
//!   binary ports' `server.binary_tls`, which the server crate serves).
//! - [`hot_calls`] — [`hot_calls::HotCalls`], the port's service: `Check` and
//!   `ShouldRateLimit` straight to their handlers, everything else through tonic's routes.
//! - [`direct_unary`] — a unary call answered without tonic's codec (the body read into one
//!   buffer, the reply framed into one); any other case goes to the routes as before.
//! - [`undecodable`] — [`undecodable::InvalidArgumentOnUndecodable`]: a request message that
//!   does not decode is `INVALID_ARGUMENT`, not tonic's `INTERNAL`.
//! - [`deadline`] — `grpc-timeout` parsing and the safety net at the client's deadline.
//! - `fuzzing` (tests and `cfg(fuzzing)` only) — the body of the `grpc_request` fuzz target:
//!   the direct path's body reading, the hot requests' bounds, `grpc-timeout`, span JSON.
//! - [`proto`] — the `tollgate-proto` crate: generated messages, servers and clients.
//!
//! # Security
//! With `server.api_keys` non-empty, every service except `grpc.health.v1.Health` requires
//! metadata `x-api-key` (else `UNAUTHENTICATED`); health stays open for probes. The SDKs only
//! send the key over TLS (gRPC call credentials), so pair `api_keys` with `server.tls`.
#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod cache;
pub mod check_reply;
pub mod config;
pub mod connections;
pub mod deadline;
pub mod direct_unary;
pub mod flowcontrol;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod hot_calls;
pub mod otlp;
pub mod reject_header;
pub mod reply;
pub mod request_bounds;
pub mod rls;
pub mod server;
pub mod span_flows;
pub mod tls;
pub mod transport;
pub mod undecodable;

pub use backend::{
    BackendError, DecisionBackend, DecisionFuture, EndStatus, FlowEndFuture, GrpcService,
};
pub use config::{CacheConfig, ConnectionConfig, GrpcSettings, TlsConfig};
pub use server::{start, CacheUsage, GrpcHandle, GrpcObserver};
/// The generated messages, servers and clients (the `tollgate-proto` crate), under their
/// historical path `tollgate_grpc::proto`.
pub use tollgate_proto as proto;
/// The tonic this crate is built with, so callers can use [`proto`]'s clients without naming a
/// tonic version themselves.
pub use tonic;
