//! `cluster:` — gossip membership and replication settings, with their validation.
//!
//! Parsing and checking only: reading `secret_file` and finding the host name (IO) are the
//! server's, when it starts the cluster.

use crate::membership::Timings;
use crate::node_id::MAX_NODE_ID_LEN;
use crate::replication::ReplicationConfig;
use crate::wire::MAX_POLICY_NAME_LEN;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tollgate_policy::config::{join, Problems};
use tollgate_policy::duration::ConfigDuration;
use tollgate_policy::PolicyConfig;

/// `cluster:` — gossip membership and replication.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name. Default: host name + gossip port.
    #[serde(default)]
    pub node_id: Option<String>,
    /// UDP address for membership and deltas. Default 127.0.0.1:7946.
    #[serde(default = "default_gossip", with = "socket_addr")]
    pub gossip: SocketAddr,
    /// Address peers should send to, when `gossip` binds 0.0.0.0 / `[::]` (containers).
    /// Default: the bound address, or, for a wildcard bind, the local IP that routes to the
    /// first seed, with the gossip port.
    #[serde(default, with = "optional_socket_addr")]
    pub advertise: Option<SocketAddr>,
    /// Peers to join through: `host:port` or DNS names, re-resolved periodically.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// How often consumed tokens are sent to peers. Default 50ms. A policy's
    /// `lazy_sync.num_sync` gives `interval / num_sync` for that policy instead.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: ConfigDuration,
    /// File holding the shared gossip secret. Required (or `secret`) when gossip binds a
    /// non-loopback address.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The shared gossip secret inline (prefer `secret_file`).
    #[serde(default)]
    pub secret: Option<String>,
    /// SWIM failure-detection timings. The defaults suit a LAN; tests shorten them.
    #[serde(default)]
    pub failure_detection: FailureDetection,
    /// How long `serve` waits at start for a peer's bucket state before reporting ready
    /// (only when seeds other than this node are configured). Default 2s: a LAN join takes
    /// one round trip plus the transfer; a first node whose seeds are all down waits this
    /// long once, then serves alone.
    #[serde(default = "default_join_timeout")]
    pub join_timeout: ConfigDuration,
    /// How often the gossip counters are logged (`cluster stats`, info level). Default 10s.
    #[serde(default = "default_stats_interval")]
    pub stats_interval: ConfigDuration,
}

/// `cluster.failure_detection` — how fast a dead node is suspected and declared down.
///
/// A node stopped without leaving is suspected after at most about
/// `(members - 1) * probe_period` (probes go round-robin over a shuffled member list) and
/// declared down `suspect_to_down_after` later. Defaults (1s, 400ms, 3s) give about 5s in a
/// three-node cluster, as memberlist's LAN profile.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailureDetection {
    /// How often a random member is probed. Default 1s.
    pub probe_period: ConfigDuration,
    /// How long a direct probe waits before asking others to probe indirectly. Must be
    /// less than `probe_period`. Default 400ms (far above a LAN round trip).
    pub probe_rtt: ConfigDuration,
    /// How long a suspect has to refute before it is declared down. Default 3s.
    pub suspect_to_down_after: ConfigDuration,
}

impl FailureDetection {
    /// The timings membership runs with.
    pub fn timings(&self) -> Timings {
        Timings {
            probe_period: self.probe_period.0,
            probe_rtt: self.probe_rtt.0,
            suspect_to_down_after: self.suspect_to_down_after.0,
        }
    }
}

impl Default for FailureDetection {
    fn default() -> Self {
        FailureDetection {
            probe_period: ConfigDuration(Duration::from_secs(1)),
            probe_rtt: ConfigDuration(Duration::from_millis(400)),
            suspect_to_down_after: ConfigDuration(Duration::from_secs(3)),
        }
    }
}

fn default_join_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}

fn default_stats_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

fn default_gossip() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7946))
}

fn default_sync_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(50))
}

impl ClusterConfig {
    /// The replication settings `sync_interval` implies.
    pub fn replication(&self) -> ReplicationConfig {
        ReplicationConfig::new(self.sync_interval.as_nanos_u64())
    }

    /// Checks what replication needs of the policies: every batch names its limiters by
    /// policy name, so a name must fit [`MAX_POLICY_NAME_LEN`].
    pub fn validate_policies(&self, policies: &[PolicyConfig], problems: &mut Problems) {
        for (i, p) in policies.iter().enumerate() {
            if p.policy_name.len() > MAX_POLICY_NAME_LEN {
                problems.at(
                    format!("policies[{i}].policy_name"),
                    format!(
                        "must be at most {MAX_POLICY_NAME_LEN} bytes with cluster: (replication names limiters by policy name)"
                    ),
                );
            }
        }
    }

    /// Checks the section (its path is `cluster`).
    pub fn validate(&self, problems: &mut Problems) {
        let at = "cluster";
        if self.sync_interval.0.is_zero() {
            problems.at(join(at, "sync_interval"), "must be greater than 0");
        }
        if self.stats_interval.0.is_zero() {
            problems.at(join(at, "stats_interval"), "must be greater than 0");
        }
        if self.secret_file.is_some() && self.secret.is_some() {
            problems.at(
                join(at, "secret"),
                "give either secret or secret_file, not both",
            );
        }
        if self.secret.as_deref() == Some("") {
            problems.at(join(at, "secret"), "must not be empty");
        }
        if !self.gossip.ip().is_loopback() && self.secret.is_none() && self.secret_file.is_none() {
            problems.at(
                join(at, "secret"),
                "required (or secret_file) when gossip binds a non-loopback address",
            );
        }
        match &self.node_id {
            Some(n) if n.is_empty() => problems.at(join(at, "node_id"), "must not be empty"),
            Some(n) if n.len() > MAX_NODE_ID_LEN => problems.at(
                join(at, "node_id"),
                format!("must be at most {MAX_NODE_ID_LEN} bytes"),
            ),
            _ => {}
        }
        if let Some(addr) = self.advertise {
            if addr.ip().is_unspecified() || addr.port() == 0 {
                problems.at(
                    join(at, "advertise"),
                    "must be a specific IP address and port, e.g. 10.0.0.5:7946",
                );
            }
        }
        if self
            .seeds
            .iter()
            .any(|s| s.trim().is_empty() || !s.contains(':'))
        {
            problems.at(join(at, "seeds"), "each seed must be host:port");
        }
        let fd = &self.failure_detection;
        let fd_at = join(at, "failure_detection");
        if fd.probe_period.0.is_zero() || fd.probe_rtt.0.is_zero() {
            problems.at(
                fd_at.clone(),
                "probe_period and probe_rtt must be greater than 0",
            );
        } else if fd.probe_rtt.0 >= fd.probe_period.0 {
            problems.at(join(&fd_at, "probe_rtt"), "must be less than probe_period");
        }
        if fd.suspect_to_down_after.0.is_zero() {
            problems.at(
                join(&fd_at, "suspect_to_down_after"),
                "must be greater than 0",
            );
        }
    }
}

mod socket_addr {
    //! `gossip: 0.0.0.0:7946`, parsed once, with an example in the error.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not an IP address and port, e.g. 0.0.0.0:7946"
            ))
        })
    }

    pub fn serialize<S: Serializer>(v: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
}

mod optional_socket_addr {
    //! `advertise: 10.0.0.5:7946`, optional.
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not a specific IP address and port, e.g. 10.0.0.5:7946"
            ))
        })
    }

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_policy::config::deserialize_section;

    /// The problems of a `cluster:` section given as YAML (deserialization, then validation).
    fn problems(yaml: &str) -> Vec<String> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        let mut problems = Problems::new();
        match deserialize_section::<ClusterConfig>(value, "cluster") {
            Ok(c) => c.validate(&mut problems),
            Err(e) => problems.push(e),
        }
        problems.errors().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_secret_is_required_off_loopback() {
        let found = problems("gossip: 0.0.0.0:7946\n");
        assert!(
            found.iter().any(|p| p.starts_with("cluster.secret")),
            "{found:?}"
        );
        assert!(problems("gossip: 0.0.0.0:7946\nsecret: s\n").is_empty());
        assert!(problems("gossip: 127.0.0.1:7946\n").is_empty());
    }

    #[test]
    fn bad_cluster_fields_are_reported_by_path() {
        for (yaml, path) in [
            ("gossip: not-an-address\n", "cluster.gossip"),
            ("advertise: 0.0.0.0:7946\n", "cluster.advertise"),
            ("seeds: [nohostport]\n", "cluster.seeds"),
            (
                "failure_detection: { probe_period: 100ms, probe_rtt: 200ms }\n",
                "cluster.failure_detection.probe_rtt",
            ),
            ("secret: a\nsecret_file: /x\n", "cluster.secret"),
            ("stats_interval: 0s\n", "cluster.stats_interval"),
            ("node_id: ''\n", "cluster.node_id"),
        ] {
            let found = problems(yaml);
            assert!(
                found.iter().any(|p| p.starts_with(path)),
                "{yaml}: {found:?}"
            );
        }
    }

    #[test]
    fn policy_names_must_fit_a_batch() {
        let policies = |name: &str| {
            tollgate_policy::parse_policies(
                &format!("policies: [ {{ policy_name: {name}, rate_limiter: {{ bucket_capacity: 1, fill_amount: 1, parameters: {{ interval: 1s }}, selectors: [ {{ control_point: c }} ] }} }} ]"),
                "t",
            )
            .expect("valid policies")
        };
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str("{}").expect("yaml");
        let c: ClusterConfig = deserialize_section(value, "cluster").expect("defaults");
        let mut problems = Problems::new();
        c.validate_policies(&policies(&"p".repeat(MAX_POLICY_NAME_LEN)), &mut problems);
        assert!(problems.is_empty());
        c.validate_policies(
            &policies(&"p".repeat(MAX_POLICY_NAME_LEN + 1)),
            &mut problems,
        );
        assert_eq!(problems.errors()[0].path, "policies[0].policy_name");
    }

    #[test]
    fn defaults_are_documented_values() {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str("{}").expect("yaml");
        let c: ClusterConfig = deserialize_section(value, "cluster").expect("defaults");
        assert_eq!(c.gossip, SocketAddr::from(([127, 0, 0, 1], 7946)));
        assert_eq!(c.sync_interval.0, Duration::from_millis(50));
        assert_eq!(c.stats_interval.0, Duration::from_secs(10));
        assert_eq!(c.replication().sync_interval_ns, 50_000_000);
        assert_eq!(
            c.failure_detection.timings().probe_rtt,
            Duration::from_millis(400)
        );
    }
}
