//! What every shard of a node shares, read-only after start (plus two counters that are
//! touched per connection, never per decision, and the policies a reload replaces).

use crate::config::ServerConfig;
use crate::conn::access::Access;
use crate::conn::admission::Connections;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use tollgate_policy::{Engine, ShardLimits};
use tollgate_protocol::routing::{self, HASH_FNV1A_64};
use tollgate_protocol::{
    ControlPointRouting, HelloReply, Member, MemberState, ProtocolVersion, MAX_BATCH,
};

/// A source of the cluster member list (the gossip layer implements it).
pub trait MembersView: Send + Sync {
    /// Current members, this node included.
    fn members(&self) -> Vec<Member>;
}

/// Immutable node-wide facts and limits.
pub struct Node {
    /// The compiled policies, replaced whole by a reload (see [`crate::reload`]). Shards
    /// decide with their own handle on it (`Shard::engine`), switched between two messages;
    /// other threads load it.
    pub policies: Arc<ArcSwap<Engine>>,
    /// Shards on this node.
    pub nr_shards: usize,
    /// Name reported in HELLO and MEMBERS.
    pub node_id: String,
    /// The shared binary port.
    pub listen: SocketAddr,
    /// Shard-aware ports, index = shard.
    pub shard_ports: Vec<u16>,
    /// Limits from `server:`.
    pub limits: Limits,
    /// Open binary connections on the node (all shards), in total and per peer address.
    pub connections: Connections,
    /// Who may talk to the binary ports: API keys and TLS (`server.api_keys`,
    /// `server.binary_tls`).
    pub access: Access,
    /// The cluster's member list, when clustered.
    pub members: Option<Arc<dyn MembersView>>,
    /// Every shard's counters (each shard writes its own block; the admin port reads).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Per-connection and per-shard bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections beyond this are closed at accept.
    pub max_connections: usize,
    /// Connections from one peer address beyond this are closed at accept.
    pub max_connections_per_peer: usize,
    /// A connection with no complete frame (and nothing pending) for this long is closed;
    /// None: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// Requests in flight per connection before OVERLOADED.
    pub max_in_flight: usize,
    /// Largest frame accepted.
    pub max_frame_len: u32,
    /// Shutdown waits this long for connections to finish.
    pub drain_timeout: std::time::Duration,
    /// Bounds of each shard's state: waiters, flows in flight, longest wait.
    pub shard: ShardLimits,
}

impl Limits {
    /// From the `server:` section.
    pub fn from_config(c: &ServerConfig) -> Limits {
        Limits {
            max_connections: c.max_connections,
            max_connections_per_peer: c.max_connections_per_peer,
            idle_timeout: Some(c.idle_timeout.0).filter(|d| !d.is_zero()),
            max_in_flight: c.max_in_flight,
            max_frame_len: c.max_frame_len,
            drain_timeout: c.drain_timeout.0,
            shard: c.shard_limits(),
        }
    }
}

impl Node {
    /// A node of `nr_shards` shards deciding with `engine`, with the default limits and no
    /// ports, members or access rules: for shards driven in process (benchmarks, tests of
    /// the executor), which start with [`crate::shard::Shard::start`] and never accept.
    pub fn without_ports(engine: Engine, nr_shards: usize, node_id: &str) -> Node {
        Node {
            policies: Arc::new(ArcSwap::from_pointee(engine)),
            nr_shards,
            node_id: node_id.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shard_ports: Vec::new(),
            limits: Limits::from_config(&ServerConfig::default()),
            connections: Connections::default(),
            access: Access::default(),
            members: None,
            metrics: Arc::new(crate::metrics::Metrics::new(true, nr_shards, 1)),
        }
    }

    /// The shard that owns the bucket keyed by `key` (a limit label's value).
    ///
    /// This is the one routing rule: the protocol crate's function, also used by the
    /// client, the loadgen and the tests.
    #[inline]
    pub fn owner_of(&self, key: &str) -> usize {
        routing::shard_for(routing::routing_hash(key.as_bytes()), self.nr_shards)
    }

    /// HELLO_REPLY for a connection on `shard_index` (None = the shared port) that speaks
    /// `version` from now on.
    pub fn hello(
        &self,
        policies: &Engine,
        shard_index: Option<u16>,
        version: ProtocolVersion,
    ) -> HelloReply {
        let control_point_routing = match version {
            ProtocolVersion::V1 => Vec::new(),
            ProtocolVersion::V2 | ProtocolVersion::V3 => {
                let mut routing: Vec<ControlPointRouting> = policies
                    .control_point_routing()
                    .map(|(cp, keys)| ControlPointRouting {
                        control_point: cp.to_owned(),
                        routing_label_keys: keys.to_vec(),
                    })
                    .collect();
                routing.sort_by(|a, b| a.control_point.cmp(&b.control_point));
                routing
            }
        };
        HelloReply {
            version,
            node_id: self.node_id.clone(),
            shard_count: self.nr_shards as u16,
            hash_algo: HASH_FNV1A_64,
            shard_index,
            shard_ports: self.shard_ports.clone(),
            routing_label_keys: policies.routing_label_keys().to_vec(),
            policy_names: policies
                .limiters()
                .iter()
                .map(|l| l.policy_name.clone())
                .collect(),
            max_frame_len: self.limits.max_frame_len,
            max_batch: MAX_BATCH as u16,
            max_in_flight: u32::try_from(self.limits.max_in_flight).unwrap_or(u32::MAX),
            control_point_routing,
        }
    }

    /// The member list: the cluster's view, or this node alone.
    pub fn member_list(&self) -> Vec<Member> {
        match &self.members {
            Some(view) => view.members(),
            None => vec![Member {
                node_id: self.node_id.clone(),
                address: self.listen.to_string(),
                state: MemberState::Alive,
                last_contact_ms: 0,
                policy_digest: Some(self.policies.load().digest().0),
            }],
        }
    }
}
