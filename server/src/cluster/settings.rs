//! [`ClusterSettings`]: the `cluster:` section resolved for this process — the secret read
//! from its file, the node id defaulted from the host name. The IO half of the config; the
//! parsing and validation are `tollgate_cluster::config`'s.

use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tollgate_cluster::node_id::MAX_NODE_ID_LEN;
use tollgate_cluster::wire::INSECURE_LOOPBACK_SECRET;
use tollgate_cluster::{ClusterConfig, ReplicationConfig, Timings};

/// `cluster:` resolved: secret read, defaults filled in.
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
    /// Replication cadence and retransmission timeout.
    pub replication: ReplicationConfig,
    /// HMAC key.
    pub secret: Vec<u8>,
    /// Failure detection.
    pub timings: Timings,
    /// How long start-up waits for a peer's bucket state.
    pub join_timeout: Duration,
    /// How often the gossip counters are logged.
    pub stats_interval: Duration,
}

impl ClusterSettings {
    /// Resolves a validated `cluster:` section. `server_node_id` (from `server.node_id`)
    /// is the fallback name before host name + port.
    pub fn from_config(c: &ClusterConfig, server_node_id: Option<&str>) -> Result<Self> {
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
            (None, None) => INSECURE_LOOPBACK_SECRET.to_vec(),
        };
        let node_id = c
            .node_id
            .clone()
            .or_else(|| server_node_id.map(str::to_string))
            .unwrap_or_else(|| format!("{}:{}", host_name(), c.gossip.port()));
        // A long host name and its port can pass the bound the configured names are held to.
        if node_id.len() > MAX_NODE_ID_LEN {
            return Err(anyhow!(
                "the node id {node_id:?} (host name and gossip port) is {} bytes; a cluster node id is at most {MAX_NODE_ID_LEN}: set cluster.node_id",
                node_id.len()
            ));
        }
        Ok(ClusterSettings {
            node_id,
            gossip: c.gossip,
            advertise: c.advertise,
            seeds: c.seeds.clone(),
            replication: c.replication(),
            secret,
            timings: c.failure_detection.timings(),
            join_timeout: c.join_timeout.0,
            stats_interval: c.stats_interval.0,
        })
    }

    /// Whether any seed names another node (so start-up should wait to catch up).
    pub fn has_other_seeds(&self) -> bool {
        let me = self.gossip.to_string();
        self.seeds.iter().any(|s| *s != me)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_the_name_and_the_secret() {
        let config = crate::config::parse_str(
            "cluster:\n  gossip: 127.0.0.1:7999\n  sync_interval: 20ms\n",
            "t.yaml",
        )
        .expect("valid");
        let c = config.cluster.as_ref().expect("cluster");
        let settings = ClusterSettings::from_config(c, None).expect("settings");
        assert!(settings.node_id.ends_with(":7999"), "{}", settings.node_id);
        assert_eq!(settings.secret, INSECURE_LOOPBACK_SECRET);
        assert_eq!(settings.replication.sync_interval_ns, 20_000_000);
        assert_eq!(settings.replication.rto_ns, 100_000_000);
        let named = ClusterSettings::from_config(c, Some("server-name")).expect("settings");
        assert_eq!(named.node_id, "server-name");
    }
}
