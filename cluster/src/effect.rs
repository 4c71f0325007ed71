//! [`Effect`]: everything the sans-IO core asks its shell to do — the one vocabulary that
//! membership, replication and [`crate::Gossip`] all speak.
//!
//! The shell (the server's gossip thread, or the simulation) carries effects out in order:
//! sends datagrams, applies replicated entries to the buckets that own them, answers
//! snapshot requests with [`crate::Gossip::send_transfer`], reports the first completed
//! state transfer, and tells its buckets when a peer process is gone for good.

use crate::wire::Op;
use std::net::SocketAddr;
use tollgate_policy::LimiterId;

/// What the shell must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send a sealed datagram.
    Send {
        /// Destination gossip address.
        to: SocketAddr,
        /// Sealed bytes (at most [`crate::wire::MAX_DATAGRAM`]).
        datagram: Vec<u8>,
    },
    /// Apply a peer's entries to this node's buckets: debit each ([`Op::Debit`]) or lower
    /// it to at most the value ([`Op::Lower`]). Every entry names a limiter of the engine
    /// the datagram was handled with; entries for limiters this node does not share were
    /// dropped and counted before.
    Apply {
        /// What to do with each entry.
        op: Op,
        /// The entries.
        entries: Vec<Replica>,
        /// The boot nonce of the peer process that sent them: a shell that must undo a
        /// peer's contribution when it dies (flows in flight it admitted) keys it by this.
        boot: u64,
    },
    /// Take a snapshot of every bucket and pass it to [`crate::Gossip::send_transfer`] for
    /// this peer (it joined or restarted).
    SnapshotFor(SocketAddr),
    /// The first state transfer from a peer completed: this node has caught up.
    Synced,
    /// The peer process with this boot nonce is gone for good: it left, stayed down past
    /// [`crate::replication::DOWN_GRACE_NS`], or restarted under a new boot. Nothing it
    /// sent will be followed by more; flows it held in flight will never end, so the shell
    /// hands back what that peer's debits took from concurrency buckets.
    PeerGone {
        /// The peer's boot nonce, as [`Effect::Apply`] carried it.
        boot: u64,
    },
}

/// One bucket's replicated number, on this node: a peer's consumption to debit, a level to
/// lower to, or (in a snapshot) a level to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    /// The limiter, resolved on this node.
    pub limiter: LimiterId,
    /// The bucket key (the limit label's value).
    pub key: String,
    /// Tokens ([`Op::Debit`]) or a level ([`Op::Lower`]); finite.
    pub value: f64,
}
