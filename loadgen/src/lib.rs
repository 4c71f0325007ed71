//! `tollgate-loadgen`: the load generator that answers "how much can it take, how fast, how
//! accurate?" for Tollgate's binary protocol, its gRPC compat port (Aperture's
//! `FlowControlService/Check`), and the baseline most teams run today, a Redis+Lua token
//! bucket. It also measures the raw loopback round trip (`--mode ping`, `echo-server`), so a
//! check's latency can be read against the floor measured in the same run.
//!
//! This crate owns the load model (connections x pipeline depth, closed loop or open loop at a
//! rate with coordinated-omission-corrected latencies), key distributions (hot, uniform, exact
//! zipf), the protocol drivers (including the Redis baseline's Lua script and a minimal RESP
//! codec), the accuracy arithmetic (admitted against what the limit allows, per key, across
//! several targets) and the report (human table, JSON, an HTML page). It owns no server code: it talks to
//! servers only over the network, through the same client users run.
//!
//! # Layout
//! - [`cli`]: clap flags and their conversion into a [`run::RunConfig`].
//! - [`access`]: `--api-key` and `--tls-ca` for binary ports that require a key or TLS.
//! - [`run`]: one run: its settings ([`run::config`]), load threads (one single-threaded
//!   runtime each), connect, warm up, tasks in closed or open loop, progress, report.
//! - [`drivers`]: one connection per protocol (`tollgate`, `grpc`, `redis`, `echo`) and the
//!   echo server.
//! - [`target`]: target URLs and how requests spread over several.
//! - [`keys`]: key distributions and key names (`user-<n>`).
//! - [`scenario`]: `--scenario` label sets with weights.
//! - [`flows`]: `flows SCENARIO.yaml`, open-loop load on a quota or concurrency scheduler
//!   with wait budgets and `FLOW_END`, reported per workload.
//! - [`accuracy`]: pure arithmetic of admitted vs allowed, per key, on a passed-in clock.
//! - [`stats`]: striped HDR histograms and counters shared by the tasks.
//! - [`report`]: the end-of-run table and JSON.
//! - [`timeline`]: per-interval and per-target figures and the latency histogram.
//! - [`html`]: `--html`, the report as one self-contained page of SVG charts.
//! - [`resp`]: sans-IO RESP2 encoder/decoder for the Redis baseline.
//!
//! `src/token_bucket.lua` is the baseline's script, compiled in as
//! [`drivers::TOKEN_BUCKET_LUA`].
#![warn(missing_docs)]

pub mod access;
pub mod accuracy;
pub mod cli;
pub mod drivers;
pub mod flows;
pub mod html;
pub mod keys;
pub mod report;
pub mod resp;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod target;
pub mod timeline;

pub use report::Report;
pub use run::{run_blocking, Op, RunConfig, RunError, Stop};
