//! The admin HTTP port: `/healthz`, `/readyz`, `/metrics` and a JSON API to look at the
//! policies, one bucket, and the keys that consume most (docs/admin.md).
//!
//! It runs axum on a current-thread tokio runtime on its own OS thread, like the gRPC port,
//! and starts before the shards so probes get an honest "starting" from the first moment.
//! Handlers never touch a shard's state: they read the shards' counters (atomics, see
//! [`crate::metrics`]) or ask a shard through its inbox ([`shard_query`]).
//!
//! Why axum: a maintained HTTP server (tokio's own framework) on the hyper that tonic
//! already brings into the build, with routing, query decoding, JSON and middleware; a
//! hand-rolled HTTP/1.1 parser would be new untrusted-input code to keep correct.
//!
//! # Layout
//! - [`server`]: [`AdminPort`], the thread and the axum server, graceful stop.
//! - [`routes`]: the router: every path, in one file.
//! - [`auth`]: the optional bearer token.
//! - [`readiness`]: [`Readiness`], the node's phase as `/readyz` reports it.
//! - [`state`]: [`AdminState`], what handlers read, filled in as the node starts.
//! - [`shard_query`]: reads answered on a shard ([`crate::bridge::Inbound::Admin`]).
//! - [`api`]: the JSON documents, shared with the client.
//! - [`status`]: the status page (`GET /`, embedded) and its document (`/api/v1/status`).
//! - [`client`]: a blocking HTTP client of the API (the CLI, tests).
//! - [`commands`]: `tollgate policies | bucket | top | set-limit`.

pub mod api;
pub mod auth;
pub mod client;
pub mod commands;
pub mod readiness;
pub mod routes;
pub mod server;
pub mod shard_query;
pub mod state;
pub mod status;

pub use readiness::{Phase, Readiness};
pub use server::{start, AdminPort};
pub use state::AdminState;
