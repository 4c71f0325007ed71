//! Tollgate's own counters, kept without locks on the decision path and turned into
//! Prometheus metrics only when scraped.
//!
//! Each shard writes one block of counters ([`ShardBlock`]) and nothing else: an event is a
//! relaxed load and store into memory no other thread writes, so recording costs what a
//! plain increment does and shards never contend. The scraper (the admin port's thread)
//! sums the blocks at scrape time. What only a shard can read (live buckets, queue depth,
//! top keys) it hands over through its inbox when asked. The gRPC port, a thread of its
//! own off the decision path, records its protocols into [`Metrics::grpc_decided`].
//!
//! `server.metrics: false` turns recording off: every recording call returns at once.
//!
//! # Layout
//! - [`counter`]: [`counter::Counter`], single-writer or shared.
//! - [`histogram`]: [`histogram::LatencyHistogram`], fixed log-scale buckets.
//! - [`per_limiter`]: [`per_limiter::LimiterTable`], a shard's counters per limiter id,
//!   growable without locks.
//! - [`space_saving`]: [`space_saving::SpaceSaving`], the filtered heavy-hitter sketch (pure).
//! - [`top_keys`]: the sketch's rotating windows, one per limiter (pure).
//! - [`shard`]: [`ShardBlock`] and [`ShardMetrics`], the calls the decision path makes.
//! - [`collector`]: the prometheus-client collector that reads it all at scrape time.
//! - [`process`]: the process's resident memory.

pub mod collector;
pub mod counter;
pub mod histogram;
pub mod per_limiter;
pub mod process;
pub mod shard;
pub mod space_saving;
pub mod top_keys;

pub use shard::{ShardBlock, ShardMetrics};

use counter::Counter;
use histogram::LatencyHistogram;
use std::sync::Arc;

/// How a check reached Tollgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The binary protocol (CHECK / CHECK_BATCH).
    Binary,
    /// Aperture's `FlowControlService/Check` on the gRPC port.
    ApertureGrpc,
    /// Envoy's `RateLimitService/ShouldRateLimit` on the gRPC port.
    EnvoyRls,
}

impl Protocol {
    /// Every protocol, in export order.
    pub const ALL: [Protocol; 3] = [Protocol::Binary, Protocol::ApertureGrpc, Protocol::EnvoyRls];

    /// The `protocol` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::ApertureGrpc => "aperture_grpc",
            Protocol::EnvoyRls => "envoy_rls",
        }
    }
}

/// How a check ended, per protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Admitted.
    Accepted,
    /// Rejected by a limiter.
    Rejected,
    /// Not judged: a malformed request, or the server could not answer.
    Error,
}

/// One protocol's checks: results and server-side latency.
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    /// Admitted.
    pub accepted: Counter,
    /// Rejected.
    pub rejected: Counter,
    /// Answered with an error.
    pub errors: Counter,
    /// From the request's arrival to its reply (decisions only, not errors).
    pub latency: LatencyHistogram,
}

/// A node's metrics: every shard's block and the gRPC port's counters.
#[derive(Debug)]
pub struct Metrics {
    /// `server.metrics`.
    enabled: bool,
    /// Index = shard.
    shards: Vec<Arc<ShardBlock>>,
    /// Aperture gRPC, then Envoy RLS (shared writers: recorded by the gRPC thread).
    grpc: [ProtocolCounters; 2],
}

impl Metrics {
    /// Blocks for `nr_shards` shards, each with room for `limiters` limiter ids.
    pub fn new(enabled: bool, nr_shards: usize, limiters: usize) -> Metrics {
        Metrics {
            enabled,
            shards: (0..nr_shards)
                .map(|_| Arc::new(ShardBlock::new(limiters)))
                .collect(),
            grpc: Default::default(),
        }
    }

    /// Whether anything is recorded.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Shard `shard`'s recorder (called once, by that shard, at start).
    pub fn shard_recorder(&self, shard: usize) -> ShardMetrics {
        let block = self
            .shards
            .get(shard)
            .cloned()
            // A shard index beyond the blocks is a start-up bug; it records into a block
            // that nobody scrapes rather than panicking.
            .unwrap_or_else(|| Arc::new(ShardBlock::new(0)));
        ShardMetrics::new(self.enabled, block)
    }

    /// The shards' blocks (scraper).
    pub fn shard_blocks(&self) -> &[Arc<ShardBlock>] {
        &self.shards
    }

    /// A check on the gRPC port ended after `elapsed_ns`.
    pub fn grpc_decided(&self, protocol: Protocol, result: CheckResult, elapsed_ns: u64) {
        if !self.enabled {
            return;
        }
        let Some(counters) = self.protocol_counters_shared(protocol) else {
            return;
        };
        match result {
            CheckResult::Accepted => counters.accepted.add_shared(1),
            CheckResult::Rejected => counters.rejected.add_shared(1),
            CheckResult::Error => {
                counters.errors.add_shared(1);
                return;
            }
        }
        counters.latency.record_shared(elapsed_ns, 1);
    }

    /// The gRPC-side counters of a protocol (None for the binary protocol, which shards
    /// record in their blocks).
    pub fn protocol_counters_shared(&self, protocol: Protocol) -> Option<&ProtocolCounters> {
        match protocol {
            Protocol::Binary => None,
            Protocol::ApertureGrpc => Some(&self.grpc[0]),
            Protocol::EnvoyRls => Some(&self.grpc[1]),
        }
    }
}
