//! [`NodeId`]: who a node is in the SWIM membership, and how a restart differs from a
//! rejoin.

use std::net::SocketAddr;

/// Longest node id carried in membership messages (config validation enforces it).
pub const MAX_NODE_ID_LEN: usize = 64;

/// A node's identity in the SWIM membership.
///
/// Two identities with the same gossip address are the same node at different times: the
/// one with the larger `instance` wins (a restart picks a larger one, see
/// [`foca::Identity::win_addr_conflict`]), so a restarted node replaces its old self.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    /// Gossip address (UDP).
    pub addr: SocketAddr,
    /// Starts as the boot nonce; bumped by `renew` when the cluster declared us down and
    /// we rejoin (same process, new identity).
    pub instance: u64,
    /// The process's boot nonce: unchanged by `renew`, so peers can tell a rejoin (state
    /// intact) from a restart (state lost, needs a transfer).
    pub boot: u64,
    /// The configured node id (for `tollgate members`).
    pub name: String,
}

impl NodeId {
    /// An identity known only by address (a seed): enough to announce to it.
    pub fn seed(addr: SocketAddr) -> NodeId {
        NodeId {
            addr,
            instance: 0,
            boot: 0,
            name: String::new(),
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            instance: self.instance.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.instance > adversary.instance
    }
}
