//! Criterion benchmarks for Tollgate's hot paths, and the fixtures they share.
//!
//! This crate owns no production code. Each bench measures one thing users feel, next to
//! a baseline measured in the same run (the machine is shared and noisy, so targets are
//! judged as ratios):
//!
//! # Layout
//! - `benches/decision.rs`: a bucket decision (plan + hash + lookup + update) on a shard
//!   holding 1M keys, against a bare hashbrown lookup-and-increment on the same keys.
//! - `benches/codec.rs`: CHECK decode + CHECK_REPLY encode, against reading the length
//!   prefix alone.
//! - `benches/shard_hop.rs`: one cross-shard hop (forward a check to its owner over the
//!   glommio mesh and back), against a local decision.
//! - `benches/bucket_memory.rs`: bytes per live bucket, counted by a tracking allocator.
//! - `benches/scheduler.rs`: a decision through each component kind (rate limiter, quota
//!   scheduler, concurrency limiter and scheduler) when tokens are at hand, against the rate
//!   limiter's in the same run.
//! - `benches/metrics.rs`: a decision and everything the shard records for it, with
//!   `server.metrics` on and off.
//! - `benches/grpc_handler.rs`: a gRPC `Check` and `ShouldRateLimit` handled (decode, handler
//!   with an in-process decision, encode), against the floor's constant handlers.
//! - `src/bin/grpc_floor.rs`: the gRPC transport floor (constant replies on the compat port's
//!   stack) for `grpc_compare.sh`; [`floor`] holds its handlers. `src/bin/grpc_bodies.rs`:
//!   the h2load request bodies. `src/bin/grpc_shard_floor.rs`: the same floor served by
//!   hyper over glommio on every shard (what serving the port on the shards starts from), its
//!   writes gathered by [`cork`]. `src/bin/grpc_lean_floor.rs`: the floor without tonic
//!   (hyper alone, h2 alone). [`floor_threads`]: how the tokio floors bind and run.
#![warn(missing_docs)]

pub mod cork;
pub mod floor;
pub mod floor_threads;

use tollgate_policy::{parse_policies, Engine};

/// The policy every bench uses: one limiter keyed by `user`, never exhausted in practice
/// (a refused take would be a cheaper path than the one we want to measure).
pub const BENCH_POLICY: &str = r#"
policies:
  - policy_name: bench
    rate_limiter:
      bucket_capacity: 1000000000
      fill_amount: 1000000000
      parameters: { interval: 1s, limit_by_label_key: user }
      selectors: [ { control_point: bench } ]
"#;

/// The compiled bench policy.
pub fn bench_engine() -> Engine {
    let policies = parse_policies(BENCH_POLICY, "bench").expect("bench policy is valid");
    Engine::new(&policies)
}

/// Key `i` as the loadgen names keys.
pub fn key(i: usize) -> String {
    format!("user-{i}")
}
