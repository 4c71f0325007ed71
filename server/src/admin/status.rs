//! The status page: `GET /` serves one embedded HTML page (its script and styles inline,
//! nothing fetched from elsewhere), which polls `GET /api/v1/status` (and `/api/v1/top` per
//! policy) every 2 s and draws the last minutes: per policy, accepted and rejected per second,
//! live buckets and top keys; per shard, decisions per second, latency and gauges; the
//! cluster members. The page carries no data itself, so it is served without the admin
//! token; its script sends the token (from `#token=...` in the address) to the API.

use super::state::{AdminState, Shards};
use crate::clock;
use crate::metrics::collector::ShardGauges;
use serde::Serialize;
use tollgate_policy::Digest;
use tollgate_protocol::MemberState;

/// The page (server/src/admin/status.html), compiled in.
pub const PAGE: &str = include_str!("status.html");

/// `GET /api/v1/status`: counters since start (the page turns them into rates).
#[derive(Debug, Serialize)]
pub struct StatusReply {
    /// The node's id.
    pub node_id: String,
    /// Seconds since the process started (the page divides counter deltas by its deltas).
    pub uptime_seconds: f64,
    /// Digest of the policy set in force.
    pub digest: String,
    /// Per policy, in policy order.
    pub policies: Vec<PolicyStatus>,
    /// Per shard.
    pub shards: Vec<ShardStatus>,
    /// Cluster members (this node alone when not clustered).
    pub members: Vec<MemberStatus>,
    /// Live members (alive or suspect) whose policy set digest is known and differs from
    /// ours (`tollgate_cluster_members_policy_differs`).
    pub members_with_other_policies: usize,
}

/// One policy's counters.
#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    /// Policy name.
    pub name: String,
    /// Component kind.
    pub kind: &'static str,
    /// Decisions since start, by outcome.
    pub decisions: Outcomes,
    /// Live buckets (or counters) on this node; None when a shard did not answer.
    pub buckets: Option<usize>,
}

/// Decisions by outcome (as `tollgate_decisions_total`).
#[derive(Debug, Default, Serialize)]
pub struct Outcomes {
    /// Tokens taken.
    pub accepted: u64,
    /// Refused.
    pub rejected: u64,
    /// The flow lacked the limit label.
    pub key_not_found: u64,
    /// Taken, then handed back because another policy refused.
    pub returned: u64,
    /// The flow could not be judged.
    pub error: u64,
}

/// One shard's counters and gauges.
#[derive(Debug, Serialize)]
pub struct ShardStatus {
    /// Shard index.
    pub shard: usize,
    /// Decisions since start (every policy's accepted and rejected on this shard).
    pub decisions: u64,
    /// Binary-protocol checks answered on this shard: server-side latency, microseconds
    /// (the upper bound of the histogram bucket holding the rank; None before the first).
    pub latency_p50_us: Option<f64>,
    /// 99th percentile, as above.
    pub latency_p99_us: Option<f64>,
    /// Live buckets; None when the shard did not answer in time.
    pub buckets: Option<usize>,
    /// Flows waiting in its scheduler queues.
    pub waiting: Option<usize>,
    /// Flows holding concurrency tokens.
    pub in_flight: Option<usize>,
}

/// One member.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    /// Its id.
    pub node_id: String,
    /// Its binary-protocol address.
    pub address: String,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: &'static str,
    /// Milliseconds since it was last heard from.
    pub last_contact_ms: u64,
    /// The digest of its policy set (as `digest` above); None until it announced one.
    pub policy_digest: Option<String>,
    /// Whether that digest equals ours; None when unknown.
    pub same_policies: Option<bool>,
}

/// The status of the node behind `shards` now.
pub async fn status(shards: &Shards) -> StatusReply {
    let engine = shards.handle.engine();
    let gauges = AdminState::shard_gauges(shards).await;
    let blocks = shards.node.metrics.shard_blocks();
    let policies = engine
        .limiters()
        .iter()
        .map(|l| {
            let mut d = Outcomes::default();
            for c in blocks.iter().filter_map(|b| b.limiters.get(l.id.get())) {
                d.accepted += c.accepted.get();
                d.rejected += c.rejected.get();
                d.key_not_found += c.key_not_found.get();
                d.returned += c.returned.get();
                d.error += c.error.get();
            }
            let buckets: Option<usize> = gauges
                .iter()
                .map(|g| {
                    g.as_ref().map(|g| {
                        g.live_by_limiter
                            .get(l.id.get() as usize)
                            .copied()
                            .unwrap_or(0)
                    })
                })
                .sum();
            PolicyStatus {
                name: l.policy_name.clone(),
                kind: super::api::kind_name(l.kind),
                decisions: d,
                buckets,
            }
        })
        .collect();
    let shards_status = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let decisions = engine
                .limiters()
                .iter()
                .filter_map(|l| b.limiters.get(l.id.get()))
                .map(|c| c.accepted.get() + c.rejected.get())
                .sum();
            let latency = b.binary.latency.snapshot();
            let us = |q| latency.quantile_ns(q).map(|ns| ns as f64 / 1e3);
            let g: Option<&ShardGauges> = gauges.get(i).and_then(Option::as_ref);
            ShardStatus {
                shard: i,
                decisions,
                latency_p50_us: us(0.5),
                latency_p99_us: us(0.99),
                buckets: g.map(|g| g.live_buckets),
                waiting: g.map(|g| g.waiting),
                in_flight: g.map(|g| g.in_flight),
            }
        })
        .collect();
    let ours = engine.digest();
    let members: Vec<MemberStatus> = shards
        .node
        .member_list()
        .into_iter()
        .map(|m| MemberStatus {
            node_id: m.node_id,
            address: m.address,
            state: match m.state {
                MemberState::Alive => "alive",
                MemberState::Suspect => "suspect",
                MemberState::Down => "down",
                MemberState::Left => "left",
            },
            last_contact_ms: m.last_contact_ms,
            policy_digest: m.policy_digest.map(|d| Digest(d).to_string()),
            same_policies: m.policy_digest.map(|d| d == ours.0),
        })
        .collect();
    let members_with_other_policies = members
        .iter()
        .filter(|m| matches!(m.state, "alive" | "suspect") && m.same_policies == Some(false))
        .count();
    StatusReply {
        node_id: shards.node.node_id.clone(),
        uptime_seconds: clock::now_ns() as f64 / 1e9,
        digest: engine.digest().to_string(),
        policies,
        shards: shards_status,
        members,
        members_with_other_policies,
    }
}
