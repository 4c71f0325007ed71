//! Tollgate's cluster core, sans-IO: several nodes acting as one rate limiter through SWIM
//! membership (foca) and replication of consumption over authenticated UDP — Aperture's
//! "lazy sync".
//!
//! Every node decides from its own replica of each bucket, so the decision path never
//! waits on the network. Each shard counts what it consumed per bucket since the last
//! sync; every sync interval the node's shell drains those counts into [`Gossip`], which
//! sends them to every live peer in datagrams of at most 1,400 bytes; each peer debits them
//! from its replicas. Debits may drive a replica below zero, which is what pays back
//! over-admission: the cluster as a whole admits at most
//! `(nodes - 1) * (burst + fill_rate * (sync_interval + delay))` tokens more than one node
//! would (docs/cluster.md derives it and shows measurements).
//!
//! Limiters cross the node boundary by what they mean — policy name and definition digest
//! ([`wire::LimiterRef`]) — in every batch, so nodes whose `policies:` lists are ordered
//! differently share limits exactly, and nodes whose policies differ (a rolling config
//! change) share the limiters they agree on and drop, count and log the rest.
//!
//! This crate owns the state machines and the wire format; it reads no clock (time is a
//! `now_ns` argument), opens no socket or file, and reaches buckets only through the
//! [`Effect`]s it returns. The server's gossip thread is the IO shell around it; the tests'
//! simulation is another.
//!
//! # Layout
//! - [`config`]: the `cluster:` section of the config file and its validation.
//! - [`wire`]: the datagram envelope (HMAC-SHA256), the rkyv payloads, foca's codec; every
//!   decoder bounded.
//! - [`node_id`]: [`NodeId`], a node's identity in the membership.
//! - [`membership`]: foca glue: config from our timings, a recording runtime, a timer queue
//!   on the caller's clock.
//! - [`replication`]: reliable delta replication (seq + ack + retransmit), limiter names
//!   resolved per batch, and state transfer to joining nodes.
//! - `dedup`: which batches of a peer were applied (each once).
//! - `mismatch`: logging entries of limiters a peer does not share, once per peer and
//!   limiter.
//! - [`gossip`]: one node: datagram in + now -> effects out.
//! - [`effect`]: [`Effect`], everything the core asks of its shell.
//! - `fuzzing` (tests and `cfg(fuzzing)` only): the body of the `gossip_datagram` fuzz
//!   target.
//! - `sim` (tests only): a deterministic cluster on virtual time with loss, reordering and
//!   duplication, with real bucket stores.
#![warn(missing_docs)]

pub mod config;
mod dedup;
pub mod effect;
#[cfg(any(test, fuzzing))]
pub mod fuzzing;
pub mod gossip;
pub mod membership;
mod mismatch;
pub mod node_id;
pub mod replication;
#[cfg(test)]
mod sim;
pub mod wire;

pub use config::{ClusterConfig, FailureDetection};
pub use dedup::MAX_SEEN_ABOVE_FLOOR;
pub use effect::{Effect, Replica};
pub use gossip::{
    Gossip, GossipConfig, GossipStats, MemberInfo, MemberState, JOIN_RETRY, SEED_REANNOUNCE,
};
pub use membership::Timings;
pub use mismatch::MAX_LOGGED_MISMATCHES;
pub use node_id::NodeId;
pub use replication::{ReplicationConfig, ReplicationStats};
pub use wire::Op;
