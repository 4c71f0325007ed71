//! The cluster's IO shell: the gossip socket, the thread that drives
//! [`tollgate_cluster::Gossip`], and the member list MEMBERS reports.
//!
//! The sans-IO core (wire format, membership, replication, the `cluster:` schema) is the
//! `tollgate-cluster` crate; this module gives it a socket, a clock and the shards. It
//! reaches shards only through [`DecisionHandle`] messages: it drains their consumption,
//! asks for snapshots, and sends each replicated entry straight to the shard that owns its
//! bucket (the same routing function as checks use).
//!
//! # Layout
//! - [`settings`]: the `cluster:` section resolved for this process (secret file, host
//!   name).
//! - [`io`]: the thread that owns the UDP socket and the sans-IO node.
//!
//! [`Cluster::bind`] runs before the shards start (so `MEMBERS` has a view to ask);
//! [`Cluster::start`] after them (so the thread has a handle to reach them).

pub mod io;
pub mod settings;

pub use settings::ClusterSettings;

use crate::bridge::DecisionHandle;
use crate::clock;
use crate::node::MembersView;
use anyhow::{anyhow, Context, Result};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tollgate_cluster::{Gossip, GossipConfig, GossipStats, MemberState, NodeId};
use tollgate_protocol::Member;

/// The local IP the kernel would use to reach the first resolvable, non-loopback seed
/// (a connected UDP socket sends nothing): the pod IP in a container.
fn routed_ip(seeds: &[String], bound: SocketAddr) -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let any: SocketAddr = if bound.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    // Last resort, when no seed resolves yet (a pod starting before its DNS record): the
    // interface of the default route, found by "connecting" to a documentation address.
    let fallback: SocketAddr = if bound.is_ipv4() {
        SocketAddr::from(([192, 0, 2, 1], 9))
    } else {
        SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], 9))
    };
    let candidates = seeds
        .iter()
        .filter_map(|s| s.to_socket_addrs().ok())
        .flatten()
        .filter(|a| !a.ip().is_loopback() && a.is_ipv4() == bound.is_ipv4())
        .chain([fallback]);
    for addr in candidates {
        let Ok(probe) = UdpSocket::bind(any) else {
            return None;
        };
        if probe.connect(addr).is_ok() {
            if let Ok(local) = probe.local_addr() {
                if !local.ip().is_unspecified() {
                    return Some(local.ip());
                }
            }
        }
    }
    None
}

/// The member list as MEMBERS reports it (reads what the gossip thread published).
struct View {
    shared: Arc<io::Shared>,
}

impl MembersView for View {
    fn members(&self) -> Vec<Member> {
        let now = clock::now_ns();
        let list = self
            .shared
            .members
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        list.into_iter()
            .map(|m| Member {
                node_id: m.node_id,
                address: m.address.to_string(),
                state: match m.state {
                    MemberState::Alive => tollgate_protocol::MemberState::Alive,
                    MemberState::Suspect => tollgate_protocol::MemberState::Suspect,
                    MemberState::Down => tollgate_protocol::MemberState::Down,
                    MemberState::Left => tollgate_protocol::MemberState::Left,
                },
                last_contact_ms: m
                    .last_contact_ns
                    .map_or(0, |t| now.saturating_sub(t) / 1_000_000),
                policy_digest: m.policy_digest.map(|d| d.0),
            })
            .collect()
    }
}

/// A bound gossip socket, before the shards start.
pub struct Cluster {
    settings: ClusterSettings,
    socket: UdpSocket,
    shared: Arc<io::Shared>,
    local: SocketAddr,
}

/// The running cluster layer.
pub struct RunningCluster {
    thread: io::GossipThread,
    shared: Arc<io::Shared>,
    /// The gossip address actually bound.
    pub gossip: SocketAddr,
    /// How long start-up waits to catch up.
    pub join_timeout: Duration,
    /// Whether there is anyone to catch up from.
    pub has_other_seeds: bool,
}

impl Cluster {
    /// Binds the gossip socket.
    pub fn bind(settings: ClusterSettings) -> Result<Cluster> {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = if settings.gossip.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
            .context("creating the gossip socket")?;
        let _ = socket.set_recv_buffer_size(io::SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(io::SOCKET_BUFFER_BYTES);
        socket
            .bind(&settings.gossip.into())
            .with_context(|| format!("binding gossip UDP {}", settings.gossip))?;
        let socket: UdpSocket = socket.into();
        let bound = socket.local_addr().context("gossip local address")?;
        let local = match settings.advertise {
            Some(a) => a,
            None if bound.ip().is_unspecified() => {
                let ip = routed_ip(&settings.seeds, bound).ok_or_else(|| {
                    anyhow!(
                        "cluster.gossip binds {bound}: set cluster.advertise to the address peers should use"
                    )
                })?;
                SocketAddr::new(ip, bound.port())
            }
            None => bound,
        };
        Ok(Cluster {
            settings,
            socket,
            shared: Arc::new(io::Shared::default()),
            local,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The MEMBERS view to pass to `runtime::start`.
    pub fn members_view(&self) -> Arc<dyn MembersView> {
        Arc::new(View {
            shared: self.shared.clone(),
        })
    }

    /// Starts the gossip thread; it reaches the shards through `handle`.
    pub fn start(self, handle: DecisionHandle) -> Result<RunningCluster> {
        let now = clock::now_ns();
        // The boot nonce orders restarts: wall-clock nanoseconds, so a restarted process
        // always has a larger instance than the one it replaces.
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let identity = NodeId {
            addr: self.local,
            instance: boot,
            boot,
            name: self.settings.node_id.clone(),
        };
        let config = GossipConfig {
            identity,
            timings: self.settings.timings,
            replication: self.settings.replication.clone(),
            rng_seed: boot ^ u64::from(std::process::id()),
            policy_digest: handle.engine().digest(),
        };
        let gossip = Gossip::new(config, &self.settings.secret, now);
        if let Ok(mut m) = self.shared.members.lock() {
            *m = gossip.members();
        }
        let has_other_seeds = self.settings.has_other_seeds();
        let thread = io::GossipThread::start(
            self.socket,
            gossip,
            self.settings.seeds.clone(),
            self.settings.stats_interval,
            handle,
            self.shared.clone(),
        )
        .context("starting the gossip thread")?;
        Ok(RunningCluster {
            thread,
            shared: self.shared,
            gossip: self.local,
            join_timeout: self.settings.join_timeout,
            has_other_seeds,
        })
    }
}

/// Reads what the gossip thread publishes, from any thread.
#[derive(Clone)]
pub struct ClusterObserver {
    shared: Arc<io::Shared>,
}

impl ClusterObserver {
    /// The gossip counters at the gossip thread's last loop iteration.
    pub fn stats(&self) -> GossipStats {
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

impl RunningCluster {
    /// Waits (at most `join_timeout`, and only when seeds name other nodes) until a peer's
    /// bucket state has arrived. Returns whether it did.
    pub fn wait_caught_up(&self) -> bool {
        if !self.has_other_seeds {
            return true;
        }
        self.thread.wait_synced(self.join_timeout)
    }

    /// The gossip counters.
    pub fn stats(&self) -> GossipStats {
        self.observer().stats()
    }

    /// A reader of the gossip counters for another thread (the admin port's metrics).
    pub fn observer(&self) -> ClusterObserver {
        ClusterObserver {
            shared: self.shared.clone(),
        }
    }

    /// Sends final deltas, leaves gracefully, stops the thread.
    pub fn leave(self) {
        self.thread.leave();
    }
}
