//! The Prometheus view of a node: a prometheus-client [`Collector`] that reads the shards'
//! counters, the gRPC port's and the cluster's at scrape time. Nothing is copied into a
//! registry between scrapes; a scrape builds a [`Registry`] around one collector and
//! encodes it in the Prometheus text format ([`encode`]).
//!
//! The metrics (names and labels are part of the interface: docs/admin.md lists them):
//! counters end in `_total` (the encoder adds it), durations are in seconds.

use super::histogram::HistogramSnapshot;
use super::shard::REFUSALS;
use super::{Metrics, Protocol, ProtocolCounters};
use crate::node::Node;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;
use tollgate_cluster::GossipStats;
use tollgate_protocol::{Member, MemberState};

/// The `Content-Type` of what [`encode`] writes (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What only a shard can read, as it answered the scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardGauges {
    /// Live buckets.
    pub live_buckets: usize,
    /// Live buckets per limiter (index: the limiter id).
    pub live_by_limiter: Vec<usize>,
    /// Buckets dropped at `server.max_buckets` that were full (no decision changes).
    pub evicted_full: u64,
    /// Buckets dropped at the cap that were not full: their keys start full again, an
    /// over-admission of up to what each had consumed.
    pub evicted_not_full: u64,
    /// New keys that got no bucket at the cap (decided on a transient full bucket).
    pub refused: u64,
    /// Flows waiting in the shard's scheduler queues.
    pub waiting: usize,
    /// Flows holding concurrency tokens.
    pub in_flight: usize,
}

/// The cluster layer's state at scrape time.
#[derive(Clone, Debug, Default)]
pub struct ClusterReading {
    /// The gossip thread's counters.
    pub stats: GossipStats,
    /// The member list, this node included.
    pub members: Vec<Member>,
    /// The digest of this node's policy set.
    pub policy_digest: u64,
}

/// The gRPC result/global cache's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheReading {
    /// Entries.
    pub entries: usize,
    /// Bytes of keys and values.
    pub bytes: usize,
}

/// Everything a scrape reads that is not a counter, gathered just before encoding.
#[derive(Clone, Debug, Default)]
pub struct Gathered {
    /// Index = shard; None when the shard did not answer in time.
    pub shards: Vec<Option<ShardGauges>>,
    /// None when the gRPC port is off.
    pub grpc_cache: Option<CacheReading>,
    /// None when not clustered.
    pub cluster: Option<ClusterReading>,
    /// Process resident memory.
    pub resident_bytes: Option<u64>,
}

/// Reads a node's counters at scrape time.
pub struct NodeCollector {
    node: Arc<Node>,
    gathered: Gathered,
}

impl fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeCollector")
            .field("node", &self.node.node_id)
            .field("gathered", &self.gathered)
            .finish()
    }
}

/// The node's metrics in the Prometheus text format.
pub fn encode(node: Arc<Node>, gathered: Gathered) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { node, gathered }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// A sample's labels.
type Labels = Vec<(&'static str, String)>;

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn label(key: &'static str, value: impl ToString) -> (&'static str, String) {
    (key, value.to_string())
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let metrics = &*self.node.metrics;
        self.decisions(&mut enc, metrics)?;
        self.protocols(&mut enc, metrics)?;
        self.shards(&mut enc, metrics)?;
        self.grpc_cache(&mut enc)?;
        if let Some(cluster) = &self.gathered.cluster {
            cluster_metrics(&mut enc, cluster, metrics)?;
        }
        if let Some(bytes) = self.gathered.resident_bytes {
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory of the process (/proc/self/statm).",
                [(Labels::new(), bytes as f64)],
            )?;
        }
        gauge(
            &mut enc,
            "tollgate_metrics_enabled",
            "1 when server.metrics records, 0 when it is off (every counter then stays 0).",
            [(Labels::new(), f64::from(u8::from(metrics.enabled())))],
        )
    }
}

impl NodeCollector {
    /// Outcomes per policy, summed over shards, and refusals by reason.
    fn decisions(&self, enc: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
        let blocks = metrics.shard_blocks();
        let mut samples = Vec::new();
        let engine = self.node.policies.load();
        for spec in engine.limiters() {
            let mut sums = [0u64; 5];
            for block in blocks {
                if let Some(c) = block.limiters.get(spec.id.get()) {
                    let values = [
                        c.accepted.get(),
                        c.rejected.get(),
                        c.key_not_found.get(),
                        c.returned.get(),
                        c.error.get(),
                    ];
                    for (sum, v) in sums.iter_mut().zip(values) {
                        *sum += v;
                    }
                }
            }
            let outcomes = ["accepted", "rejected", "key_not_found", "returned", "error"];
            for (outcome, value) in outcomes.into_iter().zip(sums) {
                samples.push((
                    vec![
                        label("policy", &spec.policy_name),
                        label("outcome", outcome),
                    ],
                    value,
                ));
            }
        }
        counter(
            enc,
            "tollgate_decisions",
            "What each policy said about the flows it matched: accepted (tokens taken), \
             rejected, key_not_found (the flow lacked the limit label), returned (taken, then \
             handed back because another policy rejected), error (the flow could not be judged).",
            samples,
        )?;
        counter(
            enc,
            "tollgate_refusals",
            "Rejections by reason.",
            REFUSALS.iter().enumerate().map(|(i, r)| {
                let n = blocks.iter().map(|b| b.refusals[i].get()).sum();
                (vec![label("reason", r.as_str())], n)
            }),
        )?;
        counter(
            enc,
            "tollgate_metrics_untracked_events",
            "Decisions of limiter ids beyond the metrics table (not expected).",
            [(
                Labels::new(),
                blocks.iter().map(|b| b.limiters.untracked.get()).sum(),
            )],
        )
    }

    /// Checks and their server-side latency, per protocol.
    fn protocols(&self, enc: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
        let mut results = Vec::new();
        let mut latencies = Vec::new();
        for protocol in Protocol::ALL {
            let (mut counts, mut latency) = ([0u64; 3], HistogramSnapshot::default());
            let mut add = |c: &ProtocolCounters| {
                counts[0] += c.accepted.get();
                counts[1] += c.rejected.get();
                counts[2] += c.errors.get();
                latency.merge(&c.latency.snapshot());
            };
            match metrics.protocol_counters_shared(protocol) {
                Some(c) => add(c),
                None => metrics.shard_blocks().iter().for_each(|b| add(&b.binary)),
            }
            for (result, n) in ["accepted", "rejected", "error"].into_iter().zip(counts) {
                results.push((
                    vec![
                        label("protocol", protocol.as_str()),
                        label("result", result),
                    ],
                    n,
                ));
            }
            latencies.push((protocol, latency));
        }
        counter(
            enc,
            "tollgate_checks",
            "Checks answered, by protocol and result (error: malformed or not judged).",
            results,
        )?;
        let mut family = enc.encode_descriptor(
            "tollgate_check_duration_seconds",
            "Server-side time of a check, from reading its request to its reply (binary: per \
             read, every check answered at once in it shares the read's time; gRPC: the \
             handler's call to the shards).",
            None,
            MetricType::Histogram,
        )?;
        for (protocol, h) in latencies {
            family
                .encode_family(&vec![label("protocol", protocol.as_str())])?
                .encode_histogram::<NoLabelSet>(
                    h.sum_ns as f64 / 1e9,
                    h.count(),
                    &h.prometheus_buckets(),
                    None,
                )?;
        }
        Ok(())
    }

    /// Per-shard counters and gauges, and the node's connections.
    fn shards(&self, enc: &mut DescriptorEncoder, metrics: &Metrics) -> fmt::Result {
        let blocks = metrics.shard_blocks();
        let per_shard = |f: &dyn Fn(&super::ShardBlock) -> u64| -> Vec<(Labels, u64)> {
            blocks
                .iter()
                .enumerate()
                .map(|(i, b)| (vec![label("shard", i)], f(b)))
                .collect()
        };
        counter(
            enc,
            "tollgate_cross_shard_hops",
            "Checks that needed a bucket owned by another shard (a non-shard-aware client).",
            per_shard(&|b| b.hops.get()),
        )?;
        counter(
            enc,
            "tollgate_overloaded_replies",
            "Requests answered OVERLOADED (too many in flight on their connection).",
            per_shard(&|b| b.overloaded.get()),
        )?;
        counter(
            enc,
            "tollgate_binary_unauthenticated",
            "Binary connections refused UNAUTHENTICATED: no valid API key in HELLO before any other request (server.api_keys).",
            per_shard(&|b| b.unauthenticated.get()),
        )?;
        counter(
            enc,
            "tollgate_binary_tls_handshake_failures",
            "Binary connections closed because their TLS handshake failed or timed out (server.binary_tls).",
            per_shard(&|b| b.tls_handshake_failed.get()),
        )?;
        counter(
            enc,
            "tollgate_binary_idle_closes",
            "Binary connections closed because they completed no frame for server.idle_timeout with nothing pending.",
            per_shard(&|b| b.idle_closed.get()),
        )?;
        counter(
            enc,
            "tollgate_bucket_evictions",
            "Buckets dropped, by reason (idle: unused past the policy's max_idle_time).",
            blocks.iter().enumerate().map(|(i, b)| {
                (
                    vec![label("shard", i), label("reason", "idle")],
                    b.evicted_idle.get(),
                )
            }),
        )?;
        let gauges = |f: &dyn Fn(&ShardGauges) -> usize| -> Vec<(Labels, f64)> {
            self.gathered
                .shards
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.as_ref().map(|g| (vec![label("shard", i)], f(g) as f64)))
                .collect()
        };
        gauge(
            enc,
            "tollgate_buckets",
            "Live buckets per shard.",
            gauges(&|g| g.live_buckets),
        )?;
        let per_shard_counts = |f: &dyn Fn(&ShardGauges) -> u64| -> Vec<(Labels, u64)> {
            self.gathered
                .shards
                .iter()
                .enumerate()
                .filter_map(|(i, g)| g.as_ref().map(|g| (vec![label("shard", i)], f(g))))
                .collect()
        };
        counter(
            enc,
            "tollgate_bucket_cap_evictions",
            "Buckets dropped at server.max_buckets to make room for a new key, by whether they \
             were full (full: no decision changes; not_full: the key starts full again, an \
             over-admission of up to what it had consumed).",
            per_shard_counts(&|g| g.evicted_full)
                .into_iter()
                .map(|(mut l, n)| {
                    l.push(label("state", "full"));
                    (l, n)
                })
                .chain(
                    per_shard_counts(&|g| g.evicted_not_full)
                        .into_iter()
                        .map(|(mut l, n)| {
                            l.push(label("state", "not_full"));
                            (l, n)
                        }),
                ),
        )?;
        counter(
            enc,
            "tollgate_bucket_cap_refusals",
            "New keys that got no bucket at server.max_buckets (nothing evictable in the \
             bounded search): decided on a transient full bucket, then forgotten.",
            per_shard_counts(&|g| g.refused),
        )?;
        gauge(
            enc,
            "tollgate_queue_depth",
            "Flows waiting in a scheduler's queue, per shard.",
            gauges(&|g| g.waiting),
        )?;
        gauge(
            enc,
            "tollgate_flows_in_flight",
            "Flows holding concurrency tokens, per shard.",
            gauges(&|g| g.in_flight),
        )?;
        gauge(
            enc,
            "tollgate_connections",
            "Open binary-protocol connections.",
            [(Labels::new(), self.node.connections.total() as f64)],
        )
    }

    fn grpc_cache(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let Some(cache) = self.gathered.grpc_cache else {
            return Ok(());
        };
        gauge(
            enc,
            "tollgate_grpc_cache_entries",
            "Entries in the gRPC result and global caches.",
            [(Labels::new(), cache.entries as f64)],
        )?;
        gauge(
            enc,
            "tollgate_grpc_cache_bytes",
            "Bytes of keys and values in the gRPC result and global caches.",
            [(Labels::new(), cache.bytes as f64)],
        )
    }
}

fn member_state_name(state: MemberState) -> &'static str {
    match state {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
        MemberState::Left => "left",
    }
}

fn cluster_metrics(
    enc: &mut DescriptorEncoder,
    cluster: &ClusterReading,
    metrics: &Metrics,
) -> fmt::Result {
    let states = [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Down,
        MemberState::Left,
    ];
    gauge(
        enc,
        "tollgate_cluster_members",
        "Cluster members this node knows, by state (this node included).",
        states.map(|s| {
            let n = cluster.members.iter().filter(|m| m.state == s).count();
            (vec![label("state", member_state_name(s))], n as f64)
        }),
    )?;
    let differs = cluster
        .members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .filter(|m| m.policy_digest.is_some_and(|d| d != cluster.policy_digest))
        .count();
    gauge(
        enc,
        "tollgate_cluster_members_policy_differs",
        "Live cluster members (alive or suspect) that announced a policy set digest other than          this node's: they do not share every limiter (a rollout in progress, or a node left          behind).",
        [(Labels::new(), differs as f64)],
    )?;
    let s = &cluster.stats;
    let r = &s.replication;
    counter(
        enc,
        "tollgate_cluster_datagrams",
        "Gossip datagrams, by direction.",
        [
            (vec![label("direction", "sent")], s.datagrams_out),
            (vec![label("direction", "received")], s.datagrams_in),
        ],
    )?;
    counter(
        enc,
        "tollgate_cluster_bytes",
        "Gossip bytes (UDP payload), by direction.",
        [
            (vec![label("direction", "sent")], s.bytes_out),
            (vec![label("direction", "received")], s.bytes_in),
        ],
    )?;
    counter(
        enc,
        "tollgate_cluster_datagrams_dropped",
        "Received datagrams dropped, by reason.",
        [
            (vec![label("reason", "auth_failed")], s.auth_failed),
            (vec![label("reason", "invalid")], s.invalid),
            (vec![label("reason", "not_member")], s.not_member),
            (
                vec![label("reason", "membership_rejected")],
                s.membership_rejected,
            ),
        ],
    )?;
    let applied = |i: usize| -> u64 {
        metrics
            .shard_blocks()
            .iter()
            .map(|b| b.replica_entries[i].get())
            .sum()
    };
    counter(
        enc,
        "tollgate_cluster_deltas_applied",
        "Replicated bucket entries applied to this node's buckets, by operation (debit: a \
         peer's consumption; lower: state transfer to a joining node).",
        [
            (vec![label("op", "debit")], applied(0)),
            (vec![label("op", "lower")], applied(1)),
        ],
    )?;
    counter(
        enc,
        "tollgate_cluster_deltas_dropped",
        "Replicated entries not applied or not sent, by reason: unknown_limiter (a peer's \
         policy this node lacks), definition_differs (same name, other definition), \
         not_replicated (a local entry whose key or policy name is too long to send).",
        [
            (
                vec![label("reason", "unknown_limiter")],
                r.dropped_unknown_limiter,
            ),
            (
                vec![label("reason", "definition_differs")],
                r.dropped_definition_differs,
            ),
            (vec![label("reason", "not_replicated")], r.skipped_entries),
        ],
    )?;
    counter(
        enc,
        "tollgate_cluster_batches",
        "Replication batches, by event.",
        [
            (vec![label("event", "sent")], r.batches_sent),
            (vec![label("event", "retransmitted")], r.retransmits),
            (vec![label("event", "gave_up")], r.gave_up),
            (vec![label("event", "applied")], r.batches_applied),
            (vec![label("event", "duplicate")], r.duplicates),
            (vec![label("event", "stale")], r.stale),
        ],
    )?;
    let lag_ms = cluster
        .members
        .iter()
        .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .map(|m| m.last_contact_ms)
        .max()
        .unwrap_or(0);
    gauge(
        enc,
        "tollgate_cluster_sync_lag_seconds",
        "Longest time since an authentic datagram arrived from a live peer: how stale the \
         freshest news of the laggiest peer is (healthy: about cluster.sync_interval).",
        [(Labels::new(), lag_ms as f64 / 1e3)],
    )
}
