//! Several Tollgate nodes acting as one rate limiter: SWIM membership (foca) and
//! shard-delta replication over authenticated UDP — Aperture's "lazy sync".
//!
//! Every node decides from its own replica of each bucket, so the decision path never
//! waits on the network. Each shard counts what it consumed per bucket since the last
//! sync; every sync interval the gossip thread drains those counts, sends them to every
//! live peer in datagrams of at most 1,400 bytes, and each peer debits them from its
//! replicas on the owning shard (the same routing function as everywhere else). Debits may
//! drive a replica below zero, which is what pays back over-admission: the cluster as a
//! whole admits at most `(nodes - 1) * (burst + fill_rate * (sync_interval + delay))`
//! tokens more than one node would (docs/cluster.md derives it and shows measurements).
//!
//! # Layout
//! - [`config`]: the `cluster:` section of the config file and its validation.
//! - [`wire`]: the datagram envelope (HMAC-SHA256), rkyv payloads, foca's codec; bounded.
//! - [`replication`]: sans-IO reliable delta replication (seq + ack + retransmit) and
//!   state transfer to joining nodes.
//! - [`membership`]: foca glue: config from our timings, an effect-collecting runtime,
//!   a timer queue on the caller's clock.
//! - [`gossip`]: one node's sans-IO gossip: datagram in + now -> effects out.
//! - [`fuzzing`]: the body of the `gossip_datagram` fuzz target: every decoder, and a
//!   joined node, fed arbitrary datagrams (`cargo test` drives it too).
//! - [`io`]: the thread that owns the UDP socket and reaches shards via
//!   [`DecisionHandle`].
//! - `sim` (tests): a deterministic cluster on virtual time with loss, reordering and
//!   duplication.
//!
//! [`Cluster::bind`] runs before the shards start (so `MEMBERS` has a view to ask);
//! [`Cluster::start`] after them (so the thread has a handle to reach them).

pub mod config;
pub mod fuzzing;
pub mod gossip;
pub mod io;
pub mod membership;
pub mod replication;
#[cfg(test)]
mod sim;
pub mod wire;

use crate::bridge::DecisionHandle;
use crate::clock;
use crate::node::MembersView;
use anyhow::{anyhow, Context, Result};
use config::ClusterConfig;
use gossip::{Gossip, GossipConfig, GossipStats, MemberState};
use membership::Timings;
use replication::ReplicationConfig;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use tollgate_policy::Engine;
use tollgate_protocol::Member;

/// `cluster:` resolved: addresses parsed, secret read, defaults filled in.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// This node's name.
    pub node_id: String,
    /// Gossip bind address.
    pub gossip: SocketAddr,
    /// Address advertised to peers (None: derived from the bound address).
    pub advertise: Option<SocketAddr>,
    /// Seeds as configured (resolved periodically).
    pub seeds: Vec<String>,
    /// Default sync interval.
    pub sync_interval: Duration,
    /// HMAC key.
    pub secret: Vec<u8>,
    /// Failure detection.
    pub timings: Timings,
    /// How long start-up waits for a peer's bucket state.
    pub join_timeout: Duration,
}

impl ClusterSettings {
    /// Resolves a validated `cluster:` section. `server_node_id` (from `server.node_id`)
    /// is the fallback name before host name + port.
    pub fn from_config(c: &ClusterConfig, server_node_id: Option<&str>) -> Result<Self> {
        let gossip = c.gossip;
        let secret = match (&c.secret_file, &c.secret) {
            (Some(path), _) => {
                let bytes = std::fs::read(path).with_context(|| {
                    format!("cluster.secret_file: cannot read {}", path.display())
                })?;
                let trimmed = bytes.trim_ascii_end().to_vec();
                if trimmed.is_empty() {
                    return Err(anyhow!("cluster.secret_file {} is empty", path.display()));
                }
                trimmed
            }
            (None, Some(s)) => s.as_bytes().to_vec(),
            // Validation refused a missing secret off loopback.
            (None, None) => wire::INSECURE_LOOPBACK_SECRET.to_vec(),
        };
        let node_id = c
            .node_id
            .clone()
            .or_else(|| server_node_id.map(str::to_string))
            .unwrap_or_else(|| format!("{}:{}", host_name(), gossip.port()));
        let fd = &c.failure_detection;
        Ok(ClusterSettings {
            node_id,
            gossip,
            advertise: c.advertise,
            seeds: c.seeds.clone(),
            sync_interval: c.sync_interval.0,
            secret,
            timings: Timings {
                probe_period: fd.probe_period.0,
                probe_rtt: fd.probe_rtt.0,
                suspect_to_down_after: fd.suspect_to_down_after.0,
            },
            join_timeout: c.join_timeout.0,
        })
    }

    /// Whether any seed names another node (so start-up should wait to catch up).
    pub fn has_other_seeds(&self) -> bool {
        let me = self.gossip.to_string();
        self.seeds.iter().any(|s| *s != me)
    }

    /// Per-limiter sync cadence: a policy's lazy_sync, else `sync_interval`.
    pub fn replication_config(&self, engine: &Engine) -> ReplicationConfig {
        let default = u64::try_from(self.sync_interval.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        ReplicationConfig {
            limiter_intervals_ns: engine
                .limiters()
                .iter()
                .map(|l| l.lazy_sync_interval_ns.unwrap_or(default))
                .collect(),
            default_interval_ns: default,
            rto_ns: ReplicationConfig::rto_for(default),
        }
    }
}

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

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate".to_string())
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
        let identity = wire::NodeId {
            addr: self.local,
            instance: boot,
            boot,
            name: self.settings.node_id.clone(),
        };
        let config = GossipConfig {
            identity,
            timings: self.settings.timings,
            replication: self.settings.replication_config(handle.engine()),
            rng_seed: boot ^ u64::from(std::process::id()),
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
        self.shared
            .stats
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Sends final deltas, leaves gracefully, stops the thread.
    pub fn leave(self) {
        self.thread.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_yaml(cluster: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        crate::config::parse_str(&format!("cluster:\n{cluster}"), "test.yaml")
    }

    #[test]
    fn a_secret_is_required_off_loopback() {
        let err = cluster_yaml("  gossip: 0.0.0.0:7946\n").expect_err("needs a secret");
        assert!(err.to_string().contains("cluster.secret"), "{err}");
        assert!(cluster_yaml("  gossip: 0.0.0.0:7946\n  secret: s\n").is_ok());
        assert!(cluster_yaml("  gossip: 127.0.0.1:7946\n").is_ok());
    }

    #[test]
    fn bad_cluster_fields_are_reported_by_path() {
        for (yaml, path) in [
            ("  gossip: not-an-address\n", "cluster.gossip"),
            ("  advertise: 0.0.0.0:7946\n", "cluster.advertise"),
            ("  seeds: [nohostport]\n", "cluster.seeds"),
            (
                "  failure_detection: { probe_period: 100ms, probe_rtt: 200ms }\n",
                "cluster.failure_detection.probe_rtt",
            ),
            ("  secret: a\n  secret_file: /x\n", "cluster.secret"),
        ] {
            let err = cluster_yaml(yaml).expect_err(yaml);
            assert!(err.to_string().contains(path), "{yaml}: {err}");
        }
    }

    #[test]
    fn settings_default_the_name_and_use_lazy_sync_cadence() {
        let config = crate::config::parse_str(
            "policies:\n  - policy_name: a\n    rate_limiter:\n      bucket_capacity: 1\n      fill_amount: 1\n      parameters: { interval: 1s, lazy_sync: { enabled: true, num_sync: 4 } }\n      selectors: [{ control_point: x }]\n  - policy_name: b\n    rate_limiter:\n      bucket_capacity: 1\n      fill_amount: 1\n      parameters: { interval: 1s }\n      selectors: [{ control_point: x }]\ncluster:\n  gossip: 127.0.0.1:7999\n  sync_interval: 20ms\n",
            "t.yaml",
        )
        .expect("valid");
        let c = config.cluster.as_ref().expect("cluster");
        let settings = ClusterSettings::from_config(c, None).expect("settings");
        assert!(settings.node_id.ends_with(":7999"), "{}", settings.node_id);
        assert_eq!(settings.secret, wire::INSECURE_LOOPBACK_SECRET);
        let engine = Engine::new(&config.policies);
        let r = settings.replication_config(&engine);
        assert_eq!(r.limiter_intervals_ns, vec![250_000_000, 20_000_000]);
        assert_eq!(r.tick_ns(), 20_000_000);
        assert_eq!(r.rto_ns, 100_000_000);
    }
}
