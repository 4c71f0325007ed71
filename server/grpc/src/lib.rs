//! Tollgate's gRPC compat port: lets applications written against FluxNinja Aperture's SDKs
//! (aperture-py, @fluxninja/aperture-js, Go, Java) and Envoy's rate limit filter use Tollgate
//! unchanged.
//!
//! This crate owns everything on that port except the generated wire definitions (the
//! `tollgate-proto` crate, re-exported here as [`proto`]): the translation between those
//! messages and `tollgate_policy`'s flows and decisions, the result/global cache, the OTLP span
//! sink, API-key auth, TLS, keepalive, health and reflection, and the small tokio runtime thread
//! that runs it.
//! It owns **no token buckets**: every decision goes through a [`DecisionBackend`], which the
//! server crate implements by handing the flow to the glommio shard that owns its bucket.
//!
//! # Layout
//! - [`server`] — [`start`] and [`GrpcHandle`]: runtime thread, tonic server, TLS, keepalive,
//!   health, reflection, graceful shutdown.
//! - [`backend`] — the [`DecisionBackend`] trait the server implements, and [`BackendError`].
//! - [`flowcontrol`] — `aperture.flowcontrol.check.v1.FlowControlService` (Check, cache RPCs,
//!   FlowEnd).
//! - [`rls`] — `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//! - [`otlp`] — `opentelemetry.proto.collector.trace.v1.TraceService/Export` span sink.
//! - [`cache`] — the bounded TTL cache (sans-IO, time passed in).
//! - [`config`] — [`GrpcSettings`]: TLS and cache bounds from the `server:` section.
//! - [`auth`] — optional `x-api-key` check.
//! - [`reject_header`] — the `tollgate-reject-reason` response header: why a flow could not be
//!   judged.
//! - [`undecodable`] — [`undecodable::InvalidArgumentOnUndecodable`]: a request message that
//!   does not decode is `INVALID_ARGUMENT`, not tonic's `INTERNAL`.
//! - [`deadline`] — `grpc-timeout` parsing and the deadline wrapper.
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
pub mod config;
pub mod deadline;
pub mod flowcontrol;
pub mod otlp;
pub mod reject_header;
pub mod rls;
pub mod server;
pub mod undecodable;

pub use backend::{BackendError, DecisionBackend, DecisionFuture};
pub use config::{CacheConfig, GrpcSettings, TlsConfig};
pub use server::{start, GrpcHandle};
/// The generated messages, servers and clients (the `tollgate-proto` crate), under their
/// historical path `tollgate_grpc::proto`.
pub use tollgate_proto as proto;
/// The tonic this crate is built with, so callers can use [`proto`]'s clients without naming a
/// tonic version themselves.
pub use tonic;
