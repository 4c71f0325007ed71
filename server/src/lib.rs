//! The Tollgate server: a thread-per-core rate-limit dataplane.
//!
//! Each core runs one glommio executor, a *shard*, pinned to that core. A token bucket
//! lives on exactly one shard — `shard_for(routing_hash(label value), shards)`, the
//! protocol crate's routing function — and that shard owns it without locks. Clients that
//! are shard-aware connect to every shard's own port and send each check straight to its
//! owner; a check that lands elsewhere hops once over the glommio channel mesh.
//!
//! The pure rules live in `tollgate-policy` (buckets, selectors, decisions) and
//! `tollgate-protocol` (frames, routing); this crate is the IO shell around them.
//!
//! A check's path: [`listeners`] bound the sockets -> [`runtime`] started the shards and
//! their accept loops -> [`conn`] decodes frames and asks its [`shard::Shard`] ->
//! `Shard::decide_now` plans with the engine and decides at once on the local
//! [`tollgate_policy::ShardState`], or returns a `PendingCheck` that hops to the owner(s)
//! and waits in schedulers' queues -> the reply is encoded into the connection's outbox
//! and written.
//!
//! # Layout
//! - [`config`]: the config file: the `server:` section here, `policies:` from the
//!   policy crate, `cluster:` from [`cluster`]; parsed once, every problem reported.
//! - [`runtime`]: start (bind, executors, mesh, ready) and graceful shutdown.
//! - [`descriptors`]: the open-file limit raised at start and every port's connection cap
//!   checked against it.
//! - [`listeners`]: socket2 binding: shared SO_REUSEPORT port + shard-aware ports.
//! - [`node`]: node-wide facts (the policies, ports, limits) and the HELLO reply.
//! - [`reload`]: hot reload: validate the file, keep unchanged limiters' state, switch
//!   every shard; [`watch`]: `serve --watch`, reload when the file changes.
//! - [`shard`]: a shard's state, a check's orchestration across stages and shards, the
//!   scheduler task that makes waiting real, flow ends, cross-shard hops and their
//!   batching.
//! - [`conn`]: one binary connection: read, decode, decide, reply; bounded buffers; who
//!   may connect (caps, API keys in HELLO, TLS) and over which stream; a shard's registry
//!   of its connections (drain, the idle sweep).
//! - [`bridge`]: the inbox through which non-shard threads (gRPC, gossip) reach shards;
//!   `bridge::check_batch` gathers a tokio turn's checks into one message per shard.
//! - [`grpc_backend`]: the gRPC compat port's view of the shards.
//! - [`clock`]: the process-wide monotonic nanosecond clock.
//! - [`metrics`]: per-shard counters, latency histograms and top-keys sketches, lock-free
//!   on the decision path, read by the Prometheus collector at scrape time.
//! - [`admin`]: the admin HTTP port (health, readiness, `/metrics`, the JSON API) on its
//!   own thread, and the CLI's client for it.
//! - [`cli`]: `tollgate serve | check | validate | members | policies | bucket | top |
//!   set-limit`.
//! - [`cluster`]: the cluster's IO shell: the gossip socket and thread around the sans-IO
//!   `tollgate-cluster` core, which routes replicated entries to their owner shards.
#![warn(missing_docs)]

pub mod admin;
pub mod bridge;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod descriptors;
pub mod grpc_backend;
pub mod listeners;
pub mod metrics;
pub mod node;
pub mod reload;
pub mod runtime;
pub mod shard;
pub mod watch;

/// The policy `tollgate serve` runs without `--config` (see README).
pub const DEFAULT_POLICY: &str = include_str!("../default-policy.yaml");

/// The README's Rust examples, compiled by `cargo test --doc` (its other blocks run in
/// `tests/docs.rs`, which checks that every Markdown file with a `rust` block is listed here).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeRustExamples;
